/// @file reward_trainer.hpp
/// @brief Step 2 of InstructGPT: the reward model trained from rankings of K responses per prompt with
///        the pairwise loss over all C(K,2) comparisons of a prompt kept in one batch element, then a bias
///        that gives the demonstrations a mean reward of 0 (Ouyang et al. 2022, §3.5, eq. 1).
///
/// One step takes P prompts with K_p responses each: every response is scored once (one forward per
/// response, all sum_p K_p rows in one batch, not one forward per pair, which would overfit in one epoch
/// as the paper observes), the scores are laid out as [P, K_max] for rlhf::ranking_loss, and its
/// gradient flows back through the model's scores_backward. fit() runs whole epochs with metrics,
/// progress, checkpoints and resumption (rlhf::run_options).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "rlhf/advantages/reward_normalization.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/dist/global_statistics.hpp"
#include "rlhf/dist/shard.hpp"
#include "rlhf/dist/single_process.hpp"
#include "rlhf/losses/ranking_loss.hpp"
#include "rlhf/models/concepts.hpp"
#include "rlhf/train/data_parallel.hpp"
#include "rlhf/train/optimizer_update.hpp"
#include "rlhf/train/token_batch.hpp"
#include "rlhf/train/training_checkpoint.hpp"
#include "rlhf/train/training_run.hpp"

namespace rlhf {

/// One prompt with K >= 2 responses and their ranks (0 = best; equal ranks are ties).
struct ranked_responses {
  std::vector<token_type> prompt;
  std::vector<std::vector<token_type>> responses;
  std::vector<std::int32_t> ranks;
};

/// Options of rlhf::reward_trainer. InstructGPT: one epoch over the comparisons (§C.2), loss eq. 1.
struct reward_trainer_options {
  double max_grad_norm = 1.0;          ///< global-norm clip; <= 0 turns clipping off
  lr_schedule_fn schedule;             ///< learning rate per step; empty keeps the optimizer's
  ranking_loss_options loss{};         ///< InstructGPT's pairwise loss by default
  std::size_t max_length = 0;          ///< rows are cut to this many tokens (0: no limit)
  std::size_t eval_batch_prompts = 16; ///< prompts per forward in evaluate() and score()
  gradient_all_reduce_options gradient_all_reduce{};  ///< buckets and overlap of the gradient sums over ranks
};

/// What one step (or an evaluation) measured.
struct reward_step_stats {
  double loss = 0;            ///< the ranking loss (per prompt, averaged over prompts)
  double accuracy = 0;        ///< fraction of compared (non-tie) pairs ranked the right way
  double mean_margin = 0;     ///< mean r_better - r_worse over compared pairs
  double compared_pairs = 0;  ///< non-tie pairs
  optimizer_update_stats update;  ///< (steps only)
};

/// Trains a reward model from rankings.
/// @tparam R an rlhf::reward_model (its backend_type is the trainer's backend)
/// @tparam O an rlhf::optimizer over that backend and R::value_type
/// @tparam C an rlhf::communicator (default rlhf::single_process). With N ranks, step() takes this rank's
///         ranked prompts and every rank ends the step with the parameters one process would have after a
///         step on the union (each rank's gradient is scaled by its share of the prompts); fit(),
///         evaluate() and normalize_to_demonstrations() take the whole data on every rank and each rank
///         works on its block (rlhf::shard_of).
template <class R, class O, class C = single_process>
class reward_trainer {
 public:
  using B = typename R::backend_type;
  using T = typename R::value_type;

  /// @param comm the ranks training together (rank 0's parameters are broadcast at the first step)
  reward_trainer(R& model, O& optimizer, reward_trainer_options options = {}, C comm = {})
      : model_(model), optimizer_(optimizer), options_(std::move(options)), comm_(std::move(comm)) {
    detail::check_reward_model<R>();
    detail::check_optimizer<O, B, T>();
    detail::check_communicator<C, B>();
    detail::check_positive("rlhf::reward_trainer", "options.eval_batch_prompts",
                           static_cast<double>(options_.eval_batch_prompts));
  }

  const reward_trainer_options& options() const { return options_; }
  /// The ranks this trainer spans.
  const C& communicator() const { return comm_; }

  /// One optimizer step on a batch of ranked prompts.
  /// @throws rlhf::invalid_argument on an empty batch, K < 2, or ranks not matching the responses
  reward_step_stats step(const B& b, std::span<const ranked_responses> batch) {
    constexpr std::string_view fn = "rlhf::reward_trainer::step";
    if (batch.empty() && comm_.size() == 1) detail::throw_argument_error(fn, "batch", "at least one ranked prompt", "none");
    replicas_.ensure(comm_, b, model_);
    model_.zero_grad(b);
    // The loss is a mean over prompts: each rank's gradient is scaled by its share of the union's prompts.
    const double prompts = global_sum(comm_, static_cast<double>(batch.size()));
    if (prompts == 0) detail::throw_argument_error(fn, "batch", "at least one ranked prompt on some rank", "none on every rank");
    const double share = static_cast<double>(batch.size()) / prompts;
    // The gradients are summed over the ranks as the backward pass finishes them.
    overlapped_gradient_all_reduce summed(comm_, b, model_, options_.gradient_all_reduce, &gradient_workspace_);
    summed.arm();
    reward_step_stats s = batch.empty() ? reward_step_stats{} : loss_and_gradient(b, batch, true, fn, share);
    summed.finish();
    s = global_stats(s, share);
    s.update = optimizer_update(b, optimizer_, model_.parameters(), options_.max_grad_norm, options_.schedule);
    return s;
  }

  /// Trains for run.epochs passes over `train` in batches of run.batch_size ranked prompts (each epoch in
  /// its own seeded order; InstructGPT trains one epoch), writing per-step metrics (step, epoch, loss,
  /// accuracy, margin, pairs, grad_norm, learning_rate, and validation_loss / validation_accuracy when
  /// `validation` is given: after every run.eval_every steps and at the end, NaN in other rows),
  /// checkpointing the model with its optimizer, and resuming from run.checkpoint_dir. The demonstration
  /// bias (normalize_to_demonstrations) is the caller's step after fit().
  /// @throws rlhf::invalid_argument on empty training data, a zero batch size or a checkpoint of another
  ///         model or run
  run_result fit(const B& b, std::span<const ranked_responses> train, const run_options& run,
                 std::span<const ranked_responses> validation = {}) {
    constexpr std::string_view fn = "rlhf::reward_trainer::fit";
    if (train.empty()) detail::throw_argument_error(fn, "train", "at least one ranked prompt", "none");
    detail::check_run_options(fn, run);
    epoch_order order(train.size(), run.seed);
    const std::size_t per_epoch = order.batches_per_epoch(run.batch_size), total = run.epochs * per_epoch;
    std::vector<ranked_responses> batch;
    const auto one_step = [&](std::size_t s) {
      batch.clear();
      const std::vector<std::size_t> global = order.epoch_batch(run.batch_size, s);
      for (const std::size_t i : shard(std::span<const std::size_t>(global), comm_)) batch.push_back(train[i]);
      const reward_step_stats st = step(b, batch);
      metrics_row row{{"epoch", static_cast<double>(s / per_epoch + 1)},
                      {"loss", st.loss},
                      {"accuracy", st.accuracy},
                      {"margin", st.mean_margin},
                      {"pairs", st.compared_pairs},
                      {"grad_norm", st.update.grad_norm},
                      {"learning_rate", st.update.learning_rate}};
      if (!validation.empty()) {
        const bool eval = detail::evaluate_after(run, s, total);
        const reward_step_stats v = eval ? evaluate(b, validation) : reward_step_stats{};
        row.emplace_back("validation_loss", eval ? v.loss : std::nan(""));
        row.emplace_back("validation_accuracy", eval ? v.accuracy : std::nan(""));
      }
      return row;
    };
    return detail::run_training_loop(
        fn, run, "RM", total, one_step,
        [&](const std::filesystem::path& dir) { save_training_checkpoint(b, dir / "reward_model.safetensors", model_, optimizer_); },
        [&](const std::filesystem::path& dir) { load_training_checkpoint(b, dir / "reward_model.safetensors", model_, optimizer_); },
        detail::run_rank_of(comm_));
  }

  /// Loss and pairwise accuracy over `data` (inference mode, nothing recorded), weighted by compared pairs.
  /// With several ranks, `data` is the whole set on every rank; each rank evaluates its block and the
  /// result is the whole set's, on every rank.
  reward_step_stats evaluate(const B& b, std::span<const ranked_responses> all_data) {
    const std::span<const ranked_responses> data = shard(all_data, comm_);
    reward_step_stats total;
    double loss_weight = 0;
    for (std::size_t first = 0; first < data.size(); first += options_.eval_batch_prompts) {
      const auto part = data.subspan(first, std::min(options_.eval_batch_prompts, data.size() - first));
      const reward_step_stats s = loss_and_gradient(b, part, false, "rlhf::reward_trainer::evaluate");
      total.loss += s.loss * static_cast<double>(part.size());
      loss_weight += static_cast<double>(part.size());
      total.accuracy += s.accuracy * s.compared_pairs;
      total.mean_margin += s.mean_margin * s.compared_pairs;
      total.compared_pairs += s.compared_pairs;
    }
    const std::vector<double> sums = global_sums(
        comm_, {total.loss, loss_weight, total.accuracy, total.mean_margin, total.compared_pairs});
    total.loss = sums[0];
    loss_weight = sums[1];
    total.accuracy = sums[2];
    total.mean_margin = sums[3];
    total.compared_pairs = sums[4];
    if (loss_weight > 0) total.loss /= loss_weight;
    if (total.compared_pairs > 0) {
      total.accuracy /= total.compared_pairs;
      total.mean_margin /= total.compared_pairs;
    }
    return total;
  }

  /// Scores of prompt + response pairs (inference), in order.
  std::vector<double> score(const B& b, std::span<const prompt_response> pairs) {
    std::vector<double> out;
    out.reserve(pairs.size());
    for (std::size_t first = 0; first < pairs.size(); first += options_.eval_batch_prompts) {
      const auto part = pairs.subspan(first, std::min(options_.eval_batch_prompts, pairs.size() - first));
      const token_batch host = make_token_batch(part, options_.max_length, "rlhf::reward_trainer::score");
      const auto dev = upload(b, host);
      auto scores = allocate<T>(b, host.rows);
      model_.scores(b, dev.tokens_view(), dev.lengths_view(), scores.view().flat(), forward_mode::inference);
      for (const T x : to_host(b, scores.view().flat())) out.push_back(static_cast<double>(x));
    }
    return out;
  }

  /// InstructGPT's normalization: adds the bias that makes the mean score of the demonstrations 0
  /// (rlhf::demonstration_bias) to the model (which must have add_to_bias, as llama_reward_model does).
  /// @return the bias added
  double normalize_to_demonstrations(const B& b, std::span<const prompt_response> demonstrations)
    requires requires(R& m, const B& bb, double d) { m.add_to_bias(bb, d); }
  {
    if (demonstrations.empty()) {
      detail::throw_argument_error("rlhf::reward_trainer::normalize_to_demonstrations", "demonstrations",
                                   "at least one demonstration", "none");
    }
    double bias = 0;
    if (comm_.size() == 1) {
      const std::vector<double> s = score(b, demonstrations);
      const auto dev = to_backend(b, s);
      bias = demonstration_bias(b, as_const(dev.view().flat()));
    } else {  // each rank scores its block; the mean is the whole set's
      const std::vector<double> s = score(b, shard(demonstrations, comm_));
      double sum = 0;
      for (const double x : s) sum += x;
      const std::vector<double> total = global_sums(comm_, {sum, static_cast<double>(s.size())});
      bias = -(total[0] / total[1]);
    }
    model_.add_to_bias(b, bias);
    return bias;
  }

 private:
  R& model_;
  O& optimizer_;
  reward_trainer_options options_;
  C comm_;
  detail::replicas_in_sync replicas_;
  gradient_all_reduce_workspace<B, T> gradient_workspace_;  // packing buffers of the gradient sums, kept across steps

  // A step's statistics over the union of the ranks' prompts: the loss weighted by each rank's share of
  // the prompts, accuracy and margin by compared pairs. One rank: unchanged.
  reward_step_stats global_stats(const reward_step_stats& s, double share) const {
    if (comm_.size() == 1) return s;
    const std::vector<double> sums = global_sums(
        comm_, {s.loss * share, s.accuracy * s.compared_pairs, s.mean_margin * s.compared_pairs, s.compared_pairs});
    reward_step_stats g;
    g.loss = sums[0];
    g.compared_pairs = sums[3];
    g.accuracy = g.compared_pairs > 0 ? sums[1] / g.compared_pairs : 0.0;
    g.mean_margin = g.compared_pairs > 0 ? sums[2] / g.compared_pairs : 0.0;
    return g;
  }

  // Scores every response of the batch in one forward, applies the ranking loss, and (training) runs
  // the backward.
  // `gradient_scale` multiplies the gradient (a rank's share of the union's prompts).
  reward_step_stats loss_and_gradient(const B& b, std::span<const ranked_responses> batch, bool training,
                                      std::string_view fn, double gradient_scale = 1.0) {
    std::vector<prompt_response> rows;
    std::size_t k_max = 0;
    for (std::size_t p = 0; p < batch.size(); ++p) {
      const auto& e = batch[p];
      const std::string arg = "batch[" + std::to_string(p) + "]";
      if (e.responses.size() < 2) {
        detail::throw_argument_error(fn, arg + ".responses", "K >= 2 responses to rank", std::to_string(e.responses.size()));
      }
      if (e.ranks.size() != e.responses.size()) {
        detail::throw_argument_error(fn, arg + ".ranks", "one rank per response (" + std::to_string(e.responses.size()) + ")",
                                     std::to_string(e.ranks.size()));
      }
      k_max = std::max(k_max, e.responses.size());
      for (const auto& r : e.responses) rows.push_back({e.prompt, r});
    }
    const token_batch host = make_token_batch(rows, options_.max_length, fn);
    const auto dev = upload(b, host);
    auto scores = allocate<T>(b, host.rows);
    model_.scores(b, dev.tokens_view(), dev.lengths_view(), scores.view().flat(),
                  training ? forward_mode::training : forward_mode::inference);
    // [sum K] scores -> [P, K_max] rewards, ranks and counts for the ranking loss.
    const std::vector<T> flat = to_host(b, scores.view().flat());
    const std::size_t P = batch.size();
    std::vector<T> rewards(P * k_max, T(0));
    std::vector<std::int32_t> ranks(P * k_max, 0), counts(P);
    for (std::size_t p = 0, i = 0; p < P; ++p) {
      counts[p] = static_cast<std::int32_t>(batch[p].responses.size());
      for (std::size_t k = 0; k < batch[p].responses.size(); ++k, ++i) {
        rewards[p * k_max + k] = flat[i];
        ranks[p * k_max + k] = batch[p].ranks[k];
      }
    }
    auto d_rewards = allocate<T>(b, P, k_max);
    const auto rw = to_backend(b, std::span<const T>(rewards), P, k_max);
    const auto rk = to_backend(b, std::span<const std::int32_t>(ranks), P, k_max);
    const auto ct = to_backend(b, counts);
    const ranking_loss_stats l =
        ranking_loss(b, as_const(rw.view()), as_const(rk.view()), as_const(ct.view().flat()), d_rewards.view(), options_.loss);
    if (training) {
      const std::vector<T> d = to_host(b, d_rewards.view());
      std::vector<T> d_flat(host.rows);
      for (std::size_t p = 0, i = 0; p < P; ++p)
        for (std::size_t k = 0; k < batch[p].responses.size(); ++k, ++i) {
          d_flat[i] = gradient_scale == 1.0 ? d[p * k_max + k] : static_cast<T>(gradient_scale * static_cast<double>(d[p * k_max + k]));
        }
      const auto d_scores = to_backend(b, d_flat);
      model_.scores_backward(b, as_const(d_scores.view().flat()));
    }
    reward_step_stats s;
    s.loss = l.loss;
    s.accuracy = l.accuracy;
    s.mean_margin = l.mean_margin;
    s.compared_pairs = l.compared_pairs;
    return s;
  }
};

}  // namespace rlhf
