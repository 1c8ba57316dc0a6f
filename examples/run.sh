#!/usr/bin/env bash
# Builds the examples (release preset) and runs the main demo: the three InstructGPT steps (SFT, reward
# model, PPO, and a second round of steps 2 and 3) on positive-sentiment story continuations with the
# bundled stories260K model. About 3 minutes on 2 cores; pass --quick for a shorter run. Extra arguments go
# to the demo (see examples/instructgpt/main.cpp). The other examples: build/release/examples/*/.
set -euo pipefail
cd "$(dirname "$0")/.."
source cmake/debian-deps.sh
rlhf_ensure_packages "${RLHF_BUILD_PACKAGES[@]}"

cmake --preset release -DRLHF_BUILD_TESTS=OFF >/dev/null
cmake --build --preset release --target instructgpt
./build/release/examples/instructgpt/instructgpt --out build/instructgpt_out "$@"
