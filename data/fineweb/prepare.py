"""
FineWeb-Edu (HuggingFace, 'sample-10BT') as GPT-2 BPE tokens: the large corpus of the GPU presets.
Streamed: documents are read as they arrive, tokenized by a pool of processes, and written to disk
in chunks, so neither the corpus nor its tokens ever sit in memory at once.

    pip install datasets                               # the one extra dependency, only for this script
    python data/fineweb/prepare.py --tokens 10e9       # for config/gpt2_124m.py: 20 GB of uint16
    python data/fineweb/prepare.py --tokens 2.1e9      # for config/meap_paper_small.py: 4.2 GB

Writes val.bin (the first --val_tokens tokens of the stream), train.bin (the next --tokens) and
meta.pkl here. Documents are separated by <|endoftext|> (50256); MEAP's [MASK] is 50257. Each file
is written under a temporary name and renamed when complete. Expected output ends with:

    val.bin 10,000,000 tokens, train.bin 10,000,000,000 tokens, meta.pkl -> data/fineweb
"""

import argparse
import os
import sys
import time
from itertools import islice
from multiprocessing import Pool

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import runtime  # noqa: E402  (before torch: Ctrl-C while the libraries load is one line too)
if __name__ == "__main__":
    runtime.exit_on_ctrl_c("the files written so far are whole; run it again to write them all", at_once=True)
from atomic_files import write_atomically  # noqa: E402
from runtime import die  # noqa: E402
from tokenizer import get_tokenizer, write_meta  # noqa: E402

EOT = 50256  # GPT-2's <|endoftext|>
_tok = None


def encode(text):
    """One document -> uint16 ids, <|endoftext|> first (runs in a worker process)."""
    global _tok
    if _tok is None:
        _tok = get_tokenizer("gpt2")
    return np.array([EOT] + _tok.encode(text), dtype=np.uint16)


def documents(pool, texts, batch=1024):
    """Token arrays of the texts, in order, `batch` documents at a time: Pool.imap alone would read
    the whole stream ahead into memory."""
    while True:
        chunk = list(islice(texts, batch))
        if not chunk:
            return
        yield from pool.imap(encode, chunk, chunksize=16)


def main():
    ap = argparse.ArgumentParser(description="Stream FineWeb-Edu into GPT-2 BPE train.bin / val.bin.")
    ap.add_argument("--tokens", type=float, default=10e9, help="training tokens to write")
    ap.add_argument("--val_tokens", type=float, default=10e6, help="held-out tokens, taken first")
    ap.add_argument("--source", default="HuggingFaceFW/fineweb-edu", help="a HuggingFace dataset with a 'text' column")
    ap.add_argument("--subset", default="sample-10BT", help="its configuration name")
    ap.add_argument("--out_dir", default=os.path.relpath(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.error = lambda msg: die(f"{msg} (--help lists the options)")
    args = ap.parse_args()
    try:
        from datasets import load_dataset
    except ImportError:
        die("data/fineweb/prepare.py streams through HuggingFace datasets: pip install datasets")
    try:
        tok = get_tokenizer("gpt2")
    except ValueError as e:
        die(e)
    stream = load_dataset(args.source, name=args.subset, split="train", streaming=True)
    os.makedirs(args.out_dir, exist_ok=True)
    goals = [("val", int(args.val_tokens)), ("train", int(args.tokens))]
    t0 = time.time()
    with Pool(args.workers) as pool:
        docs = documents(pool, (row["text"] for row in stream))
        carry = np.zeros(0, dtype=np.uint16)  # tokens past the end of the previous file

        def write(tmp, split, goal):
            nonlocal carry
            written = 0
            with open(tmp, "wb") as f:
                while written < goal:
                    if len(carry) == 0:
                        try:
                            carry = next(docs)
                        except StopIteration:
                            die(f"{args.source} ended after {written:,} {split} tokens; ask for fewer --tokens")
                    take, carry = carry[:goal - written], carry[goal - written:]
                    take.tofile(f)
                    written += len(take)
                    if written % 100_000_000 < len(take):
                        rate = written / (time.time() - t0)
                        print(f"{split}: {written:,} / {goal:,} tokens | {rate / 1e6:.2f}M tokens/s", flush=True)

        for split, goal in goals:
            write_atomically(os.path.join(args.out_dir, f"{split}.bin"), lambda tmp: write(tmp, split, goal))
    write_meta(args.out_dir, tok)
    print(f"val.bin {goals[0][1]:,} tokens, train.bin {goals[1][1]:,} tokens, meta.pkl -> {args.out_dir}")


if __name__ == "__main__":
    main()
