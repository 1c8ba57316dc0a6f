/// @file attention_products.hpp
/// @brief Causal grouped-query attention as strided-batched matrix products with row passes between them:
///        the algorithm of the CUDA backend's attention (cuBLAS products), written once over a product
///        callable so the CPU test suite runs it with a host product of the same semantics.
///
/// Same contract and formulas as rlhf::causal_attention_forward / _backward (rlhf/models/layers/
/// attention.hpp). For each sequence b, and each offset g within a kv group (query heads h = kvh * group + g
/// for every kv head kvh: one batch of Hkv products, since their operands sit at constant strides):
///
///     forward   S_h = Q_h K_kvh^T / sqrt(hd)                     (one product batch per (b, g))
///               P_h = softmax rows of S_h over the visible keys  (a row pass over b's Hq rows per query)
///               O_h = P_h V_kvh                                  (one product batch per (b, g))
///     backward  dP_h = dO_h V_kvh^T                   into a scratch
///               dS_h = P_h o (dP_h - rowsum(P_h o dP_h))       (a row pass)
///               dQ_h = dS_h K_kvh / sqrt(hd)
///               dK_kvh = sum_g dS_h^T Q_h / sqrt(hd),  dV_kvh = sum_g P_h^T dO_h   (accumulated)
///
/// (Vaswani et al. 2017, eq. 1, and its softmax Jacobian.) Every pass runs in blocks of queries [i0, i0 + tb)
/// (tb = attention_query_block_rows: a block's scratch holds at most 2^24 elements), which see only the keys
/// j < i0 + tb: the causal half of the scores past the block is neither computed nor stored, and scratches
/// are Hq * tb * T, never Hq * T * T. The forward writes a block's probabilities into the saved softmax when
/// it is given, else into a scratch; the backward's dP / dS is a scratch. The training pair that keeps row
/// logsumexps instead of the softmax (causal_attention_forward_logsumexp / _backward_recompute) runs in the
/// same blocks, the backward recomputing each block's scores and P = exp(S - lse) (Dao 2023,
/// FlashAttention-2), so that no [Hq * T, T] buffer exists. The products span the block's queries by the
/// sequence's n_b valid keys (lengths copied to the host once per call, `attention_key_extents`): padding
/// keys and values are never read, and the rows of dK and dV past n_b are set to 0. Within that, the causal
/// mask is applied by the row pass, which writes exact zeros past each row's visible keys, so the products
/// that follow add nothing from them. Products use cuBLAS's column-major convention (`strided_product`): a
/// row-major [r, c] matrix with row stride ld is the column-major [c, r] matrix with
/// leading dimension ld, which is how every operand below is read. Row passes accumulate in double, as the
/// generic path does; the products accumulate in T. The softmax's exponentials of float scores are taken in
/// float (rlhf::detail::polynomial_exp, then summed in double): two per score, they were the pass's only
/// double transcendental work, and a GPU's double rate is half its float rate on A100 / H100 and 1/64 of
/// it on L4 / L40S and consumer parts, where they would have outweighed the products.
/// tests/backends/attention_products_test.cpp runs this with a host product against the generic path.
#pragma once

#include <algorithm>
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

/// Where a block's rows of one kind (scores or probabilities; dP or dS) live: query i of head h, for i in the
/// block [i0, i0 + tb), at data + h * head_stride + (i - i0) * T (row stride T). A block scratch has
/// head_stride = tb * T; a sequence's saved softmax has T * T, with data at its head 0's row i0.
template <class T>
struct attention_block_buffer {
  T* data = nullptr;
  std::size_t head_stride = 0;
  RLHF_HOST_DEVICE T* row(std::size_t head, std::size_t row_in_block, std::size_t seq) const {
    return data + head * head_stride + row_in_block * seq;
  }
};

/// The rows of a row pass: the Hq * block_rows rows of sequence bb's queries [first_query, first_query +
/// block_rows), r = h * block_rows + (i - first_query). A pass writes each row's first `columns` elements
/// (exact zeros past the visible keys): T for the saved softmax, whose rows are read whole; the block's last
/// query + 1 for a scratch, of which the products read no further.
template <class S>
struct attention_row_block {
  vector_view<const std::int32_t, S> lengths;
  std::size_t bb = 0, seq = 0;
  std::size_t first_query = 0, block_rows = 0;
  std::size_t columns = 0;

  RLHF_HOST_DEVICE std::size_t head(std::size_t r) const { return r / block_rows; }
  RLHF_HOST_DEVICE std::size_t row_in_block(std::size_t r) const { return r % block_rows; }
  RLHF_HOST_DEVICE std::size_t query(std::size_t r) const { return first_query + r % block_rows; }
  RLHF_HOST_DEVICE std::size_t visible(std::size_t r) const {
    return attention_visible_keys(lengths, bb, query(r), seq);
  }
  template <class T>
  RLHF_HOST_DEVICE T* row(const attention_block_buffer<T>& buffer, std::size_t r) const {
    return buffer.row(head(r), row_in_block(r), seq);
  }
};

/// Row pass of the forward: the scores in `p` become the softmax over each row's visible keys j <
/// min(i + 1, n_b), exact zeros elsewhere; with `logsumexp` set, each row's logsumexp is also written, at
/// h * T + i (0 with no key).
///
/// Like the RMSNorm rows (rlhf/backends/rms_norm_rows.hpp), a row comes in parts that a group of threads
/// can share, each over the row's elements first, first + step, ...: `partial_max`, then `partial_sum`
/// given the row's maximum, then `write` given both. `operator()(r)` is the whole row on one thread.
template <class T, class S>
struct attention_softmax_rows {
  attention_block_buffer<T> p;
  attention_row_block<S> block;
  T* logsumexp = nullptr;  // sequence bb's [Hq * T] row logsumexps, or not wanted

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
    const std::size_t lim = block.visible(r);
    const T* row = block.row(p, r);
    double m = -HUGE_VAL;
    for (std::size_t j = first; j < lim; j += step) {
      const double s = static_cast<double>(row[j]);
      if (s > m) m = s;
    }
    return m;
  }

  /// Sum of exp(s_j - m) over the part's visible elements, m the row's largest visible score.
  RLHF_HOST_DEVICE double partial_sum(std::size_t r, double m, std::size_t first, std::size_t step) const {
    const std::size_t lim = block.visible(r);
    const T* row = block.row(p, r);
    double sum = 0.0;
    for (std::size_t j = first; j < lim; j += step) sum += shifted_exp(row[j], m);  // max subtracted
    return sum;
  }

  /// Writes the part's probabilities from the row's maximum and sum, and zeros past the visible keys (and
  /// the row's logsumexp, from the part that starts the row).
  RLHF_HOST_DEVICE void write(std::size_t r, double m, double sum, std::size_t first, std::size_t step) const {
    const std::size_t lim = block.visible(r);
    T* row = block.row(p, r);
    for (std::size_t j = first; j < block.columns; j += step)
      row[j] = j < lim ? static_cast<T>(shifted_exp(row[j], m) / sum) : T(0);
    if (logsumexp != nullptr && first == 0)
      logsumexp[block.head(r) * block.seq + block.query(r)] = lim > 0 ? static_cast<T>(m + log(sum)) : T(0);
  }

  RLHF_HOST_DEVICE void operator()(std::size_t r) const {
    const double m = partial_max(r, 0, 1);
    write(r, m, partial_sum(r, m, 0, 1), 0, 1);
  }
};

/// Row pass of the backward: dS = P o (dP - D), D = sum_j P dP over the visible keys, in place over dP;
/// exact zeros past the visible keys. In parts as above: `partial_sum` of P dP, then `write` given the row's D.
template <class T, class S>
struct attention_softmax_backward_rows {
  attention_block_buffer<const T> p;  // the saved probabilities
  attention_block_buffer<T> ds;       // dP, becoming dS
  attention_row_block<S> block;

  RLHF_HOST_DEVICE double partial_sum(std::size_t r, std::size_t first, std::size_t step) const {
    const std::size_t lim = block.visible(r);
    const T* pr = block.row(p, r);
    const T* dr = block.row(ds, r);
    double d = 0.0;
    for (std::size_t j = first; j < lim; j += step) d += static_cast<double>(pr[j]) * static_cast<double>(dr[j]);
    return d;
  }

  RLHF_HOST_DEVICE void write(std::size_t r, double d, std::size_t first, std::size_t step) const {
    const std::size_t lim = block.visible(r);
    const T* pr = block.row(p, r);
    T* dr = block.row(ds, r);
    for (std::size_t j = first; j < block.columns; j += step)
      dr[j] = j < lim ? static_cast<T>(static_cast<double>(pr[j]) * (static_cast<double>(dr[j]) - d)) : T(0);
  }

  RLHF_HOST_DEVICE void operator()(std::size_t r) const { write(r, partial_sum(r, 0, 1), 0, 1); }
};

/// Row pass of the recomputing backward: `p` holds a block's scores S and becomes P = exp(S - lse) (Dao
/// 2023, FlashAttention-2), `ds` holds dP and becomes dS = P o (dP - D) with D = sum_j P dP; exact zeros
/// past the visible keys. In parts: `partial_sum` of P dP (P recomputed from S, which stays in place until
/// the writes), then `write` given D.
template <class T, class S>
struct attention_recompute_backward_rows {
  attention_block_buffer<T> p;
  attention_block_buffer<T> ds;
  attention_row_block<S> block;
  const T* logsumexp;  // sequence bb's [Hq * T] row logsumexps

  RLHF_HOST_DEVICE double row_logsumexp(std::size_t r) const {
    return static_cast<double>(logsumexp[block.head(r) * block.seq + block.query(r)]);
  }

  RLHF_HOST_DEVICE double partial_sum(std::size_t r, std::size_t first, std::size_t step) const {
    const std::size_t lim = block.visible(r);
    const double lse = row_logsumexp(r);
    const T* sr = block.row(p, r);
    const T* dr = block.row(ds, r);
    double d = 0.0;
    for (std::size_t j = first; j < lim; j += step)
      d += attention_softmax_rows<T, S>::shifted_exp(sr[j], lse) * static_cast<double>(dr[j]);
    return d;
  }

  RLHF_HOST_DEVICE void write(std::size_t r, double d, std::size_t first, std::size_t step) const {
    const std::size_t lim = block.visible(r);
    const double lse = row_logsumexp(r);
    T* sr = block.row(p, r);
    T* dr = block.row(ds, r);
    for (std::size_t j = first; j < block.columns; j += step) {
      if (j < lim) {
        const double pj = attention_softmax_rows<T, S>::shifted_exp(sr[j], lse);
        sr[j] = static_cast<T>(pj);
        dr[j] = static_cast<T>(pj * (static_cast<double>(dr[j]) - d));
      } else {
        sr[j] = T(0);
        dr[j] = T(0);
      }
    }
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

/// Queries per block of the blocked passes below: a block's scratch holds Hq * rows * T scores (and the
/// backward's dP as much again); at most 2^24 elements (64 MiB of float), at least 64 rows, at most T.
inline std::size_t attention_query_block_rows(std::size_t n_heads, std::size_t seq) {
  const std::size_t budget = std::size_t(1) << 24;
  const std::size_t per_row = n_heads * seq > 0 ? n_heads * seq : 1;
  const std::size_t rows = budget / per_row > 64 ? budget / per_row : 64;
  return rows < seq ? rows : seq;
}

/// One block of queries [i0, i0 + tb) of sequence bb, which sees the keys [0, kb). Its buffers
/// (attention_block_buffer) put the heads h = kvh * group + g of one offset g at a constant stride, so each
/// product below is one batch over the kv heads, in cuBLAS's column-major convention (see the file comment).
struct attention_block {
  attention_shape s;
  std::size_t bb, i0, tb, kb;

  /// A scratch of Hq * tb rows of T for this block.
  template <class T>
  attention_block_buffer<T> scratch(T* data) const {
    return {data, tb * s.seq};
  }
  /// The block's rows of sequence bb's saved softmax (`probs`: all B * Hq * T rows).
  template <class T>
  attention_block_buffer<T> saved(T* probs) const {
    return {probs + (bb * s.n_heads * s.seq + i0) * s.seq, s.seq * s.seq};
  }
  /// The row pass's rows of this block, writing `columns` elements per row.
  template <class S>
  attention_row_block<S> rows(vector_view<const std::int32_t, S> lengths, std::size_t columns) const {
    return {lengths, bb, s.seq, i0, tb, columns};
  }
};

/// Scores: C = S_blk^T (column-major) = K_kvh Q_blk^T * alpha, into `p`'s rows; only the block's kb columns.
template <class T, class Product>
void attention_score_products(Product& product, const attention_block& blk, const T* q, std::size_t q_cols,
                              const T* k, std::size_t k_cols, attention_block_buffer<T> p, T alpha) {
  const attention_shape& s = blk.s;
  for (std::size_t g = 0; g < s.group; ++g) {
    strided_product<T> sc;
    sc.trans_a = true;
    sc.m = blk.kb, sc.n = blk.tb, sc.k = s.head_dim;
    sc.alpha = alpha;
    sc.a = k + blk.bb * s.seq * k_cols, sc.lda = k_cols, sc.stride_a = s.head_dim;
    sc.b = q + (blk.bb * s.seq + blk.i0) * q_cols + g * s.head_dim, sc.ldb = q_cols, sc.stride_b = s.group * s.head_dim;
    sc.c = p.data + g * p.head_stride, sc.ldc = s.seq, sc.stride_c = s.group * p.head_stride;
    sc.batch = s.n_kv_heads;
    product(sc);
  }
}

/// Output: C = O_blk^T = V_kvh^T P_blk^T over the block's keys.
template <class T, class Product>
void attention_output_products(Product& product, const attention_block& blk, const T* v, std::size_t v_cols,
                               attention_block_buffer<const T> p, T* out, std::size_t out_cols) {
  const attention_shape& s = blk.s;
  for (std::size_t g = 0; g < s.group; ++g) {
    strided_product<T> o;
    o.m = s.head_dim, o.n = blk.tb, o.k = blk.kb;
    o.a = v + blk.bb * s.seq * v_cols, o.lda = v_cols, o.stride_a = s.head_dim;
    o.b = p.data + g * p.head_stride, o.ldb = s.seq, o.stride_b = s.group * p.head_stride;
    o.c = out + (blk.bb * s.seq + blk.i0) * out_cols + g * s.head_dim, o.ldc = out_cols,
    o.stride_c = s.group * s.head_dim;
    o.batch = s.n_kv_heads;
    product(o);
  }
}

/// The backward's products of a block, given P_blk in `p` and dS_blk in `ds`: dQ_blk = dS K_kvh / sqrt(hd)
/// (C = dQ_blk^T = K_kvh^T dS^T), dK_kvh += dS^T Q_blk / sqrt(hd) and dV_kvh += P^T dO_blk, the group's
/// heads (and the blocks) adding in order onto dK and dV rows zeroed by the caller: deterministic, no atomics.
template <class T, class Product>
void attention_gradient_products(Product& product, const attention_block& blk, const T* q, std::size_t q_cols,
                                 const T* k, std::size_t k_cols, const T* d_out, std::size_t d_out_cols,
                                 attention_block_buffer<const T> p, attention_block_buffer<const T> ds, T* d_q,
                                 std::size_t d_q_cols, T* d_k, T* d_v, std::size_t kv_cols) {
  const attention_shape& s = blk.s;
  const std::size_t hd = s.head_dim, first_row = blk.bb * s.seq + blk.i0;
  const T scale = static_cast<T>(s.scale);
  for (std::size_t g = 0; g < s.group; ++g) {
    strided_product<T> dq;
    dq.m = hd, dq.n = blk.tb, dq.k = blk.kb;
    dq.alpha = scale;
    dq.a = k + blk.bb * s.seq * k_cols, dq.lda = k_cols, dq.stride_a = hd;
    dq.b = ds.data + g * ds.head_stride, dq.ldb = s.seq, dq.stride_b = s.group * ds.head_stride;
    dq.c = d_q + first_row * d_q_cols + g * hd, dq.ldc = d_q_cols, dq.stride_c = s.group * hd;
    dq.batch = s.n_kv_heads;
    product(dq);
    strided_product<T> dk;
    dk.trans_b = true;
    dk.m = hd, dk.n = blk.kb, dk.k = blk.tb;
    dk.alpha = scale;
    dk.a = q + first_row * q_cols + g * hd, dk.lda = q_cols, dk.stride_a = s.group * hd;
    dk.b = ds.data + g * ds.head_stride, dk.ldb = s.seq, dk.stride_b = s.group * ds.head_stride;
    dk.beta = T(1);
    dk.c = d_k + blk.bb * s.seq * kv_cols, dk.ldc = kv_cols, dk.stride_c = hd;
    dk.batch = s.n_kv_heads;
    product(dk);
    strided_product<T> dv = dk;
    dv.alpha = T(1);
    dv.a = d_out + first_row * d_out_cols + g * hd, dv.lda = d_out_cols;
    dv.b = p.data + g * p.head_stride, dv.stride_b = s.group * p.head_stride;
    dv.c = d_v + blk.bb * s.seq * kv_cols;
    product(dv);
  }
}

/// The forward in blocks of `rows` queries (see the file comment): per block, the score products, the softmax
/// row pass (writing the row logsumexps too when `logsumexp` is given), the output products. The block's
/// scores and probabilities go to the saved softmax `probs` when it is given (rows written whole), else to
/// `scratch` (Hq * rows * T).
template <class B, class T, class Product, class RowPass>
void attention_forward_blocks(const B& be, Product& product, RowPass& row_pass,
                              matrix_view<const T, typename B::memory_space> q,
                              matrix_view<const T, typename B::memory_space> k,
                              matrix_view<const T, typename B::memory_space> v, const attention_shape& s,
                              std::size_t rows, T* probs, T* scratch, matrix_view<T, typename B::memory_space> out,
                              T* logsumexp, vector_view<const std::int32_t, typename B::memory_space> lengths) {
  using S = typename B::memory_space;
  const std::size_t seq = s.seq;
  const std::vector<std::size_t> extents = attention_key_extents(be, lengths, s.batch, seq);
  for (std::size_t bb = 0; bb < s.batch; ++bb) {
    T* lse = logsumexp == nullptr ? nullptr : logsumexp + bb * s.n_heads * seq;
    for (std::size_t i0 = 0; i0 < seq; i0 += rows) {
      const std::size_t tb = std::min(rows, seq - i0);
      const attention_block blk{s, bb, i0, tb, std::min(i0 + tb, extents[bb])};
      const attention_block_buffer<T> p = probs != nullptr ? blk.saved(probs) : blk.scratch(scratch);
      attention_score_products<T>(product, blk, q.data, q.cols, k.data, k.cols, p, static_cast<T>(s.scale));
      // The row pass writes the softmax (zeros past the visible keys, all zeros for a query with none).
      row_pass(be, s.n_heads * tb, 3 * blk.kb,
               attention_softmax_rows<T, S>{p, blk.rows(lengths, probs != nullptr ? seq : i0 + tb), lse});
      if (blk.kb == 0) {  // no key: the block's outputs are 0 (no product with an empty inner dimension)
        attention_zero_rows(be, out, bb * seq + i0, bb * seq + i0 + tb);
        continue;
      }
      attention_output_products<T>(product, blk, v.data, v.cols, {p.data, p.head_stride}, out.data, out.cols);
    }
  }
}

/// The block size of a blocked pass: `block_rows`, at most T, or attention_query_block_rows when it is 0.
inline std::size_t attention_block_rows_or_default(std::size_t block_rows, std::size_t n_heads, std::size_t seq) {
  return block_rows == 0 ? attention_query_block_rows(n_heads, seq) : std::min(block_rows, seq);
}

/// The forward (see the file comment). `product(const strided_product<T>&)` runs one batch of products on
/// the backend's device, `row_pass` the softmax row passes (see attention_rows_by_index). In blocks of
/// `block_rows` queries (0: attention_query_block_rows), into the saved probabilities when `probs` is given,
/// else into a scratch of Hq * rows * T.
template <class B, class T, class Product, class RowPass = attention_rows_by_index>
void attention_forward_by_products(const B& be, Product&& product, RowPass&& row_pass,
                                   matrix_view<const T, typename B::memory_space> q,
                                   matrix_view<const T, typename B::memory_space> k,
                                   matrix_view<const T, typename B::memory_space> v, std::size_t batch,
                                   std::size_t n_heads, std::size_t n_kv_heads,
                                   matrix_view<T, typename B::memory_space> out,
                                   matrix_view<T, typename B::memory_space> probs,
                                   vector_view<const std::int32_t, typename B::memory_space> lengths,
                                   std::size_t block_rows = 0) {
  const attention_shape s = attention_shape_of(q.rows, q.cols, batch, n_heads, n_kv_heads);
  const bool save = probs.data != nullptr;
  const std::size_t rows = attention_block_rows_or_default(block_rows, n_heads, s.seq);
  auto scratch = allocate<T>(be, save ? 0 : n_heads * rows, s.seq);
  attention_forward_blocks<B, T>(be, product, row_pass, q, k, v, s, rows, probs.data, scratch.view().data, out,
                                 static_cast<T*>(nullptr), lengths);
}

/// The logsumexp forward (rlhf::causal_attention_forward_logsumexp) by products: the blocked forward above
/// with each row's logsumexp written by the row pass, in a scratch of Hq * rows * T (`block_rows` 0 picks
/// attention_query_block_rows), so that no [Hq * T, T] buffer exists.
template <class B, class T, class Product, class RowPass = attention_rows_by_index>
void attention_forward_logsumexp_by_products(const B& be, Product&& product, RowPass&& row_pass,
                                             matrix_view<const T, typename B::memory_space> q,
                                             matrix_view<const T, typename B::memory_space> k,
                                             matrix_view<const T, typename B::memory_space> v, std::size_t batch,
                                             std::size_t n_heads, std::size_t n_kv_heads,
                                             matrix_view<T, typename B::memory_space> out,
                                             vector_view<T, typename B::memory_space> logsumexp,
                                             vector_view<const std::int32_t, typename B::memory_space> lengths,
                                             std::size_t block_rows = 0) {
  const attention_shape s = attention_shape_of(q.rows, q.cols, batch, n_heads, n_kv_heads);
  const std::size_t rows = attention_block_rows_or_default(block_rows, n_heads, s.seq);
  auto scratch = allocate<T>(be, n_heads * rows, s.seq);
  attention_forward_blocks<B, T>(be, product, row_pass, q, k, v, s, rows, static_cast<T*>(nullptr),
                                 scratch.view().data, out, logsumexp.data, lengths);
}

/// The backward in blocks of `rows` queries: per block, dP_blk = dO_blk V_kb^T into `ds` (Hq * rows * T),
/// then `block_pass(blk, ds_rows)`, which turns dP into dS and returns where the block's P is, then the
/// gradient products, every block adding onto dK and dV rows zeroed first.
template <class B, class T, class Product, class BlockPass>
void attention_backward_blocks(const B& be, Product& product, matrix_view<const T, typename B::memory_space> q,
                               matrix_view<const T, typename B::memory_space> k,
                               matrix_view<const T, typename B::memory_space> v,
                               matrix_view<const T, typename B::memory_space> d_out, const attention_shape& s,
                               std::size_t rows, T* ds, matrix_view<T, typename B::memory_space> d_q,
                               matrix_view<T, typename B::memory_space> d_k,
                               matrix_view<T, typename B::memory_space> d_v,
                               vector_view<const std::int32_t, typename B::memory_space> lengths,
                               const BlockPass& block_pass) {
  const std::size_t seq = s.seq;
  const std::vector<std::size_t> extents = attention_key_extents(be, lengths, s.batch, seq);
  for (std::size_t bb = 0; bb < s.batch; ++bb) {
    const std::size_t keys = extents[bb];
    // The blocks add onto these; padding keys get no gradient (their rows stay 0).
    attention_zero_rows(be, d_k, bb * seq, (bb + 1) * seq);
    attention_zero_rows(be, d_v, bb * seq, (bb + 1) * seq);
    if (keys == 0) {
      attention_zero_rows(be, d_q, bb * seq, (bb + 1) * seq);
      continue;
    }
    for (std::size_t i0 = 0; i0 < seq; i0 += rows) {
      const std::size_t tb = std::min(rows, seq - i0);
      const attention_block blk{s, bb, i0, tb, std::min(i0 + tb, keys)};
      const attention_block_buffer<T> ds_rows = blk.scratch(ds);
      // dP: C = dP^T = V_kvh dO^T (the score products' shape).
      attention_score_products<T>(product, blk, d_out.data, d_out.cols, v.data, v.cols, ds_rows, T(1));
      const attention_block_buffer<const T> p_rows = block_pass(blk, ds_rows);
      attention_gradient_products<T>(product, blk, q.data, q.cols, k.data, k.cols, d_out.data, d_out.cols, p_rows,
                                     {ds_rows.data, ds_rows.head_stride}, d_q.data, d_q.cols, d_k.data, d_v.data,
                                     d_k.cols);
    }
  }
}

/// The backward (see the file comment) from the saved softmax, in blocks of `block_rows` queries (0:
/// attention_query_block_rows) with a dP / dS scratch of Hq * rows * T; `product` and `row_pass` as in the
/// forward.
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
                                    vector_view<const std::int32_t, typename B::memory_space> lengths,
                                    std::size_t block_rows = 0) {
  using S = typename B::memory_space;
  const attention_shape s = attention_shape_of(q.rows, q.cols, batch, n_heads, n_kv_heads);
  const std::size_t rows = attention_block_rows_or_default(block_rows, n_heads, s.seq);
  auto scratch = allocate<T>(be, n_heads * rows, s.seq);
  const auto dp_to_ds = [&](const attention_block& blk, attention_block_buffer<T> ds) {
    const attention_block_buffer<const T> p = blk.saved(probs.data);
    row_pass(be, n_heads * blk.tb, 2 * blk.kb,
             attention_softmax_backward_rows<T, S>{p, ds, blk.rows(lengths, blk.i0 + blk.tb)});
    return p;
  };
  attention_backward_blocks<B, T>(be, product, q, k, v, d_out, s, rows, scratch.view().data, d_q, d_k, d_v, lengths,
                                  dp_to_ds);
}

/// The recomputing backward (rlhf::causal_attention_backward_recompute) by products, in the forward's blocks
/// of queries: per block, S_blk into a second scratch of Hq * tb * T and the row pass
/// attention_recompute_backward_rows (P = exp(S - lse), dS = P o (dP - D)) between dP and the gradient
/// products.
template <class B, class T, class Product, class RowPass = attention_rows_by_index>
void attention_backward_recompute_by_products(const B& be, Product&& product, RowPass&& row_pass,
                                              matrix_view<const T, typename B::memory_space> q,
                                              matrix_view<const T, typename B::memory_space> k,
                                              matrix_view<const T, typename B::memory_space> v,
                                              vector_view<const T, typename B::memory_space> logsumexp,
                                              matrix_view<const T, typename B::memory_space> d_out,
                                              std::size_t batch, std::size_t n_heads, std::size_t n_kv_heads,
                                              matrix_view<T, typename B::memory_space> d_q,
                                              matrix_view<T, typename B::memory_space> d_k,
                                              matrix_view<T, typename B::memory_space> d_v,
                                              vector_view<const std::int32_t, typename B::memory_space> lengths,
                                              std::size_t block_rows = 0) {
  using S = typename B::memory_space;
  const attention_shape s = attention_shape_of(q.rows, q.cols, batch, n_heads, n_kv_heads);
  const std::size_t rows = attention_block_rows_or_default(block_rows, n_heads, s.seq);
  auto scratch_p = allocate<T>(be, n_heads * rows, s.seq), scratch_ds = allocate<T>(be, n_heads * rows, s.seq);
  const auto recompute = [&](const attention_block& blk, attention_block_buffer<T> ds) {
    const attention_block_buffer<T> p = blk.scratch(scratch_p.view().data);
    attention_score_products<T>(product, blk, q.data, q.cols, k.data, k.cols, p, static_cast<T>(s.scale));
    row_pass(be, n_heads * blk.tb, 3 * blk.kb,
             attention_recompute_backward_rows<T, S>{p, ds, blk.rows(lengths, blk.i0 + blk.tb),
                                                     logsumexp.data + blk.bb * n_heads * s.seq});
    return attention_block_buffer<const T>{p.data, p.head_stride};
  };
  attention_backward_blocks<B, T>(be, product, q, k, v, d_out, s, rows, scratch_ds.view().data, d_q, d_k, d_v,
                                  lengths, recompute);
}

}  // namespace rlhf::detail
