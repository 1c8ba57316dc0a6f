/// @file reference.hpp
/// @brief The reference backend: plain serial loops over host memory, the test oracle.
///
/// Every primitive is the most direct loop that implements its contract, in a fixed order, so results
/// are reproducible bit for bit. It is not meant to be fast; it is what every other backend and every
/// specialization is tested against.
#pragma once

#include <cstddef>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/host_buffer.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/error.hpp"

namespace rlhf::backends {

namespace detail {
template <class... Sizes>
void check_same_sizes(const char* primitive, std::size_t expected, Sizes... sizes) {
  if (((sizes != expected) || ...)) {
    rlhf::detail::throw_argument_error(primitive, "in...", "every input of size " + std::to_string(expected),
                                       "a different size");
  }
}

// Row-major gemm on raw pointers with an explicit loop order; used by the reference backend and as the
// fallback of other host backends.
template <class T>
void naive_gemm(transpose op_a, transpose op_b, T alpha, matrix_view<const T, host_space> a,
                matrix_view<const T, host_space> b, T beta, matrix_view<T, host_space> c) {
  const std::size_t m = c.rows, n = c.cols;
  const std::size_t k = op_a == transpose::no ? a.cols : a.rows;
  for (std::size_t i = 0; i < m; ++i) {
    for (std::size_t j = 0; j < n; ++j) {
      T acc = T(0);
      for (std::size_t p = 0; p < k; ++p) {
        const T av = op_a == transpose::no ? a(i, p) : a(p, i);
        const T bv = op_b == transpose::no ? b(p, j) : b(j, p);
        acc += av * bv;
      }
      c(i, j) = alpha * acc + (beta == T(0) ? T(0) : beta * c(i, j));
    }
  }
}

template <class T>
void check_gemm_shapes(const char* function, transpose op_a, transpose op_b, matrix_view<const T, host_space> a,
                       matrix_view<const T, host_space> b, matrix_view<T, host_space> c) {
  const std::size_t am = op_a == transpose::no ? a.rows : a.cols, ak = op_a == transpose::no ? a.cols : a.rows;
  const std::size_t bk = op_b == transpose::no ? b.rows : b.cols, bn = op_b == transpose::no ? b.cols : b.rows;
  if (ak != bk) {
    rlhf::detail::throw_argument_error(function, "B", "op(B) with " + std::to_string(ak) + " rows (the columns of op(A))",
                                       std::to_string(bk) + " rows");
  }
  if (c.rows != am || c.cols != bn) {
    rlhf::detail::throw_argument_error(function, "C",
                                       "shape [" + std::to_string(am) + ", " + std::to_string(bn) + "]",
                                       shape_string(c));
  }
}
}  // namespace detail

/// The reference backend. Satisfies rlhf::complete_backend. Stateless; copy freely.
struct reference_backend {
  using memory_space = host_space;
  template <class T>
  using buffer = host_buffer<T>;
  static constexpr const char* name = "reference";

  template <class T>
  buffer<T> allocate(std::size_t rows, std::size_t cols) const {
    return buffer<T>(rows, cols);
  }

  template <class T>
  void copy(std::type_identity_t<vector_view<const T, host_space>> src, vector_view<T, host_space> dst) const {
    detail::check_same_sizes("rlhf::reference_backend::copy", src.size, dst.size);
    if (src.size != 0 && src.data != dst.data) std::memmove(dst.data, src.data, src.size * sizeof(T));
  }

  template <class T, class U>
  void fill(vector_view<T, host_space> v, U value) const {
    for (std::size_t i = 0; i < v.size; ++i) v.data[i] = static_cast<T>(value);
  }

  void synchronize() const {}

  template <class Out, class F, class... In>
  void transform(vector_view<Out, host_space> out, F f, vector_view<In, host_space>... in) const {
    detail::check_same_sizes("rlhf::reference_backend::transform", out.size, in.size...);
    for (std::size_t i = 0; i < out.size; ++i) out.data[i] = f(in.data[i]...);
  }

  template <class F>
  void for_each_index(std::size_t n, F f) const {
    for (std::size_t i = 0; i < n; ++i) f(i);
  }

  template <class Acc, class Op, class F, class In0, class... In>
  Acc transform_reduce(Acc init, Op op, F f, vector_view<In0, host_space> in0, vector_view<In, host_space>... in) const {
    detail::check_same_sizes("rlhf::reference_backend::transform_reduce", in0.size, in.size...);
    Acc acc = init;
    for (std::size_t i = 0; i < in0.size; ++i) acc = op(acc, f(in0.data[i], in.data[i]...));
    return acc;
  }

  template <class Acc, class Op, class F, class In0, class... In>
  void reduce_rows(vector_view<Acc, host_space> out, Acc init, Op op, F f, matrix_view<In0, host_space> in0,
                   matrix_view<In, host_space>... in) const {
    detail::check_same_sizes("rlhf::reference_backend::reduce_rows", in0.rows, out.size, in.rows...);
    detail::check_same_sizes("rlhf::reference_backend::reduce_rows", in0.cols, in.cols...);
    for (std::size_t r = 0; r < in0.rows; ++r) {
      Acc acc = init;
      for (std::size_t c = 0; c < in0.cols; ++c) acc = op(acc, f(c, in0(r, c), in(r, c)...));
      out.data[r] = acc;
    }
  }

  template <class T>
  void reverse_linear_recurrence(matrix_view<T, host_space> out,
                                 std::type_identity_t<matrix_view<const T, host_space>> a,
                                 std::type_identity_t<matrix_view<const T, host_space>> x) const {
    detail::check_same_sizes("rlhf::reference_backend::reverse_linear_recurrence", out.rows, a.rows, x.rows);
    detail::check_same_sizes("rlhf::reference_backend::reverse_linear_recurrence", out.cols, a.cols, x.cols);
    for (std::size_t r = 0; r < out.rows; ++r) {
      T carry = T(0);
      for (std::size_t t = out.cols; t-- > 0;) {
        carry = x(r, t) + a(r, t) * carry;
        out(r, t) = carry;
      }
    }
  }

  template <class T>
  void gemm(transpose op_a, transpose op_b, std::type_identity_t<T> alpha,
            std::type_identity_t<matrix_view<const T, host_space>> a,
            std::type_identity_t<matrix_view<const T, host_space>> b, std::type_identity_t<T> beta,
            matrix_view<T, host_space> c) const {
    detail::check_gemm_shapes("rlhf::reference_backend::gemm", op_a, op_b, a, b, c);
    detail::naive_gemm(op_a, op_b, alpha, a, b, beta, c);
  }
};

static_assert(complete_backend<reference_backend>);

}  // namespace rlhf::backends

namespace rlhf {
using backends::reference_backend;
}  // namespace rlhf
