/// @file embedding_backward.cuh
/// @brief The CUDA backend's token-embedding gradient: token-sorted runs, one thread per (run, column).
///
/// Same contract as rlhf::embedding_backward (rlhf/models/layers/embedding.hpp; found by argument-dependent
/// lookup as `rlhf_specialized_embedding_backward`; arguments validated). The algorithm is
/// rlhf/backends/thrust/embedding_backward.hpp on the backend's stream: a stable sort of the ids with their
/// positions, the starts of the runs of equal ids, then U * D threads (U distinct tokens), each adding its
/// run's rows of one column in position order. The generic path ran D threads, each walking all N tokens.
/// Deterministic, and the same bits as the generic path (each table element gets the same terms in the same
/// order). The run count is read back to the host: the call waits for the stream once.
///
/// CPU reference: the generic path; tests/backends/thrust_embedding_backward_test.cpp runs the same
/// algorithm on Thrust's host systems against it, and the GPU tests hold the model's gradients (the
/// embedding table's included) to the reference backend.
#pragma once

#include "rlhf/backends/cuda.cuh"
#include "rlhf/backends/thrust/embedding_backward.hpp"
#include "rlhf/backends/view.hpp"

namespace rlhf::backends {

/// rlhf::embedding_backward's specialization for rlhf::cuda_backend (see the file comment).
template <class T>
void rlhf_specialized_embedding_backward(const cuda_backend& b, vector_view<const token_type, cuda_space> tokens,
                                         matrix_view<const T, cuda_space> d_out, matrix_view<T, cuda_space> d_table) {
  rlhf::detail::embedding_backward_by_runs(static_cast<const cuda_backend::base_backend&>(b), tokens, d_out, d_table);
}

}  // namespace rlhf::backends
