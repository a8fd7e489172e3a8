"""The repository root on sys.path; the --slow option (without it the slow tests are skipped); a tiny
checkpoint and a tiny grid, each trained once for the tests that read them; fixtures for faults (a
read-only folder, a full disk); this process's Ctrl-C handler restored after every test."""

import os
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helpers import TINY, run_script  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the slow tests (learning runs, grids, notebooks): what CI runs")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes of training; run with --slow (CI does)")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--slow"):
        skip = pytest.mark.skip(reason="slow: python -m pytest --slow runs it")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def keep_ctrl_c():
    """The scripts' main() set how Ctrl-C ends them (runtime.exit_on_ctrl_c, work_done); a test
    that calls one leaves this process's Ctrl-C as it was."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """out_dir of a tiny 4-iteration MEAP run, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("tiny")
    run_script("train.py", *TINY, "--max_iters", "4", "--eval_interval", "2", "--out_dir", str(out))
    return out


@pytest.fixture(scope="session")
def tiny_grid(tmp_path_factory):
    """(folder, stdout) of experiments/compare.py's tiny grid (NTP and MEAP 0.15, seeds 1 and 2),
    trained once for the tests that read it; copy the folder before changing anything in it."""
    out = tmp_path_factory.mktemp("tiny_grid") / "grid"
    p = run_script("experiments/compare.py", "--preset", "tiny", "--out", str(out))
    return out, p.stdout


@pytest.fixture
def read_only():
    """make(folder) turns folder read-only until the test ends: a read-only bind mount as root (whom
    permissions do not stop), chmod otherwise. Skips where neither makes it read-only."""
    undo = []

    def make(folder):
        folder = str(folder)
        if os.geteuid() == 0:
            quiet = dict(capture_output=True)
            if subprocess.run(["mount", "--bind", folder, folder], **quiet).returncode == 0:
                undo.append(lambda: subprocess.run(["umount", folder], **quiet))
                subprocess.run(["mount", "-o", "remount,bind,ro", folder], **quiet)
        else:
            os.chmod(folder, 0o555)
            undo.append(lambda: os.chmod(folder, 0o755))
        try:
            open(os.path.join(folder, ".probe"), "w").close()
            os.remove(os.path.join(folder, ".probe"))
        except OSError:
            return folder
        pytest.skip("cannot make a folder read-only here")

    yield make
    for f in reversed(undo):
        f()


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a 256 KB file system (a tmpfs, as root), for what a full disk does; skips elsewhere."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small file system here")
    yield folder
    subprocess.run(["umount", str(folder)], capture_output=True)
