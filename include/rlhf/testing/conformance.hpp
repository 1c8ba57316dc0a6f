/// @file conformance.hpp
/// @brief The backend conformance suite: every primitive of the backend concept and every hot-path
///        algorithm on a backend, held to the reference backend on the same inputs.
///
/// A backend author checks a backend in a few lines, in any test framework:
///
///     #include "rlhf/testing/conformance.hpp"
///     const my_backend b;
///     const rlhf::testing::conformance_report r = rlhf::testing::check_conformance<float>(b);
///     if (!r.ok()) { std::puts(r.summary().c_str()); return 1; }   // or REQUIRE(r.ok()) with r.summary()
///
/// The suite is the one the library's own backends pass (tests/testing/conformance_test.cpp runs it on
/// every backend built into the tests). Inputs are seeded random matrices with ragged masks (rows with no
/// valid token, one, some, all) and the edge cases each algorithm has: ties and K = 2 rows in the ranking
/// loss, clipped and unclipped PPO ratios, a row with one valid token in whitening. The reference model's
/// layers (token embedding, causal attention and its decode over a key/value cache, RMSNorm, RoPE, SwiGLU)
/// are checked forward and backward, in place where their contract allows it. Specializations are not
/// exempt: a backend's own GAE, PPO-clip or attention kernel is what runs and what is compared.
///
/// Tolerances are relative + absolute per element type (float 1e-4 / 1e-5, double 1e-10 / 1e-12): a
/// backend may reorder sums, not change results.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "rlhf/advantages/gae.hpp"
#include "rlhf/advantages/kl_penalized_advantages.hpp"
#include "rlhf/advantages/kl_penalized_rewards.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/reference.hpp"
#include "rlhf/config.hpp"
#include "rlhf/losses/ppo_clip_loss.hpp"
#include "rlhf/losses/ranking_loss.hpp"
#include "rlhf/losses/sft_loss.hpp"
#include "rlhf/losses/value_loss.hpp"
#include "rlhf/models/layers/attention.hpp"
#include "rlhf/models/layers/embedding.hpp"
#include "rlhf/models/layers/rms_norm.hpp"
#include "rlhf/models/layers/rope.hpp"
#include "rlhf/models/layers/swiglu.hpp"
#include "rlhf/ops/token_logprobs.hpp"
#include "rlhf/ops/whitening.hpp"

namespace rlhf::testing {

/// One check that did not hold.
struct conformance_failure {
  std::string check;   ///< e.g. "gae: advantages"
  std::string detail;  ///< the first mismatch: index, got, want
};

/// The outcome of check_conformance.
struct conformance_report {
  std::string backend;  ///< the name given to check_conformance
  std::size_t checks = 0;
  std::vector<conformance_failure> failures;

  bool ok() const { return failures.empty(); }
  /// "BACKEND: N checks, all passed" or one line per failure.
  std::string summary() const {
    std::ostringstream os;
    os << backend << ": " << checks << " checks, ";
    if (ok()) {
      os << "all passed";
    } else {
      os << failures.size() << " failed";
      for (const auto& f : failures) os << "\n  " << f.check << ": " << f.detail;
    }
    return os.str();
  }
};

/// Options of check_conformance.
struct conformance_options {
  std::uint64_t seed = 1;     ///< the random inputs
  std::size_t rows = 7;       ///< batch rows of the [rows, cols] inputs (>= 4: the ragged cases need 4)
  std::size_t cols = 33;      ///< sequence length (odd, so vectorized code meets a remainder)
  std::string name = "backend";  ///< named in the report
};

namespace detail {

template <class T>
struct conformance_tolerance {
  static constexpr double rtol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
  static constexpr double atol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
};

class conformance_recorder {
 public:
  explicit conformance_recorder(conformance_report& r) : report_(r) {}

  template <class T>
  void values(std::string_view check, const std::vector<T>& got, const std::vector<T>& want) {
    ++report_.checks;
    if (got.size() != want.size()) {
      fail(check, "size " + std::to_string(got.size()) + ", want " + std::to_string(want.size()));
      return;
    }
    for (std::size_t i = 0; i < got.size(); ++i) {
      if (!close<T>(static_cast<double>(got[i]), static_cast<double>(want[i]))) {
        std::ostringstream os;
        os.precision(17);
        os << "element " << i << ": got " << static_cast<double>(got[i]) << ", want " << static_cast<double>(want[i]);
        fail(check, os.str());
        return;
      }
    }
  }

  template <class T>
  void scalar(std::string_view check, double got, double want) {
    ++report_.checks;
    if (!close<T>(got, want)) {
      std::ostringstream os;
      os.precision(17);
      os << "got " << got << ", want " << want;
      fail(check, os.str());
    }
  }

  void fail(std::string_view check, std::string detail) { report_.failures.push_back({std::string(check), std::move(detail)}); }

 private:
  template <class T>
  static bool close(double got, double want) {
    if (std::isnan(want)) return std::isnan(got);
    if (std::isinf(want)) return got == want;
    return std::abs(got - want) <= conformance_tolerance<T>::atol + conformance_tolerance<T>::rtol * std::abs(want);
  }
  conformance_report& report_;
};

// Runs `body(backend)` on B and on the reference backend; `body` returns host results to compare.
template <class T>
struct conformance_inputs {
  std::size_t rows, cols;
  std::vector<T> a, b2, c, d;                 // [rows, cols] random values
  std::vector<mask_type> mask;                 // ragged right-padded mask: rows of length 0, 1, cols, random
  std::vector<mask_type> has_eos;              // [rows]
  std::vector<T> scores;                       // [rows]
};

template <class T>
conformance_inputs<T> make_conformance_inputs(const conformance_options& o) {
  conformance_inputs<T> in{o.rows, o.cols, {}, {}, {}, {}, {}, {}, {}};
  std::mt19937_64 g(o.seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  const std::size_t n = o.rows * o.cols;
  for (auto* v : {&in.a, &in.b2, &in.c, &in.d}) {
    v->resize(n);
    for (auto& x : *v) x = static_cast<T>(normal(g));
  }
  in.mask.assign(n, 0);
  std::uniform_int_distribution<std::size_t> len(0, o.cols);
  for (std::size_t r = 0; r < o.rows; ++r) {
    const std::size_t l = r == 0 ? 0 : r == 1 ? 1 : r == 2 ? o.cols : len(g);
    // Responses start after a "prompt" of r % 3 positions, as in real batches.
    for (std::size_t t = std::min(l, r % 3); t < l; ++t) in.mask[r * o.cols + t] = 1;
    in.has_eos.push_back(static_cast<mask_type>(r % 2));
    in.scores.push_back(static_cast<T>(normal(g)));
  }
  return in;
}

}  // namespace detail

/// Holds backend `b` to rlhf::reference_backend on every primitive of the concept and on the hot-path
/// algorithms, in element type T (float or double). Never throws for a mismatch: it reports it, and an
/// exception from a check (e.g. an algorithm's input validation tripped by a wrong primitive) is a
/// failure of that check.
/// @tparam T the element type to check
/// @tparam B an rlhf::complete_backend
template <class T, class B>
conformance_report check_conformance(const B& b, const conformance_options& options = {}) {
  static_assert(complete_backend<B>,
                "rlhf::testing::check_conformance: the backend is not an rlhf::complete_backend; "
                "rlhf::detail::check_complete_backend<B>() names the primitive it lacks (docs/backends.md)");
  static_assert(std::is_floating_point_v<T>, "rlhf::testing::check_conformance: T must be float or double");
  conformance_report report;
  report.backend = options.name;
  if (options.rows < 4 || options.cols < 2) {
    report.failures.push_back({"options", "rows >= 4 and cols >= 2 needed"});
    return report;
  }
  detail::conformance_recorder rec(report);
  const reference_backend ref;
  const auto in = detail::make_conformance_inputs<T>(options);
  const std::size_t R = in.rows, C = in.cols, N = R * C;
  // A check that throws (an algorithm rejecting what a wrong primitive produced) is reported, not thrown.
  const auto guarded = [&](const char* check, auto&& body) {
    try {
      body();
    } catch (const std::exception& e) {
      ++report.checks;
      rec.fail(check, std::string("threw: ") + e.what());
    }
  };
  const auto upload = [](const auto& be, const auto& host, std::size_t r, std::size_t c) {
    using E = typename std::decay_t<decltype(host)>::value_type;
    return to_backend(be, std::span<const E>(host), r, c);
  };

  // --- Primitives ------------------------------------------------------------------------------
  guarded("primitives", [&] {
    auto x = upload(b, in.a, R, C);
    rec.values<T>("copy: host -> backend -> host", to_host(b, x.view()), in.a);
    auto y = allocate<T>(b, R, C);
    b.copy(as_const(x.view().flat()), y.view().flat());
    rec.values<T>("copy: backend -> backend", to_host(b, y.view()), in.a);
    b.fill(y.view().flat(), T(2.5));
    rec.values<T>("fill", to_host(b, y.view()), std::vector<T>(N, T(2.5)));
    auto x2 = upload(b, in.b2, R, C), x3 = upload(b, in.c, R, C);
    std::vector<T> want(N);
    b.transform(y.view().flat(), [] RLHF_HOST_DEVICE(T u) { return u * u + T(1); }, as_const(x.view().flat()));
    for (std::size_t i = 0; i < N; ++i) want[i] = in.a[i] * in.a[i] + T(1);
    rec.values<T>("transform (unary)", to_host(b, y.view()), want);
    b.transform(y.view().flat(), [] RLHF_HOST_DEVICE(T u, T v) { return u - T(2) * v; }, as_const(x.view().flat()), as_const(x2.view().flat()));
    for (std::size_t i = 0; i < N; ++i) want[i] = in.a[i] - T(2) * in.b2[i];
    rec.values<T>("transform (binary)", to_host(b, y.view()), want);
    b.transform(y.view().flat(), [] RLHF_HOST_DEVICE(T u, T v, T w) { return u * v + w; }, as_const(x.view().flat()),
                as_const(x2.view().flat()), as_const(x3.view().flat()));
    for (std::size_t i = 0; i < N; ++i) want[i] = in.a[i] * in.b2[i] + in.c[i];
    rec.values<T>("transform (ternary)", to_host(b, y.view()), want);
    {
      auto out = y.view().flat();
      b.for_each_index(N, [out] RLHF_HOST_DEVICE(std::size_t i) { out[i] = static_cast<T>(i % 5); });
      for (std::size_t i = 0; i < N; ++i) want[i] = static_cast<T>(i % 5);
      rec.values<T>("for_each_index", to_host(b, y.view()), want);
      // With a work hint large enough that a backend taking it splits the loop.
      for_each_weighted_index(b, N, std::size_t(1) << 20, [out] RLHF_HOST_DEVICE(std::size_t i) { out[i] = static_cast<T>(i % 7); });
      for (std::size_t i = 0; i < N; ++i) want[i] = static_cast<T>(i % 7);
      rec.values<T>("for_each_index (with a work hint)", to_host(b, y.view()), want);
    }
    double sum = 0, dot = 0;
    for (std::size_t i = 0; i < N; ++i) {
      sum += static_cast<double>(in.a[i]) * static_cast<double>(in.a[i]);
      dot += static_cast<double>(in.a[i]) * static_cast<double>(in.b2[i]);
    }
    rec.scalar<T>("transform_reduce (unary)",
                  static_cast<double>(b.transform_reduce(T(0), [] RLHF_HOST_DEVICE(T u, T v) { return u + v; }, [] RLHF_HOST_DEVICE(T u) { return u * u; },
                                                         as_const(x.view().flat()))),
                  sum);
    rec.scalar<T>("transform_reduce (binary)",
                  static_cast<double>(b.transform_reduce(T(0), [] RLHF_HOST_DEVICE(T u, T v) { return u + v; }, [] RLHF_HOST_DEVICE(T u, T v) { return u * v; },
                                                         as_const(x.view().flat()), as_const(x2.view().flat()))),
                  dot);
    // reduce_rows: per row, sum of column-weighted values (the column index reaches the map).
    auto rows_out = allocate<T>(b, R);
    b.reduce_rows(rows_out.view().flat(), T(0), [] RLHF_HOST_DEVICE(T u, T v) { return u + v; },
                  [] RLHF_HOST_DEVICE(std::size_t col, T v) { return v * static_cast<T>(col % 3); }, as_const(x.view()));
    std::vector<T> want_rows(R);
    for (std::size_t r = 0; r < R; ++r) {
      double s = 0;
      for (std::size_t c = 0; c < C; ++c) s += static_cast<double>(in.a[r * C + c]) * static_cast<double>(c % 3);
      want_rows[r] = static_cast<T>(s);
    }
    rec.values<T>("reduce_rows", to_host(b, rows_out.view().flat()), want_rows);
    // reverse_linear_recurrence: y[t] = x[t] + a[t] * y[t+1] per row, y[C] = 0.
    std::vector<T> coef(N);
    for (std::size_t i = 0; i < N; ++i) coef[i] = static_cast<T>(0.5 + 0.4 * std::tanh(static_cast<double>(in.c[i])));
    auto a_dev = upload(b, coef, R, C);
    b.reverse_linear_recurrence(y.view(), as_const(a_dev.view()), as_const(x.view()));
    for (std::size_t r = 0; r < R; ++r) {
      double carry = 0;
      for (std::size_t c = C; c-- > 0;) {
        carry = static_cast<double>(in.a[r * C + c]) + static_cast<double>(coef[r * C + c]) * carry;
        want[r * C + c] = static_cast<T>(carry);
      }
    }
    rec.values<T>("reverse_linear_recurrence", to_host(b, y.view()), want);
    // gemm in all four transpose combinations: [R, C] x [C, R] products.
    for (const transpose ta : {transpose::no, transpose::yes}) {
      for (const transpose tb : {transpose::no, transpose::yes}) {
        const std::size_t m = R, k = C, n = 5;
        std::vector<T> ha(m * k), hb(k * n), hc(m * n, T(1));
        for (std::size_t i = 0; i < ha.size(); ++i) ha[i] = in.a[i];
        for (std::size_t i = 0; i < hb.size(); ++i) hb[i] = in.b2[i];
        auto da = ta == transpose::no ? upload(b, ha, m, k) : upload(b, ha, k, m);
        auto db = tb == transpose::no ? upload(b, hb, k, n) : upload(b, hb, n, k);
        auto dc = upload(b, hc, m, n);
        b.gemm(ta, tb, T(0.5), as_const(da.view()), as_const(db.view()), T(2), dc.view());
        std::vector<T> wc(m * n);
        for (std::size_t i = 0; i < m; ++i) {
          for (std::size_t j = 0; j < n; ++j) {
            double s = 0;
            for (std::size_t p = 0; p < k; ++p) {
              const double av = ta == transpose::no ? static_cast<double>(ha[i * k + p]) : static_cast<double>(ha[p * m + i]);
              const double bv = tb == transpose::no ? static_cast<double>(hb[p * n + j]) : static_cast<double>(hb[j * k + p]);
              s += av * bv;
            }
            wc[i * n + j] = static_cast<T>(0.5 * s + 2.0);
          }
        }
        rec.values<T>(std::string("gemm (") + (ta == transpose::no ? "N" : "T") + (tb == transpose::no ? "N" : "T") + ")",
                      to_host(b, dc.view()), wc);
      }
    }
  });

  // --- Algorithms, each run on both backends -----------------------------------------------------
  // GAE (Schulman et al. 2016) over a ragged mask.
  guarded("gae", [&] {
    const auto run = [&](const auto& be) {
      auto rw = upload(be, in.a, R, C), v = upload(be, in.b2, R, C);
      auto m = upload(be, in.mask, R, C);
      auto adv = allocate<T>(be, R, C), ret = allocate<T>(be, R, C);
      gae<std::decay_t<decltype(be)>, T>(be, as_const(rw.view()), as_const(v.view()), as_const(m.view()), adv.view(),
                                         ret.view(), gae_options{0.99, 0.95});
      return std::pair{to_host(be, adv.view()), to_host(be, ret.view())};
    };
    const auto [got_a, got_r] = run(b);
    const auto [want_a, want_r] = run(ref);
    rec.values<T>("gae: advantages", got_a, want_a);
    rec.values<T>("gae: returns", got_r, want_r);
  });
  // Whitening over the mask (biased and Bessel variance).
  for (const variance_kind kind : {variance_kind::biased, variance_kind::bessel}) {
    guarded("whiten", [&] {
      const auto run = [&](const auto& be) {
        auto x = upload(be, in.a, R, C);
        auto m = upload(be, in.mask, R, C);
        auto out = allocate<T>(be, R, C);
        whiten(be, as_const(x.view()), as_const(m.view()), out.view(), whiten_options{true, kind, 1e-8});
        return to_host(be, out.view());
      };
      rec.values<T>(kind == variance_kind::biased ? "whiten (biased)" : "whiten (bessel)", run(b), run(ref));
    });
  }
  // KL-penalized rewards with the k1 estimator; the score at the last valid token.
  guarded("kl_penalized_rewards", [&] {
    const auto run = [&](const auto& be) {
      auto lp = upload(be, in.a, R, C), rl = upload(be, in.b2, R, C);
      auto s = upload(be, in.scores, in.scores.size(), 1);
      auto m = upload(be, in.mask, R, C);
      auto eos = upload(be, in.has_eos, in.has_eos.size(), 1);
      auto kl = allocate<T>(be, R, C), rewards = allocate<T>(be, R, C);
      kl_penalized_rewards_options o;
      o.missing_eos_penalty = 0.5;
      o.score_clip = 1.5;
      const auto st = kl_penalized_rewards<std::decay_t<decltype(be)>, T>(
          be, as_const(lp.view()), as_const(rl.view()), as_const(s.view().flat()), as_const(m.view()),
          as_const(eos.view().flat()), kl.view(), rewards.view(), kl_estimator_options{}, o);
      return std::tuple{to_host(be, kl.view()), to_host(be, rewards.view()), st.mean_kl};
    };
    const auto [gk, gr, gm] = run(b);
    const auto [wk, wr, wm] = run(ref);
    rec.values<T>("kl_penalized_rewards: kl", gk, wk);
    rec.values<T>("kl_penalized_rewards: rewards", gr, wr);
    rec.scalar<T>("kl_penalized_rewards: mean_kl", gm, wm);
  });
  // The KL, rewards, GAE and the advantages' moments in one call (a backend's one-pass kernel, when it has
  // one, against the reference backend's four calls).
  guarded("kl_penalized_advantages", [&] {
    const auto run = [&](const auto& be) {
      auto lp = upload(be, in.a, R, C), rl = upload(be, in.b2, R, C), v = upload(be, in.c, R, C);
      auto s = upload(be, in.scores, in.scores.size(), 1);
      auto m = upload(be, in.mask, R, C);
      auto eos = upload(be, in.has_eos, in.has_eos.size(), 1);
      auto kl = allocate<T>(be, R, C), rewards = allocate<T>(be, R, C), adv = allocate<T>(be, R, C),
           ret = allocate<T>(be, R, C);
      kl_penalized_advantages_options o;
      o.rewards.missing_eos_penalty = 0.5;
      o.gae = gae_options{0.99, 0.95};
      const auto st = kl_penalized_advantages<std::decay_t<decltype(be)>, T>(
          be, as_const(lp.view()), as_const(rl.view()), as_const(s.view().flat()), as_const(v.view()),
          as_const(m.view()), as_const(eos.view().flat()), kl.view(), rewards.view(), adv.view(), ret.view(), o);
      return std::tuple{to_host(be, rewards.view()), to_host(be, adv.view()), to_host(be, ret.view()),
                        std::vector<double>{st.advantages.count, st.advantages.mean, st.advantages.m2,
                                            st.rewards.mean_kl, st.rewards.mean_score}};
    };
    const auto [gr, ga, gt, gs] = run(b);
    const auto [wr, wa, wt, ws] = run(ref);
    rec.values<T>("kl_penalized_advantages: rewards", gr, wr);
    rec.values<T>("kl_penalized_advantages: advantages", ga, wa);
    rec.values<T>("kl_penalized_advantages: returns", gt, wt);
    const char* names[] = {"count", "mean", "m2", "mean_kl", "mean_score"};
    for (std::size_t i = 0; i < gs.size(); ++i) {
      rec.scalar<T>(std::string("kl_penalized_advantages: ") + names[i], gs[i], ws[i]);
    }
  });
  // PPO-clip (Schulman et al. 2017, eq. 7) and the clipped value loss, with their gradients; the
  // log-ratios are spread so that both clip branches and the unclipped region occur.
  guarded("ppo_clip_loss / clipped_value_loss", [&] {
    std::vector<T> old_logp(N);
    for (std::size_t i = 0; i < N; ++i) old_logp[i] = static_cast<T>(static_cast<double>(in.a[i]) + 0.3 * static_cast<double>(in.d[i]));
    const auto run = [&](const auto& be) {
      auto lp = upload(be, in.a, R, C), olp = upload(be, old_logp, R, C), adv = upload(be, in.b2, R, C);
      auto m = upload(be, in.mask, R, C);
      auto d = allocate<T>(be, R, C);
      const ppo_clip_stats st = ppo_clip_loss(be, as_const(lp.view()), as_const(olp.view()), as_const(adv.view()),
                                              as_const(m.view()), d.view(), ppo_clip_options{});
      auto v = upload(be, in.c, R, C), ov = upload(be, in.d, R, C), ret = upload(be, in.b2, R, C);
      auto dv = allocate<T>(be, R, C);
      const value_loss_stats vs = clipped_value_loss(be, as_const(v.view()), as_const(ov.view()), as_const(ret.view()),
                                                     as_const(m.view()), dv.view(), value_loss_options{});
      return std::tuple{to_host(be, d.view()), st.loss, st.clip_fraction, to_host(be, dv.view()), vs.loss};
    };
    const auto [gd, gl, gc, gdv, gvl] = run(b);
    const auto [wd, wl, wc, wdv, wvl] = run(ref);
    rec.values<T>("ppo_clip_loss: d_logp", gd, wd);
    rec.scalar<T>("ppo_clip_loss: loss", gl, wl);
    rec.scalar<T>("ppo_clip_loss: clip_fraction", gc, wc);
    rec.values<T>("clipped_value_loss: d_values", gdv, wdv);
    rec.scalar<T>("clipped_value_loss: loss", gvl, wvl);
  });
  // SFT loss on the mask, with its gradient.
  guarded("sft_loss", [&] {
    const auto run = [&](const auto& be) {
      auto lp = upload(be, in.a, R, C);
      auto m = upload(be, in.mask, R, C);
      auto d = allocate<T>(be, R, C);
      const sft_loss_stats st = sft_loss(be, as_const(lp.view()), as_const(m.view()), d.view());
      return std::pair{to_host(be, d.view()), st.loss};
    };
    const auto [gd, gl] = run(b);
    const auto [wd, wl] = run(ref);
    rec.values<T>("sft_loss: d_logp", gd, wd);
    rec.scalar<T>("sft_loss: loss", gl, wl);
  });
  // The pairwise ranking loss (Ouyang et al. 2022, eq. 1): K = 2..6 per prompt, with ties.
  guarded("ranking_loss", [&] {
    const std::size_t P = R, K = 6;
    std::vector<T> rewards(P * K);
    std::vector<std::int32_t> ranks(P * K, 0), counts(P);
    for (std::size_t p = 0; p < P; ++p) {
      counts[p] = static_cast<std::int32_t>(2 + p % 5);
      for (std::size_t k = 0; k < K; ++k) {
        rewards[p * K + k] = in.a[(p * K + k) % N];
        // Ranks in [0, count); with count >= 3 they repeat (ties). Padding columns keep rank 0.
        const std::size_t count = static_cast<std::size_t>(counts[p]);
        if (k < count) ranks[p * K + k] = static_cast<std::int32_t>((k * 3 + p) % (count > 2 ? count - 1 : 2));
      }
    }
    const auto run = [&](const auto& be) {
      auto rw = upload(be, rewards, P, K);
      auto rk = upload(be, ranks, P, K);
      auto ct = upload(be, counts, counts.size(), 1);
      auto d = allocate<T>(be, P, K);
      const ranking_loss_stats st = ranking_loss<std::decay_t<decltype(be)>, T>(
          be, as_const(rw.view()), as_const(rk.view()), as_const(ct.view().flat()), d.view());
      return std::tuple{to_host(be, d.view()), st.loss, st.accuracy};
    };
    const auto [gd, gl, ga] = run(b);
    const auto [wd, wl, wa] = run(ref);
    rec.values<T>("ranking_loss: d_rewards", gd, wd);
    rec.scalar<T>("ranking_loss: loss", gl, wl);
    rec.scalar<T>("ranking_loss: accuracy", ga, wa);
  });
  // Token log-probs and entropy from logits [rows, V], forward and backward.
  guarded("token_logprobs", [&] {
    const std::size_t rows = R * 3, V = C;
    std::vector<T> logits(rows * V);
    for (std::size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<T>(3.0 * static_cast<double>(in.a[i % N]) + 0.01 * static_cast<double>(i % 7));
    std::vector<token_type> tokens(rows);
    std::vector<mask_type> mask(rows);
    std::vector<T> d_logp(rows), d_ent(rows);
    for (std::size_t r = 0; r < rows; ++r) {
      tokens[r] = static_cast<token_type>((r * 5) % V);
      mask[r] = static_cast<mask_type>(r % 4 != 3);
      d_logp[r] = in.b2[r % N];
      d_ent[r] = in.c[r % N];
    }
    const auto run = [&](const auto& be) {
      using BE = std::decay_t<decltype(be)>;
      auto lg = upload(be, logits, rows, V);
      auto tk = upload(be, tokens, tokens.size(), 1);
      auto mk = upload(be, mask, mask.size(), 1);
      auto lp = allocate<T>(be, rows), lse = allocate<T>(be, rows), ent = allocate<T>(be, rows);
      token_logprobs<BE, T>(be, as_const(lg.view()), as_const(tk.view().flat()), as_const(mk.view().flat()),
                            lp.view().flat(), lse.view().flat(), ent.view().flat());
      auto dl = upload(be, d_logp, d_logp.size(), 1), de = upload(be, d_ent, d_ent.size(), 1);
      auto dlogits = allocate<T>(be, rows, V);
      token_logprobs_backward<BE, T>(be, as_const(lg.view()), as_const(tk.view().flat()), as_const(mk.view().flat()),
                                     as_const(lse.view().flat()), as_const(dl.view().flat()), as_const(ent.view().flat()),
                                     as_const(de.view().flat()), dlogits.view());
      return std::tuple{to_host(be, lp.view().flat()), to_host(be, ent.view().flat()), to_host(be, dlogits.view())};
    };
    const auto [gl, ge, gd] = run(b);
    const auto [wl, we, wd] = run(ref);
    rec.values<T>("token_logprobs: logprobs", gl, wl);
    rec.values<T>("token_logprobs: entropy", ge, we);
    rec.values<T>("token_logprobs_backward: dlogits", gd, wd);
  });
  // --- The model's layers ------------------------------------------------------------------------
  // What a backend that specializes a layer (as the Eigen backend does attention, RMSNorm, RoPE and SwiGLU)
  // must reproduce: forward and backward, in place where the contract allows it.
  const auto cycled = [&](std::size_t n, const std::vector<T>& src, double scale) {
    std::vector<T> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<T>(scale * static_cast<double>(src[(i * 7) % N]));
    return v;
  };
  guarded("causal_attention", [&] {
    // 3 sequences of C tokens (lengths 0, about half, all), 4 query heads sharing 2 kv heads of 4 elements.
    const std::size_t seqs = 3, T_len = C, Hq = 4, Hkv = 2, hd = 4, rows = seqs * T_len;
    const auto q = cycled(rows * Hq * hd, in.a, 1.0), k = cycled(rows * Hkv * hd, in.b2, 1.0);
    const auto v = cycled(rows * Hkv * hd, in.c, 1.0), d_out = cycled(rows * Hq * hd, in.d, 1.0);
    const std::vector<std::int32_t> lengths{0, static_cast<std::int32_t>(T_len / 2 + 1), static_cast<std::int32_t>(T_len)};
    const auto run = [&](const auto& be) {
      using BE = std::decay_t<decltype(be)>;
      auto bq = upload(be, q, rows, Hq * hd), bk = upload(be, k, rows, Hkv * hd), bv = upload(be, v, rows, Hkv * hd);
      auto bd = upload(be, d_out, rows, Hq * hd);
      auto bl = upload(be, lengths, seqs, 1);
      auto out = allocate<T>(be, rows, Hq * hd), online = allocate<T>(be, rows, Hq * hd);
      auto probs = allocate<T>(be, seqs * Hq * T_len, T_len);
      causal_attention_forward<BE, T>(be, as_const(bq.view()), as_const(bk.view()), as_const(bv.view()), seqs, Hq, Hkv,
                                      out.view(), probs.view(), as_const(bl.view().flat()));
      causal_attention_forward<BE, T>(be, as_const(bq.view()), as_const(bk.view()), as_const(bv.view()), seqs, Hq, Hkv,
                                      online.view(), {}, as_const(bl.view().flat()));
      auto dq = allocate<T>(be, rows, Hq * hd), dk = allocate<T>(be, rows, Hkv * hd), dv = allocate<T>(be, rows, Hkv * hd);
      causal_attention_backward<BE, T>(be, as_const(bq.view()), as_const(bk.view()), as_const(bv.view()),
                                       as_const(probs.view()), as_const(bd.view()), seqs, Hq, Hkv, dq.view(), dk.view(),
                                       dv.view(), as_const(bl.view().flat()));
      // The training pair that keeps row logsumexps instead of the softmax.
      auto out2 = allocate<T>(be, rows, Hq * hd), lse = allocate<T>(be, seqs * Hq * T_len);
      causal_attention_forward_logsumexp<BE, T>(be, as_const(bq.view()), as_const(bk.view()), as_const(bv.view()),
                                                seqs, Hq, Hkv, out2.view(), lse.view().flat(),
                                                as_const(bl.view().flat()));
      auto dq2 = allocate<T>(be, rows, Hq * hd), dk2 = allocate<T>(be, rows, Hkv * hd);
      auto dv2 = allocate<T>(be, rows, Hkv * hd);
      causal_attention_backward_recompute<BE, T>(be, as_const(bq.view()), as_const(bk.view()), as_const(bv.view()),
                                                 as_const(lse.view().flat()), as_const(bd.view()), seqs, Hq, Hkv,
                                                 dq2.view(), dk2.view(), dv2.view(), as_const(bl.view().flat()));
      return std::vector<std::vector<T>>{
          to_host(be, out.view()),  to_host(be, online.view()), to_host(be, probs.view()), to_host(be, dq.view()),
          to_host(be, dk.view()),   to_host(be, dv.view()),     to_host(be, out2.view()),  to_host(be, lse.view()),
          to_host(be, dq2.view()),  to_host(be, dk2.view()),    to_host(be, dv2.view())};
    };
    const auto got = run(b), want = run(ref);
    const char* names[] = {"causal_attention_forward: out", "causal_attention_forward: out (no probs saved)",
                           "causal_attention_forward: probs", "causal_attention_backward: d_q",
                           "causal_attention_backward: d_k", "causal_attention_backward: d_v",
                           "causal_attention_forward_logsumexp: out", "causal_attention_forward_logsumexp: logsumexp",
                           "causal_attention_backward_recompute: d_q", "causal_attention_backward_recompute: d_k",
                           "causal_attention_backward_recompute: d_v"};
    for (std::size_t i = 0; i < want.size(); ++i) rec.values<T>(names[i], got[i], want[i]);
  });
  guarded("embedding", [&] {
    // 2R tokens over a 5-row table: every id repeats, one id (4) never occurs; the table gradient is added
    // to what it holds.
    const std::size_t V = 5, n_tok = 2 * R;
    std::vector<token_type> ids(n_tok);
    for (std::size_t i = 0; i < n_tok; ++i) ids[i] = static_cast<token_type>((i * 3) % (V - 1));
    const auto table = cycled(V * C, in.c, 1.0), d_out = cycled(n_tok * C, in.d, 1.0), d0 = cycled(V * C, in.b2, 1.0);
    const auto run = [&](const auto& be) {
      using BE = std::decay_t<decltype(be)>;
      auto bi = upload(be, ids, n_tok, 1);  // its own declaration: nvcc rejects one `auto` of several types
      auto bt = upload(be, table, V, C), bd = upload(be, d_out, n_tok, C), dt = upload(be, d0, V, C);
      auto out = allocate<T>(be, n_tok, C);
      embedding_forward<BE, T>(be, as_const(bt.view()), as_const(bi.view().flat()), out.view());
      embedding_backward<BE, T>(be, as_const(bi.view().flat()), as_const(bd.view()), dt.view());
      return std::vector<std::vector<T>>{to_host(be, out.view()), to_host(be, dt.view())};
    };
    const auto got = run(b), want = run(ref);
    rec.values<T>("embedding_forward: out", got[0], want[0]);
    rec.values<T>("embedding_backward: d_table (accumulated, repeated ids)", got[1], want[1]);
  });
  guarded("causal_attention_decode", [&] {
    // 3 rows at positions 0, about half and the last of a cache of C positions; 4 query heads over 2 kv heads.
    const std::size_t rows = 3, seq = C, Hq = 4, Hkv = 2, hd = 4;
    const std::vector<std::int32_t> positions{0, static_cast<std::int32_t>(seq / 2),
                                              static_cast<std::int32_t>(seq - 1)};
    const auto q = cycled(rows * Hq * hd, in.a, 1.0), k = cycled(rows * seq * Hkv * hd, in.b2, 1.0);
    const auto v = cycled(rows * seq * Hkv * hd, in.c, 1.0);
    const auto run = [&](const auto& be) {
      using BE = std::decay_t<decltype(be)>;
      auto bp = upload(be, positions, rows, 1);  // its own declaration: nvcc rejects one `auto` of several types
      auto bq = upload(be, q, rows, Hq * hd), bk = upload(be, k, rows * seq, Hkv * hd);
      auto bv = upload(be, v, rows * seq, Hkv * hd);
      auto scores = allocate<T>(be, rows * Hq, seq), out = allocate<T>(be, rows, Hq * hd);
      causal_attention_decode<BE, T>(be, as_const(bq.view()), as_const(bk.view()), as_const(bv.view()),
                                     as_const(bp.view().flat()), seq, Hq, Hkv, scores.view(), out.view());
      return to_host(be, out.view());
    };
    rec.values<T>("causal_attention_decode: out", run(b), run(ref));
  });
  guarded("rms_norm", [&] {
    const auto w = cycled(C, in.d, 1.0), dw0 = cycled(C, in.c, 1.0);
    const auto run = [&](const auto& be) {
      using BE = std::decay_t<decltype(be)>;
      auto x = upload(be, in.a, R, C), bw = upload(be, w, C, 1), g = upload(be, in.b2, R, C), dw = upload(be, dw0, C, 1);
      auto out = upload(be, in.a, R, C), inv = allocate<T>(be, R);
      rms_norm_forward<BE, T>(be, as_const(out.view()), as_const(bw.view().flat()), out.view(), inv.view().flat());
      // d_x written over d_out; d_weight accumulated onto what it holds.
      rms_norm_backward<BE, T>(be, as_const(x.view()), as_const(bw.view().flat()), as_const(inv.view().flat()),
                               as_const(g.view()), g.view(), dw.view().flat());
      return std::vector<std::vector<T>>{to_host(be, out.view()), to_host(be, inv.view()), to_host(be, g.view()),
                                         to_host(be, dw.view())};
    };
    const auto got = run(b), want = run(ref);
    const char* names[] = {"rms_norm_forward: out (in place)", "rms_norm_forward: inv_rms",
                           "rms_norm_backward: d_x (over d_out)", "rms_norm_backward: d_weight (accumulated)"};
    for (std::size_t i = 0; i < want.size(); ++i) rec.values<T>(names[i], got[i], want[i]);
  });
  guarded("rope", [&] {
    // Rows of 3 heads of 6 elements at positions that are not the row index (ragged batches, KV caches).
    const std::size_t hd = 6, cols = 3 * hd;
    const auto x = cycled(R * cols, in.a, 1.0);
    std::vector<std::int32_t> pos(R);
    for (std::size_t r = 0; r < R; ++r) pos[r] = static_cast<std::int32_t>((r * 37) % 300);
    const auto run = [&](const auto& be) {
      using BE = std::decay_t<decltype(be)>;
      auto bx = upload(be, x, R, cols), fwd = allocate<T>(be, R, cols);
      auto bp = upload(be, pos, R, 1);
      rope_forward<BE, T>(be, as_const(bx.view()), as_const(bp.view().flat()), hd, fwd.view());
      rope_backward<BE, T>(be, as_const(bx.view()), as_const(bp.view().flat()), hd, bx.view());  // in place
      return std::vector<std::vector<T>>{to_host(be, fwd.view()), to_host(be, bx.view())};
    };
    const auto got = run(b), want = run(ref);
    rec.values<T>("rope_forward", got[0], want[0]);
    rec.values<T>("rope_backward (in place)", got[1], want[1]);
  });
  guarded("swiglu", [&] {
    const auto gate = cycled(N, in.a, 4.0);  // sigmoids from saturated to linear
    const auto run = [&](const auto& be) {
      using BE = std::decay_t<decltype(be)>;
      auto g = upload(be, gate, R, C), u = upload(be, in.b2, R, C), d = upload(be, in.c, R, C);
      auto out = allocate<T>(be, R, C), dg = allocate<T>(be, R, C);
      swiglu_forward<BE, T>(be, as_const(g.view()), as_const(u.view()), out.view());
      // d_up written over d_out.
      swiglu_backward<BE, T>(be, as_const(g.view()), as_const(u.view()), as_const(d.view()), dg.view(), d.view());
      return std::vector<std::vector<T>>{to_host(be, out.view()), to_host(be, dg.view()), to_host(be, d.view())};
    };
    const auto got = run(b), want = run(ref);
    rec.values<T>("swiglu_forward", got[0], want[0]);
    rec.values<T>("swiglu_backward: d_gate", got[1], want[1]);
    rec.values<T>("swiglu_backward: d_up (over d_out)", got[2], want[2]);
  });
  return report;
}

}  // namespace rlhf::testing
