"""
What every notebook imports first, in one line: `from nb_setup import SMALL, show`.

- Works from the repository root, wherever Jupyter started the kernel, so that the notebooks
  import the project's modules and find results/ and train.py as the scripts do.
- SMALL: True when the test suite runs the notebook (it sets NANOMEAP_SMALL=1): tiny settings,
  seconds instead of minutes.
- show(): token rows printed one under the other, each column as wide as its widest token.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(ROOT)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
SMALL = os.environ.get("NANOMEAP_SMALL") == "1"


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
