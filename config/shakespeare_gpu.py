# MEAP on tiny Shakespeare (GPT-2 BPE) on one GPU.
# Cost, estimated (not yet measured): 6 layers x 384 wide, 30M parameters with the output head,
# 0.19 GFLOP per token for training; 2,000 steps of 8,192 tokens = 3.1 PFLOP: under a minute on an
# H100 (a model this small is bound by kernel launches more than by FLOPs), plus about a minute of
# torch.compile. Tiny Shakespeare is 0.3M tokens: this is
# ~50 epochs, so the val loss bottoms out early and then rises (overfitting), as in nanoGPT.
# First: python data/shakespeare/prepare.py
#   python train.py config/shakespeare_gpu.py
out_dir = "out-shakespeare-gpu"
dataset = "shakespeare"
block_size = 256
batch_size = 32
n_layer = 6
n_head = 6
n_kv_head = 6
n_embd = 384
mask_ratio = 0.15
learning_rate = 1e-3
max_iters = 2000
warmup_iters = 200
min_lr = 1e-4
eval_interval = 250
eval_iters = 20
log_interval = 50
compile = True
