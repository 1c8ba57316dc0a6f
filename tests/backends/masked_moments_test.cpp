// rlhf::masked_moments: Chan et al.'s merge of partial statistics, hand-computed, in any grouping; the variance
// estimators and their guards.
#include "test_support.hpp"

#include "rlhf/backends/masked_moments.hpp"

using namespace rlhf;

namespace {
masked_moments of(const std::vector<double>& x) {  // two passes: the mean, then the squared deviations
  masked_moments m;
  m.count = static_cast<double>(x.size());
  for (double v : x) m.mean += v / m.count;
  for (double v : x) m.m2 += (v - m.mean) * (v - m.mean);
  return m;
}
}  // namespace

TEST_CASE("masked_moments: combine is Chan's formula, hand-computed", "[backends][masked_moments]") {
  // {1, 2} and {4}: n 3, mean 7/3, m2 = (1 - 7/3)^2 + (2 - 7/3)^2 + (4 - 7/3)^2 = 16/9 + 1/9 + 25/9 = 42/9.
  const masked_moments a{2, 1.5, 0.5}, b{1, 4, 0};
  const masked_moments c = combine(a, b);
  CHECK(c.count == 3);
  CHECK(c.mean == Approx(7.0 / 3));
  CHECK(c.m2 == Approx(42.0 / 9));
  CHECK(c.variance(variance_kind::biased) == Approx(42.0 / 27));
  CHECK(c.variance(variance_kind::bessel) == Approx(42.0 / 18));
  CHECK(c.stddev(variance_kind::bessel) == Approx(std::sqrt(42.0 / 18)));
  // The empty set is the identity on either side.
  CHECK(combine(masked_moments{}, a).m2 == a.m2);
  CHECK(combine(a, masked_moments{}).mean == a.mean);
  // Fewer than two values: variance 0, never NaN.
  CHECK(masked_moments{}.variance(variance_kind::bessel) == 0);
  CHECK(masked_moments{1, 5, 0}.variance(variance_kind::bessel) == 0);
}

TEST_CASE("masked_moments: one value at a time, pairwise, or whole give the same statistics",
          "[backends][masked_moments][property]") {
  // The CUDA advantages kernel merges one value at a time per lane, then lanes and rows pairwise.
  auto g = rlhf::test::rng(5);
  for (const double offset : {0.0, 1e3, 1e8}) {
    const std::vector<double> x = rlhf::test::normal<double>(g, 1000, offset, 1.0);
    const masked_moments whole = of(x);
    masked_moments sequential;
    for (double v : x) sequential = combine(sequential, masked_moments{1, v, 0});
    std::vector<masked_moments> parts;
    for (std::size_t i = 0; i < x.size(); i += 37) {
      parts.push_back(of(std::vector<double>(x.begin() + static_cast<long>(i),
                                             x.begin() + static_cast<long>(std::min(i + 37, x.size())))));
    }
    while (parts.size() > 1) {  // a tree, as a warp's shuffles merge
      std::vector<masked_moments> next;
      for (std::size_t i = 0; i < parts.size(); i += 2) next.push_back(i + 1 < parts.size() ? combine(parts[i], parts[i + 1]) : parts[i]);
      parts = next;
    }
    INFO("offset " << offset);
    for (const masked_moments& m : {sequential, parts[0]}) {
      CHECK(m.count == whole.count);
      CHECK(m.mean == Approx(whole.mean).epsilon(1e-13));
      CHECK(m.m2 == Approx(whole.m2).epsilon(1e-6));
    }
  }
}
