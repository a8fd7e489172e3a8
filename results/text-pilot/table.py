"""Print this folder's table from its per-stage probe data: python results/text-pilot/table.py"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "metrics.jsonl")) as f:
    val = {r["iter"]: r["val_loss"] for r in map(json.loads, f) if "val_loss" in r}
print("| step | bytes seen | clean val loss | copying, random span: 1st / 2nd copy (gaps 16, 64, 128) "
      "| copying, text span: 1st / 2nd copy (gaps 16, 64, 128) | passkey (best cell) |")
print("|---:|---:|---:|---|---|---:|")
for S in (250, 500, 1000, 2000, 3000, 4000):
    with open(os.path.join(HERE, f"probes_{S}.json")) as f:
        d = json.load(f)
    cells = [", ".join(f"{v['acc_first']:.3f} / {v['acc_second']:.3f}" for v in d["copying"][k].values())
             for k in ("random", "text")]
    print(f"| {S} | {S * 16 * 256 / 1e6:.1f}M | {val[S]:.4f} | {cells[0]} | {cells[1]} "
          f"| {max(p['acc'] for p in d['passkey']):.2f} |")
