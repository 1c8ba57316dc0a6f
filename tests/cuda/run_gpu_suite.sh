#!/usr/bin/env bash
# Everything that needs a GPU, in one command on a GPU machine: builds the CUDA test programs (and the CUDA
# benchmark when Google Benchmark is available) for the machine's GPU, runs the `gpu` ctest label (the CUDA
# backend's conformance suite and kernels, the SFT / reward-model / PPO pipeline on the GPU, the NCCL
# communicator on one rank) and the CUDA hot-path benchmark, and leaves every log in one folder.
#
#   bash tests/cuda/run_gpu_suite.sh            # build, test, bench
#   bash tests/cuda/run_gpu_suite.sh build|test|bench
#   bash tests/cuda/run_gpu_suite.sh pack-benchmark DIR
#
# It needs CMake (3.23+), the CUDA toolkit (nvcc, cuBLAS, CCCL) and a host C++20 compiler; not Catch2,
# Eigen or MPI (a build without Catch2 builds the gpu tests alone). NCCL is taken from the CUDA install,
# NCCL_ROOT, or the `nvidia-nccl-cu*` Python wheel. Google Benchmark is taken from the system or from
# RLHF_BENCHMARK_PREFIX: on a machine that has none (the benchmark is then skipped), copy Debian's with
# `pack-benchmark DIR` on a machine that has it and point RLHF_BENCHMARK_PREFIX at that folder.
#
# Results (logs, nvidia-smi, the benchmark's JSON) go to $RLHF_GPU_RESULTS, else $OUT when set, else
# build/gpu-suite/results. The build is build/gpu-suite, for the GPU of this machine (`native`; sm_90 when
# no GPU answers). The exit status is the tests'. BENCHMARK_MIN_TIME (default 0.2s) is the benchmark's
# --benchmark_min_time.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
root=$PWD
build=$root/build/gpu-suite
results=${RLHF_GPU_RESULTS:-${OUT:-$build/results}}
step=${1:-all}

say() { printf 'rlhf gpu suite: %s\n' "$*"; }

pack_benchmark() {
  local dest=$1 lib
  lib=$(ls /usr/lib/x86_64-linux-gnu/libbenchmark.so.*.*.* 2>/dev/null | head -n1)
  if [[ -z $lib || ! -d /usr/include/benchmark || ! -d /usr/lib/x86_64-linux-gnu/cmake/benchmark ]]; then
    say "no Google Benchmark to pack here (Debian: apt-get install libbenchmark-dev)"
    return 1
  fi
  mkdir -p "$dest/include" "$dest/lib/x86_64-linux-gnu/cmake"
  cp -r /usr/include/benchmark "$dest/include/"
  cp -a /usr/lib/x86_64-linux-gnu/libbenchmark.so* /usr/lib/x86_64-linux-gnu/libbenchmark_main.a \
    "$dest/lib/x86_64-linux-gnu/"
  cp -r /usr/lib/x86_64-linux-gnu/cmake/benchmark "$dest/lib/x86_64-linux-gnu/cmake/"
  say "Google Benchmark packed into $dest ($(du -sh "$dest" | cut -f1)); use RLHF_BENCHMARK_PREFIX=$dest"
}

# NCCL from the Python wheel, when the CUDA install has none: its folder (include/, lib/).
wheel_nccl() {
  local py
  for py in python3 /usr/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    "$py" -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null && return 0
  done
  return 1
}

nccl_root=${NCCL_ROOT:-}
if [[ -z $nccl_root && ! -e /usr/local/cuda/include/nccl.h ]]; then
  nccl_root=$(wheel_nccl || true)
fi
if [[ -n $nccl_root ]]; then
  export LD_LIBRARY_PATH=$nccl_root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
if [[ -n ${RLHF_BENCHMARK_PREFIX:-} ]]; then
  export LD_LIBRARY_PATH=$RLHF_BENCHMARK_PREFIX/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi

do_build() {
  local arch=90 prefix_path=()
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then arch=native; fi
  [[ -n ${RLHF_BENCHMARK_PREFIX:-} ]] && prefix_path=(-DCMAKE_PREFIX_PATH="$RLHF_BENCHMARK_PREFIX")
  say "configuring $build (CUDA architectures: $arch${nccl_root:+, NCCL_ROOT=$nccl_root})"
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DRLHF_ENABLE_CUDA=ON -DRLHF_BUILD_TESTS=ON \
    -DRLHF_BUILD_EXAMPLES=OFF -DRLHF_HEADER_CHECK=OFF -DRLHF_INSTALL=OFF -DRLHF_BUILD_BENCHMARKS=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" ${nccl_root:+-DNCCL_ROOT="$nccl_root"} "${prefix_path[@]}" \
    >"$results/configure.log" 2>&1 || { tail -n 30 "$results/configure.log"; return 1; }
  # The NCCL test and the benchmark exist when NCCL and Google Benchmark were found (Makefiles or Ninja).
  local targets=(rlhf_cuda_tests rlhf_cuda_pipeline_tests) t
  for t in rlhf_nccl_tests hot_paths_cuda_bench; do
    grep -qsw "$t" "$build/Makefile" "$build/build.ninja" && targets+=("$t")
  done
  say "building ${targets[*]} with $(nproc) jobs"
  cmake --build "$build" -j "$(nproc)" --target "${targets[@]}" >"$results/build.log" 2>&1 ||
    { tail -n 40 "$results/build.log"; return 1; }
  for t in "${targets[@]}"; do say "built $t"; done
}

do_test() {
  say "running the gpu tests"
  ctest --test-dir "$build" -L gpu --output-on-failure -V 2>&1 | tee "$results/gpu_tests.log"
  local status=${PIPESTATUS[0]}
  grep -q "Skipped" "$results/gpu_tests.log" && say "some gpu tests were skipped (no GPU?): see gpu_tests.log"
  return "$status"
}

do_bench() {
  local bench=$build/benchmarks/hot_paths_cuda_bench
  if [[ ! -x $bench ]]; then
    say "hot_paths_cuda_bench not built (no Google Benchmark: see pack-benchmark above); skipped"
    return 0
  fi
  say "running hot_paths_cuda_bench"
  "$bench" --benchmark_min_time="${BENCHMARK_MIN_TIME:-0.2s}" --benchmark_out="$results/hot_paths_cuda.json" \
    --benchmark_out_format=json 2>&1 | tee "$results/hot_paths_cuda.log"
  local status=${PIPESTATUS[0]}
  [[ $status == 77 ]] && { say "no GPU: the benchmark skipped itself"; return 0; }
  return "$status"
}

if [[ $step == pack-benchmark ]]; then
  pack_benchmark "${2:?usage: run_gpu_suite.sh pack-benchmark DIR}"
  exit $?
fi
mkdir -p "$results"
{ nvidia-smi 2>&1 || echo "nvidia-smi: not available"; } >"$results/nvidia-smi.txt"
status=0
case $step in
  build) do_build || status=$? ;;
  test) do_test || status=$? ;;
  bench) do_bench || status=$? ;;
  all)
    do_build || { say "build failed (logs in $results)"; exit 1; }
    do_test || status=$?
    do_bench || say "benchmark exited with an error (its log: $results/hot_paths_cuda.log)"
    ;;
  *) say "unknown step '$step' (build, test, bench, all, pack-benchmark DIR)"; exit 2 ;;
esac
say "results in $results (exit $status)"
exit "$status"
