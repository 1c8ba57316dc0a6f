/// @file decode_attention_rows.hpp
/// @brief Attention of one new query per sequence over its cached keys (incremental decoding), written in
///        parts so that a group of threads can share a (row, head) pair: the generic path of
///        rlhf::causal_attention_decode (rlhf/models/layers/attention.hpp) runs a pair per index, the CUDA
///        kernel (rlhf/backends/cuda/causal_attention.cuh) a warp per pair.
///
/// For row r (a sequence at position p_r) and query head h, over the cached keys t = 0..p_r (Vaswani et al.
/// 2017, eq. 1; the causal mask is implicit, only past and current keys are cached):
///
///     s_t   = q_rh . k_t / sqrt(hd)               (into the scratch row of the pair, in T)
///     e_t   = exp(s_t - max_t s_t)                 (over the scores)
///     out_i = sum_t e_t v_t[i] / sum_t e_t
///
/// Dot products and sums in double. Parts, each over the elements first, first + step, ...:
/// `partial_max` writes the part's scores (keys) and returns their maximum, `partial_sum` turns the part's
/// scores into exponentials given the pair's maximum and returns their sum, `write` forms the part's output
/// elements (columns of the head) from every key's exponential: a group of threads must have finished
/// `partial_sum` (and see each other's writes) before any of them calls `write`. `operator()(idx)` is the
/// whole pair on one thread.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"

namespace rlhf::detail {

/// Index idx = r * Hq + h: the (row, query head) pair (see the file comment).
template <class T, class S>
struct decode_attention_rows {
  matrix_view<const T, S> q;                     // [B, Hq * hd]
  matrix_view<const T, S> k_cache, v_cache;      // [B * seq_len, Hkv * hd]; row r's position t at r * seq_len + t
  vector_view<const std::int32_t, S> positions;  // [B]
  matrix_view<T, S> scores;                      // [B * Hq, seq_len] scratch
  matrix_view<T, S> out;                         // [B, Hq * hd]
  std::size_t seq_len, n_heads, group, head_dim;
  double scale;

  /// The keys pair idx attends to: positions[r] + 1.
  RLHF_HOST_DEVICE std::size_t keys(std::size_t idx) const {
    return static_cast<std::size_t>(positions[idx / n_heads]) + 1;
  }

  RLHF_HOST_DEVICE double partial_max(std::size_t idx, std::size_t first, std::size_t step) const {
    const std::size_t r = idx / n_heads, h = idx - r * n_heads;
    const std::size_t kc = (h / group) * head_dim, n = keys(idx);
    const T* qrow = q.data + r * q.cols + h * head_dim;
    T* s = scores.data + idx * scores.cols;
    double mx = -1e300;
    for (std::size_t t = first; t < n; t += step) {
      const T* krow = k_cache.data + (r * seq_len + t) * k_cache.cols + kc;
      double dot = 0.0;
      for (std::size_t i = 0; i < head_dim; ++i) dot += static_cast<double>(qrow[i]) * static_cast<double>(krow[i]);
      const double sc = dot * scale;
      s[t] = static_cast<T>(sc);
      mx = sc > mx ? sc : mx;
    }
    return mx;
  }

  RLHF_HOST_DEVICE double partial_sum(std::size_t idx, double m, std::size_t first, std::size_t step) const {
    const std::size_t n = keys(idx);
    T* s = scores.data + idx * scores.cols;
    double sum = 0.0;
    for (std::size_t t = first; t < n; t += step) {
      const double e = exp(static_cast<double>(s[t]) - m);
      s[t] = static_cast<T>(e);
      sum += e;
    }
    return sum;
  }

  RLHF_HOST_DEVICE void write(std::size_t idx, double /*m*/, double sum, std::size_t first, std::size_t step) const {
    const std::size_t r = idx / n_heads, h = idx - r * n_heads;
    const std::size_t kc = (h / group) * head_dim, n = keys(idx);
    const T* s = scores.data + idx * scores.cols;
    T* orow = out.data + r * out.cols + h * head_dim;
    for (std::size_t i = first; i < head_dim; i += step) {
      double acc = 0.0;
      for (std::size_t t = 0; t < n; ++t)
        acc += static_cast<double>(s[t]) * static_cast<double>(v_cache.data[(r * seq_len + t) * v_cache.cols + kc + i]);
      orow[i] = static_cast<T>(acc / sum);
    }
  }

  RLHF_HOST_DEVICE void operator()(std::size_t idx) const {
    const double m = partial_max(idx, 0, 1);
    write(idx, m, partial_sum(idx, m, 0, 1), 0, 1);
  }
};

/// Counts positions outside [0, seq_len) (the cache's rows).
struct decode_count_bad_positions {
  std::size_t seq_len;
  RLHF_HOST_DEVICE std::size_t operator()(std::int32_t p) const {
    return p < 0 || static_cast<std::size_t>(p) >= seq_len ? std::size_t(1) : std::size_t(0);
  }
};

}  // namespace rlhf::detail
