"""
Text <-> token ids for the text datasets, with MEAP's [MASK] id beside the vocabulary, and the
shared body of the data/*/prepare.py scripts.

Three tokenizers:
- "gpt2": GPT-2's byte-level BPE, 50,257 ids (<|endoftext|> = 50256), through tiktoken. tiktoken
  ships the same ranks, pattern and special token under two names, "gpt2" and "r50k_base"; we load
  "r50k_base", whose single file can be cached for offline use (TIKTOKEN_CACHE_DIR).
- "byte": one id per UTF-8 byte, 256 ids. Needs no files at all.
- "bpe": a small byte-level BPE trained on the dataset's own text (train_bpe, below; GPT-2's
  splitting pattern, 256 byte ids plus the learned merges). Its ranks travel in meta.pkl, so a
  checkpoint carries its tokenizer; tiktoken encodes with them.
MEAP's [MASK] is the id right after the vocabulary (paper §3.1: a new token with its own learned
embedding): 50257 for gpt2, 256 for byte, vocab_size for bpe. train.py reads it from meta.pkl.

A dataset folder holds nanoGPT's format: train.bin and val.bin (uint16 ids) and meta.pkl
({"vocab_size": ..., "tokenizer": ...}); nanoGPT's character-level meta.pkl (stoi/itos) also works.
"""

import argparse
import hashlib
import os
import pickle
import urllib.request
from dataclasses import dataclass
from typing import Callable

import numpy as np

from atomic_files import reserved, write_all_atomically, write_atomically, write_failed
import runtime
from runtime import die

TOKENIZERS = ("gpt2", "byte", "bpe")
# GPT-2's rule for splitting text before BPE (contractions, words, numbers, punctuation, spaces):
# merges never cross these pieces
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
MASK_TEXT = "[MASK]"  # how decode() shows the [MASK] id


@dataclass
class Tokenizer:
    name: str
    vocab_size: int  # ids 0 .. vocab_size - 1; [MASK] is vocab_size
    encode: Callable  # str -> list of ids
    _decode: Callable  # list of ids (all < vocab_size) -> str

    @property
    def mask_id(self):
        return self.vocab_size

    def decode(self, ids):
        """ids -> text; [MASK] shows as '[MASK]', ids past it (vocabulary padding) as '<?>'."""
        out, run = [], []
        for i in (int(i) for i in ids):
            if i < self.vocab_size:
                run.append(i)
                continue
            out += [self._decode(run), MASK_TEXT if i == self.mask_id else "<?>"]
            run = []
        return "".join(out + [self._decode(run)])


def get_tokenizer(name):
    """The named tokenizer; a one-line ValueError if it is unknown or its files cannot be loaded."""
    if name == "byte":
        return Tokenizer("byte", 256, lambda s: list(s.encode("utf-8")),
                         lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    if name == "gpt2":
        import tiktoken
        try:
            enc = tiktoken.get_encoding("r50k_base")  # = GPT-2's BPE
        except Exception as e:  # offline, with no cached copy
            raise ValueError(f"cannot load GPT-2's BPE through tiktoken ({type(e).__name__}); go online once, "
                             f"or set TIKTOKEN_CACHE_DIR to a folder holding its cached file") from None
        return from_tiktoken(enc, "gpt2")
    if name == "bpe":
        raise ValueError("a 'bpe' tokenizer is trained on its dataset: load it from the dataset's meta.pkl "
                         "(for_meta), or train one with train_bpe")
    raise ValueError(f"unknown tokenizer {name!r}; choose one of {TOKENIZERS}")


def train_bpe(text, vocab_size):
    """Byte-level BPE ranks learned from text: {token bytes: id}, ids 0-255 the bytes, then one id
    per merge, vocab_size ids in all. The classic algorithm (Sennrich et al. 2016, as GPT-2 uses it):
    split the text with GPT-2's pattern, then repeatedly merge the most frequent adjacent pair of
    tokens within a piece. Pair counts are updated only for the pieces a merge touches, so a 1k
    vocabulary over 10 MB of text takes seconds, not hours. Ties go to the pair counted first."""
    import regex
    from collections import Counter, defaultdict

    if not 256 <= vocab_size <= 65536:
        raise ValueError(f"a byte-level BPE has 256 to 65,536 ids, got vocab_size {vocab_size}")
    counts = Counter(regex.findall(GPT2_PATTERN, text))  # piece -> how often it occurs
    words = [list(piece.encode("utf-8")) for piece in counts]  # each piece as a list of token ids
    freq = list(counts.values())
    pairs, where = Counter(), defaultdict(set)  # pair -> count; pair -> the pieces holding it
    for w, (ids, n) in enumerate(zip(words, freq)):
        for pair in zip(ids, ids[1:]):
            pairs[pair] += n
            where[pair].add(w)
    ranks = {bytes([i]): i for i in range(256)}
    token = [bytes([i]) for i in range(256)]  # id -> its bytes
    while len(token) < vocab_size and pairs:
        best = max(pairs, key=pairs.__getitem__)
        if pairs[best] < 2:  # no pair repeats: nothing more to learn from this text
            break
        new = len(token)
        token.append(token[best[0]] + token[best[1]])
        ranks[token[new]] = new
        for w in where.pop(best):
            ids, n = words[w], freq[w]
            for pair in zip(ids, ids[1:]):  # the piece's old pairs out ...
                pairs[pair] -= n
            merged, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and (ids[i], ids[i + 1]) == best:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(ids[i])
                    i += 1
            words[w] = merged
            for pair in zip(merged, merged[1:]):  # ... and its new pairs in
                pairs[pair] += n
                where[pair].add(w)
        pairs = +pairs  # drop the pairs that no longer occur
    return ranks


def bpe_tokenizer(ranks):
    """A Tokenizer over ranks from train_bpe, encoding through tiktoken (fast, exact)."""
    import tiktoken
    enc = tiktoken.Encoding("bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    return from_tiktoken(enc, "bpe")


def from_tiktoken(enc, name):
    """A Tokenizer over a tiktoken Encoding; special tokens in the text are encoded as plain text."""
    return Tokenizer(name, enc.n_vocab, enc.encode_ordinary, enc.decode)


def for_meta(meta):
    """The tokenizer of a dataset or checkpoint from its meta dict (train.py's `meta`): ours, or
    nanoGPT's character-level one (stoi/itos); no meta.pkl means GPT-2 BPE, as in nanoGPT."""
    if "stoi" in meta:
        stoi, itos = meta["stoi"], meta["itos"]
        return Tokenizer("char", meta["vocab_size"], lambda s: [stoi[c] for c in s if c in stoi],
                         lambda ids: "".join(itos[i] for i in ids))
    if meta.get("tokenizer") == "bpe":
        return bpe_tokenizer(meta["bpe_ranks"])
    return get_tokenizer(meta.get("tokenizer", "gpt2"))


def identity(meta, mask_token_id):
    """What a dataset's or checkpoint's tokenizer is, from its meta dict and [MASK] id: {"name",
    "vocab_size", "mask_token_id", "fingerprint"}, the fingerprint a short hash of every field that
    decides which text an id means (so two prepare runs with other settings differ). A checkpoint
    keeps it; train.py compares it with its dataset's before resuming or fine-tuning."""
    kind = meta.get("kind")
    name = meta.get("tokenizer") or ("synthetic" if kind == "synthetic" else "char" if "stoi" in meta else "gpt2")
    fields = {k: meta[k] for k in ("vocab_size", "bpe_ranks", "stoi") if k in meta}

    def canonical(v):  # dicts as sorted pairs: the hash does not depend on insertion order
        return sorted((repr(k), canonical(x)) for k, x in v.items()) if isinstance(v, dict) else repr(v)
    digest = hashlib.sha256(repr((name, mask_token_id, canonical(fields))).encode()).hexdigest()[:12]
    return {"name": name, "vocab_size": meta.get("vocab_size", mask_token_id), "mask_token_id": mask_token_id,
            "fingerprint": digest}


def describe(ident):
    """identity() in words, for an error message."""
    return (f"{ident['name']} ({ident['vocab_size']:,} ids, [MASK] {ident['mask_token_id']}, "
            f"fingerprint {ident['fingerprint']})")


def read_meta(data_dir):
    """A dataset folder's meta, as train.py reads it: meta.pkl's dict with "kind": "meta", or
    GPT-2's BPE where there is no meta.pkl (nanoGPT's convention). ValueError if it is unreadable."""
    path = os.path.join(data_dir, "meta.pkl")
    if not os.path.exists(path):
        return {"kind": "gpt2", "vocab_size": 50257}
    try:
        with open(path, "rb") as f:
            meta = pickle.load(f)
        if not isinstance(meta, dict) or not isinstance(meta.get("vocab_size"), int):
            raise ValueError("no vocab_size")
    except Exception as e:  # truncated, not a pickle, not a dict
        raise ValueError(f"cannot read {path} as a dataset's meta ({type(e).__name__}); prepare the dataset "
                         f"again") from None
    return {"kind": "meta", **meta}


def of_checkpoint(ckpt):
    """identity() of the tokenizer a loaded checkpoint was trained with: the one it keeps, or (a
    checkpoint from before it kept one) that of its meta. ValueError (one line) if it has neither."""
    kept, meta = ckpt.get("tokenizer"), ckpt.get("meta")
    if isinstance(kept, dict) and set(kept) == {"name", "vocab_size", "mask_token_id", "fingerprint"}:
        return kept
    if kept is not None or not isinstance(meta, dict):
        raise ValueError("its record of its tokenizer (tokenizer, meta) is not train.py's: an edited checkpoint?")
    return identity(meta, ckpt.get("mask_token_id"))


def check_same(ckpt, data_dir):
    """ValueError (one line) unless the dataset in data_dir has the tokenizer that the loaded
    checkpoint ckpt was trained with (a dataset prepared again since would give other text)."""
    meta = read_meta(data_dir)
    trained = of_checkpoint(ckpt)
    now = identity(meta, meta["vocab_size"])
    if trained != now:
        raise ValueError(f"the checkpoint was trained with the tokenizer {describe(trained)}, but {data_dir} now has "
                         f"{describe(now)} (prepared again since?)")


# -----------------------------------------------------------------------------
# the body of data/*/prepare.py

TINY_SHAKESPEARE = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def read_text(path=None, url=None):
    """The text of a local file, or else of url; ValueError (one line) when neither works."""
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read --input {path} ({type(e).__name__}); give a UTF-8 text file") from None
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.read().decode("utf-8")
    except Exception as e:
        raise ValueError(f"cannot download {url} ({type(e).__name__}); "
                         f"pass --input PATH to a local text file instead") from None


def prepare(out_dir, text, tok, val_fraction=0.1):
    """Tokenize text, split it (the first 1 - val_fraction is train, the rest val), and write
    out_dir/{train,val}.bin and meta.pkl. Returns {"train": n_tokens, "val": n_tokens}. ValueError
    or OSError (one line) if that cannot be done; out_dir is then as it was."""
    if tok.vocab_size > 65536:
        raise ValueError(f"a vocabulary of {tok.vocab_size} ids does not fit uint16")
    n = len(text)
    split = int(n * (1 - val_fraction))
    ids = {"train": tok.encode(text[:split]), "val": tok.encode(text[split:])}
    if min(len(v) for v in ids.values()) < 2:
        raise ValueError(f"the text is too short to split ({n} characters)")
    write_dataset(out_dir, ids, tok)
    return {k: len(v) for k, v in ids.items()}


def check_out_dir(out_dir):
    """ValueError (one line) unless out_dir is a folder that can be written, or can be created:
    called before the work, so a mistake costs no time. Creates nothing."""
    d = os.path.abspath(out_dir)
    try:
        reserved(out_dir)
    except ValueError as e:
        raise ValueError(f"--out_dir {e}") from None
    if not out_dir.strip() or (os.path.exists(d) and not os.path.isdir(d)):
        raise ValueError(f"--out_dir {out_dir!r} is {'empty' if not out_dir.strip() else 'a file'}; give a folder")
    while not os.path.exists(d):
        d = os.path.dirname(d)
    if not os.path.isdir(d) or not os.access(d, os.W_OK):
        raise ValueError(f"cannot write to --out_dir {out_dir} ({d} is {'a file' if not os.path.isdir(d) else 'not writable'})")


def write_dataset(out_dir, ids, tok, **extra):
    """ids {"train": ..., "val": ...} as out_dir/train.bin and val.bin (uint16), and meta.pkl
    (write_meta, with extra), all three replaced together or none (atomic_files.write_all_atomically).
    A failure (a full disk) raises OSError (one line), and a folder this call created is removed again."""
    created = not os.path.isdir(out_dir)
    writes = {os.path.join(out_dir, f"{split}.bin"): np.asarray(v, dtype=np.uint16).tofile for split, v in ids.items()}
    writes[os.path.join(out_dir, "meta.pkl")] = meta_writer(tok, **extra)
    try:
        os.makedirs(out_dir, exist_ok=True)
        write_all_atomically(writes)
    except OSError as e:
        why = write_failed(e.filename or out_dir, e)
        if created:  # (write_all_atomically removed its temporaries: the folder is empty again)
            try:
                os.rmdir(out_dir)
            except OSError:
                pass
        raise OSError(f"--out_dir: {why}; the dataset there is as it was") from None


def meta_writer(tok, **extra):
    """The write(tmp) of a meta.pkl for train.py: the vocabulary size ([MASK] comes next), the
    tokenizer, and what else it needs (a trained BPE's ranks, as bpe_ranks)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            pickle.dump({"vocab_size": tok.vocab_size, "tokenizer": tok.name, **extra}, f)
    return write


def write_meta(out_dir, tok, **extra):
    """out_dir/meta.pkl alone (meta_writer), atomically."""
    write_atomically(os.path.join(out_dir, "meta.pkl"), meta_writer(tok, **extra))


def prepare_main(tokenizer_name, default_out, argv=None):
    """The command line of data/*/prepare.py: --input PATH (else download tiny Shakespeare),
    --out_dir, --val_fraction; prints what it wrote."""
    ap = argparse.ArgumentParser(
        description=f"Tokenize a text file ({tokenizer_name}) into train.bin, val.bin, meta.pkl.")
    ap.add_argument("--input", default=None, help="a local UTF-8 text file (default: download tiny Shakespeare)")
    ap.add_argument("--out_dir", default=default_out, help="where to write (default: this script's folder)")
    ap.add_argument("--val_fraction", type=float, default=0.1, help="the last share of the text held out")
    ap.error = lambda msg: die(f"{msg} (--help lists the options)")
    args = ap.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        die(f"--val_fraction must be in (0, 1), got {args.val_fraction}")
    runtime.exit_on_ctrl_c(f"{args.out_dir} is as it was", at_once=True)
    try:
        check_out_dir(args.out_dir)
        tok = get_tokenizer(tokenizer_name)
        text = read_text(args.input, TINY_SHAKESPEARE)
        runtime.exit_on_ctrl_c(f"{args.out_dir} is as it was (its files are replaced together, at the end)")
        counts = prepare(args.out_dir, text, tok, args.val_fraction)
    except (ValueError, OSError) as e:
        die(e)
    runtime.work_done()
    print(f"{len(text):,} characters -> {tokenizer_name} ({tok.vocab_size:,} ids, [MASK] = {tok.mask_id})")
    print(f"train.bin {counts['train']:,} tokens, val.bin {counts['val']:,} tokens, meta.pkl -> {args.out_dir}")
