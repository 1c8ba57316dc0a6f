/// @file single_process.hpp
/// @brief The communicator of one process: rank 0 of 1, every collective the identity.
///
/// The trainers' default communicator, so single-process training needs no dependency and pays
/// nothing: all_reduce and broadcast leave the data untouched, all_gather returns its input, barrier
/// returns at once; all_reduce_async returns a completed handle.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "rlhf/dist/communicator.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

/// One process: rank 0, size 1 (an rlhf::communicator for every backend).
struct single_process {
  std::size_t rank() const { return 0; }
  std::size_t size() const { return 1; }

  template <class B, class T, class S>
  void all_reduce(const B&, matrix_view<T, S>, reduce_op) const {}
  template <class B, class T, class S>
  completed_collective all_reduce_async(const B&, matrix_view<T, S>, reduce_op) const {
    return {};
  }

  /// @throws rlhf::invalid_argument when root is not 0
  template <class B, class T, class S>
  void broadcast(const B&, matrix_view<T, S>, std::size_t root) const {
    if (root != 0) detail::throw_argument_error("rlhf::single_process::broadcast", "root", "0 (the only rank)", std::to_string(root));
  }

  std::vector<double> all_gather(std::span<const double> values) const { return {values.begin(), values.end()}; }

  void barrier() const {}
};

}  // namespace rlhf
