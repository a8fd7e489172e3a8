# The MEAP paper's smallest pre-training setting (§4.1): a LLaMA-style 12-layer, 768-wide model on
# 2B tokens, with the paper's optimizer (AdamW, lr 4e-4 cosine to 4e-5, 10% warm-up, weight decay
# 0.05, betas 0.9/0.95, clip 1.0). The paper trains on C4 with the Llama tokenizer; this uses
# FineWeb-Edu and GPT-2 BPE, the nearest open equivalents here.
# Compute, estimated (not yet measured): 0.86 GFLOP per training token x 2B tokens = 1.7e18 FLOP:
# about 1.2 hours on one H100 at 40% MFU, 9 minutes on 8. Run it twice, --mask_ratio 0.15 and 0,
# for the paper's NTP-vs-MEAP pair; then ask both the needle question (python -m experiments.niah).
# First: pip install datasets && python data/fineweb/prepare.py --tokens 2.1e9
#   torchrun --standalone --nproc_per_node 8 train.py config/meap_paper_small.py
out_dir = "out-meap-paper-small"
dataset = "fineweb"
block_size = 1024
batch_size = 16  # 16 x 1024 x 32 = 524,288 tokens per step; 3,815 steps = 2.0B tokens
gradient_accumulation_steps = 32
n_layer = 12
n_head = 12
n_kv_head = 12
n_embd = 768
mask_ratio = 0.15  # the paper's pre-training ratio
learning_rate = 4e-4
min_lr = 4e-5
max_iters = 3815
warmup_iters = 381  # 10%
weight_decay = 0.05
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
eval_interval = 500
eval_iters = 50
log_interval = 10
compile = True
