// rlhf::embedding_forward / embedding_backward: a hand-computed lookup and scatter-add, a naive host
// oracle, finite differences of the backward, repeated tokens, and argument errors.
#include "test_support.hpp"

#include <limits>

#include "rlhf/models/layers/embedding.hpp"

using namespace rlhf;
using namespace rlhf::test;
using Catch::Matchers::Contains;

namespace {

std::vector<double> oracle_embedding(const std::vector<double>& table, std::size_t d, const std::vector<token_type>& tokens) {
  std::vector<double> out(tokens.size() * d);
  for (std::size_t n = 0; n < tokens.size(); ++n)
    for (std::size_t c = 0; c < d; ++c) out[n * d + c] = table[static_cast<std::size_t>(tokens[n]) * d + c];
  return out;
}

std::vector<token_type> random_tokens(std::mt19937_64& g, std::size_t n, std::size_t vocab) {
  std::uniform_int_distribution<int> d(0, static_cast<int>(vocab) - 1);
  std::vector<token_type> t(n);
  for (auto& x : t) x = d(g);
  return t;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("embedding: hand-computed lookup and scatter-add", "[models][layers][embedding]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  // table rows: 0 -> [1, 2], 1 -> [3, 4], 2 -> [5, 6]; tokens [2, 0, 2] pick rows 2, 0, 2.
  auto table = to_backend(b, std::vector<T>{1, 2, 3, 4, 5, 6}, 3, 2);
  auto tokens = to_backend(b, std::vector<token_type>{2, 0, 2});
  auto out = allocate<T>(b, 3, 2);
  embedding_forward(b, table.view(), tokens.view().flat(), out.view());
  CHECK(to_host(b, out.view()) == std::vector<T>{5, 6, 1, 2, 5, 6});

  // d_out rows [1, 1], [2, 3], [0.5, -1] added into a table gradient that starts at 0.25:
  //   row 0 += [2, 3]               -> [2.25, 3.25]
  //   row 1 untouched               -> [0.25, 0.25]
  //   row 2 += [1, 1] + [0.5, -1]   -> [1.75, 0.25]
  auto d_out = to_backend(b, std::vector<T>{1, 1, 2, 3, T(0.5), -1}, 3, 2);
  auto d_table = allocate_filled<T>(b, 3, 2, T(0.25));
  embedding_backward(b, tokens.view().flat(), d_out.view(), d_table.view());
  CHECK(to_host(b, d_table.view()) == std::vector<T>{T(2.25), T(3.25), T(0.25), T(0.25), T(1.75), T(0.25)});
}

TEMPLATE_LIST_TEST_CASE("embedding: random shapes match the naive oracle", "[models][layers][embedding]", all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto g = rng(301);
  for (std::size_t trial = 0; trial < 4; ++trial) {
    const std::size_t vocab = 3 + trial * 5, d = 1 + trial * 3, n = trial * 7;
    const auto table = uniform<T>(g, vocab * d);
    const auto tok = random_tokens(g, n, vocab);
    auto bt = to_backend(b, table, vocab, d);
    auto btok = to_backend(b, tok);
    auto out = allocate_filled<T>(b, n, d, T(-7));
    embedding_forward(b, bt.view(), btok.view().flat(), out.view());
    CHECK_THAT(to_host(b, out.view()), close_to<T>(oracle_embedding(cast<double>(table), d, tok), 0.0, 0.0));

    // Backward: oracle scatter-add in token order.
    const auto dout = uniform<T>(g, n * d);
    std::vector<double> want(vocab * d, 1.0);
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t c = 0; c < d; ++c) want[static_cast<std::size_t>(tok[r]) * d + c] += static_cast<double>(dout[r * d + c]);
    auto bd = to_backend(b, dout, n, d);
    auto dt = allocate_filled<T>(b, vocab, d, T(1));
    embedding_backward(b, btok.view().flat(), bd.view(), dt.view());
    CHECK_THAT(to_host(b, dt.view()), close_to<T>(want));
  }
}

TEMPLATE_LIST_TEST_CASE("embedding: backward matches finite differences (repeated tokens accumulate)",
                        "[models][layers][embedding][gradient]", double_configs) {
  const auto b = TestType::make();
  auto g = rng(302);
  const std::size_t vocab = 5, d = 6, n = 9;
  const auto table0 = uniform<double>(g, vocab * d);
  auto tok = random_tokens(g, n, vocab);
  tok[3] = tok[0];  // at least one repeat
  tok[4] = tok[0];
  const auto gout = uniform<double>(g, n * d);
  auto btok = to_backend(b, tok);
  const auto loss = [&](const std::vector<double>& table) {
    auto bt = to_backend(b, table, vocab, d);
    auto out = allocate<double>(b, n, d);
    embedding_forward(b, bt.view(), btok.view().flat(), out.view());
    const auto o = to_host(b, out.view());
    double s = 0;
    for (std::size_t i = 0; i < o.size(); ++i) s += o[i] * gout[i];
    return s;
  };
  auto bg = to_backend(b, gout, n, d);
  auto dt = allocate_filled<double>(b, vocab, d, 0.0);
  embedding_backward(b, btok.view().flat(), bg.view(), dt.view());
  CHECK_THAT(to_host(b, dt.view()), close_to<double>(numeric_gradient(loss, table0), fd_rtol, fd_atol));
}

TEMPLATE_LIST_TEST_CASE("embedding: argument errors name the function and the argument", "[models][layers][embedding][errors]",
                        all_configs) {
  using T = typename TestType::value;
  const auto b = TestType::make();
  auto table = allocate_filled<T>(b, 4, 3, T(1));
  auto out = allocate<T>(b, 2, 3);
  auto bad_ids = to_backend(b, std::vector<token_type>{1, 4});
  auto neg_ids = to_backend(b, std::vector<token_type>{-1, 0});
  auto ids = to_backend(b, std::vector<token_type>{1, 3});
  CHECK_THROWS_WITH(embedding_forward(b, table.view(), bad_ids.view().flat(), out.view()),
                    Contains("rlhf::embedding_forward") && Contains("'tokens'") && Contains("[0, 4)"));
  CHECK_THROWS_WITH(embedding_forward(b, table.view(), neg_ids.view().flat(), out.view()), Contains("'tokens'"));
  auto out_bad = allocate<T>(b, 2, 2);
  CHECK_THROWS_WITH(embedding_forward(b, table.view(), ids.view().flat(), out_bad.view()),
                    Contains("rlhf::embedding_forward") && Contains("'out'") && Contains("[2, 3]") &&
                        Contains("received [2, 2]"));
  auto d_out_bad = allocate<T>(b, 3, 3);
  CHECK_THROWS_WITH(embedding_backward(b, ids.view().flat(), d_out_bad.view(), table.view()),
                    Contains("rlhf::embedding_backward") && Contains("'d_out'"));
  auto d_out = allocate_filled<T>(b, 2, 3, T(1));
  CHECK_THROWS_WITH(embedding_backward(b, bad_ids.view().flat(), d_out.view(), table.view()),
                    Contains("rlhf::embedding_backward") && Contains("'tokens'"));
  {
    // The opt-in finite check names the non-finite input.
    auto nan_table = allocate_filled<T>(b, 4, 3, std::numeric_limits<T>::quiet_NaN());
    set_finite_checks(true);
    CHECK_THROWS_AS(embedding_forward(b, nan_table.view(), ids.view().flat(), out.view()), non_finite_error);
    CHECK_THROWS_WITH(embedding_forward(b, nan_table.view(), ids.view().flat(), out.view()), Contains("'table'"));
    set_finite_checks(false);
    embedding_forward(b, nan_table.view(), ids.view().flat(), out.view());  // off: NaN in, NaN out
  }
  // Nothing was written by the failed calls: the table gradient is still all ones.
  CHECK(to_host(b, table.view()) == std::vector<T>(12, T(1)));
}
