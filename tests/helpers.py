"""Shared by the tests: running the scripts as a user would, on a model small enough to train in
seconds, and a brute-force oracle for the synthetic tasks."""

import os
import subprocess
import sys

import torch

import tasks

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


def oracle_answers(x, query):
    """Brute force: for each query position, find the query key's first occurrence (its
    key-value pair or needle) and read the token after it."""
    out = torch.full(x.shape, -1)
    for b, t in query.nonzero().tolist():
        earlier = [s for s in range(t) if x[b, s] == x[b, t]]
        assert earlier, "a query key must occur before its query"
        out[b, t] = x[b, earlier[0] + 1]
    return out


def oracle_model(x):
    """Logits that put all weight on the oracle's answer wherever x is a query, so evaluate()
    must score 1.0."""
    logits = torch.zeros(*x.shape, tasks.VOCAB_SIZE)
    is_query = torch.zeros_like(x, dtype=torch.bool)
    for b in range(x.shape[0]):  # a query key is a key seen before
        seen = set()
        for t, tok in enumerate(x[b].tolist()):
            if tok in tasks.KEYS and tok in seen:
                is_query[b, t] = True
            seen.add(tok)
    ans = oracle_answers(x, is_query)
    logits[is_query, ans[is_query]] = 10.0
    return logits
