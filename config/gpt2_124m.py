# GPT-2 small (124M) with MEAP on FineWeb-Edu, for one node of 8 GPUs.
# Cost, estimated (not yet measured): 0.86 GFLOP per training token (6 x 124M parameters + attention
# at 1,024 tokens); 10B tokens = 8.6e18 FLOP = 19,073 steps of 524,288 tokens. On 8 H100s at 40% MFU
# (3.2 PFLOP/s in all) about 45 minutes; on one H100, 6 hours.
# First: pip install datasets && python data/fineweb/prepare.py --tokens 10e9
#   torchrun --standalone --nproc_per_node 8 train.py config/gpt2_124m.py
out_dir = "out-gpt2-124m"
dataset = "fineweb"
block_size = 1024
batch_size = 16  # per GPU and micro-step; 16 x 1024 x 32 micro-steps = 524,288 tokens per step
gradient_accumulation_steps = 32  # over all GPUs: 4 per GPU on 8 GPUs
n_layer = 12
n_head = 12
n_kv_head = 12
n_embd = 768
mask_ratio = 0.15
learning_rate = 6e-4  # GPT-2 small's
min_lr = 6e-5
max_iters = 19073
warmup_iters = 700
weight_decay = 0.1
eval_interval = 1000
eval_iters = 50
log_interval = 10
compile = True
