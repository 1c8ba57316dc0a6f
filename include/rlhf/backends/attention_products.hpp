/// @file attention_products.hpp
/// @brief Causal grouped-query attention as strided-batched matrix products with row passes between them:
///        the algorithm of the CUDA backend's attention (cuBLAS products), written once over a product
///        callable so the CPU test suite runs it with a host product of the same semantics.
///
/// Same contract and formulas as rlhf::causal_attention_forward / _backward (rlhf/models/layers/
/// attention.hpp). For each sequence b, and each offset g within a kv group (query heads h = kvh * group + g
/// for every kv head kvh: one batch of Hkv products, since their operands sit at constant strides):
///
///     forward   S_h = Q_h K_kvh^T / sqrt(hd)  into probs     (one product batch per (b, g))
///               P_h = softmax rows of S_h over the visible keys  (a row pass over b's Hq * T rows)
///               O_h = P_h V_kvh                                  (one product batch per (b, g))
///     backward  dP_h = dO_h V_kvh^T                   into a scratch of Hq * T * T
///               dS_h = P_h o (dP_h - rowsum(P_h o dP_h))       (a row pass)
///               dQ_h = dS_h K_kvh / sqrt(hd)
///               dK_kvh = sum_g dS_h^T Q_h / sqrt(hd),  dV_kvh = sum_g P_h^T dO_h   (beta = 1 after g = 0)
///
/// (Vaswani et al. 2017, eq. 1, and its softmax Jacobian.) The products span T queries by the sequence's n_b
/// valid keys (lengths copied to the host once per call, `attention_key_extents`): padding keys and values
/// are never read, and the rows of dK and dV past n_b are set to 0. Within that, the causal mask is applied
/// by the row pass, which writes exact zeros past each row's visible keys, so the products that follow add
/// nothing from them. Products use cuBLAS's column-major convention
/// (`strided_product`): a row-major [r, c] matrix with row stride ld is the column-major [c, r] matrix with
/// leading dimension ld, which is how every operand below is read. Row passes accumulate in double, as the
/// generic path does; the products accumulate in T. The softmax's exponentials of float scores are taken in
/// float (rlhf::detail::polynomial_exp, then summed in double): two per score, they were the pass's only
/// double transcendental work, and a GPU's double rate is half its float rate on A100 / H100 and 1/64 of
/// it on L4 / L40S and consumer parts, where they would have outweighed the products.
/// tests/backends/attention_products_test.cpp runs this with a host product against the generic path.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "rlhf/backends/attention_shape.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/polynomial_exp.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"

namespace rlhf::detail {

/// One strided-batched product, column-major (cuBLAS `gemmStridedBatched`): for i < batch,
/// C_i = alpha op(A_i) op(B_i) + beta C_i with A_i = a + i * stride_a (and so on), op(A_i) m x k,
/// op(B_i) k x n, C_i m x n with leading dimension ldc; op transposes when trans_* is set.
template <class T>
struct strided_product {
  bool trans_a = false, trans_b = false;
  std::size_t m = 0, n = 0, k = 0;
  T alpha = T(1);
  const T* a = nullptr;
  std::size_t lda = 0, stride_a = 0;
  const T* b = nullptr;
  std::size_t ldb = 0, stride_b = 0;
  T beta = T(0);
  T* c = nullptr;
  std::size_t ldc = 0, stride_c = 0;
  std::size_t batch = 0;
};

/// Row pass of the forward, index r over the Hq * T rows of sequence bb (r = h * T + i): the scores in
/// `p` (row stride T) become the softmax over the visible keys j < min(i + 1, n_b), exact zeros elsewhere.
///
/// Like the RMSNorm rows (rlhf/backends/rms_norm_rows.hpp), a row comes in parts that a group of threads
/// can share, each over the row's elements first, first + step, ...: `partial_max`, then `partial_sum`
/// given the row's maximum, then `write` given both. `operator()(r)` is the whole row on one thread.
template <class T, class S>
struct attention_softmax_rows {
  T* p;  // sequence bb's [Hq * T, T] block
  vector_view<const std::int32_t, S> lengths;
  std::size_t bb, seq;

  RLHF_HOST_DEVICE std::size_t visible(std::size_t r) const { return attention_visible_keys(lengths, bb, r % seq, seq); }

  /// e^(s - m) for a score s and the row's maximum m (a score, so exact in T): in float for float scores.
  RLHF_HOST_DEVICE static double shifted_exp(T s, double m) {
    if constexpr (std::is_same_v<T, float>) {
      return static_cast<double>(rlhf::detail::polynomial_exp(s - static_cast<float>(m)));
    } else {
      return exp(static_cast<double>(s) - m);
    }
  }

  /// The largest visible score among the part's elements (-infinity when it has none).
  RLHF_HOST_DEVICE double partial_max(std::size_t r, std::size_t first, std::size_t step) const {
    const std::size_t lim = visible(r);
    const T* row = p + r * seq;
    double m = -HUGE_VAL;
    for (std::size_t j = first; j < lim; j += step) {
      const double s = static_cast<double>(row[j]);
      if (s > m) m = s;
    }
    return m;
  }

  /// Sum of exp(s_j - m) over the part's visible elements, m the row's largest visible score.
  RLHF_HOST_DEVICE double partial_sum(std::size_t r, double m, std::size_t first, std::size_t step) const {
    const std::size_t lim = visible(r);
    const T* row = p + r * seq;
    double sum = 0.0;
    for (std::size_t j = first; j < lim; j += step) sum += shifted_exp(row[j], m);  // max subtracted
    return sum;
  }

  /// Writes the part's probabilities from the row's maximum and sum, and zeros past the visible keys.
  RLHF_HOST_DEVICE void write(std::size_t r, double m, double sum, std::size_t first, std::size_t step) const {
    const std::size_t lim = visible(r);
    T* row = p + r * seq;
    for (std::size_t j = first; j < seq; j += step)
      row[j] = j < lim ? static_cast<T>(shifted_exp(row[j], m) / sum) : T(0);
  }

  RLHF_HOST_DEVICE void operator()(std::size_t r) const {
    const double m = partial_max(r, 0, 1);
    write(r, m, partial_sum(r, m, 0, 1), 0, 1);
  }
};

/// Row pass of the backward, index r as above: dS = P o (dP - D), D = sum_j P dP over the visible keys, in
/// place over dP (row stride T); exact zeros past the visible keys. In parts as above: `partial_sum` of
/// P dP, then `write` given the row's D.
template <class T, class S>
struct attention_softmax_backward_rows {
  const T* p;  // sequence bb's saved probabilities
  T* ds;       // its dP, becoming dS
  vector_view<const std::int32_t, S> lengths;
  std::size_t bb, seq;

  RLHF_HOST_DEVICE std::size_t visible(std::size_t r) const { return attention_visible_keys(lengths, bb, r % seq, seq); }

  RLHF_HOST_DEVICE double partial_sum(std::size_t r, std::size_t first, std::size_t step) const {
    const std::size_t lim = visible(r);
    const T* pr = p + r * seq;
    const T* dr = ds + r * seq;
    double d = 0.0;
    for (std::size_t j = first; j < lim; j += step) d += static_cast<double>(pr[j]) * static_cast<double>(dr[j]);
    return d;
  }

  RLHF_HOST_DEVICE void write(std::size_t r, double d, std::size_t first, std::size_t step) const {
    const std::size_t lim = visible(r);
    const T* pr = p + r * seq;
    T* dr = ds + r * seq;
    for (std::size_t j = first; j < seq; j += step)
      dr[j] = j < lim ? static_cast<T>(static_cast<double>(pr[j]) * (static_cast<double>(dr[j]) - d)) : T(0);
  }

  RLHF_HOST_DEVICE void operator()(std::size_t r) const { write(r, partial_sum(r, 0, 1), 0, 1); }
};

/// The row passes' default runner: one row per index of the backend's loop (`for_each_weighted_index`). A
/// backend's kernel passes its own runner, called as `row_pass(backend, count, work_per_row, row_functor)`.
struct attention_rows_by_index {
  template <class B, class F>
  void operator()(const B& be, std::size_t count, std::size_t work_per_row, const F& f) const {
    for_each_weighted_index(be, count, work_per_row, f);
  }
};

/// Each sequence's key extent n_b (T without lengths), on the host: the products of a sequence stop at its
/// last valid key, so padding keys and values are never read (the generic path reads none either; a NaN
/// there would otherwise reach every output through 0 * NaN) and ragged batches cost their lengths.
template <class B>
std::vector<std::size_t> attention_key_extents(const B& be,
                                               vector_view<const std::int32_t, typename B::memory_space> lengths,
                                               std::size_t batch, std::size_t seq) {
  std::vector<std::size_t> keys(batch, seq);
  if (lengths.empty()) return keys;
  const std::vector<std::int32_t> host = to_host(be, lengths);  // validated by the caller: each in [0, seq]
  for (std::size_t bb = 0; bb < batch; ++bb) keys[bb] = static_cast<std::size_t>(host[bb]);
  return keys;
}

/// Rows [first, last) of a row-major matrix set to zero (contiguous).
template <class B, class T>
void attention_zero_rows(const B& be, matrix_view<T, typename B::memory_space> m, std::size_t first, std::size_t last) {
  if (last > first) be.fill(vector_view<T, typename B::memory_space>{m.data + first * m.cols, (last - first) * m.cols}, T(0));
}

/// The forward (see the file comment). `product(const strided_product<T>&)` runs one batch of products on
/// the backend's device, `row_pass` the softmax row passes (see attention_rows_by_index); `probs` may be empty
/// (then a scratch of Hq * T * T holds each sequence's in turn).
template <class B, class T, class Product, class RowPass = attention_rows_by_index>
void attention_forward_by_products(const B& be, Product&& product, RowPass&& row_pass,
                                   matrix_view<const T, typename B::memory_space> q,
                                   matrix_view<const T, typename B::memory_space> k,
                                   matrix_view<const T, typename B::memory_space> v, std::size_t batch,
                                   std::size_t n_heads, std::size_t n_kv_heads,
                                   matrix_view<T, typename B::memory_space> out,
                                   matrix_view<T, typename B::memory_space> probs,
                                   vector_view<const std::int32_t, typename B::memory_space> lengths) {
  using S = typename B::memory_space;
  const attention_shape s = attention_shape_of(q.rows, q.cols, batch, n_heads, n_kv_heads);
  const std::size_t seq = s.seq, hd = s.head_dim, square = seq * seq;
  const bool save = probs.data != nullptr;
  auto scratch = allocate<T>(be, save ? 0 : n_heads * seq, seq);
  const std::vector<std::size_t> extents = attention_key_extents(be, lengths, batch, seq);
  for (std::size_t bb = 0; bb < batch; ++bb) {
    T* p = save ? probs.data + bb * n_heads * square : scratch.view().data;
    const std::size_t keys = extents[bb];
    for (std::size_t g = 0; g < s.group; ++g) {
      // Scores: C = S_h^T (column-major) = K_kvh Q_h^T, so that the row-major S_h lands in p's rows; only the
      // first `keys` columns (the row pass reads no further and writes zeros past them).
      strided_product<T> sc;
      sc.trans_a = true;
      sc.m = keys, sc.n = seq, sc.k = hd;
      sc.alpha = static_cast<T>(s.scale);
      sc.a = k.data + bb * seq * k.cols, sc.lda = k.cols, sc.stride_a = hd;
      sc.b = q.data + bb * seq * q.cols + g * hd, sc.ldb = q.cols, sc.stride_b = s.group * hd;
      sc.c = p + g * square, sc.ldc = seq, sc.stride_c = s.group * square;
      sc.batch = n_kv_heads;
      product(sc);
    }
    row_pass(be, n_heads * seq, 3 * seq, attention_softmax_rows<T, S>{p, lengths, bb, seq});
    if (keys == 0) {  // no key: every output of the sequence is 0 (no product with an empty inner dimension)
      attention_zero_rows(be, out, bb * seq, (bb + 1) * seq);
      continue;
    }
    for (std::size_t g = 0; g < s.group; ++g) {
      // Output: C = O_h^T = V_kvh^T P_h^T, over the valid keys.
      strided_product<T> o;
      o.m = hd, o.n = seq, o.k = keys;
      o.a = v.data + bb * seq * v.cols, o.lda = v.cols, o.stride_a = hd;
      o.b = p + g * square, o.ldb = seq, o.stride_b = s.group * square;
      o.c = out.data + bb * seq * out.cols + g * hd, o.ldc = out.cols, o.stride_c = s.group * hd;
      o.batch = n_kv_heads;
      product(o);
    }
  }
}

/// The backward (see the file comment), with a scratch of Hq * T * T for each sequence's dP / dS in turn;
/// `product` and `row_pass` as in the forward.
template <class B, class T, class Product, class RowPass = attention_rows_by_index>
void attention_backward_by_products(const B& be, Product&& product, RowPass&& row_pass,
                                    matrix_view<const T, typename B::memory_space> q,
                                    matrix_view<const T, typename B::memory_space> k,
                                    matrix_view<const T, typename B::memory_space> v,
                                    matrix_view<const T, typename B::memory_space> probs,
                                    matrix_view<const T, typename B::memory_space> d_out, std::size_t batch,
                                    std::size_t n_heads, std::size_t n_kv_heads,
                                    matrix_view<T, typename B::memory_space> d_q,
                                    matrix_view<T, typename B::memory_space> d_k,
                                    matrix_view<T, typename B::memory_space> d_v,
                                    vector_view<const std::int32_t, typename B::memory_space> lengths) {
  using S = typename B::memory_space;
  const attention_shape s = attention_shape_of(q.rows, q.cols, batch, n_heads, n_kv_heads);
  const std::size_t seq = s.seq, hd = s.head_dim, square = seq * seq;
  auto scratch = allocate<T>(be, n_heads * seq, seq);
  T* ds = scratch.view().data;
  const T scale = static_cast<T>(s.scale);
  const std::vector<std::size_t> extents = attention_key_extents(be, lengths, batch, seq);
  for (std::size_t bb = 0; bb < batch; ++bb) {
    const T* p = probs.data + bb * n_heads * square;
    const T* dob = d_out.data + bb * seq * d_out.cols;
    const std::size_t keys = extents[bb];
    // Padding keys get no gradient: their rows of dK and dV are 0 (the products below write the valid ones).
    attention_zero_rows(be, d_k, bb * seq + keys, (bb + 1) * seq);
    attention_zero_rows(be, d_v, bb * seq + keys, (bb + 1) * seq);
    if (keys == 0) {
      attention_zero_rows(be, d_q, bb * seq, (bb + 1) * seq);
      continue;
    }
    for (std::size_t g = 0; g < s.group; ++g) {
      // dP: C = dP_h^T = V_kvh dO_h^T, row-major dP_h in the scratch's rows (the valid keys' columns).
      strided_product<T> dp;
      dp.trans_a = true;
      dp.m = keys, dp.n = seq, dp.k = hd;
      dp.a = v.data + bb * seq * v.cols, dp.lda = v.cols, dp.stride_a = hd;
      dp.b = dob + g * hd, dp.ldb = d_out.cols, dp.stride_b = s.group * hd;
      dp.c = ds + g * square, dp.ldc = seq, dp.stride_c = s.group * square;
      dp.batch = n_kv_heads;
      product(dp);
    }
    row_pass(be, n_heads * seq, 2 * seq, attention_softmax_backward_rows<T, S>{p, ds, lengths, bb, seq});
    for (std::size_t g = 0; g < s.group; ++g) {
      // dQ: C = dQ_h^T = K_kvh^T dS_h^T / sqrt(hd).
      strided_product<T> dq;
      dq.m = hd, dq.n = seq, dq.k = keys;
      dq.alpha = scale;
      dq.a = k.data + bb * seq * k.cols, dq.lda = k.cols, dq.stride_a = hd;
      dq.b = ds + g * square, dq.ldb = seq, dq.stride_b = s.group * square;
      dq.c = d_q.data + bb * seq * d_q.cols + g * hd, dq.ldc = d_q.cols, dq.stride_c = s.group * hd;
      dq.batch = n_kv_heads;
      product(dq);
      // dK: C = dK_kvh^T (+)= Q_h^T dS_h / sqrt(hd); dV: C = dV_kvh^T (+)= dO_h^T P_h. The group's heads add
      // in order of g (beta = 1 after the first): deterministic, no atomics.
      strided_product<T> dk;
      dk.trans_b = true;
      dk.m = hd, dk.n = keys, dk.k = seq;
      dk.alpha = scale;
      dk.a = q.data + bb * seq * q.cols + g * hd, dk.lda = q.cols, dk.stride_a = s.group * hd;
      dk.b = ds + g * square, dk.ldb = seq, dk.stride_b = s.group * square;
      dk.beta = g == 0 ? T(0) : T(1);
      dk.c = d_k.data + bb * seq * d_k.cols, dk.ldc = d_k.cols, dk.stride_c = hd;
      dk.batch = n_kv_heads;
      product(dk);
      strided_product<T> dv = dk;
      dv.alpha = T(1);
      dv.a = dob + g * hd, dv.lda = d_out.cols;
      dv.b = p + g * square;
      dv.c = d_v.data + bb * seq * d_v.cols, dv.ldc = d_v.cols;
      product(dv);
    }
  }
}

}  // namespace rlhf::detail
