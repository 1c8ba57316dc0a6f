// Two ways to plug a backend into rlhf, each checked with the library's conformance suite and then used
// by an algorithm:
//
//   (a) derive from a backend that ships and add one specialization: here a GAE kernel for the case
//       gamma = lambda = 1, where the advantage is a plain reverse cumulative sum of rewards minus the
//       value (a fast path of the kind NeMo-RL added for this case);
//   (b) write a backend from scratch over your own buffer type: here `arena_backend`, whose buffers come
//       from a bump allocator it owns (a stand-in for a framework's memory pool), with every primitive of
//       the concept as a plain loop.
//
// The library never names either type: the algorithms find the primitives through the backend concept
// and the specialization through argument-dependent lookup (docs/backends.md#writing-a-backend).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "rlhf/rlhf.hpp"
#include "rlhf/testing/conformance.hpp"

namespace mylab {

// ---- (a) an existing backend plus one hook ---------------------------------------------------------
struct cumsum_gae_backend : rlhf::reference_backend {
  mutable std::size_t fast_path_calls = 0;  // to show the hook is the code that ran
};

// Found by ADL from rlhf::gae. Falls back to the library's generic path by hand when the fast case
// does not apply (a hook may also simply not exist for other signatures).
template <class T>
void rlhf_specialized_gae(const cumsum_gae_backend& b, rlhf::matrix_view<const T> rewards,
                          rlhf::matrix_view<const T> values, rlhf::matrix_view<const rlhf::mask_type> mask, T gamma,
                          T lambda, rlhf::matrix_view<T> advantages, rlhf::matrix_view<T> returns) {
  if (gamma != T(1) || lambda != T(1)) {
    rlhf::detail::gae_generic<rlhf::reference_backend, T>(b, rewards, values, mask, gamma, lambda, advantages, returns);
    return;
  }
  ++b.fast_path_calls;
  // gamma = lambda = 1: A_t = sum_{valid s >= t} r_s - V_t at valid t, 0 elsewhere (Schulman et al. 2016,
  // eq. 18 with the TD terms telescoping).
  for (std::size_t r = 0; r < rewards.rows; ++r) {
    T tail = T(0);
    for (std::size_t t = rewards.cols; t-- > 0;) {
      const bool valid = mask(r, t) != 0;
      if (valid) tail += rewards(r, t);
      advantages(r, t) = valid ? tail - values(r, t) : T(0);
      if (!returns.empty()) returns(r, t) = valid ? tail : T(0);
    }
  }
}

// ---- (b) a backend from scratch ---------------------------------------------------------------------
// A bump allocator: buffers are slices of blocks it owns, freed all at once with the arena.
class arena {
 public:
  void* take(std::size_t bytes) {
    bytes = (bytes + 63) / 64 * 64;
    if (blocks_.empty() || used_ + bytes > block_size_) {
      const std::size_t size = std::max(bytes, block_size_);
      blocks_.push_back(std::make_unique<std::byte[]>(size + 64));
      used_ = 0;
      base_ = reinterpret_cast<std::byte*>((reinterpret_cast<std::uintptr_t>(blocks_.back().get()) + 63) / 64 * 64);
    }
    void* p = base_ + used_;
    used_ += bytes;
    return p;
  }
  std::size_t blocks() const { return blocks_.size(); }

 private:
  static constexpr std::size_t block_size_ = 1 << 20;
  std::vector<std::unique_ptr<std::byte[]>> blocks_;
  std::byte* base_ = nullptr;
  std::size_t used_ = 0;
};

template <class T>
class arena_buffer {
 public:
  arena_buffer() = default;
  arena_buffer(arena& a, std::size_t rows, std::size_t cols)
      : data_(static_cast<T*>(a.take(rows * cols * sizeof(T)))), rows_(rows), cols_(cols) {
    std::memset(static_cast<void*>(data_), 0, rows * cols * sizeof(T));
  }
  rlhf::matrix_view<T, rlhf::host_space> view() { return {data_, rows_, cols_}; }
  rlhf::matrix_view<const T, rlhf::host_space> view() const { return {data_, rows_, cols_}; }

 private:
  T* data_ = nullptr;
  std::size_t rows_ = 0, cols_ = 0;
};

struct arena_backend {
  using memory_space = rlhf::host_space;
  template <class T>
  using buffer = arena_buffer<T>;

  std::shared_ptr<arena> pool = std::make_shared<arena>();

  template <class T>
  buffer<T> allocate(std::size_t rows, std::size_t cols) const {
    return buffer<T>(*pool, rows, cols);
  }
  template <class T>
  void copy(std::type_identity_t<rlhf::vector_view<const T, rlhf::host_space>> src, rlhf::vector_view<T, rlhf::host_space> dst) const {
    if (src.size != dst.size) throw rlhf::invalid_argument("mylab::arena_backend::copy: sizes differ");
    if (src.size != 0 && src.data != dst.data) std::memmove(dst.data, src.data, src.size * sizeof(T));
  }
  template <class T, class U>
  void fill(rlhf::vector_view<T, rlhf::host_space> v, U value) const {
    for (std::size_t i = 0; i < v.size; ++i) v.data[i] = static_cast<T>(value);
  }
  void synchronize() const {}
  template <class Out, class F, class... In>
  void transform(rlhf::vector_view<Out, rlhf::host_space> out, F f, rlhf::vector_view<In, rlhf::host_space>... in) const {
    for (std::size_t i = 0; i < out.size; ++i) out.data[i] = f(in.data[i]...);
  }
  template <class F>
  void for_each_index(std::size_t n, F f) const {
    for (std::size_t i = 0; i < n; ++i) f(i);
  }
  template <class Acc, class Op, class F, class In0, class... In>
  Acc transform_reduce(Acc init, Op op, F f, rlhf::vector_view<In0, rlhf::host_space> in0,
                       rlhf::vector_view<In, rlhf::host_space>... in) const {
    // Two interleaved accumulators, a different order than the reference (the suite allows it). `init`
    // need not be op's identity (a max starts from -inf, a count from 0), so the second accumulator
    // starts from the first odd element, never from a made-up zero.
    if (in0.size < 2) {
      Acc acc = init;
      for (std::size_t i = 0; i < in0.size; ++i) acc = op(acc, f(in0.data[i], in.data[i]...));
      return acc;
    }
    Acc even = op(init, f(in0.data[0], in.data[0]...));
    Acc odd = static_cast<Acc>(f(in0.data[1], in.data[1]...));
    std::size_t i = 2;
    for (; i + 1 < in0.size; i += 2) {
      even = op(even, f(in0.data[i], in.data[i]...));
      odd = op(odd, f(in0.data[i + 1], in.data[i + 1]...));
    }
    if (i < in0.size) even = op(even, f(in0.data[i], in.data[i]...));
    return op(even, odd);
  }
  template <class Acc, class Op, class F, class In0, class... In>
  void reduce_rows(rlhf::vector_view<Acc, rlhf::host_space> out, Acc init, Op op, F f,
                   rlhf::matrix_view<In0, rlhf::host_space> in0, rlhf::matrix_view<In, rlhf::host_space>... in) const {
    for (std::size_t r = 0; r < in0.rows; ++r) {
      Acc acc = init;
      for (std::size_t c = 0; c < in0.cols; ++c) acc = op(acc, f(c, in0(r, c), in(r, c)...));
      out.data[r] = acc;
    }
  }
  template <class T>
  void reverse_linear_recurrence(rlhf::matrix_view<T, rlhf::host_space> out,
                                 std::type_identity_t<rlhf::matrix_view<const T, rlhf::host_space>> a,
                                 std::type_identity_t<rlhf::matrix_view<const T, rlhf::host_space>> x) const {
    for (std::size_t r = 0; r < out.rows; ++r) {
      T carry = T(0);
      for (std::size_t t = out.cols; t-- > 0;) out(r, t) = carry = x(r, t) + a(r, t) * carry;
    }
  }
  template <class T>
  void gemm(rlhf::transpose op_a, rlhf::transpose op_b, std::type_identity_t<T> alpha,
            std::type_identity_t<rlhf::matrix_view<const T, rlhf::host_space>> a,
            std::type_identity_t<rlhf::matrix_view<const T, rlhf::host_space>> b, std::type_identity_t<T> beta,
            rlhf::matrix_view<T, rlhf::host_space> c) const {
    const bool ta = op_a == rlhf::transpose::yes, tb = op_b == rlhf::transpose::yes;
    const std::size_t k = ta ? a.rows : a.cols;
    for (std::size_t i = 0; i < c.rows; ++i) {
      for (std::size_t j = 0; j < c.cols; ++j) {
        T s = T(0);
        for (std::size_t p = 0; p < k; ++p) s += (ta ? a(p, i) : a(i, p)) * (tb ? b(j, p) : b(p, j));
        c(i, j) = alpha * s + (beta == T(0) ? T(0) : beta * c(i, j));
      }
    }
  }
};

}  // namespace mylab

static_assert(rlhf::complete_backend<mylab::cumsum_gae_backend>, "route (a) keeps every primitive");
static_assert(rlhf::complete_backend<mylab::arena_backend>, "route (b) implements the whole concept chain");

namespace {

// GAE with gamma = lambda = 1 on a small ragged batch, on any backend.
template <class B>
std::vector<double> advantages_on(const B& b) {
  const std::vector<double> rewards{0, 0, 1, 0, /**/ 0.5, 0, 0, 0};
  const std::vector<double> values{0.2, 0.4, 0.6, 0, /**/ 0.1, 0.3, 0, 0};
  const std::vector<rlhf::mask_type> mask{1, 1, 1, 0, /**/ 1, 1, 0, 0};
  auto r = rlhf::to_backend(b, rewards, 2, 4), v = rlhf::to_backend(b, values, 2, 4);
  auto m = rlhf::to_backend(b, mask, 2, 4);
  auto adv = rlhf::allocate<double>(b, 2, 4), ret = rlhf::allocate<double>(b, 2, 4);
  rlhf::gae(b, r.view(), v.view(), m.view(), adv.view(), ret.view(), rlhf::gae_options{1.0, 1.0});
  return rlhf::to_host(b, adv.view());
}

}  // namespace

int main() {
  int failures = 0;
  const auto check = [&](const char* name, const auto& b) {
    rlhf::testing::conformance_options of, od;
    of.name = std::string(name) + ", float";
    od.name = std::string(name) + ", double";
    for (const auto& r : {rlhf::testing::check_conformance<float>(b, of), rlhf::testing::check_conformance<double>(b, od)}) {
      std::printf("%s\n", r.summary().c_str());
      failures += r.ok() ? 0 : 1;
    }
  };
  const mylab::cumsum_gae_backend a;
  const mylab::arena_backend b;
  check("(a) cumsum_gae_backend", a);
  check("(b) arena_backend", b);

  const auto want = advantages_on(rlhf::reference_backend{});
  const auto got_a = advantages_on(a), got_b = advantages_on(b);
  std::printf("GAE (gamma = lambda = 1) advantages, row 0: reference %.2f %.2f %.2f | (a) %.2f %.2f %.2f | (b) %.2f %.2f %.2f\n",
              want[0], want[1], want[2], got_a[0], got_a[1], got_a[2], got_b[0], got_b[1], got_b[2]);
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (std::abs(got_a[i] - want[i]) > 1e-12 || std::abs(got_b[i] - want[i]) > 1e-12) ++failures;
  }
  std::printf("(a) ran its fast path %zu times; (b) allocated %zu arena blocks\n", a.fast_path_calls, b.pool->blocks());
  if (a.fast_path_calls == 0) ++failures;
  std::printf(failures == 0 ? "custom backends OK\n" : "custom backends FAILED\n");
  return failures == 0 ? 0 : 1;
}
