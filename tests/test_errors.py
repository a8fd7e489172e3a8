"""Bad input, entry point by entry point: each case must end in one `error:` line naming the fix,
a non-zero exit, no traceback, and every file as it was. They run in this process (helpers.
run_inprocess) where the check stops the script before any training; test_safety.py has the
faults that need real runs (divergence, two runs at once, a full disk, Ctrl-C)."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, TINY, checksums, run_inprocess


@pytest.fixture
def run(tiny_ckpt, tmp_path):
    """A copy of a finished tiny run: what the cases must leave unchanged."""
    return shutil.copytree(tiny_ckpt, tmp_path / "run")


def expect_one_line(code, stderr, message):
    lines = stderr.strip().splitlines()
    assert code not in (0, None) and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]


def resolve(args, paths):
    return [paths.get(a, a).format(**paths) if isinstance(a, str) else a for a in args]


@pytest.fixture
def paths(run, tmp_path, read_only):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "syntax.py").write_text("max_iters = (\n")
    (tmp_path / "raises.py").write_text("max_iters = 1 / 0\n")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)))
    (tmp_path / "truncated").mkdir()
    (tmp_path / "truncated" / "ckpt.pt").write_bytes((run / "ckpt.pt").read_bytes()[:1000])
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copy(run / "ckpt.pt", ro / "ckpt.pt")
    return {"RUN": str(run), "FILE": str(tmp_path / "a_file"), "TMP": str(tmp_path), "RO": str(ro),
            "make_ro": read_only}


TRAIN = [  # (arguments, the error's text); RUN is a finished run, which every case must leave as it was
    (["--learning_rate", "nan"], "--learning_rate must be a number in [0, 1e9], got nan"),
    (["--learning_rate", "-1"], "--learning_rate must be a number in [0, 1e9], got -1.0"),
    (["--learning_rate", "inf"], "--learning_rate must be a number in [0, 1e9], got inf"),
    (["--learning_rate", "1e39"], "--learning_rate must be a number in [0, 1e9], got 1e+39"),
    (["--weight_decay", "nan"], "--weight_decay must be a number in [0, 1e9], got nan"),
    (["--beta1", "2"], "need --learning_rate > 0, --beta1 and --beta2 in [0, 1)"),
    (["--seed", "-1"], "--seed must be in [0, 2**31), got -1"),
    (["--seed", "2147483648"], "--seed must be in [0, 2**31)"),  # (2**31: the held-out data's seed)
    (["--gradient_accumulation_steps", "1e20"], "--gradient_accumulation_steps must be at least 1 (and below 2**31)"),
    (["--eval_examples", "1e9"], "--eval_examples must be at most 1,000,000"),
    (["--n_kv_head", "-2"], "need positive sizes"),
    (["--n_head", "3"], "n_embd divisible by n_head"),
    (["--init", "xavier"], "init must be one of ('nanomeap', 'official')"),
    (["{TMP}/syntax.py"], "syntax.py, line 1: '(' was never closed"),
    (["{TMP}/raises.py"], "raises.py raised ZeroDivisionError: division by zero"),
    (["--mask_ratoi", "0.1"], "unknown option --mask_ratoi (did you mean --mask_ratio?)"),
    (["--mask_ratio", "1.5"], "--mask_ratio: mask ratio must be in [0, 1)"),
    (["--mask_ratio", "-0.1"], "--mask_ratio: mask ratio must be in [0, 1)"),
    (["--mask_mode", "columns"], "--mask_mode: mask mode must be one of"),
    (["--corruption", "noise"], "--corruption: corruption must be one of"),
    (["--mask_mode", "shared", "--mask_queries", "false"], "--mask_mode: shared mode masks the same columns"),
    (["--dataset", "nope"], "data/nope/train.bin not found; prepare it with a data/*/prepare.py script with "
                            "--out_dir data/nope"),
    (["--block_size", "16", "--n_pairs", "8"], "mqar: 8 pairs and an offset of 0 need seq_len >= 18"),
    (["--eval_interval", "0"], "--eval_interval must be at least 1 (and below 2**31), got 0"),
    (["--device", "cuda:x"], "--device 'cuda:x' is not a device"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
    (["--out_dir", "FILE"], "--out_dir: {FILE} is a file, not a folder"),
    (["--out_dir", "{FILE}/sub"], "--out_dir: cannot write to {FILE}/sub (Not a directory)"),
    (["--out_dir", "RO"], "--out_dir: cannot write to {RO} (Read-only file system"),
    ([], "{RUN} already holds a run ({RUN}/ckpt.pt); continue it with --init_from resume, use another --out_dir, "
         "or replace it with --overwrite true"),
    (["--init_from", "RUN", "--sft", "ntp", "--mask_ratio", "0"], "--out_dir {RUN} holds the checkpoint this run "
                                                                  "starts from; give the fine-tuned model its own"),
    (["--init_from", "resume", "--out_dir", "{TMP}/nowhere"], "--init_from resume: no checkpoint at {TMP}/nowhere"),
    (["--init_from", "resume", "--out_dir", "{TMP}/truncated"], "cannot read {TMP}/truncated/ckpt.pt as a train.py "
                                                                "checkpoint"),
]


@pytest.mark.parametrize("args,message", TRAIN, ids=[" ".join(a) or "a fresh run" for a, _ in TRAIN])
def test_train_py(paths, args, message):
    if "RO" in args:
        paths["make_ro"](paths["RO"])
    args = resolve(args, paths)
    before = checksums(paths["TMP"])
    if "--out_dir" not in args:
        args += ["--out_dir", paths["RUN"]]
    code, _, err = run_inprocess("train.py", *TINY, "--max_iters", "8", *args)
    expect_one_line(code, err, message.format(**paths))
    assert checksums(paths["TMP"]) == before


SAMPLE = [
    (["--start", "FILE:{TMP}/missing.txt"], "--start FILE:{TMP}/missing.txt: cannot read it as UTF-8 text (No such"),
    (["--start", "FILE:{TMP}"], "cannot read it as UTF-8 text (Is a directory)"),
    (["--start", "FILE:{TMP}/binary.txt"], "cannot read it as UTF-8 text (invalid start byte)"),
    (["--temperature", "-1"], "--temperature must be 0 (greedy) or in [0.001, 1000], got -1.0"),
    (["--temperature", "nan"], "--temperature must be 0 (greedy) or in [0.001, 1000], got nan"),
    (["--temperature", "inf"], "--temperature must be 0 (greedy) or in [0.001, 1000], got inf"),
    (["--temperature", "1e-300"], "--temperature must be 0 (greedy) or in [0.001, 1000], got 1e-300"),
    (["--seed", "1e30"], "--seed must be in [0, 2**31)"),
    (["--top_k", "-5"], "top_k must be at least 1 (or None: all tokens), got -5"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
    (["--num_samples", "0"], "--num_samples and --max_new_tokens must be at least 1 (got 0 and 8)"),
    (["--max_new_tokens", "-3"], "--num_samples and --max_new_tokens must be at least 1 (got 3 and -3)"),
    (["--out_dir", "{TMP}/nowhere"], "no checkpoint at {TMP}/nowhere/ckpt.pt; train one first"),
    (["--out_dir", "{TMP}/truncated"], "cannot read {TMP}/truncated/ckpt.pt as a train.py checkpoint"),
]


@pytest.mark.parametrize("args,message", SAMPLE, ids=[" ".join(a) for a, _ in SAMPLE])
def test_sample_py(paths, args, message):
    before = checksums(paths["TMP"])
    code, _, err = run_inprocess("sample.py", "--out_dir", paths["RUN"], "--device", "cpu", *resolve(args, paths))
    expect_one_line(code, err, message.format(**paths))
    assert checksums(paths["TMP"]) == before


def test_niah_py_checks_its_output_folder_and_names_the_prepare_script(paths, tmp_path):
    from experiments import niah

    paths["make_ro"](paths["RO"])
    with pytest.raises(SystemExit) as e:  # before the evaluation, not after it
        niah.main(["--out_dir", paths["RO"], "--device", "cpu"])
    assert str(e.value).startswith(f"error: cannot write to {paths['RO']} (Read-only file system")
    ckpt = torch.load(os.path.join(paths["RUN"], "ckpt.pt"), weights_only=False)
    ckpt["meta"], ckpt["config"]["dataset"] = {"kind": "gpt2", "vocab_size": 50257}, str(tmp_path / "text")
    (tmp_path / "textrun").mkdir()
    torch.save(ckpt, tmp_path / "textrun" / "ckpt.pt")
    with pytest.raises(SystemExit) as e:  # an absolute dataset path: the path itself, not data//abs/...
        niah.main(["--out_dir", str(tmp_path / "textrun"), "--device", "cpu"])
    assert str(e.value).endswith(f"prepare it with python {tmp_path}/text/prepare.py")


def grid(tmp_path, run, truncate=None):
    """A compare.py-style folder holding copies of a tiny run as runs/r0.00_s1 and r0.15_s1."""
    g = tmp_path / "grid"
    for name in ("r0.00_s1", "r0.15_s1"):
        shutil.copytree(run, g / "runs" / name)
    if truncate:
        path = g / "runs" / truncate / "ckpt.pt"
        path.write_bytes(path.read_bytes()[:1000])
    return g


def test_attention_py_names_an_unreadable_checkpoint(run, tmp_path):
    from experiments import attention

    g = grid(tmp_path, run, truncate="r0.15_s1")
    before = checksums(g)
    with pytest.raises(SystemExit) as e:
        attention.main(["--grid", str(g), "--examples", "4"])
    assert str(e.value).startswith(f"error: {g}/runs/r0.15_s1: cannot read {g}/runs/r0.15_s1/ckpt.pt as a train.py")
    assert checksums(g) == before


COMPARE = [
    (["--out", "FILE"], "--out: {FILE} is a file, not a folder"),
    (["--out", "RO"], "--out: cannot write to {RO} (Read-only file system"),
    (["--ratios", ""], "cannot read '' as a comma-separated list of floats"),
    (["--ratios", "0,nan"], "cannot read '0,nan' as a comma-separated list of floats"),
    (["--ratios", "0,1.5"], "need --ratios in [0, 1) and --seeds >= 0"),
    (["--seeds", "-1"], "need --ratios in [0, 1) and --seeds >= 0"),
    (["--set", "n_kv_head=two"], "--set: --n_kv_head expects int (like 0), got 'two'"),
    (["--set", "n_layers=2"], "--set: unknown option --n_layers (did you mean --n_layer?)"),
]


@pytest.mark.parametrize("args,message", COMPARE, ids=[" ".join(a) for a, _ in COMPARE])
def test_compare_py(paths, args, message):
    if "RO" in args:
        paths["make_ro"](paths["RO"])
    before = checksums(paths["TMP"])
    args = resolve(args, paths)
    code, _, err = run_inprocess("experiments/compare.py", "--preset", "tiny", *(["--out", paths["TMP"] + "/g"] * ("--out" not in args)),
                                 *args)
    expect_one_line(code, err, message.format(**paths))
    assert checksums(paths["TMP"]) == before and not os.path.exists(paths["TMP"] + "/g")  # nothing written


def test_compare_py_names_an_unreadable_checkpoint_and_how_to_retrain(run, tmp_path):
    g = grid(tmp_path, run, truncate="r0.00_s1")
    code, _, err = run_inprocess("experiments/compare.py", "--preset", "tiny", "--ratios", "0", "--seeds", "1", "--out", str(g))
    expect_one_line(code, err, f"cannot read {g}/runs/r0.00_s1/ckpt.pt as a train.py checkpoint")
    assert err.strip().endswith(f"delete {g}/runs/r0.00_s1 to train that run again")


def test_compare_sft_py_refuses_a_file_as_out(paths):
    before = checksums(paths["TMP"])
    code, _, err = run_inprocess("experiments/compare_sft.py", "--preset", "tiny", "--out", paths["FILE"])
    expect_one_line(code, err, f"--out: {paths['FILE']} is a file, not a folder")
    assert checksums(paths["TMP"]) == before


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "need --steps >= 1, --warmup >= 0, --seconds > 0"),
    (["--seconds", "nan"], "need --steps >= 1, --warmup >= 0, --seconds > 0"),
    (["--dtype", "fp8"], "--dtype must be auto, float32, bfloat16 or float16"),
    (["--device", "cuda"], "--device cuda, but CUDA is not available here; use --device cpu"),
])
def test_bench_py(args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, out, err = run_inprocess("bench.py", *args)
    expect_one_line(code, err, message)
    assert out == ""


def test_bench_py_checks_its_out_folder_before_timing(paths):
    before = checksums(paths["TMP"])
    code, out, err = run_inprocess("bench.py", "--out", os.path.join(paths["FILE"], "cpu.md"))
    expect_one_line(code, err, f"--out: {paths['FILE']} is a file, not a folder")
    assert out == "" and checksums(paths["TMP"]) == before


def test_export_py_without_transformers_names_the_install(paths, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed: importing it fails
    before = checksums(paths["TMP"])
    code, out, err = run_inprocess("export.py", "--out_dir", paths["RUN"], "--to", os.path.join(paths["TMP"], "hf"))
    expect_one_line(code, err, "export.py needs Hugging Face transformers and safetensors: "
                               "pip install transformers safetensors")
    assert out == "" and checksums(paths["TMP"]) == before


@pytest.mark.slow
def test_torchrun_says_a_bad_setting_once(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "train.py", *TINY, "--n_kv_head", "3", "--gradient_accumulation_steps", "2",
                        "--out_dir", str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0 and not (tmp_path / "out").exists()
    errors = [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("error:")]
    assert errors == ["error: need positive sizes, n_embd divisible by n_head with an even head size (RoPE rotates "
                      "pairs), and n_head by n_kv_head; got n_embd=32, n_head=2, n_kv_head=3, n_layer=1, block_size=32"]
