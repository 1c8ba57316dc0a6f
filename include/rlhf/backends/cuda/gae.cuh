/// @file gae.cuh
/// @brief The CUDA backend's fused GAE kernel: advantages and returns in one read of rewards, values and
/// mask and one write of each output.
///
/// Same contract as rlhf::gae (found by argument-dependent lookup as `rlhf_specialized_gae`; arguments
/// already validated). One warp per row. The row is cut into tiles of 32 x `items` steps, taken from the
/// row's end: lane l owns `items` consecutive steps of the tile (coalesced loads and stores), composes
/// their step maps (`rlhf::detail::gae_step_map`, rlhf/backends/gae_step_map.hpp), the warp scans the
/// lanes' maps from the right by shuffles (5 rounds), each lane applies the composite of the lanes after it
/// to the state entering the tile from the later tile and walks its own steps backwards writing A_t and
/// R_t = A_t + V_t, and lane 0's state (the state at the tile's first step) enters the next tile.
///
/// CPU reference: the Eigen kernel's sequential sweep (rlhf/backends/eigen/gae.hpp) and the generic
/// rlhf::gae; tests/backends/gae_step_map_test.cpp replays this kernel's grouping (runs per lane, the warp
/// scan, tiles from the end) on the host. Sums are in T, as in the other paths; the map form associates the
/// TD error's terms differently (rounding-level differences only).
#pragma once

#include <cstddef>

#include "rlhf/backends/cuda.cuh"
#include "rlhf/backends/gae_step_map.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

namespace cuda_kernels {

/// Steps per lane in a tile, and rows (warps) per block, of the GAE sweep.
inline constexpr unsigned gae_items = 4;
inline constexpr unsigned gae_warps_per_block = 8;

/// The warp's inclusive suffix composite: lane l ends with map(l) after map(l + 1) after ... after map(31).
template <class T>
__device__ inline rlhf::detail::gae_step_map<T> warp_suffix_compose(rlhf::detail::gae_step_map<T> m, unsigned lane) {
  for (unsigned offset = 1; offset < warp_size; offset *= 2) {
    rlhf::detail::gae_step_map<T> later;
    later.p = __shfl_down_sync(full_warp, m.p, offset);
    later.q = __shfl_down_sync(full_warp, m.q, offset);
    later.s = __shfl_down_sync(full_warp, m.s, offset);
    later.cv = __shfl_down_sync(full_warp, m.cv, offset);
    later.ca = __shfl_down_sync(full_warp, m.ca, offset);
    if (lane + offset < warp_size) m = m.after(later);
  }
  return m;
}

/// The rewards of plain rlhf::gae: read from memory. The kernel below asks its reward source for each step's
/// reward, tells it each advantage and brackets each row with begin_row / end_row (warp-collective), so that
/// rlhf::kl_penalized_advantages's kernel (cuda/kl_penalized_advantages.cuh) computes the rewards and the
/// statistics inside the same sweep; this source does nothing beyond the read.
template <class T>
struct gae_stored_rewards {
  matrix_view<const T, cuda_space> rewards;
  __device__ void begin_row(std::size_t, unsigned) {}
  __device__ T reward(std::size_t i, long long, bool valid) { return valid ? rewards.data[i] : T(0); }
  __device__ void advantage(T, bool) {}
  __device__ void end_row(std::size_t, unsigned) {}
};

template <class T, unsigned Items, unsigned WarpsPerBlock, class RewardSource>
__global__ void __launch_bounds__(WarpsPerBlock * warp_size)
    gae_rows(RewardSource source, matrix_view<const T, cuda_space> values, matrix_view<const mask_type, cuda_space> mask,
             T gamma, T gamma_lambda, matrix_view<T, cuda_space> advantages, matrix_view<T, cuda_space> returns) {
  using map = rlhf::detail::gae_step_map<T>;
  const unsigned lane = threadIdx.x % warp_size;
  const std::size_t row = static_cast<std::size_t>(blockIdx.x) * WarpsPerBlock + threadIdx.x / warp_size;
  if (row >= values.rows) return;  // the whole warp leaves together
  const long long cols = static_cast<long long>(values.cols);
  const std::size_t base = row * values.cols;
  const bool want_returns = !returns.empty();
  source.begin_row(row, lane);
  constexpr long long tile = static_cast<long long>(warp_size * Items);
  T carry_v = T(0), carry_a = T(0);  // the state entering the current tile from the later one
  for (long long tile_end = cols; tile_end > 0; tile_end -= tile) {
    const long long first = tile_end - tile + static_cast<long long>(lane * Items);  // this lane's first step
    T r[Items], v[Items];
    bool valid[Items];
#pragma unroll
    for (unsigned k = 0; k < Items; ++k) {
      const long long t = first + k;
      valid[k] = t >= 0 && mask.data[base + t] != 0;
      // Masked steps' values are never read, nor (by the stored source) their rewards.
      r[k] = t >= 0 ? source.reward(base + t, t, valid[k]) : T(0);
      v[k] = valid[k] ? values.data[base + t] : T(0);
    }
    map run;  // this lane's steps, composed (the identity before the row's start)
#pragma unroll
    for (unsigned k = Items; k-- > 0;) run = map::step(r[k], v[k], valid[k], gamma, gamma_lambda).after(run);
    const map inclusive = warp_suffix_compose(run, lane);
    map exclusive;  // the lanes after this one
    exclusive.p = __shfl_down_sync(full_warp, inclusive.p, 1);
    exclusive.q = __shfl_down_sync(full_warp, inclusive.q, 1);
    exclusive.s = __shfl_down_sync(full_warp, inclusive.s, 1);
    exclusive.cv = __shfl_down_sync(full_warp, inclusive.cv, 1);
    exclusive.ca = __shfl_down_sync(full_warp, inclusive.ca, 1);
    if (lane + 1 == warp_size) exclusive = map{};
    T sv = carry_v, sa = carry_a;
    exclusive.apply(sv, sa);
#pragma unroll
    for (unsigned k = Items; k-- > 0;) {
      const long long t = first + k;
      if (t < 0) continue;
      map::step(r[k], v[k], valid[k], gamma, gamma_lambda).apply(sv, sa);
      advantages.data[base + t] = valid[k] ? sa : T(0);
      source.advantage(sa, valid[k]);
      if (want_returns) returns.data[base + t] = valid[k] ? sa + v[k] : T(0);
    }
    // Lane 0's inclusive composite is the whole tile's: the state at the tile's first step.
    T tv = carry_v, ta = carry_a;
    inclusive.apply(tv, ta);
    carry_v = __shfl_sync(full_warp, tv, 0);
    carry_a = __shfl_sync(full_warp, ta, 0);
  }
  source.end_row(row, lane);
}

}  // namespace cuda_kernels

/// rlhf::gae on the CUDA backend: one warp per row, 8 rows per block (see the file comment).
template <class T>
void rlhf_specialized_gae(const cuda_backend& b, matrix_view<const T, cuda_space> rewards,
                          matrix_view<const T, cuda_space> values, matrix_view<const mask_type, cuda_space> mask,
                          T gamma, T lambda, matrix_view<T, cuda_space> advantages, matrix_view<T, cuda_space> returns) {
  constexpr unsigned items = cuda_kernels::gae_items, warps = cuda_kernels::gae_warps_per_block;
  if (rewards.rows * rewards.cols == 0) return;
  const unsigned blocks = detail::grid_blocks((rewards.rows + warps - 1) / warps, "rlhf::gae (CUDA kernel)");
  cuda_kernels::gae_rows<T, items, warps><<<blocks, warps * cuda_kernels::warp_size, 0, b.stream()>>>(
      cuda_kernels::gae_stored_rewards<T>{rewards}, values, mask, gamma, gamma * lambda, advantages, returns);
  detail::cuda_check(cudaGetLastError(), "rlhf::gae (CUDA kernel)", "gae_rows<<<>>>");
}

}  // namespace rlhf::backends
