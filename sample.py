"""
Generate from a checkpoint written by train.py.

    python sample.py                                  # out/ckpt.pt: held-out retrieval prompts
    python sample.py --start "| K3 7 K9 12 ka lo K9"  # your own prompt (task words)
    python sample.py --start FILE:prompt.txt --out_dir out-shakespeare --max_new_tokens 200

With no --start, a checkpoint trained on the synthetic tasks is shown held-out task prompts, cut
right after the question; the first generated token is its answer, printed next to the expected
one. [MASK] and the vocabulary padding are never sampled.
"""

import os
import sys

import runtime  # before torch: Ctrl-C while the libraries load is one line too
import configurator
runtime.exit_on_ctrl_c("stopped sampling", at_once=True)

import torch  # noqa: E402

import checkpoint  # noqa: E402
import random_streams  # noqa: E402
import tasks  # noqa: E402
import tokenizer  # noqa: E402
from runtime import die  # noqa: E402

# -----------------------------------------------------------------------------
out_dir = "out"  # folder holding ckpt.pt
start = ""  # prompt text, or FILE:path to read it from a file; '' = held-out task prompts
num_samples = 3  # samples to draw
max_new_tokens = 8  # tokens to generate per sample
temperature = 0.8  # 1.0 = the model's distribution, lower = more greedy, 0 = greedy
top_k = 200  # sample only among the k likeliest tokens; 0 = all
seed = 1337  # seeds the sampling and the choice of task prompts
device = "auto"  # 'auto' (cuda, then mps, then cpu), or cpu, cuda, cuda:1, mps
# -----------------------------------------------------------------------------
try:
    configurator.apply(sys.argv[1:], globals())
except configurator.ConfigError as e:
    die(e)
MAX_TOKENS = 10**6

if num_samples < 1 or max_new_tokens < 1:
    die(f"--num_samples and --max_new_tokens must be at least 1 (got {num_samples} and {max_new_tokens})")
if not (temperature == 0 or 1e-3 <= temperature <= 1e3):  # beyond, float32 logits overflow or flatten (NaN too)
    die(f"--temperature must be 0 (greedy) or in [0.001, 1000], got {temperature}")
if not 0 <= seed < 2**31:
    die(f"--seed must be in [0, 2**31), got {seed}")
if num_samples * max_new_tokens > MAX_TOKENS:  # each new token costs a forward pass: beyond this, hours
    die(f"--num_samples x --max_new_tokens is {num_samples * max_new_tokens:,}; sample.py draws at most "
        f"{MAX_TOKENS:,} tokens in all (lower either)")
try:
    device = runtime.pick_device(device)
except ValueError as e:
    die(e)
if not out_dir.strip():
    die("--out_dir is empty; give the folder of a train.py run")
ckpt_path = os.path.join(out_dir, "ckpt.pt")
if not os.path.exists(ckpt_path):
    die(checkpoint.hf_export_hint(out_dir, "--out_dir") or
        f"no checkpoint at {ckpt_path}; train one first (python train.py), or point --out_dir at one")
try:
    ckpt = checkpoint.load_checkpoint(ckpt_path)
    model = checkpoint.check_whole(ckpt, ckpt_path).to(device)  # weights, meta, [MASK] id: all there
    cfg = checkpoint.settings(ckpt)  # the settings it was trained with (defaults for those it predates)
except ValueError as e:  # unreadable, incomplete, edited, or a checkpoint of another model.py
    die(e if ckpt_path in str(e) else f"{ckpt_path}: {e}")
meta, mask_token_id = ckpt["meta"], ckpt["mask_token_id"]
torch.manual_seed(seed)

# the tokenizer the checkpoint was trained with
if meta["kind"] == "synthetic":
    encode, decode = tasks.encode, tasks.decode
else:  # a text dataset: GPT-2 BPE, bytes, or nanoGPT's characters (tokenizer.py)
    try:
        tok = tokenizer.for_meta(meta)
    except ValueError as e:
        die(e)
    encode, decode = tok.encode, tok.decode


def generate(prompt_ids):
    x = torch.tensor(prompt_ids, dtype=torch.long, device=device)[None, :]  # (1, T)
    try:
        y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k or None,
                           vocab_limit=mask_token_id)  # ids from [MASK] up are never drawn
    except ValueError as e:  # a bad --temperature or --top_k (model.generate checks them)
        die(e)
    return y[0, len(prompt_ids):].tolist()


if start or meta["kind"] != "synthetic":
    text = start or "\n"
    if text.startswith("FILE:"):
        try:
            with open(text[5:], encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            die(f"--start {text}: cannot read it as UTF-8 text ({getattr(e, 'strerror', None) or e.reason})")
    try:
        prompt = encode(text)
    except ValueError as e:
        die(e)
    if not prompt:
        die("the prompt encodes to no tokens")
    for _ in range(num_samples):
        print(decode(prompt + generate(prompt)))
        print("---------------")
else:
    # held-out prompts of the checkpoint's task, cut right after the first question
    rng = random_streams.stream(seed, random_streams.PROMPTS)
    names = ["mqar", "needle"] if cfg["task"] == "mix" else [cfg["task"]]
    for i in range(num_samples):
        name = names[i % len(names)]
        b = tasks.make_batch(name, rng, 1, cfg["block_size"], cfg["n_pairs"], cfg["n_needles"])
        q = int(b.query[0].nonzero()[0])  # position of the first question's key
        prompt, expected = b.x[0, :q + 1].tolist(), tasks.ITOS[int(b.y[0, q])]
        out = generate(prompt)
        verdict = "right" if tasks.ITOS[out[0]] == expected else "wrong"
        print(f"[{name}] {decode(prompt)}")
        print(f"  -> generated: {decode(out)}")
        print(f"  answer {tasks.ITOS[out[0]]}, expected {expected}: {verdict}")
        print("---------------")
