/// @file xtensor.hpp
/// @brief The xtensor backend: buffers are xtensor containers, views are adapted without copying,
/// element maps and reductions are xtensor expressions, and GEMM's inner loop is vectorized with xsimd.
///
/// `rlhf::xtensor_backend` is for codebases that already hold their data in xtensor: its
/// `buffer<T>` (`rlhf::xtensor_buffer<T>`) owns an `xt::xtensor<T, 2>` (reachable with `.tensor()`, so
/// xtensor code can read and write it in place), and `rlhf::xtensor_adapt(view)` turns any library view
/// into an xtensor adaptor over the same memory, so xtensor expressions can be written on a trainer's
/// buffers without a copy. Debian ships xtensor 0.24 with xtl 0.7 and xsimd 8 (`apt-get install
/// xtensor-dev`); the rlhf::xtensor CMake target defines XTENSOR_USE_XSIMD so that xtensor's own
/// assignments (copy, fill, the built-in operators) use SIMD.
///
/// Numerics and order (docs/backends.md#the-backends-that-ship): every primitive is serial and folds in
/// the reference backend's order, so `transform_reduce`, `reduce_rows` and `reverse_linear_recurrence`
/// equal the reference bit for bit. `gemm` accumulates each row of C over k in order (an xsimd
/// multiply-add across a row of B), which rounds like the reference except where the compiler fuses the
/// reference's multiply and add differently: results agree to the element type's precision.
///
/// User functors handed to `transform` and `transform_reduce` run one element at a time: they are
/// wrapped so that xtensor never instantiates them with SIMD batches (a generic functor written for
/// scalars would not compile, or would be wrong, on a batch). Maps whose inputs or results are not
/// arithmetic (struct accumulators) run as plain loops: xtensor expressions hold arithmetic elements only.
#pragma once

#include <xtensor/xadapt.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xnoalias.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xtensor_config.hpp>
#if defined(XTENSOR_USE_XSIMD)
#include <xsimd/xsimd.hpp>
#endif

#include <array>
#include <cstddef>
#include <cstring>
#include <type_traits>
#include <utility>

#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/reference.hpp"
#include "rlhf/backends/view.hpp"

#if XTENSOR_VERSION_MAJOR == 0 && XTENSOR_VERSION_MINOR < 24
#error "rlhf::xtensor_backend needs xtensor 0.24 or newer (Debian: apt-get install xtensor-dev)."
#endif

namespace rlhf {

/// An xtensor adaptor over a library vector view: a 1-D xtensor expression that reads and writes the
/// view's memory (no copy, no ownership).
template <class T>
auto xtensor_adapt(vector_view<T, host_space> v) {
  return xt::adapt(v.data, v.size, xt::no_ownership(), std::array<std::size_t, 1>{v.size});
}

/// An xtensor adaptor over a library matrix view: a rows x cols row-major xtensor expression.
template <class T>
auto xtensor_adapt(matrix_view<T, host_space> m) {
  return xt::adapt(m.data, m.rows * m.cols, xt::no_ownership(), std::array<std::size_t, 2>{m.rows, m.cols});
}

/// The xtensor backend's owning buffer: an `xt::xtensor<T, 2>` of rows x cols (row-major, its storage
/// aligned for xsimd when XTENSOR_USE_XSIMD is defined). Move-only, like every backend buffer; elements
/// are not initialised.
template <class T>
class xtensor_buffer {
  static_assert(std::is_trivially_copyable_v<T>, "rlhf::xtensor_buffer holds trivially copyable elements only");

 public:
  using value_type = T;
  using space_type = host_space;
  using tensor_type = xt::xtensor<T, 2, xt::layout_type::row_major>;

  xtensor_buffer() = default;
  xtensor_buffer(std::size_t rows, std::size_t cols)
      : tensor_(tensor_type::from_shape(std::array<std::size_t, 2>{rows, cols})) {}
  xtensor_buffer(xtensor_buffer&&) noexcept = default;
  xtensor_buffer& operator=(xtensor_buffer&&) noexcept = default;
  xtensor_buffer(const xtensor_buffer&) = delete;
  xtensor_buffer& operator=(const xtensor_buffer&) = delete;

  /// The elements as a rows x cols matrix view (the tensor's own memory).
  matrix_view<T, host_space> view() { return {tensor_.data(), rows(), cols()}; }
  matrix_view<const T, host_space> view() const { return {tensor_.data(), rows(), cols()}; }
  /// The elements as one vector of rows * cols.
  vector_view<T, host_space> vector() { return {tensor_.data(), size()}; }
  vector_view<const T, host_space> vector() const { return {tensor_.data(), size()}; }

  /// The owned xtensor container. Reshaping or resizing it invalidates views taken earlier.
  tensor_type& tensor() { return tensor_; }
  const tensor_type& tensor() const { return tensor_; }

  T* data() { return tensor_.data(); }
  const T* data() const { return tensor_.data(); }
  std::size_t rows() const { return tensor_.shape()[0]; }
  std::size_t cols() const { return tensor_.shape()[1]; }
  std::size_t size() const { return tensor_.size(); }

 private:
  tensor_type tensor_ = tensor_type::from_shape(std::array<std::size_t, 2>{0, 0});
};

namespace backends {

namespace detail {
// xtensor expressions hold arithmetic elements only (xfunction promotes its operands' value types): maps
// over other element types (a struct accumulator, say) run as plain loops in the same order.
template <class... T>
inline constexpr bool xtensor_expressible = (std::is_arithmetic_v<std::remove_cv_t<T>> && ...);

// Calls a user functor with exactly the inputs' value types, so that xtensor's SIMD detection (which
// asks whether the functor accepts xsimd batches) always answers no and the functor sees scalars only.
template <class F, class... In>
struct xtensor_scalar_call {
  F f;
  auto operator()(std::remove_cv_t<In>... x) const { return f(x...); }
};

// y[0, n) += a * x[0, n): the inner loop of gemm, one xsimd batch at a time, then a scalar tail.
template <class T>
void xtensor_axpy(T a, const T* __restrict x, T* __restrict y, std::size_t n) {
  std::size_t j = 0;
#if defined(XTENSOR_USE_XSIMD)
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    using batch = xsimd::batch<T>;
    constexpr std::size_t width = batch::size;
    const batch av(a);
    for (; j + width <= n; j += width) {
      const batch r = xsimd::fma(av, batch::load_unaligned(x + j), batch::load_unaligned(y + j));
      r.store_unaligned(y + j);
    }
  }
#endif
  for (; j < n; ++j) y[j] += a * x[j];
}
}  // namespace detail

/// The xtensor backend. Satisfies rlhf::complete_backend. Stateless; copy freely.
struct xtensor_backend {
  using memory_space = host_space;
  template <class T>
  using buffer = xtensor_buffer<T>;
  static constexpr const char* name = "xtensor";

  template <class T>
  buffer<T> allocate(std::size_t rows, std::size_t cols) const {
    return buffer<T>(rows, cols);
  }

  template <class T>
  void copy(std::type_identity_t<vector_view<const T, host_space>> src, vector_view<T, host_space> dst) const {
    detail::check_same_sizes("rlhf::xtensor_backend::copy", src.size, dst.size);
    if (src.size == 0 || src.data == dst.data) return;
    const bool overlap = src.data < dst.data + dst.size && dst.data < src.data + src.size;
    if (overlap) {  // partially overlapping ranges: xtensor's assignment assumes distinct memory
      std::memmove(dst.data, src.data, src.size * sizeof(T));
      return;
    }
    auto d = xtensor_adapt(dst);
    xt::noalias(d) = xtensor_adapt(src);
  }

  template <class T, class U>
  void fill(vector_view<T, host_space> v, U value) const {
    if (v.size == 0) return;
    xtensor_adapt(v).fill(static_cast<T>(value));
  }

  void synchronize() const {}

  template <class Out, class F, class... In>
  void transform(vector_view<Out, host_space> out, F f, vector_view<In, host_space>... in) const {
    detail::check_same_sizes("rlhf::xtensor_backend::transform", out.size, in.size...);
    if (out.size == 0) return;
    if constexpr (detail::xtensor_expressible<Out, In...>) {
      auto o = xtensor_adapt(out);
      // Element i of the output depends on element i of each input only, so writing in place over an input
      // (out aliasing in) is safe without xtensor's temporary.
      xt::noalias(o) = xt::cast<Out>(
          xt::make_lambda_xfunction(detail::xtensor_scalar_call<F, In...>{f}, xtensor_adapt(in)...));
    } else {
      for (std::size_t i = 0; i < out.size; ++i) out.data[i] = f(in.data[i]...);
    }
  }

  template <class F>
  void for_each_index(std::size_t n, F f) const {
    for (std::size_t i = 0; i < n; ++i) f(i);
  }

  template <class Acc, class Op, class F, class In0, class... In>
  Acc transform_reduce(Acc init, Op op, F f, vector_view<In0, host_space> in0, vector_view<In, host_space>... in) const {
    detail::check_same_sizes("rlhf::xtensor_backend::transform_reduce", in0.size, in.size...);
    if (in0.size == 0) return init;
    Acc acc = init;
    using mapped_type = std::decay_t<decltype(f(in0.data[0], in.data[0]...))>;
    if constexpr (detail::xtensor_expressible<mapped_type, In0, In...>) {
      const auto mapped = xt::make_lambda_xfunction(detail::xtensor_scalar_call<F, In0, In...>{f}, xtensor_adapt(in0),
                                                    xtensor_adapt(in)...);
      for (const auto& x : mapped) acc = op(acc, x);  // left to right: the reference order
    } else {
      for (std::size_t i = 0; i < in0.size; ++i) acc = op(acc, f(in0.data[i], in.data[i]...));
    }
    return acc;
  }

  template <class Acc, class Op, class F, class In0, class... In>
  void reduce_rows(vector_view<Acc, host_space> out, Acc init, Op op, F f, matrix_view<In0, host_space> in0,
                   matrix_view<In, host_space>... in) const {
    detail::check_same_sizes("rlhf::xtensor_backend::reduce_rows", in0.rows, out.size, in.rows...);
    detail::check_same_sizes("rlhf::xtensor_backend::reduce_rows", in0.cols, in.cols...);
    reference_backend{}.reduce_rows(out, init, op, f, in0, in...);  // row by row, left to right
  }

  /// The serial backward loop of the reference backend (a dependent chain per row: nothing to vectorize).
  template <class T>
  void reverse_linear_recurrence(matrix_view<T, host_space> out,
                                 std::type_identity_t<matrix_view<const T, host_space>> a,
                                 std::type_identity_t<matrix_view<const T, host_space>> x) const {
    detail::check_same_sizes("rlhf::xtensor_backend::reverse_linear_recurrence", out.rows, a.rows, x.rows);
    detail::check_same_sizes("rlhf::xtensor_backend::reverse_linear_recurrence", out.cols, a.cols, x.cols);
    reference_backend{}.reverse_linear_recurrence(out, a, x);
  }

  /// Row-major C = alpha op(A) op(B) + beta C. Each row of C accumulates alpha * op(A)(i, p) * row p of
  /// op(B) for p in order (an xsimd multiply-add across the row). A transposed B is first copied into a
  /// row-major xtensor so that its rows are contiguous.
  template <class T>
  void gemm(transpose op_a, transpose op_b, std::type_identity_t<T> alpha,
            std::type_identity_t<matrix_view<const T, host_space>> a,
            std::type_identity_t<matrix_view<const T, host_space>> b, std::type_identity_t<T> beta,
            matrix_view<T, host_space> c) const {
    detail::check_gemm_shapes("rlhf::xtensor_backend::gemm", op_a, op_b, a, b, c);
    const std::size_t m = c.rows, n = c.cols, k = op_a == transpose::no ? a.cols : a.rows;
    if (m == 0 || n == 0) return;
    auto cm = xtensor_adapt(c);
    if (beta == T(0)) {
      cm.fill(T(0));  // beta == 0 must not propagate NaN from an uninitialised C (BLAS semantics)
    } else if (beta != T(1)) {
      cm *= beta;
    }
    if (k == 0 || alpha == T(0)) return;
    xt::xtensor<T, 2> b_transposed;
    const T* b_rows = b.data;  // op(B) as k rows of n contiguous elements
    if (op_b == transpose::yes) {
      b_transposed = xt::transpose(xtensor_adapt(b));
      b_rows = b_transposed.data();
    }
    for (std::size_t i = 0; i < m; ++i) {
      T* c_row = c.data + i * n;
      for (std::size_t p = 0; p < k; ++p) {
        const T a_ip = op_a == transpose::no ? a.data[i * a.cols + p] : a.data[p * a.cols + i];
        detail::xtensor_axpy(alpha * a_ip, b_rows + p * n, c_row, n);
      }
    }
  }
};

static_assert(complete_backend<xtensor_backend>);

}  // namespace backends

using backends::xtensor_backend;

}  // namespace rlhf
