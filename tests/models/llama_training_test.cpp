// The training path of llama_model (the policy): chunked log-probs and entropy against the full
// forward's logits, the whole-model backward against finite differences, recording semantics, errors,
// and overfitting a tiny batch with AdamW.
#include "rlhf/models/llama.hpp"

#include <cmath>
#include <vector>

#include "models/model_test_support.hpp"
#include "rlhf/optim/adamw.hpp"
#include "test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {

// Host oracle from the full logits: log-softmax at the next token, and the entropy, in the tokens' layout.
template <class T>
void oracle_log_probs(const std::vector<T>& logits, const std::vector<token_type>& tokens, std::size_t rows,
                      std::size_t cols, std::size_t vocab, const std::vector<std::int32_t>& lengths,
                      std::vector<double>& lp, std::vector<double>& ent) {
  lp.assign(rows * cols, 0.0);
  ent.assign(rows * cols, 0.0);
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t t = 1; t < static_cast<std::size_t>(lengths[r]); ++t) {
      const T* z = logits.data() + (r * cols + t - 1) * vocab;
      double m = -1e300;
      for (std::size_t v = 0; v < vocab; ++v) m = std::max(m, static_cast<double>(z[v]));
      double s = 0;
      for (std::size_t v = 0; v < vocab; ++v) s += std::exp(static_cast<double>(z[v]) - m);
      const double lse = m + std::log(s);
      lp[r * cols + t] = static_cast<double>(z[tokens[r * cols + t]]) - lse;
      double h = 0;
      for (std::size_t v = 0; v < vocab; ++v) {
        const double logp = static_cast<double>(z[v]) - lse;
        h -= std::exp(logp) * logp;
      }
      ent[r * cols + t] = h;
    }
  }
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("llama_model::log_probs: next-token log-probs and entropy of the full forward, chunked or not",
                        "[models][llama][training]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  for (const bool shared : {true, false}) {
    const llama_config c = tiny_llama_config(shared);
    llama_model<B, T> model(b, c);
    model.init_random(b, 3, 0.4, 0.1);
    std::mt19937_64 g(11);
    const std::size_t rows = 3, cols = 7, V = c.vocab_size;
    const auto tokens_host = random_tokens(g, rows * cols, V);
    const std::vector<std::int32_t> lengths_host{7, 4, 1};
    const auto tokens = to_backend(b, std::span<const token_type>(tokens_host), rows, cols);
    const auto lengths = to_backend(b, lengths_host);
    auto logits = allocate<T>(b, rows * cols, V);
    model.forward(b, as_const(tokens.view()), as_const(lengths.view().flat()), logits.view());
    std::vector<double> want_lp, want_ent;
    oracle_log_probs(to_host(b, logits.view()), tokens_host, rows, cols, V, lengths_host, want_lp, want_ent);
    for (const std::size_t max_elements : {std::size_t(1) << 24, V, 3 * V + 2, std::size_t(1)}) {
      INFO("shared " << shared << ", max_logits_elements " << max_elements);
      auto lp = allocate_filled<T>(b, rows, cols, T(9)), ent = allocate_filled<T>(b, rows, cols, T(9));
      model.log_probs(b, as_const(tokens.view()), as_const(lengths.view().flat()), lp.view(), ent.view(),
                      forward_mode::inference, log_prob_options{1.0, max_elements});
      CHECK_THAT(to_host(b, lp.view()), close_to<T>(want_lp));
      CHECK_THAT(to_host(b, ent.view()), close_to<T>(want_ent));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("llama_model::log_probs: temperature divides the logits; empty lengths mean full rows",
                        "[models][llama][training]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  const llama_config c = tiny_llama_config();
  llama_model<B, T> model(b, c);
  model.init_random(b, 5, 0.4);
  std::mt19937_64 g(2);
  const std::size_t rows = 2, cols = 5, V = c.vocab_size;
  const auto tokens_host = random_tokens(g, rows * cols, V);
  const auto tokens = to_backend(b, std::span<const token_type>(tokens_host), rows, cols);
  auto logits = allocate<T>(b, rows * cols, V);
  model.forward(b, as_const(tokens.view()), {}, logits.view());
  auto scaled = to_host(b, logits.view());
  for (auto& z : scaled) z = static_cast<T>(static_cast<double>(z) / 0.7);
  std::vector<double> want_lp, want_ent;
  oracle_log_probs(scaled, tokens_host, rows, cols, V, {5, 5}, want_lp, want_ent);
  auto lp = allocate<T>(b, rows, cols);
  model.log_probs(b, as_const(tokens.view()), {}, lp.view(), {}, forward_mode::inference, log_prob_options{0.7});
  CHECK_THAT(to_host(b, lp.view()), close_to<T>(want_lp));
}

TEMPLATE_LIST_TEST_CASE("llama_model::log_probs_backward: every parameter's gradient matches finite differences; ready reports",
                        "[models][llama][training][gradient]", double_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  for (const bool shared : {true, false}) {
    INFO("shared classifier " << shared);
    const llama_config c = tiny_llama_config(shared);
    llama_model<B, T> model(b, c);
    model.init_random(b, 17, 0.5, 0.2);
    std::mt19937_64 g(23);
    const std::size_t rows = 2, cols = 6;
    const auto tokens_host = random_tokens(g, rows * cols, c.vocab_size);
    const std::vector<std::int32_t> lengths_host{6, 4};
    const auto tokens = to_backend(b, std::span<const token_type>(tokens_host), rows, cols);
    const auto lengths = to_backend(b, lengths_host);
    const auto w_lp = normal<T>(g, rows * cols), w_ent = normal<T>(g, rows * cols);
    const auto d_lp = to_backend(b, std::span<const T>(w_lp), rows, cols);
    const auto d_ent = to_backend(b, std::span<const T>(w_ent), rows, cols);
    auto lp = allocate<T>(b, rows, cols), ent = allocate<T>(b, rows, cols);
    const log_prob_options small_chunks{1.0, 2 * c.vocab_size + 1};  // three rows per chunk
    // loss = sum w_lp * logprobs + sum w_ent * entropy (padding and column 0 are 0 in both outputs)
    const auto loss = [&] {
      model.log_probs(b, as_const(tokens.view()), as_const(lengths.view().flat()), lp.view(), ent.view(),
                      forward_mode::inference, small_chunks);
      const auto l = to_host(b, lp.view()), e = to_host(b, ent.view());
      double s = 0;
      for (std::size_t i = 0; i < l.size(); ++i) s += w_lp[i] * l[i] + w_ent[i] * e[i];
      return s;
    };
    const auto backward = [&] {
      model.log_probs(b, as_const(tokens.view()), as_const(lengths.view().flat()), lp.view(), ent.view(),
                      forward_mode::training, small_chunks);
      model.log_probs_backward(b, as_const(d_lp.view()), as_const(d_ent.view()));
    };
    check_parameter_gradients<B, T>(b, model.parameters(), loss, backward);
    // Reports of ready gradients (for data-parallel overlap): the classifier (when separate) as soon as
    // the logits' backward is done, then the trunk from the top; each once and final when reported.
    std::vector<std::size_t> expected = llama_backward_report_order(c);
    if (!shared) expected.insert(expected.begin(), 2 + 9 * c.n_layers);
    CHECK(check_gradient_reports(b, model, backward) == expected);
  }
}

TEMPLATE_LIST_TEST_CASE("llama_model: an inference pass between a training forward and its backward changes nothing",
                        "[models][llama][training]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  const llama_config c = tiny_llama_config();
  llama_model<B, T> model(b, c);
  model.init_random(b, 1, 0.3);
  std::mt19937_64 g(4);
  const auto tok_a = random_tokens(g, 2 * 5, c.vocab_size), tok_b = random_tokens(g, 3 * 4, c.vocab_size);
  const auto ta = to_backend(b, std::span<const token_type>(tok_a), 2, 5);
  const auto tb = to_backend(b, std::span<const token_type>(tok_b), 3, 4);
  auto lp_a = allocate<T>(b, 2, 5), lp_b = allocate<T>(b, 3, 4);
  const auto ones = allocate_filled<T>(b, 2, 5, T(1));
  const auto grads_after = [&](bool interleave) {
    model.zero_grad(b);
    model.log_probs(b, as_const(ta.view()), {}, lp_a.view(), {}, forward_mode::training);
    if (interleave) model.log_probs(b, as_const(tb.view()), {}, lp_b.view(), {}, forward_mode::inference);
    model.log_probs_backward(b, as_const(ones.view()));
    std::vector<double> all;
    for (const auto& p : model.parameters()) {
      const auto h = cast<double>(to_host(b, p.grad.flat()));
      all.insert(all.end(), h.begin(), h.end());
    }
    return all;
  };
  const auto plain = grads_after(false);
  CHECK(grads_after(true) == plain);
  double norm = 0;
  for (const double x : plain) norm += x * x;
  CHECK(norm > 0);
}

TEMPLATE_LIST_TEST_CASE("llama_model: attention memory modes: a shared softmax gives the same gradients bit for bit, "
                        "row logsumexps the same to rounding, each in less memory",
                        "[models][llama][training]", all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  const llama_config c = tiny_llama_config();
  llama_model<B, T> model(b, c);
  model.init_random(b, 5, 0.4);
  CHECK(model.attention_memory_mode() == attention_memory::per_layer_softmax);  // the default
  std::mt19937_64 g(8);
  const std::size_t rows = 2, cols = 5;
  const auto tok = random_tokens(g, rows * cols, c.vocab_size);
  const auto tokens = to_backend(b, std::span<const token_type>(tok), rows, cols);
  const auto lengths = to_backend(b, std::vector<std::int32_t>{5, 3});
  auto lp = allocate<T>(b, rows, cols);
  const auto d_lp = to_backend(b, normal<T>(g, rows * cols), rows, cols);
  // Records in mode `record`, backpropagates with the model set to `backprop`: the recorded pass's mode rules.
  const auto grads_after = [&](attention_memory record, attention_memory backprop) {
    model.zero_grad(b);
    model.set_attention_memory(record);
    model.log_probs(b, as_const(tokens.view()), as_const(lengths.view().flat()), lp.view(), {}, forward_mode::training);
    model.set_attention_memory(backprop);
    model.log_probs_backward(b, as_const(d_lp.view()));
    std::vector<T> all;
    for (const auto& p : model.parameters()) {
      const auto h = to_host(b, p.grad.flat());
      all.insert(all.end(), h.begin(), h.end());
    }
    return all;
  };
  using enum attention_memory;
  const auto kept = grads_after(per_layer_softmax, per_layer_softmax);
  CHECK(grads_after(shared_softmax, shared_softmax) == kept);
  CHECK(grads_after(shared_softmax, per_layer_softmax) == kept);
  CHECK(grads_after(per_layer_softmax, logsumexp) == kept);
  const auto lse = grads_after(logsumexp, logsumexp);
  CHECK(grads_after(logsumexp, per_layer_softmax) == lse);
  // Float: the saved softmax is rounded to float, the recomputed one is not.
  const double rt = std::is_same_v<T, float> ? 2e-3 : 1e-9, at = std::is_same_v<T, float> ? 2e-4 : 1e-11;
  CHECK_THAT(lse, close_to<T>(cast<double>(kept), rt, at));
  double norm = 0;
  for (const T x : kept) norm += static_cast<double>(x) * static_cast<double>(x);
  CHECK(norm > 0);
  // One softmax for all layers instead of one per layer, or only [B*Hq*T] logsumexps per layer; a reused
  // activation set follows the mode.
  llama_activations<B, T> per_layer, shared, rows_lse;
  const auto record = [&](attention_memory mode, llama_activations<B, T>& act) {
    model.set_attention_memory(mode);
    model.forward_hidden(b, as_const(tokens.view()), as_const(lengths.view().flat()), act, forward_mode::training);
  };
  record(per_layer_softmax, per_layer);
  record(shared_softmax, shared);
  record(logsumexp, rows_lse);
  const std::size_t softmax = rows * c.n_heads * cols * cols, row_values = rows * c.n_heads * cols;
  CHECK(per_layer.stored_values() - shared.stored_values() == (c.n_layers - 1) * softmax);
  CHECK(per_layer.stored_values() - rows_lse.stored_values() == c.n_layers * (softmax - row_values));
  record(per_layer_softmax, shared);
  CHECK(shared.stored_values() == per_layer.stored_values());
}

TEMPLATE_LIST_TEST_CASE("llama_model: training errors name the function and the argument", "[models][llama][errors]",
                        all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  const llama_config c = tiny_llama_config(false);
  llama_model<B, T> model(b, c);
  const auto tokens = allocate_filled<token_type>(b, 2, 4, 1);
  auto lp = allocate<T>(b, 2, 4), wrong = allocate<T>(b, 2, 3);
  CHECK_THROWS_WITH(model.log_probs_backward(b, as_const(lp.view())),
                    Catch::Contains("rlhf::llama_model::log_probs_backward") && Catch::Contains("'d_logprobs'") &&
                        Catch::Contains("no recorded training forward"));
  CHECK_THROWS_WITH(model.log_probs(b, as_const(tokens.view()), {}, wrong.view()),
                    Catch::Contains("rlhf::llama_model::log_probs") && Catch::Contains("'logprobs'"));
  CHECK_THROWS_WITH(model.log_probs(b, as_const(tokens.view()), {}, lp.view(), wrong.view()),
                    Catch::Contains("'entropy'"));
  CHECK_THROWS_WITH(model.log_probs(b, as_const(tokens.view()), {}, lp.view(), {}, forward_mode::inference,
                                    log_prob_options{0.0}),
                    Catch::Contains("'options.temperature'"));
  model.log_probs(b, as_const(tokens.view()), {}, lp.view(), {}, forward_mode::training);
  CHECK_THROWS_WITH(model.log_probs_backward(b, as_const(wrong.view())),
                    Catch::Contains("'d_logprobs'") && Catch::Contains("[2, 4]") && Catch::Contains("[2, 3]"));
  const auto bad_lengths = to_backend(b, std::vector<std::int32_t>{4, 5});
  CHECK_THROWS_WITH(model.log_probs(b, as_const(tokens.view()), as_const(bad_lengths.view().flat()), lp.view()),
                    Catch::Contains("'lengths'"));
  llama_model<B, T> trunk(b, c, false);
  CHECK(trunk.parameters().size() == model.parameters().size() - 1);  // no "output"
  CHECK_THROWS_WITH(trunk.log_probs(b, as_const(tokens.view()), {}, lp.view()), Catch::Contains("classifier"));
}

TEMPLATE_LIST_TEST_CASE("llama_model: AdamW overfits a tiny batch to near-zero loss", "[models][llama][training]",
                        all_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b = TestType::make();
  llama_config c = tiny_llama_config(false);
  c.dim = 16;
  c.hidden_dim = 24;
  llama_model<B, T> model(b, c);
  model.init_random(b, 9, 0.1);
  std::mt19937_64 g(8);
  const std::size_t rows = 2, cols = 8;
  const auto tokens_host = random_tokens(g, rows * cols, c.vocab_size);
  const std::vector<std::int32_t> lengths_host{8, 6};
  const auto tokens = to_backend(b, std::span<const token_type>(tokens_host), rows, cols);
  const auto lengths = to_backend(b, lengths_host);
  const double n_predicted = 7 + 5;
  // loss = -mean log-prob of the predicted tokens: d loss / d logprobs = -1 / n (padding ignored).
  const auto d_lp = allocate_filled<T>(b, rows, cols, static_cast<T>(-1.0 / n_predicted));
  auto lp = allocate<T>(b, rows, cols);
  adamw_options o;
  o.learning_rate = 0.02;
  o.weight_decay = 0.0;
  adamw<B, T> opt(o);
  const auto mean_nll = [&] {
    const auto h = to_host(b, lp.view());
    double s = 0;
    for (const T x : h) s -= static_cast<double>(x);
    return s / n_predicted;
  };
  double first = 0, last = 0;
  for (int step = 0; step < 150; ++step) {
    model.zero_grad(b);
    model.log_probs(b, as_const(tokens.view()), as_const(lengths.view().flat()), lp.view(), {}, forward_mode::training);
    if (step == 0) first = mean_nll();
    last = mean_nll();
    model.log_probs_backward(b, as_const(d_lp.view()));
    opt.step(b, model.parameters());
  }
  INFO("first loss " << first << ", last " << last);
  CHECK(first > 2.0);  // about log(11) at a random start
  CHECK(last < 0.05);
}
