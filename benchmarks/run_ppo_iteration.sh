#!/usr/bin/env bash
# Runs one full PPO iteration of the reference model on both sides, ours (benchmarks/ppo_iteration_bench.cpp)
# and the PyTorch form of the same step (benchmarks/peers/ppo_torch.py), on 1 and 2 threads, and prints
# one markdown table with the ratio (the one in docs/benchmarks.md). Build the benchmarks first:
#     cmake --preset benchmarks && cmake --build --preset benchmarks --target rlhf_benchmarks
# Usage: benchmarks/run_ppo_iteration.sh [path to ppo_iteration_bench]
set -euo pipefail
bench=$(realpath -m "${1:-build/benchmarks/benchmarks/ppo_iteration_bench}")
cd "$(dirname "$0")/.."
if [[ ! -x $bench ]]; then
  echo "run_ppo_iteration.sh: $bench not found; build the benchmarks first (see the comment at the top)" >&2
  exit 1
fi
# OpenMP threads sleep instead of spinning between parallel regions (see run_model_bench.sh).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
echo "| implementation | threads | batch (prompt + new tokens) | rollout s | learn s | iteration s | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|"
declare -A ours theirs
for threads in 1 2; do
  row=$(OMP_NUM_THREADS=$threads "$bench" "$threads")
  echo "$row"
  ours[$threads]=$(echo "$row" | awk -F'|' '{print $7}')
  if [[ -x /usr/bin/python3 ]]; then
    peer=$(/usr/bin/python3 benchmarks/peers/ppo_torch.py "$threads" || true)
    echo "$peer"
    theirs[$threads]=$(echo "$peer" | awk -F'|' '/PyTorch/ {print $7}')
  fi
done
for threads in 1 2; do
  if [[ -n ${theirs[$threads]:-} ]]; then
    awk -v a="${ours[$threads]}" -v b="${theirs[$threads]}" -v t="$threads" \
      'BEGIN { printf("%s thread(s): rlhf is %.1fx PyTorch on a full PPO iteration (target >= 3x)\n", t, b / a) }'
  fi
done
