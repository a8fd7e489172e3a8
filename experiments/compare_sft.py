"""
NTP-SFT vs MEAP-SFT, measured (paper §3.2): pre-train one NTP base, fine-tune it on the synthetic
multi-document QA with each objective and several seeds, and report exact-match accuracy by the
position of the gold document (the lost-in-the-middle curve) with a table and a plot.

    python -m experiments.compare_sft              # results/sft-cpu: a base and 12 runs (see results/README.md)
    python -m experiments.compare_sft --arms ntp,concat --seeds 1,2 --out results/sft-try
    python -m experiments.compare_sft --set max_iters=1600   # any train.py setting, for every fine-tuning run

The arms (train.py --sft and --mask_ratio), all from the same base, at equal tokens per step:
- ntp: NTP-SFT, the loss on the answer tokens.
- concat: the paper's MEAP-SFT, [prompt, answer, prompt, masked answer] in one sequence, half the
  examples per step (so half the epochs), the loss on both answers.
- separate: the official code's MEAP-SFT, the plain example plus a masked copy of it whose only
  targets are the masked tokens, half the examples per step.
- duplicate: concat with mask_ratio 0, the control that tells the masking from the duplication.

A seed fixes the fine-tuning set, its order and the masks; arms of one seed share the set and the
order. The paper masks 10% of answers of at least 50 tokens. Our answers are 20 tokens, so that the
paper's ratio 0.10 masks 2 of them: with a single masked token the official separate layout would
be inert (its copy's loss equals the clean example's, see mask.sft_meap_separate), and 20 is the
shortest answer for which 0.10 masks two.
Runs live in OUT/base and OUT/runs/<arm>_s<seed>; an interrupted comparison resumes.
"""

import argparse
import os
import runpy
import sys
import time

if not __package__:  # run as a file: the imports below need the repository root, which -m puts on the path
    raise SystemExit(f"error: run it from the repository root as a module: python -m experiments.compare_sft {' '.join(sys.argv[1:])}".rstrip())
import runtime  # noqa: E402  (before torch: Ctrl-C while the libraries load is one line too)
if __name__ == "__main__":
    runtime.exit_on_ctrl_c("nothing was written", at_once=True)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from runtime import die  # noqa: E402
import tasks  # noqa: E402
from random_streams import VAL_SEED  # noqa: E402
from experiments.common import (apply_set, claim_out, diff_cells, evals_of, in_parallel, interrupted, load_model,  # noqa: E402
                                load_runs, mean_sd, paired_ci, parse_list, read_json, record_runs, report_or_die, ROOT,
                                save_png, steps_to, summary, train, verdict, write_json, write_text, VERDICTS)
from experiments.compare import MEAP_DEFAULTS  # noqa: E402

QA_TEST = 9  # with random_streams.VAL_SEED: the random stream of the held-out questions
ARMS = {  # name: (train.py --sft, --mask_ratio; None = the preset's ratio)
    "ntp": ("ntp", 0.0),
    "concat": ("concat", None),
    "separate": ("separate", None),
    "duplicate": ("concat", 0.0),
}
LABELS = {"base": "base (no SFT)", "ntp": "NTP-SFT", "concat": "MEAP-SFT, concat (paper)",
          "separate": "MEAP-SFT, separate (official code)", "duplicate": "duplicate, no mask (control)"}


def config_file(path):
    """The settings a train.py config file assigns, as a dict."""
    return {k: v for k, v in runpy.run_path(path).items() if not k.startswith("__")}


BASE, SFT = config_file(os.path.join(ROOT, "config/sft_base.py")), config_file(os.path.join(ROOT, "config/sft_qa.py"))
FIXED = ("out_dir", "init_from", "sft", "mask_ratio", "seed")  # chosen by the comparison, per run
PRESETS = {
    # the README's table, from the two config files, on 2 CPU cores: the base, then 12 fine-tuning
    # runs, two at a time
    "cpu": dict(base={**MEAP_DEFAULTS, **{k: v for k, v in BASE.items() if k != "out_dir"}, "device": "cpu",
                      "dtype": "float32"},
                sft={**{k: v for k, v in SFT.items() if k not in FIXED}, "sft_static": False, "device": "cpu",
                     "dtype": "float32"},
                mask_ratio=SFT["mask_ratio"], arms=("ntp", "concat", "separate", "duplicate"), seeds=(1, 2, 3),
                jobs=2, threads=1, examples=1200),
    # seconds: for the tests
    "tiny": dict(base=dict(task="mix", block_size=48, batch_size=4, n_layer=1, n_head=2, n_kv_head=2, n_embd=32,
                           n_pairs=2, n_needles=2, max_iters=4, warmup_iters=1, eval_interval=2, eval_iters=1,
                           eval_examples=10, log_interval=1, mask_ratio=0.0, device="cpu"),
                 sft=dict(n_docs=3, answer_len=4, qa_tokens=24, sft_examples=16, sft_min_answer=1, batch_size=4,
                          max_iters=4, warmup_iters=1, eval_interval=2, eval_iters=1, eval_examples=6,
                          log_interval=1, device="cpu"),
                 mask_ratio=0.25, arms=("ntp", "concat"), seeds=(1, 2), jobs=1, threads=1, examples=12),
}


def score(run_dir, sft_settings, examples):
    """Exact match by gold position on held-out questions (tasks.evaluate_qa), and the accuracy
    during fine-tuning that train.py logged (none for the base); written to run_dir/sft.json."""
    model, _, _ = load_model(run_dir)
    res = tasks.evaluate_qa(model, int(sft_settings["qa_tokens"]) - 1, int(sft_settings["n_docs"]),
                            int(sft_settings["answer_len"]), examples, seed=[VAL_SEED, QA_TEST])
    evals = [row for row in evals_of(run_dir) if "acc_qa" in row]
    res["curve"] = [[row["iter"], row["acc_qa"]] for row in evals]
    res["steps_to_50"] = steps_to(evals, 0.5, "acc_qa")
    write_json(os.path.join(run_dir, "sft.json"), res)
    return res


def run_all(out, arms, seeds, preset, settings, ratio, jobs, examples):
    """The base, then every (arm, seed) without an sft.json, `jobs` at a time; returns
    {(arm, seed): results} with the base under ('base', seed) for every seed."""
    base_dir = os.path.abspath(os.path.join(out, "base"))
    if not os.path.exists(os.path.join(base_dir, "sft.json")):
        t = time.time()
        print("pre-training the NTP base ...", flush=True)
        base = dict(preset["base"])
        train(base_dir, base.pop("mask_ratio"), 0, base, threads=2)
        print(f"base done | {(time.time() - t) / 60:.1f} min", flush=True)
        score(base_dir, settings, examples)
    results = {("base", s): read_json(os.path.join(base_dir, "sft.json")) for s in seeds}

    todo = []
    for seed in seeds:
        for arm in arms:
            path = os.path.abspath(os.path.join(out, "runs", f"{arm}_s{seed}"))
            if os.path.exists(os.path.join(path, "sft.json")):
                results[(arm, seed)] = read_json(os.path.join(path, "sft.json"))
            else:
                todo.append((arm, seed, path))

    def one(job):
        arm, seed, path = job
        layout, r = ARMS[arm]
        run = dict(settings, sft=layout)
        if not os.path.exists(os.path.join(path, "ckpt.pt")):
            run["init_from"] = base_dir
        train(path, ratio if r is None else r, seed, run, threads=preset["threads"])
        return score(path, settings, examples)

    finished = in_parallel(one, todo, jobs, lambda job, res: f"{job[0]} seed {job[1]}: exact match {res['acc_qa']:.3f}")
    results.update({(arm, seed): res for (arm, seed, _), res in finished})
    return results


def table(results, arms, seeds, n_docs):
    """Markdown: the position-averaged accuracy and steps to 50% per arm (mean ± sd over seeds),
    each arm minus NTP-SFT paired by seed, and the accuracy by gold position."""
    rows = ["base"] + list(arms)
    cols = [("acc_qa", "exact match, mean over positions", "{:.3f}", "higher"),
            ("acc_qa_token", "answer tokens right", "{:.3f}", "higher"),
            ("acc_qa_first", "first answer token (the lookup)", "{:.3f}", "higher")]
    cols += [(f"acc_qa_g{k}", f"gold {k}", "{:.3f}", "higher") for k in sorted({1, (n_docs + 1) // 2, n_docs})]
    md = summary(results, rows, seeds, cols, names=LABELS, baseline="ntp", first="fine-tuning")
    if "duplicate" in arms and "concat" in arms:  # what the mask adds to the duplication alone
        md += ("\nWhat the mask adds: concat minus the duplicate control (the same layout, no mask), paired by "
               f"seed: mean [95% paired-t interval] and its verdict{VERDICTS}.\n| fine-tuning | " + " | ".join(c[1] for c in cols) + " |\n" +
               "|---" * (len(cols) + 1) + "|\n")
        concat, dup = ({s: results[(a, s)] for s in seeds} for a in ("concat", "duplicate"))
        md += f"| {LABELS['concat']} | " + " | ".join(diff_cells(concat, dup, cols, seeds)) + " |\n"
    md += "\nExact match by position of the gold document (1 = first, farthest from the question), mean over seeds.\n"
    md += "| fine-tuning | " + " | ".join(str(k) for k in range(1, n_docs + 1)) + " | steps to 50% |\n"
    md += "|---" * (n_docs + 2) + "|\n"
    for a in rows:
        accs = [mean_sd([results[(a, s)][f"acc_qa_g{k}"] for s in seeds])[0] for k in range(1, n_docs + 1)]
        steps = [results[(a, s)].get("steps_to_50", float("nan")) for s in seeds]
        never = int(np.isnan(steps).sum())
        cell = "n/a" if a == "base" else "never" if never == len(seeds) else \
            f"{mean_sd(steps)[0]:.0f}" + (f" ({never} never)" if never else "")
        md += f"| {LABELS[a]} | " + " | ".join(f"{v:.3f}" for v in accs) + f" | {cell} |\n"
    # lost in the middle, or not: the first gold position against the last, within each arm
    md += (f"\nGold document 1 minus gold document {n_docs}, within each arm, paired by seed: mean [95% paired-t "
           f"interval] and its verdict{VERDICTS}.\n")
    for a in arms:
        first = {s: {"d": results[(a, s)]["acc_qa_g1"]} for s in seeds}
        last = {s: {"d": results[(a, s)][f"acc_qa_g{n_docs}"]} for s in seeds}
        md += f"- {LABELS[a]}: " + diff_cells(first, last, [("d", "", "{:+.3f}")], seeds)[0] + "\n"
    return md


COLORS = {"base": "tab:gray", "ntp": "tab:blue", "concat": "tab:orange", "separate": "tab:green",
          "duplicate": "tab:purple"}


def figure(results, arms, seeds, n_docs, batch_size):
    """Three panels: exact match by gold position (mean ± sd over seeds); during fine-tuning, by
    step (equal tokens); and by examples seen (MEAP-SFT takes batch_size / 2 per step)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 4.2))
    ax, ax2, ax3 = fig.subplots(1, 3)
    xs = np.arange(1, n_docs + 1)
    for a in ["base"] + list(arms):
        style = dict(color=COLORS[a], label=LABELS[a], ls=":" if a in ("base", "duplicate") else "-")
        m = np.array([[results[(a, s)][f"acc_qa_g{k}"] for k in xs] for s in seeds])  # (seeds, positions)
        ax.errorbar(xs, m.mean(0), yerr=m.std(0), marker="o", capsize=3, **style)
        if a != "base":
            curves = np.array([results[(a, s)]["curve"] for s in seeds])  # (seeds, evals, 2): step, accuracy
            per_step = batch_size if a == "ntp" else batch_size // 2
            ax2.plot(curves[0, :, 0], curves[:, :, 1].mean(0), **style)
            ax3.plot(curves[0, :, 0] * per_step, curves[:, :, 1].mean(0), **style)
    ax.set(title=f"multi-document QA, {n_docs} documents", xlabel="position of the gold document (1 = first)",
           ylabel="exact match (held out)", ylim=(-0.02, 1.02), xticks=xs)
    ax2.set(title="during fine-tuning: equal tokens per step", xlabel="fine-tuning step",
            ylabel="exact match, mean over positions", ylim=(-0.02, 1.02))
    ax3.set(title="the same curves by examples seen", xlabel="examples seen (with repeats)",
            ylabel="exact match, mean over positions", ylim=(-0.02, 1.02))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def report(out):
    """Write out/results.md and out/results.png from out/grid.json and out/runs.json alone (no
    training); returns the markdown and the paired concat - NTP-SFT line."""
    grid = read_json(os.path.join(out, "grid.json"))
    data, results = load_runs(out, key="arm")
    arms = [a for a in ARMS if any(k[0] == a for k in results)]
    seeds = sorted({s for a, s in results if a != "base"})
    n_docs = int(grid["sft"]["n_docs"])
    md = table(results, arms, seeds, n_docs)
    line = ""
    if "concat" in arms:
        d, h = paired_ci(*([results[(a, s)]["acc_qa"] for s in seeds] for a in ("concat", "ntp")))
        line = (f"MEAP-SFT (concat) - NTP-SFT, averaged over positions: {100 * d:+.1f} points "
                f"[{100 * (d - h):+.1f}, {100 * (d + h):+.1f}] {verdict(d, h, 'higher')} (the paper: +11.77 on "
                f"20-document QA, Llama-3-8B)")
    commands = "\n".join(f"`{c}`" for c in data["commands"])
    write_text(os.path.join(out, "results.md"), f"{commands}\n\nPer-run data: [runs.json](runs.json), from which "
               f"`python -m experiments.compare_sft --report DIR` rewrites this file and results.png.\n\n{md}")
    save_png(figure(results, arms, seeds, n_docs, int(grid["sft"]["batch_size"])), os.path.join(out, "results.png"))
    return md, line


def main(argv=None):
    ap = argparse.ArgumentParser(description="NTP-SFT vs MEAP-SFT from one base (see the docstring).")
    ap.add_argument("--preset", default="cpu", help=f"one of {', '.join(PRESETS)}")
    ap.add_argument("--out", default=None, help="results folder (default results/sft-PRESET)")
    ap.add_argument("--arms", default=None, help=f"comma-separated, from {', '.join(ARMS)}; ntp is the baseline")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds")
    ap.add_argument("--mask_ratio", type=float, default=None, help="MEAP-SFT's share of answer tokens to mask")
    ap.add_argument("--jobs", type=int, default=None, help="runs at a time")
    ap.add_argument("--examples", type=int, default=None, help="held-out questions per run (over all positions)")
    ap.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                    help="train.py settings for every SFT run (repeatable)")
    ap.add_argument("--overwrite", action="store_true",
                    help="train again, and replace in runs.json, runs it records whose folders are gone")
    ap.add_argument("--report", default=None, metavar="DIR",
                    help="only rewrite DIR/results.md and results.png from DIR/runs.json (no training)")
    ap.error = lambda msg: die(f"{msg} (python -m experiments.compare_sft --help lists the options)")
    args = ap.parse_args(argv)
    if args.report:
        for name in ("grid.json", "runs.json"):
            if not os.path.exists(os.path.join(args.report, name)):
                die(f"{args.report} has no {name}; --report takes a folder compare_sft.py wrote")
        md, line = report_or_die(report, args.report)
        print(md + line)
        return
    if args.preset not in PRESETS:
        die(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[args.preset]
    settings = apply_set(p["sft"], args.set, FIXED, "--arms/--mask_ratio/--seeds/--out")
    arms = parse_list(args.arms, str) if args.arms is not None else p["arms"]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "ntp" not in arms:
        die(f"--arms takes names from {', '.join(ARMS)}, ntp included (got {args.arms!r})")
    seeds = parse_list(args.seeds, int) if args.seeds is not None else p["seeds"]
    ratio = p["mask_ratio"] if args.mask_ratio is None else args.mask_ratio
    if not 0 < ratio < 1:
        die(f"--mask_ratio must be in (0, 1) for MEAP-SFT, got {ratio}")
    jobs = p["jobs"] if args.jobs is None else args.jobs
    examples = p["examples"] if args.examples is None else args.examples
    if jobs < 1 or examples < 1:
        die(f"--jobs and --examples must be at least 1 (got {jobs} and {examples})")
    if min(seeds) < 0:
        die(f"--seeds must be >= 0, got {args.seeds}")
    out = args.out or os.path.join("results", f"sft-{args.preset}")
    planned = {(arm, s): os.path.join(out, "runs", f"{arm}_s{s}", "sft.json") for arm in arms for s in seeds}
    planned.update({("base", s): os.path.join(out, "base", "sft.json") for s in seeds})
    claim_out(out, {"base": {k: str(v) for k, v in p["base"].items()}, "sft": {k: str(v) for k, v in settings.items()},
                    "mask_ratio": ratio, "examples": examples}, planned, key="arm", overwrite=args.overwrite)

    print(f"compare_sft: a base, then {len(arms) * len(seeds)} fine-tuning runs ({', '.join(arms)} x seeds "
          f"{', '.join(map(str, seeds))}), {jobs} at a time, in {out}", flush=True)
    t0 = time.time()
    torch.set_num_threads(2)
    runtime.ctrl_c_raises()  # interrupted() stops the runs and says how to continue
    try:
        results = run_all(out, arms, seeds, p, settings, ratio, jobs, examples)
    except KeyboardInterrupt:
        interrupted(out)
    runtime.exit_on_ctrl_c(f"the finished runs are kept in {out}; the same command writes the report")
    cmd = " ".join(["python -m experiments.compare_sft"] + (argv if argv is not None else sys.argv[1:]))
    record_runs(out, results, cmd, key="arm")
    md, line = report(out)
    print(md + line)
    runtime.work_done()
    print(f"wrote {out}/runs.json, {out}/results.md and {out}/results.png | {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
