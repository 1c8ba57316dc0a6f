/// @file attention.hpp
/// @brief Causal multi-head attention with grouped-query heads (Ainslie et al. 2023, GQA): forward and
/// hand-written backward.
///
/// Rows are B sequences of T tokens flattened (row b*T + t); a row of q holds Hq heads of hd elements,
/// a row of k and v Hkv heads. Query head h reads kv head h / (Hq / Hkv). For one (sequence b, head h,
/// query i), with n_b = lengths[b] (T when no lengths are given):
///
///     s_ij = (q_i . k_j) / sqrt(hd)        for keys j <= i and j < n_b         (Vaswani et al. 2017, eq. 1)
///     p_ij = exp(s_ij - max_j s_ij) / sum_j exp(s_ij - max_j s_ij)           (0 for every other key)
///     o_i  = sum_j p_ij v_j
///
/// A query with no visible key (n_b = 0) outputs 0. The backward, with dO the output gradient:
///
///     dP_ij = dO_i . v_j
///     D_i   = sum_j p_ij dP_ij
///     dS_ij = p_ij (dP_ij - D_i)                                                 (softmax Jacobian)
///     dq_i  = sum_j dS_ij k_j / sqrt(hd)
///     dk_j  = sum over the group's query heads, sum_i dS_ij q_i / sqrt(hd)
///     dv_j  = sum over the group's query heads, sum_i p_ij dO_i
///
/// Generic path: the forward is one loop index per (b, h, i) over its keys (scores into the `probs` row,
/// max-subtracted softmax, then the weighted sum of values). Without `probs` it runs the online softmax
/// (Milakov & Gimelshein 2018) so no [B*Hq*T, T] memory is needed at inference. The backward is three
/// loops, each writing only its own rows, so it is deterministic and needs no atomics: D_i per
/// (b, h, i) (kept in the first element of d_q's head slot, which the last loop overwrites); dk, dv per
/// (b, kv head, key j), summing over queries i >= j of every head of the group in a fixed order; dq per
/// (b, h, i). Dot products and softmax sums are accumulated in double.
///
/// Training without the [B*Hq*T, T] softmax: causal_attention_forward_logsumexp keeps each row's
/// lse_i = log sum_j exp(s_ij) instead (the online forward's m + log l), and causal_attention_backward_recompute
/// runs the same three loops with p_ij = exp(s_ij - lse_i) recomputed from q and k (Dao 2023, FlashAttention-2).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include "rlhf/backends/attention_shape.hpp"
#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/decode_attention_rows.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

namespace detail {

template <class T>
RLHF_HOST_DEVICE inline double attention_dot(const T* a, const T* b, std::size_t n) {
  double acc = 0.0;
  for (std::size_t d = 0; d < n; ++d) acc += static_cast<double>(a[d]) * static_cast<double>(b[d]);
  return acc;
}

/// Forward of one (b, h, i), index ((b * Hq + h) * T + i), which is also its row of `probs`.
template <class T, class S>
struct attention_forward_query {
  matrix_view<const T, S> q, k, v;
  matrix_view<T, S> out;
  matrix_view<T, S> probs;  // empty: online softmax, nothing saved
  vector_view<const std::int32_t, S> lengths;
  attention_shape dims;
  vector_view<T, S> logsumexp = {};  // empty: not wanted; else lse of each row's scaled scores (0 with no key)

  RLHF_HOST_DEVICE void operator()(std::size_t idx) const {
    const std::size_t seq = dims.seq, hd = dims.head_dim;
    const std::size_t i = idx % seq, bh = idx / seq;
    const std::size_t h = bh % dims.n_heads, bb = bh / dims.n_heads;
    const std::size_t kvh = h / dims.group;
    const std::size_t lim = attention_visible_keys(lengths, bb, i, seq);
    const T* qi = q.data + (bb * seq + i) * q.cols + h * hd;
    T* oi = out.data + (bb * seq + i) * out.cols + h * hd;
    for (std::size_t d = 0; d < hd; ++d) oi[d] = T(0);
    if (!probs.empty()) {
      T* pr = probs.data + idx * seq;
      double m = 0.0;
      for (std::size_t j = 0; j < lim; ++j) {
        const T* kj = k.data + (bb * seq + j) * k.cols + kvh * hd;
        pr[j] = static_cast<T>(attention_dot(qi, kj, hd) * dims.scale);
        const double s = static_cast<double>(pr[j]);
        if (j == 0 || s > m) m = s;
      }
      double sum = 0.0;
      for (std::size_t j = 0; j < lim; ++j) {
        const double e = exp(static_cast<double>(pr[j]) - m);  // max subtracted: e <= 1, no overflow
        pr[j] = static_cast<T>(e);
        sum += e;
      }
      for (std::size_t j = 0; j < lim; ++j) {
        const T p = static_cast<T>(static_cast<double>(pr[j]) / sum);
        pr[j] = p;
        const T* vj = v.data + (bb * seq + j) * v.cols + kvh * hd;
        for (std::size_t d = 0; d < hd; ++d) oi[d] += p * vj[d];
      }
      for (std::size_t j = lim; j < seq; ++j) pr[j] = T(0);
      if (!logsumexp.empty()) logsumexp[idx] = lim > 0 ? static_cast<T>(m + log(sum)) : T(0);
    } else {
      // Online softmax: running max m and normalizer l; the output row accumulates e^(s - m) v_j and is
      // rescaled whenever the maximum grows.
      double m = 0.0, l = 0.0;
      for (std::size_t j = 0; j < lim; ++j) {
        const T* kj = k.data + (bb * seq + j) * k.cols + kvh * hd;
        const T* vj = v.data + (bb * seq + j) * v.cols + kvh * hd;
        const double s = attention_dot(qi, kj, hd) * dims.scale;
        if (j == 0 || s > m) {
          const double r = j == 0 ? 0.0 : exp(m - s);
          for (std::size_t d = 0; d < hd; ++d) oi[d] = static_cast<T>(static_cast<double>(oi[d]) * r);
          l *= r;
          m = s;
        }
        const double e = exp(s - m);
        l += e;
        for (std::size_t d = 0; d < hd; ++d) oi[d] = static_cast<T>(static_cast<double>(oi[d]) + e * static_cast<double>(vj[d]));
      }
      if (lim > 0) {
        const double inv = 1.0 / l;
        for (std::size_t d = 0; d < hd; ++d) oi[d] = static_cast<T>(static_cast<double>(oi[d]) * inv);
      }
      if (!logsumexp.empty()) logsumexp[idx] = lim > 0 ? static_cast<T>(m + log(l)) : T(0);
    }
  }
};

/// Where the backward loops take p_ij from: the softmax the forward saved, row (b*Hq + h)*T + i.
template <class T, class S>
struct saved_attention_probs {
  matrix_view<const T, S> probs;
  RLHF_HOST_DEVICE double operator()(std::size_t row, std::size_t j, const T* /*q_i*/, const T* /*k_j*/) const {
    return static_cast<double>(probs.data[row * probs.cols + j]);
  }
};

/// ... or recomputed from the scores and the forward's row logsumexp, p_ij = exp(s_ij - lse_i) (Dao 2023,
/// FlashAttention-2, backward): the [B*Hq*T, T] softmax is never stored, for one more dot product per
/// visible (i, j) in each loop that reads p.
template <class T, class S>
struct recomputed_attention_probs {
  vector_view<const T, S> logsumexp;
  std::size_t head_dim;
  double scale;
  RLHF_HOST_DEVICE double operator()(std::size_t row, std::size_t /*j*/, const T* qi, const T* kj) const {
    return exp(attention_dot(qi, kj, head_dim) * scale - static_cast<double>(logsumexp[row]));
  }
};

/// Backward loop 1, per (b, h, i): D_i = sum_j p_ij (dO_i . v_j), kept in d_q(b*T + i, h*hd). `Probs` gives
/// p_ij (saved_attention_probs or recomputed_attention_probs), as in the two loops below.
template <class T, class S, class Probs>
struct attention_backward_rowsum {
  matrix_view<const T, S> q, k, v, d_out;
  Probs prob;
  matrix_view<T, S> d_q;
  vector_view<const std::int32_t, S> lengths;
  attention_shape dims;

  RLHF_HOST_DEVICE void operator()(std::size_t idx) const {
    const std::size_t seq = dims.seq, hd = dims.head_dim;
    const std::size_t i = idx % seq, bh = idx / seq;
    const std::size_t h = bh % dims.n_heads, bb = bh / dims.n_heads;
    const std::size_t kvh = h / dims.group;
    const std::size_t lim = attention_visible_keys(lengths, bb, i, seq);
    const T* doi = d_out.data + (bb * seq + i) * d_out.cols + h * hd;
    const T* qi = q.data + (bb * seq + i) * q.cols + h * hd;
    double acc = 0.0;
    for (std::size_t j = 0; j < lim; ++j) {
      const T* kj = k.data + (bb * seq + j) * k.cols + kvh * hd;
      const T* vj = v.data + (bb * seq + j) * v.cols + kvh * hd;
      acc += prob(idx, j, qi, kj) * attention_dot(doi, vj, hd);
    }
    d_q(bb * seq + i, h * hd) = static_cast<T>(acc);
  }
};

/// Backward loop 2, per (b, kv head, key j), index ((b * Hkv + kvh) * T + j): dk_j and dv_j, summed over
/// the group's query heads and the queries i >= j, in that fixed order.
template <class T, class S, class Probs>
struct attention_backward_key {
  matrix_view<const T, S> q, k, v, d_out;
  Probs prob;
  matrix_view<const T, S> rowsum;  // d_q, holding D_i in each head slot's first element
  matrix_view<T, S> d_k, d_v;
  vector_view<const std::int32_t, S> lengths;
  attention_shape dims;

  RLHF_HOST_DEVICE void operator()(std::size_t idx) const {
    const std::size_t seq = dims.seq, hd = dims.head_dim;
    const std::size_t j = idx % seq, bk = idx / seq;
    const std::size_t kvh = bk % dims.n_kv_heads, bb = bk / dims.n_kv_heads;
    T* dkj = d_k.data + (bb * seq + j) * d_k.cols + kvh * hd;
    T* dvj = d_v.data + (bb * seq + j) * d_v.cols + kvh * hd;
    for (std::size_t d = 0; d < hd; ++d) {
      dkj[d] = T(0);
      dvj[d] = T(0);
    }
    const std::size_t len = lengths.empty() ? seq : static_cast<std::size_t>(lengths[bb]);
    if (j >= len) return;  // a masked key gets probability 0 from every query
    const T* kj = k.data + (bb * seq + j) * k.cols + kvh * hd;
    const T* vj = v.data + (bb * seq + j) * v.cols + kvh * hd;
    for (std::size_t h = kvh * dims.group; h < (kvh + 1) * dims.group; ++h) {
      const std::size_t first_row = (bb * dims.n_heads + h) * seq;  // query i's row: first_row + i
      for (std::size_t i = j; i < seq; ++i) {
        const T* qi = q.data + (bb * seq + i) * q.cols + h * hd;
        const double p = prob(first_row + i, j, qi, kj);
        if (p == 0.0) continue;  // contributes nothing to dv, and dS_ij = 0
        const T* doi = d_out.data + (bb * seq + i) * d_out.cols + h * hd;
        const double ds = p * (attention_dot(doi, vj, hd) - static_cast<double>(rowsum(bb * seq + i, h * hd)));
        const T wk = static_cast<T>(ds * dims.scale);
        const T wv = static_cast<T>(p);
        for (std::size_t d = 0; d < hd; ++d) {
          dkj[d] += wk * qi[d];
          dvj[d] += wv * doi[d];
        }
      }
    }
  }
};

/// Backward loop 3, per (b, h, i): dq_i = sum_j dS_ij k_j / sqrt(hd) (reads D_i first, then overwrites it).
template <class T, class S, class Probs>
struct attention_backward_query {
  matrix_view<const T, S> q, k, v, d_out;
  Probs prob;
  matrix_view<T, S> d_q;
  vector_view<const std::int32_t, S> lengths;
  attention_shape dims;

  RLHF_HOST_DEVICE void operator()(std::size_t idx) const {
    const std::size_t seq = dims.seq, hd = dims.head_dim;
    const std::size_t i = idx % seq, bh = idx / seq;
    const std::size_t h = bh % dims.n_heads, bb = bh / dims.n_heads;
    const std::size_t kvh = h / dims.group;
    const std::size_t lim = attention_visible_keys(lengths, bb, i, seq);
    const T* doi = d_out.data + (bb * seq + i) * d_out.cols + h * hd;
    const T* qi = q.data + (bb * seq + i) * q.cols + h * hd;
    T* dqi = d_q.data + (bb * seq + i) * d_q.cols + h * hd;
    const double rowsum = static_cast<double>(dqi[0]);
    for (std::size_t d = 0; d < hd; ++d) dqi[d] = T(0);
    for (std::size_t j = 0; j < lim; ++j) {
      const T* vj = v.data + (bb * seq + j) * v.cols + kvh * hd;
      const T* kj = k.data + (bb * seq + j) * k.cols + kvh * hd;
      const double p = prob(idx, j, qi, kj);
      if (p == 0.0) continue;
      const T w = static_cast<T>(p * (attention_dot(doi, vj, hd) - rowsum) * dims.scale);
      for (std::size_t d = 0; d < hd; ++d) dqi[d] += w * kj[d];
    }
  }
};

template <class B, class T>
void causal_attention_forward_generic(const B& b, backend_matrix<B, const T> q, backend_matrix<B, const T> k,
                                      backend_matrix<B, const T> v, const attention_shape& dims,
                                      backend_matrix<B, T> out, backend_matrix<B, T> probs,
                                      backend_vector<B, const std::int32_t> lengths,
                                      backend_vector<B, T> logsumexp = {}) {
  // A query visits up to T keys, hd multiply-adds each, twice (scores, then the weighted values).
  for_each_weighted_index(
      b, dims.batch * dims.n_heads * dims.seq, 2 * dims.seq * dims.head_dim,
      attention_forward_query<T, typename B::memory_space>{q, k, v, out, probs, lengths, dims, logsumexp});
}

/// The three backward loops over a source of probabilities (saved_attention_probs or
/// recomputed_attention_probs).
template <class B, class T, class Probs>
void causal_attention_backward_loops(const B& b, backend_matrix<B, const T> q, backend_matrix<B, const T> k,
                                     backend_matrix<B, const T> v, const Probs& prob, std::size_t prob_cost,
                                     backend_matrix<B, const T> d_out, const attention_shape& dims,
                                     backend_matrix<B, T> d_q, backend_matrix<B, T> d_k, backend_matrix<B, T> d_v,
                                     backend_vector<B, const std::int32_t> lengths) {
  using S = typename B::memory_space;
  const std::size_t queries = dims.batch * dims.n_heads * dims.seq;
  // Up to T keys of hd multiply-adds, plus what a probability costs (0 saved, hd recomputed).
  const std::size_t per_query = dims.seq * (dims.head_dim + prob_cost);
  for_each_weighted_index(b, queries, per_query,
                          attention_backward_rowsum<T, S, Probs>{q, k, v, d_out, prob, d_q, lengths, dims});
  for_each_weighted_index(b, dims.batch * dims.n_kv_heads * dims.seq, 3 * dims.group * per_query,
                          attention_backward_key<T, S, Probs>{q, k, v, d_out, prob, d_q, d_k, d_v, lengths, dims});
  for_each_weighted_index(b, queries, 2 * per_query,
                          attention_backward_query<T, S, Probs>{q, k, v, d_out, prob, d_q, lengths, dims});
}

template <class B, class T>
void causal_attention_backward_generic(const B& b, backend_matrix<B, const T> q, backend_matrix<B, const T> k,
                                       backend_matrix<B, const T> v, backend_matrix<B, const T> probs,
                                       backend_matrix<B, const T> d_out, const attention_shape& dims,
                                       backend_matrix<B, T> d_q, backend_matrix<B, T> d_k, backend_matrix<B, T> d_v,
                                       backend_vector<B, const std::int32_t> lengths) {
  causal_attention_backward_loops<B, T>(b, q, k, v, saved_attention_probs<T, typename B::memory_space>{probs}, 0,
                                        d_out, dims, d_q, d_k, d_v, lengths);
}

template <class B, class T>
void causal_attention_backward_recompute_generic(const B& b, backend_matrix<B, const T> q,
                                                 backend_matrix<B, const T> k, backend_matrix<B, const T> v,
                                                 backend_vector<B, const T> logsumexp,
                                                 backend_matrix<B, const T> d_out, const attention_shape& dims,
                                                 backend_matrix<B, T> d_q, backend_matrix<B, T> d_k,
                                                 backend_matrix<B, T> d_v,
                                                 backend_vector<B, const std::int32_t> lengths) {
  const recomputed_attention_probs<T, typename B::memory_space> prob{logsumexp, dims.head_dim, dims.scale};
  causal_attention_backward_loops<B, T>(b, q, k, v, prob, dims.head_dim, d_out, dims, d_q, d_k, d_v, lengths);
}

/// Counts lengths outside [0, seq] (device-callable).
struct attention_count_bad_lengths {
  std::size_t seq = 0;
  RLHF_HOST_DEVICE std::size_t operator()(std::int32_t n) const {
    return (n < 0 || static_cast<std::size_t>(n) > seq) ? std::size_t(1) : std::size_t(0);
  }
};

/// Validates the shapes shared by the forward and the backward and derives the sizes.
template <class B, class T, class S>
attention_shape attention_check(const B& b, std::string_view fn, matrix_view<const T, S> q, matrix_view<const T, S> k,
                               matrix_view<const T, S> v, std::size_t batch, std::size_t n_heads,
                               std::size_t n_kv_heads, vector_view<const std::int32_t, S> lengths) {
  if (n_heads == 0) throw_argument_error(fn, "n_heads", "a value > 0", "0");
  if (n_kv_heads == 0 || n_heads % n_kv_heads != 0) {
    throw_argument_error(fn, "n_kv_heads",
                         "a value > 0 dividing 'n_heads' (" + std::to_string(n_heads) + ")",
                         std::to_string(n_kv_heads));
  }
  if (batch == 0 ? q.rows != 0 : q.rows % batch != 0) {
    throw_argument_error(fn, "batch", "a value > 0 dividing the rows of 'q' (" + std::to_string(q.rows) + ")",
                         std::to_string(batch));
  }
  if (q.cols == 0 || q.cols % n_heads != 0) {
    throw_argument_error(fn, "q",
                         "a positive multiple of 'n_heads' (" + std::to_string(n_heads) + ") columns",
                         shape_string(q));
  }
  const attention_shape dims = attention_shape_of(q.rows, q.cols, batch, n_heads, n_kv_heads);
  check_shape(fn, "k", k, q.rows, n_kv_heads * dims.head_dim,
              "(rows of 'q', n_kv_heads * head_dim with head_dim = " + std::to_string(dims.head_dim) + ")");
  check_same_shape(fn, "v", v, "k", k);
  if (!(lengths.data == nullptr && lengths.size == 0)) {
    check_size(fn, "lengths", lengths, batch, "(one per sequence, 'batch', or empty for all full)");
    if (lengths.size != 0) {
      const std::size_t bad =
          b.transform_reduce(std::size_t(0), add_sizes{}, attention_count_bad_lengths{dims.seq}, lengths);
      if (bad != 0) {
        throw_argument_error(fn, "lengths", "values in [0, " + std::to_string(dims.seq) + "] (the sequence length)",
                             std::to_string(bad) + " value(s) out of range");
      }
    }
  }
  return dims;
}

/// The finite checks of the inputs every attention call reads (opt-in: rlhf::set_finite_checks).
template <class B, class T, class S>
void attention_check_finite_inputs(const B& b, std::string_view fn, matrix_view<const T, S> q,
                                   matrix_view<const T, S> k, matrix_view<const T, S> v) {
  check_finite(b, fn, "q", q);
  check_finite(b, fn, "k", k);
  check_finite(b, fn, "v", v);
}

/// The shapes of a backward's output gradient and gradients (those of q, k and v).
template <class T, class S>
void attention_check_gradient_shapes(std::string_view fn, matrix_view<const T, S> q, matrix_view<const T, S> k,
                                     matrix_view<const T, S> v, matrix_view<const T, S> d_out,
                                     matrix_view<T, S> d_q, matrix_view<T, S> d_k, matrix_view<T, S> d_v) {
  check_same_shape(fn, "d_out", d_out, "q", q);
  check_same_shape(fn, "d_q", d_q, "q", q);
  check_same_shape(fn, "d_k", d_k, "k", k);
  check_same_shape(fn, "d_v", d_v, "v", v);
}

/// The decode attention without argument checks (rlhf::causal_attention_decode checks them; a decode step
/// that checks its positions once for every layer calls this): the backend's kernel, or one thread per
/// (row, head) pair.
template <class B, class T>
void causal_attention_decode_dispatch(const B& b, backend_matrix<B, const T> q, backend_matrix<B, const T> k_cache,
                                      backend_matrix<B, const T> v_cache,
                                      backend_vector<B, const std::int32_t> positions, std::size_t seq_len,
                                      std::size_t n_heads, std::size_t n_kv_heads, backend_matrix<B, T> scores,
                                      backend_matrix<B, T> out) {
  if (q.rows == 0) return;
  const std::size_t hd = q.cols / n_heads;
  const decode_attention_rows<T, typename B::memory_space> rows{
      q, k_cache, v_cache, positions, scores, out, seq_len, n_heads, n_heads / n_kv_heads, hd,
      1.0 / std::sqrt(static_cast<double>(hd))};
  if constexpr (requires { rlhf_specialized_causal_attention_decode(b, rows); })
    rlhf_specialized_causal_attention_decode(b, rows);
  else
    b.for_each_index(q.rows * n_heads, rows);
}

}  // namespace detail

/// Causal grouped-query attention, forward: for every sequence b, query head h and query position i,
/// `out_i = sum_j softmax_j(q_i . k_j / sqrt(hd)) v_j` over keys j <= i (and j < lengths[b]).
///
/// @tparam B a reduce_backend (for_each_index; transform_reduce validates `lengths`).
/// @tparam T float or double, deduced from `out`.
/// @param b the backend.
/// @param q [B*T, Hq*hd] queries (after rotary embedding); row b*T + t is position t of sequence b.
/// @param k [B*T, Hkv*hd] keys (after rotary embedding).
/// @param v [B*T, Hkv*hd] values.
/// @param batch B, the number of sequences; > 0 and dividing the rows of q (0 only when q has no rows).
/// @param n_heads Hq, query heads; hd = columns of q / Hq.
/// @param n_kv_heads Hkv, key/value heads; divides Hq. Query head h uses kv head h / (Hq / Hkv).
/// @param out out [B*T, Hq*hd]; must not overlap the inputs.
/// @param probs out [B*Hq*T, T]: row (b*Hq + h)*T + i holds the softmax over keys of that query (0 for
///   masked keys), saved for rlhf::causal_attention_backward; an empty view (data == nullptr, size 0)
///   means not wanted (inference: an online softmax then needs no [B*Hq*T, T] memory).
/// @param lengths [B] valid tokens per sequence, each in [0, T], or empty for all T. Keys at positions
///   >= lengths[b] are masked; queries there still attend to the valid keys (their outputs are padding).
/// @note Throws rlhf::invalid_argument on a shape mismatch, n_kv_heads not dividing n_heads, or a
///   length outside [0, T].
template <class B, class T>
void causal_attention_forward(const B& b, std::type_identity_t<backend_matrix<B, const T>> q,
                              std::type_identity_t<backend_matrix<B, const T>> k,
                              std::type_identity_t<backend_matrix<B, const T>> v, std::size_t batch,
                              std::size_t n_heads, std::size_t n_kv_heads, backend_matrix<B, T> out,
                              std::type_identity_t<backend_matrix<B, T>> probs,
                              backend_vector<B, const std::int32_t> lengths = {}) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::causal_attention_forward";
  static_assert(std::is_floating_point_v<T>, "rlhf::causal_attention_forward: T must be float or double");
  const detail::attention_shape dims = detail::attention_check(b, fn, q, k, v, batch, n_heads, n_kv_heads, lengths);
  detail::check_same_shape(fn, "out", out, "q", q);
  if (!(probs.data == nullptr && probs.rows == 0 && probs.cols == 0)) {
    detail::check_shape(fn, "probs", probs, batch * n_heads * dims.seq, dims.seq,
                        "([batch * n_heads * T, T], or empty for not wanted)");
  }
  detail::attention_check_finite_inputs(b, fn, q, k, v);
  if (q.rows == 0) return;
  if constexpr (requires {
                  rlhf_specialized_causal_attention_forward(b, q, k, v, batch, n_heads, n_kv_heads, out, probs,
                                                            lengths);
                })
    rlhf_specialized_causal_attention_forward(b, q, k, v, batch, n_heads, n_kv_heads, out, probs, lengths);
  else
    detail::causal_attention_forward_generic<B, T>(b, q, k, v, dims, out, probs, lengths);
}

/// Backward of rlhf::causal_attention_forward: writes d_q, d_k and d_v from the output gradient and the
/// saved softmax (see the file comment for the formulas). With grouped-query heads, the gradient of a
/// kv head sums over the query heads that share it. Deterministic (no racing accumulation).
///
/// @tparam B a reduce_backend.
/// @tparam T float or double, deduced from `d_q`.
/// @param b the backend.
/// @param q [B*T, Hq*hd], k [B*T, Hkv*hd], v [B*T, Hkv*hd] the forward's inputs.
/// @param probs [B*Hq*T, T] the softmax saved by the forward (required here).
/// @param d_out [B*T, Hq*hd] gradient of the loss w.r.t. the forward's output.
/// @param batch, n_heads, n_kv_heads as in the forward.
/// @param d_q out [B*T, Hq*hd]; also used as scratch during the call.
/// @param d_k out [B*T, Hkv*hd].
/// @param d_v out [B*T, Hkv*hd].
/// @param lengths as in the forward.
/// @note The outputs must not overlap each other or the inputs. Throws rlhf::invalid_argument on a shape
///   mismatch (an empty `probs` included), n_kv_heads not dividing n_heads, or a length outside [0, T].
template <class B, class T>
void causal_attention_backward(const B& b, std::type_identity_t<backend_matrix<B, const T>> q,
                               std::type_identity_t<backend_matrix<B, const T>> k,
                               std::type_identity_t<backend_matrix<B, const T>> v,
                               std::type_identity_t<backend_matrix<B, const T>> probs,
                               std::type_identity_t<backend_matrix<B, const T>> d_out, std::size_t batch,
                               std::size_t n_heads, std::size_t n_kv_heads, backend_matrix<B, T> d_q,
                               std::type_identity_t<backend_matrix<B, T>> d_k,
                               std::type_identity_t<backend_matrix<B, T>> d_v,
                               backend_vector<B, const std::int32_t> lengths = {}) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::causal_attention_backward";
  static_assert(std::is_floating_point_v<T>, "rlhf::causal_attention_backward: T must be float or double");
  const detail::attention_shape dims = detail::attention_check(b, fn, q, k, v, batch, n_heads, n_kv_heads, lengths);
  detail::check_shape(fn, "probs", probs, batch * n_heads * dims.seq, dims.seq,
                      "([batch * n_heads * T, T], saved by the forward)");
  detail::attention_check_gradient_shapes(fn, q, k, v, d_out, d_q, d_k, d_v);
  detail::attention_check_finite_inputs(b, fn, q, k, v);
  detail::check_finite(b, fn, "probs", probs);
  detail::check_finite(b, fn, "d_out", d_out);
  if (q.rows == 0) return;
  if constexpr (requires {
                  rlhf_specialized_causal_attention_backward(b, q, k, v, probs, d_out, batch, n_heads, n_kv_heads,
                                                             d_q, d_k, d_v, lengths);
                })
    rlhf_specialized_causal_attention_backward(b, q, k, v, probs, d_out, batch, n_heads, n_kv_heads, d_q, d_k, d_v,
                                               lengths);
  else
    detail::causal_attention_backward_generic<B, T>(b, q, k, v, probs, d_out, dims, d_q, d_k, d_v, lengths);
}

/// Causal grouped-query attention, forward, for training without the softmax in memory: `out` as
/// rlhf::causal_attention_forward computes it, and instead of the [B*Hq*T, T] probabilities the logsumexp
/// of each row's scaled scores, `lse_i = log sum_j exp(q_i . k_j / sqrt(hd))` over its visible keys, from
/// which rlhf::causal_attention_backward_recompute recomputes them (p_ij = exp(s_ij - lse_i); Dao 2023,
/// FlashAttention-2). T times less memory per layer than the saved softmax, for the backward's
/// recomputation of the scores (about a third more attention work per training step).
///
/// @tparam B a reduce_backend.
/// @tparam T float or double, deduced from `out`.
/// @param q, k, v, batch, n_heads, n_kv_heads, lengths as in rlhf::causal_attention_forward.
/// @param out out [B*T, Hq*hd]; must not overlap the inputs.
/// @param logsumexp out [B*Hq*T]: element (b*Hq + h)*T + i for query i of head h in sequence b (0 for a
///   query with no visible key: a sequence of length 0).
/// @note Throws rlhf::invalid_argument on a shape mismatch (an empty `logsumexp` included), n_kv_heads not
///   dividing n_heads, or a length outside [0, T].
template <class B, class T>
void causal_attention_forward_logsumexp(const B& b, std::type_identity_t<backend_matrix<B, const T>> q,
                                        std::type_identity_t<backend_matrix<B, const T>> k,
                                        std::type_identity_t<backend_matrix<B, const T>> v, std::size_t batch,
                                        std::size_t n_heads, std::size_t n_kv_heads, backend_matrix<B, T> out,
                                        std::type_identity_t<backend_vector<B, T>> logsumexp,
                                        backend_vector<B, const std::int32_t> lengths = {}) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::causal_attention_forward_logsumexp";
  static_assert(std::is_floating_point_v<T>, "rlhf::causal_attention_forward_logsumexp: T must be float or double");
  const detail::attention_shape dims = detail::attention_check(b, fn, q, k, v, batch, n_heads, n_kv_heads, lengths);
  detail::check_same_shape(fn, "out", out, "q", q);
  detail::check_size(fn, "logsumexp", logsumexp, batch * n_heads * dims.seq,
                     "(batch * n_heads * T, one per query row)");
  detail::attention_check_finite_inputs(b, fn, q, k, v);
  if (q.rows == 0) return;
  if constexpr (requires {
                  rlhf_specialized_causal_attention_forward_logsumexp(b, q, k, v, batch, n_heads, n_kv_heads, out,
                                                                      logsumexp, lengths);
                })
    rlhf_specialized_causal_attention_forward_logsumexp(b, q, k, v, batch, n_heads, n_kv_heads, out, logsumexp,
                                                        lengths);
  else
    detail::causal_attention_forward_generic<B, T>(b, q, k, v, dims, out, {}, lengths, logsumexp);
}

/// Backward of rlhf::causal_attention_forward_logsumexp: the gradients of rlhf::causal_attention_backward,
/// with each probability recomputed from the scores and the saved row logsumexp instead of read from a
/// saved softmax (the same formulas otherwise; results agree with the saved-softmax backward to rounding).
///
/// @tparam B a reduce_backend.
/// @tparam T float or double, deduced from `d_q`.
/// @param q, k, v the forward's inputs.
/// @param logsumexp [B*Hq*T] the forward's row logsumexps.
/// @param d_out, batch, n_heads, n_kv_heads, d_q, d_k, d_v, lengths as in rlhf::causal_attention_backward
///   (d_q is also scratch during the call).
/// @note The outputs must not overlap each other or the inputs. Throws rlhf::invalid_argument on a shape
///   mismatch, a non-finite input, n_kv_heads not dividing n_heads, or a length outside [0, T].
template <class B, class T>
void causal_attention_backward_recompute(const B& b, std::type_identity_t<backend_matrix<B, const T>> q,
                                         std::type_identity_t<backend_matrix<B, const T>> k,
                                         std::type_identity_t<backend_matrix<B, const T>> v,
                                         std::type_identity_t<backend_vector<B, const T>> logsumexp,
                                         std::type_identity_t<backend_matrix<B, const T>> d_out, std::size_t batch,
                                         std::size_t n_heads, std::size_t n_kv_heads, backend_matrix<B, T> d_q,
                                         std::type_identity_t<backend_matrix<B, T>> d_k,
                                         std::type_identity_t<backend_matrix<B, T>> d_v,
                                         backend_vector<B, const std::int32_t> lengths = {}) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::causal_attention_backward_recompute";
  static_assert(std::is_floating_point_v<T>, "rlhf::causal_attention_backward_recompute: T must be float or double");
  const detail::attention_shape dims = detail::attention_check(b, fn, q, k, v, batch, n_heads, n_kv_heads, lengths);
  detail::check_size(fn, "logsumexp", logsumexp, batch * n_heads * dims.seq,
                     "(batch * n_heads * T, saved by the forward)");
  detail::attention_check_gradient_shapes(fn, q, k, v, d_out, d_q, d_k, d_v);
  detail::attention_check_finite_inputs(b, fn, q, k, v);
  detail::check_finite(b, fn, "logsumexp", logsumexp);
  detail::check_finite(b, fn, "d_out", d_out);
  if (q.rows == 0) return;
  if constexpr (requires {
                  rlhf_specialized_causal_attention_backward_recompute(b, q, k, v, logsumexp, d_out, batch, n_heads,
                                                                       n_kv_heads, d_q, d_k, d_v, lengths);
                })
    rlhf_specialized_causal_attention_backward_recompute(b, q, k, v, logsumexp, d_out, batch, n_heads, n_kv_heads,
                                                         d_q, d_k, d_v, lengths);
  else
    detail::causal_attention_backward_recompute_generic<B, T>(b, q, k, v, logsumexp, d_out, dims, d_q, d_k, d_v,
                                                              lengths);
}

/// Attention of one new query per sequence over its key/value cache (incremental decoding): for row r at
/// position p = positions[r] and query head h, `out(r, h) = sum_t softmax_t(q(r, h) . k_t / sqrt(hd)) v_t`
/// over the cached keys t = 0..p (the causal mask is implicit). The last row of rlhf::causal_attention_forward
/// over the same p + 1 tokens, one row per sequence (rlhf/backends/decode_attention_rows.hpp).
///
/// @tparam B a reduce_backend (for_each_index; transform_reduce validates `positions`).
/// @tparam T float or double, deduced from `out`.
/// @param b the backend.
/// @param q [B, Hq*hd] the new queries (after rotary embedding).
/// @param k_cache [B*seq_len, Hkv*hd] cached keys: row r's position t at row r * seq_len + t (written up to p).
/// @param v_cache [B*seq_len, Hkv*hd] cached values, likewise.
/// @param positions [B] each row's position, in [0, seq_len).
/// @param seq_len the cache's length per row; > 0.
/// @param n_heads Hq; hd = columns of q / Hq.
/// @param n_kv_heads Hkv; divides Hq.
/// @param scores [B*Hq, seq_len] scratch (overwritten).
/// @param out out [B, Hq*hd].
/// @note Throws rlhf::invalid_argument on a shape mismatch or a position outside [0, seq_len).
template <class B, class T>
void causal_attention_decode(const B& b, std::type_identity_t<backend_matrix<B, const T>> q,
                             std::type_identity_t<backend_matrix<B, const T>> k_cache,
                             std::type_identity_t<backend_matrix<B, const T>> v_cache,
                             backend_vector<B, const std::int32_t> positions, std::size_t seq_len,
                             std::size_t n_heads, std::size_t n_kv_heads,
                             std::type_identity_t<backend_matrix<B, T>> scores, backend_matrix<B, T> out) {
  detail::check_reduce_backend<B>();
  constexpr std::string_view fn = "rlhf::causal_attention_decode";
  static_assert(std::is_floating_point_v<T>, "rlhf::causal_attention_decode: T must be float or double");
  using detail::throw_argument_error;
  if (seq_len == 0) throw_argument_error(fn, "seq_len", "a value > 0", "0");
  if (n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0) {
    throw_argument_error(fn, "n_kv_heads", "a positive divisor of 'n_heads' (" + std::to_string(n_heads) + ")",
                         std::to_string(n_kv_heads));
  }
  if (q.cols == 0 || q.cols % n_heads != 0) {
    throw_argument_error(fn, "q", "a positive multiple of 'n_heads' (" + std::to_string(n_heads) + ") columns",
                         shape_string(q));
  }
  const std::size_t hd = q.cols / n_heads;
  detail::check_shape(fn, "k_cache", k_cache, q.rows * seq_len, n_kv_heads * hd,
                      "(rows of 'q' times 'seq_len', n_kv_heads * head_dim)");
  detail::check_same_shape(fn, "v_cache", v_cache, "k_cache", k_cache);
  detail::check_size(fn, "positions", positions, q.rows, "(one per row of 'q')");
  detail::check_shape(fn, "scores", scores, q.rows * n_heads, seq_len, "(rows of 'q' times 'n_heads', 'seq_len')");
  detail::check_same_shape(fn, "out", out, "q", q);
  const std::size_t bad =
      b.transform_reduce(std::size_t(0), detail::add_sizes{}, detail::decode_count_bad_positions{seq_len}, positions);
  if (bad != 0) {
    throw_argument_error(fn, "positions", "values in [0, seq_len = " + std::to_string(seq_len) + ")",
                         std::to_string(bad) + " outside");
  }
  detail::causal_attention_decode_dispatch<B, T>(b, q, k_cache, v_cache, positions, seq_len, n_heads, n_kv_heads,
                                                 scores, out);
}

}  // namespace rlhf
