// rlhf::gae and rlhf::discounted_returns (Schulman et al. 2016, eq. 16, masked steps skipped), on every
// backend and on the generic path, against naive host loops written here from the formula.
#include "test_support.hpp"

#include <limits>
#include <utility>

#include "rlhf/advantages/gae.hpp"
#if RLHF_TEST_HAS_EIGEN
#include "rlhf/backends/eigen/gae.hpp"
#endif

using namespace rlhf;
using namespace rlhf::test;

namespace {

// Float results are compared with a double oracle over sequences of up to a few hundred steps.
template <class T>
double rtol() {
  return std::is_same_v<T, float> ? 2e-4 : 1e-10;
}
template <class T>
double atol() {
  return std::is_same_v<T, float> ? 2e-4 : 1e-10;
}

struct gae_out {
  std::vector<double> adv, ret;
};

// Oracle 1: verl's loop (`compute_gae_advantage_return`), written with the multiplications by the mask that
// carry the next value and the running advantage through masked steps; outputs masked afterwards.
gae_out verl_loop_oracle(const std::vector<double>& r, const std::vector<double>& v, const std::vector<mask_type>& m,
                         std::size_t rows, std::size_t cols, double gamma, double lambda) {
  gae_out o{std::vector<double>(rows * cols, 0.0), std::vector<double>(rows * cols, 0.0)};
  for (std::size_t b = 0; b < rows; ++b) {
    double nextvalues = 0, lastgaelam = 0;
    for (std::size_t t = cols; t-- > 0;) {
      const std::size_t i = b * cols + t;
      const double mt = m[i] ? 1.0 : 0.0;
      const double rt = m[i] ? r[i] : 0.0, vt = m[i] ? v[i] : 0.0;  // garbage never read
      const double delta = rt + gamma * nextvalues - vt;
      const double lastgaelam_new = delta + gamma * lambda * lastgaelam;
      nextvalues = vt * mt + (1 - mt) * nextvalues;
      lastgaelam = lastgaelam_new * mt + (1 - mt) * lastgaelam;
      o.adv[i] = mt * lastgaelam;
      o.ret[i] = mt * (lastgaelam + vt);
    }
  }
  return o;
}

// Oracle 2: squeeze each row to its valid steps, run the textbook recursion (V_T = 0) on the squeezed
// sequence, scatter back.
gae_out squeeze_oracle(const std::vector<double>& r, const std::vector<double>& v, const std::vector<mask_type>& m,
                       std::size_t rows, std::size_t cols, double gamma, double lambda) {
  gae_out o{std::vector<double>(rows * cols, 0.0), std::vector<double>(rows * cols, 0.0)};
  for (std::size_t b = 0; b < rows; ++b) {
    std::vector<std::size_t> idx;
    for (std::size_t t = 0; t < cols; ++t)
      if (m[b * cols + t]) idx.push_back(b * cols + t);
    const std::size_t n = idx.size();
    std::vector<double> a(n + 1, 0.0);
    for (std::size_t k = n; k-- > 0;) {
      const double next_v = k + 1 < n ? v[idx[k + 1]] : 0.0;
      const double delta = r[idx[k]] + gamma * next_v - v[idx[k]];
      a[k] = delta + gamma * lambda * a[k + 1];
      o.adv[idx[k]] = a[k];
      o.ret[idx[k]] = a[k] + v[idx[k]];
    }
  }
  return o;
}

template <class TestType>
std::pair<std::vector<typename TestType::value>, std::vector<typename TestType::value>> run_gae(
    const typename TestType::backend& b, const std::vector<typename TestType::value>& r,
    const std::vector<typename TestType::value>& v, const std::vector<mask_type>& m, std::size_t rows, std::size_t cols,
    const gae_options& opt) {
  using T = typename TestType::value;
  auto br = to_backend(b, r, rows, cols), bv = to_backend(b, v, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  auto adv = allocate_filled<T>(b, rows, cols, T(-7)), ret = allocate_filled<T>(b, rows, cols, T(-7));
  gae(b, br.view(), bv.view(), bm.view(), adv.view(), ret.view(), opt);
  return {to_host(b, adv.view()), to_host(b, ret.view())};
}

template <class T>
std::vector<double> as_double(const std::vector<T>& x) {
  return std::vector<double>(x.begin(), x.end());
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("gae: hand-computed three-step case", "[advantages][gae]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // gamma = 1, lambda = 0.5; r = [0, 0, 1], V = [0.5, 0.2, 0.4]:
  //   delta_2 = 1 + 0   - 0.4 =  0.6   A_2 = 0.6
  //   delta_1 = 0 + 0.4 - 0.2 =  0.2   A_1 = 0.2 + 0.5 * 0.6 = 0.5
  //   delta_0 = 0 + 0.2 - 0.5 = -0.3   A_0 = -0.3 + 0.5 * 0.5 = -0.05
  //   R = A + V = [0.45, 0.7, 1.0]
  // Row 1 is the same episode padded to 4 columns with garbage in the pad (value 100, reward 5).
  // Row 2 has an interior hole at t = 1 (garbage 100 / -3 there): the same episode as row 0 with the hole skipped.
  const std::vector<T> r{0, 0, 1, 0, /**/ 0, 0, 1, 5, /**/ 0, -3, 0, 1};
  const std::vector<T> v{T(0.5), T(0.2), T(0.4), 0, /**/ T(0.5), T(0.2), T(0.4), 100, /**/ T(0.5), 100, T(0.2), T(0.4)};
  const std::vector<mask_type> m{1, 1, 1, 0, /**/ 1, 1, 1, 0, /**/ 1, 0, 1, 1};
  const auto [adv, ret] = run_gae<TestType>(b, r, v, m, 3, 4, gae_options{1.0, 0.5});
  const std::vector<double> want_adv{-0.05, 0.5, 0.6, 0, /**/ -0.05, 0.5, 0.6, 0, /**/ -0.05, 0, 0.5, 0.6};
  const std::vector<double> want_ret{0.45, 0.7, 1.0, 0, /**/ 0.45, 0.7, 1.0, 0, /**/ 0.45, 0, 0.7, 1.0};
  CHECK_THAT(adv, close_to<T>(want_adv, 10 * tolerance<T>::rtol, 10 * tolerance<T>::atol));
  CHECK_THAT(ret, close_to<T>(want_ret, 10 * tolerance<T>::rtol, 10 * tolerance<T>::atol));

  // gamma = 0.5, lambda = 1 on row 0: delta = [-0.4, 0.0, 0.6], A_2 = 0.6, A_1 = 0 + 0.5 * 0.6 = 0.3,
  // A_0 = -0.4 + 0.5 * 0.3 = -0.25 (= discounted return 0.25 minus V_0 = 0.5).
  const auto [adv2, ret2] = run_gae<TestType>(b, r, v, m, 3, 4, gae_options{0.5, 1.0});
  CHECK_THAT(std::vector<T>(adv2.begin(), adv2.begin() + 4),
             close_to<T>(std::vector<double>{-0.25, 0.3, 0.6, 0}, 10 * tolerance<T>::rtol, 10 * tolerance<T>::atol));
  CHECK_THAT(std::vector<T>(ret2.begin(), ret2.begin() + 4),
             close_to<T>(std::vector<double>{0.25, 0.5, 1.0, 0}, 10 * tolerance<T>::rtol, 10 * tolerance<T>::atol));
}

TEMPLATE_LIST_TEST_CASE("gae: closed forms for lambda = 1 (Monte-Carlo) and lambda = 0 (TD error)",
                        "[advantages][gae]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(11);
  const std::size_t rows = 9, cols = 23;
  const auto r = uniform<T>(g, rows * cols), v = uniform<T>(g, rows * cols);
  const auto lengths = random_lengths(g, rows, cols);
  const auto m = mask_from_lengths(lengths, cols);
  for (double gamma : {1.0, 0.9}) {
    // lambda = 1: A_t = sum_{k >= t} gamma^(k - t) r_k - V_t over the valid prefix.
    const auto [adv1, ret1] = run_gae<TestType>(b, r, v, m, rows, cols, gae_options{gamma, 1.0});
    std::vector<double> want_adv(rows * cols, 0.0), want_ret(rows * cols, 0.0);
    for (std::size_t row = 0; row < rows; ++row)
      for (std::size_t t = 0; t < lengths[row]; ++t) {
        double mc = 0, disc = 1;
        for (std::size_t k = t; k < lengths[row]; ++k, disc *= gamma) mc += disc * r[row * cols + k];
        want_adv[row * cols + t] = mc - v[row * cols + t];
        want_ret[row * cols + t] = mc;
      }
    CHECK_THAT(adv1, close_to<T>(want_adv, rtol<T>(), atol<T>()));
    CHECK_THAT(ret1, close_to<T>(want_ret, rtol<T>(), atol<T>()));
    // lambda = 0: A_t = delta_t = r_t + gamma V_{t+1} - V_t (V past the end = 0).
    const auto [adv0, ret0] = run_gae<TestType>(b, r, v, m, rows, cols, gae_options{gamma, 0.0});
    for (std::size_t row = 0; row < rows; ++row)
      for (std::size_t t = 0; t < lengths[row]; ++t) {
        const std::size_t i = row * cols + t;
        const double next = t + 1 < lengths[row] ? v[i + 1] : 0.0;
        want_adv[i] = r[i] + gamma * next - v[i];
        want_ret[i] = want_adv[i] + v[i];
      }
    CHECK_THAT(adv0, close_to<T>(want_adv, rtol<T>(), atol<T>()));
    CHECK_THAT(ret0, close_to<T>(want_ret, rtol<T>(), atol<T>()));
  }
}

TEMPLATE_LIST_TEST_CASE("gae: ragged and interior (multi-turn) masks match the verl loop and the squeezed recursion",
                        "[advantages][gae][property]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(12);
  // The last size exceeds the Eigen backend's parallel threshold (2^15 elements).
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{1, 1}, {7, 13}, {16, 64}, {70, 500}}) {
    for (int trial = 0; trial < 2; ++trial) {
      const auto r = normal<T>(g, rows * cols), v = normal<T>(g, rows * cols);
      std::vector<mask_type> m;
      if (trial == 0) {
        m = mask_from_lengths(random_lengths(g, rows, cols), cols);
      } else {
        m = random_mask(g, rows * cols, 0.6);  // interior holes anywhere, some rows possibly empty
      }
      std::uniform_real_distribution<double> ud(0.0, 1.0);
      const double gamma = trial == 0 ? 1.0 : 0.5 + 0.5 * ud(g), lambda = ud(g);
      const auto [adv, ret] = run_gae<TestType>(b, r, v, m, rows, cols, gae_options{gamma, lambda});
      const auto o1 = verl_loop_oracle(as_double(r), as_double(v), m, rows, cols, gamma, lambda);
      const auto o2 = squeeze_oracle(as_double(r), as_double(v), m, rows, cols, gamma, lambda);
      CHECK_THAT(o1.adv, close_to<double>(o2.adv, 1e-12, 1e-12));  // the two oracles agree
      CHECK_THAT(adv, close_to<T>(o1.adv, rtol<T>(), atol<T>()));
      CHECK_THAT(ret, close_to<T>(o1.ret, rtol<T>(), atol<T>()));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("gae: an interior hole is invisible (the episode with the hole removed gives the same numbers)",
                        "[advantages][gae]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // Row 0: 5 steps. Row 1: the same 5 steps with two tool-output tokens (masked) inserted after step 1.
  const std::vector<T> r0{T(0.1), T(-0.2), T(0.3), 0, 1};
  const std::vector<T> v0{T(0.4), T(0.1), T(-0.3), T(0.2), T(0.6)};
  std::vector<T> r{r0[0], r0[1], r0[2], r0[3], r0[4], 0, 0, /**/ r0[0], r0[1], 9, 9, r0[2], r0[3], r0[4]};
  std::vector<T> v{v0[0], v0[1], v0[2], v0[3], v0[4], 0, 0, /**/ v0[0], v0[1], 9, 9, v0[2], v0[3], v0[4]};
  const std::vector<mask_type> m{1, 1, 1, 1, 1, 0, 0, /**/ 1, 1, 0, 0, 1, 1, 1};
  const auto [adv, ret] = run_gae<TestType>(b, r, v, m, 2, 7, gae_options{0.97, 0.9});
  for (std::size_t k = 0; k < 5; ++k) {
    CHECK(adv[7 + k + (k >= 2 ? 2 : 0)] == Approx(adv[k]).epsilon(1e-6));
    CHECK(ret[7 + k + (k >= 2 ? 2 : 0)] == Approx(ret[k]).epsilon(1e-6));
  }
  CHECK(adv[7 + 2] == T(0));
  CHECK(adv[7 + 3] == T(0));
  CHECK(ret[7 + 3] == T(0));
}

TEMPLATE_LIST_TEST_CASE("regression: verl #50: values past EOS must not leak into earlier advantages "
                        "(https://github.com/verl-project/verl/pull/50)",
                        "[advantages][gae][regression]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(13);
  const std::size_t rows = 6, cols = 17;
  const auto lengths = random_lengths(g, rows, cols, 1);
  const auto m = mask_from_lengths(lengths, cols);
  auto r = uniform<T>(g, rows * cols), v = uniform<T>(g, rows * cols);
  for (std::size_t i = 0; i < rows * cols; ++i)
    if (!m[i]) r[i] = v[i] = 0;
  const auto clean = run_gae<TestType>(b, r, v, m, rows, cols, gae_options{});
  auto rg = r, vg = v;
  for (std::size_t i = 0; i < rows * cols; ++i)
    if (!m[i]) rg[i] = T(3), vg[i] = T(100);
  const auto dirty = run_gae<TestType>(b, rg, vg, m, rows, cols, gae_options{});
  CHECK(dirty.first == clean.first);  // bit-identical: the garbage is never read
  CHECK(dirty.second == clean.second);
  CHECK_THAT(clean.first, close_to<T>(verl_loop_oracle(as_double(r), as_double(v), m, rows, cols, 1.0, 0.95).adv,
                                      rtol<T>(), atol<T>()));
}

TEMPLATE_LIST_TEST_CASE("regression: ROLL #447: a masked value of 100.0 (or NaN) changes nothing "
                        "(https://github.com/alibaba/ROLL/pull/447)",
                        "[advantages][gae][regression]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // One response of 3 tokens, rewards [0, 0, 1], V = 0, gamma = lambda = 1: every advantage is 1. ROLL's bug
  // read the masked value 100 at t = 3 and produced advantages around 5.7 / 6.0.
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (T garbage : {T(100), nan, std::numeric_limits<T>::infinity()}) {
    const std::vector<T> r{0, 0, 1, garbage, garbage};
    const std::vector<T> v{0, 0, 0, garbage, T(100)};
    const std::vector<mask_type> m{1, 1, 1, 0, 0};
    const auto [adv, ret] = run_gae<TestType>(b, r, v, m, 1, 5, gae_options::verl());
    CHECK(adv == std::vector<T>{1, 1, 1, 0, 0});
    CHECK(ret == std::vector<T>{1, 1, 1, 0, 0});
  }
  // Interior NaN (a masked tool-output span) is skipped too.
  const std::vector<T> r{0, nan, nan, 1};
  const std::vector<T> v{T(0.5), nan, nan, T(0.25)};
  const std::vector<mask_type> m{1, 0, 0, 1};
  const auto [adv, ret] = run_gae<TestType>(b, r, v, m, 1, 4, gae_options{1.0, 1.0});
  // A_3 = 1 - 0.25 = 0.75, A_0 = 0 + 0.25 - 0.5 + 0.75 = 0.5.
  CHECK(adv == std::vector<T>{T(0.5), 0, 0, T(0.75)});
  CHECK(ret == std::vector<T>{1, 0, 0, 1});
}

TEMPLATE_LIST_TEST_CASE("regression: safe-rlhf #88: unequal lengths in one batch are each handled on their own "
                        "(https://github.com/PKU-Alignment/safe-rlhf/pull/88)",
                        "[advantages][gae][regression]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(14);
  const std::size_t rows = 5, cols = 12;
  const std::vector<std::size_t> lengths{12, 1, 0, 7, 3};
  const auto m = mask_from_lengths(lengths, cols);
  const auto r = uniform<T>(g, rows * cols), v = uniform<T>(g, rows * cols);
  const auto [adv, ret] = run_gae<TestType>(b, r, v, m, rows, cols, gae_options{});
  // Each row alone must give the same numbers as in the batch.
  for (std::size_t row = 0; row < rows; ++row) {
    const std::vector<T> r1(r.begin() + row * cols, r.begin() + (row + 1) * cols);
    const std::vector<T> v1(v.begin() + row * cols, v.begin() + (row + 1) * cols);
    const std::vector<mask_type> m1(m.begin() + row * cols, m.begin() + (row + 1) * cols);
    const auto [a1, r1out] = run_gae<TestType>(b, r1, v1, m1, 1, cols, gae_options{});
    CHECK(a1 == std::vector<T>(adv.begin() + row * cols, adv.begin() + (row + 1) * cols));
    CHECK(r1out == std::vector<T>(ret.begin() + row * cols, ret.begin() + (row + 1) * cols));
  }
  // The one-token row: A = r - V; the empty row: all zero.
  CHECK(adv[cols] == Approx(double(r[cols]) - double(v[cols])).epsilon(1e-6));
  CHECK(std::vector<T>(adv.begin() + 2 * cols, adv.begin() + 3 * cols) == std::vector<T>(cols, T(0)));
}

TEMPLATE_LIST_TEST_CASE("gae: returns are optional; empty shapes are fine", "[advantages][gae]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(15);
  const std::size_t rows = 4, cols = 9;
  const auto r = uniform<T>(g, rows * cols), v = uniform<T>(g, rows * cols);
  const auto m = random_mask(g, rows * cols);
  const auto [adv, ret] = run_gae<TestType>(b, r, v, m, rows, cols, gae_options{});
  auto br = to_backend(b, r, rows, cols), bv = to_backend(b, v, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  auto adv2 = allocate<T>(b, rows, cols);
  gae(b, br.view(), bv.view(), bm.view(), adv2.view(), backend_matrix<typename TestType::backend, T>{});
  CHECK(to_host(b, adv2.view()) == adv);

  for (auto [rr, cc] : {std::pair<std::size_t, std::size_t>{0, 5}, {3, 0}}) {
    auto er = allocate<T>(b, rr, cc), ev = allocate<T>(b, rr, cc), ea = allocate<T>(b, rr, cc),
         eo = allocate<T>(b, rr, cc);
    auto em = allocate<mask_type>(b, rr, cc);
    gae(b, er.view(), ev.view(), em.view(), ea.view(), eo.view());
    discounted_returns(b, er.view(), em.view(), eo.view());
    CHECK(to_host(b, ea.view()).empty());
  }
}

TEMPLATE_LIST_TEST_CASE("discounted_returns: skip semantics, gamma = 1 reverse cumsum, equals gae with V = 0, lambda = 1",
                        "[advantages][gae][returns]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // Hand-computed: r = [1, x, 2, 3] with a hole at t = 1, gamma = 0.5: R_3 = 3, R_2 = 2 + 1.5 = 3.5,
  // R_0 = 1 + 0.5 * 3.5 = 2.75 (the hole is skipped, not discounted).
  {
    const std::vector<T> r{1, std::numeric_limits<T>::quiet_NaN(), 2, 3};
    const std::vector<mask_type> m{1, 0, 1, 1};
    auto br = to_backend(b, r, 1, 4);
    auto bm = to_backend(b, m, 1, 4);
    auto out = allocate<T>(b, 1, 4);
    discounted_returns(b, br.view(), bm.view(), out.view(), 0.5);
    CHECK(to_host(b, out.view()) == std::vector<T>{T(2.75), 0, T(3.5), 3});
    discounted_returns(b, br.view(), bm.view(), out.view());  // gamma = 1: 6, 0, 5, 3
    CHECK(to_host(b, out.view()) == std::vector<T>{6, 0, 5, 3});
  }
  auto g = rng(16);
  const std::size_t rows = 11, cols = 31;
  const auto r = normal<T>(g, rows * cols);
  const auto m = random_mask(g, rows * cols, 0.8);
  const std::vector<T> zeros(rows * cols, T(0));
  auto br = to_backend(b, r, rows, cols);
  auto bm = to_backend(b, m, rows, cols);
  auto out = allocate<T>(b, rows, cols);
  for (double gamma : {1.0, 0.95, 0.0}) {
    discounted_returns(b, br.view(), bm.view(), out.view(), gamma);
    const auto got = to_host(b, out.view());
    const auto want = squeeze_oracle(as_double(r), as_double(zeros), m, rows, cols, gamma, 1.0);
    CHECK_THAT(got, close_to<T>(want.ret, rtol<T>(), atol<T>()));
    const auto [adv, ret] = run_gae<TestType>(b, r, zeros, m, rows, cols, gae_options{gamma, 1.0});
    CHECK_THAT(got, close_to<T>(as_double(ret), rtol<T>(), atol<T>()));
  }
}

#if RLHF_TEST_HAS_EIGEN
namespace {
template <class B>
constexpr bool has_gae_hook = requires(const B& b, matrix_view<const double, host_space> x,
                                       matrix_view<const mask_type, host_space> m, matrix_view<double, host_space> o) {
  rlhf_specialized_gae(b, x, x, m, 1.0, 1.0, o, o);
};
}  // namespace

TEST_CASE("gae: the Eigen specialization is found by ADL and hidden by generic_only", "[advantages][gae][eigen]") {
  STATIC_REQUIRE(has_gae_hook<eigen_backend>);
  STATIC_REQUIRE_FALSE(has_gae_hook<generic_only<eigen_backend>>);
  STATIC_REQUIRE_FALSE(has_gae_hook<reference_backend>);
}

TEMPLATE_TEST_CASE("gae: the Eigen fused kernel matches the generic path, threads on and off", "[advantages][gae][eigen]",
                   float, double) {
  using T = TestType;
  auto g = rng(17);
  const std::size_t rows = 80, cols = 450;
  const auto r = normal<T>(g, rows * cols), v = normal<T>(g, rows * cols);
  const auto m = random_mask(g, rows * cols, 0.75);
  const eigen_backend threaded(2, 1), serial(1);  // threaded: parallel from one element of work on
  const generic_only<eigen_backend> generic;
  auto run = [&](const auto& b) {
    auto br = to_backend(b, r, rows, cols), bv = to_backend(b, v, rows, cols);
    auto bm = to_backend(b, m, rows, cols);
    auto adv = allocate<T>(b, rows, cols), ret = allocate<T>(b, rows, cols);
    gae(b, br.view(), bv.view(), bm.view(), adv.view(), ret.view(), gae_options{0.99, 0.95});
    return std::make_pair(to_host(b, adv.view()), to_host(b, ret.view()));
  };
  const auto a = run(threaded), s = run(serial), gen = run(generic);
  CHECK(a == s);  // rows are independent: the thread count cannot change a bit
  CHECK_THAT(a.first, close_to<T>(as_double(gen.first), 10 * tolerance<T>::rtol, 10 * tolerance<T>::atol));
  CHECK_THAT(a.second, close_to<T>(as_double(gen.second), 10 * tolerance<T>::rtol, 10 * tolerance<T>::atol));
}
#endif

TEMPLATE_LIST_TEST_CASE("gae: argument errors name the function and the argument", "[advantages][gae][errors]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto r = allocate_filled<T>(b, 4, 16, T(0)), v = allocate_filled<T>(b, 4, 16, T(0)),
       v_bad = allocate_filled<T>(b, 4, 15, T(0));
  auto m = allocate_filled<mask_type>(b, 4, 16, mask_type(1)), m_bad = allocate_filled<mask_type>(b, 3, 16, mask_type(1));
  auto a = allocate<T>(b, 4, 16), ret = allocate<T>(b, 4, 16), a_bad = allocate<T>(b, 16, 4);
  CHECK_THROWS_WITH(gae(b, r.view(), v_bad.view(), m.view(), a.view(), ret.view()),
                    Catch::Contains("rlhf::gae") && Catch::Contains("'values'") &&
                        Catch::Contains("expected shape [4, 16] (same as 'rewards'), received [4, 15]"));
  CHECK_THROWS_WITH(gae(b, r.view(), v.view(), m_bad.view(), a.view(), ret.view()),
                    Catch::Contains("rlhf::gae") && Catch::Contains("'mask'"));
  CHECK_THROWS_WITH(gae(b, r.view(), v.view(), m.view(), a_bad.view(), ret.view()),
                    Catch::Contains("rlhf::gae") && Catch::Contains("'advantages'"));
  CHECK_THROWS_WITH(gae(b, r.view(), v.view(), m.view(), a.view(), a_bad.view()),
                    Catch::Contains("rlhf::gae") && Catch::Contains("'returns'"));
  for (auto [gamma, lambda] : {std::pair<double, double>{1.5, 0.9}, {-0.1, 0.9}, {1.0, 1.01}, {1.0, -1.0},
                               {std::numeric_limits<double>::quiet_NaN(), 0.9},
                               {1.0, std::numeric_limits<double>::infinity()}}) {
    const bool bad_gamma = !(gamma >= 0 && gamma <= 1);
    CHECK_THROWS_WITH(gae(b, r.view(), v.view(), m.view(), a.view(), ret.view(), gae_options{gamma, lambda}),
                      Catch::Contains("rlhf::gae") &&
                          Catch::Contains(bad_gamma ? "'options.gamma'" : "'options.lambda'"));
  }
  CHECK_THROWS_WITH(discounted_returns(b, r.view(), m.view(), a.view(), 2.0),
                    Catch::Contains("rlhf::discounted_returns") && Catch::Contains("'gamma'"));
  CHECK_THROWS_WITH(discounted_returns(b, r.view(), m_bad.view(), a.view()),
                    Catch::Contains("rlhf::discounted_returns") && Catch::Contains("'mask'"));
  CHECK_THROWS_WITH(discounted_returns(b, r.view(), m.view(), a_bad.view()),
                    Catch::Contains("rlhf::discounted_returns") && Catch::Contains("'returns'"));
}

TEMPLATE_LIST_TEST_CASE("gae: the opt-in finite check rejects NaN at valid positions only", "[advantages][gae][errors]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const std::vector<mask_type> m{1, 1, 0};
  auto bm = to_backend(b, m, 1, 3);
  auto r_pad = to_backend(b, std::vector<T>{0, 1, nan}, 1, 3), v = to_backend(b, std::vector<T>{0, 0, 0}, 1, 3);
  auto v_bad = to_backend(b, std::vector<T>{nan, 0, 0}, 1, 3);
  auto a = allocate<T>(b, 1, 3), ret = allocate<T>(b, 1, 3);
  set_finite_checks(true);
  CHECK_NOTHROW(gae(b, r_pad.view(), v.view(), bm.view(), a.view(), ret.view()));
  CHECK_THROWS_AS(gae(b, r_pad.view(), v_bad.view(), bm.view(), a.view(), ret.view()), rlhf::non_finite_error);
  CHECK_THROWS_WITH(gae(b, r_pad.view(), v_bad.view(), bm.view(), a.view(), ret.view()),
                    Catch::Contains("rlhf::gae") && Catch::Contains("'values'"));
  CHECK_NOTHROW(discounted_returns(b, r_pad.view(), bm.view(), ret.view()));
  set_finite_checks(false);
  CHECK_NOTHROW(gae(b, r_pad.view(), v_bad.view(), bm.view(), a.view(), ret.view()));
}
