"""
NTP vs MEAP on natural text, the paper's actual setting: models pre-trained on ordinary text (no
retrieval task in the data), then probed zero-shot for the use of their context (probes.py).

    python data/shakespeare_byte/prepare.py               # once: tiny Shakespeare, one token per byte
    python -m experiments.text --preset cpu               # the CPU grid (see PRESETS for its cost)
    python data/stdlib/prepare.py --repeat 1 --out_dir data/stdlib_dense
    python -m experiments.text --preset stdlib            # the CPU regime in which copying forms
    python -m experiments.text --preset stdlib-long       # NTP vs MEAP 0.15 there, four times longer
    python -m experiments.text --preset gpu               # a larger model and more tokens, one GPU
    python -m experiments.text --report results/text-cpu  # rewrite the report from runs.json alone

Every run of a grid differs from the NTP run of its seed only in mask_ratio (same weights at init,
same data order, same steps). A run trains in stages (train.py --max_iters S, then resumed to the
next S, with the learning-rate schedule of the whole run: resuming is bit-exact), and after each
stage the copying probe is run on its checkpoint, so the report has the probe over training and the
first stage at which it passes 50%. After the last stage: the passkey grid, the clean val loss, and
the paper's attention metrics (§5) on held-out text, clean against masked copies.
Per-run numbers go into OUT/runs.json; the report (results.md, results.png) is a function of it and
grid.json alone. Checkpoints are not committed.
"""

import argparse
import dataclasses
import math
import os
import sys
import time

if not __package__:  # run as a file: the imports below need the repository root, which -m puts on the path
    raise SystemExit(f"error: run it from the repository root as a module: python -m experiments.text {' '.join(sys.argv[1:])}".rstrip())
import runtime  # noqa: E402  (before torch: Ctrl-C while the libraries load is one line too)
if __name__ == "__main__":
    runtime.exit_on_ctrl_c("nothing was written", at_once=True)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from runtime import die  # noqa: E402
from experiments import probes  # noqa: E402
from experiments.probes import SEED, SPAN, gaps_of  # noqa: E402
from experiments.common import (apply_set, claim_out, diff_cell, evals_of, grid_runs, header, interrupted,  # noqa: E402
                                load_runs, mean_cell, mean_sd, paired_ci, verdict,
                                parse_list, prepare_command, read_json, record_runs, report_or_die, run_name, save_png,
                                seeds_of, summary, train, within, write_json, write_text, VERDICTS)
from experiments.compare import MEAP_DEFAULTS  # noqa: E402
from model import GPT  # noqa: E402

PRESETS = {
    # 2 cores: 12 runs, two at a time
    "cpu": dict(train=dict(dataset="shakespeare_byte", block_size=256, batch_size=16, n_layer=2, n_head=4,
                           n_kv_head=4, n_embd=128, learning_rate=3e-3, min_lr=3e-4, warmup_iters=100,
                           eval_interval=200, eval_iters=10, log_interval=100, device="cpu", dtype="float32",
                           max_iters=1200, **MEAP_DEFAULTS),
                stages=(200, 400, 800, 1200), ratios=(0.0, 0.05, 0.10, 0.15), seeds=(1, 2, 3), jobs=2, threads=1,
                examples=100),
    # 2 cores: 12 runs, two at a time, in the regime of experiments/pilots.py where copying forms:
    # Python source under a 1k BPE, a copied span in every 64 tokens of the training text, emb_common
    "stdlib": dict(train=dict(dataset="stdlib_dense", emb_common=1.0, block_size=128, batch_size=8, n_layer=2,
                              n_head=4, n_kv_head=4, n_embd=128, learning_rate=3e-3, min_lr=3e-4, warmup_iters=100,
                              eval_interval=1000, eval_iters=20, log_interval=500, device="cpu", dtype="float32",
                              max_iters=6000, **MEAP_DEFAULTS),
                   stages=(1000, 2000, 4000, 6000), ratios=(0.0, 0.05, 0.10, 0.15), seeds=(1, 2, 3), jobs=2,
                   threads=1, examples=100),
    # 2 cores: 6 runs, two at a time (~35 min each): the stdlib regime four times longer, with the cosine
    # over the whole run, and the probes beyond training (BEYOND) at every stage (issue 32)
    "stdlib-long": dict(train=dict(dataset="stdlib_dense", emb_common=1.0, block_size=128, batch_size=8, n_layer=2,
                                   n_head=4, n_kv_head=4, n_embd=128, learning_rate=3e-3, min_lr=3e-4,
                                   warmup_iters=100, eval_interval=1000, eval_iters=20, log_interval=500,
                                   device="cpu", dtype="float32", max_iters=24000, **MEAP_DEFAULTS),
                        stages=(1000, 2000, 4000, 8000, 16000, 24000), ratios=(0.0, 0.15), seeds=(1, 2, 3), jobs=2,
                        threads=1, examples=100, beyond=True),
    # one GPU: a 6-layer, 384-wide model on 512-byte contexts, 30M tokens per run; not yet run
    "gpu": dict(train=dict(dataset="shakespeare_byte", block_size=512, batch_size=64, n_layer=6, n_head=6,
                           n_kv_head=6, n_embd=384, learning_rate=1e-3, min_lr=1e-4, warmup_iters=200,
                           eval_interval=250, eval_iters=20, log_interval=100, device="auto", max_iters=1000,
                           **MEAP_DEFAULTS),
                stages=(250, 500, 750, 1000), ratios=(0.0, 0.05, 0.10, 0.15), seeds=(1, 2, 3), jobs=1, threads=0,
                examples=200),
    # seconds: for the tests (give --set dataset=PATH of a prepared byte dataset)
    "tiny": dict(train=dict(dataset="shakespeare_byte", block_size=96, batch_size=4, n_layer=1, n_head=2,
                            n_kv_head=2, n_embd=32, warmup_iters=1, eval_interval=3, eval_iters=1, log_interval=1,
                            device="cpu", max_iters=6, **MEAP_DEFAULTS),
                 stages=(3, 6), ratios=(0.0, 0.15), seeds=(1, 2), jobs=1, threads=1, examples=4),
}
PRESETS["tiny-long"] = dict(PRESETS["tiny"], beyond=True)  # the tests' twin of stdlib-long
LONG_SPANS = (32, 48)  # longer than any span the augmentation copies in training (data/stdlib: 8-24 tokens)


def stretched(model, T):
    """The same weights with RoPE tables and KV cache for T positions: RoPE has no weights, so the
    model reads a context longer than its block; whether it can use it is what the probe asks."""
    longer = GPT(dataclasses.replace(model.config, block_size=T))
    longer.load_state_dict(model.state_dict())
    return longer.to(next(model.parameters()).device).eval()


def beyond(model, tok, hay, T, examples, device):
    """The probes beyond training (issue 32): copying spans of LONG_SPANS tokens (at the shortest gap,
    16), longer than any span copied in training; and the passkey grid in the trained block
    (passkey_lengths) and in a block twice as long (2T - 8 tokens, the needle up to 2T from the question)."""
    spans = {str(k): {kind: probes.copying(model, hay, k, [16], kind, examples, SEED, device)[16]
                      for kind in ("random", "text")}
             for k in LONG_SPANS if probes.LEAD + 2 * k + 16 <= T and len(probes.text_vocab(hay)) >= k}  # (fit, drawable)
    grid = probes.passkey(model, tok, hay, probes.passkey_lengths(tok, T), [0.0, 0.5, 1.0], examples, SEED, device)
    grid.update(probes.passkey(stretched(model, 2 * T), tok, hay, [2 * T - 8], [0.0, 0.5, 1.0], examples, SEED, device))
    return {"spans": spans, "passkey": [{"depth": d, "length": L, "acc": a} for (d, L), a in sorted(grid.items())]}


def do_run(run_dir, ratio, seed, settings, stages, threads, examples, extra=False):
    """Train one run stage by stage, probing copying after each (and, with extra, the probes beyond
    training: beyond_S.json); then the passkey grid and the paper's attention metrics on held-out
    text. Writes run_dir/probes_S.json per stage and run_dir/suite.json at the end; returns the suite."""
    run_dir = os.path.abspath(run_dir)
    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() and str(settings.get("device")).startswith(("auto", "cuda")) else "cpu"
    T = int(settings["block_size"])
    curve = []
    for S in stages:
        path = os.path.join(run_dir, f"probes_{S}.json")
        if not os.path.exists(path):  # train to S (resuming from the last stage), then probe step S
            train(run_dir, ratio, seed, dict(settings, max_iters=S, lr_decay_iters=stages[-1]), threads)
            model, _, hay, _ = probes.load(run_dir, device)
            write_json(path, {kind: probes.copying(model, hay, SPAN, gaps_of(T), kind, examples, SEED, device)
                              for kind in probes.KINDS})
        curve.append([S, read_json(path)])  # {kind: {gap (str): {acc_first, acc_second, loss_first, ...}}}
        more = os.path.join(run_dir, f"beyond_{S}.json")
        if extra and not os.path.exists(more):
            model, tok, hay, ckpt = probes.load(run_dir, device)
            if ckpt["iter_num"] != S:  # only the last stage's checkpoint is kept
                raise RuntimeError(f"{run_dir}'s checkpoint is at step {ckpt['iter_num']}, not {S}: "
                                   f"{more} cannot be written; delete the folder to train that run again")
            write_json(more, beyond(model, tok, hay, T, examples, device))
    model, tok, hay, ckpt = probes.load(run_dir, device)
    att = probes.attention_on_text(model, hay, ckpt["mask_token_id"], examples, seed=SEED)
    pk = probes.passkey(model, tok, hay, probes.passkey_lengths(tok, T), [0.0, 0.5, 1.0], examples, SEED, device)
    evals = evals_of(run_dir)
    gap = str(max(gaps_of(T)))
    final = curve[-1][1]
    res = {"val_loss": evals[-1]["val_loss"],
           "copy_random": final["random"][gap]["acc_second"],
           "copy_random_gain": final["random"][gap]["acc_second"] - final["random"][gap]["acc_first"],
           "copy_frequent": final["frequent"][gap]["acc_second"],
           "copy_text": final["text"][gap]["acc_second"],
           "copy_text_gain": final["text"][gap]["acc_second"] - final["text"][gap]["acc_first"],
           "previous_token": probes.previous_token_share(model, hay, seed=SEED)[0],
           "passkey": float(np.mean(list(pk.values()))),
           **att,
           "steps_to_50": next((S for S, c in curve if c["random"][gap]["acc_second"] >= 0.5), float("nan")),
           "steps_to_50_text": next((S for S, c in curve if c["text"][gap]["acc_second"] >= 0.5), float("nan")),
           "curve": curve,
           "passkey_grid": [{"depth": d, "length": L, "acc": a} for (d, L), a in pk.items()],
           "evals": [{"iter": m["iter"], "val_loss": m["val_loss"]} for m in evals]}
    if extra:
        res["beyond"] = [[S, read_json(os.path.join(run_dir, f"beyond_{S}.json"))] for S in stages]
    write_json(os.path.join(run_dir, "suite.json"), res)
    return res


def run_grid(out, ratios, seeds, settings, stages, jobs, threads, examples, extra=False):
    """Every (ratio, seed) without a suite.json, `jobs` at a time; {(ratio, seed): suite}."""

    def describe(job, res):
        return (f"mask_ratio {job[0]:.2f} seed {job[1]}: val loss {res['val_loss']:.4f} | copying {res['copy_random']:.3f}"
                f" (gain {res['copy_random_gain']:+.3f}) | passkey {res['passkey']:.2f}")

    return grid_runs(out, ratios, seeds, lambda job: do_run(job[2], job[0], job[1], settings, stages, threads, examples, extra),
                     describe, jobs)


# -----------------------------------------------------------------------------
# the report: a pure function of runs.json and grid.json

COLUMNS = [  # (suite key, column title, format, which side of a difference is a gain; none: a mechanism)
    ("val_loss", "clean val loss", "{:.4f}", "lower"),
    ("copy_random", "copying: 2nd copy accuracy (random span)", "{:.3f}", "higher"),
    ("copy_random_gain", "copying: 2nd - 1st (random)", "{:+.3f}", "higher"),
    ("copy_random_16", "copying: 2nd copy (random span, gap 16)", "{:.3f}", "higher"),
    ("copy_frequent", "copying: 2nd copy (frequent-token span)", "{:.3f}", "higher"),
    ("copy_frequent_16", "copying: 2nd copy (frequent-token span, gap 16)", "{:.3f}", "higher"),
    ("copy_text", "copying: 2nd copy (text span)", "{:.3f}", "higher"),
    ("copy_text_gain", "copying: 2nd - 1st (text span)", "{:+.3f}", "higher"),
    ("passkey", "passkey", "{:.3f}", "higher"),
    ("steps_to_50", "step copying passes 0.5", "{:.0f}", "lower"),
    ("steps_to_50_text", "step text copying passes 0.5", "{:.0f}", "lower"),
    ("previous_token", "layer 0's previous-token share", "{:.3f}"),
]
ATTENTION = [  # the paper's §5 metrics on held-out text, clean against a copy masked at 0.15 (mechanisms:
    # a difference is higher or lower, never a gain)
    ("score_change", "masked score change", "{:+.3f}"),
    ("var_change", "unmasked variance change", "{:+.3f}"),
    ("var_change_renorm", "(renormalising alone)", "{:+.3f}"),
    ("entropy", "mean entropy", "{:.3f}"),
    ("sink", "sink (first token)", "{:.3f}"),
]


def curve_kinds(run):
    """The span kinds the report shows by step: random spans; and text spans too in the grids that
    probed every kind of probes.KINDS (the older ones show random spans alone)."""
    return ["random", "text"] if "frequent" in run["curve"][0][1] else ["random"]


def figure(results, ratios, seeds):
    """Copying accuracy (the last of curve_kinds, the largest gap) over training, per mask ratio,
    against the first copy; and the passkey accuracy by depth x length for NTP and the largest
    MEAP ratio."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2), layout="constrained")
    ax, *heat = fig.subplots(1, 3)
    colors = colormaps["viridis"](np.linspace(0, 0.9, len(ratios)))
    for r, c in zip(ratios, colors):
        runs = [results[(r, s)] for s in seeds_of(results, r, seeds)]
        steps = [S for S, _ in runs[0]["curve"]]
        gap, kind = max(runs[0]["curve"][0][1]["random"], key=int), curve_kinds(runs[0])[-1]
        for which, ls in (("acc_second", "-"), ("acc_first", ":")):
            m = np.mean([[c_[kind][gap][which] for _, c_ in run["curve"]] for run in runs], axis=0)
            ax.plot(steps, m, ls, color=c, marker="o" if ls == "-" else None,
                    label=("NTP" if r == 0 else f"MEAP {r:.2f}") + (", 2nd copy" if ls == "-" else ", 1st copy"))
    ax.set(title=f"zero-shot copying ({kind} {SPAN}-token span, gap {gap})", xlabel="step",
           ylabel="accuracy (mean over seeds)", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7)
    for a, r in zip(heat, (ratios[0], ratios[-1])):
        runs = [results[(r, s)] for s in seeds_of(results, r, seeds)]
        depths = sorted({p["depth"] for p in runs[0]["passkey_grid"]})
        lengths = sorted({p["length"] for p in runs[0]["passkey_grid"]})
        acc = {(p["depth"], p["length"]): [] for p in runs[0]["passkey_grid"]}
        for run in runs:
            for p in run["passkey_grid"]:
                acc[(p["depth"], p["length"])].append(p["acc"])
        grid = np.array([[np.mean(acc[(d, L)]) for L in lengths] for d in depths])
        im = a.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            a.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
        a.set_xticks(range(len(lengths)), [str(L) for L in lengths])
        a.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths])
        a.set(title=f"passkey: {'NTP' if r == 0 else f'MEAP {r:.2f}'}", xlabel="context (tokens)", ylabel="depth")
    fig.colorbar(im, ax=heat, label="exact match")
    return fig


def add_shortest_gap(results):
    """The copying columns at the longest gap (the headline) have twins at the shortest gap, 16
    tokens, read off each run's last probe; only for the grids that probed every kind of span."""
    for run in results.values():
        last = run["curve"][-1][1]
        if "frequent" in last:
            g = min(last["random"], key=int)
            run["copy_random_16"], run["copy_frequent_16"] = (last[k][g]["acc_second"] for k in ("random", "frequent"))
    return results


def columns(results):
    """The COLUMNS every run has: grids from before the frequent-token probe lack a few."""
    return [c for c in COLUMNS if all(c[0] in run for run in add_shortest_gap(results).values())]


# -----------------------------------------------------------------------------
# the long grid (issue 32): MEAP - NTP at every stage, the delay, and the probes beyond training

# (key, title, format): per stage, the 2nd copy at gap 16 (text and random spans), the longer spans,
# and the passkey in the trained block and in one twice as long
STAGE_COLUMNS = [
    ("text16", "text span, gap 16", "{:.3f}"), ("random16", "random span, gap 16", "{:.3f}"),
    ("text32", "text span of 32", "{:.3f}"), ("text48", "text span of 48", "{:.3f}"),
    ("random32", "random span of 32", "{:.3f}"), ("random48", "random span of 48", "{:.3f}"),
    ("passkey", "passkey, trained block", "{:.3f}"), ("passkey2x", "passkey, twice the block", "{:.3f}"),
]
STAGE_TITLES = {key: title for key, title, _ in STAGE_COLUMNS}
# copying levels for the delay (the first step at which an arm reaches them), fixed before the long grid
# ran (issue 32's; in the 6.1M-token grid NTP's means were 0.77 and 0.077 at step 4,000, 0.81 and 0.099 at 6,000)
DELAY_LEVELS = (("text16", 0.7), ("random16", 0.1))


def stage_metrics(run, T):
    """[(step, {key of STAGE_COLUMNS: value})] of a run of the long grid, one per stage."""
    out = []
    for (S, curve), (_, more) in zip(run["curve"], run["beyond"]):
        pk = more["passkey"]
        m = {f"{kind}16": curve[kind]["16"]["acc_second"] for kind in ("text", "random")}
        m.update({f"{kind}{k}": more["spans"][k][kind]["acc_second"] for k in more["spans"] for kind in ("text", "random")})
        m["passkey"] = float(np.mean([p["acc"] for p in pk if p["length"] <= T]))
        m["passkey2x"] = float(np.mean([p["acc"] for p in pk if p["length"] > T]))
        out.append((S, m))
    return out


def first_step(stages, values, level):
    """The step at which values (one per stage) first reach level, linear between the two stages
    around it (the first stage itself if it is reached there); NaN if never."""
    for k, (S, v) in enumerate(zip(stages, values)):
        if v >= level:
            if k == 0:
                return float(S)
            S0, v0 = stages[k - 1], values[k - 1]
            return S0 + (level - v0) / (v - v0) * (S - S0)
    return float("nan")


def delay_steps(results, ratio, base, seeds, T):
    """For each DELAY_LEVELS level, {arm: [the step it first reaches the level, per seed]} for the
    arms ratio and base (NTP) of a long grid's results."""
    per = {(r, s): dict(stage_metrics(results[(r, s)], T)) for r in (ratio, base) for s in seeds}
    stages = sorted(per[(base, seeds[0])])
    return [{arm: [first_step(stages, [per[(arm, s)][S][key] for S in stages], level) for s in seeds]
             for arm in (base, ratio)} for key, level in DELAY_LEVELS]


def ratio_cell(a, b):
    """a / b paired by position, as the geometric mean of the ratios with its 95% paired-t interval
    (on the log scale), and its verdict for steps (a ratio above 1: a takes longer, a loss)."""
    d, h = paired_ci(np.log(a), np.log(b))
    if math.isnan(h):
        return "n/a" if math.isnan(d) else f"{math.exp(d):.2f} (one seed, no interval)"
    return f"{math.exp(d):.2f} [{math.exp(d - h):.2f}, {math.exp(d + h):.2f}] {verdict(d, h, 'lower')}"


def long_grid(results, ratios, seeds, T, tokens_per_step):
    """Markdown: each arm by stage (mean ± sd), MEAP - NTP by stage (paired by seed, with verdicts),
    and the delay: the step at which each arm first reaches each DELAY_LEVELS level, MEAP / NTP."""
    per = {key: dict(stage_metrics(run, T)) for key, run in results.items()}
    stages = sorted(next(iter(per.values())))
    cols = [c for c in STAGE_COLUMNS if c[0] in per[next(iter(per))][stages[0]]]  # the spans that fit the block
    titles = [c[1] for c in cols]
    spans = [c[0][4:] for c in cols if c[0].startswith("text") and c[0] != "text16"]
    lines = [f"\nBy stage ({tokens_per_step:,} tokens a step), mean ± sd over seeds: the 2nd copy of a {SPAN}-token "
             f"span at gap 16, of longer spans than the training text ever copies ({', '.join(spans) or 'none fit'} "
             "tokens, at gap 16), and the passkey in the trained block and in one twice as long (RoPE extended; "
             "probes.passkey).\n", header("mask_ratio", ["step", "tokens"] + titles)]
    for r in ratios:
        for S in stages:
            cells = [mean_cell([per[(r, s)][S][key] for s in seeds_of(results, r, seeds)], fmt)
                     for key, _, fmt in cols]
            lines.append(f"| {r:.2f} | {S} | {S * tokens_per_step / 1e6:.1f}M | " + " | ".join(cells) + " |\n")
    for r in ratios[1:]:
        both = [s for s in seeds_of(results, r, seeds) if (ratios[0], s) in results]
        lines += [f"\nMEAP {r:.2f} - NTP by stage, paired by seed ({len(both)} seeds): mean [95% paired-t interval] "
                  f"and its verdict{VERDICTS}.\n", header("step", ["tokens"] + titles)]
        for S in stages:
            cells = [diff_cell([per[(r, s)][S][key] for s in both], [per[(ratios[0], s)][S][key] for s in both], fmt,
                               "higher") for key, _, fmt in cols]
            lines.append(f"| {S} | {S * tokens_per_step / 1e6:.1f}M | " + " | ".join(cells) + " |\n")
        lines += [f"\nThe delay: the step at which each arm first reaches a copying level (linear between the "
                  f"stages around it), per seed, and MEAP {r:.2f} / NTP as a geometric mean with its 95% paired-t "
                  "interval (a ratio above 1: MEAP later, a loss).\n",
                  header("level", [f"NTP, seed {s}" for s in both] + [f"MEAP, seed {s}" for s in both]
                         + ["MEAP / NTP"])]
        for (key, level), steps in zip(DELAY_LEVELS, delay_steps(results, r, ratios[0], both, T)):
            cells = [f"{v:,.0f}" if not math.isnan(v) else "never" for arm in (ratios[0], r) for v in steps[arm]]
            lines.append(f"| {STAGE_TITLES[key]} >= {level} | " + " | ".join(cells) + f" | {ratio_cell(steps[r], steps[ratios[0]])} |\n")
    return "".join(lines).replace("nan", "n/a")


def difference_figure(results, ratios, seeds, T, tokens_per_step):
    """Left: each arm's mean over seeds by training tokens (NTP solid, MEAP dashed) for the 2nd copy at
    gap 16 (text and random spans), the longest span and the passkey; right: MEAP - NTP with its 95%
    paired-t interval (the points of a stage dodged apart)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    per = {key: dict(stage_metrics(run, T)) for key, run in results.items()}
    stages = sorted(next(iter(per.values())))
    longer = [int(k[4:]) for k in per[next(iter(per))][stages[0]] if k.startswith("text") and k != "text16"]
    keys = ["text16", "random16"] + [f"text{max(longer)}"] * bool(longer) + ["passkey"]
    titles, colors = STAGE_TITLES, colormaps["tab10"].colors
    tokens = np.array([S * tokens_per_step / 1e6 for S in stages])
    fig = Figure(figsize=(13, 4.4), layout="constrained")
    level, diff = fig.subplots(1, 2)
    for r in ratios[1:]:
        both = [s for s in seeds_of(results, r, seeds) if (ratios[0], s) in results]
        for i, key in enumerate(keys):
            for arm, ls in ((ratios[0], "-"), (r, "--")):
                level.plot(tokens, [np.mean([per[(arm, s)][S][key] for s in both]) for S in stages], ls, marker="o",
                           color=colors[i], label=f"{titles[key]}, {'NTP' if arm == 0 else f'MEAP {arm:.2f}'}")
            d, h = zip(*[paired_ci([per[(r, s)][S][key] for s in both], [per[(ratios[0], s)][S][key] for s in both])
                         for S in stages])
            diff.errorbar(tokens * (1 + 0.04 * (i - 1.5)), d, yerr=h, marker="o", capsize=3, color=colors[i],
                          label=titles[key])
    level.set(xscale="log", xlabel="training tokens (millions)", ylabel="accuracy (mean over seeds)",
              title="NTP (solid) and MEAP (dashed) over training, on text", ylim=(-0.02, 1.3), yticks=np.linspace(0, 1, 6))
    diff.axhline(0, color="grey", lw=0.8)
    diff.set(xscale="log", xlabel="training tokens (millions)", ylabel="MEAP - NTP (95% paired-t interval)",
             title=f"MEAP {ratios[-1]:.2f} - NTP, paired by seed")
    level.legend(fontsize=7, ncol=2, loc="upper left")  # above the curves (ylim)
    diff.legend(fontsize=7)
    return fig


def report(out):
    """Write out/results.md and out/results.png from out/grid.json and out/runs.json alone."""
    grid = read_json(os.path.join(out, "grid.json"))
    data, results = load_runs(out)
    ratios, seeds = sorted({r for r, _ in results}), sorted({s for _, s in results})
    md = summary(results, ratios, seeds, columns(results))
    md += ("\nAttention (the paper's §5) on held-out text: each checkpoint on clean windows and on copies with "
           "15% of the positions masked (experiments/attention.py's metrics). " + summary(results, ratios, seeds, ATTENTION))
    md += ("\nThe unmasked variance change minus what renormalising alone gives, within each run, paired by seed: "
           f"mean [95% paired-t interval] and its verdict{VERDICTS}.\n"
           + within(results, ratios, seeds, "var_change", "var_change_renorm"))
    some = results[(ratios[0], seeds_of(results, ratios[0], seeds)[0])]
    gaps = list(some["curve"][0][1]["random"])
    lines = []
    for kind in curve_kinds(some):
        lines += [f"\nCopying accuracy on the 2nd copy of a {kind} span by step and gap, mean over seeds "
                  "(the 1st copy in brackets: what the model gets without copying).\n",
                  header("mask_ratio", ["step"] + [f"gap {g}" for g in gaps])]
        for r in ratios:
            runs = [results[(r, s)] for s in seeds_of(results, r, seeds)]
            for k, (S, _) in enumerate(runs[0]["curve"]):
                cell = [f"{mean_sd([run['curve'][k][1][kind][g]['acc_second'] for run in runs])[0]:.3f} "
                        f"({mean_sd([run['curve'][k][1][kind][g]['acc_first'] for run in runs])[0]:.3f})" for g in gaps]
                lines.append(f"| {r:.2f} | {S} | " + " | ".join(cell) + " |\n")
    if "beyond" in some:  # the long grid
        T = int(grid["settings"]["block_size"])
        tokens = T * int(grid["settings"]["batch_size"])
        lines.append(long_grid(results, ratios, seeds, T, tokens))
        save_png(difference_figure(results, ratios, seeds, T, tokens), os.path.join(out, "over_training.png"))
    commands = "\n".join(f"`{c}`" for c in data["commands"])
    settings = ", ".join(f"{k}={v}" for k, v in grid["settings"].items() if k in (
        "dataset", "n_layer", "n_embd", "block_size", "batch_size", "learning_rate"))
    write_text(os.path.join(out, "results.md"), f"{commands}\n\n{settings}, stages {grid['stages']}. Per-run data: "
               f"[runs.json](runs.json), from which `python -m experiments.text --report DIR` rewrites this file "
               f"and results.png. The copying columns are at gap {gaps[-1]} (the longest that fits) unless they name "
               f"one.\n\n{md}{''.join(lines)}")
    save_png(figure(results, ratios, seeds), os.path.join(out, "results.png"))
    return md + "".join(lines)


# -----------------------------------------------------------------------------
# the command line


def main(argv=None):
    ap = argparse.ArgumentParser(description="NTP vs MEAP on natural text, probed zero-shot (see the docstring).")
    ap.add_argument("--preset", default="cpu", help=f"one of {', '.join(PRESETS)}")
    ap.add_argument("--out", default=None, help="results folder (default results/text-PRESET)")
    ap.add_argument("--ratios", default=None, help="comma-separated mask ratios; 0 (NTP) is the baseline")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds")
    ap.add_argument("--stages", default=None, help="comma-separated steps at which to probe; the last is the run's length")
    ap.add_argument("--examples", type=int, default=None, help="probe sequences per gap, passkey trials per cell")
    ap.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                    help="train.py settings for every run (repeatable)")
    ap.add_argument("--overwrite", action="store_true",
                    help="train again, and replace in runs.json, runs it records whose folders are gone")
    ap.add_argument("--report", default=None, metavar="DIR", help="only rewrite DIR's report from DIR/runs.json")
    ap.error = lambda msg: die(f"{msg} (python -m experiments.text --help lists the options)")
    args = ap.parse_args(argv)
    if args.report:
        for name in ("grid.json", "runs.json"):
            if not os.path.exists(os.path.join(args.report, name)):
                die(f"{args.report} has no {name}; --report takes a folder text.py wrote")
        print(report_or_die(report, args.report))
        print(f"wrote {args.report}/results.md and {args.report}/results.png")
        return
    if args.preset not in PRESETS:
        die(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[args.preset]
    fixed = ("mask_ratio", "seed", "out_dir", "init_from", "max_iters", "lr_decay_iters")
    settings = apply_set(p["train"], args.set, fixed, "--ratios/--seeds/--out (the stages set max_iters)")
    ratios = parse_list(args.ratios, float) if args.ratios is not None else p["ratios"]
    seeds = parse_list(args.seeds, int) if args.seeds is not None else p["seeds"]
    stages = parse_list(args.stages, int) if args.stages is not None else p["stages"]
    examples = p["examples"] if args.examples is None else args.examples
    if not all(0 <= r < 1 for r in ratios) or min(seeds) < 0 or examples < 1 or \
            list(stages) != sorted(set(stages)) or stages[0] < 1:
        die(f"need --ratios in [0, 1), --seeds >= 0, --examples >= 1 and increasing --stages >= 1 "
                         f"(got {ratios}, {seeds}, {examples} and {stages})")
    data = os.path.join("data", str(settings["dataset"]), "train.bin")
    if not os.path.exists(data):
        die(f"{data} not found; prepare it first: {prepare_command(settings['dataset'])}")
    if not gaps_of(int(settings["block_size"])):
        die(f"block_size {settings['block_size']} is too short for the copying probe "
                         f"(at least {probes.LEAD + 2 * SPAN + 16})")
    out = args.out or os.path.join("results", f"text-{args.preset}")
    planned = {(r, s): os.path.join(out, "runs", run_name(r, s), "suite.json") for r in ratios for s in seeds}
    claim_out(out, {"settings": {k: str(v) for k, v in settings.items()}, "stages": list(stages), "examples": examples},
              planned, overwrite=args.overwrite)
    print(f"text: {len(ratios) * len(seeds)} runs ({len(ratios)} mask ratios x {len(seeds)} seeds), "
          f"{p['jobs']} at a time, in {out}")
    t0 = time.time()
    runtime.ctrl_c_raises()  # interrupted() stops the runs and says how to continue
    try:
        results = run_grid(out, ratios, seeds, settings, stages, p["jobs"], p["threads"], examples,
                           p.get("beyond", False))
    except KeyboardInterrupt:
        interrupted(out)
    runtime.exit_on_ctrl_c(f"the finished runs are kept in {out}; the same command writes the report")
    record_runs(out, results, " ".join(["python -m experiments.text"] + (argv if argv is not None else sys.argv[1:])))
    print(report(out))
    runtime.work_done()
    print(f"wrote {out}/runs.json, {out}/results.md and {out}/results.png | {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
