/// @file view.hpp
/// @brief Memory-space tags and the non-owning, trivially copyable views every algorithm takes.
///
/// A view is a pointer, extents and a memory-space tag. It never owns memory (owning storage is a
/// backend's `buffer<T>`), it is trivially copyable so it can be passed to a GPU kernel by value, and
/// its element accessors are `RLHF_HOST_DEVICE`. Reading a view whose space is not `host_space` from
/// host code is a bug: the library itself only does it inside backend primitives that run in that
/// space. Matrices are dense and row-major: element (r, c) lives at `data[r * cols + c]`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>

#include "rlhf/config.hpp"

namespace rlhf {

/// Memory that host code can read and write directly.
struct host_space {
  static constexpr const char* name = "host";
  static constexpr bool host_accessible = true;
};

/// CUDA device memory (allocated by the CUDA backend). Not host-accessible.
struct cuda_space {
  static constexpr const char* name = "cuda";
  static constexpr bool host_accessible = false;
};

/// \concept memory_space
/// A tag type naming where a buffer lives: a `static constexpr const char* name` and
/// `static constexpr bool host_accessible` (true when host code may dereference its pointers).
template <class S>
concept memory_space = requires {
  { S::name } -> std::convertible_to<const char*>;
  { S::host_accessible } -> std::convertible_to<bool>;
};

/// Element type of masks: 1 marks a valid (action / response) position, 0 a padded or masked one.
/// Any non-zero value counts as valid.
using mask_type = std::uint8_t;

/// Element type of token ids.
using token_type = std::int32_t;

/// A non-owning contiguous 1-D view of `size` elements of type T in memory space Space.
template <class T, class Space = host_space>
struct vector_view {
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using space_type = Space;

  T* data = nullptr;
  std::size_t size = 0;

  RLHF_HOST_DEVICE constexpr T& operator[](std::size_t i) const { return data[i]; }
  RLHF_HOST_DEVICE constexpr T& operator()(std::size_t i) const { return data[i]; }
  RLHF_HOST_DEVICE constexpr bool empty() const { return size == 0; }
  /// Elements [offset, offset + count).
  RLHF_HOST_DEVICE constexpr vector_view subview(std::size_t offset, std::size_t count) const {
    return {data + offset, count};
  }
  /// Read-only view of the same elements.
  RLHF_HOST_DEVICE constexpr operator vector_view<const T, Space>() const
    requires(!std::is_const_v<T>)
  {
    return {data, size};
  }
};

/// A non-owning dense row-major 2-D view: `rows` x `cols` elements, row r starting at data + r * cols.
template <class T, class Space = host_space>
struct matrix_view {
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using space_type = Space;

  T* data = nullptr;
  std::size_t rows = 0;
  std::size_t cols = 0;

  RLHF_HOST_DEVICE constexpr T& operator()(std::size_t r, std::size_t c) const { return data[r * cols + c]; }
  RLHF_HOST_DEVICE constexpr std::size_t size() const { return rows * cols; }
  RLHF_HOST_DEVICE constexpr bool empty() const { return rows * cols == 0; }
  /// Row r as a vector view.
  RLHF_HOST_DEVICE constexpr vector_view<T, Space> row(std::size_t r) const { return {data + r * cols, cols}; }
  /// All elements as one vector view (row-major order).
  RLHF_HOST_DEVICE constexpr vector_view<T, Space> flat() const { return {data, rows * cols}; }
  /// Rows [first, first + count).
  RLHF_HOST_DEVICE constexpr matrix_view row_block(std::size_t first, std::size_t count) const {
    return {data + first * cols, count, cols};
  }
  /// Read-only view of the same elements.
  RLHF_HOST_DEVICE constexpr operator matrix_view<const T, Space>() const
    requires(!std::is_const_v<T>)
  {
    return {data, rows, cols};
  }
};

static_assert(std::is_trivially_copyable_v<vector_view<float>>, "views must be trivially copyable");
static_assert(std::is_trivially_copyable_v<matrix_view<const double, cuda_space>>, "views must be trivially copyable");

/// Views `count` elements at `data` (host memory unless Space says otherwise).
template <class Space = host_space, class T>
constexpr vector_view<T, Space> make_vector_view(T* data, std::size_t count) {
  return {data, count};
}

/// Views a rows x cols row-major block at `data`.
template <class Space = host_space, class T>
constexpr matrix_view<T, Space> make_matrix_view(T* data, std::size_t rows, std::size_t cols) {
  return {data, rows, cols};
}

/// Views a 1-D vector as a 1 x n matrix (for primitives that take matrices).
template <class T, class Space>
RLHF_HOST_DEVICE constexpr matrix_view<T, Space> as_row_matrix(vector_view<T, Space> v) {
  return {v.data, v.size == 0 ? std::size_t(0) : std::size_t(1), v.size};
}

/// Views a matrix's elements as a vector (same as m.flat()).
template <class T, class Space>
RLHF_HOST_DEVICE constexpr vector_view<T, Space> as_vector(matrix_view<T, Space> m) {
  return m.flat();
}

/// Read-only versions of a view (explicit, for generic code).
template <class T, class Space>
constexpr vector_view<const T, Space> as_const(vector_view<T, Space> v) { return {v.data, v.size}; }
template <class T, class Space>
constexpr matrix_view<const T, Space> as_const(matrix_view<T, Space> m) { return {m.data, m.rows, m.cols}; }

namespace detail {
template <class V>
struct is_vector_view : std::false_type {};
template <class T, class S>
struct is_vector_view<vector_view<T, S>> : std::true_type {};
template <class V>
struct is_matrix_view : std::false_type {};
template <class T, class S>
struct is_matrix_view<matrix_view<T, S>> : std::true_type {};
}  // namespace detail

/// Shape as text, for error messages: "[rows, cols]" or "[size]".
/// (Built with a stream: GCC 12 warns falsely, -Wrestrict, on "literal" + std::string at -O2.)
template <class T, class S>
std::string shape_string(matrix_view<T, S> m) {
  std::ostringstream os;
  os << '[' << m.rows << ", " << m.cols << ']';
  return os.str();
}
template <class T, class S>
std::string shape_string(vector_view<T, S> v) {
  std::ostringstream os;
  os << '[' << v.size << ']';
  return os.str();
}

}  // namespace rlhf
