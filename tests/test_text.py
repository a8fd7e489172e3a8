"""Text datasets: the tokenizers and [MASK], the prepare scripts, and the natural-text needle."""

import os
import pickle
import re
import sys

import numpy as np
import pytest
import torch

import tokenizer
from experiments import niah
from helpers import ROOT, run_script, tiny_text_run

TEXT = "".join(f"Line {i}: the quick brown fox, naïve café — jumps over {i * 7 % 13} lazy dogs.\n" for i in range(400))


def gpt2_or_skip():
    try:
        return tokenizer.get_tokenizer("gpt2")
    except ValueError as e:  # offline with no cached BPE: .ci/run points TIKTOKEN_CACHE_DIR at one
        pytest.skip(str(e))


def test_byte_tokenizer_round_trip_and_mask():
    tok = tokenizer.get_tokenizer("byte")
    assert tok.vocab_size == 256 and tok.mask_id == 256
    ids = tok.encode("naïve café")
    assert len(ids) == len("naïve café".encode("utf-8")) == 12 and max(ids) < 256
    assert tok.decode(ids) == "naïve café"
    assert tok.decode(ids[:5] + [tok.mask_id] + ids[6:]) == "naïv[MASK] café"  # byte 5 is the 'e'
    assert tok.decode([tok.mask_id + 1]) == "<?>"  # vocabulary padding


def test_a_tiktoken_bpe_built_in_code_round_trips_with_mask():
    # the tiktoken path without any file: every byte, plus two merges (" t" and " th")
    import tiktoken
    ranks = {bytes([i]): i for i in range(256)}
    ranks[b" t"], ranks[b" th"] = 256, 257
    enc = tiktoken.Encoding("tiny-bpe", pat_str=r"""'s|'t| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+""",
                            mergeable_ranks=ranks, special_tokens={})
    tok = tokenizer.from_tiktoken(enc, "tiny-bpe")
    assert tok.vocab_size == 258 and tok.mask_id == 258
    ids = tok.encode(" the cat, the hat")
    assert ids[0] == 257 and tok.decode(ids) == " the cat, the hat"
    assert tok.decode(ids[:1] + [tok.mask_id] + ids[2:]) == " th[MASK]" + tok.decode(ids[2:])


def test_gpt2_bpe_round_trip_and_mask():
    tok = gpt2_or_skip()
    assert tok.vocab_size == 50257 and tok.mask_id == 50257  # [MASK] right after <|endoftext|> = 50256
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's ids
    ids = tok.encode(TEXT[:500])
    assert tok.decode(ids) == TEXT[:500]
    masked = ids[:3] + [tok.mask_id] + ids[4:]
    assert tok.decode(masked) == tok.decode(ids[:3]) + "[MASK]" + tok.decode(ids[4:])
    assert tok.decode([tok.mask_id + 5]) == "<?>"  # vocabulary padding never passes for text
    # the special token is ordinary text in a dataset, never the control id
    assert 50256 not in tok.encode("<|endoftext|>")


def test_for_meta_picks_the_dataset_tokenizer():
    assert tokenizer.for_meta({"vocab_size": 256, "tokenizer": "byte"}).name == "byte"
    char = tokenizer.for_meta({"vocab_size": 3, "stoi": {"a": 0, "b": 1, "\n": 2}, "itos": {0: "a", 1: "b", 2: "\n"}})
    assert char.encode("ab\nz") == [0, 1, 2] and char.decode([1, 0, 3]) == "ba[MASK]"
    with pytest.raises(ValueError, match="unknown tokenizer 'wordpiece'"):
        tokenizer.for_meta({"vocab_size": 10, "tokenizer": "wordpiece"})


@pytest.mark.parametrize("name,script", [("byte", "data/shakespeare_byte/prepare.py"),
                                         ("gpt2", "data/shakespeare/prepare.py")])
def test_prepare_script_on_a_local_file(tmp_path, name, script):
    tok = tokenizer.get_tokenizer("byte") if name == "byte" else gpt2_or_skip()
    src, out = tmp_path / "in.txt", tmp_path / "d"
    src.write_text(TEXT, encoding="utf-8")
    p = run_script(script, "--input", str(src), "--out_dir", str(out))
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    assert f"train.bin {len(train):,} tokens, val.bin {len(val):,} tokens" in p.stdout
    split = int(len(TEXT) * 0.9)
    assert tok.decode(train.tolist()) == TEXT[:split] and tok.decode(val.tolist()) == TEXT[split:]
    with open(out / "meta.pkl", "rb") as f:
        assert pickle.load(f) == {"vocab_size": tok.vocab_size, "tokenizer": name}
    assert sorted(os.listdir(out)) == ["meta.pkl", "train.bin", "val.bin"]  # no temporary files left


@pytest.mark.slow
def test_prepare_errors_are_one_line(tmp_path):
    for args, msg in [(["--input", str(tmp_path / "missing.txt")], "cannot read --input"),
                      (["--input", __file__, "--val_fraction", "1.5"], "--val_fraction must be in (0, 1)"),
                      (["--epochs", "2"], "unrecognized arguments: --epochs 2"),
                      (["--out_dir", __file__, "--input", __file__], f"--out_dir '{__file__}' is a file; give a folder")]:
        # the last --out_dir wins: a file, which no folder can be made at
        p = run_script("data/shakespeare_byte/prepare.py", "--out_dir", str(tmp_path / "o"), *args, check=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode != 0 and len(lines) == 1 and lines[0].startswith(f"error: {msg}"), p.stderr
    with pytest.raises(ValueError, match="cannot download .* pass --input PATH"):  # (the script says it in one line)
        tokenizer.read_text(None, "http://127.0.0.1:9/no-such-file.txt")


def test_needle_prompt_layout():
    tok = tokenizer.get_tokenizer("byte")
    hay = np.array(tok.encode(TEXT), dtype=np.uint16)
    rng = np.random.default_rng(0)
    for depth in (0.0, 0.5, 1.0):
        ids, at = niah.make_prompt(tok, hay, 300, depth, 48213, rng)
        text = tok.decode(ids)
        assert len(ids) == 300 and text.endswith(niah.QUESTION)
        needle = niah.NEEDLE.format(48213)
        H = 300 - len(tok.encode(needle)) - len(tok.encode(niah.QUESTION))
        assert at == round(depth * H) and tok.decode(ids[at:at + len(needle)]) == needle
    assert tok.decode(niah.make_prompt(tok, hay, 300, 1.0, 7, rng)[0]).endswith(niah.NEEDLE.format(7) + niah.QUESTION)
    with pytest.raises(ValueError, match="cannot hold the needle"):
        niah.make_prompt(tok, hay, 50, 0.5, 48213, rng)


def test_answer_scoring():
    assert niah.answer_ok(" 48213.", 48213) and niah.answer_ok("48213 and", 48213)
    assert not niah.answer_ok(" 4821", 48213) and not niah.answer_ok(" 482130", 48213)
    assert not niah.answer_ok(" the number 48213", 48213) and not niah.answer_ok("", 48213)


class Reader:
    """A stand-in model that answers with the first magic number in its prompt (or a fixed one)."""

    def __init__(self, tok, fixed=None):
        self.tok, self.fixed = tok, fixed

    def generate(self, idx, max_new_tokens, temperature, vocab_limit):
        rows = []
        for row in idx.tolist():
            n = self.fixed or re.search(r"magic number is (\d+)\.", self.tok.decode(row)).group(1)
            ans = (self.tok.encode(f" {n}.") + [0] * max_new_tokens)[:max_new_tokens]
            rows.append(row + ans)
        return torch.tensor(rows)


def test_needle_evaluation_scores_a_reader_1_and_a_guesser_0():
    tok = tokenizer.get_tokenizer("byte")
    hay = np.array(tok.encode(TEXT), dtype=np.uint16)
    res = niah.evaluate(Reader(tok), tok, hay, [120, 200], [0.0, 0.5, 1.0], trials=5)
    assert set(res) == {(d, L) for d in (0.0, 0.5, 1.0) for L in (120, 200)} and all(v == 1.0 for v in res.values())
    res = niah.evaluate(Reader(tok, fixed="12345"), tok, hay, [120], [0.5], trials=5)
    assert res[(0.5, 120)] == 0.0
    assert "| 0.50 | 0.00 |" in niah.table(res, [120], [0.5])


@pytest.mark.slow
def test_train_on_text_then_ask_the_needle(tmp_path, tiny_ckpt):
    out = tiny_text_run(tmp_path, TEXT, 160, 4)
    p = run_script("experiments/niah.py", "--out_dir", str(out), "--trials", "3", "--depths", "0,1")
    assert "| depth \\ tokens | 105 | 152 |" in p.stdout and "mean accuracy" in p.stdout
    assert os.path.getsize(out / "niah.png") > 5000
    # one-line errors: no checkpoint, a synthetic checkpoint, a context longer than the model's
    for args, msg in [(["--out_dir", str(tmp_path / "none")], "no checkpoint at"),
                      (["--out_dir", str(tiny_ckpt)], "was trained on the synthetic tasks"),
                      (["--out_dir", str(out), "--lengths", "200"], "need lengths of at most block_size - 8 = 152"),
                      (["--out_dir", str(out), "--device", "tpu"], "--device 'tpu' is not a device")] + \
            ([] if torch.cuda.is_available() else [(["--out_dir", str(out), "--device", "cuda"],
                                                    "--device cuda, but CUDA is not available here; use --device cpu")]):
        p = run_script("experiments/niah.py", *args, "--overwrite", check=False)  # (niah.json is there)
        lines = p.stderr.strip().splitlines()
        assert p.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], p.stderr


def test_fineweb_prepare_streams_in_order_and_names_its_missing_dependency():
    import importlib.util
    from multiprocessing import Pool

    tok = gpt2_or_skip()
    spec = importlib.util.spec_from_file_location("fineweb_prepare", os.path.join(ROOT, "data", "fineweb", "prepare.py"))
    fineweb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fineweb)
    sys.modules["fineweb_prepare"] = fineweb  # so that the pool's workers can find its encode()
    texts = [f"Document number {i}." for i in range(50)]
    with Pool(2) as pool:
        arrays = list(fineweb.documents(pool, iter(texts), batch=7))
    assert [a[0] for a in arrays] == [50256] * 50  # each document starts with <|endoftext|>
    assert [tok.decode(a[1:].tolist()) for a in arrays] == texts
    try:
        import datasets  # noqa: F401
    except ImportError:
        p = run_script("data/fineweb/prepare.py", check=False)
        assert p.returncode != 0 and p.stderr.strip().endswith("pip install datasets")
        assert len(p.stderr.strip().splitlines()) == 1
