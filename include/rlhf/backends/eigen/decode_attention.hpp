/// @file decode_attention.hpp
/// @brief The Eigen backend's decode attention over a key/value cache (Vaswani et al. 2017, eq. 1): per
///        (row, head) pair, two matrix-vector products over the cached rows with a packet-exp softmax
///        between them, pairs in parallel.
///
/// Same contract as rlhf::causal_attention_decode (rlhf/models/layers/attention.hpp; found by
/// argument-dependent lookup as `rlhf_specialized_causal_attention_decode`, arguments validated). The generic
/// pair (rlhf/backends/decode_attention_rows.hpp) forms each score as a scalar double dot product and then
/// each output column as a sum over the keys, reading the cached values one column at a time, a cache row
/// apart per key; it also ran on one thread (B * Hq indices are too few for the backend's threshold).
/// Here, for the pair of row r and query head h (kv head h / group), with K and V the row's cached keys and
/// values 0..p of that kv head (`Eigen::Map`s with the cache's row stride, no copies):
///
///     s = scale * K q            (a matrix-vector product in T, into the pair's scratch row)
///     e = exp(s - max s)         (Eigen's packet exp)
///     out = (V^T e) / sum(e)     (a matrix-vector product in T, reading the cached rows in order; the sum
///                                 in double)
///
/// The pairs of one kv head are consecutive, so its keys and values are read from memory once and from
/// cache by the rest of its group. (Products of the whole group at once, K Q^T with Q the group's [G, hd]
/// queries, went through Eigen's general product and its packing: 1.7x slower at 32 heads of 128 over 8 kv
/// heads, 1024 cached positions.) Pairs are split across threads by their work (the keys read x head size); each pair
/// is computed by one thread, so the result does not depend on the thread count. Products accumulate in T
/// where the generic path uses double: the two agree to T's rounding (tests/backends/eigen_test.cpp).
#pragma once

#include <Eigen/Core>

#include <cstddef>

#include "rlhf/backends/decode_attention_rows.hpp"
#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

/// rlhf::causal_attention_decode's specialization for rlhf::eigen_backend (see the file comment).
template <class T>
void rlhf_specialized_causal_attention_decode(const eigen_backend& b,
                                              const rlhf::detail::decode_attention_rows<T, host_space>& a) {
  using Eigen::Index;
  using rows_map =
      Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0, Eigen::OuterStride<>>;
  using vector_map = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>;
  using const_vector_map = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>;
  const std::size_t pairs = a.q.rows * a.n_heads, hd = a.head_dim;
  const T scale = static_cast<T>(a.scale);
  // The work is the cached keys actually read (not the cache's length): a batch-1 decode early in a
  // sequence stays on one thread, where waking a second would cost more than its share.
  std::size_t keys_read = 0;
  for (std::size_t r = 0; r < a.q.rows; ++r) keys_read += a.keys(r * a.n_heads);
  b.parallel_ranges(pairs, 2 * keys_read * a.n_heads * hd, [&](std::size_t first, std::size_t last) {
    for (std::size_t idx = first; idx < last; ++idx) {
      const std::size_t r = idx / a.n_heads, h = idx - r * a.n_heads;
      const std::size_t kc = (h / a.group) * hd, n = a.keys(idx);
      const rows_map keys(a.k_cache.data + r * a.seq_len * a.k_cache.cols + kc, static_cast<Index>(n),
                          static_cast<Index>(hd), Eigen::OuterStride<>(static_cast<Index>(a.k_cache.cols)));
      const rows_map values(a.v_cache.data + r * a.seq_len * a.v_cache.cols + kc, static_cast<Index>(n),
                            static_cast<Index>(hd), Eigen::OuterStride<>(static_cast<Index>(a.v_cache.cols)));
      const const_vector_map query(a.q.data + r * a.q.cols + h * hd, static_cast<Index>(hd));
      vector_map e(a.scores.data + idx * a.scores.cols, static_cast<Index>(n));
      e.noalias() = scale * (keys * query);
      const T m = e.maxCoeff();
      e = (e.array() - m).exp().matrix();  // max subtracted: every term <= 1, no overflow
      const double sum = e.template cast<double>().sum();
      vector_map out(a.out.data + r * a.out.cols + h * hd, static_cast<Index>(hd));
      out.noalias() = values.transpose() * e;
      out *= static_cast<T>(1.0 / sum);
    }
  });
}

}  // namespace rlhf::backends
