import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

import tasks
from experiments import common, compare
from helpers import ROOT, oracle_model, run_inprocess, run_script


def test_mean_sd_and_paired_ci_against_hand_computed_values():
    assert common.mean_sd([1, 2, 3]) == (2.0, 1.0)
    assert common.mean_sd([5]) == (5.0, 0.0)
    m, sd = common.mean_sd([1, float("nan"), 3])
    assert (m, sd) == (2.0, pytest.approx(math.sqrt(2)))
    # differences 1, 2, 3: mean 2, sd 1, t(2 df) = 4.303, half-width 4.303 / sqrt(3)
    d, h = common.paired_ci([2, 4, 6], [1, 2, 3])
    assert d == 2.0 and h == pytest.approx(4.303 / math.sqrt(3))
    # ten pairs: t(9 df) = 2.262
    a, b = np.arange(10.0), np.zeros(10)
    d, h = common.paired_ci(a, b)
    assert d == 4.5 and h == pytest.approx(2.262 * a.std(ddof=1) / math.sqrt(10))
    # identical runs: no difference and no spread; a single pair has no interval
    assert common.paired_ci([0.5, 0.7], [0.5, 0.7]) == (0.0, 0.0)
    d, h = common.paired_ci([1.0], [0.0])
    assert d == 1.0 and math.isnan(h)


def test_steps_to_reads_the_first_evaluation_over_the_target():
    rows = [{"iter": 0, "acc": 0.0}, {"iter": 100, "lr": 1.0}, {"iter": 200, "acc": 0.95}, {"iter": 300, "acc": 0.5}]
    assert common.steps_to(rows, 0.9) == 200
    assert math.isnan(common.steps_to(rows, 0.99))


def test_suite_scores_an_oracle_1_everywhere():
    cfg = {"block_size": 48, "n_pairs": 3, "n_needles": 3}
    res = compare.suite(oracle_model, cfg, n_examples=30)
    accs = {k: v for k, v in res.items() if k != "filler_excess"}
    assert set(accs) >= {"needle", "needle_2x", "needle_mq", "mqar", "mqar_2x", "kv", "kv_p5", "needle_L16"}
    assert all(v == 1.0 for v in accs.values()), accs


@pytest.mark.slow
def test_filler_loss_of_the_true_bigram_model_sits_on_the_entropy_floor():
    ring_pos = {int(tasks.FILLER[w]): s for s, w in enumerate(tasks.RING)}  # token -> ring position

    def bigram_model(x):  # log-probabilities of the filler language wherever x is a filler word
        logits = torch.full((*x.shape, tasks.VOCAB_SIZE), -30.0)
        for (b, t), tok in np.ndenumerate(x.numpy()):
            if tok in ring_pos:
                for step, p in zip(tasks.STEPS, tasks.STEP_PROBS):
                    nxt = tasks.FILLER[tasks.RING[(ring_pos[tok] + step) % len(tasks.RING)]]
                    logits[b, t, nxt] = math.log(p)
        return logits, None

    cfg = {"block_size": 64, "n_pairs": 2, "n_needles": 2}
    res = compare.suite(bigram_model, cfg, n_examples=200)
    assert abs(res["filler_excess"]) < 0.02  # ~10k filler transitions: the sample entropy is close


@pytest.mark.slow
def test_grid_runs_resumes_and_reports(tiny_grid, tmp_path):
    out, stdout = tiny_grid
    assert "[4/4]" in stdout and "grid eta" in stdout
    md = open(os.path.join(out, "results.md")).read()
    assert "| 0.00 (NTP) |" in md and "| 0.15 |" in md and "MEAP - NTP" in md
    assert os.path.getsize(os.path.join(out, "results.png")) > 10_000
    runs = sorted(os.listdir(os.path.join(out, "runs")))
    assert runs == ["r0.00_s1", "r0.00_s2", "r0.15_s1", "r0.15_s2"]
    # the NTP and MEAP runs of a seed differ only in mask_ratio
    cfg = {r: torch.load(os.path.join(out, "runs", r, "ckpt.pt"), weights_only=False)["config"] for r in runs}
    assert {k: v for k, v in cfg["r0.00_s1"].items() if k not in ("mask_ratio", "out_dir")} == \
           {k: v for k, v in cfg["r0.15_s1"].items() if k not in ("mask_ratio", "out_dir")}

    # a finished grid is reused as it is
    p = run_script("experiments/compare.py", "--preset", "tiny", "--out", str(out))
    assert "reusing 4 finished run(s)" in p.stdout and "[1/" not in p.stdout
    assert open(os.path.join(out, "results.md")).read() == md

    # the per-run data: every run's numbers, and the report is a pure function of them
    data = json.load(open(os.path.join(out, "runs.json")))
    assert data["commands"] == [f"python -m experiments.compare --preset tiny --out {out}"]
    assert sorted((r["mask_ratio"], r["seed"]) for r in data["runs"]) == [(0.0, 1), (0.0, 2), (0.15, 1), (0.15, 2)]
    assert all({"needle", "mqar_2x", "kv_p3", "val_loss", "steps_to_90", "evals"} <= set(r) for r in data["runs"])
    alone = tmp_path / "alone"  # no checkpoints, no suite.json: the settings and runs.json alone
    alone.mkdir()
    for f in ("grid.json", "runs.json"):
        shutil.copy(os.path.join(out, f), alone / f)
    run_script("experiments/compare.py", "--report", str(alone))
    assert open(alone / "results.md").read() == md


@pytest.mark.slow
def test_against_pairs_two_grids_and_copies_identical_ntp_runs(tmp_path):
    """--against DIR adds this grid minus DIR's at each ratio, paired by seed. A grid that differs
    only in how MEAP masks takes DIR's NTP runs instead of training them again (they are the same
    model). Extra seeds at some ratios give rows of their own size."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run_script("experiments/compare.py", "--preset", "tiny", "--out", a, "--seeds", "1")
    p = run_script("experiments/compare.py", "--preset", "tiny", "--out", b, "--seeds", "1", "--set", "mask_queries=false",
                   "--against", a)
    assert "copied 1 NTP run(s)" in p.stdout and "[1/1] mask_ratio 0.15" in p.stdout
    md = open(os.path.join(b, "results.md")).read()
    assert "This grid minus [`a`](../a/results.md) (settings that differ here: mask_queries=false)" in md
    assert "| 0.00 (1 seeds) | +0.000 (one seed, no interval) |" in md  # the copied NTP run against itself
    assert json.load(open(os.path.join(b, "runs.json")))["against"] == "../a"
    run_script("experiments/compare.py", "--preset", "tiny", "--out", a, "--seeds", "2", "--ratios", "0.15")
    md = open(os.path.join(a, "results.md")).read()
    assert "| 0.00 (NTP) (1 seeds) |" in md and "| 0.15 (2 seeds) |" in md
    assert md.startswith(f"`python -m experiments.compare --preset tiny --out {a} --seeds 1`\n`python -m experiments.compare")
    # a grid with other model settings trains its own NTP runs
    p = run_script("experiments/compare.py", "--preset", "tiny", "--out", str(tmp_path / "c"), "--seeds", "1", "--ratios", "0",
                   "--set", "n_embd=16", "--against", a)
    assert "copied" not in p.stdout and "[1/1] mask_ratio 0.00" in p.stdout


def test_every_committed_result_is_a_function_of_its_per_run_data(tmp_path):
    """Each results/ folder's results.md (and attention.md) is what its report writes from its
    runs.json (attention.json) alone, byte for byte: nothing in them was edited or left stale."""
    from experiments import attention, compare_sft, pilots, text
    results = os.path.join(ROOT, "results")
    shutil.copytree(results, tmp_path / "results", ignore=shutil.ignore_patterns("runs", "base", "*.png"))
    checked = 0
    for name in sorted(os.listdir(results)):
        folder = tmp_path / "results" / name
        if not (folder / "grid.json").exists():
            continue
        grid = json.load(open(folder / "grid.json"))
        committed = (folder / "results.md").read_text()
        (folder / "results.md").unlink()
        if "pilots" in grid:  # a map of single runs: its per-run data is one NAME.json per pilot
            pilots.report(str(folder))
            assert (folder / "results.md").read_text() == committed, f"results/{name}/results.md"
            checked += 1
            continue
        assert (folder / "runs.json").exists(), f"results/{name} has no per-run data"
        assert os.path.getsize(folder / "runs.json") < 1_000_000
        (compare_sft.report if "base" in grid else text.report if "stages" in grid else compare.report)(str(folder))
        assert (folder / "results.md").read_text() == committed, f"results/{name}/results.md"
        if (folder / "attention.json").exists():
            committed = (folder / "attention.md").read_text()
            attention.report(str(folder))
            assert (folder / "attention.md").read_text() == committed, f"results/{name}/attention.md"
        checked += 1
    assert checked >= 9
    # folders of single runs made by hand (the text pilot, the default run, the Shakespeare preset): the
    # table quoted in their README (or results/README.md) is what their table.py prints from their data
    tables = sorted(name for name in os.listdir(results) if os.path.exists(os.path.join(results, name, "table.py")))
    assert {"text-pilot", "default-run", "shakespeare-cpu"} <= set(tables)
    for name in tables:
        p = run_script(f"results/{name}/table.py")
        readme = os.path.join(results, name, "README.md")
        quoted = open(readme if os.path.exists(readme) else os.path.join(results, "README.md")).read()
        assert p.stdout in quoted, f"results/{name}: the table its table.py prints is not the one quoted"
    # the README's transcript of its first command: lines of that run's committed output
    readme = open(os.path.join(ROOT, "README.md")).read()
    transcript = readme[readme.index("```\nMEAP, mask_ratio 0.15"):].split("```")[1].strip().splitlines()
    log = open(os.path.join(results, "default-run", "meap", "train.log")).read().splitlines()
    assert len(transcript) > 5 and all(line in log for line in transcript if line != "...")


@pytest.mark.slow
def test_a_run_interrupted_half_way_resumes_exactly(tmp_path):
    out = str(tmp_path / "grid")
    run_script("experiments/compare.py", "--preset", "tiny", "--out", out, "--ratios", "0.15", "--seeds", "1")
    # a run interrupted half-way resumes from its checkpoint and ends exactly where it would have
    run = os.path.join(out, "runs", "r0.15_s1")
    before = json.load(open(os.path.join(run, "suite.json")))
    shutil.rmtree(run)
    settings = compare.PRESETS["tiny"]["train"]  # stop at 3 of 6 steps, on the 6-step lr schedule
    cmd = common.train_cmd(run, 0.15, 1, dict(settings, max_iters=3, lr_decay_iters=6))
    run_script(*cmd[1:])
    p = run_script("experiments/compare.py", "--preset", "tiny", "--out", out, "--ratios", "0.15", "--seeds", "1")
    assert "[1/1]" in p.stdout
    assert "resuming from" in open(os.path.join(run, "train.log")).read()
    assert json.load(open(os.path.join(run, "suite.json"))) == before


@pytest.mark.parametrize("args,msg", [
    (["--preset", "huge"], "unknown preset 'huge'; choose one of cpu, gpu, tiny"),
    (["--set", "mask_ratio=0.1"], "--set mask_ratio is chosen by the comparison"),
    (["--set", "n_layer"], "--set takes KEY=VALUE"),
    (["--set", "n_head=3"], "--set: need positive sizes, n_embd divisible by n_head"),  # train.py's own check
    (["--ratios", "0,x"], "cannot read '0,x' as a comma-separated list of floats"),
    (["--epochs", "3"], "unrecognized arguments: --epochs 3"),
    (["--examples", "0"], "--jobs and --examples must be at least 1")])
def test_bad_input_is_one_clear_line(tmp_path, args, msg):
    code, _, err = run_inprocess("experiments/compare.py", *args, "--out", str(tmp_path / "g"))
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith(f"error: {msg}"), err
    assert not os.path.exists(tmp_path / "g")  # refused before anything is written


@pytest.mark.slow
def test_a_failed_run_stops_the_grid_and_a_folder_keeps_one_configuration(tmp_path):
    # a run that fails stops the grid with one line naming its log (here: its folder holds another file as its log)
    os.makedirs(tmp_path / "bad" / "runs" / "r0.00_s1")
    (tmp_path / "bad" / "runs" / "r0.00_s1" / "metrics.jsonl").write_text("not train.py's\n")
    p = run_script("experiments/compare.py", "--preset", "tiny", "--out", str(tmp_path / "bad"), check=False)
    assert p.returncode != 0 and p.stderr.strip().splitlines()[-1].startswith("error: train.py failed for")
    assert "train.log" in p.stderr
    out = str(tmp_path / "g")
    run_script("experiments/compare.py", "--preset", "tiny", "--out", out, "--ratios", "0", "--seeds", "1")
    p = run_script("experiments/compare.py", "--preset", "tiny", "--out", out, "--set", "n_embd=64", check=False)
    assert p.returncode != 0 and "holds results of other settings" in p.stderr


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p == "gpu" else p
                                    for p in sorted(compare.PRESETS)])
def test_every_preset_makes_valid_evaluation_settings(preset):
    cfg = compare.PRESETS[preset]["train"]
    res = compare.suite(oracle_model, cfg, n_examples=2)
    assert res["needle"] == res["mqar_2x"] == res["kv"] == 1.0


@pytest.mark.slow
def test_gpu_preset_trains_at_a_tiny_width_on_cpu(tmp_path):
    # the GPU preset's contexts, pairs and needles, on a model small enough for a CPU test
    tiny = ["n_layer=1", "n_head=2", "n_kv_head=2", "n_embd=32", "batch_size=2", "max_iters=2",
            "eval_interval=2", "eval_iters=1", "eval_examples=4", "device=cpu"]
    p = run_script("experiments/compare.py", "--preset", "gpu", "--ratios", "0,0.15", "--seeds", "1", "--examples", "4",
                   "--out", str(tmp_path), "--set", *tiny)
    assert "[2/2]" in p.stdout and os.path.exists(tmp_path / "results.png")


def test_verdicts_follow_the_interval_and_the_better_side():
    assert common.verdict(0.1, 0.05, "higher") == "gain" and common.verdict(0.1, 0.05, "lower") == "loss"
    assert common.verdict(-0.1, 0.05, "higher") == "loss" and common.verdict(-0.1, 0.05, "lower") == "gain"
    assert common.verdict(0.1, 0.1, "higher") == "no measurable difference"  # the interval touches 0
    assert common.verdict(0.1, 0.2) == "no measurable difference"
    assert (common.verdict(0.1, 0.05), common.verdict(-0.1, 0.05)) == ("higher", "lower")  # no better side
    assert common.verdict(0.1, float("nan"), "higher") == "no interval"
    a = {s: {"acc": v} for s, v in zip((1, 2, 3), (0.9, 0.8, float("nan")))}
    b = {s: {"acc": 0.5} for s in (1, 2, 3)}
    col = [("acc", "accuracy", "{:.3f}", "higher")]
    assert common.diff_cells(a, b, col, [1, 2]) == ["+0.350 [-0.285, 0.985] no measurable difference"]
    assert common.diff_cells(a, b, col, [1, 3]) == ["+0.400 (one seed, no interval)"]  # a NaN is "never"
    assert common.diff_cells(a, b, col, [3]) == ["n/a"]
    # a difference reads the same in every table: signed, its bounds as the column writes values
    assert common.diff_cell([0.1, 0.2], [0.3, 0.3], "{:+.2f}") == "-0.15 [-0.79, 0.49] no measurable difference"
    assert common.mean_cell([0.1, float("nan"), 0.3], "{:+.2f}") == "+0.20 ± 0.14 (1 never)"
    assert common.header("row", ["a", "b"]) == "| row | a | b |\n|---|---|---|\n"


def test_the_readme_summaries_are_what_the_data_give():
    """Every digest table of README.md and results/README.md ("In short", "Beside the paper", the
    README's copies of the reports) is what experiments/digest.py writes from the per-run data."""
    from experiments import digest
    found = []
    for name in digest.FILES:
        md = open(os.path.join(ROOT, name)).read()
        found += [m.group(2) for m in digest.BLOCK.finditer(md)]
        assert md.count("<!-- digest: ") == len(digest.BLOCK.findall(md)), f"{name}: a digest block the script skips"
        assert digest.render(md) == md, f"{name}: run python -m experiments.digest"
    assert sorted(found) == sorted(digest.TABLES)  # every table stands once, and every block has one
    with pytest.raises(SystemExit, match="unknown digest table 'nope'"):
        digest.render("<!-- digest: nope -->\n<!-- end digest -->")
