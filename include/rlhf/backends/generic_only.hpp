/// @file generic_only.hpp
/// @brief A wrapper that forwards every primitive of a backend but hides its specializations.
///
/// Algorithms look for a backend's specialized kernels (`rlhf_specialized_<algorithm>`) by
/// argument-dependent lookup on the backend type. `generic_only<B>` lives in its own namespace and
/// holds B instead of deriving from it, so no specialization of B is found and every algorithm takes
/// its generic path over B's primitives. Tests use it to hold each specialization to the generic
/// implementation; users can use it to rule a specialization out while debugging.
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

#include "rlhf/backends/concepts.hpp"

namespace rlhf::wrappers {

template <class B>
struct generic_only {
  using memory_space = typename B::memory_space;
  template <class T>
  using buffer = typename B::template buffer<T>;

  B inner{};

  generic_only() = default;
  explicit generic_only(B b) : inner(std::move(b)) {}

  template <class T>
  buffer<T> allocate(std::size_t rows, std::size_t cols) const {
    return inner.template allocate<T>(rows, cols);
  }
  template <class Src, class Dst>
  void copy(Src src, Dst dst) const {
    inner.copy(src, dst);
  }
  template <class V, class U>
  void fill(V v, U value) const {
    inner.fill(v, value);
  }
  void synchronize() const { inner.synchronize(); }
  template <class Out, class F, class... In>
  void transform(Out out, F f, In... in) const {
    inner.transform(out, f, in...);
  }
  template <class F>
  void for_each_index(std::size_t n, F f) const {
    inner.for_each_index(n, f);
  }
  template <class F>
  void for_each_index(std::size_t n, F f, std::size_t work_per_index) const {
    rlhf::for_each_weighted_index(inner, n, work_per_index, f);
  }
  template <class Acc, class Op, class F, class... In>
  Acc transform_reduce(Acc init, Op op, F f, In... in) const {
    return inner.transform_reduce(init, op, f, in...);
  }
  template <class Out, class Acc, class Op, class F, class... In>
  void reduce_rows(Out out, Acc init, Op op, F f, In... in) const {
    inner.reduce_rows(out, init, op, f, in...);
  }
  template <class T, class A, class X>
  void reverse_linear_recurrence(matrix_view<T, memory_space> out, A a, X x) const {
    inner.reverse_linear_recurrence(out, a, x);
  }
  template <class T, class A, class Bm>
  void gemm(transpose op_a, transpose op_b, std::type_identity_t<T> alpha, A a, Bm b, std::type_identity_t<T> beta,
            matrix_view<T, memory_space> c) const {
    inner.gemm(op_a, op_b, alpha, a, b, beta, c);
  }
};

}  // namespace rlhf::wrappers

namespace rlhf {
using wrappers::generic_only;
}  // namespace rlhf
