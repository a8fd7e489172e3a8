#!/usr/bin/env bash
# Retrain seed 1 of results/cpu at a commit, as compare.py trains it (the cpu preset's settings, one
# thread unless THREADS is set), in a git worktree, then score it with today's held-out suite:
#   bash results/reproducibility/retrain.sh COMMIT RATIO [THREADS [EVAL_THREADS]]   # e.g. 17312cd 0.15
# Prints a table row: the final training loss, the clean val loss, and the suite's needle, 2x pairs
# and kv accuracy (evaluated with EVAL_THREADS torch threads, default 1).
set -euo pipefail
commit=$1; ratio=$2; threads=${3:-1}; eval_threads=${4:-1}
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d)"
git -C "$root" worktree add -q -f "$work/tree" "$commit"
trap 'git -C "$root" worktree remove --force "$work/tree"; rm -rf "$work"' EXIT
(cd "$work/tree" && OMP_NUM_THREADS=$threads python train.py --task mix --block_size 64 --batch_size 32 \
  --n_layer 2 --n_head 4 --n_kv_head 4 --n_embd 128 --n_pairs 4 --n_needles 4 --max_iters 1000 --warmup_iters 100 \
  --eval_interval 100 --eval_iters 5 --eval_examples 200 --device cpu --dtype float32 --mask_ratio "$ratio" \
  --seed 1 --out_dir "$work/run" > "$work/train.log")
cd "$root" && OMP_NUM_THREADS=$eval_threads python - "$work/run" "$commit" "$ratio" "$threads" "$eval_threads" <<'PY'
import json, sys
from checkpoint import load_model
from experiments import compare
run, commit, ratio, threads, eval_threads = sys.argv[1:]
rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
model, cfg, _ = load_model(run)
s = compare.suite(model, cfg, 400)
loss = [r["loss"] for r in rows if "loss" in r][-1]
print(f"| {commit} | {ratio} | {threads} | {eval_threads} | {loss:.6f} | {rows[-1]['val_loss']:.6f} | {s['needle']:.4f} | {s['mqar_2x']:.4f} | {s['kv']:.4f} |")
PY
