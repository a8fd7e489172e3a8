"""
NTP vs MEAP, measured: train the same model over a grid of mask ratios and seeds, evaluate every
checkpoint on clean held-out retrieval settings, and write a results table and plots.

    python -m experiments.compare --preset cpu                  # the README's Results (about 21 min on 2 CPU cores)
    python -m experiments.compare --preset gpu                  # bigger model, longer contexts, one GPU
    python -m experiments.compare --preset cpu --set n_layer=4  # any train.py setting, for every run
    python -m experiments.compare --preset cpu --ratios 0,0.15 --seeds 4,5   # more seeds in the same grid
    python -m experiments.compare --preset cpu --set mask_mode=shared --against results/cpu --out results/cpu-shared
    python -m experiments.compare --report results/cpu          # rewrite results.md and results.png from runs.json

Every run of a grid differs from the NTP run of its seed only in mask_ratio: same weights at
init, same data order, same steps (train.py seeds all of them from --seed). A run lives in
OUT/runs/r<ratio>_s<seed>/ (checkpoints are not committed); an interrupted grid resumes: finished
runs are kept, a half-trained one continues from its last checkpoint (bit-exact), and only the
missing work is done. Every finished run's numbers go into OUT/runs.json, and the report
(results.md, results.png) is a function of that file and grid.json alone, so a reader can re-derive
every number without training. --against DIR adds this grid minus the grid in DIR at each ratio,
paired by seed: the way to compare two variants of MEAP (e.g. the official shared masks against
per-sequence ones).

What each checkpoint is asked (all on clean inputs, from a seed no training stream uses):
- needle: the trained needle task at each depth (the depth curve) and at shorter contexts (the
  length curve); with twice the distractors; with two needles asked about (multi-query).
- mqar: the trained number of pairs, and twice as many (out of distribution).
- kv: lost in the middle, twice the trained number of pairs, accuracy by the asked pair's position.
- filler: the next-token loss on filler words minus its entropy floor (the "on par" check for
  language modelling), and the clean val loss that train.py logged.
- steps to 90%: the first evaluation at which train.py's retrieval accuracy reached 0.9.
"""

import argparse
import os
import sys
import time

if not __package__:  # run as a file: the imports below need the repository root, which -m puts on the path
    raise SystemExit(f"error: run it from the repository root as a module: python -m experiments.compare {' '.join(sys.argv[1:])}".rstrip())
import runtime  # noqa: E402  (before torch: Ctrl-C while the libraries load is one line too)
if __name__ == "__main__":
    runtime.exit_on_ctrl_c("nothing was written", at_once=True)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from runtime import die  # noqa: E402
import tasks  # noqa: E402
from random_streams import VAL_SEED  # noqa: E402
from experiments.common import (apply_set, claim_out, diff_cells, evals_of, grid_runs, header, interrupted, load_model,  # noqa: E402
                                load_runs, mean_sd, parse_list, read_json, record_runs, report_or_die, run_name,
                                save_png, seeds_of, steps_to, summary, train, write_json, write_text, VERDICTS)

# train.py's defaults for how MEAP masks and how the model starts, written into every preset so that
# each grid's grid.json records them (the paper's uniform [MASK]; --set changes them per grid)
SUITE = 7  # with random_streams.VAL_SEED: the random stream of the held-out suite (the core's ids are 0-5)
MEAP_DEFAULTS = dict(mask_mode="per_sequence", mask_queries=True, corruption="mask", init="nanomeap", mqar_offset=0)
# train.py settings of each preset; every run of a grid gets them, plus --mask_ratio and --seed
PRESETS = {
    # the README's Results: 15 runs of ~3 minutes, two at a time on 2 CPU cores: 24 minutes
    "cpu": dict(train=dict(task="mix", block_size=64, batch_size=32, n_layer=2, n_head=4, n_kv_head=4,
                           n_embd=128, n_pairs=4, n_needles=4, max_iters=1000, warmup_iters=100,
                           eval_interval=100, eval_iters=5, eval_examples=200, device="cpu", dtype="float32",
                           **MEAP_DEFAULTS),
                ratios=(0.0, 0.05, 0.10, 0.15, 0.20), seeds=(1, 2, 3), jobs=2, threads=1, examples=400),
    # one GPU (not yet run on one: see the README): a 4-layer, 256-wide model on 1024-token
    # contexts, 16 pairs and 8 needles; meant to take ~10 minutes on one H100
    "gpu": dict(train=dict(task="mix", block_size=1024, batch_size=32, n_layer=4, n_head=8, n_kv_head=8,
                           n_embd=256, n_pairs=16, n_needles=8, max_iters=1500, warmup_iters=150,
                           eval_interval=100, eval_iters=5, eval_examples=200, device="auto", **MEAP_DEFAULTS),
                ratios=(0.0, 0.05, 0.10, 0.15, 0.20), seeds=(1, 2, 3), jobs=1, threads=0, examples=500),
    # seconds: for the tests
    "tiny": dict(train=dict(task="mix", block_size=32, batch_size=4, n_layer=1, n_head=2, n_kv_head=2,
                            n_embd=32, n_pairs=2, n_needles=2, max_iters=6, warmup_iters=1,
                            eval_interval=3, eval_iters=1, eval_examples=10, log_interval=1, device="cpu",
                            **MEAP_DEFAULTS),
                ratios=(0.0, 0.15), seeds=(1, 2), jobs=1, threads=1, examples=20),
}


# -----------------------------------------------------------------------------
# the evaluation suite of one checkpoint


def lengths_of(T):
    """Context lengths of the length curve: a quarter, half and all of the trained block."""
    return sorted({max(T // 4, 16), max(T // 2, 16), T})


@torch.no_grad()
def suite(model, cfg, n_examples=400, seed=(VAL_SEED, SUITE), device="cpu"):
    """Accuracy of a trained model on every held-out setting (see the module docstring), as a
    flat dict of floats. cfg holds train.py's block_size, n_pairs and n_needles."""
    T, P, N = cfg["block_size"], cfg["n_pairs"], cfg["n_needles"]
    rng = np.random.default_rng(list(seed))

    def acc(make):
        return tasks.accuracy(model, make, n_examples, batch_size=100, device=device)

    res = {}
    for d in tasks.DEPTHS:
        res[f"needle_d{d:.2f}"] = acc(lambda b: tasks.needle(rng, b, T, N, depth=d))
    res["needle"] = float(np.mean([res[f"needle_d{d:.2f}"] for d in tasks.DEPTHS]))
    for L in lengths_of(T):
        res[f"needle_L{L}"] = acc(lambda b: tasks.needle(rng, b, L, N))
    res["needle_2x"] = acc(lambda b: tasks.needle(rng, b, T, 2 * N))
    res["needle_mq"] = acc(lambda b: tasks.needle(rng, b, T, N, n_queries=2))
    res["mqar"] = acc(lambda b: tasks.mqar(rng, b, T, P))
    res["mqar_2x"] = acc(lambda b: tasks.mqar(rng, b, T, 2 * P))
    for i in range(2 * N):
        res[f"kv_p{i}"] = acc(lambda b: tasks.kv(rng, b, T, 2 * N, i))
    res["kv"] = float(np.mean([res[f"kv_p{i}"] for i in range(2 * N)]))

    # language modelling on the filler: next-token loss where a filler word follows a filler word
    b = tasks.needle(rng, n_examples, T, N)
    logits = model(b.x.to(device))[0].float().cpu()  # (B, T, V)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), b.y, reduction="none")  # (B, T)
    lm = torch.from_numpy(np.isin(b.x.numpy(), tasks.FILLER) & np.isin(b.y.numpy(), tasks.FILLER))
    res["filler_excess"] = nll[lm].mean().item() - tasks.FILLER_ENTROPY
    return res


# -----------------------------------------------------------------------------
# the grid

def do_run(run_dir, ratio, seed, settings, threads, examples):
    """Train (or finish training) one run, then evaluate it; writes run_dir/suite.json."""
    run_dir = os.path.abspath(run_dir)
    train(run_dir, ratio, seed, settings, threads)
    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() and str(settings.get("device", "auto")).startswith(("auto", "cuda")) \
        else "cpu"
    model, cfg, _ = load_model(run_dir, device)
    res = suite(model, cfg, examples, device=device)
    evals = evals_of(run_dir)
    res["val_loss"] = evals[-1]["val_loss"]
    res["steps_to_90"] = steps_to(evals, 0.9)
    res["curve"] = [[m["iter"], m.get("acc", float("nan"))] for m in evals]
    res["evals"] = [{k: m[k] for k in ("iter", "val_loss", "acc", "acc_mqar", "acc_needle") if k in m} for m in evals]
    write_json(os.path.join(run_dir, "suite.json"), res)
    return res


# settings that change how MEAP corrupts its inputs and nothing else: at mask_ratio 0 (NTP) a run
# is the same whatever they are (train.py draws no mask then), so a grid that differs from another
# only in these can take its NTP runs from it instead of training them again
MEAP_ONLY = ("mask_mode", "mask_queries", "corruption")


def ntp_twin(out, other):
    """True when the grid in `other` trains NTP runs identical to those of the grid in `out`: the
    same settings but for MEAP_ONLY, and the same evaluation."""
    a, b = read_json(os.path.join(out, "grid.json")), read_json(os.path.join(other, "grid.json"))
    same = {k for k in a["settings"].keys() | b["settings"].keys() if k not in MEAP_ONLY}
    return all(a["settings"].get(k) == b["settings"].get(k) for k in same) and a["examples"] == b["examples"]


def run_grid(out, ratios, seeds, settings, jobs=1, threads=1, examples=400, ntp_from=None):
    """Run every (ratio, seed) without a suite.json, `jobs` at a time, with a progress line per
    finished run; return {(ratio, seed): suite dict}. ntp_from: a grid whose finished NTP runs are
    copied instead of trained (only pass one for which ntp_twin() holds)."""
    copied = 0
    for seed in seeds if ntp_from and 0 in ratios else []:
        twin = os.path.join(ntp_from, "runs", run_name(0, seed), "suite.json")
        path = os.path.join(out, "runs", run_name(0, seed))
        if os.path.exists(twin) and not os.path.exists(os.path.join(path, "suite.json")):
            os.makedirs(path, exist_ok=True)
            write_json(os.path.join(path, "suite.json"), dict(read_json(twin), copied_from=twin))
            copied += 1
    if copied:
        print(f"copied {copied} NTP run(s) from {ntp_from}: at mask_ratio 0 the settings that differ "
              f"({', '.join(MEAP_ONLY)}) change nothing")

    def describe(job, res):
        return (f"mask_ratio {job[0]:.2f} seed {job[1]}: needle {res['needle']:.3f} mqar {res['mqar']:.3f} "
                f"mqar_2x {res['mqar_2x']:.3f} kv {res['kv']:.3f}")

    return grid_runs(out, ratios, seeds, lambda job: do_run(job[2], job[0], job[1], settings, threads, examples),
                     describe, jobs)


# -----------------------------------------------------------------------------
# the report

COLUMNS = [  # (suite key, column title, format, which side of a difference is a gain)
    ("needle", "needle", "{:.3f}", "higher"),
    ("needle_2x", "needle, 2x distractors", "{:.3f}", "higher"),
    ("needle_mq", "needle, 2 queries", "{:.3f}", "higher"),
    ("mqar", "MQAR", "{:.3f}", "higher"),
    ("mqar_2x", "MQAR, 2x pairs (OOD)", "{:.3f}", "higher"),
    ("kv", "kv, 2x pairs (LitM)", "{:.3f}", "higher"),
    ("filler_excess", "filler loss - floor", "{:.4f}", "lower"),
    ("val_loss", "val loss", "{:.4f}", "lower"),
    ("steps_to_90", "steps to 90%", "{:.0f}", "lower"),
]


def table(results, ratios, seeds):
    """The report: summary() of COLUMNS, then accuracy by needle depth and by kv position."""
    lines = [summary(results, ratios, seeds, COLUMNS)]
    # the curves behind the plots, as numbers: accuracy by needle depth and by kv position
    some = results[(ratios[0], seeds_of(results, ratios[0], seeds)[0])]
    for title, keys, names in [("needle accuracy by depth of the asked needle",
                                [f"needle_d{d:.2f}" for d in tasks.DEPTHS], [f"{d:.2f}" for d in tasks.DEPTHS]),
                               ("kv (lost in the middle) accuracy by position of the asked pair",
                                sorted((k for k in some if k.startswith("kv_p")), key=lambda k: int(k[4:])),
                                None)]:
        names = names or [str(int(k[4:]) + 1) for k in keys]
        lines += [f"\n{title}, mean over seeds.\n", header("mask_ratio", names)]
        for r in ratios:
            lines.append(f"| {r:.2f} | " + " | ".join(
                f"{mean_sd([results[(r, s)][k] for s in seeds_of(results, r, seeds)])[0]:.3f}" for k in keys) + " |\n")
    return "".join(lines).replace("nan", "n/a")


def against_table(results, other, seeds, columns, label):
    """Markdown: this grid minus another grid at every mask ratio both have, paired by seed (the
    seeds both have), for the (key, title, format) columns; label names the other grid."""
    head = header("mask_ratio", [c[1] for c in columns])
    lines = [f"\nThis grid minus {label}, at the same mask_ratio, paired by seed: mean [95% paired-t interval] and its "
             f"verdict{VERDICTS}.\n",
             head]
    for r in sorted({r for r, _ in results} & {r for r, _ in other}):
        both = [s for s in seeds_of(results, r, seeds) if (r, s) in other]
        a, b = {s: results[(r, s)] for s in both}, {s: other[(r, s)] for s in both}
        lines.append(f"| {r:.2f} ({len(both)} seeds) | " + " | ".join(diff_cells(a, b, columns, both)) + " |\n")
    return "".join(lines).replace("nan", "n/a")


def figure(results, ratios, seeds, cfg):
    """A matplotlib Figure of four panels: accuracy by needle depth, by context length, by kv
    position, and over training. Built without pyplot, so it needs no display (a notebook shows it
    with display(fig))."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    T, N = cfg["block_size"], cfg["n_needles"]
    panels = [("needle accuracy by depth", "depth of the asked needle", list(tasks.DEPTHS),
               [f"needle_d{d:.2f}" for d in tasks.DEPTHS]),
              ("needle accuracy by context length", "context length (tokens)", lengths_of(T),
               [f"needle_L{L}" for L in lengths_of(T)]),
              (f"lost in the middle: kv with {2 * N} pairs", "position of the asked pair", list(range(1, 2 * N + 1)),
               [f"kv_p{i}" for i in range(2 * N)])]
    fig = Figure(figsize=(20, 4.2))
    axes = fig.subplots(1, 4)
    colors = colormaps["viridis"](np.linspace(0, 0.9, len(ratios)))
    for ax, (title, xlabel, xs, keys) in zip(axes, panels):
        for r, c in zip(ratios, colors):
            m = np.array([[results[(r, s)][k] for k in keys] for s in seeds_of(results, r, seeds)])  # (seeds, points)
            ax.errorbar(xs, m.mean(0), yerr=m.std(0), color=c, marker="o", capsize=3,
                        label="NTP" if r == 0 else f"MEAP {r:.2f}")
        ax.axhline(1 / len(tasks.VALUES), color="gray", ls=":", label="chance (an untrained model)")
        ax.set(title=title, xlabel=xlabel, ylabel="exact-match accuracy", ylim=(-0.02, 1.02))
    ax = axes[3]
    for r, c in zip(ratios, colors):
        curves = np.array([results[(r, s)]["curve"] for s in seeds_of(results, r, seeds)])  # (seeds, evals, 2)
        ax.plot(curves[0, :, 0], curves[:, :, 1].mean(0), color=c, label="NTP" if r == 0 else f"MEAP {r:.2f}")
    ax.set(title="retrieval accuracy during training", xlabel="step", ylabel="accuracy (mean over seeds)",
           ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


# -----------------------------------------------------------------------------
# the report: a pure function of runs.json and grid.json, so anyone can re-derive every number


def report(out):
    """Write out/results.md and out/results.png from out/grid.json and out/runs.json alone: the
    commands that trained the runs, table(), and, when runs.json names another grid ('against'),
    this grid minus that one at each shared ratio. Returns the markdown."""
    grid = read_json(os.path.join(out, "grid.json"))
    data, results = load_runs(out)
    ratios, seeds = sorted({r for r, _ in results}), sorted({s for _, s in results})
    md = table(results, ratios, seeds)
    if data.get("against"):
        other_dir = os.path.normpath(os.path.join(out, data["against"]))
        other = load_runs(other_dir)[1]
        theirs = read_json(os.path.join(other_dir, "grid.json"))["settings"]
        differ = ", ".join(f"{k}={v}" for k, v in grid["settings"].items() if theirs.get(k) != v) or "nothing"
        md += against_table(results, other, seeds, COLUMNS, f"[`{os.path.basename(other_dir)}`]({data['against']}/results.md) (settings that "
                            f"differ here: {differ})")
    commands = "\n".join(f"`{c}`" for c in data["commands"])
    write_text(os.path.join(out, "results.md"), f"{commands}\n\nPer-run data: [runs.json](runs.json), from which "
               f"`python -m experiments.compare --report DIR` rewrites this file and results.png.\n\n{md}")
    cfg = {k: int(grid["settings"][k]) for k in ("block_size", "n_pairs", "n_needles")}  # what the plots need
    plots(results, ratios, seeds, cfg, os.path.join(out, "results.png"))
    return md


def plots(results, ratios, seeds, cfg, path):
    """figure() as a PNG at path, through a temporary file."""
    save_png(figure(results, ratios, seeds, cfg), path)


# -----------------------------------------------------------------------------
# the command line


def main(argv=None):
    ap = argparse.ArgumentParser(description="NTP vs MEAP over mask ratios and seeds (see the docstring).")
    ap.add_argument("--preset", default="cpu", help=f"one of {', '.join(PRESETS)}")
    ap.add_argument("--out", default=None, help="results folder (default results/PRESET)")
    ap.add_argument("--ratios", default=None, help="comma-separated mask ratios; 0 (NTP) is the baseline")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds")
    ap.add_argument("--jobs", type=int, default=None, help="runs at a time")
    ap.add_argument("--examples", type=int, default=None, help="held-out examples per evaluation setting")
    ap.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                    help="train.py settings for every run (repeatable)")
    ap.add_argument("--against", default=None, metavar="DIR",
                    help="also report this grid minus the grid in DIR, ratio by ratio, paired by seed")
    ap.add_argument("--overwrite", action="store_true",
                    help="train again, and replace in runs.json, runs it records whose folders are gone")
    ap.add_argument("--report", default=None, metavar="DIR",
                    help="only rewrite DIR/results.md and results.png from DIR/runs.json (no training)")
    ap.error = lambda msg: die(f"{msg} (python -m experiments.compare --help lists the options)")
    args = ap.parse_args(argv)
    if args.report:
        for name in ("grid.json", "runs.json"):
            if not os.path.exists(os.path.join(args.report, name)):
                die(f"{args.report} has no {name}; --report takes a folder compare.py wrote")
        if args.against and not os.path.exists(os.path.join(args.against, "runs.json")):
            die(f"--against {args.against}: no runs.json there; give a folder compare.py wrote")
        if args.against:  # recorded, so that the report stays a function of the folder
            record_runs(args.report, {}, against=os.path.relpath(args.against, args.report))
        print(report_or_die(report, args.report))
        print(f"wrote {args.report}/results.md and {args.report}/results.png")
        return
    if args.preset not in PRESETS:
        die(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[args.preset]
    settings = apply_set(p["train"], args.set, ("mask_ratio", "seed", "out_dir", "init_from"), "--ratios/--seeds/--out")
    ratios = parse_list(args.ratios, float) if args.ratios is not None else p["ratios"]
    seeds = parse_list(args.seeds, int) if args.seeds is not None else p["seeds"]
    out = args.out or os.path.join("results", args.preset)
    jobs = p["jobs"] if args.jobs is None else args.jobs
    examples = p["examples"] if args.examples is None else args.examples
    if jobs < 1 or examples < 1:
        die(f"--jobs and --examples must be at least 1 (got {jobs} and {examples})")
    if args.against and not os.path.exists(os.path.join(args.against, "runs.json")):
        die(f"--against {args.against}: no runs.json there; give a folder compare.py wrote")
    if not all(0 <= r < 1 for r in ratios) or min(seeds) < 0:
        die(f"need --ratios in [0, 1) and --seeds >= 0 (got {ratios} and {seeds})")
    planned = {(r, s): os.path.join(out, "runs", run_name(r, s), "suite.json") for r in ratios for s in seeds}
    claim_out(out, {"settings": {k: str(v) for k, v in settings.items()}, "examples": examples}, planned,
              overwrite=args.overwrite)

    n = len(ratios) * len(seeds)
    print(f"compare: {n} runs ({len(ratios)} mask ratios x {len(seeds)} seeds), {jobs} at a time, in {out}")
    t0 = time.time()
    ntp_from = args.against if args.against and ntp_twin(out, args.against) else None
    runtime.ctrl_c_raises()  # interrupted() stops the runs and says how to continue
    try:
        results = run_grid(out, ratios, seeds, settings, jobs, p["threads"], examples, ntp_from)
    except KeyboardInterrupt:
        interrupted(out)
    runtime.exit_on_ctrl_c(f"the finished runs are kept in {out}; the same command writes the report")
    cmd = " ".join(["python -m experiments.compare"] + (argv if argv is not None else sys.argv[1:]))
    record_runs(out, results, cmd, against=os.path.relpath(args.against, out) if args.against else None)
    print(report(out))
    runtime.work_done()
    print(f"wrote {out}/runs.json, {out}/results.md and {out}/results.png | {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
