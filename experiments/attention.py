"""
Attention analysis: where a trained model looks, measured the way the MEAP paper argues its case
(Zhuang et al. 2025, §5, "pay less attention to learn more").

The paper explains MEAP's better retrieval by "more distinguishable attention" and backs it with
three measurements, all on attention weights a[i, j] (query row i, key j; each row sums to 1):
1. Same checkpoint, clean input X_N against a masked copy X_M of it: the attention that the masked
   positions receive falls (the paper: -53.34%)           -> masked_score_change()
2. ... and the variance of the attention over the unmasked positions rises (+7.80%)
                                                          -> unmasked_variance_change()
3. On a question-answering prompt, the share of attention on the answer-relevant span is larger
   (MEAP 34.5% against NTP 9.4%)                          -> span_share(), asked_span()
We add the lenses the paper does not use, because sharpness alone can mislead (a head can be sharp
and look at the wrong place): hit@1 (is the most-attended key inside the span?), entropy per row,
the effective number of keys, the attention sink (the share on the first token, Gu et al. 2024),
and a control for metric 2: how much of the variance rise is just the masked keys' weight being
spread over the rest (drop_masked()).

Every function takes attention weights of shape (n_layer, B, n_head, T, T), as model.py's explicit
path returns them (GPT.attention); causal rows see keys 0..i.

    python -m experiments.attention --grid results/cpu   # the attention table over a compare.py grid's runs
    python -m experiments.attention --report results/cpu   # rewrite attention.md from attention.json alone
"""

import argparse
import os
import re
import shlex
import sys

if not __package__:  # run as a file: the imports below need the repository root, which -m puts on the path
    raise SystemExit(f"error: run it from the repository root as a module: python -m experiments.attention {' '.join(sys.argv[1:])}".rstrip())
import runtime  # noqa: E402  (before torch: Ctrl-C while the libraries load is one line too)
if __name__ == "__main__":
    runtime.exit_on_ctrl_c("nothing was written", at_once=True)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from runtime import die  # noqa: E402
import atomic_files  # noqa: E402
import tasks  # noqa: E402
from random_streams import VAL_SEED, torch_generator  # noqa: E402
from experiments import common  # noqa: E402
from mask import meap_inputs  # noqa: E402
from model import GPT  # noqa: E402

# -----------------------------------------------------------------------------
# getting the weights


@torch.no_grad()
def attention_maps(model, x):
    """Logits (B, T, V) and attention weights (n_layer, B, n_head, T, T) of model on input ids x
    (B, T), both float32 on the CPU. Uses the explicit softmax path; the logits equal the fast path's."""
    model.eval()
    device = next(model.parameters()).device
    logits, att = model.attention(x.to(device))
    return logits.float().cpu(), att.float().cpu()


def visible(T):
    """(T, T) bool: key j is visible from query row i when j <= i (causal attention)."""
    return torch.ones(T, T, dtype=torch.bool).tril()


# -----------------------------------------------------------------------------
# the paper's paired metrics: one checkpoint, clean input against a masked copy of it (§5)

def masked_score_change(att_clean, att_masked, mask):
    """Relative change of the attention that the masked positions receive, (A_M - A_N) / A_N, where
    A_X is the mean weight that query rows give to keys masked in the copy (keys a row can see),
    on the clean input (N) and on the masked copy (M). mask (B, T) bool: True where the copy has
    [MASK]. Negative = the model pays less attention to [MASK] than to the token it replaced; the
    paper reports -53.34% for MEAP."""
    L, B, H, T, _ = att_clean.shape
    keys = (mask[None, :, None, None, :] & visible(T)).expand(L, B, H, T, T)  # masked keys each row sees
    a_n, a_m = att_clean[keys].mean(), att_masked[keys].mean()
    return (a_m / a_n - 1).item()


def row_variance(att, keys):
    """Variance of each query row's weights over the keys marked True in keys (broadcastable to
    att): (n_layer, B, n_head, T), NaN for rows with fewer than two such keys."""
    keys = keys.expand_as(att)
    n = keys.sum(-1)
    mean = (att * keys).sum(-1) / n.clamp_min(1)
    var = ((att - mean[..., None]) ** 2 * keys).sum(-1) / n.clamp_min(1)
    return torch.where(n >= 2, var, torch.full_like(var, float("nan")))


def unmasked_variance_change(att_clean, att_masked, mask):
    """Relative change of the attention variance over the unmasked positions, (V_M - V_N) / V_N, where
    V_X is the per-row variance of the weights on the visible unmasked keys, averaged over rows,
    heads and layers. Positive = sharper contrast among the real tokens; the paper reports +7.80%."""
    T = att_clean.size(-1)
    keys = (~mask)[None, :, None, None, :] & visible(T)  # (1, B, 1, T, T)
    v_n, v_m = row_variance(att_clean, keys), row_variance(att_masked, keys)
    ok = ~torch.isnan(v_n)
    return (v_m[ok].mean() / v_n[ok].mean() - 1).item()


def drop_masked(att, mask):
    """The control for unmasked_variance_change(): att with the masked keys' weight removed and
    each row renormalised, i.e. what a row would be if it ignored [MASK] and spread that weight over
    the other keys in proportion. Rows whose visible keys are all masked become NaN."""
    keep = (~mask)[None, :, None, None, :].to(att.dtype)  # (1, B, 1, 1, T)
    kept = att * keep
    total = kept.sum(-1, keepdim=True)
    return torch.where(total > 0, kept / total.clamp_min(1e-30), torch.full_like(kept, float("nan")))


# -----------------------------------------------------------------------------
# attention on the answer-relevant span

def asked_span(x, query):
    """For retrieval prompts (tasks.py): the query row and the span holding its answer. For each
    sequence b, q[b] is its first query position (x there is the asked key) and span[b] (T,) marks
    the key's first occurrence and the token after it (the needle, or the key-value pair). Returns
    q (B,) and span (B, T) bool."""
    B, T = x.shape
    q = query.int().argmax(dim=1)  # (B,) first True per row
    if not bool(query[torch.arange(B), q].all()):
        raise ValueError("asked_span: every sequence needs a query position")
    span = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        first = (x[b, :q[b]] == x[b, q[b]]).nonzero()
        if len(first) == 0:
            raise ValueError(f"asked_span: the key asked at position {int(q[b])} of sequence {b} "
                             f"never occurs before it")
        k = int(first[0])
        span[b, k:k + 2] = True
    return q, span


def query_rows(att, q):
    """The attention rows of query positions q (B,): (n_layer, B, n_head, T)."""
    rows = att.permute(1, 3, 0, 2, 4)[torch.arange(att.size(1)), q]  # (B, n_layer, n_head, T)
    return rows.permute(1, 0, 2, 3)


def span_share(att, q, span):
    """Share of the attention of query row q[b] that lands on the keys marked in span[b]:
    (n_layer, B, n_head), in [0, 1]. The paper's "attention on the answer span"."""
    return (query_rows(att, q) * span[None, :, None, :]).sum(-1)


def hit_at_1(att, q, span):
    """(n_layer, B, n_head) bool: the most-attended key of row q[b] is inside span[b]."""
    top = query_rows(att, q).argmax(-1)  # (n_layer, B, n_head): the most-attended key position
    return span[torch.arange(len(q))[None, :, None], top]


def retrieval_head(share):
    """(layer, head) with the largest mean span share over the batch; share (n_layer, B, n_head)."""
    mean = share.mean(1)  # (n_layer, n_head)
    layer, head = divmod(int(mean.argmax()), mean.size(1))
    return layer, head


# -----------------------------------------------------------------------------
# sharpness

def entropy(att, normalise=True):
    """Entropy -sum_j a log a of every row: (n_layer, B, n_head, T). normalise divides by the log of
    the number of visible keys, so 1 = uniform over them and 0 = all weight on one key; row 0 (a
    single key) is then NaN."""
    h = -(att * att.clamp_min(1e-30).log()).sum(-1)
    if not normalise:
        return h
    n_keys = torch.arange(1, att.size(-1) + 1, dtype=att.dtype)  # row i sees i + 1 keys
    return h / n_keys.log()  # log 1 = 0: row 0 becomes NaN (0/0)


def effective_keys(att):
    """1 / sum_j a^2 of every row: how many keys the row spreads over (1 = one key)."""
    return 1.0 / (att ** 2).sum(-1)


def sink_share(att):
    """The attention sink: the mean weight that rows 1..T-1 give to the first token (row 0 has
    nothing else to see), over all layers, heads and sequences."""
    return att[..., 1:, 0].mean().item()


# -----------------------------------------------------------------------------
# drawing (matplotlib Axes in, nothing returned; no pyplot needed)

def plot_heatmap(ax, att, tokens=None, title=None, rows=None, cols=None):
    """One head's attention (T, T) as an image; tokens label both axes. rows and cols: optional
    positions to outline (a query row; the span's columns)."""
    att = torch.as_tensor(att).float()
    T = att.size(0)
    im = ax.imshow(att.masked_fill(~visible(T), float("nan")).numpy(), cmap="viridis", vmin=0, vmax=1,
                   interpolation="nearest")  # the hidden (future) half stays blank
    if tokens is not None:
        ax.set_xticks(range(T), tokens, rotation=90, fontsize=5)
        ax.set_yticks(range(T), tokens, fontsize=5)
    for r in rows if rows is not None else []:
        ax.axhline(r, color="red", lw=0.6, alpha=0.8)
    for c in cols if cols is not None else []:
        ax.axvline(c, color="orange", lw=0.6, alpha=0.8)
    ax.set(xlabel="key position", ylabel="query position", title=title)
    return im


def plot_row(ax, weights, tokens, highlight=None, title=None, color="tab:blue"):
    """One query row's weights over the keys as bars labelled by token; highlight (T,) bool
    colours the answer span."""
    w = torch.as_tensor(weights).float().numpy()
    colors = [("tab:orange" if highlight is not None and bool(highlight[j]) else color) for j in range(len(w))]
    ax.bar(range(len(w)), w, color=colors)
    ax.set_xticks(range(len(w)), tokens[:len(w)], rotation=90, fontsize=6)
    ax.set(ylim=(0, 1), ylabel="attention weight", title=title)


def plot_bars(ax, values, errors=None, title=None, ylabel=None, colors=None):
    """Bars for a {label: value} dict, with optional {label: error} error bars."""
    labels = list(values)
    err = [errors[k] for k in labels] if errors else None
    ax.bar(range(len(labels)), [values[k] for k in labels], yerr=err, capsize=4, color=colors)
    ax.set_xticks(range(len(labels)), labels)
    ax.set(title=title, ylabel=ylabel)
    ax.axhline(0, color="gray", lw=0.8)


# -----------------------------------------------------------------------------
# the probe of one checkpoint, and the table over a compare.py grid

PROBE = 11  # with random_streams.VAL_SEED: the random stream of the held-out prompts


@torch.no_grad()
def probe(model, cfg, n_examples=200, seed=(VAL_SEED, PROBE), mask_ratio=0.15, mask_token_id=None):
    """Every attention measurement of one model on held-out prompts of its trained settings, as a
    flat dict of floats. cfg holds train.py's block_size, n_pairs and n_needles.
    - needle_*: the trained needle task; the retrieval head is the (layer, head) with the largest
      share on the asked needle; for it: share on the needle, on the other needles, hit@1, entropy.
    - kv_share_p<i>: that head's share on the asked pair in the lost-in-the-middle task (2 x n_needles
      pairs), by the pair's position; kv_share_in / kv_share_out average the trained-size positions
      (1..n_needles) and the ones beyond.
    - score_change, var_change, var_change_renorm: the paper's paired metrics on the training mix,
      clean against a copy masked uniformly at mask_ratio (as the paper masks), and the variance
      change that drop_masked() alone would give.
    - entropy: mean normalised entropy of all heads and rows on the clean training mix; sink: the
      mean share of attention on the first token there."""
    T, P, N = cfg["block_size"], cfg["n_pairs"], cfg["n_needles"]
    mask_token_id = tasks.MASK_ID if mask_token_id is None else mask_token_id
    rng = np.random.default_rng(list(seed))
    res = {}

    b = tasks.needle(rng, n_examples, T, N)
    _, att = attention_maps(model, b.x)
    q, span = asked_span(b.x, b.query)
    share = span_share(att, q, span)
    layer, head = retrieval_head(share)
    keys_or_values = torch.from_numpy(np.isin(b.x.numpy(), np.concatenate([tasks.KEYS, tasks.VALUES])))
    before_tail = torch.arange(T)[None, :] < T - 2  # leave the question itself out
    others = keys_or_values & before_tail & ~span  # the distractor needles
    res["head_layer"], res["head"] = float(layer), float(head)
    res["needle_share"] = share[layer, :, head].mean().item()
    res["needle_distractor_share"] = span_share(att, q, others)[layer, :, head].mean().item()
    res["needle_hit"] = hit_at_1(att, q, span)[layer, :, head].float().mean().item()
    res["needle_entropy"] = torch.nanmean(entropy(att)[layer, torch.arange(n_examples), head, q]).item()

    for i in range(2 * N):
        kb = tasks.kv(rng, n_examples, T, 2 * N, i)
        _, katt = attention_maps(model, kb.x)
        kq, kspan = asked_span(kb.x, kb.query)
        res[f"kv_share_p{i}"] = span_share(katt, kq, kspan)[layer, :, head].mean().item()
    res["kv_share_in"] = float(np.mean([res[f"kv_share_p{i}"] for i in range(N)]))
    res["kv_share_out"] = float(np.mean([res[f"kv_share_p{i}"] for i in range(N, 2 * N)]))

    mb = tasks.make_batch("mix", rng, n_examples, T, P, N)
    g = torch_generator(rng)
    xm, mask = meap_inputs(mb.x, mask_ratio, mask_token_id, generator=g)
    _, att_n = attention_maps(model, mb.x)
    _, att_m = attention_maps(model, xm)
    res["score_change"] = masked_score_change(att_n, att_m, mask)
    res["var_change"] = unmasked_variance_change(att_n, att_m, mask)
    res["var_change_renorm"] = unmasked_variance_change(att_n, drop_masked(att_n, mask), mask)
    res["entropy"] = torch.nanmean(entropy(att_n)).item()
    res["sink"] = sink_share(att_n)
    return res


COLUMNS = [  # (probe key, column title, format)
    ("needle_share", "share on the needle", "{:.3f}"),
    ("needle_distractor_share", "on other needles", "{:.3f}"),
    ("needle_hit", "hit@1", "{:.3f}"),
    ("needle_entropy", "entropy at the query", "{:.3f}"),
    ("kv_share_in", "kv share, pairs 1-N", "{:.3f}"),
    ("kv_share_out", "kv share, pairs N+1-2N", "{:.3f}"),
    ("score_change", "masked score change", "{:+.3f}"),
    ("var_change", "unmasked variance change", "{:+.3f}"),
    ("var_change_renorm", "(renormalising alone)", "{:+.3f}"),
    ("entropy", "mean entropy", "{:.3f}"),
    ("sink", "sink (first token)", "{:.3f}"),
]


def report(grid):
    """Write grid/attention.md from grid/attention.json alone (the probe of every run and of the
    untrained control); returns the markdown."""
    data = common.read_json(os.path.join(grid, "attention.json"))
    results = {(run["mask_ratio"], run["seed"]): run for run in data["runs"]}
    control = {("untrained", run["seed"]): run for run in data["untrained"]}
    ratios, seeds = sorted({r for r, _ in results}), sorted({s for _, s in results})
    md = common.summary(results, ratios, seeds, COLUMNS)
    md += ("\nThe unmasked variance change minus what renormalising alone gives, within each run, paired by seed: "
           f"mean [95% paired-t interval] and its verdict{common.VERDICTS}.\n"
           + common.within(results, ratios, seeds, "var_change", "var_change_renorm"))
    md += "\nControl: the same seeds' weights before training (step 0).\n\n" + \
        common.summary(control, ["untrained"], seeds, COLUMNS, names={"untrained": "untrained"})
    common.write_text(os.path.join(grid, "attention.md"), f"`{data['command']}`\n\nPer-run data: "
                       f"[attention.json](attention.json), from which `python -m experiments.attention --report DIR` "
                       f"rewrites this file.\n\n{md}")
    return md


def main(argv=None):
    ap = argparse.ArgumentParser(description="The attention table over the runs of a compare.py grid.")
    ap.add_argument("--grid", default="results/cpu", help="a compare.py --out folder (its runs/ hold the checkpoints)")
    ap.add_argument("--examples", type=int, default=200, help="held-out prompts per measurement")
    ap.add_argument("--mask_ratio", type=float, default=0.15,
                    help="ratio of the masked copy for the paired metrics; at most 0.5 (masked and unmasked keys)")
    ap.add_argument("--report", default=None, metavar="DIR", help="only rewrite DIR/attention.md from DIR/attention.json")
    ap.add_argument("--overwrite", action="store_true", help="replace the grid's attention.json (refused otherwise)")
    ap.error = lambda msg: die(f"{msg} (python -m experiments.attention --help lists the options)")
    args = ap.parse_args(argv)
    if args.report:
        if not os.path.exists(os.path.join(args.report, "attention.json")):
            die(f"{args.report} has no attention.json; "
                         f"run python -m experiments.attention --grid {shlex.quote(args.report)}")
        print(common.report_or_die(report, args.report))
        return
    if args.examples < 1 or not 0 < args.mask_ratio <= 0.5:  # the paired metrics need masked and unmasked keys
        die(f"--examples must be at least 1 and --mask_ratio in (0, 0.5] "
                         f"(got {args.examples} and {args.mask_ratio})")
    if not os.path.isdir(args.grid):
        die(f"--grid {args.grid} is not a folder; give the --out folder of a compare.py grid")
    runs = os.path.join(args.grid, "runs")
    found = {}
    for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        m = re.fullmatch(r"r(\d+\.\d+)_s(\d+)", name)  # compare.run_name's
        if m and os.path.exists(os.path.join(runs, name, "ckpt.pt")):
            found[(float(m.group(1)), int(m.group(2)))] = os.path.join(runs, name)
    if not found:
        die(f"no checkpoints in {runs}; "
                         f"train a grid first: python -m experiments.compare --out {shlex.quote(args.grid)}")
    try:
        atomic_files.check_writable(args.grid)  # attention.json goes there: check before the work
    except OSError as e:
        die(f"--grid: {e}")
    common.keep_result(os.path.join(args.grid, "attention.json"), args.overwrite)
    seeds = sorted({s for _, s in found})
    results, configs = {}, {}
    for (r, s), path in sorted(found.items()):
        try:
            model, cfg, it = common.load_model(path)
            configs[s] = (model.config, cfg)
            results[(r, s)] = probe(model, cfg, args.examples, mask_ratio=args.mask_ratio)
        except ValueError as e:  # an unreadable checkpoint, or a --mask_ratio its block cannot take
            die(f"{path}: {e}")
        print(f"mask_ratio {r:.2f} seed {s} (step {it}): " + ", ".join(
            f"{k} {results[(r, s)][k]:.3f}" for k, _, _ in COLUMNS), flush=True)
    # the step-0 control: each seed's weights before training (train.py seeds the init with --seed)
    control = {}
    for s in seeds:
        model_config, cfg = configs[s]
        torch.manual_seed(s)
        control[("untrained", s)] = probe(GPT(model_config), cfg, args.examples, mask_ratio=args.mask_ratio)
    cmd = " ".join(["python -m experiments.attention"] + (argv if argv is not None else sys.argv[1:]))
    common.write_json(os.path.join(args.grid, "attention.json"), {
        "command": cmd, "runs": [{"mask_ratio": r, "seed": s, **res} for (r, s), res in sorted(results.items())],
        "untrained": [{"seed": s, **res} for (_, s), res in sorted(control.items())]})
    print(report(args.grid))
    print(f"wrote {args.grid}/attention.md")


if __name__ == "__main__":
    main()
