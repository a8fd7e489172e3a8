"""No run is lost without a word: divergence stops the run before it reaches a checkpoint, a
finished run is never replaced unasked, one run per folder, a full disk is one line and no partial
file, Ctrl-C stops train.py and compare.py at once and a rerun continues exactly."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import atomic_files
import checkpoint
from helpers import ROOT, TINY, as_command, checksums, run_inprocess, run_script


def start(*args):
    """`python args` from the repository root, running in the background."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, *as_command(args[0]), *args[1:]], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=120):
    t = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t < timeout, f"no {path} after {timeout} s"
        time.sleep(0.05)


def weights(path):
    return torch.load(path, weights_only=False)["model"]


# --- checkpoint.py: run folders ---

def test_save_refuses_non_finite_weights_and_keeps_the_old_checkpoint(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    good = {"model": {"w": torch.ones(3), "step": torch.tensor(1)}}
    checkpoint.save_checkpoint(good, path)
    before = checksums(path)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="refusing to save non-finite weights"):
            checkpoint.save_checkpoint({"model": {"w": torch.tensor([1.0, bad, 0.0])}}, path)
    assert checksums(path) == before and os.listdir(tmp_path) == ["ckpt.pt"]


def test_load_names_what_is_wrong_with_the_file(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint at"):
        checkpoint.load_checkpoint(str(tmp_path / "none.pt"))
    checkpoint.save_checkpoint({"model": {"w": torch.ones(2)}, "model_args": {}, "config": {}}, str(tmp_path / "c.pt"))
    (tmp_path / "t.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:100])
    torch.save({"something": "else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=f"cannot read {tmp_path}/t.pt as a train.py checkpoint .* may be truncated"):
        checkpoint.load_checkpoint(str(tmp_path / "t.pt"))
    with pytest.raises(ValueError, match=f"{tmp_path}/other.pt is not a train.py checkpoint"):
        checkpoint.load_checkpoint(str(tmp_path / "other.pt"))


def test_claim_locks_a_folder_and_takes_over_the_lock_of_a_killed_run(tmp_path):
    folder = str(tmp_path / "run")
    holder = start("-c", f"import checkpoint, time; checkpoint.claim({folder!r}); print('held', flush=True); "
                         f"time.sleep(60)")
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(ValueError, match=f"{folder} is in use by another run .pid {holder.pid}."):
        checkpoint.claim(folder)
    holder.kill()  # like kill -9: no chance to release; the kernel drops the lock, the file stays
    holder.wait()
    (tmp_path / "run" / f".ckpt.pt.{holder.pid}.abcd1234{atomic_files.TMP_SUFFIX}").write_text("half a checkpoint")
    (tmp_path / "run" / "notes.tmp").write_text("the user's own file")
    note = checkpoint.claim(folder)
    assert note.endswith(f"the run of pid {holder.pid} ended without releasing it (killed?); taking it over")
    assert sorted(os.listdir(folder)) == [atomic_files.LOCK, "notes.tmp"]  # the killed run's temporary is gone, not the user's
    checkpoint.release(folder)
    assert os.listdir(folder) == ["notes.tmp"]


# --- train.py ---

@pytest.mark.parametrize("eval_interval,grad_clip,message", [
    ("100", "0", "error: the loss is nan at iter"),  # caught in the step
    ("100", "1", "(gradient norm nan) at iter"),  # by the clipped gradient's norm
    pytest.param("1", "0", "error: the clean val loss is nan at iter", marks=pytest.mark.slow),  # by the evaluation
])
def test_divergence_stops_the_run_and_keeps_the_last_finite_checkpoint(tiny_ckpt, tmp_path, eval_interval,
                                                                        grad_clip, message):
    run = shutil.copytree(tiny_ckpt, tmp_path / "run")  # finished at iter 4
    before = checksums(run / "ckpt.pt")
    p = run_script("train.py", "--init_from", "resume", "--out_dir", str(run), "--max_iters", "40",
                   "--learning_rate", "1e4", "--warmup_iters", "0", "--grad_clip", grad_clip,
                   "--eval_interval", eval_interval, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert message in lines[0] and "the run diverged; lower --learning_rate (it is 10000)" in lines[0]
    ckpt = checkpoint.load_checkpoint(str(run / "ckpt.pt"))
    assert checkpoint.all_finite(ckpt["model"]) and ckpt["iter_num"] < 40
    assert lines[0].endswith(f"{run}/ckpt.pt (iter {ckpt['iter_num']}) is kept: continue with python train.py "
                             f"--init_from resume --out_dir {run}")
    assert sorted(os.listdir(run)) == ["ckpt.pt", "metrics.jsonl"]
    if eval_interval == "100":  # no evaluation since the resume: the checkpoint is the one we started from
        assert checksums(run / "ckpt.pt") == before


def test_overwrite_true_replaces_a_finished_run(tiny_ckpt, tmp_path):
    run = shutil.copytree(tiny_ckpt, tmp_path / "run")
    run_script("train.py", *TINY, "--max_iters", "2", "--eval_interval", "2", "--overwrite", "true",
               "--out_dir", str(run))
    assert torch.load(run / "ckpt.pt", weights_only=False)["iter_num"] == 2
    assert [json.loads(line)["iter"] for line in open(run / "metrics.jsonl")] == [0, 0, 1, 2]


def test_resume_drops_a_half_written_metrics_line(tiny_ckpt, tmp_path):
    run = shutil.copytree(tiny_ckpt, tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iter": 4, "lo')  # a kill in the middle of a write
    p = run_script("train.py", "--init_from", "resume", "--max_iters", "6", "--out_dir", str(run))
    assert f"{run}/metrics.jsonl: dropped a half-written line" in p.stdout
    assert [json.loads(line)["iter"] for line in open(run / "metrics.jsonl")][-2:] == [5, 6]


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(small_disk):
    out = small_disk / "run"  # the default model's checkpoint (~5 MB) cannot fit in 256 KB
    p = run_script("train.py", "--max_iters", "2", "--eval_interval", "1", "--eval_examples", "10", "--eval_iters",
                   "1", "--device", "cpu", "--out_dir", str(out), check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith(f"error: could not write {out}/ckpt.pt: the disk is full (0.")
    assert lines[0].endswith("no checkpoint was saved (the first comes at iter 1)")
    assert sorted(os.listdir(out)) == ["metrics.jsonl"]  # no ckpt.pt.tmp filling the disk, no lock


def test_one_run_per_folder_and_ctrl_c_then_resume_is_exact(tmp_path):
    run = str(tmp_path / "run")
    flags = [*TINY, "--eval_interval", "50", "--lr_decay_iters", "100000", "--warmup_iters", "10"]
    first = start("train.py", *flags, "--max_iters", "100000", "--out_dir", run)
    wait_for(os.path.join(run, "ckpt.pt"), first)
    # a second run into the same folder is refused while the first lives
    code, _, err = run_inprocess("train.py", *flags, "--max_iters", "10", "--seed", "2", "--overwrite", "true",
                                 "--out_dir", run)
    assert code == 1 and err.strip() == f"error: --out_dir: {run} is in use by another run (pid {first.pid}); " \
                                        f"wait for it to end, or use another folder"
    # Ctrl-C: at once, one line that names the resume command, exit code 130, the lock released
    t = time.time()
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=30)
    assert time.time() - t < 10 and first.returncode == 130 and "Traceback" not in err, err
    saved = torch.load(os.path.join(run, "ckpt.pt"), weights_only=False)["iter_num"]
    assert err.strip().splitlines() == [
        f"error: interrupted at iter {err.split('at iter ')[1].split(';')[0]}; {run}/ckpt.pt (iter {saved}) is kept: "
        f"continue with python train.py --init_from resume --out_dir {run}"]
    assert not os.path.exists(os.path.join(run, atomic_files.LOCK))
    train_rows = [row["iter"] for row in map(json.loads, open(os.path.join(run, "metrics.jsonl"))) if "loss" in row]
    assert train_rows == list(range(len(train_rows)))  # one run's rows, none of the refused one's
    assert torch.load(os.path.join(run, "ckpt.pt"), weights_only=False)["config"]["seed"] == 1337
    # the resumed run ends where an uninterrupted one does
    run_script("train.py", "--init_from", "resume", "--max_iters", str(saved + 20), "--out_dir", run)
    run_script("train.py", *flags, "--max_iters", str(saved + 20), "--out_dir", str(tmp_path / "whole"))
    a, b = weights(os.path.join(run, "ckpt.pt")), weights(tmp_path / "whole" / "ckpt.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- compare.py ---

@pytest.mark.slow
def test_ctrl_c_stops_a_grid_at_once_and_the_rerun_gives_the_uninterrupted_results(tmp_path):
    args = ["experiments/compare.py", "--preset", "tiny", "--ratios", "0,0.15", "--seeds", "1", "--examples", "10",
            "--set", "max_iters=300", "eval_interval=100", "log_interval=100"]
    grid = tmp_path / "grid"
    p = start(*args, "--out", str(grid))
    wait_for(grid / "runs" / "r0.00_s1" / "ckpt.pt", p)  # the first run is half-way
    t = time.time()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert time.time() - t < 10 and p.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines() == [f"error: interrupted; the finished runs are kept in {grid}; run the same command "
                                        f"again to continue (a half-trained run resumes from its last checkpoint)"]
    assert not list(grid.glob(f"**/{atomic_files.LOCK}")) and not (grid / "runs.json").exists()  # every run stopped cleanly
    assert "error: interrupted at iter" in (grid / "runs" / "r0.00_s1" / "train.log").read_text()  # not finished
    run_script(*args, "--out", str(grid), timeout=300)
    run_script(*args, "--out", str(tmp_path / "whole"), timeout=300)
    runs = [json.loads((g / "runs.json").read_text())["runs"] for g in (grid, tmp_path / "whole")]
    assert runs[0] == runs[1]


# --- text.py's long grid (issue 32) ---

@pytest.mark.slow
def test_an_interrupted_text_grid_continues_without_retraining_its_finished_stages(tmp_path):
    """Ctrl-C after the first stage of the first run; the same command continues: that stage's probes
    are not redone, training resumes from its checkpoint, and the grid ends as an uninterrupted one."""
    from helpers import tiny_text_run
    varied = "".join(chr(33 + (7 * i + i // 90) % 90) for i in range(40_000))  # 90 distinct bytes: spans of 32
    data = tiny_text_run(tmp_path, varied, 96, 2).parent / "data"
    args = ["experiments/text.py", "--preset", "tiny-long", "--ratios", "0,0.15", "--seeds", "1",
            "--set", f"dataset={data}"]
    grid, first = tmp_path / "grid", tmp_path / "grid" / "runs" / "r0.00_s1"
    p = start(*args, "--out", str(grid))
    wait_for(first / "beyond_3.json", p)  # stage 1 of 2 trained and probed
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert not (grid / "runs.json").exists() and not (first / "probes_6.json").exists()
    kept = checksums(first / "probes_3.json", first / "beyond_3.json")
    stamps = {f: os.stat(f).st_mtime_ns for f in kept}
    run_script(*args, "--out", str(grid), timeout=300)
    assert checksums(*stamps) == kept and {f: os.stat(f).st_mtime_ns for f in stamps} == stamps  # not redone
    assert "resuming from" in (first / "train.log").read_text()  # the second stage went on from step 3
    run_script(*args, "--out", str(tmp_path / "whole"), timeout=300)
    runs = [json.loads((g / "runs.json").read_text())["runs"] for g in (grid, tmp_path / "whole")]
    assert runs[0] == runs[1] and all(len(r["beyond"]) == 2 for r in runs[0])
    md = (grid / "results.md").read_text()
    assert "MEAP 0.15 - NTP by stage" in md and "The delay" in md and (grid / "over_training.png").exists()
