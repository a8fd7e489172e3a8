import pytest
import torch

from configurator import ConfigError, parse
from runtime import pick_device
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


def test_a_config_file_that_does_not_run_is_one_line(tmp_path):
    cfg = tmp_path / "broken.py"
    cfg.write_text("max_iters = 10\nmask_ratio = (\n")
    with pytest.raises(ConfigError, match="broken.py, line 2: '.' was never closed"):
        parse([str(cfg)], DEFAULTS)
    cfg.write_text("import os\nmax_iters = int(os.environ['NO_SUCH_VARIABLE'])\n")
    with pytest.raises(ConfigError, match="broken.py raised KeyError: 'NO_SUCH_VARIABLE'"):
        parse([str(cfg)], DEFAULTS)


def test_pick_device_resolves_auto_and_refuses_what_is_not_here():
    assert pick_device("cpu") == "cpu" and pick_device("auto") in ("cuda", "mps", "cpu")
    for name, message in [("tpu", "is not a device"), ("cuda:x", "is not a device"), ("meta", "runs on cpu, cuda or mps")]:
        with pytest.raises(ValueError, match=message):
            pick_device(name)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here; use --device cpu"):
            pick_device("cuda:1")


def test_help_lists_every_setting_with_its_comment():
    p = run_script("train.py", "--help")
    assert "--mask_ratio 0.15" in p.stdout and "plain next-token prediction" in p.stdout
    assert "--mask_mode 'per_sequence'" in p.stdout
    # the comment of the settings block, not that of a later line that reassigns the setting
    assert "--n_kv_head 0                key/value heads; 0 = n_head" in p.stdout
    settings = [line for line in p.stdout.splitlines() if line.startswith("  --")]
    assert len(settings) > 40 and all(len(line.split()) >= 3 for line in settings)  # each with its comment
