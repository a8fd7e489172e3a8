"""Fine-tuning (paper §3.2): the loss covers the answer only, the QA set and its scoring, train.py's
--sft modes, and compare_sft.py end to end. The transforms themselves are in test_mask.py."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tasks
from helpers import run_inprocess, run_script
from mask import IGNORE, sft_ntp
from model import GPT, GPTConfig


def qa_oracle(x, m):
    """Logits (B, T, V) that are right at the last m positions of every row: the m tokens after
    the first occurrence of the asked key (x[:, -m])."""
    logits = torch.zeros(*x.shape, tasks.VOCAB_SIZE)
    for b, row in enumerate(x.tolist()):
        k = row.index(row[-m])  # the gold document's fact
        for j in range(m):
            logits[b, len(row) - m + j, row[k + 1 + j]] = 10.0
    return logits


def test_ntp_sft_loss_ignores_the_prompt():
    """model(x, y) on an sft_ntp() pair is the cross-entropy over the answer tokens alone: the
    prompt tokens are inputs, never targets."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=32, vocab_size=192))
    (prompt, answer), = tasks.qa_examples(np.random.default_rng(0), 1, 47, 4, 4)
    x, y = sft_ntp(prompt, answer)
    logits, loss = model(x[None], y[None])
    m = len(answer)
    assert (y != IGNORE).sum() == m and y[-m:].tolist() == answer.tolist()
    by_hand = F.cross_entropy(logits[0, -m:], answer)  # the last m positions predict the answer
    assert torch.allclose(loss, by_hand, atol=1e-6)
    # a different prompt of the same length leaves which targets count, and their number, unchanged
    x2, y2 = sft_ntp(torch.randint(0, 100, prompt.shape), answer)
    assert torch.equal(y2 != IGNORE, y != IGNORE)


def test_qa_examples_cycle_the_gold_document_and_split_prompt_from_answer():
    n, K, m, T = 14, 4, 3, 47
    ex = tasks.qa_examples(np.random.default_rng(1), n, T, K, m)
    assert len(ex) == n
    for i, (prompt, answer) in enumerate(ex):
        assert len(prompt) + len(answer) == T + 1 and len(answer) == m
        seq = torch.cat([prompt, answer]).tolist()
        assert seq[-m - 2] == tasks.QUERY and prompt[-1] == seq[-m - 1]  # the prompt ends with '? key'
        docs = [j for j, t in enumerate(seq) if t == tasks.BOS]
        k = seq.index(prompt[-1].item())
        gold = sum(d <= k for d in docs) - 1  # the document holding the asked fact
        assert gold == i % K
        assert answer.tolist() == seq[k + 1:k + 1 + m]
    again = tasks.qa_examples(np.random.default_rng(1), n, T, K, m)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(ex, again))


def test_evaluate_qa_scores_whole_answers_by_gold_position():
    K, m, T = 4, 3, 47
    res = tasks.evaluate_qa(lambda x: (qa_oracle(x, m), None), T, K, m, n_examples=40)
    assert res == {**{f"acc_qa_g{k}": 1.0 for k in range(1, K + 1)}, "acc_qa": 1.0, "acc": 1.0, "acc_qa_first": 1.0,
                   "acc_qa_token": 1.0}

    def first_document(x):  # always answers with the values of the first document's fact
        logits = torch.zeros(*x.shape, tasks.VOCAB_SIZE)
        for b, row in enumerate(x.tolist()):
            k = next(i for i, t in enumerate(row) if t in tasks.KEYS)
            for j in range(m):
                logits[b, T - m + j, row[k + 1 + j]] = 10.0
        return logits, None
    res = tasks.evaluate_qa(first_document, T, K, m, n_examples=40)
    assert res["acc_qa_g1"] == 1.0 and max(res[f"acc_qa_g{k}"] for k in range(2, K + 1)) < 0.2
    assert res["acc_qa"] == pytest.approx(np.mean([res[f"acc_qa_g{k}"] for k in range(1, K + 1)]))

    def all_but_last_token(x):  # finds the document and copies all but the last token: 0 as a whole
        logits = qa_oracle(x, m)
        logits[:, -1] = logits[:, -1].roll(1, dims=-1)
        return logits, None
    res = tasks.evaluate_qa(all_but_last_token, T, K, m, n_examples=40)
    assert res["acc_qa"] == 0.0 and res["acc_qa_first"] == 1.0 and res["acc_qa_token"] == pytest.approx((m - 1) / m)
    rng = np.random.default_rng(0)
    per_token = tasks.accuracy(all_but_last_token, lambda b: tasks.qa(rng, b, T, K, 1, m), 20)
    assert per_token == pytest.approx((m - 1) / m)


# --- train.py --sft ---

# 2 documents, 2-token answers, 16 tokens an example: the concat layout's 31 fit TINY's block of 32
SFT = ["--n_docs", "2", "--answer_len", "2", "--qa_tokens", "16", "--sft_examples", "12", "--sft_min_answer", "1",
       "--eval_examples", "4", "--eval_iters", "1", "--log_interval", "1", "--warmup_iters", "1"]


@pytest.mark.parametrize("layout,ratio", [("ntp", "0"), pytest.param("concat", "0.5", marks=pytest.mark.slow),
                                          pytest.param("separate", "0.5", marks=pytest.mark.slow)])
def test_sft_from_a_checkpoint_logs_accuracy_by_gold_position(tiny_ckpt, tmp_path, layout, ratio):
    p = run_script("train.py", "--init_from", str(tiny_ckpt), "--sft", layout, "--mask_ratio", ratio, *SFT,
                   "--max_iters", "4", "--eval_interval", "2", "--out_dir", str(tmp_path))
    assert f"SFT '{layout}'" in p.stdout and "12 qa examples" in p.stdout
    assert p.stdout.strip().splitlines()[-1].startswith("final:") and "qa " in p.stdout.strip().splitlines()[-1]
    with open(tmp_path / "metrics.jsonl") as f:
        evals = [r for r in map(json.loads, f) if "val_loss" in r]
    assert [r["iter"] for r in evals] == [0, 2, 4] and {"acc_qa_g1", "acc_qa_g2", "acc_qa"} <= set(evals[-1])
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    base = torch.load(tiny_ckpt / "ckpt.pt", weights_only=False)
    assert ckpt["model_args"] == base["model_args"] and ckpt["iter_num"] == 4  # the base's shape, a fresh count
    assert ckpt["config"]["sft"] == layout and ckpt["config"]["init_from"] == str(tiny_ckpt)


@pytest.mark.slow
def test_sft_layouts_start_from_the_same_base_and_differ_in_the_batch(tiny_ckpt, tmp_path):
    """Step 0 evaluates the base itself, identically for every layout (clean held-out answers);
    the first training loss differs because the batches differ."""
    rows = {}
    for layout, ratio in (("ntp", "0"), ("concat", "0.5")):
        run_script("train.py", "--init_from", str(tiny_ckpt), "--sft", layout, "--mask_ratio", ratio, *SFT,
                   "--max_iters", "1", "--eval_interval", "1", "--out_dir", str(tmp_path / layout))
        with open(tmp_path / layout / "metrics.jsonl") as f:
            rows[layout] = [json.loads(line) for line in f]
    assert rows["ntp"][0] == rows["concat"][0] and rows["ntp"][0]["iter"] == 0
    assert rows["ntp"][1]["loss"] != rows["concat"][1]["loss"]


@pytest.mark.slow
def test_sft_resume_reproduces_the_uninterrupted_run(tiny_ckpt, tmp_path):
    """Dynamic masks and the epoch order are pure functions of the step: stopping and resuming
    gives the same losses and weights, bit for bit."""
    common = ["--init_from", str(tiny_ckpt), "--sft", "concat", "--mask_ratio", "0.5", *SFT, "--eval_interval", "3",
              "--lr_decay_iters", "6"]
    run_script("train.py", *common, "--max_iters", "6", "--out_dir", str(tmp_path / "full"))
    run_script("train.py", *common, "--max_iters", "3", "--out_dir", str(tmp_path / "split"))
    run_script("train.py", "--init_from", "resume", "--max_iters", "6", "--out_dir", str(tmp_path / "split"))
    rows = {}
    for name in ("full", "split"):
        with open(tmp_path / name / "metrics.jsonl") as f:
            rows[name] = [json.loads(line) for line in f]
        for r in rows[name]:
            r.pop("ms_per_iter", None)
    assert rows["full"] == rows["split"]
    a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "split" / "ckpt.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_fine_tuning_learns_the_qa_far_above_chance(tmp_path):
    """An NTP base that learned MQAR, fine-tuned on 3-document QA with 2-token answers. Untrained,
    no answer is right (0); answering with the fact of a random document would score 1/3. A
    broken label layout (targets shifted, or the prompt as target) stays near 0 here."""
    run_script("train.py", "--task", "mqar", "--n_pairs", "4", "--block_size", "32", "--max_iters", "400",
               "--warmup_iters", "40", "--eval_interval", "400", "--log_interval", "100", "--mask_ratio", "0",
               "--device", "cpu", "--out_dir", str(tmp_path / "base"))
    run_script("train.py", "--init_from", str(tmp_path / "base"), "--sft", "ntp", "--mask_ratio", "0", "--n_docs", "3",
               "--answer_len", "2", "--qa_tokens", "32", "--sft_examples", "4000", "--max_iters", "250",
               "--warmup_iters", "20", "--eval_interval", "250", "--log_interval", "100", "--device", "cpu",
               "--out_dir", str(tmp_path / "sft"))
    with open(tmp_path / "sft" / "metrics.jsonl") as f:
        evals = [r for r in map(json.loads, f) if "acc_qa" in r]
    assert evals[0]["acc_qa"] == 0.0 and evals[-1]["iter"] == 250 and evals[-1]["acc_qa"] > 0.6, evals[-1]


@pytest.mark.parametrize("args,message", [
    (["--sft", "ntp", "--mask_ratio", "0"], "error: --sft fine-tunes a trained model: give its checkpoint"),
    (["--sft", "concat", "--init_from", "nowhere"], "error: --init_from nowhere: no checkpoint there"),
    (["--sft", "ntp", "--init_from", "CKPT"], "error: --sft ntp masks nothing: pass --mask_ratio 0"),
    (["--sft", "sideways", "--init_from", "CKPT"], "error: --sft must be none, ntp, concat or separate"),
    (["--sft", "concat", "--init_from", "CKPT", "--mask_ratio", "0.5", "--qa_tokens", "24"],
     "error: --sft concat needs block_size >= 47"),
    (["--sft", "concat", "--init_from", "CKPT", "--mask_ratio", "0.5", "--batch_size", "5"],
     "--batch_size must be even"),
    (["--sft", "ntp", "--mask_ratio", "0", "--init_from", "CKPT", "--n_docs", "5"], "raise --qa_tokens"),
    (["--sft", "concat", "--init_from", "CKPT", "--mask_ratio", "0.2"], "masks floor(2 x 0.2) = 0 of the 2 answer"),
    (["--sft", "separate", "--init_from", "CKPT", "--mask_ratio", "0.5", "--sft_min_answer", "50"],
     "under sft_min_answer 50, so MEAP-SFT would be NTP-SFT on half the examples"),
    (["--sft", "ntp", "--mask_ratio", "0", "--init_from", "CKPT", "--n_layer", "3"],
     "error: --n_layer 3 does not match"),
])
def test_sft_mistakes_are_one_line_errors(tiny_ckpt, tmp_path, args, message):
    args = [str(tiny_ckpt) if a == "CKPT" else a for a in args]
    code, _, err = run_inprocess("train.py", *SFT, *args, "--out_dir", str(tmp_path))
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ckpt.pt").exists()


# --- compare_sft.py ---

@pytest.mark.slow
def test_compare_sft_tiny_writes_a_table_and_a_plot_then_reuses_the_runs(tmp_path):
    out = tmp_path / "sft"
    p = run_script("experiments/compare_sft.py", "--preset", "tiny", "--out", str(out), timeout=600)
    assert "pre-training the NTP base" in p.stdout and "[4/4]" in p.stdout
    md = (out / "results.md").read_text()
    assert md.startswith("`python -m experiments.compare_sft --preset tiny") and "| NTP-SFT |" in md
    assert "Minus NTP-SFT, paired by seed" in md and "MEAP-SFT, concat (paper)" in md
    assert (out / "results.png").stat().st_size > 10_000
    for run in ("ntp_s1", "concat_s2"):
        res = json.loads((out / "runs" / run / "sft.json").read_text())
        assert set(res) >= {"acc_qa_g1", "acc_qa_g3", "acc_qa", "curve", "steps_to_50"}
        assert [c[0] for c in res["curve"]] == [0, 2, 4]
    cfg = torch.load(out / "runs" / "concat_s2" / "ckpt.pt", weights_only=False)["config"]
    assert (cfg["sft"], cfg["mask_ratio"], cfg["seed"], cfg["init_from"]) == ("concat", 0.25, 2, str(out / "base"))
    # a second call trains nothing and writes the same table
    p = run_script("experiments/compare_sft.py", "--preset", "tiny", "--out", str(out), timeout=120)
    assert "pre-training" not in p.stdout and "[1/" not in p.stdout and (out / "results.md").read_text() == md
    # other settings in the same folder are refused
    p = run_script("experiments/compare_sft.py", "--preset", "tiny", "--out", str(out), "--set", "max_iters=9", check=False)
    assert p.returncode != 0 and "holds results of other settings" in p.stderr


@pytest.mark.parametrize("args,message", [
    (["--arms", "concat"], "ntp included"),
    (["--arms", "ntp,sideways"], "--arms takes names from"),
    (["--mask_ratio", "0"], "--mask_ratio must be in (0, 1)"),
    (["--set", "sft=concat"], "--set sft is chosen by the comparison"),
    (["--preset", "huge"], "unknown preset 'huge'"),
])
def test_compare_sft_mistakes_are_one_line_errors(tmp_path, args, message):
    p = run_script("experiments/compare_sft.py", "--out", str(tmp_path), *args, check=False, timeout=60)
    assert p.returncode != 0 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_sft_from_a_text_checkpoint_is_a_one_line_error(tiny_ckpt, tmp_path):
    ckpt = torch.load(tiny_ckpt / "ckpt.pt", weights_only=False)
    ckpt["config"]["dataset"] = "shakespeare"  # as if trained on data/shakespeare
    torch.save(ckpt, tmp_path / "text.pt")
    p = run_script("train.py", "--init_from", str(tmp_path / "text.pt"), "--sft", "ntp", "--mask_ratio", "0", *SFT,
                   "--out_dir", str(tmp_path / "out"), check=False, timeout=60)
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1
    assert "was trained on data/shakespeare; start from a checkpoint of the synthetic tasks" in p.stderr
