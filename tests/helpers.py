"""Shared by the tests: running the scripts as a user would, on a model small enough to train in
seconds, and a brute-force oracle for the synthetic tasks."""

import contextlib
import hashlib
import io
import os
import runpy
import signal
import subprocess
import sys
import warnings

import torch

import checkpoint
import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a model and a run small enough for a test to train in seconds on one CPU core
TINY = ["--n_layer", "1", "--n_head", "2", "--n_kv_head", "2", "--n_embd", "32", "--block_size", "32",
        "--batch_size", "4", "--n_pairs", "2", "--n_needles", "2", "--eval_iters", "1",
        "--eval_examples", "10", "--log_interval", "1", "--device", "cpu"]


def as_command(script):
    """The arguments that run a script as its docstring says: an experiment as a module
    (experiments/NAME.py: -m experiments.NAME), any other file by its path."""
    name = script[:-3].replace("/", ".") if script.startswith("experiments/") and script.endswith(".py") else None
    return ["-m", name] if name else [script]


def run_script(script, *args, check=True, timeout=300):
    """Run `python <script> <args>` from the repository root (as_command); return the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    args = (script, *args)
    p = subprocess.run([sys.executable, *as_command(script), *args[1:]], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def tiny_text_run(folder, text, block_size, max_iters):
    """Prepare `text` as a byte dataset in folder/data and train a tiny model on it into
    folder/out, as a user would; returns the out folder."""
    src, data, out = folder / "in.txt", folder / "data", folder / "out"
    src.write_text(text, encoding="utf-8")
    run_script("data/shakespeare_byte/prepare.py", "--input", str(src), "--out_dir", str(data))
    run_script("train.py", "--dataset", str(data), "--n_layer", "1", "--n_head", "2", "--n_kv_head", "2",
               "--n_embd", "32", "--block_size", str(block_size), "--batch_size", "4", "--max_iters", str(max_iters),
               "--eval_interval", "2", "--eval_iters", "1", "--device", "cpu", "--out_dir", str(out))
    return out


def run_inprocess(script, *args):
    """Run `python <script> <args>` inside this process: the same code path, without the 2-3 s of
    a fresh Python and torch, for the checks that stop before training. Returns (exit code,
    stdout, stderr); an uncaught exception (a traceback) propagates and fails the test."""
    argv, cwd, handler = sys.argv, os.getcwd(), signal.getsignal(signal.SIGINT)
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        os.chdir(ROOT)
        sys.argv = [script, *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                how = as_command(script)
                if how[0] == "-m":
                    with warnings.catch_warnings():  # the module is imported already (by a test): run it again
                        warnings.filterwarnings("ignore", "'experiments.", RuntimeWarning)
                        runpy.run_module(how[1], run_name="__main__", alter_sys=True)
                else:
                    runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
            except SystemExit as e:  # as Python does at exit: a message goes to stderr with code 1
                code = e.code if isinstance(e.code, int) or e.code is None else print(e.code, file=sys.stderr) or 1
    finally:
        sys.argv = argv
        os.chdir(cwd)
        signal.signal(signal.SIGINT, handler)  # train.py installs its own Ctrl-C handler
        checkpoint.release()  # what atexit would do for a claimed out_dir
    return code or 0, out.getvalue(), err.getvalue()


def checksums(*paths):
    """{file: md5} of every file under paths (files or folders): "left unchanged" is equality."""
    sums = {}
    for path in map(str, paths):
        files = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        for f in files:
            with open(f, "rb") as fh:
                sums[f] = hashlib.md5(fh.read()).hexdigest()
    return sums


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
    """(logits, None), as GPT.forward returns them, with all weight on the oracle's answer wherever
    x is a query, so evaluate() must score 1.0."""
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
    return logits, None
