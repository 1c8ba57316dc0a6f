#!/usr/bin/env bash
# Builds and runs the whole test suite: the release preset, then the ASan+UBSan preset.
#   bash tests/run.sh            # both presets (what CI runs)
#   bash tests/run.sh release    # one preset
set -euo pipefail
cd "$(dirname "$0")/.."
source cmake/debian-deps.sh
rlhf_ensure_packages "${RLHF_BUILD_PACKAGES[@]}"

presets=("$@")
[ ${#presets[@]} -eq 0 ] && presets=(release debug-asan)
for preset in "${presets[@]}"; do
  echo "== rlhf tests: preset ${preset} ($(date +%T)) =="
  cmake --workflow --preset "${preset}"
  if [ "${preset}" = release ]; then
    # The benchmarks are not part of the default build; compile them so they never rot (not timed here).
    cmake --build --preset release --target rlhf_benchmarks
  fi
done
echo "== rlhf tests: done ($(date +%T)) =="
