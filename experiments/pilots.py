"""
Which CPU regime teaches a small GPT trained on text to copy from its context? A map of pilots:
each trains one NTP run with train.py, stage by stage, and after every stage probes its checkpoint
zero-shot on held-out text: the copying probe of probes.py (a span shown twice; random, frequent and
text spans; every gap that fits) and, per layer, the attention share on the previous token (an
induction head needs a previous-token head below it). So the map shows how far each lever got, and
which way it moved, not just whether it crossed a line.

    python data/stdlib/prepare.py                                # once each: the corpus, and two
    python data/stdlib/prepare.py --repeat 1 --out_dir data/stdlib_dense      # copies with copied spans
    python data/stdlib/prepare.py --repeat 0.5 --repeat_block 128 --repeat_span 16,48 --out_dir data/stdlib_repeat
    python -m experiments.pilots                         # every pilot not yet run, two at a time
    python -m experiments.pilots --only common,plain     # some of them
    python -m experiments.pilots --report results/copying-pilots   # rewrite the map from its data

A pilot's per-stage data goes to OUT/NAME.json as soon as the stage is probed (a rerun continues
where it stopped); results.md is a pure function of those files. Checkpoints stay in OUT/runs/.
"""

import argparse
import os
import sys
if not __package__:  # run as a file: the imports below need the repository root, which -m puts on the path
    raise SystemExit(f"error: run it from the repository root as a module: python -m experiments.pilots {' '.join(sys.argv[1:])}".rstrip())
import runtime  # noqa: E402  (before torch: Ctrl-C while the libraries load is one line too)
if __name__ == "__main__":
    runtime.exit_on_ctrl_c("nothing was written", at_once=True)

from runtime import die  # noqa: E402
from experiments import probes  # noqa: E402
from experiments.probes import SEED, SPAN, gaps_of  # noqa: E402
from experiments.common import (claim_out, evals_of, in_parallel, interrupted, parse_list, prepare_command,  # noqa: E402
                                read_json_or_die, train, write_json, write_text)

EXAMPLES = 100  # probe sequences per kind and gap
# the model and optimisation every pilot shares: text.py's 2 x 128 model on 128-token rows of 8
BASE = dict(block_size=128, batch_size=8, n_layer=2, n_head=4, n_kv_head=4, n_embd=128, learning_rate=1e-3,
            min_lr=1e-4, warmup_iters=100, eval_interval=1000, eval_iters=20, log_interval=500, device="cpu",
            dtype="float32", seed=1)
STAGES = (1000, 2000, 4000, 8000, 12000)  # steps; 12,000 x 1,024 tokens = 12.3M tokens, ~16 min on one core
PILOTS = {  # name: (what it tests, train.py settings over BASE)
    "plain": ("Python source, BPE 1k: the baseline", dict(dataset="stdlib")),
    "repeat": ("+ a copied span in half of the 128-token stretches", dict(dataset="stdlib_repeat")),
    "common": ("+ a component common to all token embeddings (emb_common 1)", dict(dataset="stdlib", emb_common=1.0)),
    "common-repeat": ("both", dict(dataset="stdlib_repeat", emb_common=1.0)),
    "common-repeat-lr3e-3": ("both, learning rate 3e-3", dict(dataset="stdlib_repeat", emb_common=1.0,
                                                               learning_rate=3e-3, min_lr=3e-4)),
    "common-repeat-3-layers": ("both, 3 layers", dict(dataset="stdlib_repeat", emb_common=1.0, n_layer=3)),
    "common-lr3e-3": ("emb_common, learning rate 3e-3, no copied spans", dict(dataset="stdlib", emb_common=1.0,
                                                                              learning_rate=3e-3, min_lr=3e-4)),
    "common-dense-lr3e-3": ("emb_common, learning rate 3e-3, a copied 8-24 token span in every 64-token stretch",
                            dict(dataset="stdlib_dense", emb_common=1.0, learning_rate=3e-3, min_lr=3e-4)),
}
PASS = 0.5  # copying has formed when the 2nd copy of a random span reaches this, the 1st at chance


def probe_stage(run_dir, S, device="cpu"):
    """The probes of run_dir's checkpoint at step S: copying by kind and gap, the previous-token
    share per layer, and the clean val loss train.py logged at S."""
    model, _, hay, ckpt = probes.load(run_dir, device)
    if ckpt["iter_num"] != S:
        raise RuntimeError(f"{run_dir} holds step {ckpt['iter_num']}, not {S}; delete it to train the pilot again")
    T = ckpt["model_args"]["block_size"]
    val = [m["val_loss"] for m in evals_of(run_dir) if m["iter"] == S]
    copying = {kind: {str(g): r for g, r in probes.copying(model, hay, SPAN, gaps_of(T), kind, EXAMPLES, SEED).items()}
               for kind in probes.KINDS}
    return {"step": S, "tokens": S * ckpt["config"]["batch_size"] * T, "val_loss": val[-1],
            "previous_token": probes.previous_token_share(model, hay, seed=SEED), "copying": copying}


def run_pilot(out, name, stages, threads):
    """Train pilot `name` stage by stage (each resumes the last, on the schedule of the whole run) and
    probe each stage into out/name.json; returns its data."""
    path = os.path.join(out, f"{name}.json")
    what, extra = PILOTS[name]
    data = read_json_or_die(path) if os.path.exists(path) else {"pilot": name, "what": what,
                                                                 "settings": {**BASE, **extra}, "stages": []}
    done = {st["step"] for st in data["stages"]}
    run_dir = os.path.join(out, "runs", name)
    for S in stages:
        if S in done:
            continue
        settings = {**BASE, **extra, "mask_ratio": 0.0, "max_iters": S, "lr_decay_iters": stages[-1]}
        seed = settings.pop("seed")
        train(run_dir, settings.pop("mask_ratio"), seed, settings, threads)
        data["stages"].append(probe_stage(run_dir, S))
        write_json(path, data)
    return data


# -----------------------------------------------------------------------------
# the map: a pure function of the pilots' files


def report(out):
    """out/results.md from out/*.json: one table row per pilot and stage, and each pilot's verdict."""
    paths = [os.path.join(out, f"{n}.json") for n in PILOTS]
    pilots = [read_json_or_die(path) for path in paths if os.path.exists(path)]
    pilots = [p for p in pilots if isinstance(p, dict) and p.get("stages")]  # (a pilot not probed yet: nothing to show)
    if not pilots:
        die(f"{out} holds no probed pilot stage (NAME.json); run the pilots first")
    gaps = list(pilots[0]["stages"][0]["copying"]["random"])
    head = ("| pilot | step | tokens | clean val loss | previous-token share, per layer | "
            + " | ".join(f"{kind} span, gap {g}: 1st / 2nd" for kind in probes.KINDS for g in gaps) + " |\n")
    lines = [head, "|---" * (5 + len(probes.KINDS) * len(gaps)) + "|\n"]
    verdicts = []
    for p in pilots:
        for st in p["stages"]:
            cells = [f"{st['copying'][kind][g]['acc_first']:.3f} / {st['copying'][kind][g]['acc_second']:.3f}"
                     for kind in probes.KINDS for g in gaps]
            share = " / ".join(f"{v:.2f}" for v in st["previous_token"])
            lines.append(f"| {p['pilot']} | {st['step']:,} | {st['tokens'] / 1e6:.1f}M | {st['val_loss']:.4f} | {share} | "
                         + " | ".join(cells) + " |\n")
        verdicts.append(verdict(p, gaps))
    summary = ["| pilot | step | clean val loss | layer 0's previous-token share | random span, gap 16: 2nd copy "
               "(1st) | frequent span, gap 16 | text span, gap 16 | text span, gap 64 |\n", "|---" * 8 + "|\n"]
    for p in pilots:
        st = p["stages"][-1]
        c = [st["copying"][kind][g] for kind, g in (("random", gaps[0]), ("frequent", gaps[0]), ("text", gaps[0]),
                                                     ("text", gaps[-1]))]
        summary.append(f"| {p['pilot']} | {st['step']:,} | {st['val_loss']:.4f} | {st['previous_token'][0]:.2f} | "
                       + " | ".join(f"{r['acc_second']:.3f} ({r['acc_first']:.3f})" for r in c) + " |\n")
    settings = ", ".join(f"{k}={v}" for k, v in pilots[0]["settings"].items() if k in BASE and k != "device")
    md = (f"`python -m experiments.pilots`, then `python -m experiments.pilots --report DIR` (this file, from the "
          f"pilots' NAME.json alone). One NTP run per pilot (seed {BASE['seed']}): {settings}; the differences "
          f"are named below. Copying: greedy accuracy on the 1st and the 2nd occurrence of a {SPAN}-token span, "
          f"{EXAMPLES} held-out probes per cell (probes.py).\n\n"
          + "".join(f"- **{p['pilot']}**: {p['what']} ({', '.join(f'{k}={v}' for k, v in p['settings'].items() if BASE.get(k) != v)})\n"
                    for p in pilots)
          + "\nThe last stage of each (the 1st copy in brackets: what the model gets without copying):\n\n"
          + "".join(summary) + "\nEvery stage:\n\n" + "".join(lines) + "\n" + "".join(verdicts))
    write_text(os.path.join(out, "results.md"), md)
    return md


def verdict(p, gaps):
    """One line per pilot, chosen from its data: for random and text spans at each gap, the first
    stage at which the 2nd copy reaches PASS (a random span's 1st copy staying below 0.05), or how
    far the last stage got."""
    last, parts = p["stages"][-1]["copying"], []
    for kind in ("random", "text"):
        for g in gaps:
            step = next((st["step"] for st in p["stages"] if st["copying"][kind][g]["acc_second"] >= PASS
                         and (kind == "text" or st["copying"][kind][g]["acc_first"] < 0.05)), None)
            r = last[kind][g]
            parts.append(f"{kind} spans, gap {g}: " + (f"2nd copy passes {PASS} at step {step:,}" if step else
                         f"never {PASS} (last stage: 2nd copy {r['acc_second']:.3f}, 1st {r['acc_first']:.3f})"))
    return f"- {p['pilot']}: " + "; ".join(parts) + ".\n"


# -----------------------------------------------------------------------------
# the command line


def main(argv=None):
    ap = argparse.ArgumentParser(description="A map of CPU pilots: does a small GPT trained on text learn to copy?")
    ap.add_argument("--out", default="results/copying-pilots", help="results folder")
    ap.add_argument("--only", default=None, help=f"comma-separated pilots (default all: {', '.join(PILOTS)})")
    ap.add_argument("--stages", default=None, help=f"comma-separated steps to probe at (default {STAGES})")
    ap.add_argument("--jobs", type=int, default=2, help="pilots at a time, one CPU thread each")
    ap.add_argument("--report", default=None, metavar="DIR", help="only rewrite DIR/results.md from DIR's pilot data")
    ap.error = lambda msg: die(f"{msg} (python -m experiments.pilots --help lists the options)")
    args = ap.parse_args(argv)
    if args.report:
        try:
            print(report(args.report), end="")
        except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
            die(f"{args.report}: a pilot file lacks what pilots.py writes ({type(e).__name__}: {e}); restore it "
                f"(git checkout) or run the pilot again")
        print(f"wrote {args.report}/results.md")
        return
    names = parse_list(args.only, str) if args.only else tuple(PILOTS)
    stages = parse_list(args.stages, int) if args.stages else STAGES
    unknown = [n for n in names if n not in PILOTS]
    if unknown:
        die(f"unknown pilot(s) {', '.join(unknown)}; --only takes names among {', '.join(PILOTS)}")
    if list(stages) != sorted(set(stages)) or stages[0] < 1 or args.jobs < 1:
        die(f"need increasing --stages >= 1 and --jobs >= 1 (got --stages {','.join(map(str, stages))} "
            f"and --jobs {args.jobs})")
    for n in names:
        data = os.path.join("data", PILOTS[n][1]["dataset"], "train.bin")
        if not os.path.exists(data):
            die(f"{data} not found; prepare it first: {prepare_command(PILOTS[n][1]['dataset'])}")
    claim_out(args.out, {"pilots": BASE, "pilot_stages": list(stages)})
    runtime.ctrl_c_raises()  # interrupted() stops the runs and says how to continue
    try:
        in_parallel(lambda n: run_pilot(args.out, n, stages, threads=1), names, args.jobs,
                    lambda n, d: verdict(d, list(d["stages"][0]["copying"]["random"]))[2:].strip())
    except KeyboardInterrupt:
        interrupted(args.out)
    runtime.exit_on_ctrl_c(f"the finished runs are kept in {args.out}; the same command writes the report")
    print(report(args.out), end="")
    runtime.work_done()
    print(f"wrote {args.out}/results.md")


if __name__ == "__main__":
    main()
