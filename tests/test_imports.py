"""Imports run one way: core (model.py, mask.py) -> data and tasks -> scripts -> experiments. A data
prepare script writes its files without loading the model or the checkpoints."""

import ast
import glob
import os
import subprocess
import sys

from helpers import ROOT

PROJECT = {os.path.basename(f)[:-3] for f in glob.glob(os.path.join(ROOT, "*.py"))}


def imported(path):
    """The top-level module names a file imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_import_tokenizer_loads_neither_the_model_nor_the_checkpoints_nor_torch():
    code = "import sys, tokenizer; print(sorted(m for m in ('model', 'checkpoint', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_leaf_and_core_modules_import_nothing_of_the_project():
    for leaf in ("atomic_files.py", "random_streams.py", "runtime.py", "configurator.py", "model.py", "mask.py"):
        assert not imported(os.path.join(ROOT, leaf)) & PROJECT, leaf


def test_configurator_parses_settings_and_nothing_else():
    """No exits, devices or precision in it (runtime.py's), nor torch: its functions parse and check."""
    import configurator
    assert not imported(os.path.join(ROOT, "configurator.py")) & {"torch", "signal", "runtime"}
    assert not {"die", "pick_device", "precision", "check_memory", "exit_on_ctrl_c"} & set(dir(configurator))


def test_the_data_layer_raises_and_leaves_the_exit_to_the_scripts(tmp_path):
    import pytest
    import tokenizer
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="is a file; give a folder"):
        tokenizer.check_out_dir(str(tmp_path / "a_file"))
    with pytest.raises(ValueError, match="cannot read --input"):
        tokenizer.read_text(str(tmp_path / "missing.txt"))


def test_no_data_prepare_script_imports_the_model_or_the_checkpoints():
    scripts = glob.glob(os.path.join(ROOT, "data", "*", "prepare.py"))
    assert len(scripts) >= 4
    for script in scripts + [os.path.join(ROOT, "tokenizer.py")]:
        assert not imported(script) & {"model", "checkpoint"}, script


def test_sample_py_does_not_import_the_batch_builder():
    assert "batches" not in imported(os.path.join(ROOT, "sample.py"))


def test_an_experiment_run_as_a_file_says_how_to_run_it():
    """`python experiments/NAME.py` (nanoGPT's habit) gets one line with the module command, not a traceback."""
    for name in ("compare", "text", "digest"):
        p = subprocess.run([sys.executable, f"experiments/{name}.py", "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 1 and p.stdout == ""
        assert p.stderr == f"error: run it from the repository root as a module: python -m experiments.{name} --help\n"
