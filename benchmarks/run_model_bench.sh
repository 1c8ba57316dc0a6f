#!/usr/bin/env bash
# Runs the Llama model benchmark (benchmarks/model_bench.cpp) and its PyTorch counterpart
# (benchmarks/peers/llama_torch.py) for stories260K and the ~10M configuration on 1 and 2 threads,
# and prints one markdown table (the one in docs/benchmarks.md). Build the benchmarks first:
#     cmake --preset benchmarks && cmake --build --preset benchmarks --target rlhf_benchmarks
# Usage: benchmarks/run_model_bench.sh [path to model_bench]
set -euo pipefail
bench=$(realpath -m "${1:-build/benchmarks/benchmarks/model_bench}")
cd "$(dirname "$0")/.."
if [[ ! -x $bench ]]; then
  echo "run_model_bench.sh: $bench not found; build the benchmarks first (see the comment at the top)" >&2
  exit 1
fi
# OpenMP threads sleep instead of spinning between parallel regions: on a machine shared with other
# work, spinning threads steal the cores the benchmark measures.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
echo "| implementation | model | parameters | threads | batch | train tokens/s (fwd+bwd) | forward tokens/s | sampling tokens/s (batch 1) | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|"
for model in stories260K 10M; do
  for threads in 1 2; do
    OMP_NUM_THREADS=$threads "$bench" "$model" "$threads"
    if [[ -x /usr/bin/python3 ]]; then
      /usr/bin/python3 benchmarks/peers/llama_torch.py "$model" "$threads" || true
    fi
  done
done
