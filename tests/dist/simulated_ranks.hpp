// A communicator for single-process tests of the collectives' users: this process plays rank `rank` of
// `size`, and the test scripts what the other ranks contribute. all_gather answers with the values the
// test queued for the other ranks (or copies of this rank's when none are queued: replicas holding the
// same data); all_reduce combines x with `size - 1` replicas of itself (sum: x * size; max: x), which is
// what identical replicas produce, so a value reduced twice or never shows.
#pragma once

#include <cstddef>
#include <deque>
#include <memory>
#include <span>
#include <stdexcept>
#include <vector>

#include "rlhf/dist/communicator.hpp"

namespace rlhf::test {

struct simulated_ranks {
  struct script {
    std::deque<std::vector<std::vector<double>>> gathers;  ///< per all_gather: the other ranks' values, in rank order
    std::size_t all_reduces = 0, broadcasts = 0, barriers = 0, all_reduced_elements = 0;
  };
  std::size_t rank_ = 0, size_ = 2;
  std::shared_ptr<script> log = std::make_shared<script>();

  std::size_t rank() const { return rank_; }
  std::size_t size() const { return size_; }

  template <class T>
  struct times {
    T factor;
    RLHF_HOST_DEVICE T operator()(T x) const { return x * factor; }
  };

  template <class B, class T, class S>
  void all_reduce(const B& b, matrix_view<T, S> x, reduce_op op) const {
    ++log->all_reduces;
    log->all_reduced_elements += x.size();
    if (op == reduce_op::sum) b.transform(x.flat(), times<T>{static_cast<T>(size_)}, vector_view<const T, S>(x.flat()));
  }
  template <class B, class T, class S>
  void broadcast(const B&, matrix_view<T, S>, std::size_t) const {
    ++log->broadcasts;
  }
  std::vector<double> all_gather(std::span<const double> mine) const {
    std::vector<std::vector<double>> others;
    if (!log->gathers.empty()) {
      others = log->gathers.front();
      log->gathers.pop_front();
    } else {
      others.assign(size_ - 1, std::vector<double>(mine.begin(), mine.end()));
    }
    if (others.size() != size_ - 1) throw std::logic_error("simulated_ranks: a scripted gather needs size - 1 ranks");
    std::vector<double> out;
    for (std::size_t r = 0, o = 0; r < size_; ++r) {
      const std::span<const double> v = r == rank_ ? mine : std::span<const double>(others[o++]);
      if (v.size() != mine.size()) throw std::logic_error("simulated_ranks: a scripted rank holds another count");
      out.insert(out.end(), v.begin(), v.end());
    }
    return out;
  }
  void barrier() const { ++log->barriers; }
};

}  // namespace rlhf::test
