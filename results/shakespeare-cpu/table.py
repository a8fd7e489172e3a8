"""Print the Shakespeare CPU preset's table (results/README.md section 10) from the two runs'
metrics.jsonl: python results/shakespeare-cpu/table.py"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def val_loss(run):
    """{step: clean val loss} of one run's metrics.jsonl."""
    with open(os.path.join(HERE, run, "metrics.jsonl")) as f:
        return {r["iter"]: r["val_loss"] for r in map(json.loads, f) if "val_loss" in r}


ntp, meap = val_loss("ntp"), val_loss("meap")
print("| step | NTP clean val loss | MEAP 0.15 clean val loss |")
print("|---:|---:|---:|")
for step in sorted(ntp):
    print(f"| {step} | {ntp[step]:.4f} | {meap[step]:.4f} |")
