import json
import os

import pytest
import torch

from helpers import TINY, run_script
from model import GPT, GPTConfig


def metrics(out_dir):
    with open(out_dir / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    train = {r["iter"]: r["loss"] for r in rows if "loss" in r}
    evals = {r["iter"]: r for r in rows if "val_loss" in r}
    return train, evals


@pytest.mark.parametrize("ratio", ["0", "0.15"])
def test_train_writes_a_checkpoint_metrics_and_a_final_line(tmp_path, ratio):
    p = run_script("train.py", *TINY, "--max_iters", "6", "--eval_interval", "3", "--mask_ratio", ratio,
                   "--out_dir", str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt", "metrics.jsonl"]  # no temporary, no lock left
    train, evals = metrics(tmp_path)
    assert sorted(train) == list(range(6)) and sorted(evals) == [0, 3, 6]
    assert {"val_loss", "acc", "acc_mqar", "acc_needle", "acc_needle_d0.50"} <= set(evals[6])
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("final: clean val loss") and "retrieval accuracy" in last
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert ckpt["iter_num"] == 6 and ckpt["config"]["mask_ratio"] == float(ratio)
    assert ckpt["model_args"]["vocab_size"] == ckpt["mask_token_id"] + 1  # the real vocabulary, [MASK] its last id
    assert {"optimizer", "rng", "model"} <= set(ckpt)


@pytest.mark.parametrize("flags, kv_heads", [([], 8), (["--n_kv_head", "2"], 2)])
def test_n_head_alone_means_as_many_key_value_heads(tmp_path, flags, kv_heads):
    """--n_head 8 without --n_kv_head is plain multi-head attention (not grouped-query attention
    with some default count of key/value heads); the checkpoint names the count it trained with."""
    args = [a for i, a in enumerate(TINY) if "--n_kv_head" not in TINY[max(i - 1, 0):i + 1]]
    run_script("train.py", *args, "--n_head", "8", *flags, "--max_iters", "1", "--eval_interval", "1",
               "--out_dir", str(tmp_path))
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert ckpt["model_args"]["n_kv_head"] == ckpt["config"]["n_kv_head"] == kv_heads
    kv_rows = ckpt["model"]["blocks.0.attn.kv_proj.weight"].shape[0]
    assert kv_rows == 2 * kv_heads * (32 // 8)  # keys and values, kv_heads heads of size n_embd / n_head


def test_ntp_and_meap_differ_only_in_the_inputs(tmp_path):
    """Same seed: same weights and data, so the clean val loss at step 0 is identical and the
    first training loss differs only because MEAP masked some inputs."""
    runs = {}
    for ratio in ("0", "0.3"):
        run_script("train.py", *TINY, "--max_iters", "1", "--eval_interval", "1", "--mask_ratio", ratio,
                   "--out_dir", str(tmp_path / ratio))
        runs[ratio] = metrics(tmp_path / ratio)
    assert runs["0"][1][0]["val_loss"] == runs["0.3"][1][0]["val_loss"]
    assert runs["0"][0][0] != runs["0.3"][0][0]


@pytest.mark.slow
def test_mask_queries_changes_which_inputs_are_masked(tmp_path):
    """By default MEAP masks uniformly, the queries included; --mask_queries false spares them, so
    the same seed and ratio give different masked inputs and a different first loss."""
    losses = {}
    for flag in ("false", "true"):
        run_script("train.py", *TINY, "--task", "mqar", "--max_iters", "1", "--eval_interval", "1",
                   "--mask_ratio", "0.5", "--mask_queries", flag, "--out_dir", str(tmp_path / flag))
        losses[flag] = metrics(tmp_path / flag)[0][0]
    assert losses["false"] != losses["true"]


@pytest.mark.parametrize("mode", ["per_sequence", pytest.param("shared", marks=pytest.mark.slow)])
def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, mode):
    common = [*TINY, "--mask_mode", mode, "--warmup_iters", "2", "--lr_decay_iters", "10", "--eval_interval", "5"]
    run_script("train.py", *common, "--max_iters", "10", "--out_dir", str(tmp_path / "full"))
    run_script("train.py", *common, "--max_iters", "5", "--out_dir", str(tmp_path / "split"))
    p = run_script("train.py", "--init_from", "resume", "--max_iters", "10", "--out_dir", str(tmp_path / "split"))
    assert "resuming from" in p.stdout and "at iter 5" in p.stdout
    full, split = metrics(tmp_path / "full"), metrics(tmp_path / "split")
    assert full == split  # every training loss and every evaluation, bit for bit
    a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "split" / "ckpt.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    p = run_script("train.py", "--init_from", "resume", "--max_iters", "3", "--out_dir", str(tmp_path / "split"), timeout=60)
    assert "final:" in p.stdout  # a run already past max_iters evaluates once and stops


@pytest.mark.slow
def test_a_checkpoint_in_the_earlier_format_resumes_exactly(tmp_path):
    """Checkpoints written before checkpoint.py saved train.py's own model_args (vocab padded by
    train.py, no rope_theta) and were read with weights_only=False: they resume bit for bit."""
    common = [*TINY, "--warmup_iters", "2", "--lr_decay_iters", "6", "--eval_interval", "3"]
    run_script("train.py", *common, "--max_iters", "6", "--out_dir", str(tmp_path / "full"))
    run_script("train.py", *common, "--max_iters", "3", "--out_dir", str(tmp_path / "split"))
    path = tmp_path / "split" / "ckpt.pt"
    ckpt = torch.load(path, weights_only=False)
    ckpt["model_args"] = {k: ckpt["model_args"][k] for k in ("block_size", "n_layer", "n_head", "n_kv_head", "n_embd",
                                                             "vocab_size", "init", "emb_common")}
    ckpt["model_args"]["vocab_size"] = 192  # then saved padded: the 163 task ids rounded up to 64s
    torch.save(ckpt, path)
    run_script("train.py", "--init_from", "resume", "--max_iters", "6", "--out_dir", str(tmp_path / "split"))
    assert metrics(tmp_path / "full") == metrics(tmp_path / "split")
    a, b = (torch.load(tmp_path / run / "ckpt.pt", weights_only=True)["model"] for run in ("full", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tuning_takes_the_defaults_of_settings_a_checkpoint_predates(tiny_ckpt, tmp_path):
    """A base checkpoint whose config lacks a setting (saved before it existed) was trained with that
    setting's default, and its fine-tuning takes that default. (An earlier train.py took the string
    'nanomeap' for every missing key: dataset 'nanomeap', n_kv_head 'nanomeap'.)"""
    old = tmp_path / "old"
    old.mkdir()
    ckpt = torch.load(tiny_ckpt / "ckpt.pt", weights_only=False)
    for k in ("dataset", "n_kv_head", "init", "emb_common"):
        del ckpt["config"][k]
    torch.save(ckpt, old / "ckpt.pt")
    run_script("train.py", "--init_from", str(old), "--sft", "ntp", "--mask_ratio", "0", "--n_docs", "2",
               "--answer_len", "2", "--qa_tokens", "16", "--sft_examples", "8", "--max_iters", "2", "--batch_size", "2",
               "--eval_interval", "2", "--eval_iters", "1", "--eval_examples", "4", "--device", "cpu",
               "--out_dir", str(tmp_path / "ft"))
    cfg = torch.load(tmp_path / "ft" / "ckpt.pt", weights_only=True)["config"]
    assert (cfg["dataset"], cfg["n_kv_head"], cfg["init"], cfg["emb_common"]) == ("synthetic", 2, "nanomeap", 0.0)


def test_resume_refuses_a_checkpoint_that_does_not_match(tiny_ckpt, tmp_path):
    p = run_script("train.py", "--init_from", "resume", "--out_dir", str(tiny_ckpt), "--n_layer", "3", check=False)
    assert p.returncode != 0 and "error: --n_layer 3 does not match the checkpoint's 1" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    p = run_script("train.py", "--init_from", "resume", "--out_dir", str(tmp_path), check=False)
    assert p.returncode != 0 and p.stderr.startswith(f"error: cannot read {tmp_path}/ckpt.pt")
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_small_model_learns_retrieval_far_above_chance(tmp_path):
    """MQAR, 4 pairs in 32 tokens: chance is 1/64, and guessing among the 4 values in context
    gets ~0.25. The default 2-layer model retrieves almost every answer within a few hundred
    steps with NTP; MEAP needs about twice as many (the 15% masks hide some of the pairs)."""
    for ratio, iters in (("0", 400), ("0.15", 800)):
        p = run_script("train.py", "--task", "mqar", "--n_pairs", "4", "--block_size", "32", "--max_iters", str(iters),
                       "--warmup_iters", "40", "--eval_interval", str(iters), "--log_interval", "100",
                       "--mask_ratio", ratio, "--device", "cpu", "--out_dir", str(tmp_path / ratio))
        acc = metrics(tmp_path / ratio)[1][iters]["acc_mqar"]
        assert acc > 0.9, p.stdout


def test_sample_prints_decoded_examples(tiny_ckpt):
    p = run_script("sample.py", "--out_dir", str(tiny_ckpt), "--num_samples", "2", "--device", "cpu")
    assert "[mqar] | K" in p.stdout and "[needle] |" in p.stdout and "expected" in p.stdout
    p = run_script("sample.py", "--out_dir", str(tiny_ckpt), "--start", "| K3 7 ? K3", "--num_samples", "5",
                   "--max_new_tokens", "20", "--temperature", "3.0", "--top_k", "0", "--device", "cpu")
    outputs = [s for s in p.stdout.split("---------------\n") if s.strip()]
    assert len(outputs) == 5 and all(s.startswith("| K3 7 ? K3 ") for s in outputs)
    assert "[MASK]" not in p.stdout  # never sampled, even at a high temperature
    p = run_script("sample.py", "--out_dir", str(tiny_ckpt), "--start", "| hello", check=False)
    assert p.returncode != 0 and p.stderr.startswith("error: not in the task vocabulary: ['hello']")


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights(tmp_path):
    p = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py", *TINY,
                   "--max_iters", "4", "--eval_interval", "4", "--gradient_accumulation_steps", "2",
                   "--out_dir", str(tmp_path))
    assert "2 process(es)" in p.stdout
    assert "largest weight difference between the 2 processes: 0\n" in p.stdout
    assert (tmp_path / "ckpt.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--dtype", "bfloat16"], ["--dtype", "float16"], ["--compile", "true"]],
                         ids=["bf16-autocast", "fp16-gradient-scaler", "torch.compile"])
def test_the_gpu_code_paths_train_like_fp32_at_a_tiny_width(tmp_path, flags):
    """What a GPU run switches on, run on the CPU: bf16 autocast, fp16 with its gradient scaler, and
    torch.compile each follow the fp32 run's losses, keep fp32 weights, and save a checkpoint that
    loads into a plain GPT (no compile prefixes)."""
    args = [*TINY, "--max_iters", "30", "--eval_interval", "30", "--warmup_iters", "5"]
    run_script("train.py", *args, "--out_dir", str(tmp_path / "fp32"))
    run_script("train.py", *args, *flags, "--out_dir", str(tmp_path / "other"))
    (ref_train, ref_evals), (train, evals) = metrics(tmp_path / "fp32"), metrics(tmp_path / "other")
    assert max(abs(train[i] - ref_train[i]) for i in ref_train) < 0.02
    assert abs(evals[30]["val_loss"] - ref_evals[30]["val_loss"]) < 0.02
    assert train[29] < train[0] - 0.05  # and it did train
    if "--dtype" in flags:
        assert train != ref_train  # autocast did act
    ckpt = torch.load(tmp_path / "other" / "ckpt.pt", weights_only=False)
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values())
    GPT(GPTConfig(**ckpt["model_args"])).load_state_dict(ckpt["model"])


def write_char_dataset(folder, n_train=5000, n_val=500, vocab=20, top=None):
    """A nanoGPT-format character dataset: train.bin, val.bin (uint16) and meta.pkl."""
    import pickle
    import numpy as np
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    chars = [chr(ord("a") + i) for i in range(vocab)]
    for name, n in (("train", n_train), ("val", n_val)):
        ids = (np.arange(n) % vocab).astype(np.uint16)  # a b c ... t a b c ...: easy to learn
        ids[rng.integers(n, size=n // 20)] = rng.integers(vocab, size=n // 20)
        if top is not None:
            ids[-1] = top
        ids.tofile(folder / f"{name}.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": vocab, "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}, f)


@pytest.mark.slow
def test_trains_on_a_nanogpt_format_dataset_and_samples_text(tmp_path):
    write_char_dataset(tmp_path / "chars")
    out = tmp_path / "out"
    p = run_script("train.py", *TINY, "--dataset", str(tmp_path / "chars"), "--max_iters", "30",
                   "--eval_interval", "30", "--learning_rate", "1e-2", "--out_dir", str(out))
    train, evals = metrics(out)
    assert evals[30]["val_loss"] < evals[0]["val_loss"] - 0.5 and "acc" not in evals[30]
    assert p.stdout.strip().splitlines()[-1].startswith("final: clean val loss")
    ckpt = torch.load(out / "ckpt.pt", weights_only=False)
    assert ckpt["mask_token_id"] == 20 and ckpt["model_args"]["vocab_size"] == 21
    p = run_script("sample.py", "--out_dir", str(out), "--start", "abc", "--num_samples", "1",
                   "--max_new_tokens", "10", "--device", "cpu")
    assert p.stdout.startswith("abc") and len(p.stdout.split("\n")[0]) == 13


@pytest.mark.parametrize("kwargs,message", [
    ({"top": 25}, "holds token id 25, but the vocabulary has 20 ids"),
    ({"n_val": 10}, "val.bin holds 10 tokens, fewer than block_size + 2 = 34"),
])
def test_a_bad_dataset_is_a_one_line_error(tmp_path, kwargs, message):
    write_char_dataset(tmp_path / "bad", **kwargs)
    p = run_script("train.py", *TINY, "--dataset", str(tmp_path / "bad"), "--out_dir", str(tmp_path / "o"), check=False)
    assert p.returncode != 0 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1
