"""
Python's standard library source as a text corpus, under a small BPE trained on it. Every machine
that runs this project has it (nothing to download), and source code repeats its own identifiers
within a file: the in-context repetition from which copying (induction heads) is learned.

    python data/stdlib/prepare.py                         # a 1,024-token BPE over this Python's stdlib
    python data/stdlib/prepare.py --vocab_size 2048       # another vocabulary
    python data/stdlib/prepare.py --repeat 1 --out_dir data/stdlib_dense   # with copied spans (text.py --preset stdlib)

The documents are the .py files under sysconfig's stdlib path, test suites and site-packages left
out, in sorted order; one in 20 (chosen by a hash of its path) is held out as val.bin. The BPE
(tokenizer.train_bpe) learns from the training documents alone, and its ranks go into meta.pkl.
The corpus is whatever Python runs this script: another Python version gives other text (the
script prints the version, and meta.pkl keeps it).

--repeat R copies, in a share R of the 64-token stretches of train.bin (--repeat_block), one span
of 8-24 tokens (--repeat_span) to a later place in the same stretch, over what stood there: text
shown twice at varied distances, as web text repeats itself. It is an augmentation, not the paper's
data; val.bin is never touched. Expected output (Python 3.11.7, about 10 seconds):

    674 files (11,354,770 characters) of Python 3.11.7's standard library; 637 train, 37 val
    bpe (1,024 ids, [MASK] = 1024), trained on the train files
    train.bin 4,073,097 tokens, val.bin 251,041 tokens, meta.pkl -> data/stdlib

and with the copied spans of the command above, the line before the last:

    train.bin: a copied span of 8-24 tokens in 63,642 of its 63,642 stretches of 64
"""

import argparse
import glob
import hashlib
import os
import platform
import sys
import sysconfig

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import runtime  # noqa: E402  (before torch: Ctrl-C while the libraries load is one line too)
if __name__ == "__main__":
    runtime.exit_on_ctrl_c("nothing was written", at_once=True)
from runtime import die  # noqa: E402
from tokenizer import bpe_tokenizer, check_out_dir, train_bpe, write_dataset  # noqa: E402

SKIP = ("site-packages", "test", "tests", "idlelib", "idle_test")  # folders left out: vendored code, test suites
SEPARATOR = "\n\n\n"  # between documents in the token stream


def stdlib_files(root=None):
    """The corpus's files: every .py under root (default: this Python's stdlib), sorted by path,
    none inside a folder named in SKIP."""
    root = root or sysconfig.get_paths()["stdlib"]
    files = glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
    return sorted(f for f in files if not set(os.path.relpath(f, root).split(os.sep)[:-1]) & set(SKIP))


def is_val(relpath):
    """One document in 20 is held out, by a hash of its path: the same split on every machine."""
    return int(hashlib.sha256(relpath.encode()).hexdigest(), 16) % 20 == 0


def add_repeats(ids, share, block, span, rng):
    """A copy of ids (1-D) where, in a share of its `block`-token stretches, one span of span[0] to
    span[1] tokens is copied to a later place in the same stretch (overwriting it). The span and
    its copy never overlap and never leave their stretch. Returns (ids, number of stretches changed)."""
    lo, hi = span
    if not (0 <= share <= 1 and 1 <= lo <= hi and 2 * hi <= block):
        raise ValueError(f"need --repeat in [0, 1] and 1 <= span low <= span high <= block / 2 "
                         f"(got {share}, {lo}-{hi}, block {block})")
    out, changed = np.array(ids, copy=True), 0
    for start in range(0, len(out) - block + 1, block):
        if rng.random() >= share:
            continue
        n = int(rng.integers(lo, hi + 1))
        s = int(rng.integers(0, block - 2 * n + 1))  # the span: s .. s + n - 1
        q = int(rng.integers(s + n, block - n + 1))  # its copy: q .. q + n - 1, after it, in the stretch
        out[start + q:start + q + n] = out[start + s:start + s + n]
        changed += 1
    return out, changed


def main(argv=None):
    ap = argparse.ArgumentParser(description="Python's standard library source, tokenized with a BPE trained on it.")
    ap.add_argument("--vocab_size", type=int, default=1024, help="BPE ids, the 256 bytes included")
    ap.add_argument("--out_dir", default=os.path.relpath(os.path.dirname(os.path.abspath(__file__))),
                    help="where to write (default: this script's folder)")
    ap.add_argument("--root", default=None, help="a folder of .py files to use instead of the standard library")
    ap.add_argument("--repeat", type=float, default=0.0, help="share of train.bin's stretches given a copied span")
    ap.add_argument("--repeat_block", type=int, default=64, help="tokens per stretch (a copy stays inside one)")
    ap.add_argument("--repeat_span", default="8,24", help="shortest,longest copied span in tokens")
    ap.error = lambda msg: die(f"{msg} (--help lists the options)")
    args = ap.parse_args(argv)
    try:
        span = tuple(int(v) for v in args.repeat_span.split(","))
        if len(span) != 2:
            raise ValueError
    except ValueError:
        die(f"--repeat_span takes two integers, shortest,longest; got {args.repeat_span!r}")
    if args.repeat:  # check the augmentation's settings before the minute of work below
        try:
            add_repeats(np.zeros(0, dtype=np.int64), args.repeat, args.repeat_block, span, np.random.default_rng(0))
        except ValueError as e:
            die(f"{e}")
    try:
        check_out_dir(args.out_dir)  # before the minute of work, too
    except ValueError as e:
        die(e)
    runtime.exit_on_ctrl_c(f"{args.out_dir} is as it was", at_once=True)
    root = args.root or sysconfig.get_paths()["stdlib"]
    files = stdlib_files(root)
    docs = {"train": [], "val": []}
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                docs["val" if is_val(os.path.relpath(f, root)) else "train"].append(fh.read())
        except (OSError, UnicodeDecodeError):  # a stray file that is not UTF-8: not text for us
            continue
    if not docs["train"] or not docs["val"]:
        die(f"{root} holds too few readable .py files to split ({len(files)} found); "
                         f"give --root a folder of Python source")
    text = {k: SEPARATOR.join(v) for k, v in docs.items()}
    n_chars = sum(map(len, text.values()))
    where = f"Python {platform.python_version()}'s standard library" if args.root is None else root
    print(f"{len(docs['train']) + len(docs['val'])} files ({n_chars:,} characters) of {where}; "
          f"{len(docs['train'])} train, {len(docs['val'])} val")
    try:
        ranks = train_bpe(text["train"], args.vocab_size)
    except ValueError as e:
        die(f"--vocab_size: {e}")
    tok = bpe_tokenizer(ranks)
    print(f"bpe ({tok.vocab_size:,} ids, [MASK] = {tok.mask_id}), trained on the train files")
    ids = {k: np.array(tok.encode(v), dtype=np.int64) for k, v in text.items()}
    if args.repeat:
        ids["train"], changed = add_repeats(ids["train"], args.repeat, args.repeat_block, span,
                                            np.random.default_rng(0))
        print(f"train.bin: a copied span of {span[0]}-{span[1]} tokens in {changed:,} of its "
              f"{len(ids['train']) // args.repeat_block:,} stretches of {args.repeat_block}")
    runtime.exit_on_ctrl_c(f"{args.out_dir} is as it was (its files are replaced together, at the end)")
    try:
        write_dataset(args.out_dir, ids, tok, bpe_ranks=ranks, python=platform.python_version(),
                      repeat=[args.repeat, args.repeat_block, *span] if args.repeat else None)
    except OSError as e:
        die(e)
    runtime.work_done()
    print(f"train.bin {len(ids['train']):,} tokens, val.bin {len(ids['val']):,} tokens, meta.pkl -> {args.out_dir}")


if __name__ == "__main__":
    main()
