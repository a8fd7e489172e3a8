"""
What every notebook imports first, in one line: `from nb_setup import SMALL, COLORS, show, train`.

- Works from the repository root, wherever Jupyter started the kernel, so that the notebooks
  import the project's modules and find results/ and train.py as the scripts do.
- SMALL: True when the test suite runs the notebook (it sets NANOMEAP_SMALL=1): tiny settings,
  seconds instead of minutes.
- COLORS: the one pair of colours for NTP and MEAP in every notebook's plots.
- show(): token rows printed one under the other, each column as wide as its widest token.
- train(): runs train.py, the command printed, as you would from a terminal.
"""

import os
import shlex
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(ROOT)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
SMALL = os.environ.get("NANOMEAP_SMALL") == "1"
COLORS = {"NTP": "tab:blue", "MEAP": "tab:orange"}  # readable side by side, and for most colour-blind readers


def show(rows, width=16, title=None):
    """Print rows = {name: list of token strings} aligned by position, `width` positions per block."""
    if title:
        print(title)
    n, pad = max(len(r) for r in rows.values()), max(len(name) for name in rows)
    for s in range(0, n, width):
        cols = range(s, min(s + width, n))
        w = [max(len(r[i]) if i < len(r) else 0 for r in rows.values()) for i in cols]
        for name, r in rows.items():
            print(name.rjust(pad), " ".join((r[i] if i < len(r) else "").rjust(k) for i, k in zip(cols, w)))
        print()


def train(runs):
    """Train runs = {out_dir: {flag: value}} with `python train.py --flag=value ... --out_dir=out_dir`,
    all at once, one CPU thread each (two 1-thread runs on 2 cores beat one 2-thread run), each
    logging to out_dir/train.log. Prints every command. A run whose checkpoint has reached its
    max_iters is kept as it is; one that was stopped is resumed (--init_from=resume); a folder
    holding a run with other settings is refused."""
    from checkpoint import load_model  # here, not at the top: notebook 01 needs no checkpoints

    procs = {}
    for out, flags in runs.items():
        done = -1
        if os.path.exists(os.path.join(out, "ckpt.pt")):
            _, saved, done = load_model(out)  # the run's settings, and the step it was saved at
            other = [f"{k} {saved[k]}, not {v}" for k, v in flags.items()
                     if k in saved and k != "init_from" and not _same(saved[k], v)]
            if other:
                raise ValueError(f"{out} holds a run trained with other settings ({'; '.join(other)}): "
                                 f"delete that folder, or train into another")
        if done >= int(flags["max_iters"]):
            print(f"kept (finished before): {out}")
            continue
        cmd = ["python", "train.py"] + [f"--{k}={v}" for k, v in flags.items()] + [f"--out_dir={out}"]
        cmd += ["--init_from=resume"] if done >= 0 else []
        print("$", shlex.join(cmd))
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "train.log"), "a") as log:
            procs[out] = subprocess.Popen([sys.executable] + cmd[1:], stdout=log, stderr=subprocess.STDOUT,
                                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        for out, p in procs.items():
            if p.wait() != 0:
                raise RuntimeError(f"train.py failed: see {out}/train.log")
    except KeyboardInterrupt:  # the notebook's stop button stops the runs too: train.py ends cleanly on Ctrl-C
        for p in procs.values():
            p.send_signal(signal.SIGINT)
            p.wait()
        raise
    print(f"trained {len(procs)}, kept {len(runs) - len(procs)}")


def _same(a, b):
    """A saved setting and a flag's value, alike: 0 and 0.0, True and "true"."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a).lower() == str(b).lower()
