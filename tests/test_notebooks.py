"""The notebooks and their exercises' solutions run top to bottom in a fresh kernel, headless, with
the small settings that NANOMEAP_SMALL=1 selects, and then every cell once more, last to first, in
the same kernel (a student re-runs cells: a name that a later cell rebinds fails here); and the
committed copies are complete runs with their plots in them."""

import os
import re

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from helpers import ROOT

NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = ["01_masking.ipynb", "02_retrieval.ipynb", "03_attention.ipynb", "04_sft.ipynb"]
SOLUTIONS = [os.path.join("solutions", n.replace(".ipynb", "_solutions.ipynb")) for n in NOTEBOOKS]
TRAINED_IN = {"02_retrieval.ipynb": "notebooks/runs", "03_attention.ipynb": "notebooks/runs", "04_sft.ipynb": "notebooks/runs"}


def test_the_notebooks_are_the_listed_ones():
    assert sorted(f for f in os.listdir(NOTEBOOK_DIR) if f.endswith(".ipynb")) == NOTEBOOKS
    assert sorted(f for f in os.listdir(os.path.join(NOTEBOOK_DIR, "solutions")) if f.endswith(".ipynb")) == \
        [os.path.basename(s) for s in SOLUTIONS]


def run_twice(path):
    """Run every code cell of the notebook at path in one fresh kernel started in its folder, first
    to last, then once more last to first; raises CellExecutionError (naming the cell, with its
    traceback) at the first that fails."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(path)}})
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    with client.setup_kernel():
        for i, cell in code + code[::-1]:
            client.execute_cell(cell, i)
    return [c for _, c in code]


@pytest.mark.parametrize("name", [NOTEBOOKS[0], SOLUTIONS[0]] + [pytest.param(n, marks=pytest.mark.slow)
                                                                 for n in NOTEBOOKS[1:] + SOLUTIONS[1:]])
def test_notebook_runs_headless_then_backwards_with_small_settings(name, monkeypatch):
    monkeypatch.setenv("NANOMEAP_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # no display; plt.show() draws nothing
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code = run_twice(os.path.join(NOTEBOOK_DIR, name))
    assert all(c.execution_count is not None for c in code)


def test_a_cell_that_uses_a_name_a_later_cell_rebinds_fails_the_backwards_run(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("def meap(): return 1"),
                                         nbformat.v4.new_code_cell("print(meap())"),
                                         nbformat.v4.new_code_cell("meap = 0.5")])
    nbformat.write(nb, tmp_path / "t.ipynb")
    with pytest.raises(CellExecutionError, match="not callable"):
        run_twice(str(tmp_path / "t.ipynb"))


def test_every_notebook_opens_with_why_and_its_time_and_ends_with_takeaways_and_exercises():
    for name in NOTEBOOKS:
        nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
        first = nb.cells[0].source
        assert nb.cells[0].cell_type == "markdown" and "## Why" in first, name
        assert re.search(r"\d+ (seconds|minutes?) on 2 CPU cores", first), f"{name}: its time, up front"
        md = [c.source for c in nb.cells if c.cell_type == "markdown"]
        showed = [i for i, s in enumerate(md) if s.startswith("## What this notebook showed")]
        exercises = [i for i, s in enumerate(md) if s.startswith("## Exercises")]
        assert showed and exercises and showed[0] < exercises[0], name
        tries = sum(s.count("**Try this") for s in md[exercises[0]:])
        assert tries >= 3, f"{name}: {tries} exercises"
        sol = nbformat.read(os.path.join(NOTEBOOK_DIR, SOLUTIONS[NOTEBOOKS.index(name)]), as_version=4)
        assert sum(c.source.count("**Try this") for c in sol.cells if c.cell_type == "markdown") == tries, name


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_a_clean_top_to_bottom_run_with_plots(name):
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    # executed once, in order, in a fresh kernel: no hidden state from cells run out of order
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2, f"{name} shows {len(images)} plots"
    if name in TRAINED_IN:  # trained (or loaded) the cpu preset's runs, not the tests' tiny ones
        assert any(f"runs in {TRAINED_IN[name]}\n" in o.get("text", "") for o in outputs)
