// The backend primitive contract (docs/backends.md), checked on every backend against plain loops.
#include "test_support.hpp"

#include <limits>
#include <numeric>

using namespace rlhf;
using namespace rlhf::test;

namespace {
struct plus_op {
  template <class T>
  RLHF_HOST_DEVICE T operator()(T a, T b) const { return a + b; }
};
struct mean_acc {
  double sum = 0;
  long count = 0;
};
struct mean_acc_op {
  RLHF_HOST_DEVICE mean_acc operator()(mean_acc a, mean_acc b) const { return {a.sum + b.sum, a.count + b.count}; }
};
}  // namespace

TEMPLATE_LIST_TEST_CASE("allocate, fill, copy round trip through the host", "[backends][memory]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto buf = allocate<T>(b, 3, 5);
  REQUIRE(buf.view().rows == 3);
  REQUIRE(buf.view().cols == 5);
  b.fill(buf.view().flat(), T(2.5));
  CHECK(to_host(b, buf.view()) == std::vector<T>(15, T(2.5)));

  std::vector<T> host(15);
  std::iota(host.begin(), host.end(), T(1));
  auto up = to_backend(b, host, 3, 5);
  auto other = allocate<T>(b, 3, 5);
  b.copy(up.view().flat(), other.view().flat());
  CHECK(to_host(b, other.view()) == host);
  CHECK(to_host(b, up.view().row(1)) == std::vector<T>(host.begin() + 5, host.begin() + 10));

  auto empty = allocate<T>(b, 0, 7);
  CHECK(to_host(b, empty.view()).empty());
}

TEMPLATE_LIST_TEST_CASE("transform applies an n-ary map element-wise", "[backends][transform]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(1);
  for (std::size_t n : {0u, 1u, 7u, 4096u, 100003u}) {
    const auto x = uniform<T>(g, n), y = uniform<T>(g, n);
    const auto m = random_mask(g, n);
    auto bx = to_backend(b, x), by = to_backend(b, y);
    auto bm = to_backend(b, m);
    auto out = allocate<T>(b, n);
    b.transform(out.view().flat(), [] RLHF_HOST_DEVICE(T a) { return a * a; }, bx.view().flat());
    std::vector<T> want(n);
    for (std::size_t i = 0; i < n; ++i) want[i] = x[i] * x[i];
    CHECK(to_host(b, out.view()) == want);
    b.transform(
        out.view().flat(), [] RLHF_HOST_DEVICE(T a, T c, mask_type k) { return k ? a - c : T(0); }, bx.view().flat(),
        by.view().flat(), bm.view().flat());
    for (std::size_t i = 0; i < n; ++i) want[i] = m[i] ? x[i] - y[i] : T(0);
    CHECK(to_host(b, out.view()) == want);
  }
}

TEMPLATE_LIST_TEST_CASE("for_each_index visits every index once", "[backends][for_each_index]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const std::size_t n = 50001;
  auto out = allocate_filled<T>(b, 1, n, T(0));
  const auto v = out.view().flat();
  b.for_each_index(n, [v] RLHF_HOST_DEVICE(std::size_t i) { v[i] += T(i % 17) + T(1); });
  const auto got = to_host(b, out.view());
  for (std::size_t i = 0; i < n; ++i) REQUIRE(got[i] == T(i % 17) + T(1));
}

TEMPLATE_LIST_TEST_CASE("for_each_weighted_index visits every index once, whatever the work hint",
                        "[backends][for_each_index]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const std::size_t huge = std::numeric_limits<std::size_t>::max();
  for (std::size_t n : {0u, 1u, 3u, 5003u}) {
    for (std::size_t work : {std::size_t(0), std::size_t(1), std::size_t(1) << 20, huge}) {
      auto out = allocate_filled<T>(b, 1, n, T(0));
      const auto v = out.view().flat();
      for_each_weighted_index(b, n, work, [v] RLHF_HOST_DEVICE(std::size_t i) { v[i] += T(i % 17) + T(1); });
      const auto got = to_host(b, out.view());
      for (std::size_t i = 0; i < n; ++i) REQUIRE(got[i] == T(i % 17) + T(1));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("transform_reduce folds with init applied once, any accumulator type", "[backends][reduce]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(2);
  for (std::size_t n : {0u, 1u, 4095u, 4096u, 4097u, 70000u}) {
    const auto x = uniform<T>(g, n);
    const auto m = random_mask(g, n);
    auto bx = to_backend(b, x);
    auto bm = to_backend(b, m);
    const double sum = b.transform_reduce(
        0.5, plus_op{}, [] RLHF_HOST_DEVICE(T a) { return static_cast<double>(a); }, bx.view().flat());
    double want = 0.5;
    for (auto v : x) want += v;
    CHECK(near<double>(sum, want, 1e4));
    const mean_acc acc = b.transform_reduce(
        mean_acc{}, mean_acc_op{},
        [] RLHF_HOST_DEVICE(T a, mask_type k) { return k ? mean_acc{static_cast<double>(a), 1} : mean_acc{}; },
        bx.view().flat(), bm.view().flat());
    long count = 0;
    double msum = 0;
    for (std::size_t i = 0; i < n; ++i)
      if (m[i]) ++count, msum += x[i];
    CHECK(acc.count == count);
    CHECK(near<double>(acc.sum, msum, 1e4));
  }
}

TEMPLATE_LIST_TEST_CASE("reduce_rows passes the column index and folds each row", "[backends][reduce]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(3);
  const std::size_t rows = 37, cols = 129;
  const auto x = uniform<T>(g, rows * cols);
  const auto lengths = random_lengths(g, rows, cols);
  const auto m = mask_from_lengths(lengths, cols);
  auto bx = to_backend(b, x, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  auto sums = allocate<T>(b, rows);
  b.reduce_rows(
      sums.view().flat(), T(0), plus_op{}, [] RLHF_HOST_DEVICE(std::size_t, T a, mask_type k) { return k ? a : T(0); },
      bx.view(), bm.view());
  auto last = allocate<long>(b, rows);
  b.reduce_rows(
      last.view().flat(), -1L, [] RLHF_HOST_DEVICE(long a, long c) { return a > c ? a : c; },
      [] RLHF_HOST_DEVICE(std::size_t c, mask_type k) { return k ? static_cast<long>(c) : -1L; }, bm.view());
  const auto got_sums = to_host(b, sums.view());
  const auto got_last = to_host(b, last.view());
  for (std::size_t r = 0; r < rows; ++r) {
    T want = 0;
    for (std::size_t c = 0; c < lengths[r]; ++c) want += x[r * cols + c];
    CHECK(got_sums[r] == want);  // same left-to-right order on every backend
    CHECK(got_last[r] == static_cast<long>(lengths[r]) - 1);
  }
}

TEMPLATE_LIST_TEST_CASE("reverse_linear_recurrence matches the backward loop", "[backends][scan]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(4);
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {3, 8}, {64, 512}, {5, 0}}) {
    const auto a = uniform<T>(g, rows * cols, 0.0, 1.0), x = uniform<T>(g, rows * cols);
    auto ba = to_backend(b, a, rows, cols), bx = to_backend(b, x, rows, cols);
    auto out = allocate<T>(b, rows, cols);
    b.reverse_linear_recurrence(out.view(), ba.view(), bx.view());
    std::vector<T> want(rows * cols);
    for (std::size_t r = 0; r < rows; ++r) {
      T carry = 0;
      for (std::size_t t = cols; t-- > 0;) want[r * cols + t] = carry = x[r * cols + t] + a[r * cols + t] * carry;
    }
    CHECK(to_host(b, out.view()) == want);
  }
  // Hand-computed: a = 0.5, x = 1 over 3 steps -> 1.75, 1.5, 1.
  auto ba = allocate_filled<T>(b, 1, 3, T(0.5)), bx = allocate_filled<T>(b, 1, 3, T(1));
  auto out = allocate<T>(b, 1, 3);
  b.reverse_linear_recurrence(out.view(), ba.view(), bx.view());
  CHECK(to_host(b, out.view()) == std::vector<T>{T(1.75), T(1.5), T(1)});
}

TEMPLATE_LIST_TEST_CASE("gemm computes alpha op(A) op(B) + beta C for every transposition", "[backends][gemm]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(5);
  const std::size_t m = 7, k = 5, n = 3;
  for (auto ta : {transpose::no, transpose::yes}) {
    for (auto tb : {transpose::no, transpose::yes}) {
      const auto a = uniform<T>(g, m * k), bm = uniform<T>(g, k * n), c0 = uniform<T>(g, m * n);
      auto da = ta == transpose::no ? to_backend(b, a, m, k) : to_backend(b, a, k, m);
      auto db = tb == transpose::no ? to_backend(b, bm, k, n) : to_backend(b, bm, n, k);
      auto dc = to_backend(b, c0, m, n);
      b.gemm(ta, tb, T(2), da.view(), db.view(), T(0.5), dc.view());
      std::vector<T> want(m * n);
      for (std::size_t i = 0; i < m; ++i)
        for (std::size_t j = 0; j < n; ++j) {
          double acc = 0;
          for (std::size_t p = 0; p < k; ++p) {
            const double av = ta == transpose::no ? a[i * k + p] : a[p * m + i];
            const double bv = tb == transpose::no ? bm[p * n + j] : bm[j * k + p];
            acc += av * bv;
          }
          want[i * n + j] = static_cast<T>(2 * acc + 0.5 * c0[i * n + j]);
        }
      CHECK_THAT(to_host(b, dc.view()), close_to<T>(want, 10 * tolerance<T>::rtol, 10 * tolerance<T>::atol));
    }
  }
  // beta = 0 ignores whatever C held, NaN included.
  auto da = allocate_filled<T>(b, 2, 2, T(1)), db = allocate_filled<T>(b, 2, 2, T(1));
  auto dc = allocate_filled<T>(b, 2, 2, std::numeric_limits<T>::quiet_NaN());
  b.gemm(transpose::no, transpose::no, T(1), da.view(), db.view(), T(0), dc.view());
  CHECK(to_host(b, dc.view()) == std::vector<T>(4, T(2)));
}

TEMPLATE_LIST_TEST_CASE("primitives reject mismatched sizes with a named error", "[backends][errors]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto x = allocate<T>(b, 4), y = allocate<T>(b, 5);
  CHECK_THROWS_AS(b.transform(x.view().flat(), [] RLHF_HOST_DEVICE(T v) { return v; }, y.view().flat()),
                  rlhf::invalid_argument);
  CHECK_THROWS_WITH(b.copy(x.view().flat(), y.view().flat()), Catch::Contains("copy"));
  auto c = allocate<T>(b, 3, 3), a = allocate<T>(b, 3, 2);
  CHECK_THROWS_WITH(b.gemm(transpose::no, transpose::no, T(1), a.view(), a.view(), T(0), c.view()),
                    Catch::Contains("gemm") && Catch::Contains("'B'"));
}
