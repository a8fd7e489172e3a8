"""
The experiments, apart from the core: NTP vs MEAP over a grid (compare.py), MEAP-SFT (compare_sft.py),
the paper's attention metrics (attention.py), needle in a haystack on text (niah.py), and what they
share (common.py). Run them from the repository root: python -m experiments.compare --help.
"""
