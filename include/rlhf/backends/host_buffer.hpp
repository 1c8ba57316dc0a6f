/// @file host_buffer.hpp
/// @brief The owning, 64-byte aligned host buffer used by the CPU backends.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <type_traits>

#include "rlhf/backends/view.hpp"

namespace rlhf {

/// Owning storage for rows x cols trivially copyable elements in host memory, aligned to 64 bytes
/// (one cache line, the widest SIMD register). Move-only. Elements are not initialised.
template <class T>
class host_buffer {
  static_assert(std::is_trivially_copyable_v<T>, "rlhf::host_buffer holds trivially copyable elements only");

 public:
  using value_type = T;
  using space_type = host_space;
  static constexpr std::size_t alignment = 64;

  host_buffer() = default;
  host_buffer(std::size_t rows, std::size_t cols) : rows_(rows), cols_(cols) {
    const std::size_t bytes = rows * cols * sizeof(T);
    if (bytes != 0) {
      // aligned_alloc needs a multiple of the alignment.
      const std::size_t rounded = (bytes + alignment - 1) / alignment * alignment;
      void* p = std::aligned_alloc(alignment, rounded);
      if (p == nullptr) throw std::bad_alloc();
      data_.reset(static_cast<T*>(p));
    }
  }

  /// The elements as a rows x cols matrix.
  matrix_view<T, host_space> view() { return {data_.get(), rows_, cols_}; }
  matrix_view<const T, host_space> view() const { return {data_.get(), rows_, cols_}; }
  /// The elements as one vector of rows * cols.
  vector_view<T, host_space> vector() { return {data_.get(), rows_ * cols_}; }
  vector_view<const T, host_space> vector() const { return {data_.get(), rows_ * cols_}; }

  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  std::size_t rows() const { return rows_; }
  std::size_t cols() const { return cols_; }
  std::size_t size() const { return rows_ * cols_; }

 private:
  struct free_deleter {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, free_deleter> data_;
  std::size_t rows_ = 0;
  std::size_t cols_ = 0;
};

}  // namespace rlhf
