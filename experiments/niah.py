"""
Needle in a haystack on natural text (Kamradt 2023; the MEAP paper's §4.1.2), for any checkpoint that
train.py wrote on a text dataset. A needle sentence with a random number goes into held-out text
at a chosen depth, the question comes at the end, and the model's greedy answer must be the number:

    ... haystack ... The special magic number is 48213. ... haystack ...
    What is the special magic number? The special magic number is  -> " 48213"

    python -m experiments.niah --out_dir out-shakespeare                   # the default grid for that checkpoint
    python -m experiments.niah --out_dir out-shakespeare --lengths 64,120 --depths 0,0.5,1 --trials 50

The haystack is the dataset's val.bin (text the model never trained on), from a random offset per
trial. Depth d puts the needle after round(d * H) of the H haystack tokens (0 = the start, 1 =
just before the question); every prompt of a cell is exactly `length` tokens long. Scoring is exact
match: the first number in the greedy continuation must equal the needle's. Prints the depth x
length grid and writes OUT_DIR/niah.json and OUT_DIR/niah.png (the familiar heatmap).
"""

import argparse
import os
import sys
import re
import shlex

if not __package__:  # run as a file: the imports below need the repository root, which -m puts on the path
    raise SystemExit(f"error: run it from the repository root as a module: python -m experiments.niah {' '.join(sys.argv[1:])}".rstrip())
import runtime  # noqa: E402  (before torch: Ctrl-C while the libraries load is one line too)
if __name__ == "__main__":
    runtime.exit_on_ctrl_c("nothing was written", at_once=True)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from runtime import die  # noqa: E402
import atomic_files  # noqa: E402
import checkpoint  # noqa: E402
from experiments.common import keep_result, parse_list, save_png, write_json  # noqa: E402
from experiments.probes import needle_prompt  # noqa: E402
from tokenizer import check_same, for_meta  # noqa: E402

NEEDLE = " The special magic number is {}."
QUESTION = " What is the special magic number? The special magic number is"
NEW_TOKENS = 8  # greedy tokens generated for the answer: enough for a 5-digit number in any tokenizer here


def make_prompt(tok, haystack, length, depth, number, rng):
    """Token ids (exactly `length`) of one prompt: haystack tokens from a random offset of the id
    array `haystack`, the needle at `depth` of them, then the question. Returns (ids, needle_at)."""
    needle, question = tok.encode(NEEDLE.format(number)), tok.encode(QUESTION)
    ids = needle_prompt(haystack, length, depth, needle, question, rng)
    return ids, round(depth * (length - len(needle) - len(question)))


def answer_ok(continuation, number):
    """Exact match: the first number in the generated text is the needle's."""
    m = re.match(r"\s*(\d+)", continuation)
    return m is not None and m.group(1) == str(number)


@torch.no_grad()
def evaluate(model, tok, haystack, lengths, depths, trials=20, seed=0, device="cpu"):
    """Accuracy for every (depth, length): {(depth, length): share of `trials` answered exactly}.
    model.generate(idx, max_new_tokens, temperature, vocab_limit) extends a batch of prompts."""
    rng = np.random.default_rng(seed)
    res = {}
    for L in lengths:
        for d in depths:
            numbers = rng.integers(10000, 100000, size=trials)
            prompts = torch.tensor([make_prompt(tok, haystack, L, d, int(n), rng)[0] for n in numbers])  # (trials, L)
            out = model.generate(prompts.to(device), NEW_TOKENS, temperature=0, vocab_limit=tok.vocab_size)
            answers = [tok.decode(row[L:].tolist()) for row in out.cpu()]
            res[(d, L)] = float(np.mean([answer_ok(a, int(n)) for a, n in zip(answers, numbers)]))
    return res


def table(res, lengths, depths):
    """Markdown grid: rows are depths, columns context lengths."""
    lines = ["| depth \\ tokens | " + " | ".join(str(L) for L in lengths) + " |",
             "|---" * (len(lengths) + 1) + "|"]
    lines += [f"| {d:.2f} | " + " | ".join(f"{res[(d, L)]:.2f}" for L in lengths) + " |" for d in depths]
    return "\n".join(lines)


def heatmap(res, lengths, depths, title, path):
    """The NIAH picture: depth down, context length across, accuracy as colour."""
    from matplotlib.figure import Figure

    grid = np.array([[res[(d, L)] for L in lengths] for d in depths])
    fig = Figure(figsize=(1.6 + 1.1 * len(lengths), 1.4 + 0.6 * len(depths)))
    ax = fig.subplots()
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths])
    ax.set(xlabel="context length (tokens)", ylabel="needle depth", title=title)
    fig.colorbar(im, ax=ax, label="exact-match accuracy")
    fig.tight_layout()
    save_png(fig, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Needle in a haystack on natural text for a train.py checkpoint.")
    ap.add_argument("--out_dir", default="out", help="the checkpoint's folder (ckpt.pt)")
    ap.add_argument("--lengths", default=None,
                    help="comma-separated context lengths (default: 1/4, 1/2 and all of block_size)")
    ap.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="comma-separated needle depths in [0, 1]")
    ap.add_argument("--trials", type=int, default=20, help="prompts per cell")
    ap.add_argument("--seed", type=int, default=0, help="seeds the numbers and the haystack offsets")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    ap.add_argument("--overwrite", action="store_true", help="replace the niah.json of an earlier run of this script")
    ap.error = lambda msg: die(f"{msg} (python -m experiments.niah --help lists the options)")
    args = ap.parse_args(argv)

    keep_result(os.path.join(args.out_dir, "niah.json"), args.overwrite)
    path = os.path.join(args.out_dir, "ckpt.pt")
    if not os.path.exists(path):
        die(f"no checkpoint at {path}; train one first (python train.py config/shakespeare_cpu.py)")
    try:
        ckpt = checkpoint.load_checkpoint(path)
        cfg, step = checkpoint.settings(ckpt), ckpt.get("iter_num", 0)
        if not isinstance(ckpt.get("meta"), dict):
            raise ValueError(f"{path}: its meta (the tokenizer) is not train.py's")
        atomic_files.check_writable(args.out_dir)  # niah.json goes there: check before the evaluation
        device = runtime.pick_device(args.device)
    except (ValueError, OSError) as e:
        die(f"{e}")
    meta = ckpt["meta"]
    if meta.get("kind") == "synthetic":
        die(f"{path} was trained on the synthetic tasks, which have their own needle "
                         f"(python -m experiments.compare); niah.py needs a checkpoint trained on a text --dataset")
    data_dir = os.path.join("data", cfg["dataset"])  # as train.py reads it (an absolute path works too)
    val = os.path.join(data_dir, "val.bin")
    if not os.path.exists(val):
        die(f"{val} not found: the haystack is the checkpoint's held-out text; "
                         f"prepare it with python {shlex.quote(os.path.join(data_dir, 'prepare.py'))}")
    T = ckpt["model_args"]["block_size"]
    try:
        check_same(ckpt, data_dir)  # the haystack's ids mean what they meant in training
        tok = for_meta(meta)
    except ValueError as e:
        die(f"{e}")
    # the shortest prompt worth asking: the needle, the question and a few haystack tokens
    shortest = len(tok.encode(NEEDLE.format(99999))) + len(tok.encode(QUESTION)) + 8
    if shortest > T - NEW_TOKENS:
        die(f"block_size {T} is too short for the needle, the question and an answer "
                         f"({shortest + NEW_TOKENS} tokens with {tok.name}); train with a longer --block_size")
    lengths = parse_list(args.lengths, int, "lengths") if args.lengths else \
        sorted({max(T // 4, shortest), max(T // 2, shortest), T - NEW_TOKENS})
    depths = parse_list(args.depths, float, "depths")
    if max(lengths) + NEW_TOKENS > T or not all(0 <= d <= 1 for d in depths) or args.trials < 1:
        die(f"need lengths of at most block_size - {NEW_TOKENS} = {T - NEW_TOKENS}, depths in "
                         f"[0, 1] and --trials >= 1 (got {lengths}, {depths}, {args.trials})")

    try:
        model = checkpoint.model_of(ckpt, device)
    except ValueError as e:
        die(f"{path}: {e}")
    haystack = np.memmap(val, dtype=np.uint16, mode="r")
    what = f"MEAP {cfg['mask_ratio']}" if cfg["mask_ratio"] > 0 else "NTP"
    print(f"{path}: {what}, step {step}, data/{cfg['dataset']} ({tok.name}); {args.trials} trials per cell")
    try:
        res = evaluate(model, tok, haystack, lengths, depths, args.trials, args.seed, device)
    except ValueError as e:
        die(f"{e}")
    md = table(res, lengths, depths)
    overall = float(np.mean(list(res.values())))
    print(md + f"\nmean accuracy {overall:.3f}")
    write_json(os.path.join(args.out_dir, "niah.json"),
               {"lengths": lengths, "depths": depths, "trials": args.trials, "mean": overall,
                "grid": [[res[(d, L)] for L in lengths] for d in depths]})
    heatmap(res, lengths, depths, f"needle in a haystack: {what}, step {step}",
            os.path.join(args.out_dir, "niah.png"))
    print(f"wrote {args.out_dir}/niah.json and {args.out_dir}/niah.png")


if __name__ == "__main__":
    main()
