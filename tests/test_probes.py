"""experiments/probes.py: the zero-shot copying and passkey probes score what they claim to. An oracle
copier scores 1 on the second copy, a bigram model and an untrained GPT score chance, and every
passkey prompt holds its answer exactly where a brute-force search finds it."""

import json

import numpy as np
import pytest
import torch

from experiments import probes, text
from helpers import run_inprocess, run_script, tiny_text_run
from model import GPT, GPTConfig
from tokenizer import get_tokenizer

V = 1000  # ids of the test "texts" below: the haystack uses 0..499, the random spans 500..999


def haystack(n=20_000, seed=0):
    return np.random.default_rng(seed).integers(0, 500, size=n).astype(np.uint16)


def oracle_copier(x):
    """Logits (B, T, V) of an induction oracle: after a token seen before, the token that followed
    its latest earlier occurrence; uniform where the token is new."""
    B, T = x.shape
    logits = torch.zeros(B, T, V)
    for b in range(B):
        seen = {}
        for t in range(T):
            tok = int(x[b, t])
            if tok in seen:
                logits[b, t, int(x[b, seen[tok] + 1])] = 1.0
            seen[tok] = t
    return logits, None


def test_copying_batch_repeats_the_span_after_the_gap():
    x, first, second = probes.copying_batch(np.random.default_rng(1), haystack(), 3, 16, 40, "random",
                                            np.arange(500, 1000))
    assert x.shape == (3, probes.LEAD + 2 * 16 + 40) and second == first + 16 + 40
    assert torch.equal(x[:, first:first + 16], x[:, second:second + 16])
    span = x[0, first:first + 16]
    assert len(set(span.tolist())) == 16 and (span >= 500).all()  # distinct ids of the given vocabulary
    assert (x[:, :first] < 500).all() and (x[:, first + 16:second] < 500).all()  # lead and gap: the text
    x, first, second = probes.copying_batch(np.random.default_rng(1), haystack(), 3, 16, 40, "text", None)
    assert (x < 500).all() and torch.equal(x[:, first:first + 16], x[:, second:second + 16])


def test_an_oracle_copier_scores_1_on_the_second_copy_and_0_on_the_first():
    res = probes.copying(oracle_copier, haystack(), k=16, gaps=(16, 64), n=20, vocab=np.arange(500, 1000))
    for r in res.values():
        assert r["acc_second"] == 1.0 and r["acc_first"] == 0.0
        assert r["loss_second"] < r["loss_first"]


def test_a_bigram_model_copies_nothing():
    hay = haystack()
    counts = np.ones((V, V))
    np.add.at(counts, (hay[:-1].astype(int), hay[1:].astype(int)), 1)
    table = torch.tensor(np.log(counts / counts.sum(1, keepdims=True)), dtype=torch.float32)
    res = probes.copying(lambda x: (table[x], None), hay, k=16, gaps=(16, 64), n=50)
    for r in res.values():
        assert r["acc_second"] < 0.05 and abs(r["acc_second"] - r["acc_first"]) < 0.03
        assert abs(r["loss_second"] - r["loss_first"]) < 0.1


def test_an_untrained_model_scores_about_zero():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=128, n_layer=1, n_head=2, n_kv_head=2, n_embd=32, vocab_size=320)).eval()
    tok = get_tokenizer("byte")
    hay = np.frombuffer(("the king is dead; long live the king. " * 400).encode(), dtype=np.uint8).astype(np.uint16)
    res = probes.copying(model, hay, k=8, gaps=(16,), n=20)
    assert res[16]["acc_second"] < 0.2
    assert probes.passkey(model, tok, hay, [100], [0.0, 1.0], trials=5) == {(0.0, 100): 0.0, (1.0, 100): 0.0}


def test_attention_on_text_gives_the_papers_metrics_on_masked_copies():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=32, vocab_size=320)).eval()
    res = probes.attention_on_text(model, haystack()[:5000] % 256, mask_token_id=256, n=8)
    assert set(res) == {"score_change", "var_change", "var_change_renorm", "entropy", "sink"}
    assert all(np.isfinite(v) for v in res.values()) and 0 < res["entropy"] <= 1 and 0 < res["sink"] < 1
    with pytest.raises(ValueError, match="fewer than a window of 64"):
        probes.attention_on_text(model, haystack()[:50], mask_token_id=256)


def test_every_passkey_prompt_holds_its_answer_where_a_search_finds_it():
    tok = get_tokenizer("byte")
    hay = np.frombuffer(("words of the text, " * 2000).encode(), dtype=np.uint8).astype(np.uint16)
    rng = np.random.default_rng(0)
    query = tok.encode(probes.PASSWORD)
    for depth in (0.0, 0.3, 1.0):
        word = probes.passwords(tok, hay, rng, 1)[0]
        ids, answer = probes.passkey_prompt(tok, hay, 120, depth, word, rng)
        assert len(ids) == 120 and ids[-len(query):] == query and answer == tok.encode(" " + word)
        # brute force: every place the question's words stand, and what follows them
        hits = [i for i in range(len(ids) - len(query)) if ids[i:i + len(query)] == query]
        assert len(hits) == 1 and ids[hits[0] + len(query):hits[0] + len(query) + len(answer)] == answer
        assert len(word) == 5 and word.isalpha() and word.islower()
    with pytest.raises(ValueError, match="cannot hold the needle"):
        probes.passkey_prompt(tok, hay, 20, 0.5, "abcde", rng)


def test_bpe_passwords_are_words_of_the_text():
    try:
        tok = get_tokenizer("gpt2")
    except ValueError:
        pytest.skip("GPT-2's BPE files are not available offline here")
    text = "Now is the winter of our discontent made glorious summer by this sun of York. " * 50
    hay = np.array(tok.encode(text), dtype=np.uint16)
    words = probes.passwords(tok, hay, np.random.default_rng(0), 20)
    assert set(words) <= {"winter", "discontent", "glorious", "summer"}


@pytest.mark.slow
def test_the_cli_probes_a_text_run_and_refuses_what_it_cannot_probe_in_one_line(tiny_ckpt, tmp_path):
    out = tiny_text_run(tmp_path, "To be, or not to be, that is the question. " * 300, 96, 2)
    code, stdout, _ = run_inprocess("experiments/probes.py", "--out_dir", str(out), "--examples", "4", "--device", "cpu")
    assert code == 0 and "copying random span 16 gap   16: accuracy first" in stdout and "passkey depth 1.00 length 88" in stdout
    saved = json.load(open(out / "probes.json"))
    assert saved["step"] == 2 and set(saved["copying"]) == set(probes.KINDS) and len(saved["passkey"]) == 6
    for args, msg in [(["--out_dir", str(tiny_ckpt)], "was trained on the synthetic tasks"),
                      (["--out_dir", str(tmp_path)], "no checkpoint at"),
                      (["--out_dir", str(out), "--span", "50"], "need --span >= 2 with 8 + 2 x span + 16 <= block_size 96"),
                      (["--out_dir", str(out), "--depths", "0,2"], "depths in [0, 1]")]:
        code, _, err = run_inprocess("experiments/probes.py", *args, "--device", "cpu", "--overwrite")  # (probes.json)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], err


# --- experiments/text.py: the NTP vs MEAP grid on text ---

@pytest.mark.slow
def test_text_grid_trains_in_stages_probes_and_reports_from_runs_json(tmp_path):
    data = tiny_text_run(tmp_path, "the king is dead, long live the queen. " * 500, 96, 2).parent / "data"
    out = tmp_path / "grid"
    p = run_script("experiments/text.py", "--preset", "tiny", "--set", f"dataset={data}", "--out", str(out))
    assert "[4/4]" in p.stdout and "| 0.15 |" in p.stdout
    run = out / "runs" / "r0.15_s1"
    assert sorted(f.name for f in run.glob("probes_*.json")) == ["probes_3.json", "probes_6.json"]
    # the staged run is the uninterrupted one (resuming is bit-exact, on the whole run's lr schedule)
    settings = dict(text.PRESETS["tiny"]["train"], dataset=str(data))
    run_script("train.py", *[f"--{k}={v}" for k, v in settings.items()], "--mask_ratio", "0.15", "--seed", "1",
               "--out_dir", str(tmp_path / "direct"))
    staged, direct = ([json.loads(line) for line in open(d / "metrics.jsonl")] for d in (run, tmp_path / "direct"))
    assert [e["iter"] for e in staged if "val_loss" in e] == [0, 3, 6]
    assert [e for e in staged if "val_loss" in e] == [e for e in direct if "val_loss" in e]
    runs = json.load(open(out / "runs.json"))["runs"]
    assert len(runs) == 4 and all({"val_loss", "copy_random", "passkey", "curve", "passkey_grid"} <= set(r) for r in runs)
    md = (out / "results.md").read_text()
    alone = tmp_path / "alone"  # the report is a function of grid.json and runs.json alone
    alone.mkdir()
    for f in ("grid.json", "runs.json"):
        (alone / f).write_text((out / f).read_text())
    run_script("experiments/text.py", "--report", str(alone))
    assert (alone / "results.md").read_text() == md and (alone / "results.png").stat().st_size > 10_000
    p = run_script("experiments/text.py", "--preset", "tiny", "--set", "dataset=nowhere", "--out", str(tmp_path / "x"),
                   check=False)
    assert p.returncode == 1 and p.stderr.strip() == ("error: data/nowhere/train.bin not found; prepare it first: "
                                                      "python data/nowhere/prepare.py")


@pytest.mark.slow
def test_text_gpu_preset_trains_at_a_tiny_width_on_cpu(tmp_path):
    data = tiny_text_run(tmp_path, "the king is dead, long live the queen. " * 500, 96, 2).parent / "data"
    tiny = ["n_layer=1", "n_head=2", "n_kv_head=2", "n_embd=32", "batch_size=2", "eval_interval=2", "eval_iters=1",
            "device=cpu", f"dataset={data}"]
    p = run_script("experiments/text.py", "--preset", "gpu", "--ratios", "0,0.15", "--seeds", "1", "--stages", "2",
                   "--examples", "2", "--out", str(tmp_path / "g"), "--set", *tiny)
    assert "[2/2]" in p.stdout and "| 0.15 |" in p.stdout
    grid = json.load(open(tmp_path / "g" / "grid.json"))
    assert grid["settings"]["block_size"] == "512" and grid["stages"] == [2]
