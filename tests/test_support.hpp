// Shared test machinery: the backend x element-type list every test body runs over, per-type
// tolerances, the close_to matcher, seeded random data, ragged masks and finite differences.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "rlhf/backends/generic_only.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/reference.hpp"
#if RLHF_TEST_HAS_EIGEN
#include "rlhf/backends/eigen.hpp"
#endif
#if RLHF_TEST_HAS_THRUST
#include "rlhf/backends/thrust.hpp"
#endif
#if RLHF_TEST_HAS_XTENSOR
#include "rlhf/backends/xtensor.hpp"
#endif

#ifndef RLHF_TEST_FLOAT
#define RLHF_TEST_FLOAT 1
#endif

namespace rlhf::test {

/// One test configuration: a backend type and an element type.
template <class Backend, class T>
struct config {
  using backend = Backend;
  using value = T;
  static Backend make() { return Backend{}; }
};

/// Every backend built into this test binary, each in float and double. `generic_only<eigen>` hides the
/// Eigen backend's specializations so that the generic path of every algorithm runs over Eigen's
/// primitives too, in double (the xtensor backend has no specializations: its float configuration runs
/// every generic path in float). The sanitizer build (RLHF_TEST_GENERIC_ONLY=0) skips generic_only to keep
/// CI short: the release build runs it. The
/// sanitizer build also runs the reference, Eigen and xtensor backends in double only (RLHF_TEST_FLOAT=0). The Thrust
/// backend runs on its OpenMP host system when OpenMP is there, else on the serial one (the two share
/// every line of rlhf code; thrust_test.cpp holds both systems to the reference).
using all_configs = std::tuple<config<rlhf::reference_backend, double>
#if RLHF_TEST_FLOAT
                               ,
                               config<rlhf::reference_backend, float>
#endif
#if RLHF_TEST_HAS_EIGEN
                               ,
                               config<rlhf::eigen_backend, double>
#endif
#if RLHF_TEST_HAS_EIGEN && RLHF_TEST_FLOAT
                               ,
                               config<rlhf::eigen_backend, float>
#endif
#if RLHF_TEST_HAS_EIGEN && RLHF_TEST_GENERIC_ONLY
                               ,
                               config<rlhf::generic_only<rlhf::eigen_backend>, double>
#endif
#if RLHF_TEST_XTENSOR_EVERYWHERE
                               ,
                               config<rlhf::xtensor_backend, double>
#endif
#if RLHF_TEST_XTENSOR_EVERYWHERE && RLHF_TEST_FLOAT
                               ,
                               config<rlhf::xtensor_backend, float>
#endif
#if RLHF_TEST_HAS_THRUST && RLHF_TEST_HAS_THRUST_OMP
                               ,
                               config<rlhf::thrust_omp_backend, double>, config<rlhf::thrust_omp_backend, float>
#elif RLHF_TEST_HAS_THRUST
                               ,
                               config<rlhf::thrust_cpp_backend, double>, config<rlhf::thrust_cpp_backend, float>
#endif
                               >;

/// Double-precision configurations only: finite-difference gradient checks run on these.
using double_configs = std::tuple<config<rlhf::reference_backend, double>
#if RLHF_TEST_HAS_EIGEN
                                  ,
                                  config<rlhf::eigen_backend, double>
#endif
#if RLHF_TEST_HAS_EIGEN && RLHF_TEST_GENERIC_ONLY
                                  ,
                                  config<rlhf::generic_only<rlhf::eigen_backend>, double>
#endif
#if RLHF_TEST_XTENSOR_EVERYWHERE
                                  ,
                                  config<rlhf::xtensor_backend, double>
#endif
#if RLHF_TEST_HAS_THRUST && RLHF_TEST_HAS_THRUST_OMP
                                  ,
                                  config<rlhf::thrust_omp_backend, double>
#elif RLHF_TEST_HAS_THRUST
                                  ,
                                  config<rlhf::thrust_cpp_backend, double>
#endif
                                  >;

#if RLHF_TEST_HAS_THRUST
/// The Thrust backend on its serial system and, with OpenMP, its OpenMP system, in double and float: the
/// Thrust-specific tests (tests/backends/thrust_*_test.cpp).
using thrust_configs = std::tuple<config<rlhf::thrust_cpp_backend, double>, config<rlhf::thrust_cpp_backend, float>
#if RLHF_TEST_HAS_THRUST_OMP
                                  ,
                                  config<rlhf::thrust_omp_backend, double>, config<rlhf::thrust_omp_backend, float>
#endif
                                  >;
#endif

/// Every backend once, float and double both represented: the trainer tests (tests/train/), whose bodies
/// compile the whole model and trainer per configuration, run over these rather than all_configs. Their
/// arithmetic is the layers below, which run every configuration; here the trainers' own logic meets
/// every backend. Float goes to the backends with their own float kernels (Eigen) or containers (Thrust).
using backend_configs = std::tuple<config<rlhf::reference_backend, double>
#if RLHF_TEST_HAS_EIGEN
                                   ,
                                   config<rlhf::eigen_backend, std::conditional_t<RLHF_TEST_FLOAT != 0, float, double>>
#endif
#if RLHF_TEST_HAS_EIGEN && RLHF_TEST_GENERIC_ONLY
                                   ,
                                   config<rlhf::generic_only<rlhf::eigen_backend>, double>
#endif
#if RLHF_TEST_XTENSOR_EVERYWHERE
                                   ,
                                   config<rlhf::xtensor_backend, double>
#endif
#if RLHF_TEST_HAS_THRUST && RLHF_TEST_HAS_THRUST_OMP
                                   ,
                                   config<rlhf::thrust_omp_backend, float>
#elif RLHF_TEST_HAS_THRUST
                                   ,
                                   config<rlhf::thrust_cpp_backend, float>
#endif
                                   >;

/// Comparison tolerance per element type: |got - want| <= atol + rtol * |want|.
template <class T>
struct tolerance;
template <>
struct tolerance<float> {
  static constexpr double rtol = 2e-5;
  static constexpr double atol = 2e-6;
};
template <>
struct tolerance<double> {
  static constexpr double rtol = 1e-11;
  static constexpr double atol = 1e-13;
};

/// Matcher: every element of the tested vector within atol + rtol * |want| of `want`.
/// NaN matches NaN only when `want` holds NaN at that position.
template <class T>
class close_to_matcher : public Catch::MatcherBase<std::vector<T>> {
 public:
  close_to_matcher(std::vector<double> want, double rtol, double atol) : want_(std::move(want)), rtol_(rtol), atol_(atol) {}

  bool match(const std::vector<T>& got) const override {
    if (got.size() != want_.size()) {
      why_ = "size " + std::to_string(got.size()) + " != " + std::to_string(want_.size());
      return false;
    }
    for (std::size_t i = 0; i < got.size(); ++i) {
      const double g = static_cast<double>(got[i]), w = want_[i];
      const bool both_nan = std::isnan(g) && std::isnan(w);
      const bool same_inf = std::isinf(g) && std::isinf(w) && ((g > 0) == (w > 0));
      if (both_nan || same_inf) continue;
      if (!(std::abs(g - w) <= atol_ + rtol_ * std::abs(w))) {
        std::ostringstream os;
        os.precision(17);
        os << "first mismatch at index " << i << ": got " << g << ", want " << w << " (|diff| "
           << std::abs(g - w) << " > " << atol_ + rtol_ * std::abs(w) << ")";
        why_ = os.str();
        return false;
      }
    }
    return true;
  }
  std::string describe() const override { return "is element-wise close to the reference; " + why_; }

 private:
  std::vector<double> want_;
  double rtol_, atol_;
  mutable std::string why_;
};

template <class T, class U>
close_to_matcher<T> close_to(const std::vector<U>& want, double rtol = tolerance<T>::rtol,
                             double atol = tolerance<T>::atol) {
  return close_to_matcher<T>(std::vector<double>(want.begin(), want.end()), rtol, atol);
}

/// Scalar closeness with the same rule.
template <class T>
bool near(double got, double want, double scale = 1.0) {
  return std::abs(got - want) <= scale * (tolerance<T>::atol + tolerance<T>::rtol * std::abs(want));
}

/// A generator seeded from Catch's --rng-seed (main.cpp always sets one) and a per-call salt, so each
/// test draws reproducible data that changes with the seed.
inline std::mt19937_64 rng(std::uint64_t salt = 0) {
  return std::mt19937_64(static_cast<std::uint64_t>(Catch::rngSeed()) * 0x9E3779B97F4A7C15ull + salt);
}

template <class T>
std::vector<T> uniform(std::mt19937_64& g, std::size_t n, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(g));
  return v;
}

template <class T>
std::vector<T> normal(std::mt19937_64& g, std::size_t n, double mean = 0.0, double stddev = 1.0) {
  std::normal_distribution<double> d(mean, stddev);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(g));
  return v;
}

/// Right-padded ragged mask [rows, cols]: row r holds lengths[r] leading ones.
inline std::vector<rlhf::mask_type> mask_from_lengths(const std::vector<std::size_t>& lengths, std::size_t cols) {
  std::vector<rlhf::mask_type> m(lengths.size() * cols, 0);
  for (std::size_t r = 0; r < lengths.size(); ++r)
    for (std::size_t c = 0; c < std::min(lengths[r], cols); ++c) m[r * cols + c] = 1;
  return m;
}

/// Random ragged lengths in [min_len, cols].
inline std::vector<std::size_t> random_lengths(std::mt19937_64& g, std::size_t rows, std::size_t cols,
                                               std::size_t min_len = 0) {
  std::uniform_int_distribution<std::size_t> d(std::min(min_len, cols), cols);
  std::vector<std::size_t> l(rows);
  for (auto& x : l) x = d(g);
  return l;
}

/// Random inputs of one causal attention call over `batch` sequences of `seq` tokens: q and d_out
/// [B*T, Hq*hd], k and v [B*T, Hkv*hd] (drawn in that order: q, k, v, d_out), and ragged lengths with the
/// first sequence empty.
template <class T>
struct attention_inputs {
  std::vector<T> q, k, v, d_out;
  std::vector<std::int32_t> lengths;
};
template <class T>
attention_inputs<T> random_attention_inputs(std::mt19937_64& g, std::size_t batch, std::size_t seq,
                                            std::size_t n_heads, std::size_t n_kv_heads, std::size_t head_dim) {
  const std::size_t rows = batch * seq, qc = n_heads * head_dim, kc = n_kv_heads * head_dim;
  attention_inputs<T> in;
  in.q = normal<T>(g, rows * qc);
  in.k = normal<T>(g, rows * kc);
  in.v = normal<T>(g, rows * kc);
  in.d_out = normal<T>(g, rows * qc);
  for (auto n : random_lengths(g, batch, seq)) in.lengths.push_back(static_cast<std::int32_t>(n));
  in.lengths[0] = 0;
  return in;
}

/// Random mask with interior holes (multi-turn style): each element valid with probability p.
inline std::vector<rlhf::mask_type> random_mask(std::mt19937_64& g, std::size_t n, double p = 0.7) {
  std::bernoulli_distribution d(p);
  std::vector<rlhf::mask_type> m(n);
  for (auto& x : m) x = d(g) ? 1 : 0;
  return m;
}

/// `edits` random edits of a text, for the readers' property tests: a byte overwritten with any value or with one
/// of `syntax`'s characters, a syntax character inserted, a run of 1 to 6 bytes erased, or the text cut off.
inline std::string randomly_edited(std::mt19937_64& g, std::string text, int edits, const std::string& syntax) {
  for (int k = 0; k < edits && !text.empty(); ++k) {
    const std::size_t at = g() % text.size();
    switch (g() % 5) {
      case 0: text[at] = static_cast<char>(g()); break;
      case 1: text[at] = syntax[g() % syntax.size()]; break;
      case 2: text.insert(at, 1, syntax[g() % syntax.size()]); break;
      case 3: text.erase(at, 1 + g() % 6); break;
      default: text.resize(at); break;
    }
  }
  return text;
}

/// Central finite-difference gradient of a scalar function of a vector (double precision).
inline std::vector<double> numeric_gradient(const std::function<double(const std::vector<double>&)>& f,
                                            std::vector<double> x, double eps = 1e-6) {
  std::vector<double> g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + eps;
    const double up = f(x);
    x[i] = keep - eps;
    const double down = f(x);
    x[i] = keep;
    g[i] = (up - down) / (2 * eps);
  }
  return g;
}

/// Tolerance for comparing an analytic gradient with a central difference at eps = 1e-6.
inline constexpr double fd_rtol = 1e-6;
inline constexpr double fd_atol = 1e-7;

/// Converts a vector of one element type to another.
template <class To, class From>
std::vector<To> cast(const std::vector<From>& v) {
  return std::vector<To>(v.begin(), v.end());
}

}  // namespace rlhf::test
