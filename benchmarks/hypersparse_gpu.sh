#!/bin/bash
# The hypersparse.py grid in parallel on one GPU (JAX backend, no TensorFlow
# needed): one dense warm-up per model, then one process per (model,
# sparsity) that loads it, then a merge. Usage (from the repo root):
#   SEED=0 OUT=/tmp/out bash benchmarks/hypersparse_gpu.sh
# then merge several seeds into benchmarks/results with
#   python benchmarks/hypersparse.py --out hypersparse --merge /tmp/out*/hypersparse_seed*.json
set -u
SEED=${SEED:-0}
OUT=${OUT:-/tmp/hypersparse_out}
mkdir -p "$OUT" /tmp/hs_res_$SEED
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
B="python3 benchmarks/hypersparse.py --seed $SEED --warm-weights /tmp/hs_warm_$SEED --results-dir /tmp/hs_res_$SEED"
for m in lenet300 lenet5; do $B --models $m --sparsities --out warm_$m > "$OUT/warm_$m.log" 2>&1 & done
wait
for m in lenet300 lenet5; do for s in 0.9 0.95 0.98 0.99 0.995; do
  $B --models $m --sparsities $s --out part_${m}_$s > "/tmp/hs_res_$SEED/${m}_$s.log" 2>&1 &
done; done
wait
cat /tmp/hs_res_$SEED/*.log | grep -E "^lenet|rror" > "$OUT/grid.log"
python3 benchmarks/hypersparse.py --results-dir "$OUT" --out hypersparse_seed$SEED \
  --merge /tmp/hs_res_$SEED/part_*.json > /dev/null 2>&1
cat "$OUT/grid.log" "$OUT/hypersparse_seed$SEED.md"
