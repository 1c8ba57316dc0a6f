// xtensor backend specifics: buffers are xtensor containers, views adapt without copying, every primitive
// held to the reference backend (bit for bit where the order is the reference's), functors see scalars only.
#include "test_support.hpp"

#if RLHF_TEST_HAS_XTENSOR
#include <cstring>
#include <limits>
#include <numeric>

#include <xtensor/xview.hpp>

#include "rlhf/backends/xtensor.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {

using xtensor_configs = std::tuple<config<xtensor_backend, double>, config<xtensor_backend, float>>;

struct plus_op {
  template <class T>
  T operator()(T a, T b) const { return a + b; }
};

// A functor written for scalars only: on an xsimd batch `x < 0` is a batch mask and the ternary does not
// compile. The backend must never hand it a batch.
struct scalar_only_relu {
  template <class V>
  auto operator()(V x) const {
    return x < V(0) ? V(0) : x;
  }
};

template <class T>
bool same_bits(const std::vector<T>& x, const std::vector<T>& y) {
  return x.size() == y.size() && (x.empty() || std::memcmp(x.data(), y.data(), x.size() * sizeof(T)) == 0);
}

}  // namespace

TEST_CASE("xtensor backend satisfies every concept; its buffers are xtensor containers", "[backends][xtensor]") {
  STATIC_REQUIRE(complete_backend<xtensor_backend>);
  STATIC_REQUIRE(complete_backend<generic_only<xtensor_backend>>);
  STATIC_REQUIRE(std::is_same_v<xtensor_backend::memory_space, host_space>);
  STATIC_REQUIRE(std::is_same_v<xtensor_backend::buffer<float>, xtensor_buffer<float>>);
  STATIC_REQUIRE(std::is_same_v<xtensor_buffer<float>::tensor_type, xt::xtensor<float, 2>>);
  STATIC_REQUIRE(!std::is_copy_constructible_v<xtensor_buffer<float>>);
  STATIC_REQUIRE(std::is_nothrow_move_constructible_v<xtensor_buffer<float>>);
}

TEMPLATE_LIST_TEST_CASE("xtensor buffers: the view is the tensor's memory, both ways; moves keep it",
                        "[backends][xtensor][memory]", xtensor_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto buf = allocate<T>(b, 2, 3);
  REQUIRE(buf.tensor().shape()[0] == 2);
  REQUIRE(buf.tensor().shape()[1] == 3);
  b.fill(buf.view().flat(), T(1));
  // An xtensor expression on the owned tensor is seen through the library view...
  buf.tensor() = buf.tensor() * T(2) + xt::xtensor<T, 2>{{0, 1, 2}, {3, 4, 5}};
  CHECK(to_host(b, buf.view()) == std::vector<T>{2, 3, 4, 5, 6, 7});
  // ...and writes through an adaptor of a library view land in the buffer, with no copy.
  auto adapted = xtensor_adapt(buf.view());
  CHECK(adapted.data() == buf.data());
  xt::row(adapted, 1) = xt::xtensor<T, 1>{T(-1), T(-2), T(-3)};
  CHECK(to_host(b, buf.view()) == std::vector<T>{2, 3, 4, -1, -2, -3});
  CHECK(xtensor_adapt(buf.view().flat()).size() == 6);
  const T* p = buf.data();
  auto moved = std::move(buf);
  CHECK(moved.data() == p);
  CHECK(moved.rows() == 2);
  CHECK(moved.cols() == 3);
  auto empty = allocate<T>(b, 0, 5);
  CHECK(empty.view().rows == 0);
  CHECK(empty.view().cols == 5);
  CHECK(empty.size() == 0);
  const xtensor_buffer<T> defaulted;
  CHECK(defaulted.size() == 0);
}

TEMPLATE_LIST_TEST_CASE("xtensor copy and fill: host round trip, aliasing, overlap, empty", "[backends][xtensor][memory]",
                        xtensor_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  std::vector<T> host(10);
  std::iota(host.begin(), host.end(), T(1));
  auto buf = to_backend(b, host, 2, 5);
  CHECK(to_host(b, buf.view()) == host);
  const auto v = buf.view().flat();
  b.copy(v.subview(0, 9), v.subview(1, 9));  // overlapping: memmove semantics
  CHECK(to_host(b, buf.view()) == std::vector<T>{1, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  b.copy(v.subview(1, 9), v.subview(0, 9));
  CHECK(to_host(b, buf.view()) == std::vector<T>{1, 2, 3, 4, 5, 6, 7, 8, 9, 9});
  b.copy(v, v);  // aliasing: a no-op
  b.copy(vector_view<const T>{host.data(), 0}, v.subview(3, 0));
  b.fill(v.subview(2, 3), 0.25);
  CHECK(to_host(b, buf.view()) == std::vector<T>{1, 2, T(0.25), T(0.25), T(0.25), 6, 7, 8, 9, 9});
  b.fill(v.subview(0, 0), 1);
  auto ints = allocate_filled<mask_type>(b, 1, 37, mask_type(3));
  CHECK(to_host(b, ints.view()) == std::vector<mask_type>(37, 3));
  CHECK_THROWS_WITH(b.copy(v.subview(0, 3), v.subview(0, 4)),
                    Catch::Contains("rlhf::xtensor_backend::copy") && Catch::Contains("in..."));
}

TEMPLATE_LIST_TEST_CASE("xtensor transform: reference bits, mixed types, aliasing, scalar-only functors",
                        "[backends][xtensor][transform]", xtensor_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const reference_backend ref;
  auto g = rng(201);
  for (std::size_t n : {0u, 1u, 3u, 17u, 4099u}) {
    const auto x = uniform<T>(g, n), y = uniform<T>(g, n), z = uniform<T>(g, n);
    const auto m = random_mask(g, n);
    auto bx = to_backend(b, x), by = to_backend(b, y), bz = to_backend(b, z);
    auto bm = to_backend(b, m);
    auto out = allocate<T>(b, n);
    std::vector<T> want(n);
    const auto f3 = [](T p, T q, mask_type k) { return k ? p * q - T(0.5) : p; };
    b.transform(out.view().flat(), f3, as_const(bx.view().flat()), as_const(by.view().flat()), as_const(bm.view().flat()));
    ref.transform(make_vector_view(want.data(), n), f3, make_vector_view(x.data(), n), make_vector_view(y.data(), n),
                  make_vector_view(m.data(), n));
    CHECK(same_bits(to_host(b, out.view()), want));
    // A generic functor that only compiles on scalars.
    b.transform(out.view().flat(), scalar_only_relu{}, as_const(bz.view().flat()));
    for (std::size_t i = 0; i < n; ++i) want[i] = z[i] < T(0) ? T(0) : z[i];
    CHECK(same_bits(to_host(b, out.view()), want));
    // Output aliasing an input at the same index.
    b.transform(bx.view().flat(), [](T p) { return p + T(1); }, as_const(bx.view().flat()));
    for (std::size_t i = 0; i < n; ++i) want[i] = x[i] + T(1);
    CHECK(same_bits(to_host(b, bx.view()), want));
    // Mixed output type.
    auto flags = allocate<mask_type>(b, n);
    b.transform(flags.view().flat(), [](T p) { return static_cast<mask_type>(p > T(1)); }, as_const(bx.view().flat()));
    const auto got = to_host(b, flags.view());
    for (std::size_t i = 0; i < n; ++i) REQUIRE(got[i] == (x[i] + T(1) > T(1) ? 1 : 0));
  }
  auto x4 = allocate<T>(b, 4), x5 = allocate<T>(b, 5);
  CHECK_THROWS_WITH(b.transform(x4.view().flat(), [](T v) { return v; }, as_const(x5.view().flat())),
                    Catch::Contains("rlhf::xtensor_backend::transform"));
}

TEMPLATE_LIST_TEST_CASE("xtensor reductions and the recurrence equal the reference bit for bit",
                        "[backends][xtensor][reduce][scan]", xtensor_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const reference_backend ref;
  auto g = rng(202);
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{0, 5}, {4, 0}, {1, 1}, {37, 129}, {300, 17}}) {
    const auto x = normal<T>(g, rows * cols);
    const auto a = uniform<T>(g, rows * cols, 0.0, 1.0);
    const auto m = mask_from_lengths(random_lengths(g, rows, cols), cols);
    auto bx = to_backend(b, x, rows, cols), ba = to_backend(b, a, rows, cols);
    auto bm = to_backend(b, m, rows, cols);
    // transform_reduce of two inputs, from a non-zero init.
    const auto masked = [](T v, mask_type k) { return k ? static_cast<double>(v) : 0.0; };
    CHECK(b.transform_reduce(0.25, plus_op{}, masked, as_const(bx.view().flat()), as_const(bm.view().flat())) ==
          ref.transform_reduce(0.25, plus_op{}, masked, make_vector_view(x.data(), x.size()),
                               make_vector_view(m.data(), m.size())));
    // reduce_rows with the column index.
    auto got = allocate<T>(b, rows);
    std::vector<T> want(rows);
    const auto f = [](std::size_t c, T v, mask_type k) { return k ? v * T(c % 3 + 1) : T(0); };
    b.reduce_rows(got.view().flat(), T(0.125), plus_op{}, f, as_const(bx.view()), as_const(bm.view()));
    ref.reduce_rows(make_vector_view(want.data(), rows), T(0.125), plus_op{}, f, make_matrix_view(x.data(), rows, cols),
                    make_matrix_view(m.data(), rows, cols));
    CHECK(same_bits(to_host(b, got.view()), want));
    // The reverse linear recurrence.
    auto out = allocate<T>(b, rows, cols);
    b.reverse_linear_recurrence(out.view(), as_const(ba.view()), as_const(bx.view()));
    std::vector<T> carry(rows * cols);
    ref.reverse_linear_recurrence(make_matrix_view(carry.data(), rows, cols), make_matrix_view(a.data(), rows, cols),
                                  make_matrix_view(x.data(), rows, cols));
    CHECK(same_bits(to_host(b, out.view()), carry));
  }
  // A struct accumulator (not an xtensor element type) folds through the plain loop in the same order.
  struct count_sum {
    std::size_t n = 0;
    double sum = 0;
  };
  const std::vector<T> small{T(1), T(-2), T(3)};
  auto bs = to_backend(b, small);
  const count_sum cs = b.transform_reduce(
      count_sum{}, [](count_sum p, count_sum q) { return count_sum{p.n + q.n, p.sum + q.sum}; },
      [](T v) { return count_sum{v > T(0) ? std::size_t(1) : std::size_t(0), static_cast<double>(v)}; },
      as_const(bs.view().flat()));
  CHECK(cs.n == 2);
  CHECK(cs.sum == 2.0);
  // Hand-computed recurrence: a = 0.5, x = 1 -> 1.75, 1.5, 1.
  auto ha = allocate_filled<T>(b, 1, 3, T(0.5)), hx = allocate_filled<T>(b, 1, 3, T(1)), ho = allocate<T>(b, 1, 3);
  b.reverse_linear_recurrence(ho.view(), as_const(ha.view()), as_const(hx.view()));
  CHECK(to_host(b, ho.view()) == std::vector<T>{T(1.75), T(1.5), T(1)});
  CHECK(b.transform_reduce(T(3), plus_op{}, [](T v) { return v; }, as_const(ho.view().flat().subview(0, 0))) == T(3));
  auto out = allocate<T>(b, 3);
  auto in = allocate<T>(b, 4, 2);
  CHECK_THROWS_WITH(b.reduce_rows(out.view().flat(), T(0), plus_op{}, [](std::size_t, T v) { return v; }, as_const(in.view())),
                    Catch::Contains("rlhf::xtensor_backend::reduce_rows"));
  CHECK_THROWS_WITH(b.reverse_linear_recurrence(in.view(), as_const(ha.view()), as_const(hx.view())),
                    Catch::Contains("rlhf::xtensor_backend::reverse_linear_recurrence"));
}

TEMPLATE_LIST_TEST_CASE("xtensor gemm matches the reference for every transposition, shape and tail",
                        "[backends][xtensor][gemm]", xtensor_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(203);
  // n covers the xsimd batch width and the scalar tail (1, 3, 31, 70 columns); k = 0 leaves beta C.
  for (auto [m, k, n] : {std::tuple<std::size_t, std::size_t, std::size_t>{1, 1, 1}, {7, 5, 3}, {5, 0, 4}, {3, 9, 70},
                         {65, 33, 31}, {0, 3, 3}, {4, 4, 0}}) {
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
        // Rounding differs from the reference's (alpha applied per term, fused multiply-adds): a k-term
        // sum of products in [-1, 1] is within a few k ulps.
        const double eps = static_cast<double>(std::numeric_limits<T>::epsilon());
        CHECK_THAT(to_host(b, dc.view()), close_to<T>(want, 0.0, 8.0 * static_cast<double>(k + 1) * eps));
      }
    }
  }
  // Hand-computed: [[1, 2], [3, 4]] x [[5], [6]] = [[17], [39]]; alpha = 2, beta = 1 over C = [1, 1].
  auto a = to_backend(b, std::vector<T>{1, 2, 3, 4}, 2, 2), bb = to_backend(b, std::vector<T>{5, 6}, 2, 1);
  auto c = allocate_filled<T>(b, 2, 1, T(1));
  b.gemm(transpose::no, transpose::no, T(2), as_const(a.view()), as_const(bb.view()), T(1), c.view());
  CHECK(to_host(b, c.view()) == std::vector<T>{35, 79});
  // beta = 0 ignores NaN in C; alpha = 0 leaves beta C.
  auto da = allocate_filled<T>(b, 2, 3, T(1)), db = allocate_filled<T>(b, 3, 2, T(2));
  auto dc = allocate_filled<T>(b, 2, 2, std::numeric_limits<T>::quiet_NaN());
  b.gemm(transpose::no, transpose::no, T(1), as_const(da.view()), as_const(db.view()), T(0), dc.view());
  CHECK(to_host(b, dc.view()) == std::vector<T>(4, T(6)));
  b.gemm(transpose::no, transpose::no, T(0), as_const(da.view()), as_const(db.view()), T(0.5), dc.view());
  CHECK(to_host(b, dc.view()) == std::vector<T>(4, T(3)));
  CHECK_THROWS_WITH(b.gemm(transpose::no, transpose::no, T(1), as_const(da.view()), as_const(da.view()), T(0), dc.view()),
                    Catch::Contains("rlhf::xtensor_backend::gemm") && Catch::Contains("'B'"));
}
#endif
