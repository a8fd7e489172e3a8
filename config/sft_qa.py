# Fine-tuning on the synthetic multi-document QA (paper §3.2), from config/sft_base.py's checkpoint.
# 6 documents, one holding the 4-token answer, 64 tokens an example; 800 steps of 32 examples over a
# set of 6,400: NTP-SFT makes 4 epochs and MEAP-SFT, with half the examples per step, 2 (the paper's).
# Cost, measured on 2 CPU cores (fp32): ~2.5 minutes a run.
#   python train.py config/sft_qa.py                                                   # MEAP-SFT, the paper's layout
#   python train.py config/sft_qa.py --sft ntp --mask_ratio 0 --out_dir out-sft-ntp    # NTP-SFT
#   python train.py config/sft_qa.py --sft separate --out_dir out-sft-separate         # the official code's layout
# The paper masks 10% of answers of at least 50 tokens. floor(4 x 0.1) = 0 would mask nothing, so
# here 1 of the 4 answer tokens (0.25), with the threshold lowered to 1.
out_dir = "out-sft"
init_from = "out-sft-base"
sft = "concat"
mask_ratio = 0.25
sft_min_answer = 1
n_docs = 6
answer_len = 4
qa_tokens = 64
sft_examples = 6400
batch_size = 32
learning_rate = 3e-3  # what the base was trained with: lower rates learned far slower in our pilots
min_lr = 3e-4
warmup_iters = 30
max_iters = 800
eval_interval = 100
eval_iters = 5
eval_examples = 300
