# MEAP on tiny Shakespeare (GPT-2 BPE) on a laptop CPU.
# Cost, measured on 2 CPU cores (fp32): ~0.6 s per step, 300 steps + evaluations: about 3.3 minutes.
# First: python data/shakespeare/prepare.py   (then: python -m experiments.niah --out_dir out-shakespeare)
#   python train.py config/shakespeare_cpu.py                   # MEAP, mask_ratio 0.15
#   python train.py config/shakespeare_cpu.py --mask_ratio 0 --out_dir out-shakespeare-ntp
# A 4-layer, 128-wide model: most of its parameters are the 50,304-row embedding and output
# head, and most of each step's time is the output softmax over GPT-2's vocabulary.
out_dir = "out-shakespeare"
dataset = "shakespeare"
block_size = 128
batch_size = 8
n_layer = 4
n_head = 4
n_kv_head = 4
n_embd = 128
mask_ratio = 0.15
learning_rate = 1e-3
max_iters = 300
warmup_iters = 30
min_lr = 1e-4
eval_interval = 50
eval_iters = 10
log_interval = 10
dtype = "float32"  # bf16 autocast is slower than fp32 on many CPUs (see the README)
