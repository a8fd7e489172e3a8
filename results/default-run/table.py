"""Print the default run's table (results/README.md section 8) from the two runs' metrics.jsonl:
python results/default-run/table.py"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def evals(run):
    """{step: eval row} of one run's metrics.jsonl."""
    with open(os.path.join(HERE, run, "metrics.jsonl")) as f:
        return {r["iter"]: r for r in map(json.loads, f) if "val_loss" in r}


ntp, meap = evals("ntp"), evals("meap")
print("| step | NTP val loss | NTP acc mqar / needle | MEAP val loss | MEAP acc mqar / needle |")
print("|---:|---:|---:|---:|---:|")
for step in sorted(ntp):
    if step:
        print(" | ".join([f"| {step}"] + [f"{r['val_loss']:.4f} | {r['acc_mqar']:.3f} / {r['acc_needle']:.3f}"
                                          for r in (ntp[step], meap[step])]) + " |")
