"""
The summary tables of results/README.md ("In short", "Beside the paper") and the README's copies of
the reports, written from the folders' per-run data (runs.json, attention.json) alone, so that no
summary can say more than its intervals: every difference comes with the verdict the interval
gives it (common.verdict), and nothing is re-typed.

    python -m experiments.digest            # rewrite the tables in README.md and results/README.md
    python -m experiments.digest --check    # exit 1 if they are not what the data give

The tables sit between `<!-- digest: NAME -->` and `<!-- end digest -->`; everything else in those
files is prose, which may explain a verdict but never upgrade it. A test checks that the tables
are up to date.
"""

import argparse
import functools
import os
import sys
import re
if not __package__:  # run as a file: the imports below need the repository root, which -m puts on the path
    raise SystemExit(f"error: run it from the repository root as a module: python -m experiments.digest {' '.join(sys.argv[1:])}".rstrip())
import runtime  # noqa: E402  (before torch: Ctrl-C while the libraries load is one line too)
if __name__ == "__main__":
    runtime.exit_on_ctrl_c("nothing was written", at_once=True)

from runtime import die  # noqa: E402
from experiments import attention, compare, common, text  # noqa: E402

RESULTS = os.path.join(common.ROOT, "results")
# (format, which side of a difference is a gain) per key, from the reports' own columns
FORMATS = {c[0]: (c[2], c[3] if len(c) > 3 else None)
           for c in attention.COLUMNS + text.ATTENTION + text.COLUMNS + compare.COLUMNS}
FORMATS.update({"acc_qa": ("{:.3f}", "higher"), "acc_qa_token": ("{:.3f}", "higher"),  # compare_sft.py's
                "steps_to_50": ("{:.0f}", "lower")})
FORMATS.update({f"kv_p{i}": ("{:.3f}", "higher") for i in range(8)})  # kv accuracy by the asked pair's position
TITLES = {c[0]: c[1] for c in attention.COLUMNS + text.ATTENTION + text.COLUMNS + compare.COLUMNS}
TITLES.update({f"kv_p{i}": f"kv pair {i + 1}" for i in range(8)})


@functools.lru_cache(maxsize=None)
def load(folder):
    """{(row, seed): run} of results/folder: its attention.json for "FOLDER/attention", its
    runs.json otherwise (rows are mask ratios, or fine-tuning arms)."""
    if folder.endswith("/attention"):
        data = common.read_json_or_die(os.path.join(RESULTS, folder[:-len("/attention")], "attention.json"))
        return {(run["mask_ratio"], run["seed"]): run for run in data["runs"]}
    data = common.read_json_or_die(os.path.join(RESULTS, folder, "runs.json"))
    key = "arm" if "arm" in data["runs"][0] else "mask_ratio"
    runs = {(run[key], run["seed"]): run for run in data["runs"]}
    return text.add_shortest_gap(runs) if "passkey_grid" in data["runs"][0] else runs  # a text.py grid


def paired(folder, row, base=0.0, other=None):
    """The seeds that row of results/folder and its baseline (row base of folder, or the same row of
    results/other) both have."""
    a, b = load(folder), load(other or folder)
    return sorted(s for r, s in a if r == row and ((row if other else base), s) in b)


def diff(folder, row, key, base=0.0, other=None, scale=1):
    """row minus base of results/folder (or minus the same row of results/other), paired by the seeds
    both have: the reports' cell (common.diff_cell), in the report's format; scale=100 gives points."""
    a, b = load(folder), load(other or folder)
    brow = row if other else base
    seeds = paired(folder, row, base, other)
    fmt, better = FORMATS[key]
    return common.diff_cell([scale * a[(row, s)][key] for s in seeds], [scale * b[(brow, s)][key] for s in seeds],
                            "{:.1f}" if scale != 1 else fmt, better)


def mean(folder, row, key):
    """Mean ± sd over the seeds of one row of results/folder: the reports' cell (common.mean_cell)."""
    return common.mean_cell([run[key] for (r, _), run in load(folder).items() if r == row], FORMATS[key][0])


def cell(*parts):
    """"label value; label value" from (label, value) pairs."""
    return "; ".join(f"{label} {value}" for label, value in parts)


def in_short():
    """One row per question: the grid that asks it and its differences, each with its verdict."""
    sp, sh, rt, po = "cpu-spared-queries", "cpu-shared", "cpu-random-tokens", "cpu-pair-offset"
    rows = [
        ("Do twice the steps change it?", "`cpu-2000-steps`", cell(
            ("MEAP 0.15 - NTP: 2x pairs", diff("cpu-2000-steps", 0.15, "mqar_2x")),
            ("kv", diff("cpu-2000-steps", 0.15, "kv")),
            ("val loss", diff("cpu-2000-steps", 0.15, "val_loss")),
            ("steps to 90%", diff("cpu-2000-steps", 0.15, "steps_to_90")))),
        ("A deeper model?", "`cpu-4-layers`", cell(
            ("NTP 2x pairs", mean("cpu-4-layers", 0.0, "mqar_2x")),
            ("MEAP 0.10 - NTP: 2x pairs", diff("cpu-4-layers", 0.10, "mqar_2x")),
            ("kv", diff("cpu-4-layers", 0.10, "kv")),
            ("trained needle", diff("cpu-4-layers", 0.10, "needle")))),
        ("Sparing the query tokens (this project's old default)?", f"`{sp}`", cell(
            ("spared minus uniform, 0.15: needle", diff(sp, 0.15, "needle", other="cpu")),
            ("2x pairs", diff(sp, 0.15, "mqar_2x", other="cpu")),
            ("0.10: needle", diff(sp, 0.10, "needle", other="cpu")),
            ("2x distractors", diff(sp, 0.10, "needle_2x", other="cpu")),
            ("2 queries", diff(sp, 0.10, "needle_mq", other="cpu")))),
        ("The official code's shared columns?", f"`{sh}`", cell(*(
            (f"shared minus per-sequence, {r:.2f}: {name}" if k == "needle" else name, diff(sh, r, k, other="cpu"))
            for r in (0.10, 0.15) for k, name in (("needle", "needle"), ("mqar_2x", "2x pairs"), ("kv", "kv"))))),
        ("Is it the `[MASK]` token?", f"`{rt}`", cell(
            ("random tokens minus NTP, 0.10: 2x pairs", diff(rt, 0.10, "mqar_2x")),
            ("random tokens minus `[MASK]`, 0.10: needle", diff(rt, 0.10, "needle", other="cpu")),
            ("2x distractors", diff(rt, 0.10, "needle_2x", other="cpu")),
            ("2x pairs", diff(rt, 0.10, "mqar_2x", other="cpu")),
            ("kv", diff(rt, 0.10, "kv", other="cpu")),
            ("filler loss", diff(rt, 0.10, "filler_excess", other="cpu")))),
        ("Is NTP's failure the positional shortcut?", f"`{po}`", cell(
            ("NTP, pairs offset minus not: 2x pairs", diff(po, 0.0, "mqar_2x", other="cpu")),
            ("kv", diff(po, 0.0, "kv", other="cpu")),
            ("MEAP 0.10 - NTP, both offset: 2x pairs", diff(po, 0.10, "mqar_2x")),
            ("steps to 90%", diff(po, 0.10, "steps_to_90")))),
        ("Does our initialisation matter?", "`cpu-official-init`", cell(
            ("with the official init, trained needle: NTP", mean("cpu-official-init", 0.0, "needle")),
            ("MEAP 0.15", mean("cpu-official-init", 0.15, "needle")),
            ("MQAR: NTP", mean("cpu-official-init", 0.0, "mqar")),
            ("MEAP 0.15", mean("cpu-official-init", 0.15, "mqar")),
            ("(with ours, NTP needle", mean("cpu", 0.0, "needle") + ")"))),
        ("The paper's attention metrics?", "`cpu` (`attention.py`)", cell(
            ("MEAP 0.10 - NTP: unmasked variance change", diff("cpu/attention", 0.10, "var_change")),
            ("masked score change", diff("cpu/attention", 0.10, "score_change")),
            ("NTP's own", mean("cpu/attention", 0.0, "score_change")),
            ("renormalising alone, NTP", mean("cpu/attention", 0.0, "var_change_renorm")),
            ("kv share, pairs 5-8", diff("cpu/attention", 0.10, "kv_share_out")))),
        ("MEAP-SFT?", "`sft-cpu`", cell(
            ("exact match, points: concat (the paper's layout) - NTP-SFT", diff("sft-cpu", "concat", "acc_qa", "ntp", scale=100)),
            ("separate (official) - NTP-SFT", diff("sft-cpu", "separate", "acc_qa", "ntp", scale=100)),
            ("concat - duplicate without mask", diff("sft-cpu", "concat", "acc_qa", "duplicate", scale=100)))),
        ("On text, without retrieval training?", "`text-cpu`", cell(
            ("NTP 2nd copy of a random span", mean("text-cpu", 0.0, "copy_random")),
            ("its gain over the 1st", mean("text-cpu", 0.0, "copy_random_gain")),
            ("passkey", mean("text-cpu", 0.0, "passkey")),
            ("MEAP - NTP val loss: 0.10", diff("text-cpu", 0.10, "val_loss")),
            ("0.15", diff("text-cpu", 0.15, "val_loss")))),
        ("On text, where a model copies from its context?", "`text-stdlib`", cell(
            ("NTP 2nd copy of a random span, gap 16", mean("text-stdlib", 0.0, "copy_random_16")),
            ("MEAP 0.10 - NTP", diff("text-stdlib", 0.10, "copy_random_16")),
            ("passkey: NTP", mean("text-stdlib", 0.0, "passkey")),
            ("MEAP 0.10 - NTP", diff("text-stdlib", 0.10, "passkey")),
            ("val loss, MEAP 0.05 - NTP", diff("text-stdlib", 0.05, "val_loss")),
            ("0.10", diff("text-stdlib", 0.10, "val_loss")))),
        ("Four times the tokens on text: a delay or a cost?", "`text-stdlib-long`", cell(
            ("MEAP 0.15 - NTP at 24.6M tokens: random span, gap 16", diff("text-stdlib-long", 0.15, "copy_random_16")),
            ("text span, gap 64", diff("text-stdlib-long", 0.15, "copy_text")),
            ("passkey", diff("text-stdlib-long", 0.15, "passkey")),
            ("val loss", diff("text-stdlib-long", 0.15, "val_loss")))),
    ]
    return ("| question | grid | measured (MEAP - NTP or grid - grid: mean [95% paired-t interval] verdict; "
            "levels: mean ± sd) |\n|---|---|---|\n" + "".join(f"| {q} | {g} | {a} |\n" for q, g, a in rows))


def beside_the_paper():
    """The paper's headline numbers beside ours."""
    rows = [
        ("needle in a haystack", "NTP 87.1 vs MEAP 98.2 at 200B tokens; 52.8 vs 85.8 at 60B", cell(
            ("trained needle, NTP", mean("cpu", 0.0, "needle")),
            ("MEAP 0.15 - NTP", diff("cpu", 0.15, "needle")),
            ("0.10", diff("cpu", 0.10, "needle")),
            ("2x distractors, 0.15", diff("cpu", 0.15, "needle_2x")),
            ("a passkey in Python source (6.1M tokens): NTP", mean("text-stdlib", 0.0, "passkey")),
            ("MEAP 0.15 - NTP", diff("text-stdlib", 0.15, "passkey")))),
        ("retrieval beyond what was seen", "long-context multi-needle reasoning: +6.6 points", cell(
            ("2x pairs, NTP", mean("cpu", 0.0, "mqar_2x")),
            ("MEAP 0.15 - NTP", diff("cpu", 0.15, "mqar_2x")))),
        ("lost in the middle", "+11.77 points on 20-document QA after SFT (Llama-3-8B)", cell(
            ("pre-training, kv with 8 pairs: MEAP 0.15 - NTP", diff("cpu", 0.15, "kv")),
            ("after SFT (2-document QA, equal tokens), points", diff("sft-cpu", "concat", "acc_qa", "ntp", scale=100)))),
        ("language modelling", "commonsense on par (+1.6% on average)", cell(
            ("MEAP 0.15 - NTP: filler language", diff("cpu", 0.15, "filler_excess")),
            ("clean val loss", diff("cpu", 0.15, "val_loss")),
            ("after 2,000 steps", diff("cpu-2000-steps", 0.15, "val_loss")))),
        ("attention", "masked positions -53.34%, unmasked variance +7.80%", cell(
            ("masked score change: NTP", mean("cpu/attention", 0.0, "score_change")),
            ("MEAP 0.15", mean("cpu/attention", 0.15, "score_change")),
            ("unmasked variance change: NTP", mean("cpu/attention", 0.0, "var_change")),
            ("MEAP 0.15", mean("cpu/attention", 0.15, "var_change")),
            ("renormalising alone, MEAP 0.15", mean("cpu/attention", 0.15, "var_change_renorm")))),
        ("best ratio", "0.15 (of 0.05-0.20)", cell(*(
            (f"2x pairs, MEAP {r:.2f} - NTP" if r == 0.05 else f"{r:.2f}", diff("cpu", r, "mqar_2x"))
            for r in (0.05, 0.10, 0.15, 0.20)), *(
            ("clean val loss, 0.05" if r == 0.05 else f"{r:.2f}", diff("cpu", r, "val_loss"))
            for r in (0.05, 0.10, 0.15, 0.20)),
            ("ratio against ratio, 2x pairs: 0.15 - 0.05", diff("cpu", 0.15, "mqar_2x", base=0.05)),
            ("0.15 - 0.10", diff("cpu", 0.15, "mqar_2x", base=0.10)))),
    ]
    return ("| | paper (LLaMA-style, 1.1B, C4) | here (0.45M; synthetic tasks, 1,000 steps, 3-5 seeds, unless named) |\n"
            "|---|---|---|\n" + "".join(f"| {w} | {p} | {h} |\n" for w, p, h in rows))


def compact(folder, columns):
    """NTP's row (mean ± sd) and each MEAP ratio minus NTP, paired by seed, with its verdict, for some of
    a grid's report columns (key, title, format, better): the README's copy of a report's tables."""
    runs = load(folder)
    ratios, seeds = sorted({r for r, _ in runs}), sorted({s for _, s in runs})
    n = {r: len(common.seeds_of(runs, r, seeds)) for r in ratios}
    uneven = len(set(n.values())) > 1

    def name(r):
        return f"{r:.2f}{' (NTP)' if r == 0 else ''}" + (f" ({n[r]} seeds)" if uneven else "")

    lines = [common.header("mask_ratio", [c[1] for c in columns])]
    ntp = {s: runs[(0.0, s)] for s in common.seeds_of(runs, 0.0, seeds)}
    cells = [common.mean_cell([run[key] for run in ntp.values()], fmt) for key, _, fmt, *_ in columns]
    lines.append(f"| {name(0.0)} | " + " | ".join(cells) + " |\n")
    for r in ratios[1:]:
        both = [s for s in common.seeds_of(runs, r, seeds) if s in ntp]
        row = {s: runs[(r, s)] for s in both}
        lines.append(f"| {name(r)} | " + " | ".join(common.diff_cells(row, ntp, columns, both)) + " |\n")
    return "".join(lines).replace("nan", "n/a")


def contrasts(rows, keys, first="contrast"):
    """A table of differences, one line per contrast (label, folder, row, base row, other folder or
    None: as diff() takes them), one column per key, each cell with its verdict."""
    lines = [common.header(first, ["seeds"] + [TITLES[k] for k in keys])]
    for label, folder, row, base, other in rows:
        cells = [diff(folder, row, k, base, other) for k in keys]
        lines.append(f"| {label} | {len(paired(folder, row, base, other))} | " + " | ".join(cells) + " |\n")
    return "".join(lines)


SFT_ARMS = (("base", "base (no SFT)"), ("ntp", "NTP-SFT"), ("concat", "MEAP-SFT, concat (the paper's layout)"),
            ("separate", "MEAP-SFT, separate (the official code's)"), ("duplicate", "duplicate, no mask (control)"))


def sft():
    """Each fine-tuning arm of sft-cpu: exact match (mean ± sd, and minus NTP-SFT in points), the answer
    tokens right, and the step at which exact match passes 50%."""
    lines = ["| fine-tuning | exact match | minus NTP-SFT, points | answer tokens right | steps to 50% | minus NTP-SFT |\n",
             "|---|---|---|---|---|---|\n"]
    for arm, label in SFT_ARMS:
        against = arm not in ("base", "ntp")
        vs = diff("sft-cpu", arm, "acc_qa", "ntp", scale=100) if against else ""
        steps = mean("sft-cpu", arm, "steps_to_50") if arm != "base" else "never"
        later = diff("sft-cpu", arm, "steps_to_50", "ntp") if against else ""
        lines.append(f"| {label} | {mean('sft-cpu', arm, 'acc_qa')} | {vs} | "
                     f"{mean('sft-cpu', arm, 'acc_qa_token')} | {steps} | {later} |\n")
    return "".join(lines)


ATTENTION_ROWS = (  # (key, what it measures, the paper's figure)
    ("score_change", "attention on masked positions, masked copy vs clean", "-53.34%"),
    ("var_change", "variance over the unmasked positions", "+7.80%"),
    ("var_change_renorm", "(the variance change of dropping `[MASK]` and renormalising)", ""),
    ("needle_share", "retrieval head's share on the asked needle", "(34.5% vs 9.4% on one QA prompt)"),
    ("needle_distractor_share", "... on the other needles", ""),
    ("needle_hit", "hit@1 (the most-attended key is the needle)", ""),
    ("kv_share_in", "kv share, pairs 1-4 (trained positions)", ""),
    ("kv_share_out", "kv share, pairs 5-8 (beyond them)", ""),
    ("entropy", "mean entropy of all heads (1 = uniform)", ""),
    ("sink", "attention sink (share on the first token)", ""),
)


def attention_table():
    """The paper's attention metrics and the other lenses of cpu/attention.json: NTP's level, and MEAP
    0.10 and 0.15 minus NTP, paired by seed."""
    folder = "cpu/attention"
    n = {r: len(paired(folder, r)) for r in (0.10, 0.15)}
    lines = [f"| | paper (MEAP, 1.1B) | NTP here | MEAP 0.10 - NTP ({n[0.10]} seeds) | MEAP 0.15 - NTP ({n[0.15]} seeds) |\n",
             "|---|---|---|---|---|\n"]
    for key, label, paper in ATTENTION_ROWS:
        lines.append(f"| {label} | {paper} | {mean(folder, 0.0, key)} | {diff(folder, 0.10, key)} | "
                     f"{diff(folder, 0.15, key)} |\n")
    return "".join(lines)


def delay():
    """MEAP 0.15 / NTP, the steps each takes to reach a level, paired by seed: the synthetic grids'
    steps to 90% retrieval beside the long text grid's copying levels (text.DELAY_LEVELS)."""
    rows = []
    for label, folder in (("synthetic tasks: retrieval accuracy 0.9", "cpu"), ("the same over 2,000 steps", "cpu-2000-steps")):
        runs, seeds = load(folder), paired(folder, 0.15)
        rows.append((label, folder, len(seeds), text.ratio_cell([runs[(0.15, s)]["steps_to_90"] for s in seeds],
                                                                [runs[(0.0, s)]["steps_to_90"] for s in seeds])))
    folder = "text-stdlib-long"
    runs, seeds = load(folder), paired(folder, 0.15)
    T = int(common.read_json_or_die(os.path.join(RESULTS, folder, "grid.json"))["settings"]["block_size"])
    for (key, level), steps in zip(text.DELAY_LEVELS, text.delay_steps(runs, 0.15, 0.0, seeds, T)):
        rows.append((f"text: {text.STAGE_TITLES[key]}, 2nd copy {level}", folder, len(seeds), text.ratio_cell(steps[0.15], steps[0.0])))
    return common.header("level reached", ["grid", "seeds", "MEAP 0.15 / NTP, steps (geometric mean [95% interval])"]) + \
        "".join(f"| {label} | [`{folder}`](results/{folder}/results.md) | {n} | {cell} |\n" for label, folder, n, cell in rows)


def table_of(name):
    """The markdown table lines of a committed file under results/ (e.g. bench.py's --out)."""
    try:
        with open(os.path.join(RESULTS, name)) as f:
            return [line for line in f if line.startswith("|")]
    except OSError as e:
        die(f"cannot read {os.path.join(RESULTS, name)} ({e.strerror}); restore it (git checkout)")


REFERENCE_RUNS = (("reference-cpu.md", "eager, 2 threads"), ("reference-cpu-1-thread.md", "eager, 1 thread"),
                  ("reference-cpu-compiled.md", "compiled, 2 threads"))


def bench_reference():
    """bench.py --reference's three runs (results/bench/reference-*.md) in one table, a column naming the run."""
    head, rule, *_ = table_of(os.path.join("bench", REFERENCE_RUNS[0][0]))
    lines = [head.replace("| shape |", "| run | shape |"), rule.replace("|---", "|---|---", 1)]
    for name, run in REFERENCE_RUNS:
        lines += [f"| {run} " + row for row in table_of(os.path.join("bench", name))[2:]]
    return "".join(lines)


def columns(module, keys):
    """The report columns of a module (compare.COLUMNS, text.COLUMNS) named by keys, in that order."""
    by_key = {c[0]: c for c in module}
    return [by_key[k] for k in keys]


SP, SH, RT, PO, OI = "cpu-spared-queries", "cpu-shared", "cpu-random-tokens", "cpu-pair-offset", "cpu-official-init"
RETRIEVAL = ("needle", "needle_2x", "mqar_2x", "kv")
TABLES = {
    "in-short": in_short,
    "beside-the-paper": beside_the_paper,
    "cpu": lambda: compact("cpu", columns(compare.COLUMNS, (
        "needle", "needle_2x", "mqar", "mqar_2x", "kv", "filler_excess", "val_loss", "steps_to_90"))),
    "cpu-ratios": lambda: contrasts(tuple(
        (f"{a:.2f} minus {b:.2f}", "cpu", a, b, None) for a, b in ((0.10, 0.05), (0.15, 0.05), (0.15, 0.10), (0.20, 0.10), (0.20, 0.15))
    ), RETRIEVAL + ("val_loss", "steps_to_90"), first="ratio against ratio"),
    "masking-variants": lambda: contrasts((
        ("queries spared minus uniform, 0.10", SP, 0.10, 0.0, "cpu"),
        ("queries spared minus uniform, 0.15", SP, 0.15, 0.0, "cpu"),
        ("official shared columns minus per-sequence, 0.10", SH, 0.10, 0.0, "cpu"),
        ("official shared columns minus per-sequence, 0.15", SH, 0.15, 0.0, "cpu"),
        ("shared columns minus NTP, 0.10", SH, 0.10, 0.0, None),
        ("shared columns minus NTP, 0.15", SH, 0.15, 0.0, None),
    ), RETRIEVAL + ("needle_mq", "val_loss", "steps_to_90")),
    "random-tokens": lambda: contrasts((
        ("random tokens minus NTP, 0.10", RT, 0.10, 0.0, None),
        ("random tokens minus `[MASK]`, 0.10", RT, 0.10, 0.0, "cpu"),
        ("random tokens minus NTP, 0.15", RT, 0.15, 0.0, None),
        ("random tokens minus `[MASK]`, 0.15", RT, 0.15, 0.0, "cpu"),
    ), RETRIEVAL + ("filler_excess", "val_loss")),
    "pair-offset": lambda: contrasts((
        ("NTP, pairs offset minus not", PO, 0.0, 0.0, "cpu"),
        ("MEAP 0.10 minus NTP, both offset", PO, 0.10, 0.0, None),
        ("MEAP 0.15 minus NTP, both offset", PO, 0.15, 0.0, None),
    ), ("needle", "mqar", "mqar_2x", "kv", "kv_p4", "kv_p5", "kv_p6", "kv_p7", "steps_to_90")),
    "official-init": lambda: contrasts((
        ("MEAP 0.10 minus NTP, official init", OI, 0.10, 0.0, None),
        ("MEAP 0.15 minus NTP, official init", OI, 0.15, 0.0, None),
        ("NTP, official init minus ours", OI, 0.0, 0.0, "cpu"),
    ), ("needle", "mqar", "filler_excess", "val_loss")),
    "longer-deeper": lambda: contrasts((
        ("2,000 steps: MEAP 0.15 minus NTP", "cpu-2000-steps", 0.15, 0.0, None),
        ("NTP, 2,000 steps minus 1,000", "cpu-2000-steps", 0.0, 0.0, "cpu"),
        ("4 layers: MEAP 0.10 minus NTP", "cpu-4-layers", 0.10, 0.0, None),
        ("4 layers: MEAP 0.15 minus NTP", "cpu-4-layers", 0.15, 0.0, None),
        ("NTP, 4 layers minus 2", "cpu-4-layers", 0.0, 0.0, "cpu"),
    ), RETRIEVAL + ("kv_p6", "kv_p7", "val_loss", "steps_to_90")),
    "sft": sft,
    "bench-cpu": lambda: "".join(table_of(os.path.join("bench", "cpu.md"))),
    "bench-reference": bench_reference,
    "bench-h200": lambda: "".join(table_of(os.path.join("bench", "h200.md"))),
    "attention": attention_table,
    "text-cpu": lambda: compact("text-cpu", columns(text.COLUMNS, (
        "val_loss", "copy_random", "copy_random_gain", "copy_text_gain", "passkey"))),
    "text-stdlib": lambda: compact("text-stdlib", columns(text.COLUMNS, (
        "val_loss", "copy_random_16", "copy_frequent_16", "copy_text", "copy_text_gain", "passkey",
        "previous_token"))),
    "readme-cpu": lambda: compact("cpu", columns(compare.COLUMNS, (
        "needle", "mqar_2x", "kv", "filler_excess", "val_loss", "steps_to_90"))),
    "delay": delay,
    "text-stdlib-long": lambda: compact("text-stdlib-long", columns(text.COLUMNS, (
        "val_loss", "copy_random_16", "copy_text", "copy_text_gain", "passkey", "previous_token"))),
}
FILES = ("README.md", os.path.join("results", "README.md"))  # where digest blocks may stand
BLOCK = re.compile(r"(<!-- digest: ([a-z0-9-]+) -->\n)(.*?)(<!-- end digest -->)", re.S)


def render(md):
    """md with every digest block rewritten from the data."""
    def fill(m):
        if m.group(2) not in TABLES:
            die(f"unknown digest table {m.group(2)!r} (known: {', '.join(TABLES)})")
        return m.group(1) + TABLES[m.group(2)]() + m.group(4)
    return BLOCK.sub(fill, md)


def digest(check):
    """Rewrite (or, with check, only compare) the digest blocks of FILES from the data."""
    stale = []
    for name in FILES:
        path = os.path.join(common.ROOT, name)
        md = open(path).read()
        new = render(md)
        if new != md:
            stale.append(name)
            if not check:
                common.write_text(path, new)
    if check and stale:
        die(f"the tables of {' and '.join(stale)} are stale; run python -m experiments.digest")
    print(("rewrote the tables of " + " and ".join(stale)) if stale and not check else
          "the tables of " + " and ".join(FILES) + " are up to date")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Rewrite results/README.md's summary tables from the per-run data.")
    ap.add_argument("--check", action="store_true", help="only check that they are up to date (exit 1 if not)")
    ap.error = lambda msg: die(f"{msg} (python -m experiments.digest --help lists the options)")
    args = ap.parse_args(argv)
    try:
        digest(args.check)
    except (KeyError, IndexError, TypeError) as e:  # a per-run file without what its table reads
        die(f"a results file lacks what its table reads ({type(e).__name__}: {e}); restore results/ (git checkout)")


if __name__ == "__main__":
    main()
