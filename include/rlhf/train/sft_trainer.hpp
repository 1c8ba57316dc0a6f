/// @file sft_trainer.hpp
/// @brief Step 1 of InstructGPT: supervised fine-tuning of the policy on demonstrations, with the loss on
///        the response tokens only (Ouyang et al. 2022, §3.5).
///
/// One step: pad the batch (prompt + response per row, rlhf::make_token_batch), the policy's log-probs in
/// training mode, the SFT loss -aggregate(log pi(response tokens)) and its gradient (rlhf::sft_loss, masked
/// to the response tokens), the policy's backward, gradient clipping, the scheduled learning rate, the
/// optimizer's update. evaluate() gives the validation loss with nothing recorded. fit() runs whole epochs
/// with metrics, progress, checkpoints and resumption (rlhf::run_options).
#pragma once

#include <cmath>
#include <cstddef>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "rlhf/backends/memory.hpp"
#include "rlhf/losses/loss_aggregation.hpp"
#include "rlhf/losses/sft_loss.hpp"
#include "rlhf/models/concepts.hpp"
#include "rlhf/train/optimizer_update.hpp"
#include "rlhf/train/token_batch.hpp"
#include "rlhf/train/training_checkpoint.hpp"
#include "rlhf/train/training_run.hpp"

namespace rlhf {

/// Options of rlhf::sft_trainer. InstructGPT trains SFT for 16 epochs with cosine decay and residual
/// dropout 0.2 (§C.1); the schedule is the caller's (rlhf::cosine_schedule converts to lr_schedule_fn).
struct sft_options {
  double max_grad_norm = 1.0;        ///< global-norm clip; <= 0 turns clipping off
  lr_schedule_fn schedule;           ///< learning rate per step; empty keeps the optimizer's
  loss_aggregation aggregation{};    ///< token mean over the batch's response tokens by default
  std::size_t max_length = 0;        ///< rows are cut to this many tokens (0: no limit; use the model's seq_len)
  std::size_t eval_batch_size = 16;  ///< rows per forward in evaluate()
};

/// What one SFT step measured.
struct sft_step_stats {
  double loss = 0;          ///< the aggregated loss of the batch
  double nll = 0;           ///< mean negative log-likelihood per response token
  double tokens = 0;        ///< response tokens in the batch
  optimizer_update_stats update;
};

/// Validation result: mean negative log-likelihood per response token and its perplexity.
struct sft_eval_stats {
  double nll = 0;
  double perplexity = 1;
  double tokens = 0;
};

/// Supervised fine-tuning of a policy.
/// @tparam P an rlhf::policy (its backend_type is the trainer's backend B)
/// @tparam O an rlhf::optimizer over B and P::value_type
template <class P, class O>
class sft_trainer {
 public:
  using B = typename P::backend_type;
  using T = typename P::value_type;

  /// @param policy the model to train (kept by reference)
  /// @param optimizer its optimizer (kept by reference)
  sft_trainer(P& policy, O& optimizer, sft_options options = {})
      : policy_(policy), optimizer_(optimizer), options_(std::move(options)) {
    detail::check_policy<P>();
    detail::check_optimizer<O, B, T>();
    detail::check_positive("rlhf::sft_trainer", "options.eval_batch_size", static_cast<double>(options_.eval_batch_size));
  }

  const sft_options& options() const { return options_; }

  /// One optimizer step on a batch of demonstrations.
  /// @throws rlhf::invalid_argument on an empty batch or a row the policy rejects
  sft_step_stats step(const B& b, std::span<const prompt_response> batch) {
    constexpr std::string_view fn = "rlhf::sft_trainer::step";
    if (batch.empty()) detail::throw_argument_error(fn, "batch", "at least one demonstration", "none");
    const token_batch host = make_token_batch(batch, options_.max_length, fn);
    const auto dev = upload(b, host);
    auto logp = allocate<T>(b, host.rows, host.cols), d_logp = allocate<T>(b, host.rows, host.cols);
    policy_.zero_grad(b);
    policy_.log_probs(b, dev.tokens_view(), dev.lengths_view(), logp.view(), backend_matrix<B, T>{},
                      forward_mode::training);
    const sft_loss_stats l = sft_loss(b, as_const(logp.view()), dev.mask_view(), d_logp.view(), options_.aggregation);
    policy_.log_probs_backward(b, as_const(d_logp.view()), backend_matrix<B, const T>{});
    sft_step_stats s;
    s.loss = l.loss;
    s.nll = l.nll;
    s.tokens = l.token_count;
    s.update = optimizer_update(b, optimizer_, policy_.parameters(), options_.max_grad_norm, options_.schedule);
    return s;
  }

  /// Trains for run.epochs passes over `train` in batches of run.batch_size demonstrations (each epoch
  /// in its own seeded order), writing per-step metrics (step, epoch, loss, nll, tokens, grad_norm,
  /// learning_rate, and validation_nll when `validation` is given: after every run.eval_every steps and
  /// at the end, NaN in other rows), checkpointing the policy with its optimizer, and resuming from
  /// run.checkpoint_dir. A resumed run equals the uninterrupted one (see training_run.hpp).
  /// @throws rlhf::invalid_argument on empty training data, a zero batch size or a checkpoint of another
  ///         model or run
  run_result fit(const B& b, std::span<const prompt_response> train, const run_options& run,
                 std::span<const prompt_response> validation = {}) {
    constexpr std::string_view fn = "rlhf::sft_trainer::fit";
    if (train.empty()) detail::throw_argument_error(fn, "train", "at least one demonstration", "none");
    detail::check_run_options(fn, run);
    epoch_order order(train.size(), run.seed);
    const std::size_t per_epoch = order.batches_per_epoch(run.batch_size), total = run.epochs * per_epoch;
    std::vector<prompt_response> batch;
    const auto one_step = [&](std::size_t s) {
      batch.clear();
      for (const std::size_t i : order.epoch_batch(run.batch_size, s)) batch.push_back(train[i]);
      const sft_step_stats st = step(b, batch);
      metrics_row row{{"epoch", static_cast<double>(s / per_epoch + 1)},
                      {"loss", st.loss},
                      {"nll", st.nll},
                      {"tokens", st.tokens},
                      {"grad_norm", st.update.grad_norm},
                      {"learning_rate", st.update.learning_rate}};
      if (!validation.empty()) {
        row.emplace_back("validation_nll", detail::evaluate_after(run, s, total) ? evaluate(b, validation).nll : std::nan(""));
      }
      return row;
    };
    return detail::run_training_loop(
        fn, run, "SFT", total, one_step,
        [&](const std::filesystem::path& dir) { save_training_checkpoint(b, dir / "policy.safetensors", policy_, optimizer_); },
        [&](const std::filesystem::path& dir) { load_training_checkpoint(b, dir / "policy.safetensors", policy_, optimizer_); });
  }

  /// Mean negative log-likelihood per response token over `data` (inference mode, nothing recorded).
  sft_eval_stats evaluate(const B& b, std::span<const prompt_response> data) {
    double nll_sum = 0, tokens = 0;
    for (std::size_t first = 0; first < data.size(); first += options_.eval_batch_size) {
      const auto part = data.subspan(first, std::min(options_.eval_batch_size, data.size() - first));
      const token_batch host = make_token_batch(part, options_.max_length, "rlhf::sft_trainer::evaluate");
      const auto dev = upload(b, host);
      auto logp = allocate<T>(b, host.rows, host.cols), d_logp = allocate<T>(b, host.rows, host.cols);
      policy_.log_probs(b, dev.tokens_view(), dev.lengths_view(), logp.view(), backend_matrix<B, T>{},
                        forward_mode::inference);
      const sft_loss_stats l = sft_loss(b, as_const(logp.view()), dev.mask_view(), d_logp.view());
      nll_sum += l.nll * l.token_count;
      tokens += l.token_count;
    }
    sft_eval_stats e;
    e.tokens = tokens;
    e.nll = tokens > 0 ? nll_sum / tokens : 0.0;
    e.perplexity = std::exp(e.nll);
    return e;
  }

 private:
  P& policy_;
  O& optimizer_;
  sft_options options_;
};

}  // namespace rlhf
