/// @file row_loss.cuh
/// @brief What the CUDA backend's per-token loss kernels share (PPO-clip, cuda/ppo_clip_loss.cuh; the clipped
/// value loss, cuda/value_loss.cuh): one block per row, the loss statistics and the gradient in one read of
/// the three inputs and the mask and one write of the gradient.
///
/// Each thread takes a strided slice of the row (coalesced), asks the loss's `Terms` functor for each valid
/// token's gradient and row sums (the host-and-device function of rlhf/backends/*_math.hpp that the generic
/// path uses), writes `w_r * grad` (0 at masked positions, which are never read) and accumulates the sums in
/// double. The block's sums are merged by warp shuffles and then across warps; thread 0 stores the row's sums
/// with the loss weighted by `w_r` (the aggregation's row weight, rlhf::aggregation_row_weights). The rows'
/// sums are folded by the backend's `transform_reduce`, whose order is fixed, so the result does not depend
/// on the launch.
#pragma once

#include <cstddef>
#include <cstring>
#include <type_traits>

#include "rlhf/backends/cuda.cuh"
#include "rlhf/backends/cuda/row_groups.cuh"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

namespace cuda_kernels {

/// The kernel (see the file comment). `Terms(a, b, c)` returns {gradient, Sums} of one valid token.
template <class T, class Sums, class Terms, unsigned Threads>
__global__ void __launch_bounds__(Threads)
    weighted_row_loss_rows(matrix_view<const T, cuda_space> a, matrix_view<const T, cuda_space> b,
                           matrix_view<const T, cuda_space> c, matrix_view<const mask_type, cuda_space> mask,
                           vector_view<const double, cuda_space> w, matrix_view<T, cuda_space> grad, Terms terms,
                           Sums* row_sums) {
  static_assert(Threads % warp_size == 0 && Threads <= warp_size * warp_size,
                "weighted_row_loss_rows: whole warps, at most 32");
  constexpr unsigned warps = Threads / warp_size;
  constexpr unsigned n = sizeof(Sums) / sizeof(double);
  const std::size_t r = blockIdx.x, cols = a.cols, base = r * cols;
  const double wr = w.data[r];
  const bool want_grad = grad.data != nullptr;
  Sums s{};
  for (std::size_t t = threadIdx.x; t < cols; t += Threads) {
    const std::size_t i = base + t;
    if (!mask.data[i]) {
      if (want_grad) grad.data[i] = T(0);
      continue;
    }
    const auto k = terms(static_cast<double>(a.data[i]), static_cast<double>(b.data[i]), static_cast<double>(c.data[i]));
    if (want_grad) grad.data[i] = static_cast<T>(wr * k.grad);
    s = s + k.sums;
  }
  __shared__ double shared[n][warps];  // plain arrays: a __shared__ variable cannot have a constructor
  const unsigned lane = threadIdx.x % warp_size, warp = threadIdx.x / warp_size;
  s = warp_sum_fields(s);
  if (lane == 0) {
    double f[n];
    std::memcpy(f, &s, sizeof s);
    for (unsigned k = 0; k < n; ++k) shared[k][warp] = f[k];
  }
  __syncthreads();
  if (warp == 0) {
    double f[n] = {};
    if (lane < warps)
      for (unsigned k = 0; k < n; ++k) f[k] = shared[k][lane];
    Sums total;
    std::memcpy(&total, f, sizeof total);
    total = warp_sum_fields(total);
    if (lane == 0) {
      total.loss *= wr;  // the aggregation's row weight
      row_sums[r] = total;
    }
  }
}

template <class Sums>
struct add_row_sums {
  RLHF_HOST_DEVICE Sums operator()(const Sums& x, const Sums& y) const { return x + y; }
};
template <class Sums>
struct same_row_sums {
  RLHF_HOST_DEVICE Sums operator()(const Sums& s) const { return s; }
};

/// Launches the kernel on the backend's stream and folds the rows' sums; `what` names the algorithm in errors.
template <class Sums, class T, class Terms>
Sums weighted_row_loss(const cuda_backend& b, matrix_view<const T, cuda_space> a, matrix_view<const T, cuda_space> bb,
                       matrix_view<const T, cuda_space> c, matrix_view<const mask_type, cuda_space> mask,
                       vector_view<const double, cuda_space> w, matrix_view<T, cuda_space> grad, Terms terms,
                       const char* what) {
  const std::size_t rows = a.rows;
  if (rows == 0) return Sums{};
  auto row_sums = b.allocate<Sums>(1, rows);
  constexpr unsigned threads = cuda_backend::row_block_threads;
  weighted_row_loss_rows<T, Sums, Terms, threads><<<detail::grid_blocks(rows, what), threads, 0, b.stream()>>>(
      a, bb, c, mask, w, grad, terms, row_sums.data());
  detail::cuda_check(cudaGetLastError(), what, "weighted_row_loss_rows<<<>>>");
  const vector_view<const Sums, cuda_space> all{row_sums.data(), rows};
  return b.transform_reduce(Sums{}, add_row_sums<Sums>{}, same_row_sums<Sums>{}, all);
}

}  // namespace cuda_kernels

}  // namespace rlhf::backends
