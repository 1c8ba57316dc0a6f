/// @file causal_attention.cuh
/// @brief The CUDA backend's causal grouped-query attention: cuBLAS strided-batched products with the
///        softmax row passes between them; and the decode attention over a key/value cache, a warp per
///        (row, head).
///
/// Same contract as rlhf::causal_attention_forward / _backward (found by argument-dependent lookup as
/// `rlhf_specialized_causal_attention_forward` and `_backward`; arguments validated). The algorithm is
/// rlhf/backends/attention_products.hpp: per sequence and offset within a kv group, one
/// `cublas{S,D}gemmStridedBatched` over the kv heads for the scores, the output and each gradient, and one
/// row pass for the softmax and its backward: a warp per row of up to 1024 keys, a block per longer row
/// (cuda/row_groups.cuh, over the row functors of attention_products.hpp). On this backend the generic path
/// ran one thread per query with scalar dot products over its keys; the products run on the tensor-core
/// GEMMs instead. Everything is enqueued on the backend's stream.
///
/// The products of a sequence span its valid keys only (the lengths are copied to the host once per call),
/// so padding key / value rows are never read, as in the generic path, and a ragged batch costs its lengths.
/// Every pass runs in blocks of queries that see only the keys up to the block's last query (the causal half
/// past it is not computed), with scratches of Hq * rows * T (rows chosen so that one holds at most 2^24
/// elements): the forward writes into `probs` when given, else into a scratch; the backward's dP / dS is a
/// scratch. The training pair that keeps row logsumexps instead (rlhf::causal_attention_forward_logsumexp /
/// _backward_recompute) runs the same products and row passes in the same blocks (two scratches in the
/// backward): no T x T buffer.
///
/// CPU reference: the generic path of rlhf/models/layers/attention.hpp. tests/backends/attention_products_test.cpp
/// runs this algorithm on the host with a product of cuBLAS's semantics against it; the GPU test holds this
/// specialization to the reference backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "rlhf/backends/attention_products.hpp"
#include "rlhf/backends/cuda.cuh"
#include "rlhf/backends/cuda/row_groups.cuh"
#include "rlhf/backends/decode_attention_rows.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

namespace cuda_kernels {

/// Runs one strided-batched product (column-major, rlhf::detail::strided_product) with cuBLAS on b's stream.
template <class T>
void strided_batched_product(const cuda_backend& b, const rlhf::detail::strided_product<T>& p) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "rlhf::cuda_backend attention: cuBLAS products take float or double");
  if (p.batch == 0 || p.m == 0 || p.n == 0) return;
  rlhf::backends::detail::check_cublas_extents("rlhf::causal_attention (cuda_backend)", p.m, p.n, p.k, p.lda, p.ldb,
                                               p.ldc, p.batch);
  const auto op = [](bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; };
  const auto i = [](std::size_t x) { return static_cast<int>(x); };
  const auto l = [](std::size_t x) { return static_cast<long long>(x); };
  const T alpha = p.alpha, beta = p.beta;
  cublasStatus_t status;
  if constexpr (std::is_same_v<T, float>) {
    status = cublasSgemmStridedBatched(b.cublas(), op(p.trans_a), op(p.trans_b), i(p.m), i(p.n), i(p.k), &alpha, p.a,
                                       i(p.lda), l(p.stride_a), p.b, i(p.ldb), l(p.stride_b), &beta, p.c, i(p.ldc),
                                       l(p.stride_c), i(p.batch));
  } else {
    status = cublasDgemmStridedBatched(b.cublas(), op(p.trans_a), op(p.trans_b), i(p.m), i(p.n), i(p.k), &alpha, p.a,
                                       i(p.lda), l(p.stride_a), p.b, i(p.ldb), l(p.stride_b), &beta, p.c, i(p.ldc),
                                       l(p.stride_c), i(p.batch));
  }
  rlhf::backends::detail::cublas_check(
      status, "rlhf::causal_attention (cuda_backend)",
      std::is_same_v<T, float> ? "cublasSgemmStridedBatched" : "cublasDgemmStridedBatched");
}

/// The softmax row passes as split-row kernels (cuda/row_groups.cuh): a warp per row up to 1024 keys.
struct attention_split_rows {
  template <class T>
  void operator()(const cuda_backend& b, std::size_t count, std::size_t /*work_per_row*/,
                  const rlhf::detail::attention_softmax_rows<T, cuda_space>& rows) const {
    run_split_rows<split_row_kernel::max_sum_then_write>(b, count, rows.block.columns, rows,
                                                         "rlhf::causal_attention_forward (cuda_backend)");
  }
  template <class T>
  void operator()(const cuda_backend& b, std::size_t count, std::size_t /*work_per_row*/,
                  const rlhf::detail::attention_softmax_backward_rows<T, cuda_space>& rows) const {
    run_split_rows<split_row_kernel::sum_then_write>(b, count, rows.block.columns, rows,
                                                     "rlhf::causal_attention_backward (cuda_backend)");
  }
  template <class T>
  void operator()(const cuda_backend& b, std::size_t count, std::size_t /*work_per_row*/,
                  const rlhf::detail::attention_recompute_backward_rows<T, cuda_space>& rows) const {
    run_split_rows<split_row_kernel::sum_then_write>(b, count, rows.block.columns, rows,
                                                     "rlhf::causal_attention_backward_recompute (cuda_backend)");
  }
};

}  // namespace cuda_kernels

/// rlhf::causal_attention_forward's specialization for rlhf::cuda_backend (see the file comment).
template <class T>
void rlhf_specialized_causal_attention_forward(const cuda_backend& b, matrix_view<const T, cuda_space> q,
                                               matrix_view<const T, cuda_space> k, matrix_view<const T, cuda_space> v,
                                               std::size_t batch, std::size_t n_heads, std::size_t n_kv_heads,
                                               matrix_view<T, cuda_space> out, matrix_view<T, cuda_space> probs,
                                               vector_view<const std::int32_t, cuda_space> lengths) {
  const auto product = [&b](const rlhf::detail::strided_product<T>& p) { cuda_kernels::strided_batched_product(b, p); };
  rlhf::detail::attention_forward_by_products<cuda_backend, T>(b, product, cuda_kernels::attention_split_rows{}, q, k,
                                                               v, batch, n_heads, n_kv_heads, out, probs, lengths);
}

/// rlhf::causal_attention_backward's specialization for rlhf::cuda_backend (see the file comment).
template <class T>
void rlhf_specialized_causal_attention_backward(const cuda_backend& b, matrix_view<const T, cuda_space> q,
                                                matrix_view<const T, cuda_space> k, matrix_view<const T, cuda_space> v,
                                                matrix_view<const T, cuda_space> probs,
                                                matrix_view<const T, cuda_space> d_out, std::size_t batch,
                                                std::size_t n_heads, std::size_t n_kv_heads,
                                                matrix_view<T, cuda_space> d_q, matrix_view<T, cuda_space> d_k,
                                                matrix_view<T, cuda_space> d_v,
                                                vector_view<const std::int32_t, cuda_space> lengths) {
  const auto product = [&b](const rlhf::detail::strided_product<T>& p) { cuda_kernels::strided_batched_product(b, p); };
  rlhf::detail::attention_backward_by_products<cuda_backend, T>(b, product, cuda_kernels::attention_split_rows{}, q, k,
                                                                v, probs, d_out, batch, n_heads, n_kv_heads, d_q, d_k,
                                                                d_v, lengths);
}

/// rlhf::causal_attention_forward_logsumexp's specialization for rlhf::cuda_backend: the blocked products of
/// rlhf::detail::attention_forward_logsumexp_by_products (scratch Hq * rows * T for a block of rows queries,
/// at most 2^24 elements) with the same cuBLAS products and split-row softmax as the forward above.
template <class T>
void rlhf_specialized_causal_attention_forward_logsumexp(const cuda_backend& b, matrix_view<const T, cuda_space> q,
                                                         matrix_view<const T, cuda_space> k,
                                                         matrix_view<const T, cuda_space> v, std::size_t batch,
                                                         std::size_t n_heads, std::size_t n_kv_heads,
                                                         matrix_view<T, cuda_space> out,
                                                         vector_view<T, cuda_space> logsumexp,
                                                         vector_view<const std::int32_t, cuda_space> lengths) {
  const auto product = [&b](const rlhf::detail::strided_product<T>& p) { cuda_kernels::strided_batched_product(b, p); };
  rlhf::detail::attention_forward_logsumexp_by_products<cuda_backend, T>(
      b, product, cuda_kernels::attention_split_rows{}, q, k, v, batch, n_heads, n_kv_heads, out, logsumexp, lengths);
}

/// rlhf::causal_attention_backward_recompute's specialization for rlhf::cuda_backend: the blocked products of
/// rlhf::detail::attention_backward_recompute_by_products, the probabilities recomputed in the split-row pass.
template <class T>
void rlhf_specialized_causal_attention_backward_recompute(
    const cuda_backend& b, matrix_view<const T, cuda_space> q, matrix_view<const T, cuda_space> k,
    matrix_view<const T, cuda_space> v, vector_view<const T, cuda_space> logsumexp,
    matrix_view<const T, cuda_space> d_out, std::size_t batch, std::size_t n_heads, std::size_t n_kv_heads,
    matrix_view<T, cuda_space> d_q, matrix_view<T, cuda_space> d_k, matrix_view<T, cuda_space> d_v,
    vector_view<const std::int32_t, cuda_space> lengths) {
  const auto product = [&b](const rlhf::detail::strided_product<T>& p) { cuda_kernels::strided_batched_product(b, p); };
  rlhf::detail::attention_backward_recompute_by_products<cuda_backend, T>(
      b, product, cuda_kernels::attention_split_rows{}, q, k, v, logsumexp, d_out, batch, n_heads, n_kv_heads, d_q,
      d_k, d_v, lengths);
}

/// rlhf::causal_attention_decode's specialization for rlhf::cuda_backend: a warp per (row, query head) pair
/// (a block when the cache holds more than 1024 keys per row; cuda/row_groups.cuh). The lanes split the
/// cached keys for the scores and their exponentials, then the head's columns for the output (coalesced
/// reads of the value rows). The generic path ran one thread per pair, B * Hq threads in all.
template <class T>
void rlhf_specialized_causal_attention_decode(const cuda_backend& b,
                                              const rlhf::detail::decode_attention_rows<T, cuda_space>& rows) {
  cuda_kernels::run_split_rows<cuda_kernels::split_row_kernel::max_sum_then_write>(
      b, rows.q.rows * rows.n_heads, rows.seq_len, rows, "rlhf::causal_attention_decode (cuda_backend)");
}

}  // namespace rlhf::backends
