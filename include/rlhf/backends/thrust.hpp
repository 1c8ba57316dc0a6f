/// @file thrust.hpp
/// @brief The Thrust backend: every primitive as a Thrust algorithm over an execution policy (system).
///
/// `rlhf::thrust_backend<System>` runs the primitives with Thrust (CCCL) under the execution policy
/// `System`: `::thrust::cpp::tag` (serial host), `::thrust::omp::tag` (OpenMP threads; compile with
/// `-fopenmp`) or, under nvcc, the CUDA system (the CUDA backend derives from it). Memory is allocated
/// with `::thrust::malloc` on the same system, so the host systems get host memory (`host_space`) and the
/// CUDA system device memory (`cuda_space`). A system may replace how its buffers get memory by
/// specializing `rlhf::backends::thrust_buffer_memory` (the CUDA backend does: stream-ordered allocations).
///
/// Numerics and order (docs/backends.md#the-backends-that-ship):
/// - `reverse_linear_recurrence` is a segmented inclusive scan, over reverse iterators, of affine maps
///   y -> x + a y under composition, keyed by the row index. Composition is associative, so a parallel
///   system may regroup it; a serial one folds it in the reference order and matches the reference
///   backend bit for bit. It accumulates in T, as the reference does. Thrust's OpenMP system has no
///   parallel scan, so there each row is one serial scan and the rows run concurrently.
/// - `transform_reduce` folds fixed blocks of `reduce_block` elements left to right (concurrently),
///   then folds the block results in block order on the host: the result does not depend on the
///   system or its thread count, and equals the reference's for inputs of at most one block.
/// - `reduce_rows` folds each row left to right (rows concurrently); `gemm` sums each dot product in the
///   reference order (tiles of one row by `gemm_tile` columns concurrently), so both equal the reference.
///
/// With g++ the header needs CCCL's headers on the include path (`-I/usr/local/cuda/include/cccl`) and
/// `-DTHRUST_DEVICE_SYSTEM=THRUST_DEVICE_SYSTEM_CPP` (or `_OMP` with `-fopenmp`), so that Thrust's default
/// device system is not CUDA. All Thrust names are written `::thrust::` because the library's own
/// namespace may one day hold a `thrust` name.
#pragma once

#include <thrust/fill.h>
#include <thrust/for_each.h>
#include <thrust/functional.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/reverse_iterator.h>
#include <thrust/iterator/transform_iterator.h>
#include <thrust/iterator/transform_output_iterator.h>
#include <thrust/memory.h>
#include <thrust/scan.h>
#include <thrust/system/cpp/execution_policy.h>
#include <thrust/system/omp/execution_policy.h>

#include <cstddef>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/reference.hpp"
#include "rlhf/backends/view.hpp"

#if RLHF_HAS_CUDA_COMPILER
#include <cuda_runtime.h>
#include <thrust/copy.h>
#include <thrust/system/cuda/execution_policy.h>

#include <string>

#include "rlhf/error.hpp"
#endif

// GCC 12 at -O2 loses track of the functors' members once Thrust's wrappers are inlined and reports them
// (and thrust::malloc's result) as maybe uninitialized: a known false positive, every member is set by
// aggregate initialization. Silenced for this header's code only.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace rlhf::backends {

namespace detail {

/// host_space for Thrust's host systems (cpp, and omp and tbb, which derive from it), cuda_space otherwise.
template <class System>
using thrust_default_space =
    std::conditional_t<std::is_base_of_v<::thrust::system::cpp::execution_policy<System>, System>, host_space,
                       cuda_space>;

// A pack of input pointers, and the call f(p0[i], p1[i], ...) over it: what transform and reduce_rows need
// for any number of inputs, without a tuple header (both are trivially copyable, so kernels can take them).
template <class... P>
struct pointer_pack {};
template <class P0, class... P>
struct pointer_pack<P0, P...> {
  P0* head;
  pointer_pack<P...> tail;
};

inline pointer_pack<> make_pointer_pack() { return {}; }
template <class P0, class... P>
pointer_pack<P0, P...> make_pointer_pack(P0* head, P*... rest) {
  return {head, make_pointer_pack(rest...)};
}

// Calls f(lead..., p0[i], p1[i], ...), the pack's elements appended in order.
template <class F, class... Lead>
RLHF_HOST_DEVICE RLHF_FORCE_INLINE decltype(auto) call_at(const F& f, const pointer_pack<>&, std::size_t,
                                                          const Lead&... lead) {
  return f(lead...);
}
template <class F, class P0, class... P, class... Lead>
RLHF_HOST_DEVICE RLHF_FORCE_INLINE decltype(auto) call_at(const F& f, const pointer_pack<P0, P...>& p, std::size_t i,
                                                          const Lead&... lead) {
  return call_at(f, p.tail, i, lead..., p.head[i]);
}

template <class Out, class F, class... In>
struct thrust_transform_fn {
  Out* out;
  F f;
  pointer_pack<In...> in;
  RLHF_HOST_DEVICE void operator()(std::size_t i) const { out[i] = call_at(f, in, i); }
};

// Folds block k of the inputs left to right; block 0 starts from init when it is the only block
// (the reference order), otherwise every block starts from its first element and init is applied on the host.
template <class Acc, class Op, class F, class... In>
struct thrust_block_fold_fn {
  Acc* partial;
  Acc init;
  Op op;
  F f;
  pointer_pack<In...> in;
  std::size_t n, block, blocks;
  RLHF_HOST_DEVICE void operator()(std::size_t k) const {
    const std::size_t b = k * block, e = b + block < n ? b + block : n;
    Acc acc = blocks == 1 ? op(init, call_at(f, in, b)) : call_at(f, in, b);
    for (std::size_t i = b + 1; i < e; ++i) acc = op(acc, call_at(f, in, i));
    partial[k] = acc;
  }
};

template <class Acc, class Op, class F, class... In>
struct thrust_row_fold_fn {
  Acc* out;
  Acc init;
  Op op;
  F f;
  pointer_pack<In...> in;
  std::size_t cols;
  RLHF_HOST_DEVICE void operator()(std::size_t r) const {
    const std::size_t base = r * cols;
    Acc acc = init;
    for (std::size_t c = 0; c < cols; ++c) acc = op(acc, call_at(f, in, base + c, c));
    out[r] = acc;
  }
};

/// The affine map y -> b + a y; a step of the reverse linear recurrence is (a(t), x(t)).
template <class T>
struct affine_map {
  T a;
  T b;
};

/// Composition in scan order. The scan runs backwards in time, so `later` (the running prefix) holds the
/// map of the steps after t and `step` the map of step t: step o later = (a_t a_L, x_t + a_t b_L).
/// Associative: it is function composition. The b part is the reference's `x + a * carry`, so a serial
/// scan reproduces the reference bit for bit.
template <class T>
struct affine_compose {
  RLHF_HOST_DEVICE affine_map<T> operator()(const affine_map<T>& later, const affine_map<T>& step) const {
    return {step.a * later.a, step.b + step.a * later.b};
  }
};

template <class T>
struct affine_load {
  const T* a;
  const T* x;
  RLHF_HOST_DEVICE affine_map<T> operator()(std::size_t i) const { return {a[i], x[i]}; }
};

template <class T>
struct affine_offset {
  RLHF_HOST_DEVICE T operator()(const affine_map<T>& m) const { return m.b; }
};

// One row's reverse scan on the calling thread (Thrust's serial host system): the OpenMP system runs rows
// concurrently with this, because its own scan_by_key is Thrust's serial one.
template <class T>
struct affine_row_scan_fn {
  const T* a;
  const T* x;
  T* out;
  std::size_t cols;
  void operator()(std::size_t r) const {
    using index = ::thrust::counting_iterator<std::size_t>;
    const auto maps = ::thrust::make_transform_iterator(index(r * cols), affine_load<T>{a, x});
    const auto results = ::thrust::make_transform_output_iterator(out + r * cols, affine_offset<T>{});
    ::thrust::inclusive_scan(::thrust::cpp::tag{}, ::thrust::make_reverse_iterator(maps + cols),
                             ::thrust::make_reverse_iterator(maps), ::thrust::make_reverse_iterator(results + cols),
                             affine_compose<T>{});
  }
};

struct row_of {
  std::size_t cols;
  RLHF_HOST_DEVICE std::size_t operator()(std::size_t i) const { return i / cols; }
};

// C(i, j0 .. j0 + tile) of alpha op(A) op(B) + beta C; each dot product summed over p in increasing order,
// as the reference's naive_gemm does, with the p loop outside the j loop so rows of B stream.
template <class T, std::size_t Tile>
struct thrust_gemm_tile_fn {
  const T* a;
  const T* b;
  T* c;
  std::size_t m, n, k, lda, ldb;
  bool trans_a, trans_b;
  T alpha, beta;
  RLHF_HOST_DEVICE void operator()(std::size_t tile) const {
    const std::size_t tiles_per_row = (n + Tile - 1) / Tile;
    const std::size_t i = tile / tiles_per_row, j0 = tile % tiles_per_row * Tile;
    const std::size_t width = n - j0 < Tile ? n - j0 : Tile;
    T acc[Tile];
    for (std::size_t j = 0; j < width; ++j) acc[j] = T(0);
    for (std::size_t p = 0; p < k; ++p) {
      const T av = trans_a ? a[p * lda + i] : a[i * lda + p];
      if (trans_b) {
        for (std::size_t j = 0; j < width; ++j) acc[j] += av * b[(j0 + j) * ldb + p];
      } else {
        const T* brow = b + p * ldb + j0;
        for (std::size_t j = 0; j < width; ++j) acc[j] += av * brow[j];
      }
    }
    T* crow = c + i * n + j0;
    for (std::size_t j = 0; j < width; ++j) crow[j] = alpha * acc[j] + (beta == T(0) ? T(0) : beta * crow[j]);
  }
};

}  // namespace detail

/// How `thrust_buffer` obtains and returns memory on the system `System`: `::thrust::malloc` and
/// `::thrust::free`. A system that has a better allocator specializes this template before a buffer of
/// it is instantiated (rlhf/backends/cuda.cuh does, for stream-ordered `cudaMallocAsync`).
/// `allocate` returns n > 0 elements or throws; `release` never throws.
template <class System>
struct thrust_buffer_memory {
  template <class T>
  static T* allocate(System& system, std::size_t n) {
    T* data = ::thrust::malloc<T>(system, n).get();
    if (data == nullptr) throw std::bad_alloc();  // the host systems' malloc reports failure with null
    return data;
  }
  template <class T>
  static void release(System& system, T* data) noexcept {
    ::thrust::free(system, ::thrust::pointer<T, System>(data));
  }
};

/// Owning storage for rows x cols trivially copyable elements, allocated on the Thrust system `System`
/// through `thrust_buffer_memory<System>` (host memory for the host systems, device memory for CUDA).
/// Move-only; elements are not initialised.
/// @tparam T element type
/// @tparam System Thrust execution policy the memory belongs to
/// @tparam Space the rlhf memory-space tag of that memory
template <class T, class System, class Space>
class thrust_buffer {
  static_assert(std::is_trivially_copyable_v<T>, "rlhf::thrust_buffer holds trivially copyable elements only");

 public:
  using value_type = T;
  using space_type = Space;

  thrust_buffer() = default;
  /// Allocates rows x cols elements on `system`.
  thrust_buffer(const System& system, std::size_t rows, std::size_t cols) : system_(system), rows_(rows), cols_(cols) {
    if (rows * cols != 0) data_ = thrust_buffer_memory<System>::template allocate<T>(system_, rows * cols);
  }
  thrust_buffer(thrust_buffer&& other) noexcept
      : system_(other.system_), data_(std::exchange(other.data_, nullptr)), rows_(std::exchange(other.rows_, 0)),
        cols_(std::exchange(other.cols_, 0)) {}
  thrust_buffer& operator=(thrust_buffer&& other) noexcept {
    if (this != &other) {
      release();
      system_ = other.system_;
      data_ = std::exchange(other.data_, nullptr);
      rows_ = std::exchange(other.rows_, 0);
      cols_ = std::exchange(other.cols_, 0);
    }
    return *this;
  }
  thrust_buffer(const thrust_buffer&) = delete;
  thrust_buffer& operator=(const thrust_buffer&) = delete;
  ~thrust_buffer() { release(); }

  /// The elements as a rows x cols matrix.
  matrix_view<T, Space> view() { return {data_, rows_, cols_}; }
  /// The elements as a read-only rows x cols matrix.
  matrix_view<const T, Space> view() const { return {data_, rows_, cols_}; }
  /// The elements as one vector of rows * cols.
  vector_view<T, Space> vector() { return {data_, rows_ * cols_}; }
  /// The elements as one read-only vector of rows * cols.
  vector_view<const T, Space> vector() const { return {data_, rows_ * cols_}; }

  /// Pointer to the first element (in Space: not dereferenceable from host code unless host-accessible).
  T* data() { return data_; }
  /// Read-only pointer to the first element.
  const T* data() const { return data_; }
  /// Number of rows.
  std::size_t rows() const { return rows_; }
  /// Number of columns.
  std::size_t cols() const { return cols_; }
  /// rows * cols.
  std::size_t size() const { return rows_ * cols_; }

 private:
  void release() noexcept {
    if (data_ != nullptr) thrust_buffer_memory<System>::release(system_, data_);
    data_ = nullptr;
  }

  System system_{};
  T* data_ = nullptr;
  std::size_t rows_ = 0;
  std::size_t cols_ = 0;
};

/// The Thrust backend: every primitive is a Thrust algorithm under the execution policy `System`.
/// Satisfies rlhf::complete_backend. A copyable handle holding the policy (a system tag, or a policy
/// carrying a stream on CUDA).
/// @tparam System a Thrust execution policy type, e.g. `::thrust::cpp::tag` or `::thrust::omp::tag`
/// @tparam Space the memory-space tag of memory allocated on System (host_space for host systems)
template <class System, class Space = detail::thrust_default_space<System>>
struct thrust_backend {
  using memory_space = Space;
  /// The backend's owning storage: Thrust-allocated memory on System.
  template <class T>
  using buffer = thrust_buffer<T, System, Space>;
  static constexpr const char* name = "thrust";

  /// Elements per reduction block (the same as eigen_backend's): fixes the summation order.
  static constexpr std::size_t reduce_block = 4096;
  /// Output columns per gemm work item.
  static constexpr std::size_t gemm_tile = 32;

  /// The execution policy every primitive runs under.
  System policy{};

  thrust_backend() = default;
  /// A backend running under `p` (for example a CUDA policy bound to a stream).
  explicit thrust_backend(System p) : policy(p) {}

  /// Allocates uninitialised rows x cols storage on the system.
  template <class T>
  buffer<T> allocate(std::size_t rows, std::size_t cols) const {
    return buffer<T>(policy, rows, cols);
  }

  /// Copies src into dst; each is a host view or a view in memory_space. Overlapping host ranges are allowed.
  template <class Src, class T, class DstSpace>
    requires(rlhf::detail::is_vector_view<Src>::value &&
             std::is_same_v<std::remove_const_t<typename Src::element_type>, T> &&
             (std::is_same_v<typename Src::space_type, host_space> ||
              std::is_same_v<typename Src::space_type, Space>) &&
             (std::is_same_v<DstSpace, host_space> || std::is_same_v<DstSpace, Space>))
  void copy(Src src, vector_view<T, DstSpace> dst) const {
    detail::check_same_sizes("rlhf::thrust_backend::copy", src.size, dst.size);
    if (src.size == 0 || static_cast<const void*>(src.data) == static_cast<const void*>(dst.data)) return;
    using SrcSpace = typename Src::space_type;
    if constexpr (SrcSpace::host_accessible && DstSpace::host_accessible) {
      std::memmove(dst.data, src.data, src.size * sizeof(T));
    } else {
#if RLHF_HAS_CUDA_COMPILER
      copy_across(src.data, src.size, dst.data, std::is_same<SrcSpace, Space>{}, std::is_same<DstSpace, Space>{});
#else
      static_assert(sizeof(T) == 0, "rlhf::thrust_backend: copies to or from device memory need a CUDA compiler");
#endif
    }
  }

  /// Sets every element to T(value).
  template <class T, class U>
  void fill(vector_view<T, Space> v, U value) const {
    if (v.size != 0) ::thrust::fill_n(policy, v.data, v.size, static_cast<T>(value));
  }

  /// A no-op: Thrust algorithms on the host systems (and on the default CUDA policy) return when done.
  void synchronize() const {}

  /// out[i] = f(in[i]...) for any number of inputs; out may alias an input.
  template <class Out, class F, class... In>
  void transform(vector_view<Out, Space> out, F f, vector_view<In, Space>... in) const {
    detail::check_same_sizes("rlhf::thrust_backend::transform", out.size, in.size...);
    for_each_index(out.size, detail::thrust_transform_fn<Out, F, In...>{out.data, f, detail::make_pointer_pack(in.data...)});
  }

  /// f(i) for every i < n, concurrently on parallel systems.
  template <class F>
  void for_each_index(std::size_t n, F f) const {
    if (n != 0) ::thrust::for_each_n(policy, ::thrust::counting_iterator<std::size_t>(0), n, f);
  }

  /// Folds f(in[i]...) into init with the associative op: blocks of reduce_block elements concurrently,
  /// then the block results in order (see the file comment). Returns the result on the host.
  template <class Acc, class Op, class F, class In0, class... In>
  Acc transform_reduce(Acc init, Op op, F f, vector_view<In0, Space> in0, vector_view<In, Space>... in) const {
    detail::check_same_sizes("rlhf::thrust_backend::transform_reduce", in0.size, in.size...);
    const std::size_t n = in0.size;
    if (n == 0) return init;
    const std::size_t blocks = (n + reduce_block - 1) / reduce_block;
    std::vector<Acc> partial(blocks, init);
    const auto pack = detail::make_pointer_pack(in0.data, in.data...);
    using fold = detail::thrust_block_fold_fn<Acc, Op, F, In0, In...>;
    if constexpr (Space::host_accessible) {
      for_each_index(blocks, fold{partial.data(), init, op, f, pack, n, reduce_block, blocks});
    } else {
      auto device_partial = allocate<Acc>(1, blocks);
      for_each_index(blocks, fold{device_partial.data(), init, op, f, pack, n, reduce_block, blocks});
      copy(vector_view<const Acc, Space>{device_partial.data(), blocks},
           vector_view<Acc, host_space>{partial.data(), blocks});
    }
    if (blocks == 1) return partial[0];
    Acc acc = init;
    for (const Acc& p : partial) acc = op(acc, p);
    return acc;
  }

  /// out[r] = init op f(0, in(r, 0)...) op f(1, in(r, 1)...) ..., left to right within a row, rows concurrently.
  template <class Acc, class Op, class F, class In0, class... In>
  void reduce_rows(vector_view<Acc, Space> out, Acc init, Op op, F f, matrix_view<In0, Space> in0,
                   matrix_view<In, Space>... in) const {
    detail::check_same_sizes("rlhf::thrust_backend::reduce_rows", in0.rows, out.size, in.rows...);
    detail::check_same_sizes("rlhf::thrust_backend::reduce_rows", in0.cols, in.cols...);
    for_each_index(in0.rows, detail::thrust_row_fold_fn<Acc, Op, F, In0, In...>{
                                 out.data, init, op, f, detail::make_pointer_pack(in0.data, in.data...), in0.cols});
  }

  /// out(r, t) = x(r, t) + a(r, t) out(r, t + 1), out(r, cols) = 0, as a segmented inclusive scan of the
  /// affine maps (a, x) over reverse iterators, keyed by row (see detail::affine_compose). On the OpenMP
  /// system, whose scan_by_key is serial, each row is one scan and rows run concurrently.
  template <class T>
  void reverse_linear_recurrence(matrix_view<T, Space> out, std::type_identity_t<matrix_view<const T, Space>> a,
                                 std::type_identity_t<matrix_view<const T, Space>> x) const {
    detail::check_same_sizes("rlhf::thrust_backend::reverse_linear_recurrence", out.rows, a.rows, x.rows);
    detail::check_same_sizes("rlhf::thrust_backend::reverse_linear_recurrence", out.cols, a.cols, x.cols);
    const std::size_t n = out.rows * out.cols;
    if (n == 0) return;
    if constexpr (std::is_base_of_v<::thrust::system::omp::execution_policy<System>, System>) {
      // Thrust's OpenMP system scans serially: scan the rows (the segments) concurrently instead.
      for_each_index(out.rows, detail::affine_row_scan_fn<T>{a.data, x.data, out.data, out.cols});
    } else {
      using index = ::thrust::counting_iterator<std::size_t>;
      const auto keys = ::thrust::make_transform_iterator(index(0), detail::row_of{out.cols});
      const auto maps = ::thrust::make_transform_iterator(index(0), detail::affine_load<T>{a.data, x.data});
      const auto results = ::thrust::make_transform_output_iterator(out.data, detail::affine_offset<T>{});
      ::thrust::inclusive_scan_by_key(policy, ::thrust::make_reverse_iterator(keys + n),
                                      ::thrust::make_reverse_iterator(keys), ::thrust::make_reverse_iterator(maps + n),
                                      ::thrust::make_reverse_iterator(results + n), ::thrust::equal_to<std::size_t>{},
                                      detail::affine_compose<T>{});
    }
  }

  /// C = alpha op(A) op(B) + beta C (row-major); with beta == 0 the old C is ignored. Tiles of one row by
  /// gemm_tile columns run concurrently; each dot product is summed in the reference order.
  template <class T>
  void gemm(transpose op_a, transpose op_b, std::type_identity_t<T> alpha,
            std::type_identity_t<matrix_view<const T, Space>> a, std::type_identity_t<matrix_view<const T, Space>> b,
            std::type_identity_t<T> beta, matrix_view<T, Space> c) const {
    // Shapes only: the host views below are never dereferenced.
    detail::check_gemm_shapes<T>("rlhf::thrust_backend::gemm", op_a, op_b, {nullptr, a.rows, a.cols},
                                 {nullptr, b.rows, b.cols}, {nullptr, c.rows, c.cols});
    const std::size_t k = op_a == transpose::no ? a.cols : a.rows;
    const std::size_t tiles = c.rows * ((c.cols + gemm_tile - 1) / gemm_tile);
    for_each_index(tiles, detail::thrust_gemm_tile_fn<T, gemm_tile>{a.data, b.data, c.data, c.rows, c.cols, k, a.cols,
                                                                    b.cols, op_a == transpose::yes,
                                                                    op_b == transpose::yes, alpha, beta});
  }

 private:
#if RLHF_HAS_CUDA_COMPILER
  // Copies between host memory and System's memory through Thrust's cross-system copy.
  template <class T, bool FromSpace, bool ToSpace>
  void copy_across(const T* src, std::size_t n, T* dst, std::bool_constant<FromSpace>, std::bool_constant<ToSpace>) const {
    if constexpr (FromSpace && ToSpace) {
      ::thrust::copy(policy, src, src + n, dst);
    } else if constexpr (std::is_base_of_v<::thrust::cuda_cub::execution_policy<System>, System>) {
      // Host <-> device on the policy's own stream (Thrust's cross-system copy would use the default
      // stream, which does not wait for a non-blocking stream), complete when this returns: the host
      // side may be read, reused or freed right after.
      System p = policy;
      const cudaStream_t stream = ::thrust::cuda_cub::stream(p);
      cudaError_t status = cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyDefault, stream);
      if (status == cudaSuccess) status = cudaStreamSynchronize(stream);
      if (status != cudaSuccess) {
        throw rlhf::cuda_error(std::string("rlhf::thrust_backend::copy: cudaMemcpyAsync of ") + std::to_string(n) +
                               " element(s) failed: " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
      }
    } else {
      using host_tag = ::thrust::cpp::tag;
      using src_ptr = ::thrust::pointer<const T, std::conditional_t<FromSpace, System, host_tag>>;
      using dst_ptr = ::thrust::pointer<T, std::conditional_t<ToSpace, System, host_tag>>;
      ::thrust::copy(src_ptr(src), src_ptr(src + n), dst_ptr(dst));
    }
  }
#endif
};

/// The Thrust backend on Thrust's serial host system.
using thrust_cpp_backend = thrust_backend<::thrust::system::cpp::tag>;
/// The Thrust backend on Thrust's OpenMP system (compile with -fopenmp; without it Thrust refuses to build it).
using thrust_omp_backend = thrust_backend<::thrust::system::omp::tag>;

static_assert(complete_backend<thrust_cpp_backend>);

}  // namespace rlhf::backends

namespace rlhf {
using backends::thrust_backend;
using backends::thrust_buffer;
using backends::thrust_cpp_backend;
using backends::thrust_omp_backend;
}  // namespace rlhf

#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC diagnostic pop
#endif
