/// @file rms_norm.cuh
/// @brief The CUDA backend's RMSNorm (Zhang & Sennrich 2019, eq. 4), forward and backward: a warp or a block
///        per row, and a chunked weight gradient.
///
/// Same contract as rlhf::rms_norm_forward / _backward (rlhf/models/layers/rms_norm.hpp; found by
/// argument-dependent lookup as `rlhf_specialized_rms_norm_forward` and `_backward`; arguments validated).
/// On this backend the generic path ran one thread per row (strided, uncoalesced reads) and one thread per
/// column for the weight gradient (D threads each walking all N rows). Here:
///
/// - the forward and the input gradient split each row across a warp (D <= 1024) or a block
///   (rlhf/backends/cuda/row_groups.cuh): one read of the row for its sum, one read and one write for the
///   outputs, coalesced; the group's sum is formed in a fixed order, so the result does not depend on the
///   launch;
/// - the weight gradient sums chunks of 64 rows per (chunk, column) index into a [N / 64, D] scratch of
///   doubles, then folds each column's chunks in order (two Thrust loops over the row functors of
///   rlhf/backends/rms_norm_rows.hpp); it is enqueued before the input gradient, which may overwrite d_out
///   or x.
///
/// Everything is enqueued on the backend's stream, the scratch's allocation and release included
/// (stream-ordered, see rlhf/backends/cuda.cuh). CPU reference: the generic path; tests/backends/row_groups_test.cpp replays these
/// kernels' splits and sums on the host against it, and the GPU test holds them to the reference backend
/// (the conformance suite's RMSNorm checks, rows of 1 to 1500 elements).
#pragma once

#include <cstddef>

#include "rlhf/backends/cuda.cuh"
#include "rlhf/backends/cuda/row_groups.cuh"
#include "rlhf/backends/rms_norm_rows.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

/// rlhf::rms_norm_forward's specialization for rlhf::cuda_backend (see the file comment).
template <class T>
void rlhf_specialized_rms_norm_forward(const cuda_backend& b, matrix_view<const T, cuda_space> x,
                                       vector_view<const T, cuda_space> weight, matrix_view<T, cuda_space> out,
                                       vector_view<T, cuda_space> inv_rms, double eps) {
  cuda_kernels::run_split_rows<cuda_kernels::split_row_kernel::sum_then_write>(
      b, x.rows, x.cols, rlhf::detail::rms_norm_forward_row<T, cuda_space>{x, weight, out, inv_rms, eps},
      "rlhf::rms_norm_forward (cuda_backend)");
}

/// rlhf::rms_norm_backward's specialization for rlhf::cuda_backend (see the file comment).
template <class T>
void rlhf_specialized_rms_norm_backward(const cuda_backend& b, matrix_view<const T, cuda_space> x,
                                        vector_view<const T, cuda_space> weight,
                                        vector_view<const T, cuda_space> inv_rms,
                                        matrix_view<const T, cuda_space> d_out, matrix_view<T, cuda_space> d_x,
                                        vector_view<T, cuda_space> d_weight) {
  if (d_weight.data != nullptr) {
    const std::size_t chunks = rlhf::detail::rms_norm_weight_grad_chunk_count(x.rows);
    auto partial = b.allocate<double>(chunks, x.cols);
    b.for_each_index(chunks * x.cols,
                     rlhf::detail::rms_norm_weight_grad_chunks<T, cuda_space>{x, inv_rms, d_out, partial.data()});
    b.for_each_index(x.cols, rlhf::detail::rms_norm_weight_grad_fold<T, cuda_space>{partial.data(), chunks, d_weight});
  }
  if (d_x.data == nullptr) return;
  cuda_kernels::run_split_rows<cuda_kernels::split_row_kernel::sum_then_write>(
      b, x.rows, x.cols, rlhf::detail::rms_norm_backward_row<T, cuda_space>{x, weight, inv_rms, d_out, d_x},
      "rlhf::rms_norm_backward (cuda_backend)");
}

}  // namespace rlhf::backends
