/// @file attention_shape.hpp
/// @brief What every causal grouped-query attention path shares: the sizes of a call and the keys a query
///        sees. The generic path (rlhf/models/layers/attention.hpp), the product formulation of the CUDA
///        backend (rlhf/backends/attention_products.hpp) and the Eigen kernel derive them alike.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"

namespace rlhf::detail {

/// The sizes of one attention call over q [B*T, Hq*hd] and k, v [B*T, Hkv*hd].
struct attention_shape {
  std::size_t batch = 0;       // B
  std::size_t seq = 0;         // T
  std::size_t n_heads = 0;     // Hq
  std::size_t n_kv_heads = 0;  // Hkv
  std::size_t group = 0;       // Hq / Hkv
  std::size_t head_dim = 0;    // hd
  double scale = 0.0;          // 1 / sqrt(hd)
};

/// The sizes of a call with `rows` rows of `q_cols` query columns (arguments already validated: n_heads
/// divides q_cols, n_kv_heads divides n_heads, batch divides rows or both are 0).
inline attention_shape attention_shape_of(std::size_t rows, std::size_t q_cols, std::size_t batch,
                                          std::size_t n_heads, std::size_t n_kv_heads) {
  attention_shape s;
  s.batch = batch;
  s.seq = batch == 0 ? 0 : rows / batch;
  s.n_heads = n_heads;
  s.n_kv_heads = n_kv_heads;
  s.group = n_heads / n_kv_heads;
  s.head_dim = q_cols / n_heads;
  s.scale = 1.0 / std::sqrt(static_cast<double>(s.head_dim));
  return s;
}

/// Keys visible to query i of sequence bb: j < min(i + 1, n_b), n_b = lengths[bb] (T when none are given).
template <class S>
RLHF_HOST_DEVICE inline std::size_t attention_visible_keys(vector_view<const std::int32_t, S> lengths,
                                                           std::size_t bb, std::size_t i, std::size_t seq) {
  const std::size_t len = lengths.empty() ? seq : static_cast<std::size_t>(lengths[bb]);
  return i + 1 < len ? i + 1 : len;
}

}  // namespace rlhf::detail
