/// @file causal_attention.hpp
/// @brief The Eigen backend's causal grouped-query attention, forward and backward, as blocked GEMMs per
///        head with a vectorized softmax in between.
///
/// Same contract and formulas as rlhf::causal_attention_forward / _backward (rlhf/models/layers/
/// attention.hpp; found by argument-dependent lookup as `rlhf_specialized_causal_attention_forward` and
/// `_backward`, arguments already validated). The generic path runs one scalar loop per query over its keys,
/// dot products and exps in double. Here each (sequence b, head h) is a few matrix products over that head's
/// strided columns (Eigen::Map with an outer stride: no copies), in blocks of `attention_block` queries:
/// queries [r0, r1) see at most the keys [0, kc) with kc = min(r1, n_b), so the products skip the keys no
/// query of the block can see (about half the work of the square product at T = 256):
///
///     forward   S = Q_blk K_kc^T / sqrt(hd)   P = row softmax of S over j < min(i + 1, n_b)   O_blk = P V_kc
///     backward  dP = dO_blk V_kc^T   D_i = sum_j P_ij dP_ij   dS = P o (dP - D)
///               dQ_blk = dS K_kc / sqrt(hd)   dK_kc += dS^T Q_blk / sqrt(hd)   dV_kc += P^T dO_blk
///
/// (Vaswani et al. 2017, eq. 1, and its softmax Jacobian). The softmax runs in T with Eigen's packet exp,
/// max subtracted; masked keys get probability 0 as in the generic path, and the backward reads only the
/// visible part of each saved row (a copy of the block with the rest zeroed), as the generic path does.
///
/// Work is split over (b, h) in the forward and over (b, kv head) in the backward, which sums the gradient of
/// a kv head over its group's query heads in a fixed order: deterministic, no atomics, the same bits on any
/// thread count. Dot products accumulate in T (hd terms, then kc terms), where the generic path uses double:
/// results agree to rounding (tests/backends/eigen_test.cpp holds them to generic_only<eigen_backend>).
///
/// The logsumexp pair (rlhf::causal_attention_forward_logsumexp / _backward_recompute) runs the same blocks:
/// the forward writes each row's m + log(sum) from its softmax and saves nothing else; the backward computes a
/// block's P as exp(Q_blk K_kc^T / sqrt(hd) - lse) (one more product per block) where the other copies it.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "rlhf/backends/attention_shape.hpp"
#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

namespace detail {

/// Queries per block of the blocked products: small enough that a block skips most of the keys the
/// causal mask hides, large enough for the GEMM kernel's panels.
inline constexpr std::size_t attention_block = 64;

// The sizes of a call, derived as every attention path derives them (rlhf/backends/attention_shape.hpp).
using rlhf::detail::attention_shape;
using rlhf::detail::attention_shape_of;

template <class T>
using attention_rows = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
/// One head's [T, hd] slice of a [B*T, H*hd] matrix: rows of the sequence, the head's columns.
template <class T>
using attention_head_map = Eigen::Map<attention_rows<T>, 0, Eigen::OuterStride<>>;
template <class T>
using attention_const_head_map = Eigen::Map<const attention_rows<T>, 0, Eigen::OuterStride<>>;

template <class T>
attention_const_head_map<T> attention_head(matrix_view<const T, host_space> m, const attention_shape& s,
                                           std::size_t bb, std::size_t head) {
  return attention_const_head_map<T>(m.data + bb * s.seq * m.cols + head * s.head_dim,
                                     static_cast<Eigen::Index>(s.seq), static_cast<Eigen::Index>(s.head_dim),
                                     Eigen::OuterStride<>(static_cast<Eigen::Index>(m.cols)));
}
template <class T>
attention_head_map<T> attention_head(matrix_view<T, host_space> m, const attention_shape& s, std::size_t bb,
                                     std::size_t head) {
  return attention_head_map<T>(m.data + bb * s.seq * m.cols + head * s.head_dim, static_cast<Eigen::Index>(s.seq),
                               static_cast<Eigen::Index>(s.head_dim),
                               Eigen::OuterStride<>(static_cast<Eigen::Index>(m.cols)));
}

/// Valid keys of sequence bb (n_b).
inline std::size_t attention_length(vector_view<const std::int32_t, host_space> lengths, std::size_t bb,
                                    std::size_t seq) {
  return lengths.empty() ? seq : static_cast<std::size_t>(lengths[bb]);
}

/// Softmax of row `s` (scores in place -> probabilities) over its first `lim` entries; the entries from `lim`
/// to `width` become 0. A row with no visible key is all 0. Returns the row's logsumexp (0 with no key).
template <class T>
T attention_softmax_row(T* s, std::size_t lim, std::size_t width) {
  T lse = T(0);
  if (lim > 0) {
    Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> row(s, static_cast<Eigen::Index>(lim));
    const T m = row.maxCoeff();
    row = (row - m).exp();  // max subtracted: every term <= 1, no overflow
    const T sum = row.sum();
    row *= T(1) / sum;
    lse = m + std::log(sum);
  }
  std::fill(s + lim, s + width, T(0));
  return lse;
}

/// Forward of one (b, h): probabilities into `p` ([T, T] with row stride T: the saved probs, or a scratch of
/// attention_block rows when nothing is saved, then indexed by the row within the block); each query's row
/// logsumexp into `lse` ([T]) unless it is null.
template <class T>
void attention_forward_head(matrix_view<const T, host_space> q, matrix_view<const T, host_space> k,
                            matrix_view<const T, host_space> v, matrix_view<T, host_space> out, T* p, bool p_is_block,
                            T* lse, std::size_t len, const attention_shape& s, std::size_t bb, std::size_t h) {
  using Eigen::Index;
  const std::size_t seq = s.seq, kvh = h / s.group;
  const auto qh = attention_head(q, s, bb, h);
  const auto kh = attention_head(k, s, bb, kvh);
  const auto vh = attention_head(v, s, bb, kvh);
  auto oh = attention_head(out, s, bb, h);
  const T scale = static_cast<T>(s.scale);
  for (std::size_t r0 = 0; r0 < seq; r0 += attention_block) {
    const std::size_t rb = std::min(attention_block, seq - r0);
    const std::size_t kc = std::min(r0 + rb, len);
    T* pb = p_is_block ? p : p + r0 * seq;
    Eigen::Map<attention_rows<T>, 0, Eigen::OuterStride<>> pm(pb, static_cast<Index>(rb), static_cast<Index>(kc),
                                                              Eigen::OuterStride<>(static_cast<Index>(seq)));
    if (kc == 0) {
      oh.middleRows(static_cast<Index>(r0), static_cast<Index>(rb)).setZero();
      if (lse != nullptr) std::fill(lse + r0, lse + r0 + rb, T(0));
      if (!p_is_block) {
        for (std::size_t r = 0; r < rb; ++r) std::fill(pb + r * seq, pb + (r + 1) * seq, T(0));
      }
      continue;
    }
    pm.noalias() = scale * (qh.middleRows(static_cast<Index>(r0), static_cast<Index>(rb)) *
                            kh.topRows(static_cast<Index>(kc)).transpose());
    for (std::size_t r = 0; r < rb; ++r) {
      const std::size_t i = r0 + r;
      const T row_lse = attention_softmax_row(pb + r * seq, std::min(i + 1, len), p_is_block ? kc : seq);
      if (lse != nullptr) lse[i] = row_lse;
    }
    oh.middleRows(static_cast<Index>(r0), static_cast<Index>(rb)).noalias() = pm * vh.topRows(static_cast<Index>(kc));
  }
}

/// The forward over every (b, h), the heads in parallel: probabilities into `probs` when it is given (the
/// saved softmax), else into a per-thread scratch of attention_block x T elements; each row's logsumexp into
/// `lse` ([B * Hq * T]) unless it is null.
template <class T>
void attention_forward_items(const eigen_backend& b, matrix_view<const T, host_space> q,
                             matrix_view<const T, host_space> k, matrix_view<const T, host_space> v,
                             const attention_shape& s, matrix_view<T, host_space> out, T* probs, T* lse,
                             vector_view<const std::int32_t, host_space> lengths) {
  const std::size_t items = s.batch * s.n_heads;
  const bool save = probs != nullptr;
#if defined(_OPENMP)
  Eigen::setNbThreads(1);  // the products below are per head and small; the heads are what run in parallel
#endif
  b.parallel_ranges(items, items * s.seq * s.seq * s.head_dim, [&](std::size_t first, std::size_t last) {
    attention_rows<T> scratch;
    if (!save) scratch.resize(static_cast<Eigen::Index>(attention_block), static_cast<Eigen::Index>(s.seq));
    for (std::size_t item = first; item < last; ++item) {
      const std::size_t bb = item / s.n_heads, h = item % s.n_heads;
      T* p = save ? probs + item * s.seq * s.seq : scratch.data();
      attention_forward_head(q, k, v, out, p, !save, lse == nullptr ? nullptr : lse + item * s.seq,
                             attention_length(lengths, bb, s.seq), s, bb, h);
    }
  });
}

}  // namespace detail

/// rlhf::causal_attention_forward's specialization for rlhf::eigen_backend (see the file comment). With an
/// empty `probs` (inference) the probabilities of each block live in a per-thread scratch of
/// attention_block x T elements.
template <class T>
void rlhf_specialized_causal_attention_forward(const eigen_backend& b, matrix_view<const T, host_space> q,
                                               matrix_view<const T, host_space> k, matrix_view<const T, host_space> v,
                                               std::size_t batch, std::size_t n_heads, std::size_t n_kv_heads,
                                               matrix_view<T, host_space> out, matrix_view<T, host_space> probs,
                                               vector_view<const std::int32_t, host_space> lengths) {
  detail::attention_forward_items(b, q, k, v, detail::attention_shape_of(q.rows, q.cols, batch, n_heads, n_kv_heads),
                                  out, probs.data, static_cast<T*>(nullptr), lengths);
}

/// rlhf::causal_attention_forward_logsumexp's specialization for rlhf::eigen_backend: the forward above with
/// a per-thread block scratch (nothing saved), each row's logsumexp taken from its softmax's max and sum.
template <class T>
void rlhf_specialized_causal_attention_forward_logsumexp(const eigen_backend& b, matrix_view<const T, host_space> q,
                                                         matrix_view<const T, host_space> k,
                                                         matrix_view<const T, host_space> v, std::size_t batch,
                                                         std::size_t n_heads, std::size_t n_kv_heads,
                                                         matrix_view<T, host_space> out,
                                                         vector_view<T, host_space> logsumexp,
                                                         vector_view<const std::int32_t, host_space> lengths) {
  detail::attention_forward_items(b, q, k, v, detail::attention_shape_of(q.rows, q.cols, batch, n_heads, n_kv_heads),
                                  out, static_cast<T*>(nullptr), logsumexp.data, lengths);
}

namespace detail {

/// The backward of the file comment, one (b, kv head) per work item, its group's query heads in order; two
/// scratch blocks per thread. `fill_probs(bb, h, r0, rb, kc, len, pv)` writes rows r < rb of `pv` (row stride
/// T) with P_(r0 + r, j) for j < kc: the saved softmax's visible part, or the recomputed one, 0 past the
/// visible keys.
template <class T, class FillProbs>
void attention_backward_items(const eigen_backend& b, matrix_view<const T, host_space> q,
                              matrix_view<const T, host_space> k, matrix_view<const T, host_space> v,
                              matrix_view<const T, host_space> d_out, const attention_shape& s,
                              matrix_view<T, host_space> d_q, matrix_view<T, host_space> d_k,
                              matrix_view<T, host_space> d_v, vector_view<const std::int32_t, host_space> lengths,
                              const FillProbs& fill_probs) {
  using Eigen::Index;
  const std::size_t seq = s.seq, items = s.batch * s.n_kv_heads;
  const T scale = static_cast<T>(s.scale);
#if defined(_OPENMP)
  Eigen::setNbThreads(1);
#endif
  b.parallel_ranges(items, items * s.group * seq * seq * s.head_dim, [&](std::size_t first, std::size_t last) {
    const auto block = static_cast<Index>(attention_block);
    attention_rows<T> pv(block, static_cast<Index>(seq));  // the visible part of P's block
    attention_rows<T> ds(block, static_cast<Index>(seq));  // dP, then dS, in place
    for (std::size_t item = first; item < last; ++item) {
      const std::size_t bb = item / s.n_kv_heads, kvh = item % s.n_kv_heads;
      const std::size_t len = attention_length(lengths, bb, seq);
      const auto kh = attention_head(k, s, bb, kvh);
      const auto vh = attention_head(v, s, bb, kvh);
      auto dk = attention_head(d_k, s, bb, kvh);
      auto dv = attention_head(d_v, s, bb, kvh);
      dk.setZero();
      dv.setZero();
      for (std::size_t h = kvh * s.group; h < (kvh + 1) * s.group; ++h) {
        const auto qh = attention_head(q, s, bb, h);
        const auto doh = attention_head(d_out, s, bb, h);
        auto dq = attention_head(d_q, s, bb, h);
        for (std::size_t r0 = 0; r0 < seq; r0 += attention_block) {
          const std::size_t rb = std::min(attention_block, seq - r0);
          const std::size_t kc = std::min(r0 + rb, len);
          const auto rows = static_cast<Index>(rb), keys = static_cast<Index>(kc), first_row = static_cast<Index>(r0);
          if (kc == 0) {
            dq.middleRows(first_row, rows).setZero();
            continue;
          }
          auto pb = pv.topLeftCorner(rows, keys);
          auto db = ds.topLeftCorner(rows, keys);
          fill_probs(bb, h, r0, rb, kc, len, pv);
          db.noalias() = doh.middleRows(first_row, rows) * vh.topRows(keys).transpose();
          for (std::size_t r = 0; r < rb; ++r) {
            const std::size_t lim = std::min(r0 + r + 1, len);
            const T* pr = pv.data() + r * seq;
            T* dr = ds.data() + r * seq;
            T rowsum = T(0);
            for (std::size_t j = 0; j < lim; ++j) rowsum += pr[j] * dr[j];
            for (std::size_t j = 0; j < lim; ++j) dr[j] = pr[j] * (dr[j] - rowsum);
            std::fill(dr + lim, dr + kc, T(0));
          }
          dq.middleRows(first_row, rows).noalias() = scale * (db * kh.topRows(keys));
          dk.topRows(keys).noalias() += scale * (db.transpose() * qh.middleRows(first_row, rows));
          dv.topRows(keys).noalias() += pb.transpose() * doh.middleRows(first_row, rows);
        }
      }
    }
  });
}

}  // namespace detail

/// rlhf::causal_attention_backward's specialization for rlhf::eigen_backend (see the file comment): the
/// probabilities of each block copied from the saved softmax.
template <class T>
void rlhf_specialized_causal_attention_backward(const eigen_backend& b, matrix_view<const T, host_space> q,
                                                matrix_view<const T, host_space> k, matrix_view<const T, host_space> v,
                                                matrix_view<const T, host_space> probs,
                                                matrix_view<const T, host_space> d_out, std::size_t batch,
                                                std::size_t n_heads, std::size_t n_kv_heads,
                                                matrix_view<T, host_space> d_q, matrix_view<T, host_space> d_k,
                                                matrix_view<T, host_space> d_v,
                                                vector_view<const std::int32_t, host_space> lengths) {
  const detail::attention_shape s = detail::attention_shape_of(q.rows, q.cols, batch, n_heads, n_kv_heads);
  const std::size_t seq = s.seq;
  const auto copy_saved = [&](std::size_t bb, std::size_t h, std::size_t r0, std::size_t rb, std::size_t kc,
                              std::size_t len, detail::attention_rows<T>& pv) {
    const T* ph = probs.data + (bb * n_heads + h) * seq * seq;
    for (std::size_t r = 0; r < rb; ++r) {
      const std::size_t lim = std::min(r0 + r + 1, len);
      const T* src = ph + (r0 + r) * seq;
      T* pr = pv.data() + r * seq;
      std::copy(src, src + lim, pr);
      std::fill(pr + lim, pr + kc, T(0));
    }
  };
  detail::attention_backward_items<T>(b, q, k, v, d_out, s, d_q, d_k, d_v, lengths, copy_saved);
}

/// rlhf::causal_attention_backward_recompute's specialization for rlhf::eigen_backend: each block's
/// probabilities recomputed, S = Q_blk K_kc^T / sqrt(hd) (one more product per block) and P = exp(S - lse)
/// with Eigen's packet exp, then the backward above.
template <class T>
void rlhf_specialized_causal_attention_backward_recompute(
    const eigen_backend& b, matrix_view<const T, host_space> q, matrix_view<const T, host_space> k,
    matrix_view<const T, host_space> v, vector_view<const T, host_space> logsumexp,
    matrix_view<const T, host_space> d_out, std::size_t batch, std::size_t n_heads, std::size_t n_kv_heads,
    matrix_view<T, host_space> d_q, matrix_view<T, host_space> d_k, matrix_view<T, host_space> d_v,
    vector_view<const std::int32_t, host_space> lengths) {
  using Eigen::Index;
  const detail::attention_shape s = detail::attention_shape_of(q.rows, q.cols, batch, n_heads, n_kv_heads);
  const std::size_t seq = s.seq;
  const T scale = static_cast<T>(s.scale);
  const auto recompute = [&](std::size_t bb, std::size_t h, std::size_t r0, std::size_t rb, std::size_t kc,
                             std::size_t len, detail::attention_rows<T>& pv) {
    const auto qh = detail::attention_head(q, s, bb, h);
    const auto kh = detail::attention_head(k, s, bb, h / s.group);
    pv.topLeftCorner(static_cast<Index>(rb), static_cast<Index>(kc)).noalias() =
        scale * (qh.middleRows(static_cast<Index>(r0), static_cast<Index>(rb)) *
                 kh.topRows(static_cast<Index>(kc)).transpose());
    const T* lse = logsumexp.data + (bb * n_heads + h) * seq + r0;
    for (std::size_t r = 0; r < rb; ++r) {
      const std::size_t lim = std::min(r0 + r + 1, len);
      T* pr = pv.data() + r * seq;
      Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> row(pr, static_cast<Index>(lim));
      row = (row - lse[r]).exp();
      std::fill(pr + lim, pr + kc, T(0));
    }
  };
  detail::attention_backward_items<T>(b, q, k, v, d_out, s, d_q, d_k, d_v, lengths, recompute);
}

}  // namespace rlhf::backends
