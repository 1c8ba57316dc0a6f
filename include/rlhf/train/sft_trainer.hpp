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
#include "rlhf/dist/global_statistics.hpp"
#include "rlhf/dist/shard.hpp"
#include "rlhf/dist/single_process.hpp"
#include "rlhf/losses/loss_aggregation.hpp"
#include "rlhf/losses/sft_loss.hpp"
#include "rlhf/models/concepts.hpp"
#include "rlhf/train/data_parallel.hpp"
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
  gradient_all_reduce_options gradient_all_reduce{};  ///< buckets and overlap of the gradient sums over ranks
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
/// @tparam C an rlhf::communicator (default rlhf::single_process). With N ranks, step() takes this rank's
///         rows and every rank ends the step with the parameters one process would have after a step on
///         the union of the ranks' rows; fit() and evaluate() take the whole data (the same on every rank)
///         and each rank works on its block (rlhf::shard_of).
template <class P, class O, class C = single_process>
class sft_trainer {
 public:
  using B = typename P::backend_type;
  using T = typename P::value_type;

  /// @param policy the model to train (kept by reference)
  /// @param optimizer its optimizer (kept by reference)
  /// @param comm the ranks training together (rank 0's parameters are broadcast at the first step)
  sft_trainer(P& policy, O& optimizer, sft_options options = {}, C comm = {})
      : policy_(policy), optimizer_(optimizer), options_(std::move(options)), comm_(std::move(comm)) {
    detail::check_policy<P>();
    detail::check_optimizer<O, B, T>();
    detail::check_communicator<C, B>();
    detail::check_positive("rlhf::sft_trainer", "options.eval_batch_size", static_cast<double>(options_.eval_batch_size));
  }

  const sft_options& options() const { return options_; }

  /// One optimizer step on a batch of demonstrations (with several ranks: this rank's rows, which may be
  /// none as long as some rank has rows; the statistics are those of the union).
  /// @throws rlhf::invalid_argument on an empty batch (on every rank) or a row the policy rejects
  sft_step_stats step(const B& b, std::span<const prompt_response> batch) {
    constexpr std::string_view fn = "rlhf::sft_trainer::step";
    if (batch.empty() && comm_.size() == 1) detail::throw_argument_error(fn, "batch", "at least one demonstration", "none");
    replicas_.ensure(comm_, b, policy_);
    policy_.zero_grad(b);
    // The gradients are summed over the ranks as the backward pass finishes them.
    overlapped_gradient_all_reduce summed(comm_, b, policy_, options_.gradient_all_reduce, &gradient_workspace_);
    sft_loss_stats l{};
    if (!batch.empty()) {
      const token_batch host = make_token_batch(batch, options_.max_length, fn);
      // Global counts: each rank's loss and gradient are its share of the union's token mean.
      const aggregation_counts mine = count_valid(host.mask, host.rows, host.cols);
      const std::vector<double> all = global_sums(comm_, {mine.tokens, mine.sequences, double(host.rows)});
      const auto dev = upload(b, host);
      auto logp = allocate<T>(b, host.rows, host.cols), d_logp = allocate<T>(b, host.rows, host.cols);
      policy_.log_probs(b, dev.tokens_view(), dev.lengths_view(), logp.view(), backend_matrix<B, T>{},
                        forward_mode::training);
      l = sft_loss(b, as_const(logp.view()), dev.mask_view(), d_logp.view(), comm_.size() == 1 ? options_.aggregation : with_global_counts(options_.aggregation, {all[0], all[1]}));
      summed.arm();
      policy_.log_probs_backward(b, as_const(d_logp.view()), backend_matrix<B, const T>{});
    } else if (global_sums(comm_, {0.0, 0.0, 0.0})[2] == 0) {
      detail::throw_argument_error(fn, "batch", "at least one demonstration on some rank", "none on every rank");
    }
    summed.finish();
    sft_step_stats s;
    const std::vector<double> sums = global_sums(comm_, {l.loss, l.nll * l.token_count, l.token_count});
    s.loss = sums[0];
    s.tokens = sums[2];
    s.nll = comm_.size() == 1 ? l.nll : (sums[2] > 0 ? sums[1] / sums[2] : 0.0);
    s.update = optimizer_update(b, optimizer_, policy_.parameters(), options_.max_grad_norm, options_.schedule);
    return s;
  }

  /// The ranks this trainer spans.
  const C& communicator() const { return comm_; }

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
      const std::vector<std::size_t> global = order.epoch_batch(run.batch_size, s);
      for (const std::size_t i : shard(std::span<const std::size_t>(global), comm_)) batch.push_back(train[i]);
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
        [&](const std::filesystem::path& dir) { load_training_checkpoint(b, dir / "policy.safetensors", policy_, optimizer_); },
        detail::run_rank_of(comm_));
  }

  /// Mean negative log-likelihood per response token over `data` (inference mode, nothing recorded). With
  /// several ranks, `data` is the whole set on every rank: each rank evaluates its block and the result
  /// is the whole set's, on every rank.
  sft_eval_stats evaluate(const B& b, std::span<const prompt_response> all_data) {
    const std::span<const prompt_response> data = shard(all_data, comm_);
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
    const std::vector<double> sums = global_sums(comm_, {nll_sum, tokens});
    nll_sum = sums[0];
    tokens = sums[1];
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
  C comm_;
  detail::replicas_in_sync replicas_;
  gradient_all_reduce_workspace<B, T> gradient_workspace_;  // packing buffers of the gradient sums, kept across steps
};

}  // namespace rlhf
