/// @file memory.hpp
/// @brief Generic memory helpers over any rlhf::backend: allocate, upload from and download to the host.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "rlhf/backends/concepts.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

/// Backend B's owning buffer of T.
template <class B, class T>
using buffer_t = typename B::template buffer<T>;

/// Allocates an uninitialised rows x cols buffer in the backend's memory space.
template <class T, class B>
buffer_t<B, T> allocate(const B& b, std::size_t rows, std::size_t cols) {
  detail::check_backend<B>();
  return b.template allocate<T>(rows, cols);
}

/// Allocates an uninitialised 1 x n buffer (use `.view().flat()` or `vector_of(buf)` for a vector view).
template <class T, class B>
buffer_t<B, T> allocate(const B& b, std::size_t n) {
  return allocate<T>(b, 1, n);
}

/// Allocates a rows x cols buffer filled with `value`.
template <class T, class B>
buffer_t<B, T> allocate_filled(const B& b, std::size_t rows, std::size_t cols, T value) {
  auto buf = allocate<T>(b, rows, cols);
  b.fill(buf.view().flat(), value);
  return buf;
}

/// The buffer's elements as one vector view.
template <class Buffer>
auto vector_of(Buffer& buf) {
  return buf.view().flat();
}

/// Uploads host data into a new rows x cols buffer of the backend.
template <class B, class T>
buffer_t<B, T> to_backend(const B& b, std::span<const T> host, std::size_t rows, std::size_t cols) {
  if (host.size() != rows * cols) {
    detail::throw_argument_error("rlhf::to_backend", "host",
                                 std::to_string(rows * cols) + " elements (" + std::to_string(rows) + " x " +
                                     std::to_string(cols) + ")",
                                 std::to_string(host.size()) + " elements");
  }
  auto buf = allocate<T>(b, rows, cols);
  b.copy(vector_view<const T, host_space>{host.data(), host.size()}, buf.view().flat());
  return buf;
}

/// Uploads a host vector into a new 1 x n buffer.
template <class B, class T>
buffer_t<B, T> to_backend(const B& b, const std::vector<T>& host) {
  return to_backend(b, std::span<const T>(host), 1, host.size());
}

/// Uploads a host vector into a new rows x cols buffer.
template <class B, class T>
buffer_t<B, T> to_backend(const B& b, const std::vector<T>& host, std::size_t rows, std::size_t cols) {
  return to_backend(b, std::span<const T>(host), rows, cols);
}

/// Downloads a view of the backend's memory into a host vector (synchronizes the backend).
template <class B, class T, class S>
std::vector<std::remove_const_t<T>> to_host(const B& b, vector_view<T, S> v) {
  std::vector<std::remove_const_t<T>> host(v.size);
  b.copy(vector_view<const std::remove_const_t<T>, S>{v.data, v.size},
         vector_view<std::remove_const_t<T>, host_space>{host.data(), host.size()});
  b.synchronize();
  return host;
}

/// Downloads a matrix view, row-major.
template <class B, class T, class S>
std::vector<std::remove_const_t<T>> to_host(const B& b, matrix_view<T, S> m) {
  return to_host(b, m.flat());
}

}  // namespace rlhf
