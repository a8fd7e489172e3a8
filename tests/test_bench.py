import os

import pytest

from helpers import ROOT, run_script


@pytest.mark.slow
def test_bench_prints_a_row_per_config_and_marks_what_it_cannot_measure(tmp_path):
    out = tmp_path / "bench" / "cpu.md"
    p = run_script("bench.py", "--configs", "default,gpt2", "--seconds", "0.2", "--steps", "1", "--warmup", "1",
                   "--device", "cpu", "--out", str(out))
    rows = [line for line in p.stdout.splitlines() if line.startswith("| ")]
    # --out keeps the table, headed by the command that measured it, its commit and its date
    saved = out.read_text().splitlines()
    # (run_script sets OMP_NUM_THREADS=1, which changes the figures, so the command names it)
    assert saved[0].startswith("`OMP_NUM_THREADS=1 python bench.py --configs default,gpt2 ") and " at commit " in saved[0]
    assert [line for line in saved if line.startswith("| ")] == rows
    assert rows[0].startswith("| config | params | batch | NTP ms/step | MEAP ms/step | NTP tok/s")
    default = rows[1].split(" | ")
    assert default[0] == "| default" and default[1] == "0.45M" and default[2] == "32x64"
    assert float(default[3]) > 0 and float(default[4]) > 0 and default[5].endswith("k")  # ms/step and tok/s
    assert rows[2].startswith("| gpt2 | 123.59M | 16x1024 | not measured: needs a CUDA GPU")
    p = run_script("bench.py", "--configs", "huge", check=False)
    assert p.returncode != 0 and p.stderr.strip() == "error: unknown config 'huge'; choose from default, larger, gpt2"


@pytest.mark.slow
def test_reference_times_another_model_py_at_the_same_shapes(tmp_path):
    """--reference FOLDER imports FOLDER/model.py (here: a copy of ours) and prints one row per shape."""
    (tmp_path / "model.py").write_text(open(os.path.join(ROOT, "model.py")).read())
    p = run_script("bench.py", "--reference", str(tmp_path), "--seconds", "0.05", "--steps", "1", "--warmup", "0",
                   "--device", "cpu")
    rows = [line.split(" | ") for line in p.stdout.splitlines() if line.startswith("| ") and "x" in line.split(" | ")[1]]
    assert [r[0] for r in rows] == ["| 2x128, 4 heads", "| 4x128, 4 heads"] and [r[1] for r in rows] == ["32x64", "12x256"]
    assert all(r[2] == r[3] for r in rows)  # the same model: the same parameters
    p = run_script("bench.py", "--reference", str(tmp_path), "--compile", "true", "--seconds", "0.05", "--steps", "1",
                   "--warmup", "1", "--device", "cpu")  # both compiled (the warm-up step compiles)
    assert "| compile True |" in p.stdout.splitlines()[0]
    assert len([line for line in p.stdout.splitlines() if line.startswith("| 2x128") or line.startswith("| 4x128")]) == 2
    p = run_script("bench.py", "--reference", str(tmp_path / "nowhere"), check=False)
    assert p.returncode == 1 and "no model.py there" in p.stderr
