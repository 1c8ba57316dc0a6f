#!/usr/bin/env bash
# Builds the examples (release preset) and runs the main demo.
set -euo pipefail
cd "$(dirname "$0")/.."
source cmake/debian-deps.sh
rlhf_ensure_packages "${RLHF_BUILD_PACKAGES[@]}"

cmake --preset release -DRLHF_BUILD_TESTS=OFF >/dev/null
cmake --build --preset release --target algorithm_tour
./build/release/examples/01_algorithm_tour/algorithm_tour "$@"
