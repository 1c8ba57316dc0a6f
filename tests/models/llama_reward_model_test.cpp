// The reward model: scores read at the last real token (against the trunk's hidden states), the
// backward against finite differences, initialization from a language model, the bias shift, the
// pairwise ranking loss driving it to rank a preferred response first, and errors.
#include "rlhf/models/llama_reward_model.hpp"

#include <cmath>
#include <vector>

#include "models/model_test_support.hpp"
#include "rlhf/optim/adamw.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

TEMPLATE_LIST_TEST_CASE("llama_reward_model::scores: the head applied to the hidden state of each row's last real token",
                        "[models][reward_model]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  const llama_config c = tiny_llama_config(false);
  llama_model<B, T> lm(b, c);
  lm.init_random(b, 3, 0.4, 0.1);
  auto rm = llama_reward_model<B, T>::from_language_model(b, lm, 5);
  CHECK(rm.parameters().size() == lm.parameters().size() - 1 + 2);  // no classifier; weight and bias
  CHECK(rm.parameters().back().name == "score_head.bias");
  std::mt19937_64 g(1);
  const std::size_t rows = 3, cols = 6;
  const auto tokens_host = random_tokens(g, rows * cols, c.vocab_size);
  const std::vector<std::int32_t> lengths_host{6, 2, 1};
  const auto tokens = to_backend(b, std::span<const token_type>(tokens_host), rows, cols);
  const auto lengths = to_backend(b, lengths_host);
  // Oracle: the same trunk's hidden states (the trunk is a copy of the LM's), dotted with the head.
  llama_activations<B, T> act;
  lm.forward_hidden(b, as_const(tokens.view()), as_const(lengths.view().flat()), act, forward_mode::inference);
  const auto hidden = to_host(b, act.hidden());
  rm.add_to_bias(b, 0.25);
  CHECK(rm.bias(b) == Approx(0.25));
  const auto w = to_host(b, rm.parameters()[rm.parameters().size() - 2].value.flat());
  std::vector<double> want(rows);
  for (std::size_t r = 0; r < rows; ++r) {
    const std::size_t row = r * cols + static_cast<std::size_t>(lengths_host[r]) - 1;
    double s = 0.25;
    for (std::size_t j = 0; j < c.dim; ++j) s += static_cast<double>(hidden[row * c.dim + j]) * static_cast<double>(w[j]);
    want[r] = s;
  }
  auto scores = allocate<T>(b, rows);
  rm.scores(b, as_const(tokens.view()), as_const(lengths.view().flat()), scores.view().flat());
  CHECK_THAT(to_host(b, scores.view().flat()), close_to<T>(want));
  // Tokens after the last real one do not matter.
  auto changed = tokens_host;
  changed[1 * cols + 3] = (changed[1 * cols + 3] + 1) % static_cast<token_type>(c.vocab_size);
  const auto tokens2 = to_backend(b, std::span<const token_type>(changed), rows, cols);
  auto scores2 = allocate<T>(b, rows);
  rm.scores(b, as_const(tokens2.view()), as_const(lengths.view().flat()), scores2.view().flat());
  CHECK(to_host(b, scores2.view().flat()) == to_host(b, scores.view().flat()));
  // clone: the same scores from separate storage, in the same attention memory mode; the copy moves alone.
  rm.trunk().set_attention_memory(attention_memory::shared_softmax);
  auto copy = rm.clone(b);
  CHECK(copy.trunk().attention_memory_mode() == attention_memory::shared_softmax);
  CHECK(copy.parameters().back().value.data != rm.parameters().back().value.data);
  auto copy_scores = allocate<T>(b, rows);
  copy.scores(b, as_const(tokens.view()), as_const(lengths.view().flat()), copy_scores.view().flat());
  CHECK(to_host(b, copy_scores.view().flat()) == to_host(b, scores.view().flat()));
  copy.add_to_bias(b, 1.0);
  CHECK(rm.bias(b) == Approx(0.25));
  CHECK(copy.bias(b) == Approx(1.25));
}

TEMPLATE_LIST_TEST_CASE("llama_reward_model::scores_backward: every parameter's gradient matches finite differences; ready reports",
                        "[models][reward_model][gradient]", double_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  const llama_config c = tiny_llama_config(true);
  llama_model<B, T> lm(b, c);
  lm.init_random(b, 21, 0.5, 0.2);
  auto rm = llama_reward_model<B, T>::from_language_model(b, lm, 2, 0.5);
  std::mt19937_64 g(3);
  const std::size_t rows = 3, cols = 5;
  const auto tokens_host = random_tokens(g, rows * cols, c.vocab_size);
  const auto tokens = to_backend(b, std::span<const token_type>(tokens_host), rows, cols);
  const auto lengths = to_backend(b, std::vector<std::int32_t>{5, 3, 1});
  const auto weights = normal<T>(g, rows);
  const auto d_scores = to_backend(b, weights);
  auto scores = allocate<T>(b, rows);
  const auto loss = [&] {
    rm.scores(b, as_const(tokens.view()), as_const(lengths.view().flat()), scores.view().flat());
    const auto s = to_host(b, scores.view().flat());
    double l = 0;
    for (std::size_t r = 0; r < rows; ++r) l += weights[r] * s[r];
    return l;
  };
  const auto backward = [&] {
    rm.scores(b, as_const(tokens.view()), as_const(lengths.view().flat()), scores.view().flat(), forward_mode::training);
    rm.scores_backward(b, as_const(d_scores.view().flat()));
  };
  check_parameter_gradients<B, T>(b, rm.parameters(), loss, backward);
  // Ready reports: the head (the last two parameters) first, then the trunk from the top.
  std::vector<std::size_t> expected{rm.trunk().tensor_count(), rm.trunk().tensor_count() + 1};
  for (const std::size_t k : llama_backward_report_order(c)) expected.push_back(k);
  CHECK(check_gradient_reports(b, rm, backward) == expected);
}

TEMPLATE_LIST_TEST_CASE("llama_reward_model: AdamW on the pairwise loss learns to rank the preferred response first",
                        "[models][reward_model][training]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  const llama_config c = tiny_llama_config(true);
  llama_reward_model<B, T> rm(b, c);
  {
    llama_model<B, T> lm(b, c);
    lm.init_random(b, 7, 0.2);
    rm.trunk().copy_parameters_from(b, lm);
    rm.head().init_random(b, 1, 0.3);
  }
  // Rows 2i (preferred) and 2i + 1 (rejected) share a prompt; loss = mean softplus(s_l - s_w)
  // (Ouyang et al. 2022, eq. 1 with K = 2), gradient written here directly.
  std::mt19937_64 g(5);
  const std::size_t pairs = 3, rows = 2 * pairs, cols = 6;
  const auto tokens_host = random_tokens(g, rows * cols, c.vocab_size);
  const auto tokens = to_backend(b, std::span<const token_type>(tokens_host), rows, cols);
  auto scores = allocate<T>(b, rows);
  adamw_options o;
  o.learning_rate = 0.01;
  adamw<B, T> opt(o);
  double margin = 0;
  for (int step = 0; step < 80; ++step) {
    rm.zero_grad(b);
    rm.scores(b, as_const(tokens.view()), {}, scores.view().flat(), forward_mode::training);
    const auto s = to_host(b, scores.view().flat());
    std::vector<T> d(rows);
    margin = 1e300;
    for (std::size_t i = 0; i < pairs; ++i) {
      const double diff = static_cast<double>(s[2 * i]) - static_cast<double>(s[2 * i + 1]);
      margin = std::min(margin, diff);
      const double sig = 1.0 / (1.0 + std::exp(diff));  // d/d s_w of softplus(s_l - s_w) = -sigmoid(s_l - s_w)
      d[2 * i] = static_cast<T>(-sig / pairs);
      d[2 * i + 1] = static_cast<T>(sig / pairs);
    }
    const auto d_scores = to_backend(b, d);
    rm.scores_backward(b, as_const(d_scores.view().flat()));
    opt.step(b, rm.parameters());
  }
  CHECK(margin > 2.0);
}

TEMPLATE_LIST_TEST_CASE("llama_reward_model: errors name the function and the argument", "[models][reward_model][errors]",
                        all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  llama_reward_model<B, T> rm(b, tiny_llama_config());
  const auto tokens = allocate_filled<token_type>(b, 2, 4, 1);
  auto scores = allocate<T>(b, 2), wrong = allocate<T>(b, 3);
  CHECK_THROWS_WITH(rm.scores_backward(b, as_const(scores.view().flat())),
                    Catch::Contains("rlhf::llama_reward_model::scores_backward") && Catch::Contains("no recorded"));
  CHECK_THROWS_WITH(rm.scores(b, as_const(tokens.view()), {}, wrong.view().flat()),
                    Catch::Contains("rlhf::llama_reward_model::scores") && Catch::Contains("'scores'"));
  const auto zero_length = to_backend(b, std::vector<std::int32_t>{4, 0});
  CHECK_THROWS_WITH(rm.scores(b, as_const(tokens.view()), as_const(zero_length.view().flat()), scores.view().flat()),
                    Catch::Contains("'lengths'") && Catch::Contains("[1, T = 4]") && Catch::Contains("1 outside"));
  rm.scores(b, as_const(tokens.view()), {}, scores.view().flat(), forward_mode::training);
  CHECK_THROWS_WITH(rm.scores_backward(b, as_const(wrong.view().flat())), Catch::Contains("'d_scores'"));
}
