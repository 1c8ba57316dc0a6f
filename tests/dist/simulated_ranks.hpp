// A communicator for single-process tests of the collectives' users: this process plays rank `rank` of
// `size`, and the test scripts what the other ranks contribute. all_gather answers with the values the
// test queued for the other ranks (or copies of this rank's when none are queued: replicas holding the
// same data); all_reduce combines x with `size - 1` replicas of itself (sum: x * size; max: x), which is
// what identical replicas produce, so a value reduced twice or never shows. all_reduce_async completes
// only at wait(), and throws there if the data changed while in flight; every all_reduce's size is logged
// in call order, so tests can compare two ranks' collective sequences.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <utility>
#include <vector>

#include "rlhf/backends/memory.hpp"
#include "rlhf/dist/communicator.hpp"

namespace rlhf::test {

struct simulated_ranks {
  struct script {
    std::deque<std::vector<std::vector<double>>> gathers;  ///< per all_gather: the other ranks' values, in rank order
    std::size_t all_reduces = 0, broadcasts = 0, barriers = 0, all_reduced_elements = 0;
    std::vector<std::size_t> all_reduce_sizes;  ///< every all_reduce (blocking or started), in call order
    std::size_t in_flight = 0, completed_async = 0;
  };
  // A started all_reduce: the sum happens at wait() (test() never completes it), after checking that
  // nothing touched the data meanwhile.
  class pending {
   public:
    pending() = default;
    explicit pending(std::function<void()> complete) : complete_(std::move(complete)) {}
    pending(pending&& o) noexcept : complete_(std::move(o.complete_)) { o.complete_ = nullptr; }
    pending& operator=(pending&& o) noexcept {
      if (this != &o) {
        try {
          wait();
        } catch (...) {
        }
        complete_ = std::move(o.complete_);
        o.complete_ = nullptr;
      }
      return *this;
    }
    ~pending() {
      try {
        wait();
      } catch (...) {
      }
    }
    bool test() { return !complete_; }
    void wait() {
      if (!complete_) return;
      auto f = std::move(complete_);
      complete_ = nullptr;
      f();
    }

   private:
    std::function<void()> complete_;
  };
  std::size_t rank_ = 0, size_ = 2;
  std::shared_ptr<script> log = std::make_shared<script>();

  bool overlaps = true;  ///< what overlaps_computation() answers
  std::size_t rank() const { return rank_; }
  std::size_t size() const { return size_; }
  bool overlaps_computation() const { return overlaps; }

  template <class T>
  struct times {
    T factor;
    RLHF_HOST_DEVICE T operator()(T x) const { return x * factor; }
  };

  template <class B, class T, class S>
  void all_reduce(const B& b, matrix_view<T, S> x, reduce_op op) const {
    ++log->all_reduces;
    log->all_reduced_elements += x.size();
    log->all_reduce_sizes.push_back(x.size());
    if (op == reduce_op::sum) b.transform(x.flat(), times<T>{static_cast<T>(size_)}, vector_view<const T, S>(x.flat()));
  }
  template <class B, class T, class S>
  pending all_reduce_async(const B& b, matrix_view<T, S> x, reduce_op op) const {
    ++log->all_reduces;
    log->all_reduced_elements += x.size();
    log->all_reduce_sizes.push_back(x.size());
    ++log->in_flight;
    std::vector<T> before = to_host(b, x.flat());
    auto script_log = log;
    const std::size_t n = size_;
    return pending([&b, x, op, before = std::move(before), script_log, n] {
      --script_log->in_flight;
      ++script_log->completed_async;
      if (to_host(b, x.flat()) != before) throw std::logic_error("simulated_ranks: data changed while its all_reduce was in flight");
      if (op == reduce_op::sum) b.transform(x.flat(), times<T>{static_cast<T>(n)}, vector_view<const T, S>(x.flat()));
    });
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

// The same ranks without all_reduce_async: a communicator whose collectives all block.
struct simulated_blocking_ranks {
  simulated_ranks ranks;
  std::size_t rank() const { return ranks.rank(); }
  std::size_t size() const { return ranks.size(); }
  template <class B, class T, class S>
  void all_reduce(const B& b, matrix_view<T, S> x, reduce_op op) const {
    ranks.all_reduce(b, x, op);
  }
  template <class B, class T, class S>
  void broadcast(const B& b, matrix_view<T, S> x, std::size_t root) const {
    ranks.broadcast(b, x, root);
  }
  std::vector<double> all_gather(std::span<const double> mine) const { return ranks.all_gather(mine); }
  void barrier() const { ranks.barrier(); }
};

}  // namespace rlhf::test
