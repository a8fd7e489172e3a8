# The pre-trained base for fine-tuning (notebook 04, compare_sft.py): plain NTP on the retrieval
# mixture, with a 144-token block so that the paper's concatenated MEAP-SFT layout (2 x 72 tokens)
# fits. Cost, measured on 2 CPU cores (fp32): see compare_sft.py's docstring.
#   python train.py config/sft_base.py
# then fine-tune it: python train.py config/sft_qa.py (see that file)
out_dir = "out-sft-base"
task = "mix"
block_size = 144
batch_size = 32
n_layer = 2
n_head = 4
n_kv_head = 4
n_embd = 128
n_pairs = 4
n_needles = 4
mask_ratio = 0.0  # the paper fine-tunes bases pre-trained with NTP
learning_rate = 3e-3
max_iters = 1000
warmup_iters = 100
eval_interval = 250
eval_iters = 5
eval_examples = 200
