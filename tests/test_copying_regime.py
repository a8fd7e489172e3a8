"""The CPU regime in which a model trained on text learns to copy: the BPE trained on the corpus, the
Python-source dataset and its copied-span augmentation, emb_common, the new probes, and the pilots."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

import tokenizer
from experiments import pilots, probes, text
from helpers import ROOT, run_inprocess, run_script
from model import GPT, GPTConfig

TEXT = "".join(f"def f{i}(self, x):\n    return self.value + x * {i % 7}  # the quick brown fox\n" for i in range(300))


def load_prepare():
    import importlib.util
    spec = importlib.util.spec_from_file_location("stdlib_prepare", os.path.join(ROOT, "data", "stdlib", "prepare.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- the BPE trained on the corpus (tokenizer.py) ---

def test_trained_bpe_round_trips_and_learns_the_frequent_pairs():
    ranks = tokenizer.train_bpe(TEXT, 300)
    assert len(ranks) == 300 and sorted(ranks.values()) == list(range(300))
    assert all(ranks[bytes([i])] == i for i in range(256))  # ids 0-255 are the bytes
    assert b"self" in ranks and b" return" in ranks  # the corpus's frequent pieces became tokens
    tok = tokenizer.bpe_tokenizer(ranks)
    assert tok.vocab_size == 300 and tok.mask_id == 300
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT and len(ids) < len(TEXT.encode()) / 2 and max(ids) < 300
    other = "naïve café: not in the training text ✓"  # unseen text still round-trips, byte by byte
    assert tok.decode(tok.encode(other)) == other
    assert tok.decode(ids[:3] + [tok.mask_id] + ids[4:]) == tok.decode(ids[:3]) + "[MASK]" + tok.decode(ids[4:])
    assert tokenizer.train_bpe(TEXT, 300) == ranks  # deterministic
    # the tokenizer travels in meta.pkl, as the prepare script writes it
    meta = {"vocab_size": 300, "tokenizer": "bpe", "bpe_ranks": ranks}
    assert tokenizer.for_meta(meta).encode(TEXT) == ids
    for bad in (255, 70_000):
        with pytest.raises(ValueError, match="256 to 65,536 ids"):
            tokenizer.train_bpe(TEXT, bad)
    with pytest.raises(ValueError, match="trained on its dataset"):
        tokenizer.get_tokenizer("bpe")


def test_bpe_stops_when_no_pair_repeats():
    assert len(tokenizer.train_bpe("abcdef", 400)) == 256  # every pair occurs once: nothing to merge


# --- data/stdlib/prepare.py ---

def test_add_repeats_copies_inside_its_stretch_and_nowhere_else():
    prep = load_prepare()
    ids = np.arange(10_000) + 1000  # every id distinct, so a copy is visible wherever it lands
    out, changed = prep.add_repeats(ids, 0.5, 100, (5, 20), np.random.default_rng(0))
    assert len(out) == len(ids) and 30 < changed < 70
    n_changed = 0
    for start in range(0, len(ids), 100):
        stretch, orig = out[start:start + 100], ids[start:start + 100]
        diff = np.nonzero(stretch != orig)[0]
        if len(diff) == 0:
            continue
        n_changed += 1
        q, n = diff[0], len(diff)
        assert 5 <= n <= 20 and diff[-1] - q == n - 1  # one run of 5-20 overwritten tokens ...
        s = stretch[q] - orig[0]  # ... copied from earlier in the same stretch, without overlap
        assert 0 <= s and s + n <= q and np.array_equal(stretch[q:q + n], orig[s:s + n])
    assert n_changed == changed
    assert np.array_equal(prep.add_repeats(ids, 0.0, 100, (5, 20), np.random.default_rng(0))[0], ids)
    assert prep.add_repeats(ids, 1.0, 100, (50, 50), np.random.default_rng(0))[1] == 100  # the longest that fits
    for share, span in ((1.5, (5, 20)), (0.5, (20, 5)), (0.5, (5, 51))):
        with pytest.raises(ValueError, match="need --repeat"):
            prep.add_repeats(ids, share, 100, span, np.random.default_rng(0))


@pytest.mark.slow
def test_stdlib_prepare_on_a_folder_of_source(tmp_path):
    root = tmp_path / "src"
    for i in range(40):  # 40 files, a few in folders the corpus leaves out
        d = root / ("tests" if i % 10 == 3 else "pkg")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"m{i}.py").write_text(TEXT[i * 200:(i + 3) * 200])
    out = tmp_path / "d"
    p = run_script("data/stdlib/prepare.py", "--root", str(root), "--vocab_size", "300", "--out_dir", str(out))
    assert "36 files" in p.stdout and f"[MASK] = 300" in p.stdout  # 4 files under tests/ are left out
    meta = pickle.load(open(out / "meta.pkl", "rb"))
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] == 300 and meta["repeat"] is None
    tok = tokenizer.for_meta(meta)
    train, val = (np.fromfile(out / f"{s}.bin", dtype=np.uint16) for s in ("train", "val"))
    val_files = [f for f in sorted((root / "pkg").glob("*.py")) if load_prepare().is_val(os.path.relpath(f, root))]
    assert len(val_files) >= 1 and tok.decode(val.tolist()) == "\n\n\n".join(f.read_text() for f in val_files)
    assert sorted(os.listdir(out)) == ["meta.pkl", "train.bin", "val.bin"]
    # with copied spans: train.bin changes (same length), val.bin does not
    out2 = tmp_path / "r"
    p = run_script("data/stdlib/prepare.py", "--root", str(root), "--vocab_size", "300", "--out_dir", str(out2),
                   "--repeat", "1", "--repeat_block", "64", "--repeat_span", "4,8")
    assert "a copied span of 4-8 tokens in" in p.stdout
    train2 = np.fromfile(out2 / "train.bin", dtype=np.uint16)
    assert len(train2) == len(train) and (train2 != train).any()
    assert np.array_equal(np.fromfile(out2 / "val.bin", dtype=np.uint16), val)
    assert pickle.load(open(out2 / "meta.pkl", "rb"))["repeat"] == [1.0, 64, 4, 8]


def test_stdlib_prepare_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for args, msg in [(["--root", str(tmp_path / "empty")], "too few readable .py files"),
                      (["--vocab_size", "100"], "--vocab_size: a byte-level BPE has 256"),
                      (["--repeat", "0.5", "--repeat_span", "8"], "--repeat_span takes two integers"),
                      (["--repeat", "2"], "need --repeat in [0, 1]"),
                      (["--repeat_block", "5", "--repeat", "0.5"], "block 5")]:
        code, _, err = run_inprocess("data/stdlib/prepare.py", "--out_dir", str(tmp_path / "o"), *args)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], err
        assert not (tmp_path / "o").exists()  # nothing written


# --- emb_common (model.py) ---

def test_emb_common_adds_one_vector_to_every_embedding_and_changes_nothing_at_zero():
    cfg = dict(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    plain = GPT(GPTConfig(**cfg))
    torch.manual_seed(0)
    zero = GPT(GPTConfig(**cfg, emb_common=0.0))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), zero.state_dict().values()))
    torch.manual_seed(0)
    common = GPT(GPTConfig(**cfg, emb_common=2.0))
    d = common.tok_emb.weight - plain.tok_emb.weight  # (vocab, n_embd): the same row everywhere
    assert torch.allclose(d, d[:1].expand_as(d), atol=1e-6) and 1.0 < d[0].std() < 3.0
    rest = [k for k in plain.state_dict() if k != "tok_emb.weight"]
    assert all(torch.equal(plain.state_dict()[k], common.state_dict()[k]) for k in rest)
    with pytest.raises(ValueError, match="emb_common must be in"):
        GPT(GPTConfig(**cfg, emb_common=-1.0))


@pytest.mark.slow
def test_a_checkpoint_from_before_emb_common_resumes_and_fine_tunes(tiny_ckpt, tmp_path):
    from helpers import TINY
    old = tmp_path / "old"
    old.mkdir()
    ckpt = torch.load(tiny_ckpt / "ckpt.pt", weights_only=False)
    del ckpt["model_args"]["emb_common"], ckpt["config"]["emb_common"]  # as saved before the setting existed
    torch.save(ckpt, old / "ckpt.pt")
    shutil.copy(tiny_ckpt / "metrics.jsonl", old / "metrics.jsonl")
    run_script("train.py", *TINY, "--max_iters", "6", "--eval_interval", "2", "--out_dir", str(old), "--init_from", "resume")
    resumed = torch.load(old / "ckpt.pt", weights_only=False)
    assert resumed["iter_num"] == 6 and resumed["model_args"]["emb_common"] == 0.0
    p = run_script("train.py", *TINY, "--max_iters", "2", "--eval_interval", "2", "--init_from", str(tiny_ckpt),
                   "--out_dir", str(tmp_path / "ft"), "--sft", "ntp", "--mask_ratio", "0", "--emb_common", "1",
                   check=False)  # fine-tuning keeps the base's emb_common: a different one is refused
    assert p.returncode == 1 and "--emb_common 1.0 does not match" in p.stderr


# --- the probes added for the pilots (experiments/probes.py) ---

def test_frequent_spans_draw_distinct_ids_by_their_frequency():
    rng = np.random.default_rng(0)
    hay = np.concatenate([np.full(9000, 7), rng.integers(0, 500, size=9000)]).astype(np.uint16)
    rng.shuffle(hay)
    vocab = probes.text_vocab(hay)
    x, first, _ = probes.copying_batch(np.random.default_rng(1), hay, 200, 16, 16, "frequent", vocab)
    spans = x[:, first:first + 16]
    assert all(len(set(row.tolist())) == 16 for row in spans)  # distinct
    assert (spans == 7).any(dim=1).float().mean() > 0.9  # the id that is half the text is in nearly every span
    x, first, _ = probes.copying_batch(np.random.default_rng(1), hay, 200, 16, 16, "random", vocab)
    assert (x[:, first:first + 16] == 7).any(dim=1).float().mean() < 0.2  # uniformly: 16 of 500
    with pytest.raises(ValueError, match="kind must be one of"):
        probes.copying_batch(np.random.default_rng(1), hay, 2, 16, 16, "rare", vocab)


def test_previous_token_share_reads_the_attention_weights():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    hay = np.random.default_rng(0).integers(0, 60, size=2000).astype(np.uint16)
    share = probes.previous_token_share(model, hay, n=4, seed=0)
    starts = np.random.default_rng(0).integers(len(hay) - 32, size=4)
    x = torch.from_numpy(np.stack([hay[s:s + 32].astype(np.int64) for s in starts]))
    _, att = model.attention(x)
    i = torch.arange(1, 32)
    for layer in range(2):
        per_head = [att[layer, :, h, i, i - 1].mean().item() for h in range(2)]
        assert share[layer] == pytest.approx(max(per_head), abs=1e-6)
    # at init attention is near uniform: about the mean of 1/(t+1) over positions, far from a previous-token head
    assert all(0.05 < s < 0.3 for s in share)


def test_the_text_report_adds_copying_at_gap_16_only_where_every_kind_was_probed():
    def curve(kinds):
        return [[6, {k: {"16": {"acc_second": 0.5 + i / 10}, "64": {"acc_second": 0.1}} for i, k in enumerate(kinds)}]]

    new, old = {"curve": curve(probes.KINDS)}, {"curve": curve(["random", "text"])}
    text.add_shortest_gap({(0.0, 1): new, (0.0, 2): old})
    assert (new["copy_random_16"], new["copy_frequent_16"]) == (0.5, 0.6)  # the last stage, gap 16, 2nd copy
    assert "copy_random_16" not in old  # a grid from before the frequent-token probe keeps its columns
    assert "copy_random_16" not in {c[0] for c in text.columns({(0.0, 2): old, (0.0, 1): new})}


# --- experiments/pilots.py ---

@pytest.mark.slow
def test_pilots_train_in_stages_probe_and_report(tmp_path, monkeypatch):
    data = tmp_path / "data"
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    for i in range(40):  # (the path hash holds 3 of them out: pkg/m2, m20, m26)
        (root / "pkg" / f"m{i}.py").write_text(TEXT[i * 300:(i + 4) * 300])
    run_script("data/stdlib/prepare.py", "--root", str(root), "--vocab_size", "300", "--out_dir", str(data))
    monkeypatch.setattr(pilots, "BASE", dict(pilots.BASE, block_size=64, batch_size=2, n_layer=1, n_head=2,
                                             n_kv_head=2, n_embd=32, eval_interval=2, eval_iters=1, log_interval=1))
    monkeypatch.setattr(pilots, "PILOTS", {"a": ("tiny", dict(dataset=str(data))),
                                           "b": ("tiny, common", dict(dataset=str(data), emb_common=1.0))})
    monkeypatch.setattr(pilots, "EXAMPLES", 3)
    out = tmp_path / "out"
    pilots.main(["--out", str(out), "--stages", "2,4"])
    for name in ("a", "b"):
        d = json.load(open(out / f"{name}.json"))
        assert [st["step"] for st in d["stages"]] == [2, 4] and len(d["stages"][0]["previous_token"]) == 1
        assert set(d["stages"][0]["copying"]) == set(probes.KINDS)
    md = (out / "results.md").read_text()
    assert "| a | 4 |" in md and "- b: random spans, gap 16: never 0.5" in md
    (out / "results.md").unlink()
    pilots.main(["--report", str(out)])  # the map is a function of the pilots' files alone
    assert (out / "results.md").read_text() == md
