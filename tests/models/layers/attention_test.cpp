// rlhf::causal_attention_forward / causal_attention_backward: hand-computed two-token cases (with and
// without grouped-query heads), a naive host oracle over random ragged batches, the online-softmax path
// (no probs), finite differences of all three gradients, large scores, and argument errors; the decode
// attention over a key/value cache against the last row of the full attention, and its argument errors. The
// training pair that saves row logsumexps instead of the softmax (causal_attention_forward_logsumexp /
// causal_attention_backward_recompute) is held to the same oracle, the saved-softmax backward and finite
// differences.
#include "test_support.hpp"

#include <cmath>
#include <limits>

#include "rlhf/models/layers/attention.hpp"

using namespace rlhf;
using namespace rlhf::test;
using Catch::Matchers::Contains;

namespace {

// Tolerances of the comparison with the double oracle: float accumulates the weighted value sums in float.
template <class T>
constexpr double att_rtol = std::is_same_v<T, float> ? 1e-4 : 1e-11;
template <class T>
constexpr double att_atol = std::is_same_v<T, float> ? 1e-5 : 1e-12;

struct att_shape {
  std::size_t batch, seq, n_heads, n_kv_heads, head_dim;
  std::size_t rows() const { return batch * seq; }
  std::size_t qcols() const { return n_heads * head_dim; }
  std::size_t kvcols() const { return n_kv_heads * head_dim; }
};

struct att_oracle {
  std::vector<double> out, probs, logsumexp;
};

/// Straight from the definition: scores, masked max-subtracted softmax, weighted sum; one (b, h, i) at a time.
att_oracle oracle_attention(const att_shape& s, const std::vector<double>& q, const std::vector<double>& k,
                            const std::vector<double>& v, const std::vector<std::int32_t>& lengths) {
  const std::size_t T = s.seq, hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
  att_oracle o{std::vector<double>(s.rows() * s.qcols(), 0.0), std::vector<double>(s.batch * s.n_heads * T * T, 0.0),
               std::vector<double>(s.batch * s.n_heads * T, 0.0)};
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (std::size_t b = 0; b < s.batch; ++b) {
    const std::size_t len = lengths.empty() ? T : static_cast<std::size_t>(lengths[b]);
    for (std::size_t h = 0; h < s.n_heads; ++h) {
      const std::size_t kvh = h / group;
      for (std::size_t i = 0; i < T; ++i) {
        std::vector<double> sc(T, 0.0);
        std::vector<bool> vis(T, false);
        double m = -std::numeric_limits<double>::infinity();
        for (std::size_t j = 0; j < T; ++j) {
          vis[j] = j <= i && j < len;
          if (!vis[j]) continue;
          double dot = 0;
          for (std::size_t d = 0; d < hd; ++d)
            dot += q[(b * T + i) * s.qcols() + h * hd + d] * k[(b * T + j) * s.kvcols() + kvh * hd + d];
          sc[j] = dot * scale;
          m = std::max(m, sc[j]);
        }
        double z = 0;
        for (std::size_t j = 0; j < T; ++j)
          if (vis[j]) z += std::exp(sc[j] - m);
        if (z > 0) o.logsumexp[(b * s.n_heads + h) * T + i] = m + std::log(z);
        for (std::size_t j = 0; j < T; ++j) {
          const double p = vis[j] ? std::exp(sc[j] - m) / z : 0.0;
          o.probs[((b * s.n_heads + h) * T + i) * T + j] = p;
          for (std::size_t d = 0; d < hd; ++d)
            o.out[(b * T + i) * s.qcols() + h * hd + d] += p * v[(b * T + j) * s.kvcols() + kvh * hd + d];
        }
      }
    }
  }
  return o;
}

/// What a backend's parallel loops must reproduce bit for bit: the Eigen backend's own kernels on one thread
/// (their arithmetic is not the generic loops'); for every other backend the generic loops on the serial
/// reference backend.
template <class B>
reference_backend serial_twin(const B&) {
  return {};
}
#if RLHF_TEST_HAS_EIGEN
inline eigen_backend serial_twin(const eigen_backend&) { return eigen_backend(1); }
#endif

// The hand-computed two-token case (see its test case for the arithmetic): q, k, v and d_out on the backend.
template <class T, class B>
auto two_token_inputs(const B& b) {
  return std::tuple{to_backend(b, std::vector<T>{1, 0, 1, 0}, 2, 2),
                    to_backend(b, std::vector<T>{0, static_cast<T>(std::log(2.0))}, 2, 1),
                    to_backend(b, std::vector<T>{3, 6}, 2, 1), to_backend(b, std::vector<T>{1, 0, 1, 0}, 2, 2)};
}

// Its hand-computed output and gradients, whichever backward produced them.
template <class T, class B, class M>
void check_two_token_results(const B& b, const M& out, const M& dq, const M& dk, const M& dv) {
  CHECK_THAT(to_host(b, out.view()), close_to<T>(std::vector<double>{3, 3, 5, 4.5}, att_rtol<T>, att_atol<T>));
  CHECK_THAT(to_host(b, dv.view()), close_to<T>(std::vector<double>{4.0 / 3, 2.0 / 3}, att_rtol<T>, att_atol<T>));
  CHECK_THAT(to_host(b, dk.view()), close_to<T>(std::vector<double>{-2.0 / 3, 2.0 / 3}, att_rtol<T>, att_atol<T>));
  CHECK_THAT(to_host(b, dq.view()),
             close_to<T>(std::vector<double>{0, 0, 2.0 / 3 * std::log(2.0), 0}, att_rtol<T>, att_atol<T>));
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("attention: hand-computed two-token case, grouped-query heads",
                        "[models][layers][attention]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // One sequence of 2 tokens, Hq = 2 query heads sharing Hkv = 1 kv head, head_dim 1 (scale 1).
  // Keys k = [0, ln 2], values v = [3, 6].
  // Head 0, q = [1, 1]: query 0 sees key 0 only -> out 3; query 1 scores [0, ln 2] -> p = [1/3, 2/3],
  //   out = 3/3 + 2 * 6/3 = 5.
  // Head 1, q = [0, 0]: query 1 scores [0, 0] -> p = [1/2, 1/2], out = 4.5.
  // d_out = 1 at head 0 only: dv_0 = p(h0: 0,0) + p(h0: 1,0) = 1 + 1/3, dv_1 = 2/3.
  // dq (head 0, query 1) = sum_j p_j (v_j - out) k_j = 1/3 (3 - 5) 0 + 2/3 (6 - 5) ln 2 = (2/3) ln 2.
  // dk = sum_i dS_ij q_i: dS_10 = 1/3 (3 - 5) = -2/3, dS_11 = 2/3 (6 - 5) = 2/3 (query 0: dS_00 = 1 (3 - 3) = 0);
  //   dk_0 = -2/3 * 1 = -2/3, dk_1 = 2/3 * 1 = 2/3 (head 1 has no output gradient).
  auto [q, k, v, d_out] = two_token_inputs<T>(b);
  auto out = allocate<T>(b, 2, 2);
  auto probs = allocate<T>(b, 4, 2);
  causal_attention_forward(b, q.view(), k.view(), v.view(), 1, 2, 1, out.view(), probs.view());
  // probs rows: (h0, i0), (h0, i1), (h1, i0), (h1, i1).
  CHECK_THAT(to_host(b, probs.view()),
             close_to<T>(std::vector<double>{1, 0, 1.0 / 3, 2.0 / 3, 1, 0, 0.5, 0.5}, att_rtol<T>, att_atol<T>));
  auto dq = allocate<T>(b, 2, 2), dk = allocate<T>(b, 2, 1), dv = allocate<T>(b, 2, 1);
  causal_attention_backward(b, q.view(), k.view(), v.view(), probs.view(), d_out.view(), 1, 2, 1, dq.view(), dk.view(),
                            dv.view());
  check_two_token_results<T>(b, out, dq, dk, dv);
}

TEMPLATE_LIST_TEST_CASE("attention: random ragged batches match the naive oracle, with and without probs",
                        "[models][layers][attention]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(321);
  const std::vector<att_shape> shapes{{2, 5, 4, 2, 6}, {3, 4, 2, 2, 4}, {1, 7, 4, 1, 8}, {2, 1, 3, 3, 2}};
  for (const auto& s : shapes) {
    for (int with_lengths = 0; with_lengths < 2; ++with_lengths) {
      const auto q = normal<T>(g, s.rows() * s.qcols()), k = normal<T>(g, s.rows() * s.kvcols()),
                 v = normal<T>(g, s.rows() * s.kvcols());
      std::vector<std::int32_t> lengths;
      if (with_lengths) {
        for (auto n : random_lengths(g, s.batch, s.seq)) lengths.push_back(static_cast<std::int32_t>(n));
        lengths[0] = 0;  // a sequence with no valid token: zero output and probabilities
      }
      const auto want = oracle_attention(s, cast<double>(q), cast<double>(k), cast<double>(v), lengths);
      auto bq = to_backend(b, q, s.rows(), s.qcols());
      auto bk = to_backend(b, k, s.rows(), s.kvcols());
      auto bv = to_backend(b, v, s.rows(), s.kvcols());
      auto bl = to_backend(b, lengths.empty() ? std::vector<std::int32_t>{0} : lengths);
      const backend_vector<decltype(b), const std::int32_t> lv =
          lengths.empty() ? backend_vector<decltype(b), const std::int32_t>{} : bl.view().flat();
      auto out = allocate_filled<T>(b, s.rows(), s.qcols(), T(99));
      auto probs = allocate_filled<T>(b, s.batch * s.n_heads * s.seq, s.seq, T(99));
      causal_attention_forward(b, bq.view(), bk.view(), bv.view(), s.batch, s.n_heads, s.n_kv_heads, out.view(),
                               probs.view(), lv);
      CHECK_THAT(to_host(b, out.view()), close_to<T>(want.out, att_rtol<T>, att_atol<T>));
      CHECK_THAT(to_host(b, probs.view()), close_to<T>(want.probs, att_rtol<T>, att_atol<T>));
      // Online softmax (no probs wanted): same output.
      auto out2 = allocate_filled<T>(b, s.rows(), s.qcols(), T(99));
      causal_attention_forward(b, bq.view(), bk.view(), bv.view(), s.batch, s.n_heads, s.n_kv_heads, out2.view(), {},
                               lv);
      CHECK_THAT(to_host(b, out2.view()), close_to<T>(want.out, att_rtol<T>, att_atol<T>));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("attention: large scores do not overflow (max-subtracted softmax)",
                        "[models][layers][attention]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // head_dim 4, scale 1/2; q . k of 4 * 100 * 10 = 4000 -> score 2000 and more: exp would overflow.
  const att_shape s{1, 3, 1, 1, 4};
  std::vector<T> q(12, T(100)), k(12), v{1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
  for (std::size_t j = 0; j < 3; ++j)
    for (std::size_t d = 0; d < 4; ++d) k[j * 4 + d] = static_cast<T>(10.0 + 0.001 * static_cast<double>(j));
  const auto want = oracle_attention(s, cast<double>(q), cast<double>(k), cast<double>(v), {});
  auto bq = to_backend(b, q, 3, 4), bk = to_backend(b, k, 3, 4), bv = to_backend(b, v, 3, 4);
  auto out = allocate<T>(b, 3, 4), probs = allocate<T>(b, 3, 3), out2 = allocate<T>(b, 3, 4);
  causal_attention_forward(b, bq.view(), bk.view(), bv.view(), 1, 1, 1, out.view(), probs.view());
  causal_attention_forward(b, bq.view(), bk.view(), bv.view(), 1, 1, 1, out2.view(), {});
  // Float rounds the scores (~2000) to 1e-4, which moves the probabilities by about that much.
  const double rt = std::is_same_v<T, float> ? 1e-3 : 1e-9;
  CHECK_THAT(to_host(b, out.view()), close_to<T>(want.out, rt, rt));
  CHECK_THAT(to_host(b, out2.view()), close_to<T>(want.out, rt, rt));
  for (T x : to_host(b, probs.view())) CHECK(std::isfinite(static_cast<double>(x)));
}

TEMPLATE_LIST_TEST_CASE("attention: backward matches finite differences (GQA, ragged lengths)",
                        "[models][layers][attention][gradient]", double_configs) {
  const auto b = TestType::make();
  auto g = rng(322);
  for (const auto& item : std::vector<std::pair<att_shape, std::vector<std::int32_t>>>{{{2, 5, 4, 2, 6}, {5, 3}},
                                                                                      {{2, 4, 2, 1, 3}, {}},
                                                                                      {{3, 3, 3, 3, 2}, {0, 2, 1}}}) {
    const att_shape& s = item.first;  // named variables, not a structured binding: lambdas capture them
    const std::vector<std::int32_t>& lengths = item.second;
    const auto q0 = normal<double>(g, s.rows() * s.qcols()), k0 = normal<double>(g, s.rows() * s.kvcols()),
               v0 = normal<double>(g, s.rows() * s.kvcols());
    const auto gout = uniform<double>(g, s.rows() * s.qcols());
    auto bl = to_backend(b, lengths.empty() ? std::vector<std::int32_t>{0} : lengths);
    const backend_vector<decltype(b), const std::int32_t> lv =
        lengths.empty() ? backend_vector<decltype(b), const std::int32_t>{} : bl.view().flat();
    const auto loss = [&](const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v) {
      auto bq = to_backend(b, q, s.rows(), s.qcols());
      auto bk = to_backend(b, k, s.rows(), s.kvcols());
      auto bv = to_backend(b, v, s.rows(), s.kvcols());
      auto out = allocate<double>(b, s.rows(), s.qcols());
      causal_attention_forward(b, bq.view(), bk.view(), bv.view(), s.batch, s.n_heads, s.n_kv_heads, out.view(), {},
                               lv);
      const auto o = to_host(b, out.view());
      double r = 0;
      for (std::size_t i = 0; i < o.size(); ++i) r += o[i] * gout[i];
      return r;
    };
    auto bq = to_backend(b, q0, s.rows(), s.qcols());
    auto bk = to_backend(b, k0, s.rows(), s.kvcols());
    auto bv = to_backend(b, v0, s.rows(), s.kvcols());
    auto out = allocate<double>(b, s.rows(), s.qcols());
    auto probs = allocate<double>(b, s.batch * s.n_heads * s.seq, s.seq);
    causal_attention_forward(b, bq.view(), bk.view(), bv.view(), s.batch, s.n_heads, s.n_kv_heads, out.view(),
                             probs.view(), lv);
    auto bg = to_backend(b, gout, s.rows(), s.qcols());
    auto dq = allocate_filled<double>(b, s.rows(), s.qcols(), 7.0);  // written, not accumulated
    auto dk = allocate_filled<double>(b, s.rows(), s.kvcols(), 7.0);
    auto dv = allocate_filled<double>(b, s.rows(), s.kvcols(), 7.0);
    causal_attention_backward(b, bq.view(), bk.view(), bv.view(), probs.view(), bg.view(), s.batch, s.n_heads,
                              s.n_kv_heads, dq.view(), dk.view(), dv.view(), lv);
    const auto fd_q = numeric_gradient([&](const std::vector<double>& x) { return loss(x, k0, v0); }, q0);
    const auto fd_k = numeric_gradient([&](const std::vector<double>& x) { return loss(q0, x, v0); }, k0);
    const auto fd_v = numeric_gradient([&](const std::vector<double>& x) { return loss(q0, k0, x); }, v0);
    CHECK_THAT(to_host(b, dq.view()), close_to<double>(fd_q, fd_rtol, fd_atol));
    CHECK_THAT(to_host(b, dk.view()), close_to<double>(fd_k, fd_rtol, fd_atol));
    CHECK_THAT(to_host(b, dv.view()), close_to<double>(fd_v, fd_rtol, fd_atol));
    // Deterministic: a second backward gives the same bits.
    auto dq2 = allocate<double>(b, s.rows(), s.qcols()), dk2 = allocate<double>(b, s.rows(), s.kvcols()),
         dv2 = allocate<double>(b, s.rows(), s.kvcols());
    causal_attention_backward(b, bq.view(), bk.view(), bv.view(), probs.view(), bg.view(), s.batch, s.n_heads,
                              s.n_kv_heads, dq2.view(), dk2.view(), dv2.view(), lv);
    CHECK(to_host(b, dq2.view()) == to_host(b, dq.view()));
    CHECK(to_host(b, dk2.view()) == to_host(b, dk.view()));
    CHECK(to_host(b, dv2.view()) == to_host(b, dv.view()));
  }
}

TEMPLATE_LIST_TEST_CASE("attention: logsumexp forward and recomputing backward (hand-computed, oracle, saved softmax)",
                        "[models][layers][attention]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  {
    // The hand-computed case above: head 0 scores [0] then [0, ln 2], head 1 [0] then [0, 0], so the row
    // logsumexps are 0, ln 3, 0, ln 2; the recomputed backward gives the same hand values.
    auto [q, k, v, d_out] = two_token_inputs<T>(b);
    auto out = allocate<T>(b, 2, 2);
    auto lse = allocate_filled<T>(b, 4, 1, T(99));
    causal_attention_forward_logsumexp(b, q.view(), k.view(), v.view(), 1, 2, 1, out.view(), lse.view().flat());
    CHECK_THAT(to_host(b, lse.view()),
               close_to<T>(std::vector<double>{0, std::log(3.0), 0, std::log(2.0)}, att_rtol<T>, att_atol<T>));
    auto dq = allocate<T>(b, 2, 2), dk = allocate<T>(b, 2, 1), dv = allocate<T>(b, 2, 1);
    causal_attention_backward_recompute(b, q.view(), k.view(), v.view(), lse.view().flat(), d_out.view(), 1, 2, 1,
                                        dq.view(), dk.view(), dv.view());
    check_two_token_results<T>(b, out, dq, dk, dv);
  }
  // Random ragged batches (a sequence of length 0 included; T = 70 and 130 span several query blocks of the
  // kernels that work in blocks): the oracle's output and logsumexp, and the saved-softmax backward's gradients.
  auto g = rng(324);
  for (const att_shape& s : std::vector<att_shape>{{3, 70, 4, 2, 6}, {2, 130, 2, 1, 4}, {2, 5, 3, 3, 2}}) {
    const auto q = normal<T>(g, s.rows() * s.qcols()), k = normal<T>(g, s.rows() * s.kvcols()),
               v = normal<T>(g, s.rows() * s.kvcols()), dout = normal<T>(g, s.rows() * s.qcols());
    std::vector<std::int32_t> lengths;
    for (auto n : random_lengths(g, s.batch, s.seq)) lengths.push_back(static_cast<std::int32_t>(n));
    lengths[0] = 0;
    const auto want = oracle_attention(s, cast<double>(q), cast<double>(k), cast<double>(v), lengths);
    auto bq = to_backend(b, q, s.rows(), s.qcols()), bk = to_backend(b, k, s.rows(), s.kvcols()),
         bv = to_backend(b, v, s.rows(), s.kvcols()), bd = to_backend(b, dout, s.rows(), s.qcols());
    auto bl = to_backend(b, lengths);
    auto out = allocate_filled<T>(b, s.rows(), s.qcols(), T(99));
    auto lse = allocate_filled<T>(b, s.batch * s.n_heads * s.seq, 1, T(99));
    causal_attention_forward_logsumexp(b, bq.view(), bk.view(), bv.view(), s.batch, s.n_heads, s.n_kv_heads,
                                       out.view(), lse.view().flat(), bl.view().flat());
    CHECK_THAT(to_host(b, out.view()), close_to<T>(want.out, att_rtol<T>, att_atol<T>));
    CHECK_THAT(to_host(b, lse.view()), close_to<T>(want.logsumexp, att_rtol<T>, att_atol<T>));
    auto probs = allocate<T>(b, s.batch * s.n_heads * s.seq, s.seq), out2 = allocate<T>(b, s.rows(), s.qcols());
    causal_attention_forward(b, bq.view(), bk.view(), bv.view(), s.batch, s.n_heads, s.n_kv_heads, out2.view(),
                             probs.view(), bl.view().flat());
    std::vector<std::vector<T>> grads[2];
    for (int recompute = 0; recompute < 2; ++recompute) {
      auto dq = allocate_filled<T>(b, s.rows(), s.qcols(), T(7));
      auto dk = allocate_filled<T>(b, s.rows(), s.kvcols(), T(7));
      auto dv = allocate_filled<T>(b, s.rows(), s.kvcols(), T(7));
      if (recompute)
        causal_attention_backward_recompute(b, bq.view(), bk.view(), bv.view(), lse.view().flat(), bd.view(), s.batch,
                                            s.n_heads, s.n_kv_heads, dq.view(), dk.view(), dv.view(), bl.view().flat());
      else
        causal_attention_backward(b, bq.view(), bk.view(), bv.view(), probs.view(), bd.view(), s.batch, s.n_heads,
                                  s.n_kv_heads, dq.view(), dk.view(), dv.view(), bl.view().flat());
      grads[recompute] = {to_host(b, dq.view()), to_host(b, dk.view()), to_host(b, dv.view())};
    }
    // Float: the saved softmax is rounded to float, the recomputed one is not; they differ by that rounding.
    const double rt = std::is_same_v<T, float> ? 1e-3 : 1e-10, at = std::is_same_v<T, float> ? 1e-4 : 1e-11;
    for (std::size_t i = 0; i < 3; ++i) CHECK_THAT(grads[1][i], close_to<T>(cast<double>(grads[0][i]), rt, at));
  }
}

TEMPLATE_LIST_TEST_CASE("attention: recomputing backward matches finite differences (GQA, ragged lengths)",
                        "[models][layers][attention][gradient]", double_configs) {
  const auto b = TestType::make();
  auto g = rng(325);
  const att_shape s{3, 6, 4, 2, 3};
  const std::vector<std::int32_t> lengths{6, 0, 4};
  const auto q0 = normal<double>(g, s.rows() * s.qcols()), k0 = normal<double>(g, s.rows() * s.kvcols()),
             v0 = normal<double>(g, s.rows() * s.kvcols()), gout = uniform<double>(g, s.rows() * s.qcols());
  auto bl = to_backend(b, lengths);
  const auto forward = [&](const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v,
                           auto& out, auto& lse) {
    auto bq = to_backend(b, q, s.rows(), s.qcols()), bk = to_backend(b, k, s.rows(), s.kvcols()),
         bv = to_backend(b, v, s.rows(), s.kvcols());
    causal_attention_forward_logsumexp(b, bq.view(), bk.view(), bv.view(), s.batch, s.n_heads, s.n_kv_heads,
                                       out.view(), lse.view().flat(), bl.view().flat());
  };
  const auto loss = [&](const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& v) {
    auto out = allocate<double>(b, s.rows(), s.qcols());
    auto lse = allocate<double>(b, s.batch * s.n_heads * s.seq, 1);
    forward(q, k, v, out, lse);
    const auto o = to_host(b, out.view());
    double r = 0;
    for (std::size_t i = 0; i < o.size(); ++i) r += o[i] * gout[i];
    return r;
  };
  auto out = allocate<double>(b, s.rows(), s.qcols());
  auto lse = allocate<double>(b, s.batch * s.n_heads * s.seq, 1);
  forward(q0, k0, v0, out, lse);
  auto bq = to_backend(b, q0, s.rows(), s.qcols()), bk = to_backend(b, k0, s.rows(), s.kvcols()),
       bv = to_backend(b, v0, s.rows(), s.kvcols()), bg = to_backend(b, gout, s.rows(), s.qcols());
  auto dq = allocate_filled<double>(b, s.rows(), s.qcols(), 7.0);
  auto dk = allocate_filled<double>(b, s.rows(), s.kvcols(), 7.0);
  auto dv = allocate_filled<double>(b, s.rows(), s.kvcols(), 7.0);
  causal_attention_backward_recompute(b, bq.view(), bk.view(), bv.view(), lse.view().flat(), bg.view(), s.batch,
                                      s.n_heads, s.n_kv_heads, dq.view(), dk.view(), dv.view(), bl.view().flat());
  CHECK_THAT(to_host(b, dq.view()),
             close_to<double>(numeric_gradient([&](const std::vector<double>& x) { return loss(x, k0, v0); }, q0),
                              fd_rtol, fd_atol));
  CHECK_THAT(to_host(b, dk.view()),
             close_to<double>(numeric_gradient([&](const std::vector<double>& x) { return loss(q0, x, v0); }, k0),
                              fd_rtol, fd_atol));
  CHECK_THAT(to_host(b, dv.view()),
             close_to<double>(numeric_gradient([&](const std::vector<double>& x) { return loss(q0, k0, x); }, v0),
                              fd_rtol, fd_atol));
}

TEMPLATE_LIST_TEST_CASE("attention: argument errors name the function and the argument",
                        "[models][layers][attention][errors]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // batch 2, T 3, Hq 4, Hkv 2, hd 2.
  auto q = allocate_filled<T>(b, 6, 8, T(0));
  auto k = allocate_filled<T>(b, 6, 4, T(0));
  auto v = allocate_filled<T>(b, 6, 4, T(0));
  auto out = allocate<T>(b, 6, 8);
  auto probs = allocate<T>(b, 24, 3);
  auto lengths = to_backend(b, std::vector<std::int32_t>{3, 1});
  causal_attention_forward(b, q.view(), k.view(), v.view(), 2, 4, 2, out.view(), probs.view(),
                           lengths.view().flat());  // fine
  const char* fwd = "rlhf::causal_attention_forward";
  CHECK_THROWS_WITH(causal_attention_forward(b, q.view(), k.view(), v.view(), 2, 4, 3, out.view(), probs.view()),
                    Contains(fwd) && Contains("'n_kv_heads'") && Contains("dividing 'n_heads' (4)") &&
                        Contains("received 3"));
  CHECK_THROWS_WITH(causal_attention_forward(b, q.view(), k.view(), v.view(), 2, 4, 0, out.view(), probs.view()),
                    Contains("'n_kv_heads'"));
  CHECK_THROWS_WITH(causal_attention_forward(b, q.view(), k.view(), v.view(), 2, 0, 1, out.view(), probs.view()),
                    Contains("'n_heads'"));
  CHECK_THROWS_WITH(causal_attention_forward(b, q.view(), k.view(), v.view(), 4, 4, 2, out.view(), probs.view()),
                    Contains(fwd) && Contains("'batch'"));
  CHECK_THROWS_WITH(causal_attention_forward(b, q.view(), k.view(), v.view(), 2, 3, 1, out.view(), probs.view()),
                    Contains(fwd) && Contains("'q'"));
  auto k_bad = allocate_filled<T>(b, 6, 8, T(0));
  CHECK_THROWS_WITH(causal_attention_forward(b, q.view(), k_bad.view(), v.view(), 2, 4, 2, out.view(), probs.view()),
                    Contains(fwd) && Contains("'k'") && Contains("[6, 4]") && Contains("received [6, 8]"));
  CHECK_THROWS_WITH(causal_attention_forward(b, q.view(), k.view(), k_bad.view(), 2, 4, 2, out.view(), probs.view()),
                    Contains("'v'"));
  auto out_bad = allocate<T>(b, 6, 4);
  CHECK_THROWS_WITH(causal_attention_forward(b, q.view(), k.view(), v.view(), 2, 4, 2, out_bad.view(), probs.view()),
                    Contains("'out'"));
  auto probs_bad = allocate<T>(b, 24, 4);
  CHECK_THROWS_WITH(causal_attention_forward(b, q.view(), k.view(), v.view(), 2, 4, 2, out.view(), probs_bad.view()),
                    Contains(fwd) && Contains("'probs'") && Contains("[24, 3]"));
  auto len_bad = to_backend(b, std::vector<std::int32_t>{4, 1});
  CHECK_THROWS_WITH(causal_attention_forward(b, q.view(), k.view(), v.view(), 2, 4, 2, out.view(), probs.view(),
                                             len_bad.view().flat()),
                    Contains(fwd) && Contains("'lengths'") && Contains("[0, 3]"));
  auto len_neg = to_backend(b, std::vector<std::int32_t>{-1, 1});
  CHECK_THROWS_WITH(causal_attention_forward(b, q.view(), k.view(), v.view(), 2, 4, 2, out.view(), probs.view(),
                                             len_neg.view().flat()),
                    Contains("'lengths'"));
  auto len_size = to_backend(b, std::vector<std::int32_t>{3});
  CHECK_THROWS_WITH(causal_attention_forward(b, q.view(), k.view(), v.view(), 2, 4, 2, out.view(), probs.view(),
                                             len_size.view().flat()),
                    Contains("'lengths'") && Contains("size 2"));

  {
    auto nan_v = allocate_filled<T>(b, 6, 4, std::numeric_limits<T>::quiet_NaN());
    set_finite_checks(true);
    CHECK_THROWS_AS(causal_attention_forward(b, q.view(), k.view(), nan_v.view(), 2, 4, 2, out.view(), probs.view()),
                    non_finite_error);
    CHECK_THROWS_WITH(causal_attention_forward(b, q.view(), k.view(), nan_v.view(), 2, 4, 2, out.view(), probs.view()),
                      Contains(fwd) && Contains("'v'"));
    set_finite_checks(false);
  }
  const char* bwd = "rlhf::causal_attention_backward";
  auto dq = allocate<T>(b, 6, 8), dk = allocate<T>(b, 6, 4), dv = allocate<T>(b, 6, 4);
  CHECK_THROWS_WITH(causal_attention_backward(b, q.view(), k.view(), v.view(), {}, out.view(), 2, 4, 2, dq.view(),
                                              dk.view(), dv.view()),
                    Contains(bwd) && Contains("'probs'"));
  CHECK_THROWS_WITH(causal_attention_backward(b, q.view(), k.view(), v.view(), probs.view(), out.view(), 2, 4, 3,
                                              dq.view(), dk.view(), dv.view()),
                    Contains(bwd) && Contains("'n_kv_heads'"));
  CHECK_THROWS_WITH(causal_attention_backward(b, q.view(), k.view(), v.view(), probs.view(), out_bad.view(), 2, 4, 2,
                                              dq.view(), dk.view(), dv.view()),
                    Contains(bwd) && Contains("'d_out'"));
  CHECK_THROWS_WITH(causal_attention_backward(b, q.view(), k.view(), v.view(), probs.view(), out.view(), 2, 4, 2,
                                              out_bad.view(), dk.view(), dv.view()),
                    Contains("'d_q'"));
  CHECK_THROWS_WITH(causal_attention_backward(b, q.view(), k.view(), v.view(), probs.view(), out.view(), 2, 4, 2,
                                              dq.view(), k_bad.view(), dv.view()),
                    Contains("'d_k'"));
  CHECK_THROWS_WITH(causal_attention_backward(b, q.view(), k.view(), v.view(), probs.view(), out.view(), 2, 4, 2,
                                              dq.view(), dk.view(), k_bad.view()),
                    Contains("'d_v'"));

  const char* fwd_lse = "rlhf::causal_attention_forward_logsumexp";
  const char* bwd_re = "rlhf::causal_attention_backward_recompute";
  auto lse = allocate<T>(b, 24, 1), lse_bad = allocate<T>(b, 23, 1);
  causal_attention_forward_logsumexp(b, q.view(), k.view(), v.view(), 2, 4, 2, out.view(), lse.view().flat(),
                                     lengths.view().flat());  // fine
  CHECK_THROWS_WITH(causal_attention_forward_logsumexp(b, q.view(), k.view(), v.view(), 2, 4, 2, out.view(), {}),
                    Contains(fwd_lse) && Contains("'logsumexp'") && Contains("size 24"));
  CHECK_THROWS_WITH(causal_attention_forward_logsumexp(b, q.view(), k.view(), v.view(), 2, 4, 2, out.view(),
                                                       lse_bad.view().flat()),
                    Contains(fwd_lse) && Contains("'logsumexp'") && Contains("size 24") && Contains("23"));
  CHECK_THROWS_WITH(causal_attention_forward_logsumexp(b, q.view(), k.view(), v.view(), 2, 4, 3, out.view(),
                                                       lse.view().flat()),
                    Contains(fwd_lse) && Contains("'n_kv_heads'"));
  CHECK_THROWS_WITH(causal_attention_forward_logsumexp(b, q.view(), k.view(), v.view(), 2, 4, 2, out.view(),
                                                       lse.view().flat(), len_bad.view().flat()),
                    Contains(fwd_lse) && Contains("'lengths'"));
  CHECK_THROWS_WITH(causal_attention_backward_recompute(b, q.view(), k.view(), v.view(), lse_bad.view().flat(),
                                                        out.view(), 2, 4, 2, dq.view(), dk.view(), dv.view()),
                    Contains(bwd_re) && Contains("'logsumexp'") && Contains("size 24"));
  CHECK_THROWS_WITH(causal_attention_backward_recompute(b, q.view(), k.view(), v.view(), lse.view().flat(),
                                                        out.view(), 2, 4, 2, dq.view(), k_bad.view(), dv.view()),
                    Contains(bwd_re) && Contains("'d_k'"));
  {
    auto nan_lse = allocate_filled<T>(b, 24, 1, std::numeric_limits<T>::infinity());
    set_finite_checks(true);
    CHECK_THROWS_WITH(causal_attention_backward_recompute(b, q.view(), k.view(), v.view(), nan_lse.view().flat(),
                                                          out.view(), 2, 4, 2, dq.view(), dk.view(), dv.view()),
                      Contains(bwd_re) && Contains("'logsumexp'"));
    set_finite_checks(false);
  }
}

TEMPLATE_LIST_TEST_CASE("attention: parallel loops give the serial bits",
                        "[models][layers][attention]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  const auto ref = serial_twin(b);
  auto g = rng(323);
  // B * Hq * T = 32768 queries over up to 64 keys: enough work for the Eigen backend to split the loops.
  const att_shape s{128, 64, 4, 4, 2};
  const auto q = normal<T>(g, s.rows() * s.qcols()), k = normal<T>(g, s.rows() * s.kvcols()),
             v = normal<T>(g, s.rows() * s.kvcols()), dout = normal<T>(g, s.rows() * s.qcols());
  std::vector<std::int32_t> lengths;
  for (auto n : random_lengths(g, s.batch, s.seq)) lengths.push_back(static_cast<std::int32_t>(n));
  const auto run = [&](const auto& be) {
    auto bq = to_backend(be, q, s.rows(), s.qcols()), bk = to_backend(be, k, s.rows(), s.kvcols()),
         bv = to_backend(be, v, s.rows(), s.kvcols()), bd = to_backend(be, dout, s.rows(), s.qcols());
    auto bl = to_backend(be, lengths);
    auto out = allocate<T>(be, s.rows(), s.qcols());
    auto probs = allocate<T>(be, s.batch * s.n_heads * s.seq, s.seq);
    causal_attention_forward(be, bq.view(), bk.view(), bv.view(), s.batch, s.n_heads, s.n_kv_heads, out.view(),
                             probs.view(), bl.view().flat());
    auto dq = allocate<T>(be, s.rows(), s.qcols()), dk = allocate<T>(be, s.rows(), s.kvcols()),
         dv = allocate<T>(be, s.rows(), s.kvcols());
    causal_attention_backward(be, bq.view(), bk.view(), bv.view(), probs.view(), bd.view(), s.batch, s.n_heads,
                              s.n_kv_heads, dq.view(), dk.view(), dv.view(), bl.view().flat());
    auto out2 = allocate<T>(be, s.rows(), s.qcols());
    auto lse = allocate<T>(be, s.batch * s.n_heads * s.seq, 1);
    causal_attention_forward_logsumexp(be, bq.view(), bk.view(), bv.view(), s.batch, s.n_heads, s.n_kv_heads,
                                       out2.view(), lse.view().flat(), bl.view().flat());
    auto dq2 = allocate<T>(be, s.rows(), s.qcols()), dk2 = allocate<T>(be, s.rows(), s.kvcols()),
         dv2 = allocate<T>(be, s.rows(), s.kvcols());
    causal_attention_backward_recompute(be, bq.view(), bk.view(), bv.view(), lse.view().flat(), bd.view(), s.batch,
                                        s.n_heads, s.n_kv_heads, dq2.view(), dk2.view(), dv2.view(), bl.view().flat());
    return std::vector<std::vector<T>>{to_host(be, out.view()),  to_host(be, dq.view()),  to_host(be, dk.view()),
                                       to_host(be, dv.view()),   to_host(be, out2.view()), to_host(be, lse.view()),
                                       to_host(be, dq2.view()), to_host(be, dk2.view()), to_host(be, dv2.view())};
  };
  const auto got = run(b), want = run(ref);
  for (std::size_t i = 0; i < want.size(); ++i) CHECK(got[i] == want[i]);
}

TEMPLATE_LIST_TEST_CASE("causal_attention_decode: each row is the last row of the full attention over its prefix",
                        "[models][layers][attention][decode]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(515);
  // 3 rows at positions 0, 4 and 6 of a 7-key cache; 4 query heads sharing 2 kv heads of 3 elements.
  const std::size_t rows = 3, seq = 7, hq = 4, hkv = 2, hd = 3;
  const std::vector<std::int32_t> positions{0, 4, 6};
  const auto q = normal<T>(g, rows * hq * hd), k = normal<T>(g, rows * seq * hkv * hd);
  const auto v = normal<T>(g, rows * seq * hkv * hd);
  auto bq = to_backend(b, q, rows, hq * hd), bk = to_backend(b, k, rows * seq, hkv * hd);
  auto bv = to_backend(b, v, rows * seq, hkv * hd);
  auto bp = to_backend(b, positions);
  auto scores = allocate<T>(b, rows * hq, seq), out = allocate<T>(b, rows, hq * hd);
  causal_attention_decode(b, as_const(bq.view()), as_const(bk.view()), as_const(bv.view()),
                          as_const(bp.view().flat()), seq, hq, hkv, scores.view(), out.view());
  const auto got = to_host(b, out.view());
  for (std::size_t r = 0; r < rows; ++r) {
    // The full attention over the row's prefix of p + 1 tokens, with the row's query at its last position.
    const std::size_t n = static_cast<std::size_t>(positions[r]) + 1;
    std::vector<T> fq(n * hq * hd, T(0)), fk(k.begin() + r * seq * hkv * hd, k.begin() + (r * seq + n) * hkv * hd);
    std::vector<T> fv(v.begin() + r * seq * hkv * hd, v.begin() + (r * seq + n) * hkv * hd);
    std::copy(q.begin() + r * hq * hd, q.begin() + (r + 1) * hq * hd, fq.begin() + (n - 1) * hq * hd);
    auto cq = to_backend(b, fq, n, hq * hd), ck = to_backend(b, fk, n, hkv * hd), cv = to_backend(b, fv, n, hkv * hd);
    auto full = allocate<T>(b, n, hq * hd);
    causal_attention_forward(b, as_const(cq.view()), as_const(ck.view()), as_const(cv.view()), 1, hq, hkv,
                             full.view(), matrix_view<T, typename decltype(b)::memory_space>{});
    const auto all = to_host(b, full.view());
    const std::vector<T> want(all.end() - static_cast<std::ptrdiff_t>(hq * hd), all.end());
    const std::vector<T> row(got.begin() + r * hq * hd, got.begin() + (r + 1) * hq * hd);
    INFO("row " << r << " at position " << positions[r]);
    CHECK_THAT(row, close_to<T>(want, att_rtol<T>, att_atol<T>));
  }
}

TEMPLATE_LIST_TEST_CASE("causal_attention_decode: argument errors name the function and the argument",
                        "[models][layers][attention][decode][errors]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // 2 rows, a cache of 3 positions, Hq 4, Hkv 2, hd 2.
  auto q = allocate_filled<T>(b, 2, 8, T(0));
  auto kc = allocate_filled<T>(b, 6, 4, T(0)), vc = allocate_filled<T>(b, 6, 4, T(0));
  auto scores = allocate<T>(b, 8, 3), out = allocate<T>(b, 2, 8);
  auto pos = to_backend(b, std::vector<std::int32_t>{2, 0});
  const auto call = [&](auto p, std::size_t seq, std::size_t hkv, auto k_view, auto s_view) {
    causal_attention_decode(b, as_const(q.view()), as_const(k_view), as_const(vc.view()), as_const(p), seq, 4, hkv,
                            s_view, out.view());
  };
  call(pos.view().flat(), 3, 2, kc.view(), scores.view());  // fine
  const char* fn = "rlhf::causal_attention_decode";
  auto far = to_backend(b, std::vector<std::int32_t>{3, 0});
  CHECK_THROWS_WITH(call(far.view().flat(), 3, 2, kc.view(), scores.view()),
                    Contains(fn) && Contains("'positions'") && Contains("[0, seq_len = 3)") && Contains("1 outside"));
  auto negative = to_backend(b, std::vector<std::int32_t>{-1, 0});
  CHECK_THROWS_WITH(call(negative.view().flat(), 3, 2, kc.view(), scores.view()), Contains("'positions'"));
  CHECK_THROWS_WITH(call(pos.view().flat(), 3, 3, kc.view(), scores.view()),
                    Contains(fn) && Contains("'n_kv_heads'") && Contains("received 3"));
  auto short_cache = allocate_filled<T>(b, 4, 4, T(0));
  CHECK_THROWS_WITH(call(pos.view().flat(), 3, 2, short_cache.view(), scores.view()),
                    Contains(fn) && Contains("'k_cache'"));
  auto small_scores = allocate<T>(b, 8, 2);
  CHECK_THROWS_WITH(call(pos.view().flat(), 3, 2, kc.view(), small_scores.view()),
                    Contains(fn) && Contains("'scores'"));
  CHECK_THROWS_WITH(call(pos.view().flat(), 0, 2, kc.view(), scores.view()), Contains(fn) && Contains("'seq_len'"));
}
