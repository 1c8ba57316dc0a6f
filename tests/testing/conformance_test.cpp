// The conformance suite: every backend built into the tests passes it in float and double, and it
// catches a backend whose primitive is wrong: a broken reverse recurrence shows up in the primitive's
// own check and again in GAE, which runs on it.
#include "rlhf/testing/conformance.hpp"

#include <string>
#include <typeinfo>
#include <type_traits>

#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace broken_ns {
// A backend whose reverse recurrence is wrong at one column: it computes y[t] = x[t] + a[t] * y[t+1]
// except that it drops a[t] at t = cols - 2.
struct broken_recurrence_backend : reference_backend {
  template <class T>
  void reverse_linear_recurrence(matrix_view<T, host_space> out, std::type_identity_t<matrix_view<const T, host_space>> a,
                                 std::type_identity_t<matrix_view<const T, host_space>> x) const {
    reference_backend::reverse_linear_recurrence(out, a, x);
    for (std::size_t r = 0; r < out.rows; ++r) out(r, out.cols - 2) = x(r, out.cols - 2) + out(r, out.cols - 1);
  }
};
// A backend whose transform_reduce starts from 0 instead of `init` (wrong for a max, or a count with a
// non-zero start): the ranking loss's input validation then trips inside the suite.
struct zero_init_reduce_backend : reference_backend {
  template <class Acc, class Op, class F, class In0, class... In>
  Acc transform_reduce(Acc, Op op, F f, vector_view<In0, host_space> in0, vector_view<In, host_space>... in) const {
    return reference_backend::transform_reduce(Acc(0), op, f, in0, in...);
  }
};
// A backend whose one-pass advantages kernel (a hook, not a primitive) gets the moments' mean wrong.
struct wrong_advantages_backend : reference_backend {};
template <class T>
void rlhf_specialized_k1_kl_penalized_advantages(
    const wrong_advantages_backend&, matrix_view<const T, host_space> logp, matrix_view<const T, host_space> ref_logp,
    matrix_view<const T, host_space> values, matrix_view<const mask_type, host_space> mask,
    vector_view<const T, host_space> shaped_scores, matrix_view<T, host_space> kl, matrix_view<T, host_space> rewards,
    matrix_view<T, host_space> advantages, matrix_view<T, host_space> returns, T beta, int placement, T gamma,
    T lambda, double& kl_total, std::size_t& valid_tokens, double& scored_sum, std::size_t& scored_rows,
    masked_moments& moments) {
  kl_penalized_advantages_options o;  // the scores are already shaped: no clip, no penalty here
  o.rewards.beta = static_cast<double>(beta);
  o.rewards.placement = static_cast<score_placement>(placement);
  o.gae = {static_cast<double>(gamma), static_cast<double>(lambda)};
  const auto st = kl_penalized_advantages<reference_backend, T>(reference_backend{}, logp, ref_logp, shaped_scores,
                                                                values, mask, {}, kl, rewards, advantages, returns, o);
  kl_total = st.rewards.mean_kl * static_cast<double>(st.rewards.valid_tokens);
  valid_tokens = st.rewards.valid_tokens;
  scored_sum = st.rewards.mean_score * static_cast<double>(st.rewards.scored_rows);
  scored_rows = st.rewards.scored_rows;
  moments = st.advantages;
  moments.mean += 0.5;  // the defect
}
// A backend whose for_each_index with a work hint (an optional primitive) skips the last index.
struct skipping_hint_backend : reference_backend {
  using reference_backend::for_each_index;
  template <class F>
  void for_each_index(std::size_t n, F f, std::size_t) const {
    if (n > 0) reference_backend::for_each_index(n - 1, f);
  }
};
// A backend whose attention backward kernel (a hook) leaves d_v at 0.
struct wrong_attention_backend : reference_backend {};
template <class T>
void rlhf_specialized_causal_attention_backward(const wrong_attention_backend&, matrix_view<const T, host_space> q,
                                                matrix_view<const T, host_space> k, matrix_view<const T, host_space> v,
                                                matrix_view<const T, host_space> probs,
                                                matrix_view<const T, host_space> d_out, std::size_t batch,
                                                std::size_t n_heads, std::size_t n_kv_heads,
                                                matrix_view<T, host_space> d_q, matrix_view<T, host_space> d_k,
                                                matrix_view<T, host_space> d_v,
                                                vector_view<const std::int32_t, host_space> lengths) {
  const reference_backend ref;
  causal_attention_backward<reference_backend, T>(ref, q, k, v, probs, d_out, batch, n_heads, n_kv_heads, d_q, d_k,
                                                  d_v, lengths);
  ref.fill(d_v.flat(), 0);  // the defect
}
}  // namespace broken_ns

TEMPLATE_LIST_TEST_CASE("conformance: every backend in the tests passes the suite", "[testing][conformance]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  testing::conformance_options o;
  o.name = Catch::Detail::stringify(typeid(B).name());
  const testing::conformance_report r = testing::check_conformance<T>(b, o);
  INFO(r.summary());
  CHECK(r.ok());
  CHECK(r.checks >= 67);  // every check ran (docs/backends.md lists them)
  CHECK(r.summary().find("all passed") != std::string::npos);
  // Other shapes and seeds: a single-column remainder, more rows than a vector register.
  o.rows = 19;
  o.cols = 2;
  o.seed = 7;
  const testing::conformance_report small = testing::check_conformance<T>(b, o);
  INFO(small.summary());
  CHECK(small.ok());
}

TEST_CASE("conformance: a wrong primitive is reported, naming the primitive and what depends on it",
          "[testing][conformance]") {
  const broken_ns::broken_recurrence_backend b;
  const testing::conformance_report r = testing::check_conformance<double>(b, {.name = "broken"});
  CHECK_FALSE(r.ok());
  const std::string s = r.summary();
  INFO(s);
  CHECK(s.find("broken: ") == 0);
  CHECK(s.find("reverse_linear_recurrence: element") != std::string::npos);
  CHECK(s.find("gae: advantages") != std::string::npos);
  CHECK(s.find("ppo_clip_loss") == std::string::npos);  // what does not depend on it still passes
  const testing::conformance_report bad = testing::check_conformance<float>(b, {.rows = 2});
  CHECK(bad.failures.size() == 1);
  CHECK(bad.failures[0].check == "options");
}

TEST_CASE("conformance: a check that throws is reported as that check's failure, not thrown",
          "[testing][conformance]") {
  const broken_ns::zero_init_reduce_backend b;
  testing::conformance_report r;
  REQUIRE_NOTHROW(r = testing::check_conformance<float>(b));
  INFO(r.summary());
  CHECK_FALSE(r.ok());
  CHECK(r.summary().find("threw: rlhf::") != std::string::npos);
}

TEST_CASE("conformance: a backend's wrong kernel (a hook) is reported under its algorithm", "[testing][conformance]") {
  static_assert(detail::k1_kl_advantages_backend<broken_ns::wrong_advantages_backend, double>);
  const broken_ns::wrong_advantages_backend b;
  const testing::conformance_report r = testing::check_conformance<double>(b, {.name = "wrong hook"});
  const std::string s = r.summary();
  INFO(s);
  CHECK_FALSE(r.ok());
  CHECK(s.find("kl_penalized_advantages: mean") != std::string::npos);
  CHECK(s.find("kl_penalized_advantages: advantages") == std::string::npos);  // the values themselves are right
  CHECK(s.find("gae:") == std::string::npos);
}

TEST_CASE("conformance: a wrong optional primitive and a wrong layer kernel are reported by name",
          "[testing][conformance]") {
  STATIC_REQUIRE(detail::has_weighted_for_each_index<broken_ns::skipping_hint_backend>);
  const testing::conformance_report hint = testing::check_conformance<double>(broken_ns::skipping_hint_backend{});
  INFO(hint.summary());
  CHECK(hint.summary().find("for_each_index (with a work hint): element") != std::string::npos);
  CHECK(hint.summary().find("\n  for_each_index: element") == std::string::npos);  // the plain form is right

  const testing::conformance_report att = testing::check_conformance<float>(broken_ns::wrong_attention_backend{});
  const std::string s = att.summary();
  INFO(s);
  CHECK(att.failures.size() == 1);
  CHECK(s.find("causal_attention_backward: d_v") != std::string::npos);
}
