// rlhf::token_logprobs, token_logprobs_backward, full_kl, full_kl_backward: hand-computed rows, a naive
// two-pass host oracle (log_softmax, then gather), finite differences, properties, errors, peer regressions.
#include "test_support.hpp"

#include <limits>
#include <numeric>

#include "rlhf/ops/token_logprobs.hpp"
#if RLHF_TEST_HAS_EIGEN
#include "rlhf/backends/eigen/token_logprobs.hpp"
#endif

using namespace rlhf;
using namespace rlhf::test;

namespace {

constexpr double inf = std::numeric_limits<double>::infinity();

// ---- naive host oracles, in double, straight from the formulas -----------------------------------------

/// log_softmax(z / t) of one row, two passes (max, then sum), -inf entries stay -inf.
std::vector<double> oracle_log_softmax(const double* z, std::size_t v, double t) {
  double m = -inf;
  for (std::size_t j = 0; j < v; ++j) m = std::max(m, z[j] / t);
  double s = 0;
  for (std::size_t j = 0; j < v; ++j) s += std::exp(z[j] / t - m);
  const double lse = m + std::log(s);
  std::vector<double> lp(v);
  for (std::size_t j = 0; j < v; ++j) lp[j] = z[j] / t - lse;
  return lp;
}

struct oracle_fwd {
  std::vector<double> logp, lse, ent;
};

oracle_fwd oracle_forward(const std::vector<double>& z, std::size_t rows, std::size_t v,
                          const std::vector<token_type>& tokens, const std::vector<mask_type>& mask, double t) {
  oracle_fwd o{std::vector<double>(rows, 0.0), std::vector<double>(rows, 0.0), std::vector<double>(rows, 0.0)};
  for (std::size_t r = 0; r < rows; ++r) {
    if (!mask.empty() && !mask[r]) continue;
    const auto lp = oracle_log_softmax(z.data() + r * v, v, t);
    o.logp[r] = lp[static_cast<std::size_t>(tokens[r])];
    o.lse[r] = z[r * v] / t - lp[0];
    double h = 0;  // H = -sum p log p, p = 0 terms dropped
    for (std::size_t j = 0; j < v; ++j)
      if (lp[j] > -inf) h -= std::exp(lp[j]) * lp[j];
    o.ent[r] = h;
  }
  return o;
}

/// d/dz of sum_r (g_r logp_r + gh_r H_r), from the formulas.
std::vector<double> oracle_backward(const std::vector<double>& z, std::size_t rows, std::size_t v,
                                    const std::vector<token_type>& tokens, const std::vector<mask_type>& mask,
                                    const std::vector<double>& g, const std::vector<double>& gh, double t) {
  std::vector<double> d(rows * v, 0.0);
  for (std::size_t r = 0; r < rows; ++r) {
    if (!mask.empty() && !mask[r]) continue;
    const auto lp = oracle_log_softmax(z.data() + r * v, v, t);
    double h = 0;
    for (std::size_t j = 0; j < v; ++j)
      if (lp[j] > -inf) h -= std::exp(lp[j]) * lp[j];
    for (std::size_t j = 0; j < v; ++j) {
      const double p = std::exp(lp[j]);
      double x = g[r] * ((static_cast<token_type>(j) == tokens[r] ? 1.0 : 0.0) - p);
      if (p > 0) x += gh[r] * (-p * (lp[j] + h));
      d[r * v + j] = x / t;
    }
  }
  return d;
}

std::vector<double> oracle_kl(const std::vector<double>& zp, const std::vector<double>& zq, std::size_t rows,
                              std::size_t v, const std::vector<mask_type>& mask, double t) {
  std::vector<double> kl(rows, 0.0);
  for (std::size_t r = 0; r < rows; ++r) {
    if (!mask.empty() && !mask[r]) continue;
    const auto lp = oracle_log_softmax(zp.data() + r * v, v, t);
    const auto lq = oracle_log_softmax(zq.data() + r * v, v, t);
    double k = 0;
    for (std::size_t j = 0; j < v; ++j)
      if (lp[j] > -inf) k += std::exp(lp[j]) * (lp[j] - lq[j]);
    kl[r] = k;
  }
  return kl;
}

// ---- running the library --------------------------------------------------------------------------------

template <class T>
struct fwd_out {
  std::vector<T> logp, lse, ent;
  std::size_t valid = 0;
};

template <class B, class T>
fwd_out<T> run_forward(const B& b, const std::vector<T>& z, std::size_t rows, std::size_t v,
                       const std::vector<token_type>& tokens, const std::vector<mask_type>& mask, double t) {
  auto bz = to_backend(b, z, rows, v);
  auto bt = to_backend(b, tokens, 1, rows);
  auto bm = to_backend(b, mask, 1, mask.size());
  auto lp = allocate<T>(b, rows), lse = allocate<T>(b, rows), ent = allocate<T>(b, rows);
  const backend_vector<B, const mask_type> mv =
      mask.empty() ? backend_vector<B, const mask_type>{} : backend_vector<B, const mask_type>(bm.view().flat());
  const auto stats = token_logprobs(b, bz.view(), bt.view().flat(), mv, lp.view().flat(), lse.view().flat(),
                                    ent.view().flat(), token_logprob_options::with_temperature(t));
  return {to_host(b, lp.view()), to_host(b, lse.view()), to_host(b, ent.view()), stats.valid_rows};
}

template <class B, class T>
std::vector<T> run_backward(const B& b, const std::vector<T>& z, std::size_t rows, std::size_t v,
                            const std::vector<token_type>& tokens, const std::vector<mask_type>& mask,
                            const std::vector<T>& g, const std::vector<T>& gh, double t, bool in_place = false) {
  const auto f = run_forward(b, z, rows, v, tokens, mask, t);
  auto bz = to_backend(b, z, rows, v);
  auto bt = to_backend(b, tokens, 1, rows);
  auto bm = to_backend(b, mask, 1, mask.size());
  auto blse = to_backend(b, f.lse), bent = to_backend(b, f.ent);
  auto bg = to_backend(b, g, 1, g.size()), bgh = to_backend(b, gh, 1, gh.size());
  auto out = allocate<T>(b, rows, v);
  const backend_vector<B, const mask_type> mv =
      mask.empty() ? backend_vector<B, const mask_type>{} : backend_vector<B, const mask_type>(bm.view().flat());
  const backend_vector<B, const T> gv = g.empty() ? backend_vector<B, const T>{} : backend_vector<B, const T>(bg.view().flat());
  const backend_vector<B, const T> ghv =
      gh.empty() ? backend_vector<B, const T>{} : backend_vector<B, const T>(bgh.view().flat());
  const backend_vector<B, const T> entv =
      gh.empty() ? backend_vector<B, const T>{} : backend_vector<B, const T>(bent.view().flat());
  const auto dst = in_place ? bz.view() : out.view();
  token_logprobs_backward(b, bz.view(), bt.view().flat(), mv, blse.view().flat(), gv, entv, ghv, dst,
                          token_logprob_options::with_temperature(t));
  return to_host(b, dst);
}

template <class T>
struct kl_out {
  std::vector<T> kl, lse_p, lse_q;
};

template <class B, class T>
kl_out<T> run_kl(const B& b, const std::vector<T>& zp, const std::vector<T>& zq, std::size_t rows, std::size_t v,
                 const std::vector<mask_type>& mask, double t) {
  auto bp = to_backend(b, zp, rows, v), bq = to_backend(b, zq, rows, v);
  auto bm = to_backend(b, mask, 1, mask.size());
  auto kl = allocate<T>(b, rows), lp = allocate<T>(b, rows), lq = allocate<T>(b, rows);
  const backend_vector<B, const mask_type> mv =
      mask.empty() ? backend_vector<B, const mask_type>{} : backend_vector<B, const mask_type>(bm.view().flat());
  full_kl(b, bp.view(), bq.view(), mv, kl.view().flat(), lp.view().flat(), lq.view().flat(), full_kl_options{t});
  return {to_host(b, kl.view()), to_host(b, lp.view()), to_host(b, lq.view())};
}

template <class B, class T>
std::vector<T> run_kl_backward(const B& b, const std::vector<T>& zp, const std::vector<T>& zq, std::size_t rows,
                               std::size_t v, const std::vector<mask_type>& mask, const std::vector<T>& dkl, double t,
                               bool in_place = false) {
  const auto f = run_kl(b, zp, zq, rows, v, mask, t);
  auto bp = to_backend(b, zp, rows, v), bq = to_backend(b, zq, rows, v);
  auto bm = to_backend(b, mask, 1, mask.size());
  auto bk = to_backend(b, f.kl), blp = to_backend(b, f.lse_p), blq = to_backend(b, f.lse_q), bd = to_backend(b, dkl);
  auto out = allocate<T>(b, rows, v);
  const backend_vector<B, const mask_type> mv =
      mask.empty() ? backend_vector<B, const mask_type>{} : backend_vector<B, const mask_type>(bm.view().flat());
  const auto dst = in_place ? bp.view() : out.view();
  full_kl_backward(b, bp.view(), bq.view(), mv, bk.view().flat(), blp.view().flat(), blq.view().flat(),
                   bd.view().flat(), dst, full_kl_options{t});
  return to_host(b, dst);
}

std::vector<token_type> random_tokens(std::mt19937_64& g, std::size_t rows, std::size_t v) {
  std::uniform_int_distribution<token_type> d(0, static_cast<token_type>(v) - 1);
  std::vector<token_type> t(rows);
  for (auto& x : t) x = d(g);
  return t;
}

/// A mask over rows mixing a ragged tail and interior holes (rows are positions of a flattened batch).
std::vector<mask_type> ragged_row_mask(std::mt19937_64& g, std::size_t rows) {
  auto m = random_mask(g, rows, 0.75);
  const std::size_t keep = random_lengths(g, 1, rows, rows / 2)[0];
  for (std::size_t r = keep; r < rows; ++r) m[r] = 0;
  return m;
}

template <class T>
std::vector<double> to_double(const std::vector<T>& v) {
  return cast<double>(v);
}

const std::vector<double> hand_logits = {0.0, std::log(2.0), std::log(3.0), 0.0,  // row 0: e^z = 1, 2, 3, 1
                                         0.0, 0.0,          0.0,          0.0,  // row 1: uniform
                                         5.0, -1.0,         2.0,          7.0};  // row 2: masked

}  // namespace

TEMPLATE_LIST_TEST_CASE("token_logprobs: hand-computed rows", "[ops][token_logprobs]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // Row 0: e^z = [1, 2, 3, 1], sum 7. Token 2: logp = ln 3 - ln 7 = ln(3/7) = -0.8472978603872037,
  //   logsumexp = ln 7 = 1.9459101490553132, H = -(2 (1/7) ln(1/7) + (2/7) ln(2/7) + (3/7) ln(3/7)) = 1.277034259466139.
  // Row 1: uniform over 4: logp = -ln 4 = -1.3862943611198906, logsumexp = ln 4, H = ln 4.
  // Row 2: masked, its token -100 (a pad) is not checked: everything 0.
  const auto f = run_forward(b, cast<T>(hand_logits), 3, 4, {2, 0, -100}, {1, 1, 0}, 1.0);
  CHECK_THAT(f.logp, close_to<T>(std::vector<double>{-0.8472978603872037, -1.3862943611198906, 0.0}));
  CHECK_THAT(f.lse, close_to<T>(std::vector<double>{1.9459101490553132, 1.3862943611198906, 0.0}));
  CHECK_THAT(f.ent, close_to<T>(std::vector<double>{1.277034259466139, 1.3862943611198906, 0.0}));
  CHECK(f.valid == 2);

  // Temperature 0.5 on z / 2 gives back row 0's distribution: same numbers.
  std::vector<double> halved = hand_logits;
  for (auto& x : halved) x /= 2;
  const auto h = run_forward(b, cast<T>(halved), 3, 4, {2, 0, -100}, {1, 1, 0}, 0.5);
  CHECK_THAT(h.logp, close_to<T>(std::vector<double>{-0.8472978603872037, -1.3862943611198906, 0.0}));
  CHECK_THAT(h.ent, close_to<T>(std::vector<double>{1.277034259466139, 1.3862943611198906, 0.0}));

  // Backward, d_logprobs = 1 on row 0 (token 2): dz = onehot - p = [-1/7, -2/7, 4/7, -1/7]; row 1 d = 0 -> 0.
  const auto d = run_backward(b, cast<T>(hand_logits), 3, 4, {2, 0, -100}, {1, 1, 0}, std::vector<T>{1, 0, 5},
                              std::vector<T>{}, 1.0);
  std::vector<double> want(12, 0.0);
  want[0] = -1.0 / 7, want[1] = -2.0 / 7, want[2] = 4.0 / 7, want[3] = -1.0 / 7;
  CHECK_THAT(d, close_to<T>(want));

  // Full KL of row 0 against the uniform row 1: KL = ln 4 - H = 1.3862943611198906 - 1.277034259466139
  //   = 0.1092601016537516; KL(uniform || uniform) = 0.
  std::vector<double> zp(hand_logits.begin(), hand_logits.begin() + 8), zq(8, 0.0);
  const auto k = run_kl(b, cast<T>(zp), cast<T>(zq), 2, 4, {}, 1.0);
  CHECK_THAT(k.kl, close_to<T>(std::vector<double>{0.1092601016537516, 0.0}));
}

TEMPLATE_LIST_TEST_CASE("token_logprobs matches the two-pass oracle on random data", "[ops][token_logprobs]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(101);
  struct shape {
    std::size_t rows, v;
  };
  for (const shape s : {shape{5, 1}, shape{9, 7}, shape{6, 5000}, shape{4, 2049}, shape{0, 3}}) {
    for (const double t : {1.0, 0.7}) {
      for (const double scale : {3.0, 30.0}) {
        const auto z = normal<T>(g, s.rows * s.v, 0.0, scale);
        const auto tok = random_tokens(g, s.rows, s.v);
        const auto mask = ragged_row_mask(g, s.rows);
        const auto o = oracle_forward(to_double(z), s.rows, s.v, tok, mask, t);
        const auto f = run_forward(b, z, s.rows, s.v, tok, mask, t);
        INFO("rows " << s.rows << " V " << s.v << " t " << t << " scale " << scale);
        CHECK_THAT(f.logp, close_to<T>(o.logp));
        CHECK_THAT(f.lse, close_to<T>(o.lse));
        CHECK_THAT(f.ent, close_to<T>(o.ent, 2 * tolerance<T>::rtol, 5 * tolerance<T>::atol));
        CHECK(f.valid == static_cast<std::size_t>(std::count(mask.begin(), mask.end(), mask_type(1))));
        // No mask: every row valid.
        const auto all = run_forward(b, z, s.rows, s.v, tok, {}, t);
        const auto oa = oracle_forward(to_double(z), s.rows, s.v, tok, {}, t);
        CHECK_THAT(all.logp, close_to<T>(oa.logp));
        CHECK(all.valid == s.rows);
      }
    }
  }
}

TEMPLATE_LIST_TEST_CASE("token_logprobs: large-magnitude logits neither overflow nor lose precision",
                        "[ops][token_logprobs]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(102);
  const std::size_t rows = 6, v = 3000;
  for (const double t : {1.0, 0.7}) {
    // Spread 1e4: e^(1e4) overflows any naive softmax.
    const auto wide = uniform<T>(g, rows * v, -1e4, 1e4);
    // Offset 1e4, spread 5: the log-probs are O(10) differences of O(1e4) numbers.
    auto narrow = uniform<T>(g, rows * v, -5.0, 5.0);
    for (auto& x : narrow) x = static_cast<T>(static_cast<double>(x) + 1e4);
    for (const std::vector<T>* z : {&wide, static_cast<const std::vector<T>*>(&narrow)}) {
      const auto tok = random_tokens(g, rows, v);
      const auto mask = ragged_row_mask(g, rows);
      const auto o = oracle_forward(to_double(*z), rows, v, tok, mask, t);
      const auto f = run_forward(b, *z, rows, v, tok, mask, t);
      for (std::size_t r = 0; r < rows; ++r) {
        REQUIRE(std::isfinite(static_cast<double>(f.logp[r])));
        REQUIRE(std::isfinite(static_cast<double>(f.ent[r])));
      }
      CHECK_THAT(f.logp, close_to<T>(o.logp, tolerance<T>::rtol, 10 * tolerance<T>::atol));
      CHECK_THAT(f.ent, close_to<T>(o.ent, 2 * tolerance<T>::rtol, 10 * tolerance<T>::atol));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("token_logprobs: -inf (filtered) logits have probability 0 and never make NaN",
                        "[ops][token_logprobs]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(103);
  const std::size_t rows = 7, v = 3000;
  auto z = normal<T>(g, rows * v, 0.0, 2.0);
  std::bernoulli_distribution filtered(0.6);
  for (auto& x : z)
    if (filtered(g)) x = -std::numeric_limits<T>::infinity();
  auto tok = random_tokens(g, rows, v);
  for (std::size_t r = 0; r < rows; ++r) {  // sampled tokens are never filtered ...
    while (std::isinf(z[r * v + static_cast<std::size_t>(tok[r])])) tok[r] = (tok[r] + 1) % static_cast<token_type>(v);
  }
  // ... except in row 6, whose token's logit is -inf: logp = -inf; row 5 keeps a single finite logit.
  z[6 * v + 3] = -std::numeric_limits<T>::infinity();
  tok[6] = 3;
  for (std::size_t j = 0; j < v; ++j) z[5 * v + j] = -std::numeric_limits<T>::infinity();
  z[5 * v + 2999] = T(4);
  tok[5] = 2999;
  const std::vector<mask_type> mask(rows, 1);
  const auto o = oracle_forward(to_double(z), rows, v, tok, mask, 0.7);
  const auto f = run_forward(b, z, rows, v, tok, mask, 0.7);
  CHECK_THAT(f.logp, close_to<T>(o.logp));
  CHECK_THAT(f.ent, close_to<T>(o.ent, 2 * tolerance<T>::rtol, 5 * tolerance<T>::atol));
  CHECK(f.logp[6] == -std::numeric_limits<T>::infinity());
  CHECK(f.logp[5] == T(0));  // one finite logit: probability 1
  CHECK(std::abs(static_cast<double>(f.ent[5])) < 1e-30);  // 0 (the Eigen kernel's exp leaves ~1e-300)

  // Gradients stay finite and are (numerically) 0 at the filtered entries.
  std::vector<T> gl(rows, T(1)), gh(rows, T(0.5));
  gl[6] = T(0);  // d logp of a -inf logit is undefined (-inf); ask only for its entropy gradient
  const auto d = run_backward(b, z, rows, v, tok, mask, gl, gh, 0.7);
  const auto want = oracle_backward(to_double(z), rows, v, tok, mask, to_double(gl), to_double(gh), 0.7);
  CHECK_THAT(d, close_to<T>(want, tolerance<T>::rtol, 10 * tolerance<T>::atol));
  for (std::size_t i = 0; i < d.size(); ++i) {
    REQUIRE(std::isfinite(static_cast<double>(d[i])));
    if (std::isinf(z[i])) REQUIRE(std::abs(static_cast<double>(d[i])) < 1e-30);
  }

  // A valid row whose logits are all -inf has no distribution: NaN (documented).
  std::vector<T> dead(4, -std::numeric_limits<T>::infinity());
  const auto n = run_forward(b, dead, 1, 4, {0}, {}, 1.0);
  CHECK(std::isnan(n.logp[0]));
  CHECK(std::isnan(n.ent[0]));
}

TEMPLATE_LIST_TEST_CASE("token_logprobs: a NaN or +inf logit among finite ones makes its row NaN, not others",
                        "[ops][token_logprobs]", all_configs) {
  // Both paths of the generic float row (the two-pass one and the online fallback when the maximum is not
  // finite) and every kernel: NaN in, NaN out, row by row.
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(104);
  const std::size_t rows = 4, v = 700;
  auto z = normal<T>(g, rows * v, 0.0, 2.0);
  z[0 * v + 5] = std::numeric_limits<T>::quiet_NaN();  // among finite logits: the maximum stays finite
  z[1 * v + 600] = std::numeric_limits<T>::infinity();  // +inf: the maximum is not finite
  for (std::size_t j = 0; j < v; ++j) z[2 * v + j] = std::numeric_limits<T>::quiet_NaN();  // nothing compares
  const std::vector<token_type> tok{1, 2, 3, 4};
  const auto f = run_forward(b, z, rows, v, tok, {}, 1.0);
  for (std::size_t r = 0; r < 3; ++r) {
    INFO("row " << r);
    CHECK(std::isnan(static_cast<double>(f.logp[r])));
  }
  CHECK(std::isfinite(static_cast<double>(f.logp[3])));
  CHECK(std::isfinite(static_cast<double>(f.ent[3])));
}

TEMPLATE_LIST_TEST_CASE("token_logprobs_backward matches the formula on random data", "[ops][token_logprobs]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(104);
  for (const std::size_t v : {1u, 7u, 2500u}) {
    for (const double t : {1.0, 0.7}) {
      const std::size_t rows = 5;
      const auto z = normal<T>(g, rows * v, 0.0, 3.0);
      const auto tok = random_tokens(g, rows, v);
      const auto mask = ragged_row_mask(g, rows);
      const auto gl = normal<T>(g, rows), gh = normal<T>(g, rows);
      const std::vector<T> none;
      INFO("V " << v << " t " << t);
      CHECK_THAT(run_backward(b, z, rows, v, tok, mask, gl, gh, t),
                 close_to<T>(oracle_backward(to_double(z), rows, v, tok, mask, to_double(gl), to_double(gh), t),
                             tolerance<T>::rtol, 10 * tolerance<T>::atol));
      const std::vector<double> zeros(rows, 0.0);
      CHECK_THAT(run_backward(b, z, rows, v, tok, mask, gl, none, t),
                 close_to<T>(oracle_backward(to_double(z), rows, v, tok, mask, to_double(gl), zeros, t),
                             tolerance<T>::rtol, 10 * tolerance<T>::atol));
      CHECK_THAT(run_backward(b, z, rows, v, tok, mask, none, gh, t),
                 close_to<T>(oracle_backward(to_double(z), rows, v, tok, mask, zeros, to_double(gh), t),
                             tolerance<T>::rtol, 10 * tolerance<T>::atol));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("token_logprobs_backward in place (dlogits aliases logits)", "[ops][token_logprobs]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(105);
  const std::size_t rows = 6, v = 4500;
  const auto z = normal<T>(g, rows * v, 0.0, 2.0);
  const auto tok = random_tokens(g, rows, v);
  const auto mask = ragged_row_mask(g, rows);
  const auto gl = normal<T>(g, rows), gh = normal<T>(g, rows);
  const auto out_of_place = run_backward(b, z, rows, v, tok, mask, gl, gh, 0.7, false);
  const auto in_place = run_backward(b, z, rows, v, tok, mask, gl, gh, 0.7, true);
  CHECK(in_place == out_of_place);
  const auto zp = normal<T>(g, rows * v), zq = normal<T>(g, rows * v);
  const auto dkl = normal<T>(g, rows);
  CHECK(run_kl_backward(b, zp, zq, rows, v, mask, dkl, 0.7, true) ==
        run_kl_backward(b, zp, zq, rows, v, mask, dkl, 0.7, false));
}

TEMPLATE_LIST_TEST_CASE("token_logprobs_backward agrees with finite differences", "[ops][token_logprobs][gradient]",
                        double_configs) {
  const auto b = TestType::make();
  auto g = rng(106);
  const std::size_t rows = 4, v = 6;
  auto z0 = normal<double>(g, rows * v, 0.0, 1.5);
  z0[1 * v + 4] = -inf;  // a filtered entry: zero gradient (the finite difference sees a constant)
  const std::vector<token_type> tok = {2, 0, 5, 1};
  const std::vector<mask_type> mask = {1, 1, 0, 1};
  const double t = 0.7;
  const auto gl = normal<double>(g, rows), gh = normal<double>(g, rows);
  const std::vector<double> zeros(rows, 0.0), none;
  struct weights {
    const std::vector<double>* gl;
    const std::vector<double>* gh;
  };
  for (const weights w : {weights{&gl, &zeros}, weights{&zeros, &gh}, weights{&gl, &gh}}) {
    const auto loss = [&](const std::vector<double>& z) {
      const auto f = run_forward(b, z, rows, v, tok, mask, t);
      double s = 0;
      for (std::size_t r = 0; r < rows; ++r) s += (*w.gl)[r] * f.logp[r] + (*w.gh)[r] * f.ent[r];
      return s;
    };
    const auto fd = numeric_gradient(loss, z0);
    const auto an = run_backward(b, z0, rows, v, tok, mask, *w.gl, *w.gh, t);
    CHECK_THAT(an, close_to<double>(fd, fd_rtol, fd_atol));
    CHECK(std::abs(an[1 * v + 4]) < 1e-300);  // 0 up to the Eigen kernel's exp floor
    for (std::size_t j = 0; j < v; ++j) CHECK(an[2 * v + j] == 0.0);  // masked row
  }
}

TEMPLATE_LIST_TEST_CASE("full_kl matches the oracle; KL(p||p) = 0, KL >= 0, q = 0 under p > 0 gives +inf",
                        "[ops][full_kl]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(107);
  struct shape {
    std::size_t rows, v;
  };
  for (const shape s : {shape{5, 1}, shape{9, 7}, shape{6, 5000}}) {
    for (const double t : {1.0, 0.7}) {
      auto zp = normal<T>(g, s.rows * s.v, 0.0, 2.0);
      auto zq = zp;
      const auto noise = normal<T>(g, s.rows * s.v, 0.0, 0.5);
      for (std::size_t i = 0; i < zq.size(); ++i) zq[i] = static_cast<T>(zq[i] + noise[i]);
      std::bernoulli_distribution filtered(0.2);
      for (std::size_t i = 0; i < zp.size(); ++i)
        if (i % s.v != 0 && filtered(g)) zp[i] = -std::numeric_limits<T>::infinity();  // p_v = 0: q_v may be anything
      const auto mask = ragged_row_mask(g, s.rows);
      INFO("rows " << s.rows << " V " << s.v << " t " << t);
      const auto k = run_kl(b, zp, zq, s.rows, s.v, mask, t);
      CHECK_THAT(k.kl, close_to<T>(oracle_kl(to_double(zp), to_double(zq), s.rows, s.v, mask, t),
                                   2 * tolerance<T>::rtol, 10 * tolerance<T>::atol));
      for (const T x : k.kl) CHECK(x >= T(0));
      const auto self = run_kl(b, zp, zp, s.rows, s.v, {}, t);
      CHECK(self.kl == std::vector<T>(s.rows, T(0)));
      // Large magnitudes: offset 1e4 on both, KL unchanged.
      auto zp_big = zp, zq_big = zq;
      for (auto& x : zp_big) x = static_cast<T>(static_cast<double>(x) + 1e4);
      for (auto& x : zq_big) x = static_cast<T>(static_cast<double>(x) - 1e4);
      const auto kb = run_kl(b, zp_big, zq_big, s.rows, s.v, mask, t);
      CHECK_THAT(kb.kl, close_to<T>(oracle_kl(to_double(zp_big), to_double(zq_big), s.rows, s.v, mask, t),
                                    2 * tolerance<T>::rtol, 2e4 * tolerance<T>::atol));
    }
  }
  // Whole stretches of -inf (longer than the Eigen kernel's chunks), in p, in q, in both, and a late q
  // stretch under finite p (+inf).
  {
    const std::size_t rows = 4, v = 3000;
    auto zp = normal<T>(g, rows * v, 0.0, 2.0), zq = normal<T>(g, rows * v, 0.0, 2.0);
    const T ninf = -std::numeric_limits<T>::infinity();
    for (std::size_t j = 0; j < 1500; ++j) zp[0 * v + j] = ninf;                     // p filtered at the start
    for (std::size_t j = 0; j < 1500; ++j) zp[1 * v + j] = zq[1 * v + j] = ninf;     // both filtered
    for (std::size_t j = 1000; j < 2600; ++j) zp[2 * v + j] = ninf;                  // p filtered in the middle
    for (std::size_t j = 2000; j < 3000; ++j) zq[3 * v + j] = ninf;                  // q = 0 under p > 0
    const auto want = oracle_kl(to_double(zp), to_double(zq), rows, v, {}, 0.7);
    const auto k = run_kl(b, zp, zq, rows, v, {}, 0.7);
    CHECK(want[3] == inf);
    CHECK_THAT(k.kl, close_to<T>(want, 2 * tolerance<T>::rtol, 10 * tolerance<T>::atol));
    const auto kt = run_forward(b, zp, rows, v, {1600, 2000, 7, 0}, {}, 0.7);
    const auto ot = oracle_forward(to_double(zp), rows, v, {1600, 2000, 7, 0}, {}, 0.7);
    CHECK_THAT(kt.logp, close_to<T>(ot.logp));
    CHECK_THAT(kt.ent, close_to<T>(ot.ent, 2 * tolerance<T>::rtol, 5 * tolerance<T>::atol));
  }
  // q_v = 0 (logit -inf) where p_v > 0: KL = +inf, in any position of the row.
  const std::vector<T> zp = {0, 1, 2, 3, 0, 1, 2, 3};
  const std::vector<T> zq = {-std::numeric_limits<T>::infinity(), 1, 2, 3, 0, 1, 2, -std::numeric_limits<T>::infinity()};
  const auto k = run_kl(b, zp, zq, 2, 4, {}, 1.0);
  CHECK(k.kl[0] == std::numeric_limits<T>::infinity());
  CHECK(k.kl[1] == std::numeric_limits<T>::infinity());
  // A valid row whose p logits are all -inf has no distribution: NaN (documented); masked, it is 0.
  const std::vector<T> dead(4, -std::numeric_limits<T>::infinity());
  CHECK(std::isnan(run_kl(b, dead, std::vector<T>{0, 1, 2, 3}, 1, 4, {}, 1.0).kl[0]));
  CHECK(run_kl(b, dead, std::vector<T>{0, 1, 2, 3}, 1, 4, {0}, 1.0).kl[0] == T(0));
}

TEMPLATE_LIST_TEST_CASE("full_kl_backward agrees with the formula and with finite differences",
                        "[ops][full_kl][gradient]", double_configs) {
  const auto b = TestType::make();
  auto g = rng(108);
  const std::size_t rows = 4, v = 6;
  auto zp0 = normal<double>(g, rows * v, 0.0, 1.5), zq = normal<double>(g, rows * v, 0.0, 1.5);
  zp0[3] = -inf;  // p_3 = 0 on row 0: zero gradient there
  const std::vector<mask_type> mask = {1, 0, 1, 1};
  const auto dkl = normal<double>(g, rows);
  for (const double t : {1.0, 0.7}) {
    const auto loss = [&](const std::vector<double>& zp) {
      const auto k = run_kl(b, zp, zq, rows, v, mask, t);
      double s = 0;
      for (std::size_t r = 0; r < rows; ++r) s += dkl[r] * k.kl[r];
      return s;
    };
    const auto an = run_kl_backward(b, zp0, zq, rows, v, mask, dkl, t);
    CHECK_THAT(an, close_to<double>(numeric_gradient(loss, zp0), fd_rtol, fd_atol));
    CHECK(std::abs(an[3]) < 1e-300);
    for (std::size_t j = 0; j < v; ++j) CHECK(an[v + j] == 0.0);
    // Closed form: d/dz_j = dkl p_j ((log p_j - log q_j) - KL) / t.
    const auto kl = oracle_kl(zp0, zq, rows, v, mask, t);
    std::vector<double> want(rows * v, 0.0);
    for (std::size_t r = 0; r < rows; ++r) {
      if (!mask[r]) continue;
      const auto lp = oracle_log_softmax(zp0.data() + r * v, v, t), lq = oracle_log_softmax(zq.data() + r * v, v, t);
      for (std::size_t j = 0; j < v; ++j)
        if (lp[j] > -inf) want[r * v + j] = dkl[r] * std::exp(lp[j]) * ((lp[j] - lq[j]) - kl[r]) / t;
    }
    CHECK_THAT(an, close_to<double>(want, 1e-10, 1e-12));
  }
}

TEMPLATE_LIST_TEST_CASE("token_logprobs and full_kl reject bad arguments", "[ops][token_logprobs][errors]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto z = allocate_filled<T>(b, 3, 5, T(0));
  auto tok = to_backend(b, std::vector<token_type>{0, 4, 5}, 1, 3);  // 5 is out of range for V = 5
  auto tok_ok = to_backend(b, std::vector<token_type>{0, 4, -100}, 1, 3);
  auto mask = to_backend(b, std::vector<mask_type>{1, 1, 0}, 1, 3);
  auto mask_short = to_backend(b, std::vector<mask_type>{1, 1}, 1, 2);
  auto out = allocate<T>(b, 3), out_short = allocate<T>(b, 2);
  auto d = allocate<T>(b, 3, 5), d_bad = allocate<T>(b, 3, 4);
  auto empty_cols = allocate<T>(b, 3, 0);
  const auto tv = tok.view().flat();
  const auto ov = out.view().flat();
  using Catch::Contains;

  CHECK_THROWS_WITH(token_logprobs(b, z.view(), tv, {}, ov),
                    Contains("rlhf::token_logprobs") && Contains("'tokens'") && Contains("[0, 5)"));
  // The same id at a masked row is fine; a pad (-100) at a masked row too.
  CHECK(token_logprobs(b, z.view(), tv, mask.view().flat(), ov).valid_rows == 2);
  CHECK_NOTHROW(token_logprobs(b, z.view(), tok_ok.view().flat(), mask.view().flat(), ov));
  CHECK_THROWS_WITH(token_logprobs(b, z.view(), tok_ok.view().flat(), {}, ov), Contains("'tokens'"));
  CHECK_THROWS_WITH(token_logprobs(b, z.view(), tok_ok.view().flat().subview(0, 2), mask.view().flat(), ov),
                    Contains("rlhf::token_logprobs") && Contains("'tokens'") && Contains("size 3"));
  CHECK_THROWS_WITH(token_logprobs(b, empty_cols.view(), tok_ok.view().flat(), mask.view().flat(), ov),
                    Contains("rlhf::token_logprobs") && Contains("'logits'"));
  CHECK_THROWS_WITH(token_logprobs(b, z.view(), tok_ok.view().flat(), mask_short.view().flat(), ov), Contains("'mask'"));
  CHECK_THROWS_WITH(token_logprobs(b, z.view(), tok_ok.view().flat(), mask.view().flat(), out_short.view().flat()),
                    Contains("'logprobs'"));
  CHECK_THROWS_WITH(
      token_logprobs(b, z.view(), tok_ok.view().flat(), mask.view().flat(), ov, out_short.view().flat()),
      Contains("'logsumexp'"));
  CHECK_THROWS_WITH(
      token_logprobs(b, z.view(), tok_ok.view().flat(), mask.view().flat(), ov, {}, out_short.view().flat()),
      Contains("'entropy'"));
  for (const double t : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN(), inf}) {
    CHECK_THROWS_WITH(token_logprobs(b, z.view(), tok_ok.view().flat(), mask.view().flat(), ov, {}, {},
                                     token_logprob_options::with_temperature(t)),
                      Contains("rlhf::token_logprobs") && Contains("temperature"));
  }

  // Backward.
  const auto ocv = backend_vector<typename TestType::backend, const T>(ov);
  CHECK_THROWS_WITH(token_logprobs_backward(b, z.view(), tok_ok.view().flat(), mask.view().flat(), ocv, ocv, {}, {},
                                            d_bad.view()),
                    Contains("rlhf::token_logprobs_backward") && Contains("'dlogits'"));
  CHECK_THROWS_WITH(token_logprobs_backward(b, z.view(), tv, {}, ocv, ocv, {}, {}, d.view()),
                    Contains("rlhf::token_logprobs_backward") && Contains("'tokens'"));
  CHECK_THROWS_WITH(token_logprobs_backward(b, z.view(), tok_ok.view().flat(), mask.view().flat(), ocv, ocv, {}, ocv,
                                            d.view()),
                    Contains("'entropy'"));
  CHECK_THROWS_WITH(token_logprobs_backward(b, z.view(), tok_ok.view().flat(), mask.view().flat(), {}, ocv, {}, {},
                                            d.view()),
                    Contains("'logsumexp'"));
  CHECK_THROWS_WITH(token_logprobs_backward(b, z.view(), tok_ok.view().flat(), mask.view().flat(), ocv, ocv, {}, {},
                                            d.view(), token_logprob_options::with_temperature(-0.5)),
                    Contains("temperature"));

  // Full KL.
  CHECK_THROWS_WITH(full_kl(b, z.view(), d_bad.view(), {}, ov),
                    Contains("rlhf::full_kl") && Contains("'logits_q'") && Contains("[3, 5]"));
  CHECK_THROWS_WITH(full_kl(b, z.view(), z.view(), {}, out_short.view().flat()), Contains("'kl'"));
  CHECK_THROWS_WITH(full_kl(b, z.view(), z.view(), {}, ov, {}, {}, full_kl_options{0.0}), Contains("temperature"));
  CHECK_THROWS_WITH(full_kl_backward(b, z.view(), z.view(), {}, ocv, ocv, ocv, ocv, d_bad.view()),
                    Contains("rlhf::full_kl_backward") && Contains("'dlogits_p'"));
  CHECK_THROWS_WITH(full_kl_backward(b, z.view(), z.view(), {}, ocv, {}, ocv, ocv, d.view()), Contains("'logsumexp_p'"));

  // Empty inputs are fine.
  auto z0 = allocate<T>(b, 0, 5);
  auto e0 = allocate<T>(b, 0);
  auto t0 = allocate<token_type>(b, 0);
  CHECK(token_logprobs(b, z0.view(), t0.view().flat(), {}, e0.view().flat()).valid_rows == 0);
}

TEMPLATE_LIST_TEST_CASE("opt-in finite check rejects NaN and +inf logits but accepts -inf", "[ops][token_logprobs]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  set_finite_checks(true);
  const std::vector<T> good = {0, -std::numeric_limits<T>::infinity(), 1, 2};
  auto tok = to_backend(b, std::vector<token_type>{0}, 1, 1);
  auto out = allocate<T>(b, 1);
  auto bz = to_backend(b, good, 1, 4);
  CHECK_NOTHROW(token_logprobs(b, bz.view(), tok.view().flat(), {}, out.view().flat()));
  for (const T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity()}) {
    auto zb = good;
    zb[2] = bad;
    auto bb = to_backend(b, zb, 1, 4);
    CHECK_THROWS_AS(token_logprobs(b, bb.view(), tok.view().flat(), {}, out.view().flat()), non_finite_error);
    CHECK_THROWS_WITH(full_kl(b, bz.view(), bb.view(), {}, out.view().flat()), Catch::Contains("'logits_q'"));
  }
  set_finite_checks(false);
}

TEMPLATE_LIST_TEST_CASE("regression: trl #1161: the exact full-vocabulary KL is never negative", "[ops][full_kl][regression]",
                        all_configs) {
  // https://github.com/huggingface/trl/issues/1161 (fixed by https://github.com/huggingface/trl/pull/1180):
  // negative KL warnings with the "full" estimator. The exact KL(p||q) is >= 0 for every row, including
  // p == q (exactly 0) and near-identical rows where rounding could dip below zero.
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(109);
  const std::size_t rows = 40, v = 300;
  auto zp = normal<T>(g, rows * v, 0.0, 4.0);
  auto zq = zp;
  const auto tiny = normal<T>(g, rows * v, 0.0, 1e-6);
  for (std::size_t i = 0; i < zq.size(); ++i)
    if (i >= rows * v / 2) zq[i] = static_cast<T>(zq[i] + tiny[i]);
  const auto k = run_kl(b, zp, zq, rows, v, {}, 0.7);
  for (std::size_t r = 0; r < rows; ++r) {
    CHECK(k.kl[r] >= T(0));
    if (r < rows / 2) CHECK(k.kl[r] == T(0));
  }
}

TEMPLATE_LIST_TEST_CASE("regression: verl #6361: garbage in masked rows never reaches the outputs",
                        "[ops][token_logprobs][regression]", all_configs) {
  // https://github.com/verl-project/verl/pull/6361: NaN in masked KL positions leaked into sums. Masked rows
  // here are never read: NaN logits and pad token ids there give exact zeros, forward and backward.
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(110);
  const std::size_t rows = 4, v = 9;
  auto z = normal<T>(g, rows * v);
  for (std::size_t j = 0; j < v; ++j) z[1 * v + j] = std::numeric_limits<T>::quiet_NaN();
  const std::vector<token_type> tok = {3, -100, 8, 0};
  const std::vector<mask_type> mask = {1, 0, 1, 1};
  const auto f = run_forward(b, z, rows, v, tok, mask, 1.0);
  CHECK(f.logp[1] == T(0));
  CHECK(f.ent[1] == T(0));
  for (std::size_t r : {0u, 2u, 3u}) CHECK(std::isfinite(static_cast<double>(f.logp[r])));
  const auto d = run_backward(b, z, rows, v, tok, mask, std::vector<T>(rows, T(1)), std::vector<T>(rows, T(1)), 1.0);
  for (std::size_t i = 0; i < d.size(); ++i) REQUIRE(std::isfinite(static_cast<double>(d[i])));
  for (std::size_t j = 0; j < v; ++j) CHECK(d[1 * v + j] == T(0));
  const auto k = run_kl(b, z, z, rows, v, mask, 1.0);
  CHECK(k.kl == std::vector<T>{0, 0, 0, 0});
}

// ---- bfloat16 logits ------------------------------------------------------------------------------------

TEMPLATE_LIST_TEST_CASE("token_logprobs of bfloat16 logits: float outputs that match the oracle on the widened logits",
                        "[ops][token_logprobs][bfloat16]", all_configs) {
  // Forward and backward, with -inf (filtered) entries, masked rows holding pads, two temperatures, rows of
  // one column to rows longer than the generic path's float chunk; in place too. The gradient is rounded once
  // to bfloat16: within one bf16 ulp (2^-7 relative) of the exact value.
  using B = typename TestType::backend;
  const auto b = TestType::make();
  auto g = rng(71);
  for (const std::size_t v : {1u, 33u, 257u, 3000u}) {
    for (const double t : {1.0, 0.7}) {
      const std::size_t rows = 13;
      const auto zf = normal<float>(g, rows * v, 0.0, 3.0);
      std::vector<bfloat16> z(rows * v);
      std::vector<double> zw(rows * v);  // the widened values: what the oracle sees
      for (std::size_t i = 0; i < z.size(); ++i) z[i] = bfloat16(zf[i]);
      std::vector<token_type> tokens(rows);
      std::vector<mask_type> mask(rows, 1);
      for (std::size_t r = 0; r < rows; ++r) {
        tokens[r] = static_cast<token_type>(g() % v);
        if (r % 5 == 3) mask[r] = 0, tokens[r] = -100;
        if (v > 2 && r % 4 == 1) z[r * v + (static_cast<std::size_t>(tokens[r]) + 1) % v] = bfloat16(-std::numeric_limits<float>::infinity());
      }
      for (std::size_t i = 0; i < z.size(); ++i) zw[i] = static_cast<double>(z[i]);
      auto dz = to_backend(b, z, rows, v);
      auto dt = to_backend(b, tokens, 1, rows);
      auto dm = to_backend(b, mask, 1, rows);
      auto lp = allocate<float>(b, 1, rows), lse = allocate<float>(b, 1, rows), h = allocate<float>(b, 1, rows);
      const auto st = token_logprobs(b, as_const(dz.view()), dt.view().flat(), dm.view().flat(), lp.view().flat(),
                                     lse.view().flat(), h.view().flat(), token_logprob_options{t});
      const auto want = oracle_forward(zw, rows, v, tokens, mask, t);
      INFO("V " << v << " t " << t);
      CHECK(st.valid_rows == 11);  // rows 3 and 8 are masked
      CHECK_THAT(to_host(b, lp.view()), close_to<float>(want.logp, 4e-6, 4e-6));
      CHECK_THAT(to_host(b, lse.view()), close_to<float>(want.lse, 4e-6, 4e-6));
      CHECK_THAT(to_host(b, h.view()), close_to<float>(want.ent, 4e-6, 4e-6));

      std::vector<float> gl(rows), gh(rows);
      for (std::size_t r = 0; r < rows; ++r) gl[r] = static_cast<float>(r % 3) - 1.0f, gh[r] = 0.25f * static_cast<float>(r % 4);
      auto dgl = to_backend(b, gl, 1, rows), dgh = to_backend(b, gh, 1, rows);
      auto dlogits = allocate<bfloat16>(b, rows, v);
      token_logprobs_backward(b, as_const(dz.view()), dt.view().flat(), dm.view().flat(), lse.view().flat(),
                              dgl.view().flat(), h.view().flat(), dgh.view().flat(), dlogits.view(),
                              token_logprob_options{t});
      const auto want_d = oracle_backward(zw, rows, v, tokens, mask, std::vector<double>(gl.begin(), gl.end()),
                                          std::vector<double>(gh.begin(), gh.end()), t);
      const auto got_d = to_host(b, dlogits.view());
      std::size_t off = 0;
      for (std::size_t i = 0; i < got_d.size(); ++i) {
        const double x = static_cast<double>(got_d[i]), w = want_d[i];
        if (!(std::abs(x - w) <= 0x1p-7 * std::abs(w) + 1e-6)) ++off;
      }
      CHECK(off == 0);
      // In place: the gradient overwrites the logits, with the same bits.
      token_logprobs_backward(b, as_const(dz.view()), dt.view().flat(), dm.view().flat(), lse.view().flat(),
                              dgl.view().flat(), h.view().flat(), dgh.view().flat(), dz.view(), token_logprob_options{t});
      CHECK(to_host(b, dz.view()) == got_d);
      static_assert(std::is_same_v<decltype(to_host(b, dz.view())), std::vector<bfloat16>>);
      (void)sizeof(B);
    }
  }
}

TEMPLATE_LIST_TEST_CASE("token_logprobs of bfloat16 logits: named errors and the opt-in finite check",
                        "[ops][token_logprobs][bfloat16][errors]", all_configs) {
  const auto b = TestType::make();
  const float nan = std::numeric_limits<float>::quiet_NaN(), ninf = -std::numeric_limits<float>::infinity();
  auto z = to_backend(b, std::vector<bfloat16>{bfloat16(1.0f), bfloat16(ninf), bfloat16(0.5f), bfloat16(2.0f)}, 2, 2);
  auto tokens = to_backend(b, std::vector<token_type>{0, 1}, 1, 2);
  auto lp = allocate<float>(b, 1, 2), short_lp = allocate<float>(b, 1, 1);
  try {
    token_logprobs(b, as_const(z.view()), tokens.view().flat(), {}, short_lp.view().flat());
    FAIL("no error for a short logprobs");
  } catch (const rlhf::invalid_argument& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("rlhf::token_logprobs") && Catch::Contains("logprobs"));
  }
  set_finite_checks(true);
  CHECK_NOTHROW(token_logprobs(b, as_const(z.view()), tokens.view().flat(), {}, lp.view().flat()));  // -inf is fine
  auto bad = to_backend(b, std::vector<bfloat16>{bfloat16(1.0f), bfloat16(nan), bfloat16(0.5f), bfloat16(2.0f)}, 2, 2);
  CHECK_THROWS_AS(token_logprobs(b, as_const(bad.view()), tokens.view().flat(), {}, lp.view().flat()), non_finite_error);
  set_finite_checks(false);
  // Without the check, the NaN row gives NaN and the other row its value: log softmax([0.5, 2])[1].
  token_logprobs(b, as_const(bad.view()), tokens.view().flat(), {}, lp.view().flat());
  const auto got = to_host(b, lp.view());
  CHECK(std::isnan(got[0]));
  CHECK(got[1] == Approx(2.0 - std::log(std::exp(0.5) + std::exp(2.0))).epsilon(1e-6));
}
