# Fine-tuning on the synthetic multi-document QA (paper §3.2), from config/sft_base.py's checkpoint.
# 2 documents, one holding the 20-token answer, 72 tokens an example; 800 steps of 32 examples over
# a set of 6,400: NTP-SFT makes 4 epochs and MEAP-SFT, with half the examples per step, 2 (the
# paper's). The paper's ratio, 0.10, masks floor(20 x 0.1) = 2 answer tokens in the copy: the
# fewest for which the mask can act in the official code's separate layout (with one, that copy's
# loss equals the clean example's; see mask.sft_meap_separate).
#   python train.py config/sft_qa.py                                                   # MEAP-SFT, the paper's layout
#   python train.py config/sft_qa.py --sft ntp --mask_ratio 0 --out_dir out-sft-ntp    # NTP-SFT
#   python train.py config/sft_qa.py --sft separate --out_dir out-sft-separate         # the official code's layout
# The paper's threshold is 50 answer tokens; ours are 20, so it is lowered to 20.
out_dir = "out-sft"
init_from = "out-sft-base"
sft = "concat"
mask_ratio = 0.1
sft_min_answer = 20
n_docs = 2
answer_len = 20
qa_tokens = 72
sft_examples = 6400
batch_size = 32
learning_rate = 3e-3  # the base's own rate: lower ones learn the QA format far more slowly at this size
min_lr = 3e-4
warmup_iters = 30
max_iters = 800
eval_interval = 100
eval_iters = 5
eval_examples = 300
