"""The notebooks run top to bottom in a fresh kernel, headless, with the small settings that
NANOMEAP_SMALL=1 selects; and the committed copies are complete runs with their plots in them."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import ROOT

NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = ["01_masking.ipynb", "02_retrieval.ipynb", "03_attention.ipynb", "04_sft.ipynb"]
TRAINED_IN = {"02_retrieval.ipynb": "results/cpu", "03_attention.ipynb": "results/cpu", "04_sft.ipynb": "results/sft-cpu"}


def test_the_notebooks_are_the_listed_ones():
    assert sorted(f for f in os.listdir(NOTEBOOK_DIR) if f.endswith(".ipynb")) == NOTEBOOKS


@pytest.mark.parametrize("name", [NOTEBOOKS[0]] + [pytest.param(n, marks=pytest.mark.slow) for n in NOTEBOOKS[1:]])
def test_notebook_runs_headless_with_small_settings(name, monkeypatch):
    monkeypatch.setenv("NANOMEAP_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # no display; plt.show() draws nothing
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    # raises CellExecutionError, with the failing cell and its traceback, if any cell fails
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": NOTEBOOK_DIR}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)


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
