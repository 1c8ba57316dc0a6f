/// @file sequence_mask.hpp
/// @brief Masks from ragged lengths: the bridge from "prompt length, response length" bookkeeping to the
/// [B, T] masks every algorithm takes.
///
/// Row r of a batch holds a sequence of total length `ends[r]` (right padding after it) whose response
/// (action) tokens are the positions [begins[r], ends[r]). `mask_from_ranges` writes 1 there and 0
/// elsewhere; `mask_from_lengths` is the special case begins = 0.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

namespace detail {
struct range_check {
  std::int64_t bad_count = 0;     // rows with begin < 0, end > cols or begin > end
  std::int64_t first_bad_row = -1;
  std::int64_t max_end = 0;
  std::int64_t min_begin = 0;
};
struct range_check_op {
  RLHF_HOST_DEVICE range_check operator()(range_check a, range_check b) const {
    range_check r;
    r.bad_count = a.bad_count + b.bad_count;
    r.first_bad_row = a.first_bad_row >= 0 ? a.first_bad_row : b.first_bad_row;
    r.max_end = a.max_end > b.max_end ? a.max_end : b.max_end;
    r.min_begin = a.min_begin < b.min_begin ? a.min_begin : b.min_begin;
    return r;
  }
};

template <class B, class S>
void validate_ranges(const B& b, const char* function, vector_view<const std::int32_t, S> begins,
                     vector_view<const std::int32_t, S> ends, std::size_t cols) {
  // Row indices ride along as the fold's position: one pass, one host scalar back.
  const std::size_t rows = ends.size;
  auto scratch = b.template allocate<std::int64_t>(1, rows);
  const auto idx = scratch.view().flat();
  b.for_each_index(rows, [idx] RLHF_HOST_DEVICE(std::size_t i) { idx[i] = static_cast<std::int64_t>(i); });
  const auto limit = static_cast<std::int64_t>(cols);
  const auto check = [limit] RLHF_HOST_DEVICE(std::int32_t begin, std::int32_t end, std::int64_t row) {
    range_check c;
    const bool bad = begin < 0 || end > limit || begin > end;
    c.bad_count = bad ? 1 : 0;
    c.first_bad_row = bad ? row : -1;
    c.max_end = end;
    c.min_begin = begin;
    return c;
  };
  range_check init;
  init.max_end = 0;
  init.min_begin = 0;
  const range_check r = b.transform_reduce(init, range_check_op{}, check, begins, ends,
                                           vector_view<const std::int64_t, S>{idx.data, idx.size});
  if (r.bad_count != 0) {
    throw_argument_error(function, r.max_end > limit ? "lengths" : "begins",
                         "0 <= begin <= end <= " + std::to_string(cols) + " (the sequence length) for every row",
                         std::to_string(r.bad_count) + " row(s) out of range, the first is row " +
                             std::to_string(r.first_bad_row) + " (largest end " + std::to_string(r.max_end) +
                             ", smallest begin " + std::to_string(r.min_begin) + ")");
  }
}
}  // namespace detail

/// Writes mask(r, t) = 1 for begins[r] <= t < ends[r], else 0.
/// @param begins first response position of each row, [B] (int32)
/// @param ends one past the last real position of each row, [B] (int32); must satisfy
///        0 <= begins[r] <= ends[r] <= T, otherwise rlhf::invalid_argument names the first bad row.
/// @param mask output [B, T]
template <class B>
void mask_from_ranges(const B& b, backend_vector<B, const std::int32_t> begins, backend_vector<B, const std::int32_t> ends,
                      backend_matrix<B, mask_type> mask) {
  detail::check_reduce_backend<B>();
  constexpr const char* fn = "rlhf::mask_from_ranges";
  detail::check_size(fn, "ends", ends, mask.rows, "(one per row of 'mask')");
  detail::check_size(fn, "begins", begins, mask.rows, "(one per row of 'mask')");
  detail::validate_ranges(b, fn, begins, ends, mask.cols);
  const std::size_t cols = mask.cols;
  b.for_each_index(mask.size(), [=] RLHF_HOST_DEVICE(std::size_t i) {
    const std::size_t r = i / cols;
    const auto t = static_cast<std::int32_t>(i % cols);
    mask.data[i] = (t >= begins[r] && t < ends[r]) ? mask_type(1) : mask_type(0);
  });
}

/// Writes mask(r, t) = 1 for t < lengths[r] (right padding), else 0. Lengths beyond T or negative
/// raise rlhf::invalid_argument naming 'lengths' and the first bad row.
template <class B>
void mask_from_lengths(const B& b, backend_vector<B, const std::int32_t> lengths, backend_matrix<B, mask_type> mask) {
  detail::check_reduce_backend<B>();
  constexpr const char* fn = "rlhf::mask_from_lengths";
  detail::check_size(fn, "lengths", lengths, mask.rows, "(one per row of 'mask')");
  auto zeros = b.template allocate<std::int32_t>(1, lengths.size);
  b.fill(zeros.view().flat(), 0);
  const auto z = zeros.view().flat();
  detail::validate_ranges(b, fn, backend_vector<B, const std::int32_t>{z.data, z.size}, lengths, mask.cols);
  const std::size_t cols = mask.cols;
  b.for_each_index(mask.size(), [=] RLHF_HOST_DEVICE(std::size_t i) {
    mask.data[i] = static_cast<std::int32_t>(i % cols) < lengths[i / cols] ? mask_type(1) : mask_type(0);
  });
}

}  // namespace rlhf
