"""
Synthetic retrieval tasks, generated on the fly with numpy (vectorised over the batch), and their
exact-match evaluation on clean inputs.

Every example is one token sequence of block_size + 1 tokens: x = seq[:-1] is the input, y =
seq[1:] the next token at every position (the pre-training target), and `query` marks the
positions where x is a query (the asked key) and y its answer, the only positions scored.

Tasks
- "mqar": multi-query associative recall (Zoology, Arora et al. 2023). n_pairs key-value pairs,
  then queries until the sequence ends: keys of those pairs (drawn with replacement), each
  followed by its value:
      | K12 40 K3 7 K9 1 K5 22 K3 7 K12 40 K3 7 K5 22 ...
- "needle": needle in a haystack (Kamradt; RULER, Hsieh et al. 2024). A haystack of filler with
  n_needles key-value needles in it (one queried, the rest distractors), then the question:
      | ka lo K12 40 mi se ... K3 7 ... to ne ? K12 40
  The queried needle's depth (0 = start of the haystack, 1 = end) can be chosen.
- "mix": the first half of each batch MQAR, the second half needle.

Evaluation-only settings (compare.py sweeps them): needles at a chosen depth, several needles
asked about at the end (`n_queries`, RULER's multi-query), more distractors or pairs than in
training, shorter contexts, and "kv": lost-in-the-middle key-value retrieval (Liu et al. 2023), a
block of pairs at the start, filler, and one question about the pair at a chosen position:
      | K12 40 K3 7 K9 1 K5 22 ka lo mi ... se ? K9 1
And "qa", multi-document question answering for fine-tuning: documents opened by '|', one fact
each, a question about the fact of one of them, and a multi-token answer (see qa()).

Why MQAR asks about every key many times: under the full-sequence loss a key's first occurrence
is followed by a random value, so copying "the value after this key" is punished there and
rewarded only at the queries. With one query per key the two nearly cancel, and in our pilots a
2-layer model never left the guess-a-value plateau within a default-length run; with ~7 queries
per key (the default) it learns to retrieve within a few hundred (NTP) to a thousand (MEAP)
steps, and carries the skill over to the needles.

The filler is a small fixed "language" so that the full-sequence next-token loss means something,
as it does in text pre-training: a random walk over a ring of 32 syllable-words (each word has 4
possible successors with fixed probabilities), relabelled by a fixed permutation. Its entropy,
FILLER_ENTROPY nats per word, is the floor of the loss on filler tokens.

Vocabulary (printable, one token per word): '|' starts a sequence, '?' asks the needle question,
32 filler words, 64 keys 'K0'..'K63', 64 values '0'..'63', and '[MASK]' last (MEAP's mask token,
the id right after the real vocabulary, never in the data).

The batches train.py sees (these tasks, text, and fine-tuning examples) are built in batches.py.
"""

from dataclasses import dataclass

import numpy as np
import torch

FILLER_WORDS = [c + v for c in "bdklmnst" for v in "aeio"]  # 32 syllables: ba, be, ..., to
ITOS = ["|", "?"] + FILLER_WORDS + [f"K{i}" for i in range(64)] + [str(i) for i in range(64)] + ["[MASK]"]
STOI = {s: i for i, s in enumerate(ITOS)}
BOS, QUERY = STOI["|"], STOI["?"]
FILLER = np.array([STOI[w] for w in FILLER_WORDS])
KEYS = np.array([STOI[f"K{i}"] for i in range(64)])
VALUES = np.array([STOI[str(i)] for i in range(64)])
MASK_ID = STOI["[MASK]"]
VOCAB_SIZE = len(ITOS)  # 163, [MASK] included

TASKS = ("mqar", "needle", "mix")
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)  # needle depths reported by evaluate()

# the filler language: from ring position s, step to s + STEPS[i] with probability STEP_PROBS[i]
STEPS = np.array([1, 2, 3, -1])
STEP_PROBS = np.array([0.5, 0.25, 0.15, 0.1])
RING = np.random.default_rng(0).permutation(len(FILLER_WORDS))  # ring position -> word; fixed
FILLER_ENTROPY = float(-(STEP_PROBS * np.log(STEP_PROBS)).sum())  # 1.21 nats per filler word


def encode(text):
    """'| K3 7 ? K3' -> token ids; one-line error on a word outside the vocabulary."""
    unknown = [w for w in text.split() if w not in STOI]
    if unknown:
        raise ValueError(f"not in the task vocabulary: {unknown[:5]} (words are '|', '?', "
                         f"ba..to, K0..K63, 0..63)")
    return [STOI[w] for w in text.split()]


def decode(ids):
    return " ".join(ITOS[int(i)] for i in ids)


@dataclass
class Batch:
    x: torch.Tensor  # (B, T) clean input ids
    y: torch.Tensor  # (B, T) next-token targets
    query: torch.Tensor  # (B, T) bool: x is a query here (the asked key), and y its answer
    depth: torch.Tensor  # (B,) depth of the queried needle in [0, 1]; nan for MQAR


def _batch(seq, query, depth):
    seq = torch.from_numpy(seq)
    return Batch(seq[:, :-1], seq[:, 1:], torch.from_numpy(query), torch.from_numpy(depth))


def filler(rng, batch_size, n):
    """(batch_size, n) filler words: each row one walk of the fixed bigram language."""
    start = rng.integers(len(RING), size=(batch_size, 1))
    steps = rng.choice(STEPS, p=STEP_PROBS, size=(batch_size, n))
    return FILLER[RING[(start + steps.cumsum(axis=1)) % len(RING)]]


def _keys_values(rng, batch_size, n):
    """n distinct keys per row and a random value for each: two (batch_size, n) arrays."""
    if n > len(KEYS):
        raise ValueError(f"at most {len(KEYS)} keys per sequence, asked for {n}")
    keys = KEYS[np.argsort(rng.random((batch_size, len(KEYS))), axis=1)[:, :n]]
    return keys, VALUES[rng.integers(len(VALUES), size=(batch_size, n))]


def mqar(rng, batch_size, seq_len, n_pairs, offset=0):
    """| k1 v1 .. kD vD, then queries to the end: keys drawn from the D (with replacement), each
    followed by its value. If seq_len is odd, one filler word precedes the queries.
    offset > 0 (the positional-shortcut control): a random 0..offset filler words, drawn per
    sequence, come before the pairs (and the rest of the offset after them), so the pairs no longer
    sit at the same positions in every sequence; the queries start at the same place:
        | ka lo K12 40 K3 7 K9 1 K5 22 mi se ne K3 7 K12 40 ..."""
    D = n_pairs
    n_q = (seq_len - 2 * D - offset) // 2  # queries that fit
    if D < 1 or n_q < 1 or offset < 0:
        raise ValueError(f"mqar: {n_pairs} pairs and an offset of {offset} need seq_len >= "
                         f"{2 * D + offset + 2} (block_size is {seq_len})")
    keys, values = _keys_values(rng, batch_size, D)
    q0 = seq_len + 1 - 2 * n_q  # index of the first query key; filler sits before it if there is room
    which = rng.integers(D, size=(batch_size, n_q))  # which pair each query asks for
    seq = np.empty((batch_size, seq_len + 1), dtype=np.int64)
    seq[:, 0] = BOS
    seq[:, 1:q0] = filler(rng, batch_size, q0 - 1)  # then the pairs overwrite their slots
    shift = rng.integers(0, offset + 1, size=(batch_size, 1)) if offset else np.zeros((batch_size, 1), dtype=int)
    rows, key_pos = np.arange(batch_size)[:, None], 1 + shift + 2 * np.arange(D)  # (B, D) where each key goes
    seq[rows, key_pos], seq[rows, key_pos + 1] = keys, values
    seq[:, q0::2] = np.take_along_axis(keys, which, axis=1)
    seq[:, q0 + 1::2] = np.take_along_axis(values, which, axis=1)
    query = np.zeros((batch_size, seq_len), dtype=bool)
    query[:, q0::2] = True  # x there is a query key, y its value
    return _batch(seq, query, np.full(batch_size, np.nan))


def needle(rng, batch_size, seq_len, n_needles, depth=None, n_queries=1):
    """| haystack of filler with n_needles 'key value' needles, then '? key' -> value for each of
    the first n_queries needles (the rest are distractors). depth (0..1) puts the first needle
    after that share of the filler; None draws it uniformly like the others."""
    n, q = n_needles, n_queries
    F = seq_len + 1 - 1 - 2 * n - 3 * q  # filler words: all but '|', the needles and '? key value' x q
    if n < 1 or not 1 <= q <= n or F < 0:
        raise ValueError(f"needle: {n_needles} needles and {n_queries} queries (1 to n_needles) "
                         f"need seq_len >= {2 * n + 3 * max(q, 1)} (block_size is {seq_len})")
    keys, values = _keys_values(rng, batch_size, n)
    gaps = rng.integers(0, F + 1, size=(batch_size, n))  # filler words before each needle
    if depth is not None:
        gaps[:, 0] = round(depth * F)
    # needles that share a gap go in index order; a needle's key lands after '|', its filler
    # words and the needles before it (two tokens each)
    rank = np.argsort(np.argsort(gaps * n + np.arange(n), axis=1), axis=1)
    pos = 1 + gaps + 2 * rank  # (B, n) index of each needle's key in seq
    seq = np.full((batch_size, seq_len + 1), -1, dtype=np.int64)
    rows = np.arange(batch_size)[:, None]
    seq[:, 0] = BOS
    seq[rows, pos], seq[rows, pos + 1] = keys, values
    tail = seq_len + 1 - 3 * q  # index of the first '?'
    seq[:, tail::3], seq[:, tail + 1::3], seq[:, tail + 2::3] = QUERY, keys[:, :q], values[:, :q]
    seq[seq == -1] = filler(rng, batch_size, F).ravel()  # exactly F free slots per row, in order
    query = np.zeros((batch_size, seq_len), dtype=bool)
    query[:, tail + 1::3] = True  # x there is the asked key, y its value
    return _batch(seq, query, gaps[:, 0] / max(F, 1))


def kv(rng, batch_size, seq_len, n_pairs, position):
    """Lost in the middle: | k1 v1 .. kn vn, filler, then '? key' -> value for the pair at
    `position` (0 = first, n_pairs - 1 = last, nearest the question)."""
    n = n_pairs
    F = seq_len + 1 - 1 - 2 * n - 3
    if n < 1 or F < 0 or not 0 <= position < n:
        raise ValueError(f"kv: {n_pairs} pairs need seq_len >= {2 * n + 3} (block_size is {seq_len}) "
                         f"and a position in 0..{n - 1} (got {position})")
    keys, values = _keys_values(rng, batch_size, n)
    seq = np.empty((batch_size, seq_len + 1), dtype=np.int64)
    seq[:, 0] = BOS
    seq[:, 1:1 + 2 * n:2], seq[:, 2:2 + 2 * n:2] = keys, values
    seq[:, 1 + 2 * n:-3] = filler(rng, batch_size, F)
    seq[:, -3], seq[:, -2], seq[:, -1] = QUERY, keys[:, position], values[:, position]
    query = np.zeros((batch_size, seq_len), dtype=bool)
    query[:, -1] = True
    return _batch(seq, query, np.full(batch_size, position / max(n - 1, 1)))


def qa(rng, batch_size, seq_len, n_docs, gold, answer_len=4):
    """Multi-document QA for fine-tuning (lost in the middle, Liu et al. 2023): n_docs "documents",
    each '|' then filler with one fact 'key v1 .. vm' (m = answer_len) somewhere inside, then
    '? key' about the fact of document `gold` (0 = first, n_docs - 1 = last, nearest the question),
    and its m values as the answer, at the end of the sequence:
        | ka lo K7 3 9 41 me | se K12 60 2 8 to | .. ? K12 60 2 8
    For SFT: the prompt is the sequence up to the asked key, the answer its last m tokens."""
    K, m = n_docs, answer_len
    d = (seq_len + 1 - 2 - m - K * (2 + m)) // K  # filler words per document
    if K < 1 or m < 1 or d < 0 or not 0 <= gold < K:
        raise ValueError(f"qa: {n_docs} documents with {answer_len}-token answers need seq_len >= "
                         f"{K * (2 + m) + m + 1} (block_size is {seq_len}), and gold in 0..{K - 1} (got {gold})")
    pad = seq_len + 1 - 2 - m - K * (2 + m + d)  # leftover filler words, after the last document
    keys = _keys_values(rng, batch_size, K)[0]  # (B, K) distinct keys
    values = VALUES[rng.integers(len(VALUES), size=(batch_size, K, m))]  # (B, K, m)
    words = filler(rng, batch_size, K * d + pad)
    at = rng.integers(0, d + 1, size=(batch_size, K))  # where each fact sits in its document
    seq = np.empty((batch_size, seq_len + 1), dtype=np.int64)
    for b in range(batch_size):  # K documents per row: a plain loop reads better than index arithmetic
        out = []
        for k in range(K):
            doc = list(words[b, k * d:(k + 1) * d])
            doc[at[b, k]:at[b, k]] = [keys[b, k], *values[b, k]]
            out += [BOS, *doc]
        seq[b] = out + list(words[b, K * d:]) + [QUERY, keys[b, gold], *values[b, gold]]
    query = np.zeros((batch_size, seq_len), dtype=bool)
    query[:, seq_len - m:] = True  # x there is the asked key or an answer token; y the next answer token
    return _batch(seq, query, np.full(batch_size, gold / max(K - 1, 1)))


def make_batch(task, rng, batch_size, seq_len, n_pairs=4, n_needles=4, mqar_offset=0):
    """A Batch of the named task; a pure function of the numpy Generator's state."""
    if task == "mqar":
        return mqar(rng, batch_size, seq_len, n_pairs, mqar_offset)
    if task == "needle":
        return needle(rng, batch_size, seq_len, n_needles)
    if task == "mix":
        a = mqar(rng, batch_size // 2, seq_len, n_pairs, mqar_offset)
        b = needle(rng, batch_size - batch_size // 2, seq_len, n_needles)
        return Batch(*(torch.cat([u, v]) for u, v in zip(vars(a).values(), vars(b).values())))
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")


def qa_examples(rng, n, seq_len, n_docs, answer_len=4):
    """n fine-tuning examples of qa(), the gold document cycling 0, 1, .., n_docs - 1, 0, ..: a
    list of (prompt, answer) pairs of 1-D id tensors, seq_len + 1 tokens together."""
    out = []
    for gold in range(n_docs):
        b = qa(rng, len(range(gold, n, n_docs)), seq_len, n_docs, gold, answer_len)
        seq = torch.cat([b.x, b.y[:, -1:]], dim=1)  # (b, seq_len + 1) the whole example
        out += [(s[:-answer_len], s[-answer_len:]) for s in seq]
    order = [i for g in range(n_docs) for i in range(g, n, n_docs)]  # where each example came from
    return [ex for _, ex in sorted(zip(order, out), key=lambda t: t[0])]


@torch.no_grad()
def accuracy(model, make_batch, n_examples, batch_size=250, device="cpu"):
    """Exact-match accuracy of the greedy next token at every query position of
    make_batch(b) (a Batch of b examples), over n_examples examples, on clean inputs.
    model(x) returns (logits (B, T, V), anything), as GPT.forward does."""
    if n_examples < 1:
        raise ValueError(f"accuracy needs at least one example, got n_examples={n_examples}")
    out = []
    for i in range(0, n_examples, batch_size):
        b = make_batch(min(batch_size, n_examples - i))
        logits, _ = model(b.x.to(device))
        out.append((logits.argmax(dim=-1).cpu() == b.y)[b.query].float())
    return torch.cat(out).mean().item()


def evaluate(model, task, seq_len, n_pairs=4, n_needles=4, n_examples=500, seed=0,
             batch_size=250, device="cpu"):
    """Retrieval accuracy on held-out examples from their own seed (use one no training stream
    uses). Returns a flat dict: 'acc' (the mean over tasks), 'acc_mqar', 'acc_needle' and
    'acc_needle_d<depth>' for each depth in DEPTHS."""
    rng = np.random.default_rng(seed)
    res = {}
    if task in ("mqar", "mix"):
        res["acc_mqar"] = accuracy(model, lambda b: mqar(rng, b, seq_len, n_pairs), n_examples, batch_size, device)
    if task in ("needle", "mix"):
        for d in DEPTHS:
            res[f"acc_needle_d{d:.2f}"] = accuracy(model, lambda b: needle(rng, b, seq_len, n_needles, d),
                                                   max(1, n_examples // len(DEPTHS)), batch_size, device)
        res["acc_needle"] = float(np.mean([res[f"acc_needle_d{d:.2f}"] for d in DEPTHS]))
    if not res:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    res["acc"] = float(np.mean([res[k] for k in ("acc_mqar", "acc_needle") if k in res]))
    return res


@torch.no_grad()
def evaluate_qa(model, seq_len, n_docs, answer_len=4, n_examples=500, seed=0, batch_size=250, device="cpu"):
    """Multi-document QA on held-out examples, exact match of the whole answer, by the position
    of the gold document (every answer token right: the same as greedy generation of the answer
    matching it exactly). Returns 'acc_qa_g<k>' for k = 1..n_docs (1 = first document, farthest
    from the question), 'acc_qa' and 'acc', their mean (the paper's "averaged over positions"),
    'acc_qa_first': the first answer token alone, predicted right after the asked key, which
    is the lookup (the right document found) without the copying of the rest, and 'acc_qa_token':
    the share of answer tokens right (partial credit, for long answers)."""
    rng = np.random.default_rng(seed)
    per = max(1, n_examples // n_docs)
    res, first, tokens = {}, [], []
    for k in range(n_docs):
        hits = []
        for i in range(0, per, batch_size):
            b = qa(rng, min(batch_size, per - i), seq_len, n_docs, k, answer_len)
            logits, _ = model(b.x.to(device))
            hits.append((logits.argmax(dim=-1).cpu() == b.y)[b.query].view(len(b.x), answer_len))  # (B, m)
        hit = torch.cat(hits)
        res[f"acc_qa_g{k + 1}"] = hit.all(dim=1).float().mean().item()
        first.append(hit[:, 0].float().mean().item())
        tokens.append(hit.float().mean().item())
    res["acc_qa"] = res["acc"] = float(np.mean(list(res.values())))
    res["acc_qa_first"], res["acc_qa_token"] = float(np.mean(first)), float(np.mean(tokens))
    return res
