"""The repository root on sys.path, and a tiny checkpoint shared by the tests that only read it."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helpers import TINY, run_script  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """out_dir of a tiny 4-iteration MEAP run, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("tiny")
    run_script("train.py", *TINY, "--max_iters", "4", "--eval_interval", "2", "--out_dir", str(out))
    return out
