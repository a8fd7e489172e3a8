"""
Zero-shot retrieval probes for a checkpoint trained on text: does the model use its context, without
ever being trained on the probe? Two probes, both on held-out text (the dataset's val.bin):

- copying (the induction-head measure of Olsson et al. 2022): a span of k tokens is shown once, then
  again after a gap of held-out text:   lead | S | gap | S
  Scored on the second occurrence from its second token on (the model has seen S[0..j] twice and
  must say S[j+1]), beside the same positions of the first occurrence, where it cannot copy. The
  span is k distinct random tokens of the text's own vocabulary, drawn uniformly ("random": only
  copying helps) or by their frequency in the text ("frequent": the same, in the tokens a model
  trained on the text knows well; with a large vocabulary most uniform draws are rare ones), or a
  random stretch of held-out text ("text": language modelling helps too). A model without
  in-context copying scores the same on both occurrences; one with it scores ~1 on the second.
- passkey, in the text's own vocabulary: "the password is W." at depth d of held-out text, then
  "the password is" at the end; exact match of the greedy continuation with W. W is a word of the
  corpus (BPE), or 5 random lowercase letters (bytes), so that the needle is ordinary text.
  needle_prompt() builds the prompts; niah.py uses it for the paper's magic-number needle.

    python -m experiments.probes --out_dir out-shakespeare-byte       # both probes, printed, probes.json

Chance on "random" copying is about 1 / (the number of distinct tokens in the text).
"""

import argparse
import os
import sys
import re

if not __package__:  # run as a file: the imports below need the repository root, which -m puts on the path
    raise SystemExit(f"error: run it from the repository root as a module: python -m experiments.probes {' '.join(sys.argv[1:])}".rstrip())
import runtime  # noqa: E402  (before torch: Ctrl-C while the libraries load is one line too)
if __name__ == "__main__":
    runtime.exit_on_ctrl_c("nothing was written", at_once=True)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from runtime import die  # noqa: E402
import atomic_files  # noqa: E402
import checkpoint  # noqa: E402
from random_streams import VAL_SEED, torch_generator  # noqa: E402
from experiments.common import keep_result, write_json  # noqa: E402
from tokenizer import check_same, for_meta  # noqa: E402

TEXT_PROBES = 13  # with random_streams.VAL_SEED: the random stream of text.py's and pilots.py's probes
SEED = [VAL_SEED, TEXT_PROBES]  # their held-out draws
SPAN = 16  # tokens of their copied span
LEAD = 8  # held-out tokens before the first copy: the span never starts at position 0
PASSWORD = " the password is"
KINDS = ("random", "frequent", "text")  # the copying probe's spans


def gaps_of(T, span=SPAN, gaps=(16, 64, 128, 256)):
    """The copying probe's gaps that fit a block of T tokens with spans of `span` tokens."""
    return [g for g in gaps if LEAD + 2 * span + g <= T]


def text_vocab(haystack, limit=1_000_000):
    """The distinct token ids of the held-out text (its first `limit` tokens): the random spans
    draw from these, so that every probe token is one the model has trained on."""
    return np.unique(np.asarray(haystack[:limit], dtype=np.int64))


def token_frequencies(haystack, vocab, limit=1_000_000):
    """The share of each id of vocab among the held-out text's first `limit` tokens."""
    counts = np.bincount(np.asarray(haystack[:limit], dtype=np.int64), minlength=int(vocab.max()) + 1)[vocab]
    return counts / counts.sum()


def copying_batch(rng, haystack, n, k, gap, kind, vocab):
    """(x, first, second): n sequences lead | S | gap | S of LEAD + 2k + gap tokens (n, L), and
    the positions where each occurrence of S starts. kind 'random': S is k distinct ids of vocab,
    uniformly; 'frequent': k distinct ids of vocab drawn by their frequency in haystack; 'text': a
    random stretch of haystack."""
    L = LEAD + 2 * k + gap
    if kind in ("random", "frequent") and len(vocab) < k:
        raise ValueError(f"the text has {len(vocab)} distinct tokens, fewer than a span of {k}")
    if len(haystack) < L:
        raise ValueError(f"the held-out text holds {len(haystack)} tokens, fewer than the {L} of one probe")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    p = token_frequencies(haystack, vocab) if kind == "frequent" else None
    rows = []
    for _ in range(n):
        lead, filler = (np.asarray(haystack[s:s + m], dtype=np.int64)
                        for s, m in ((int(rng.integers(len(haystack) - LEAD)), LEAD),
                                     (int(rng.integers(len(haystack) - gap + 1)), gap)))
        if kind in ("random", "frequent"):
            span = rng.choice(vocab, size=k, replace=False, p=p)
        else:
            s = int(rng.integers(len(haystack) - k))
            span = np.asarray(haystack[s:s + k], dtype=np.int64)
        rows.append(np.concatenate([lead, span, filler, span]))
    return torch.from_numpy(np.stack(rows)), LEAD, LEAD + k + gap


@torch.no_grad()
def copying(model, haystack, k=16, gaps=(16, 64, 128), kind="random", n=100, seed=0, device="cpu", vocab=None):
    """{gap: {acc_first, acc_second, loss_first, loss_second}}: greedy accuracy and cross-entropy
    at the k - 1 positions of each occurrence that predict S[1..k-1]. model(x) returns (logits, _).
    vocab: the ids random spans draw from (default: those of the held-out text)."""
    rng, res = np.random.default_rng(seed), {}
    vocab = text_vocab(haystack) if vocab is None else np.asarray(vocab)
    for gap in gaps:
        x, first, second = copying_batch(rng, haystack, n, k, gap, kind, vocab)
        logits = model(x.to(device))[0].float().cpu()  # (n, L, V)
        out = {}
        for name, start in (("first", first), ("second", second)):
            pos = torch.arange(start, start + k - 1)  # predicts x[pos + 1]
            lg, y = logits[:, pos], x[:, pos + 1]  # (n, k-1, V), (n, k-1)
            out[f"acc_{name}"] = (lg.argmax(-1) == y).float().mean().item()
            out[f"loss_{name}"] = F.cross_entropy(lg.reshape(-1, lg.size(-1)), y.reshape(-1)).item()
        res[gap] = out
    return res


@torch.no_grad()
def previous_token_share(model, haystack, n=32, seed=0):
    """Per layer, the largest share of attention that any head puts on the previous token, mean
    over the positions of n held-out windows of block_size tokens: ~1 for a previous-token head,
    the first half of an induction head (Olsson et al. 2022), which must sit below the layer that
    copies. A list of n_layer floats."""
    T, rng = model.config.block_size, np.random.default_rng(seed)
    starts = rng.integers(len(haystack) - T, size=n)
    x = torch.from_numpy(np.stack([np.asarray(haystack[s:s + T], dtype=np.int64) for s in starts]))
    _, att = model.attention(x.to(next(model.parameters()).device))  # (n_layer, n, n_head, T, T)
    i = torch.arange(1, T)
    return att[:, :, :, i, i - 1].mean(dim=(1, 3)).max(dim=1).values.tolist()  # (n_layer,)


def needle_prompt(haystack, length, depth, needle, question, rng):
    """Token ids (exactly `length`) of one needle-in-a-haystack prompt: haystack tokens from a random
    offset, the needle ids after round(depth * H) of the H of them, then the question ids."""
    H = length - len(needle) - len(question)  # haystack tokens that fit
    if H < 0:
        raise ValueError(f"a context of {length} tokens cannot hold the needle and the question "
                         f"({len(needle) + len(question)} tokens)")
    if len(haystack) < H:
        raise ValueError(f"the haystack text holds {len(haystack)} tokens, fewer than the {H} needed")
    start = int(rng.integers(len(haystack) - H + 1))
    hay = [int(t) for t in haystack[start:start + H]]
    at = round(depth * H)
    return hay[:at] + list(needle) + hay[at:] + list(question)


def passwords(tok, haystack, rng, n):
    """n passwords, as text: words of 5+ letters from the held-out text (BPE), or 5 random
    lowercase letters (bytes, where a word of the text would be mostly predictable from its start)."""
    if tok.name == "byte":
        return ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=5)) for _ in range(n)]
    words = sorted(set(re.findall(r"\b[a-z]{5,}\b", tok.decode(np.asarray(haystack[:200_000]).tolist()))))
    if not words:
        raise ValueError("the held-out text has no word of 5+ lowercase letters to use as a password")
    return [str(w) for w in rng.choice(words, size=n)]


def passkey_prompt(tok, haystack, length, depth, word, rng):
    """(prompt ids of exactly `length`, answer ids) of one passkey trial: '<PASSWORD> W.' at depth
    of held-out text, '<PASSWORD>' at the end; the answer is W's ids as they stand in the needle."""
    answer = tok.encode(" " + word)
    return needle_prompt(haystack, length, depth, tok.encode(PASSWORD) + answer + tok.encode("."),
                         tok.encode(PASSWORD), rng), answer


def passkey_lengths(tok, T):
    """The passkey's context lengths for a block of T tokens: a quarter of it (at least the needle,
    the question and 16 tokens of haystack) and all of it but 8 tokens, left for the answer."""
    shortest = 2 * len(tok.encode(PASSWORD)) + 16 + 8
    if shortest + 8 > T:
        raise ValueError(f"block_size {T} is too short for the passkey (at least {shortest + 8} tokens)")
    return sorted({max(T // 4, shortest), T - 8})


@torch.no_grad()
def passkey(model, tok, haystack, lengths, depths, trials=20, seed=0, device="cpu"):
    """{(depth, length): share of trials whose greedy continuation starts with the password's ids}."""
    rng, res = np.random.default_rng(seed), {}
    for L in lengths:
        for d in depths:
            hits = 0
            for w in passwords(tok, haystack, rng, trials):
                prompt, answer = passkey_prompt(tok, haystack, L, d, w, rng)
                out = model.generate(torch.tensor([prompt], device=device), len(answer), temperature=0,
                                     vocab_limit=tok.vocab_size)
                hits += out[0, L:].tolist() == answer
            res[(d, L)] = hits / trials
    return res


@torch.no_grad()
def attention_on_text(model, haystack, mask_token_id, n=50, mask_ratio=0.15, seed=0):
    """The paper's paired attention metrics (§5) on held-out text: n windows of block_size tokens,
    clean and with mask_ratio of their positions masked as MEAP masks them. Returns score_change,
    var_change and var_change_renorm (experiments/attention.py), and on the clean windows the mean
    normalised entropy and the share on the first token (sink)."""
    from experiments import attention  # (imported here: the probes above need none of it)
    from mask import meap_inputs

    T, rng = model.config.block_size, np.random.default_rng(seed)
    if len(haystack) <= T:
        raise ValueError(f"the held-out text holds {len(haystack)} tokens, fewer than a window of {T}")
    starts = rng.integers(len(haystack) - T, size=n)
    x = torch.from_numpy(np.stack([np.asarray(haystack[s:s + T], dtype=np.int64) for s in starts]))  # (n, T)
    xm, mask = meap_inputs(x, mask_ratio, mask_token_id, generator=torch_generator(rng))
    _, att_n = attention.attention_maps(model, x)
    _, att_m = attention.attention_maps(model, xm)
    return {"score_change": attention.masked_score_change(att_n, att_m, mask),
            "var_change": attention.unmasked_variance_change(att_n, att_m, mask),
            "var_change_renorm": attention.unmasked_variance_change(att_n, attention.drop_masked(att_n, mask), mask),
            "entropy": torch.nanmean(attention.entropy(att_n)).item(), "sink": attention.sink_share(att_n)}


def load(out_dir, device="auto"):
    """(model, tok, haystack, ckpt) of a text checkpoint; ValueError (one line) if it cannot be probed."""
    ckpt = checkpoint.load_checkpoint(out_dir)
    model = checkpoint.check_whole(ckpt, out_dir)  # (ValueError for an edited one)
    if ckpt["meta"].get("kind") == "synthetic":
        raise ValueError(f"{out_dir} was trained on the synthetic tasks; the probes need a text --dataset")
    data_dir = os.path.join("data", checkpoint.settings(ckpt)["dataset"])
    val = os.path.join(data_dir, "val.bin")
    if not os.path.exists(val):
        raise ValueError(f"{val} not found: the probes read the checkpoint's held-out text; prepare it first")
    check_same(ckpt, data_dir)  # the held-out ids mean what they meant in training
    tok = for_meta(ckpt["meta"])
    return model.to(runtime.pick_device(device)), tok, np.memmap(val, dtype=np.uint16, mode="r"), ckpt


def main(argv=None):
    ap = argparse.ArgumentParser(description="Zero-shot copying and passkey probes of a text checkpoint.")
    ap.add_argument("--out_dir", default="out", help="the checkpoint's folder (ckpt.pt); probes.json goes there")
    ap.add_argument("--span", type=int, default=16, help="copying: tokens in the repeated span")
    ap.add_argument("--examples", type=int, default=100, help="copying: sequences per gap; passkey: trials per cell")
    ap.add_argument("--depths", default="0,0.5,1", help="passkey: comma-separated needle depths in [0, 1]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    ap.add_argument("--overwrite", action="store_true", help="replace the probes.json of an earlier run of this script")
    ap.error = lambda msg: die(f"{msg} (python -m experiments.probes --help lists the options)")
    args = ap.parse_args(argv)
    try:
        keep_result(os.path.join(args.out_dir, "probes.json"), args.overwrite)
        model, tok, haystack, ckpt = load(args.out_dir, args.device)
        cfg, step = checkpoint.settings(ckpt), ckpt.get("iter_num", 0)
        atomic_files.check_writable(args.out_dir)
        depths = [float(d) for d in args.depths.split(",")]
        T = ckpt["model_args"]["block_size"]
        gaps = gaps_of(T, args.span, (16, 64, 128, 256, 512))
        lengths = passkey_lengths(tok, T)
        if not gaps or args.span < 2 or args.examples < 1 or not all(0 <= d <= 1 for d in depths):
            raise ValueError(f"need --span >= 2 with {LEAD} + 2 x span + 16 <= block_size {T}, --examples >= 1 "
                             f"and depths in [0, 1] (got {args.span}, {args.examples}, {args.depths})")
        dev = next(model.parameters()).device
        res = {kind: copying(model, haystack, args.span, gaps, kind, args.examples, args.seed, dev)
               for kind in KINDS}
        pk = passkey(model, tok, haystack, lengths, depths, args.examples, args.seed, dev)
    except ValueError as e:
        die(f"{e}")
    what = f"MEAP {cfg['mask_ratio']}" if cfg["mask_ratio"] > 0 else "NTP"
    print(f"{args.out_dir}: {what}, step {step}, data/{cfg['dataset']} ({tok.name})")
    for kind, by_gap in res.items():
        for g, r in by_gap.items():
            print(f"copying {kind:6} span {args.span} gap {g:4}: accuracy first {r['acc_first']:.3f} second "
                  f"{r['acc_second']:.3f} | loss first {r['loss_first']:.3f} second {r['loss_second']:.3f}")
    for (d, L), a in pk.items():
        print(f"passkey depth {d:.2f} length {L}: {a:.2f}")
    write_json(os.path.join(args.out_dir, "probes.json"),
               {"step": step, "span": args.span, "copying": {k: {str(g): r for g, r in v.items()}
                                                                       for k, v in res.items()},
                "passkey": [{"depth": d, "length": L, "acc": a} for (d, L), a in pk.items()]})
    print(f"wrote {args.out_dir}/probes.json")


if __name__ == "__main__":
    main()
