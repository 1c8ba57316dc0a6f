/// @file concepts.hpp
/// @brief The tensor backend concept chain: memory -> elementwise -> reduce -> scan, and blas.
///
/// A backend is a cheap, copyable handle (it may carry a stream or a BLAS handle) passed first to
/// every algorithm, as a Thrust execution policy is. Algorithms take views (rlhf/backends/view.hpp) in
/// the backend's memory space and call only the primitives below; everything else is derived. Each
/// algorithm requires the weakest concept it uses and `static_assert`s every primitive it needs with a
/// message naming the missing member and its section of docs/backends.md.
///
/// The contract of every primitive, in full, is in docs/backends.md; summarised:
///
/// | concept               | primitives (all `const` member functions)                                   |
/// |-----------------------|------------------------------------------------------------------------------|
/// | backend               | memory_space, buffer<T>, allocate<T>(rows, cols), copy(src, dst), fill(v, x), synchronize() |
/// | elementwise_backend   | transform(out, f, in...), for_each_index(n, f)                              |
/// | reduce_backend        | transform_reduce(init, op, f, in...), reduce_rows(out, init, op, f, in2d...) |
/// | scan_backend          | reverse_linear_recurrence(out, a, x)                                        |
/// | blas_backend          | gemm(op_a, op_b, alpha, A, B, beta, C)                                      |
///
/// Optional, required by no concept: `for_each_index(n, f, work_per_index)`, the index loop with a hint of
/// each index's cost (see rlhf::for_each_weighted_index).
///
/// Functors handed to primitives are called on the backend's device; they must be `RLHF_HOST_DEVICE`
/// and capture only values and views (never host references) so a GPU backend can run them.
#pragma once

#include <concepts>
#include <cstddef>
#include <type_traits>
#include <utility>

#include "rlhf/backends/view.hpp"
#include "rlhf/config.hpp"

namespace rlhf {

/// Operand transposition for gemm.
enum class transpose : unsigned char { no, yes };

namespace detail {
// Probe functors used only to ask whether a backend accepts functors of a given arity.
struct probe_unary {
  RLHF_HOST_DEVICE float operator()(float x) const { return x; }
};
struct probe_binary {
  RLHF_HOST_DEVICE float operator()(float x, float y) const { return x + y; }
};
struct probe_ternary {
  RLHF_HOST_DEVICE float operator()(float x, float y, float z) const { return x + y + z; }
};
struct probe_index {
  RLHF_HOST_DEVICE void operator()(std::size_t) const {}
};
struct probe_plus {
  RLHF_HOST_DEVICE float operator()(float x, float y) const { return x + y; }
};
struct probe_row_map {
  RLHF_HOST_DEVICE float operator()(std::size_t, float x) const { return x; }
};

template <class B>
using space_of = typename B::memory_space;
template <class T, class B>
using vec_of = vector_view<T, space_of<B>>;
template <class T, class B>
using mat_of = matrix_view<T, space_of<B>>;

// Requirement groups, kept separate so each can be named in a diagnostic (range-v3 style).
template <class B>
concept has_memory_space = requires { typename B::memory_space; } && memory_space<typename B::memory_space>;

template <class B>
concept has_buffer = has_memory_space<B> && requires(typename B::template buffer<float>& buf) {
  { buf.view() } -> std::same_as<matrix_view<float, space_of<B>>>;
};

template <class B>
concept has_allocate = has_buffer<B> && requires(const B& b, std::size_t n) {
  { b.template allocate<float>(n, n) } -> std::same_as<typename B::template buffer<float>>;
};

template <class B>
concept has_copy = has_memory_space<B> &&
    requires(const B& b, vec_of<float, B> dev, vector_view<float, host_space> host) {
      b.copy(vector_view<const float, host_space>(host), dev);  // host -> backend
      b.copy(vec_of<const float, B>(dev), host);                // backend -> host
      b.copy(vec_of<const float, B>(dev), dev);                 // backend -> backend
    };

template <class B>
concept has_fill = has_memory_space<B> && requires(const B& b, vec_of<float, B> v) { b.fill(v, 1.0f); };

template <class B>
concept has_synchronize = requires(const B& b) { b.synchronize(); };

template <class B>
concept has_transform = has_memory_space<B> &&
    requires(const B& b, vec_of<float, B> out, vec_of<const float, B> in) {
      b.transform(out, probe_unary{}, in);
      b.transform(out, probe_binary{}, in, in);
      b.transform(out, probe_ternary{}, in, in, in);
    };

template <class B>
concept has_for_each_index = requires(const B& b, std::size_t n) { b.for_each_index(n, probe_index{}); };

/// The optional work hint of for_each_index (see rlhf::for_each_weighted_index).
template <class B>
concept has_weighted_for_each_index =
    requires(const B& b, std::size_t n) { b.for_each_index(n, probe_index{}, n); };

template <class B>
concept has_transform_reduce = has_memory_space<B> && requires(const B& b, vec_of<const float, B> in) {
  { b.transform_reduce(0.0f, probe_plus{}, probe_unary{}, in) } -> std::convertible_to<float>;
  { b.transform_reduce(0.0f, probe_plus{}, probe_binary{}, in, in) } -> std::convertible_to<float>;
};

template <class B>
concept has_reduce_rows = has_memory_space<B> &&
    requires(const B& b, vec_of<float, B> out, mat_of<const float, B> in) {
      b.reduce_rows(out, 0.0f, probe_plus{}, probe_row_map{}, in);
    };

template <class B>
concept has_reverse_linear_recurrence = has_memory_space<B> &&
    requires(const B& b, mat_of<float, B> out, mat_of<const float, B> in) {
      b.reverse_linear_recurrence(out, in, in);
    };

template <class B>
concept has_gemm = has_memory_space<B> && requires(const B& b, mat_of<float, B> c, mat_of<const float, B> a) {
  b.gemm(transpose::no, transpose::no, 1.0f, a, a, 0.0f, c);
};
}  // namespace detail

/// \concept backend
/// Memory management: a `memory_space` tag, an owning `buffer<T>` whose `view()` is a
/// `matrix_view<T, memory_space>`, `allocate<T>(rows, cols)`, `copy(src, dst)` between host and the
/// backend's space (and within it), `fill(view, value)` and `synchronize()`. See docs/backends.md#backend.
template <class B>
concept backend = std::copy_constructible<B> && detail::has_memory_space<B> && detail::has_buffer<B> &&
                  detail::has_allocate<B> && detail::has_copy<B> && detail::has_fill<B> &&
                  detail::has_synchronize<B>;

/// \concept elementwise_backend
/// A backend with an n-ary element map `transform(out, f, in...)` (out[i] = f(in[i]...)) and an index
/// loop `for_each_index(n, f)` (f(i) for i in [0, n), in any order or concurrently).
/// See docs/backends.md#elementwise_backend.
template <class B>
concept elementwise_backend = backend<B> && detail::has_transform<B> && detail::has_for_each_index<B>;

/// Runs `f(i)` for every `i < n` where one index costs about `work_per_index` element operations (a row
/// functor over a row of `cols` elements: `cols`). A backend that takes the hint, through the optional
/// overload `for_each_index(n, f, work_per_index)`, uses it to decide whether the loop is worth splitting
/// across threads: the Eigen backend counts `n * work_per_index` against its parallel threshold where the
/// two-argument form counts `n`, so 16,384 attention queries over 256 keys each run on every thread while
/// 16,384 element updates stay on one. Any other backend runs `for_each_index(n, f)`: the hint never
/// changes what is computed (docs/backends.md, "Optional primitives").
template <class B, class F>
void for_each_weighted_index(const B& b, std::size_t n, std::size_t work_per_index, F f) {
  if constexpr (detail::has_weighted_for_each_index<B>)
    b.for_each_index(n, f, work_per_index);
  else
    b.for_each_index(n, f);
}

/// \concept reduce_backend
/// An elementwise backend with `transform_reduce(init, op, f, in...)` (host result of folding f(in[i]...)
/// with the associative op) and `reduce_rows(out, init, op, f, in2d...)` (out[r] = fold over c of
/// f(c, in2d(r, c)...)). See docs/backends.md#reduce_backend.
template <class B>
concept reduce_backend = elementwise_backend<B> && detail::has_transform_reduce<B> && detail::has_reduce_rows<B>;

/// \concept scan_backend
/// A reduce backend with the reverse linear recurrence `reverse_linear_recurrence(out, a, x)`:
/// per row r, out(r, t) = x(r, t) + a(r, t) * out(r, t + 1), with out(r, T) = 0. GAE, discounted returns
/// and "next valid value" carries are all instances. See docs/backends.md#scan_backend.
template <class B>
concept scan_backend = reduce_backend<B> && detail::has_reverse_linear_recurrence<B>;

/// \concept blas_backend
/// A backend with a row-major `gemm(op_a, op_b, alpha, A, B, beta, C)`: C = alpha op(A) op(B) + beta C.
/// See docs/backends.md#blas_backend.
template <class B>
concept blas_backend = backend<B> && detail::has_gemm<B>;

/// \concept complete_backend
/// Everything the library's algorithms and models use: scan_backend and blas_backend.
template <class B>
concept complete_backend = scan_backend<B> && blas_backend<B>;

namespace detail {
// The static_assert diagnostics. An algorithm calls the check for the weakest concept it needs; each
// missing primitive produces its own message pointing at the documentation.
template <class B>
constexpr void check_backend() {
#if RLHF_CONCEPT_CHECKS
  static_assert(has_memory_space<B>,
                "rlhf: the backend type lacks `using memory_space = rlhf::host_space;` (or another memory-space "
                "tag). See docs/backends.md#backend");
  static_assert(has_buffer<B>,
                "rlhf: the backend type lacks `template <class T> using buffer = ...;` whose `view()` returns "
                "rlhf::matrix_view<T, memory_space>. See docs/backends.md#backend");
  static_assert(has_allocate<B>,
                "rlhf: the backend lacks `template <class T> buffer<T> allocate(std::size_t rows, std::size_t cols) "
                "const`. See docs/backends.md#backend");
  static_assert(has_copy<B>,
                "rlhf: the backend lacks `copy(src, dst)` between host_space views and its own views (both "
                "directions and within its space). See docs/backends.md#backend");
  static_assert(has_fill<B>, "rlhf: the backend lacks `fill(vector_view<T, memory_space>, T) const`. See docs/backends.md#backend");
  static_assert(has_synchronize<B>, "rlhf: the backend lacks `synchronize() const`. See docs/backends.md#backend");
  static_assert(std::copy_constructible<B>, "rlhf: a backend must be a copyable handle. See docs/backends.md#backend");
#endif
}

template <class B>
constexpr void check_elementwise_backend() {
  check_backend<B>();
#if RLHF_CONCEPT_CHECKS
  static_assert(has_transform<B>,
                "rlhf: the backend lacks the element map `transform(vector_view<Out> out, F f, vector_view<In>... in) "
                "const` (out[i] = f(in[i]...)), required for 1 to 3 inputs. See docs/backends.md#elementwise_backend");
  static_assert(has_for_each_index<B>,
                "rlhf: the backend lacks `for_each_index(std::size_t n, F f) const` (f(i) for every i < n). "
                "See docs/backends.md#elementwise_backend");
#endif
}

template <class B>
constexpr void check_reduce_backend() {
  check_elementwise_backend<B>();
#if RLHF_CONCEPT_CHECKS
  static_assert(has_transform_reduce<B>,
                "rlhf: the backend lacks `transform_reduce(Acc init, Op op, F f, vector_view<In>... in) const -> Acc`. "
                "See docs/backends.md#reduce_backend");
  static_assert(has_reduce_rows<B>,
                "rlhf: the backend lacks `reduce_rows(vector_view<Acc> out, Acc init, Op op, F f, matrix_view<In>... in) "
                "const` (out[r] = fold of f(c, in(r, c)...)). See docs/backends.md#reduce_backend");
#endif
}

template <class B>
constexpr void check_scan_backend() {
  check_reduce_backend<B>();
#if RLHF_CONCEPT_CHECKS
  static_assert(has_reverse_linear_recurrence<B>,
                "rlhf: the backend lacks `reverse_linear_recurrence(matrix_view<T> out, matrix_view<const T> a, "
                "matrix_view<const T> x) const` (out(r,t) = x(r,t) + a(r,t) * out(r,t+1)). "
                "See docs/backends.md#scan_backend");
#endif
}

template <class B>
constexpr void check_blas_backend() {
  check_backend<B>();
#if RLHF_CONCEPT_CHECKS
  static_assert(has_gemm<B>,
                "rlhf: the backend lacks `gemm(transpose op_a, transpose op_b, T alpha, matrix_view<const T> A, "
                "matrix_view<const T> B, T beta, matrix_view<T> C) const`. See docs/backends.md#blas_backend");
#endif
}
}  // namespace detail

/// Views of element type T in backend B's memory space.
template <class B, class T>
using backend_vector = vector_view<T, typename B::memory_space>;
template <class B, class T>
using backend_matrix = matrix_view<T, typename B::memory_space>;

}  // namespace rlhf
