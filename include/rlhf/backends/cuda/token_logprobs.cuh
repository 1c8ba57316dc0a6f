/// @file token_logprobs.cuh
/// @brief The CUDA backend's kernels for rlhf::token_logprobs and rlhf::token_logprobs_backward.
///
/// Same contract as the generic path of rlhf/ops/token_logprobs.hpp (found by argument-dependent lookup as
/// `rlhf_specialized_token_logprobs[_backward]`; the arguments are already validated). One block of
/// `cuda_backend::row_block_threads` threads per row of logits:
///
/// - forward: thread k folds elements k, k + W, k + 2W, ... of the row (coalesced reads) into the online
///   logsumexp state (rlhf/backends/online_logsumexp.hpp: running maximum, rescaled sum, entropy sum) with
///   `logp_strided_partial`: float and bfloat16 logits in float arithmetic (runs of 64 elements, each run
///   merged into a double state), double logits in double; the W double states are merged with
///   `logp_online_state::merge`, first within each warp by shuffles, then across warps through shared
///   memory, and thread 0 writes log p(y), logsumexp and the entropy with `logp_online_state::finish`. One
///   read of the logits, no [rows, V] temporary.
/// - backward: every thread writes its strided elements of d logits from the saved logsumexp (and
///   entropy): float and bfloat16 logits with `logp_backward_float` (the token's column with
///   `logp_backward_element` in double), double logits with `logp_backward_element`: the functions the
///   generic row functor uses; one read and one write of the row, in place allowed.
///
/// Why float arithmetic per element: the forward's exp and the backward's are the only per-logit work, and a
/// GPU's double rate is half its float rate on A100 / H100 and 1/64 of it on most other parts (L4, L40S,
/// consumer cards), where a double exp per logit would make these kernels compute-bound instead of
/// bandwidth-bound. The merges (256 per row) stay in double.
///
/// bfloat16 logits (with float outputs) take the same kernels, each element widened as it is read: half the
/// bytes of float logits per row.
///
/// CPU reference: the generic row functors `token_logprobs_row` / `token_logprobs_backward_row` in
/// rlhf/ops/token_logprobs.hpp, which use the same state, element and finish functions. The CPU tests replay
/// this kernel's split-and-merge order on the host, float runs included (tests/backends/online_logsumexp_test.cpp);
/// the GPU test
/// (tests/cuda/cuda_backend_test.cu) holds the kernels to the reference backend.
#pragma once

#include <cstddef>
#include <type_traits>

#include "rlhf/backends/cuda.cuh"
#include "rlhf/backends/online_logsumexp.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

namespace cuda_kernels {

/// Merges the states of a warp's lanes; lane 0 ends with the warp's state.
__device__ inline rlhf::detail::logp_online_state warp_merge(rlhf::detail::logp_online_state st, double inv_t) {
  for (unsigned offset = warp_size / 2; offset > 0; offset /= 2) {
    rlhf::detail::logp_online_state other;
    other.m = __shfl_down_sync(full_warp, st.m, offset);
    other.s = __shfl_down_sync(full_warp, st.s, offset);
    other.w = __shfl_down_sync(full_warp, st.w, offset);
    st.merge(other, inv_t);
  }
  return st;
}

/// Merges the states of a block's threads; thread 0 ends with the block's state.
template <unsigned Threads>
__device__ inline rlhf::detail::logp_online_state block_merge(rlhf::detail::logp_online_state st, double inv_t) {
  static_assert(Threads % warp_size == 0 && Threads <= warp_size * warp_size,
                "block_merge: a whole number of warps, at most 32");
  constexpr unsigned warps = Threads / warp_size;
  // Plain arrays: a __shared__ variable cannot have a constructor.
  __shared__ double shared_m[warps], shared_s[warps], shared_w[warps];
  const unsigned lane = threadIdx.x % warp_size, warp = threadIdx.x / warp_size;
  st = warp_merge(st, inv_t);
  if (lane == 0) {
    shared_m[warp] = st.m;
    shared_s[warp] = st.s;
    shared_w[warp] = st.w;
  }
  __syncthreads();
  if (warp == 0) {
    rlhf::detail::logp_online_state w;
    if (lane < warps) {
      w.m = shared_m[lane];
      w.s = shared_s[lane];
      w.w = shared_w[lane];
    }
    st = warp_merge(w, inv_t);
  }
  return st;
}

template <class T, class L, unsigned Threads>
__global__ void __launch_bounds__(Threads)
    token_logprobs_rows(matrix_view<const L, cuda_space> logits, vector_view<const token_type, cuda_space> tokens,
                        vector_view<const mask_type, cuda_space> mask, vector_view<T, cuda_space> logprobs,
                        vector_view<T, cuda_space> logsumexp, vector_view<T, cuda_space> entropy, double inv_t) {
  const std::size_t r = blockIdx.x;
  if (!mask.empty() && mask[r] == 0) {  // the whole block leaves together: the mask is per row
    if (threadIdx.x == 0) {
      logprobs[r] = T(0);
      if (!logsumexp.empty()) logsumexp[r] = T(0);
      if (!entropy.empty()) entropy[r] = T(0);
    }
    return;
  }
  const std::size_t v = logits.cols;
  const L* row = logits.data + r * v;
  rlhf::detail::logp_online_state st = rlhf::detail::logp_strided_partial(row, v, threadIdx.x, Threads, inv_t);
  st = block_merge<Threads>(st, inv_t);
  if (threadIdx.x == 0) {
    double lp = 0.0, lse = 0.0, h = 0.0;
    st.finish(static_cast<double>(row[static_cast<std::size_t>(tokens[r])]), inv_t, lp, lse, h);
    logprobs[r] = static_cast<T>(lp);
    if (!logsumexp.empty()) logsumexp[r] = static_cast<T>(lse);
    if (!entropy.empty()) entropy[r] = static_cast<T>(h);
  }
}

template <class T, class L, unsigned Threads>
__global__ void __launch_bounds__(Threads)
    token_logprobs_backward_rows(matrix_view<const L, cuda_space> logits, vector_view<const token_type, cuda_space> tokens,
                                 vector_view<const mask_type, cuda_space> mask, vector_view<const T, cuda_space> logsumexp,
                                 vector_view<const T, cuda_space> d_logprobs, vector_view<const T, cuda_space> entropy,
                                 vector_view<const T, cuda_space> d_entropy, matrix_view<L, cuda_space> dlogits,
                                 double inv_t) {
  const std::size_t r = blockIdx.x;
  const std::size_t v = logits.cols;
  const L* row = logits.data + r * v;
  L* out = dlogits.data + r * v;
  if (!mask.empty() && mask[r] == 0) {
    for (std::size_t j = threadIdx.x; j < v; j += Threads) out[j] = L(0.0f);
    return;
  }
  const double g = d_logprobs.empty() ? 0.0 : static_cast<double>(d_logprobs[r]);
  const double gh = d_entropy.empty() ? 0.0 : static_cast<double>(d_entropy[r]);
  const double h = entropy.empty() ? 0.0 : static_cast<double>(entropy[r]);
  const double lse = static_cast<double>(logsumexp[r]);
  const std::size_t y = static_cast<std::size_t>(tokens[r]);
  if constexpr (std::is_same_v<L, double>) {
    for (std::size_t j = threadIdx.x; j < v; j += Threads) {
      out[j] = rlhf::detail::logp_backward_element(row[j], j == y, lse, g, gh, h, inv_t);
    }
  } else {
    // Float arithmetic per element (logp_backward_float, as the generic row); the token's column in double by
    // the thread that owns it, which reads its logit before writing over it.
    const auto element = rlhf::detail::logp_backward_float::of(lse, g, gh, h, inv_t);
    for (std::size_t j = threadIdx.x; j < v; j += Threads) {
      const float z = rlhf::detail::logit_as_float(row[j]);
      out[j] = static_cast<L>(j == y ? static_cast<float>(rlhf::detail::logp_backward_element(z, true, lse, g, gh, h, inv_t))
                                     : element(z));
    }
  }
}

}  // namespace cuda_kernels

/// rlhf::token_logprobs on the CUDA backend: one block per row (see the file comment). L: the logits' element
/// type, T (float or double), or bfloat16 with T = float.
template <class T, class L>
void rlhf_specialized_token_logprobs(const cuda_backend& b, matrix_view<const L, cuda_space> logits,
                                     vector_view<const token_type, cuda_space> tokens,
                                     vector_view<const mask_type, cuda_space> mask, vector_view<T, cuda_space> logprobs,
                                     vector_view<T, cuda_space> logsumexp, vector_view<T, cuda_space> entropy,
                                     double temperature) {
  constexpr unsigned threads = cuda_backend::row_block_threads;
  if (logits.rows == 0) return;
  const unsigned blocks = detail::grid_blocks(logits.rows, "rlhf::token_logprobs (CUDA kernel)");
  cuda_kernels::token_logprobs_rows<T, L, threads><<<blocks, threads, 0, b.stream()>>>(
      logits, tokens, mask, logprobs, logsumexp, entropy, 1.0 / temperature);
  detail::cuda_check(cudaGetLastError(), "rlhf::token_logprobs (CUDA kernel)", "token_logprobs_rows<<<>>>");
}

/// rlhf::token_logprobs_backward on the CUDA backend: one block per row (see the file comment). L as above; the
/// gradient is written in L (bfloat16: rounded once from the double element).
template <class T, class L>
void rlhf_specialized_token_logprobs_backward(const cuda_backend& b, matrix_view<const L, cuda_space> logits,
                                              vector_view<const token_type, cuda_space> tokens,
                                              vector_view<const mask_type, cuda_space> mask,
                                              vector_view<const T, cuda_space> logsumexp,
                                              vector_view<const T, cuda_space> d_logprobs,
                                              vector_view<const T, cuda_space> entropy,
                                              vector_view<const T, cuda_space> d_entropy,
                                              matrix_view<L, cuda_space> dlogits, double temperature) {
  constexpr unsigned threads = cuda_backend::row_block_threads;
  if (logits.rows == 0) return;
  const unsigned blocks = detail::grid_blocks(logits.rows, "rlhf::token_logprobs_backward (CUDA kernel)");
  cuda_kernels::token_logprobs_backward_rows<T, L, threads><<<blocks, threads, 0, b.stream()>>>(
      logits, tokens, mask, logsumexp, d_logprobs, entropy, d_entropy, dlogits, 1.0 / temperature);
  detail::cuda_check(cudaGetLastError(), "rlhf::token_logprobs_backward (CUDA kernel)", "token_logprobs_backward_rows<<<>>>");
}

}  // namespace rlhf::backends
