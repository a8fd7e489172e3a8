"""Running the scripts as a user would, on a model small enough to train in seconds."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a model and a run small enough for a test to train in seconds on one CPU core
TINY = ["--n_layer", "1", "--n_head", "2", "--n_kv_head", "2", "--n_embd", "32", "--block_size", "32",
        "--batch_size", "4", "--n_pairs", "2", "--n_needles", "2", "--eval_iters", "1",
        "--eval_examples", "10", "--log_interval", "1", "--device", "cpu"]


def run_script(*args, check=True, timeout=300):
    """Run `python <args>` from the repository root; return the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p
