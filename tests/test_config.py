import pytest

from configurator import ConfigError, parse
from helpers import run_script

DEFAULTS = {"mask_ratio": 0.15, "max_iters": 2000, "compile": False, "device": "auto", "mask_mode": "per_sequence"}


def test_both_flag_forms_and_type_conversion():
    assert parse(["--mask_ratio", "0.2", "--max_iters=300"], DEFAULTS) == {"mask_ratio": 0.2, "max_iters": 300}
    got = parse(["--mask_ratio=0", "--max_iters", "1e3", "--device", "cpu"], DEFAULTS)
    assert got == {"mask_ratio": 0.0, "max_iters": 1000, "device": "cpu"}
    assert isinstance(got["mask_ratio"], float) and isinstance(got["max_iters"], int)
    assert parse(["--mask-ratio", "-0.5"], DEFAULTS) == {"mask_ratio": -0.5}  # dashes ok; range is checked later


@pytest.mark.parametrize("args,value", [(["--compile", "false"], False), (["--compile=True"], True),
                                        (["--compile", "0"], False), (["--compile"], True),
                                        (["--compile", "--max_iters", "5"], True)])
def test_booleans(args, value):
    assert parse(args, DEFAULTS)["compile"] is value


def test_config_file_then_flags(tmp_path):
    cfg = tmp_path / "small.py"
    cfg.write_text("import math\nmax_iters = 10 * 50\nmask_ratio = 0\n_private = 3\n")
    assert parse([str(cfg)], DEFAULTS) == {"max_iters": 500, "mask_ratio": 0.0}
    assert parse([str(cfg), "--max_iters", "7"], DEFAULTS)["max_iters"] == 7  # later wins


@pytest.mark.parametrize("args,message", [
    (["--mask_ratoi", "0.1"], "unknown option --mask_ratoi (did you mean --mask_ratio?)"),
    (["--zzz", "1"], "unknown option --zzz (see --help)"),
    (["--max_iters", "ten"], "--max_iters expects int"),
    (["--max_iters", "2.5"], "--max_iters expects int"),
    (["--compile", "maybe"], "--compile expects bool"),
    (["--mask_ratio"], "--mask_ratio needs a value"),
    (["oops"], "unexpected argument 'oops'"),
    (["missing.py"], "config file not found: missing.py"),
])
def test_errors_name_the_fix(args, message):
    with pytest.raises(ConfigError) as e:
        parse(args, DEFAULTS)
    assert message in str(e.value)


def test_config_file_with_an_unknown_or_mistyped_setting(tmp_path):
    cfg = tmp_path / "bad.py"
    cfg.write_text("max_iter = 10\n")
    with pytest.raises(ConfigError, match="unknown setting 'max_iter' .did you mean --max_iters"):
        parse([str(cfg)], DEFAULTS)
    cfg.write_text("max_iters = 'many'\n")
    with pytest.raises(ConfigError, match="expects int"):
        parse([str(cfg)], DEFAULTS)


@pytest.mark.parametrize("args,message", [
    (["--mask_ratoi", "0.1"], "error: unknown option --mask_ratoi (did you mean --mask_ratio?)"),
    (["--mask_ratio", "1.5"], "error: --mask_ratio: mask ratio must be in [0, 1)"),
    (["--mask_ratio", "-0.1"], "error: --mask_ratio: mask ratio must be in [0, 1)"),
    (["--mask_mode", "columns"], "error: --mask_mode must be one of"),
    (["--dataset", "nope"], "error: data/nope/train.bin not found; prepare it with: python data/nope/prepare.py"),
    (["--init_from", "resume", "--out_dir", "/nonexistent/x"], "error: --init_from resume: no checkpoint at"),
    (["--device", "cuda:x"], "error: --device 'cuda:x' is not a device"),
    (["--block_size", "16", "--n_pairs", "8"], "error: mqar: 8 pairs and an offset of 0 need seq_len >= 18"),
    (["--eval_interval", "0"], "error: --eval_interval must be at least 1, got 0"),
])
def test_train_py_bad_input_is_one_line_without_traceback(args, message):
    p = run_script("train.py", *args, "--device", "cpu", check=False) if "--device" not in args else \
        run_script("train.py", *args, check=False)
    assert p.returncode != 0
    assert p.stderr.strip().startswith(message), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_help_lists_every_setting_with_its_comment():
    p = run_script("train.py", "--help")
    assert "--mask_ratio 0.15" in p.stdout and "plain next-token prediction" in p.stdout
    assert "--mask_mode 'per_sequence'" in p.stdout
