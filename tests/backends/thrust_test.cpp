// Thrust backend specifics: every primitive held to the reference backend (bit for bit where the order is
// the reference's), the affine-map scan of the reverse linear recurrence, determinism, and the concepts.
#include "test_support.hpp"

#if RLHF_TEST_HAS_THRUST
#include <cstring>
#include <limits>
#include <numeric>

#include "rlhf/backends/thrust.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace rlhf;
using namespace rlhf::test;

namespace {

struct plus_op {
  template <class T>
  RLHF_HOST_DEVICE T operator()(T a, T b) const { return a + b; }
};

// A non-commutative associative fold: (first, last) of a sequence. A backend that swapped operands would fail.
struct span_acc {
  long first = -1;
  long last = -1;
};
struct span_op {
  RLHF_HOST_DEVICE span_acc operator()(span_acc a, span_acc b) const {
    return {a.first >= 0 ? a.first : b.first, b.last >= 0 ? b.last : a.last};
  }
};

template <class T>
bool same_bits(const std::vector<T>& x, const std::vector<T>& y) {
  return x.size() == y.size() && (x.empty() || std::memcmp(x.data(), y.data(), x.size() * sizeof(T)) == 0);
}

// The thrust backend's documented fold order: blocks of reduce_block elements left to right, block results in
// order after init; a single block folds from init (the reference order).
template <class T>
double blocked_sum(const std::vector<T>& x, double init, std::size_t block) {
  if (x.empty()) return init;
  const std::size_t blocks = (x.size() + block - 1) / block;
  if (blocks == 1) {
    double acc = init;
    for (T v : x) acc += static_cast<double>(v);
    return acc;
  }
  double acc = init;
  for (std::size_t k = 0; k < blocks; ++k) {
    double p = static_cast<double>(x[k * block]);
    for (std::size_t i = k * block + 1; i < std::min(x.size(), (k + 1) * block); ++i) p += static_cast<double>(x[i]);
    acc += p;
  }
  return acc;
}

// Random recurrence coefficients in [0, 1) with runs of a = 0 (episode boundaries) and of a = 1 (masked steps).
template <class T>
std::vector<T> recurrence_coefficients(std::mt19937_64& g, std::size_t n) {
  auto a = uniform<T>(g, n, 0.0, 1.0);
  std::uniform_int_distribution<int> kind(0, 5);
  for (std::size_t i = 0; i < n; ++i) {
    const int k = kind(g);
    if (k == 0) a[i] = T(0);
    if (k == 1) a[i] = T(1);
  }
  return a;
}

}  // namespace

TEST_CASE("thrust backends satisfy every concept, with host memory on the host systems", "[backends][thrust]") {
  STATIC_REQUIRE(complete_backend<thrust_cpp_backend>);
  STATIC_REQUIRE(complete_backend<thrust_omp_backend>);
  STATIC_REQUIRE(complete_backend<generic_only<thrust_cpp_backend>>);
  STATIC_REQUIRE(std::is_same_v<thrust_cpp_backend::memory_space, host_space>);
  STATIC_REQUIRE(std::is_same_v<thrust_omp_backend::memory_space, host_space>);
  STATIC_REQUIRE(std::is_same_v<thrust_cpp_backend::buffer<float>, thrust_buffer<float, ::thrust::cpp::tag, host_space>>);
  STATIC_REQUIRE(std::is_same_v<thrust_backend<::thrust::cpp::tag>, thrust_cpp_backend>);
  // Any other system (CUDA) defaults to device memory; the space can also be named explicitly.
  STATIC_REQUIRE(std::is_same_v<backends::detail::thrust_default_space<::thrust::omp::tag>, host_space>);
  STATIC_REQUIRE(std::is_same_v<thrust_backend<::thrust::cpp::tag, host_space>::memory_space, host_space>);
  STATIC_REQUIRE(!std::is_copy_constructible_v<thrust_buffer<float, ::thrust::cpp::tag, host_space>>);
  STATIC_REQUIRE(std::is_nothrow_move_constructible_v<thrust_buffer<float, ::thrust::cpp::tag, host_space>>);
}

TEMPLATE_LIST_TEST_CASE("thrust buffers own their memory and move", "[backends][thrust][memory]", thrust_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto buf = allocate_filled<T>(b, 3, 4, T(7));
  const T* p = buf.data();
  REQUIRE(p != nullptr);
  CHECK(buf.size() == 12);
  auto moved = std::move(buf);
  CHECK(moved.data() == p);
  CHECK(buf.data() == nullptr);  // NOLINT(bugprone-use-after-move): the moved-from state is specified
  CHECK(buf.size() == 0);
  CHECK(to_host(b, moved.view()) == std::vector<T>(12, T(7)));
  auto other = allocate<T>(b, 1, 2);
  other = std::move(moved);
  CHECK(other.data() == p);
  CHECK(other.rows() == 3);
  auto empty = allocate<T>(b, 0, 5);
  CHECK(empty.data() == nullptr);
  CHECK(empty.view().rows == 0);
  CHECK(empty.view().cols == 5);
}

TEMPLATE_LIST_TEST_CASE("thrust copy and fill: host round trip, aliasing, overlap, empty", "[backends][thrust][memory]",
                        thrust_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  std::vector<T> host(10);
  std::iota(host.begin(), host.end(), T(1));
  auto buf = to_backend(b, host, 2, 5);
  CHECK(to_host(b, buf.view()) == host);
  // Overlapping ranges in the backend's (host) memory behave like memmove.
  const auto v = buf.view().flat();
  b.copy(v.subview(0, 9), v.subview(1, 9));
  CHECK(to_host(b, buf.view()) == std::vector<T>{1, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  b.copy(v, v);  // aliasing: a no-op
  CHECK(to_host(b, buf.view())[9] == T(9));
  b.copy(vector_view<const T>{host.data(), 0}, v.subview(3, 0));
  b.fill(v.subview(2, 3), 0.25);
  CHECK(to_host(b, buf.view()) == std::vector<T>{1, 1, T(0.25), T(0.25), T(0.25), 5, 6, 7, 8, 9});
  b.fill(v.subview(0, 0), 1);
  auto ints = allocate_filled<int>(b, 1, 4, 3);
  CHECK(to_host(b, ints.view()) == std::vector<int>(4, 3));
  CHECK_THROWS_WITH(b.copy(v.subview(0, 3), v.subview(0, 4)),
                    Catch::Contains("rlhf::thrust_backend::copy") && Catch::Contains("in..."));
}

TEMPLATE_LIST_TEST_CASE("thrust transform: any number of inputs, mixed types, aliasing, empty",
                        "[backends][thrust][transform]", thrust_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const reference_backend ref;
  auto g = rng(101);
  for (std::size_t n : {0u, 1u, 3u, 4097u, 30011u}) {
    const auto x = uniform<T>(g, n), y = uniform<T>(g, n), z = uniform<T>(g, n);
    const auto m = random_mask(g, n);
    auto bx = to_backend(b, x), by = to_backend(b, y), bz = to_backend(b, z);
    auto bm = to_backend(b, m);
    auto out = allocate<T>(b, n);
    std::vector<T> want(n);
    const auto f4 = [] RLHF_HOST_DEVICE(T p, T q, T r, mask_type k) { return k ? p * q - r : r; };
    b.transform(out.view().flat(), f4, bx.view().flat(), by.view().flat(), bz.view().flat(), bm.view().flat());
    ref.transform(make_vector_view(want.data(), n), f4, make_vector_view(x.data(), n), make_vector_view(y.data(), n),
                  make_vector_view(z.data(), n), make_vector_view(m.data(), n));
    CHECK(same_bits(to_host(b, out.view()), want));
    // Output aliasing an input at the same index.
    b.transform(bx.view().flat(), [] RLHF_HOST_DEVICE(T p) { return p + T(1); }, as_const(bx.view().flat()));
    for (std::size_t i = 0; i < n; ++i) want[i] = x[i] + T(1);
    CHECK(same_bits(to_host(b, bx.view()), want));
    // Mixed output type.
    auto flags = allocate<mask_type>(b, n);
    b.transform(flags.view().flat(), [] RLHF_HOST_DEVICE(T p) { return static_cast<mask_type>(p > T(1)); },
                as_const(bx.view().flat()));
    const auto got = to_host(b, flags.view());
    for (std::size_t i = 0; i < n; ++i) REQUIRE(got[i] == (x[i] + T(1) > T(1) ? 1 : 0));
  }
  auto x4 = allocate<T>(b, 4), x5 = allocate<T>(b, 5);
  CHECK_THROWS_WITH(b.transform(x4.view().flat(), [] RLHF_HOST_DEVICE(T v) { return v; }, as_const(x5.view().flat())),
                    Catch::Contains("rlhf::thrust_backend::transform"));
}

TEMPLATE_LIST_TEST_CASE("thrust for_each_index visits each index exactly once", "[backends][thrust]", thrust_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  for (std::size_t n : {0u, 1u, 100003u}) {
    auto out = allocate_filled<T>(b, 1, n + 1, T(0));
    const auto v = out.view().flat();
    b.for_each_index(n, [v] RLHF_HOST_DEVICE(std::size_t i) { v[i] += T(i % 13) + T(1); });
    const auto got = to_host(b, out.view());
    for (std::size_t i = 0; i < n; ++i) REQUIRE(got[i] == T(i % 13) + T(1));
    CHECK(got[n] == T(0));  // nothing past n
  }
}

TEMPLATE_LIST_TEST_CASE("thrust transform_reduce: documented block order, init once, non-commutative op",
                        "[backends][thrust][reduce]", thrust_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const reference_backend ref;
  auto g = rng(102);
  const std::size_t block = TestType::backend::reduce_block;
  for (std::size_t n : {std::size_t(0), std::size_t(1), block - 1, block, block + 1, 3 * block + 17}) {
    const auto x = uniform<T>(g, n);
    auto bx = to_backend(b, x);
    const auto to_double = [] RLHF_HOST_DEVICE(T a) { return static_cast<double>(a); };
    const double got = b.transform_reduce(0.5, plus_op{}, to_double, bx.view().flat());
    CHECK(got == blocked_sum(x, 0.5, block));  // exactly the documented order
    if (n <= block) {
      // One block: the reference's left-to-right fold, bit for bit.
      CHECK(got == ref.transform_reduce(0.5, plus_op{}, to_double, make_vector_view(x.data(), n)));
    }
    // (first, last) index of the positive elements: wrong if blocks or operands were reordered.
    auto idx = allocate<long>(b, n);
    const auto iv = idx.view().flat();
    b.for_each_index(n, [iv] RLHF_HOST_DEVICE(std::size_t i) { iv[i] = static_cast<long>(i); });
    const span_acc s = b.transform_reduce(
        span_acc{}, span_op{},
        [] RLHF_HOST_DEVICE(T a, long i) { return a > T(0) ? span_acc{i, i} : span_acc{}; }, bx.view().flat(),
        as_const(iv));
    long first = -1, last = -1;
    for (std::size_t i = 0; i < n; ++i)
      if (x[i] > T(0)) {
        if (first < 0) first = static_cast<long>(i);
        last = static_cast<long>(i);
      }
    CHECK(s.first == first);
    CHECK(s.last == last);
  }
  // In float, 1e8 followed by ones stays 1e8 in one left-to-right block (as the reference).
  std::vector<float> big(1000, 1.0f);
  big[0] = 1e8f;
  auto bb = to_backend(b, big);
  CHECK(b.transform_reduce(0.0f, plus_op{}, [] RLHF_HOST_DEVICE(float v) { return v; }, bb.view().flat()) == 1e8f);
}

TEMPLATE_LIST_TEST_CASE("thrust reduce_rows equals the reference bit for bit, ragged and empty shapes",
                        "[backends][thrust][reduce]", thrust_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const reference_backend ref;
  auto g = rng(103);
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{0, 5}, {4, 0}, {1, 1}, {37, 129}, {300, 17}}) {
    const auto x = normal<T>(g, rows * cols);
    const auto m = mask_from_lengths(random_lengths(g, rows, cols), cols);
    auto bx = to_backend(b, x, rows, cols);
    auto bm = to_backend(b, m, rows, cols);
    auto got = allocate<T>(b, rows);
    std::vector<T> want(rows);
    const auto f = [] RLHF_HOST_DEVICE(std::size_t c, T a, mask_type k) { return k ? a * T(c % 3 + 1) : T(0); };
    b.reduce_rows(got.view().flat(), T(0.125), plus_op{}, f, bx.view(), bm.view());
    ref.reduce_rows(make_vector_view(want.data(), rows), T(0.125), plus_op{}, f,
                    make_matrix_view(x.data(), rows, cols), make_matrix_view(m.data(), rows, cols));
    CHECK(same_bits(to_host(b, got.view()), want));
  }
  auto out = allocate<T>(b, 3);
  auto in = allocate<T>(b, 4, 2);
  CHECK_THROWS_WITH(b.reduce_rows(out.view().flat(), T(0), plus_op{}, [] RLHF_HOST_DEVICE(std::size_t, T v) { return v; },
                                  as_const(in.view())),
                    Catch::Contains("rlhf::thrust_backend::reduce_rows"));
}

TEMPLATE_LIST_TEST_CASE("thrust reverse_linear_recurrence: the affine-map scan equals the backward loop",
                        "[backends][thrust][scan]", thrust_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(104);
  for (auto [rows, cols] :
       {std::pair<std::size_t, std::size_t>{0, 4}, {3, 0}, {1, 1}, {1, 1000}, {7, 33}, {129, 257}, {2000, 3}}) {
    const auto a = recurrence_coefficients<T>(g, rows * cols);
    const auto x = normal<T>(g, rows * cols);
    auto ba = to_backend(b, a, rows, cols), bx = to_backend(b, x, rows, cols);
    auto out = allocate<T>(b, rows, cols);
    b.reverse_linear_recurrence(out.view(), as_const(ba.view()), as_const(bx.view()));
    std::vector<T> want(rows * cols);
    reference_backend{}.reverse_linear_recurrence(make_matrix_view(want.data(), rows, cols),
                                                  make_matrix_view(a.data(), rows, cols),
                                                  make_matrix_view(x.data(), rows, cols));
    // Serial systems fold the scan in the reference order: identical bits (and a carry never crosses a row).
    const auto got = to_host(b, out.view());
    CHECK(same_bits(got, want));
    CHECK_THAT(got, close_to<T>(want));
  }
  // Hand-computed, two rows: a = 0.5, x = 1 -> 1.75, 1.5, 1; a = (0, 2, 2), x = (1, 1, 1) -> 1, 3, 1
  // (a = 0 cuts the carry: out(0) = x(0)).
  const std::vector<T> a{T(0.5), T(0.5), T(0.5), T(0), T(2), T(2)}, x(6, T(1));
  auto ba = to_backend(b, a, 2, 3), bx = to_backend(b, x, 2, 3);
  auto out = allocate<T>(b, 2, 3);
  b.reverse_linear_recurrence(out.view(), as_const(ba.view()), as_const(bx.view()));
  CHECK(to_host(b, out.view()) == std::vector<T>{T(1.75), T(1.5), T(1), T(1), T(3), T(1)});
  auto small = allocate<T>(b, 2, 2);
  CHECK_THROWS_WITH(b.reverse_linear_recurrence(small.view(), as_const(ba.view()), as_const(bx.view())),
                    Catch::Contains("rlhf::thrust_backend::reverse_linear_recurrence"));
}

TEMPLATE_TEST_CASE("affine composition is associative: any grouping of the scan matches the backward loop",
                   "[backends][thrust][scan]", float, double) {
  // A parallel system (CUDA) regroups the scan; this replays the regrouping on the host. Each row is combined
  // as a balanced tree (the shape of a parallel scan) and compared with the backward loop: equal up to
  // rounding, with a = 0 segments cutting the carry exactly.
  using T = TestType;
  using map = backends::detail::affine_map<T>;
  const backends::detail::affine_compose<T> compose;
  auto g = rng(105);
  const std::size_t n = 777;
  const auto a = recurrence_coefficients<T>(g, n);
  const auto x = normal<T>(g, n);
  // Scan order is backwards in time: element j of the scan is step n - 1 - j.
  std::vector<map> seq(n);
  for (std::size_t j = 0; j < n; ++j) seq[j] = {a[n - 1 - j], x[n - 1 - j]};
  const std::function<map(std::size_t, std::size_t)> tree = [&](std::size_t lo, std::size_t hi) -> map {
    if (hi - lo == 1) return seq[lo];
    const std::size_t mid = lo + (hi - lo) / 2;
    return compose(tree(lo, mid), tree(mid, hi));
  };
  for (std::size_t t = 0; t < n; t += 37) {
    // out(t) is the b part of the composition of scan elements 0 .. n - 1 - t.
    T carry = 0;
    for (std::size_t s = n; s-- > t;) carry = x[s] + a[s] * carry;
    const map m = tree(0, n - t);
    CHECK_THAT(std::vector<T>{m.b}, close_to<T>(std::vector<T>{carry}, 100 * tolerance<T>::rtol, 100 * tolerance<T>::atol));
  }
  // The operands are ordered: swapping them gives a different map.
  const map p{T(0.5), T(1)}, q{T(2), T(3)};
  CHECK(compose(p, q).b == T(3) + T(2) * T(1));
  CHECK(compose(q, p).b == T(1) + T(0.5) * T(3));
}

TEMPLATE_LIST_TEST_CASE("thrust gemm equals the reference bit for bit for every transposition and shape",
                        "[backends][thrust][gemm]", thrust_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(106);
  for (auto [m, k, n] : {std::tuple<std::size_t, std::size_t, std::size_t>{1, 1, 1}, {7, 5, 3}, {5, 0, 4}, {3, 9, 70},
                         {65, 33, 31}, {0, 3, 3}}) {
    for (auto ta : {transpose::no, transpose::yes}) {
      for (auto tb : {transpose::no, transpose::yes}) {
        const auto av = uniform<T>(g, m * k), bv = uniform<T>(g, k * n), c0 = uniform<T>(g, m * n);
        const std::size_t ar = ta == transpose::no ? m : k, ac = ta == transpose::no ? k : m;
        const std::size_t br = tb == transpose::no ? k : n, bc = tb == transpose::no ? n : k;
        auto da = to_backend(b, av, ar, ac), db = to_backend(b, bv, br, bc), dc = to_backend(b, c0, m, n);
        b.gemm(ta, tb, T(1.5), as_const(da.view()), as_const(db.view()), T(-0.5), dc.view());
        std::vector<T> want = c0;
        backends::detail::naive_gemm<T>(ta, tb, T(1.5), make_matrix_view(av.data(), ar, ac),
                                        make_matrix_view(bv.data(), br, bc), T(-0.5),
                                        make_matrix_view(want.data(), m, n));
        CHECK(same_bits(to_host(b, dc.view()), want));
      }
    }
  }
  // beta = 0 ignores NaN in C.
  auto da = allocate_filled<T>(b, 2, 3, T(1)), db = allocate_filled<T>(b, 3, 2, T(2));
  auto dc = allocate_filled<T>(b, 2, 2, std::numeric_limits<T>::quiet_NaN());
  b.gemm(transpose::no, transpose::no, T(1), as_const(da.view()), as_const(db.view()), T(0), dc.view());
  CHECK(to_host(b, dc.view()) == std::vector<T>(4, T(6)));
  CHECK_THROWS_WITH(b.gemm(transpose::no, transpose::no, T(1), as_const(da.view()), as_const(da.view()), T(0), dc.view()),
                    Catch::Contains("rlhf::thrust_backend::gemm") && Catch::Contains("'B'"));
}

TEMPLATE_LIST_TEST_CASE("thrust results are identical from run to run", "[backends][thrust][determinism]",
                        thrust_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(107);
  const std::size_t rows = 64, cols = 3000;
  const auto a = recurrence_coefficients<T>(g, rows * cols);
  const auto x = normal<T>(g, rows * cols);
  auto ba = to_backend(b, a, rows, cols), bx = to_backend(b, x, rows, cols);
  const auto run = [&] {
    auto out = allocate<T>(b, rows, cols);
    b.reverse_linear_recurrence(out.view(), as_const(ba.view()), as_const(bx.view()));
    auto sums = allocate<T>(b, rows);
    b.reduce_rows(sums.view().flat(), T(0), plus_op{}, [] RLHF_HOST_DEVICE(std::size_t, T v) { return v * v; },
                  as_const(out.view()));
    const T total = b.transform_reduce(T(0), plus_op{}, [] RLHF_HOST_DEVICE(T v) { return v; }, as_const(out.view()).flat());
    auto host = to_host(b, out.view());
    const auto s = to_host(b, sums.view());
    host.insert(host.end(), s.begin(), s.end());
    host.push_back(total);
    return host;
  };
  const auto first = run();
  for (int i = 0; i < 3; ++i) CHECK(same_bits(run(), first));
#if defined(_OPENMP)
  // The fold order does not depend on the thread count either.
  const int keep = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one = run();
  omp_set_num_threads(3);
  const auto three = run();
  omp_set_num_threads(keep);
  CHECK(same_bits(one, first));
  CHECK(same_bits(three, first));
#endif
}
#endif
