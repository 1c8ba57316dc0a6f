/// @file ppo_trainer.hpp
/// @brief Step 3 of InstructGPT: PPO against the reward model with a per-token KL penalty to the SFT
///        policy, GAE, PPO-clip with a clipped value loss, and optional PPO-ptx (Ouyang et al. 2022, §3.5,
///        eq. 2; Schulman et al. 2017; Schulman et al. 2016; Ziegler et al. 2019).
///
/// One iteration (step()):
/// 1. rollout: the policy samples a response for every prompt (KV cache, its own distribution);
/// 2. scoring, nothing recorded: the policy's log-probs (the "old" ones), the reference (SFT) policy's,
///    the values, the reward model's score of each prompt + response;
/// 3. rewards: r_t = -beta (log pi(a_t|s_t) - log pi_SFT(a_t|s_t)) per response token, plus the score at
///    the last response token; advantages and returns by GAE over the response tokens
///    (both in one rlhf::kl_penalized_advantages call); advantages whitened over the batch (rlhf::whiten);
/// 4. `ppo_epochs` passes over the batch in `minibatches` shuffled minibatches: the policy's PPO-clip loss
///    (+ entropy bonus) backward, then the PPO-ptx loss on a pretraining batch (gamma * log-likelihood,
///    accumulated into the same gradients), one clipped optimizer update; the value model's clipped value
///    loss, one update. An optional early stop ends the epochs once the policy's KL to the rollout
///    policy exceeds a threshold;
/// 5. the KL controller (fixed beta, or Ziegler's adaptive controller on the per-sequence KL) and the
///    EMA of the policy weights are updated.
/// fit() runs many iterations with metrics, progress, checkpoints and resumption (rlhf::run_options).
/// Defaults reproduce InstructGPT: beta 0.02, clip 0.2, value clip 0.2, gamma 1, lambda 0.95, ptx off
/// (27.8 when on), temperature 1.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <numeric>
#include <optional>
#include <random>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "rlhf/advantages/gae.hpp"
#include "rlhf/advantages/kl_penalized_advantages.hpp"
#include "rlhf/advantages/kl_penalized_rewards.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/data/atomic_write.hpp"
#include "rlhf/data/json.hpp"
#include "rlhf/dist/global_statistics.hpp"
#include "rlhf/dist/shard.hpp"
#include "rlhf/dist/single_process.hpp"
#include "rlhf/losses/entropy_bonus.hpp"
#include "rlhf/losses/loss_aggregation.hpp"
#include "rlhf/losses/ppo_clip_loss.hpp"
#include "rlhf/losses/ptx_loss.hpp"
#include "rlhf/losses/value_loss.hpp"
#include "rlhf/models/concepts.hpp"
#include "rlhf/models/sampling.hpp"
#include "rlhf/ops/kl_estimators.hpp"
#include "rlhf/ops/whitening.hpp"
#include "rlhf/optim/ema.hpp"
#include "rlhf/train/data_parallel.hpp"
#include "rlhf/train/kl_controller.hpp"
#include "rlhf/train/optimizer_update.hpp"
#include "rlhf/train/token_batch.hpp"
#include "rlhf/train/training_checkpoint.hpp"
#include "rlhf/train/training_run.hpp"

namespace rlhf {

/// How the KL coefficient beta evolves.
enum class kl_control {
  fixed,     ///< beta stays at its initial value (InstructGPT)
  adaptive,  ///< Ziegler et al. 2019's proportional controller on the per-sequence KL
};

/// Options of rlhf::ppo_trainer. Defaults: InstructGPT (Ouyang et al. 2022, §3.5 and appendix C.4).
struct ppo_options {
  // Rollout
  std::size_t max_new_tokens = 32;   ///< response length limit
  sampling_options sampling{};       ///< temperature 1, no truncation: the policy's own distribution
  std::size_t max_length = 0;        ///< prompt + response rows are cut to this (0: no limit)
  // Rewards and advantages
  double beta = 0.02;                               ///< initial KL coefficient
  kl_control control = kl_control::fixed;           ///< fixed or adaptive beta
  double kl_target = 6.0;                           ///< adaptive: target KL in nats per sequence (ZGL)
  double kl_horizon = 10000.0;                      ///< adaptive: horizon in episodes (ZGL)
  kl_estimator_options kl{};                        ///< per-token KL estimator (k1 = log-ratio)
  kl_penalized_rewards_options rewards{};           ///< score placement and clipping (beta overwritten)
  gae_options gae{};                                ///< gamma 1, lambda 0.95
  bool whiten_advantages = true;                    ///< whiten advantages over the batch's response tokens
  whiten_options whitening{};
  // Optimization
  std::size_t ppo_epochs = 4;    ///< passes over each rollout batch
  std::size_t minibatches = 1;   ///< minibatches per pass (rows shuffled each pass)
  ppo_clip_options clip{};       ///< epsilon 0.2
  value_loss_options value{};    ///< value clip 0.2
  double entropy_coefficient = 0.0;  ///< entropy bonus (0: off, as InstructGPT)
  loss_aggregation aggregation{};    ///< token mean
  double early_stop_kl = 0.0;        ///< stop the epochs when the minibatch policy KL exceeds it (0: off)
  double max_grad_norm = 1.0;        ///< global-norm clip of each model's gradients (<= 0: off)
  lr_schedule_fn policy_schedule;    ///< empty: the optimizers' own rates
  lr_schedule_fn value_schedule;
  // PPO-ptx
  bool ptx = false;      ///< mix in the pretraining log-likelihood (PPO-ptx)
  ptx_options ptx_loss{};  ///< gamma 27.8
  // Weight averaging
  double ema_decay = 0.0;  ///< EMA of the policy's weights after each iteration (0: off; InstructGPT 0.992)
  std::uint64_t seed = 1;  ///< minibatch shuffling; sampling seeds derive from sampling.seed + iteration
  // Data parallel
  gradient_all_reduce_options gradient_all_reduce{};  ///< buckets and overlap of the gradient sums over ranks

  /// InstructGPT (Ouyang et al. 2022, appendix C.4): the defaults above with the policy EMA (0.992) on.
  /// PPO-ptx is switched on by the caller (`ptx = true`; gamma 27.8), who provides the pretraining data.
  static ppo_options instructgpt() {
    ppo_options o;
    o.ema_decay = 0.992;
    return o;
  }
  /// openai/lm-human-preferences (Ziegler et al. 2019): adaptive beta from 0.2 towards 6 nats over a
  /// 10000-episode horizon, score at the last position, lambda 0.95, 4 epochs, whitening per batch.
  static ppo_options zgl() {
    ppo_options o = preset(kl_penalized_rewards_options::zgl(), gae_options::zgl(), whiten_options::zgl(), true,
                           ppo_clip_options::zgl(), value_loss_options::zgl(), kl_estimator_options::zgl(), 4);
    o.control = kl_control::adaptive;
    return o;
  }
  /// TRL 0.11 PPOTrainer: adaptive beta from 0.2 (target 6, horizon 10000), k1, masked Bessel whitening,
  /// 4 epochs.
  static ppo_options trl0() {
    ppo_options o = preset(kl_penalized_rewards_options::trl0(), gae_options::trl0(), whiten_options::trl0(), true,
                           ppo_clip_options::trl0(), value_loss_options::trl0(), kl_estimator_options::trl0(), 4);
    o.control = kl_control::adaptive;
    return o;
  }
  /// TRL (current) PPOTrainer: fixed beta 0.05, k1, masked Bessel whitening, 4 epochs. Its score slot
  /// (one past the last response token) is the placement bug the library's default avoids; the preset
  /// keeps it to reproduce TRL's numbers.
  static ppo_options trl1() {
    return preset(kl_penalized_rewards_options::trl1(), gae_options::trl1(), whiten_options::trl1(), true,
                  ppo_clip_options::trl1(), value_loss_options::trl1(), kl_estimator_options::trl1(), 4);
  }
  /// DeepSpeed-Chat step 3: fixed beta 0.1, score clipped to +-5, no advantage whitening, 1 epoch;
  /// unsupervised (ptx) coefficient 27.8 when ptx is on.
  static ppo_options dsc() {
    ppo_options o = preset(kl_penalized_rewards_options::dsc(), gae_options::dsc(), whiten_options{}, false,
                           ppo_clip_options::dsc(), value_loss_options::dsc(), kl_estimator_options::dsc(), 1);
    o.ptx_loss = ptx_options::dsc();
    return o;
  }
  /// OpenRLHF: fixed beta 0.01, k1 clamped to +-10, score clipped to +-10, lambda 1, value clip 0.5,
  /// biased whitening, 1 epoch.
  static ppo_options orl() {
    ppo_options o = preset(kl_penalized_rewards_options::orl(), gae_options::orl(), whiten_options::orl(), true,
                           ppo_clip_options{}, value_loss_options::orl(), kl_estimator_options::orl(), 1);
    o.ptx_loss = ptx_options::orl();
    return o;
  }
  /// verl: fixed beta 0.001 (when the KL is in the reward), lambda 1, dual-clip 3 with the log-ratio
  /// clamped to +-20, value clip 0.5, Bessel whitening, 1 epoch.
  static ppo_options verl() {
    return preset(kl_penalized_rewards_options::verl(), gae_options::verl(), whiten_options::verl(), true,
                  ppo_clip_options::verl(), value_loss_options::verl(), kl_estimator_options::verl(), 1);
  }
  /// NeMo-Aligner: fixed beta 0.01, |k1|, biased whitening, value clip 0.2, 1 epoch.
  static ppo_options nemo() {
    return preset(kl_penalized_rewards_options::nemo(), gae_options::nemo(), whiten_options::nemo(), true,
                  ppo_clip_options::nemo(), value_loss_options::nemo(), kl_estimator_options::nemo(), 1);
  }

 private:
  static ppo_options preset(kl_penalized_rewards_options rewards, gae_options g, whiten_options w, bool whiten,
                            ppo_clip_options clip, value_loss_options value, kl_estimator_options kl, std::size_t epochs) {
    ppo_options o;
    o.beta = rewards.beta;
    o.rewards = rewards;
    o.gae = g;
    o.whitening = w;
    o.whiten_advantages = whiten;
    o.clip = clip;
    o.value = value;
    o.kl = kl;
    o.ppo_epochs = epochs;
    return o;
  }
};

/// What one PPO iteration measured.
struct ppo_iteration_stats {
  std::size_t iteration = 0;
  double mean_score = 0;          ///< the reward model's mean score of the responses
  double mean_kl = 0;             ///< KL(policy || SFT) in nats per sequence, at rollout
  double mean_reward = 0;         ///< mean total (KL-penalized) reward per sequence
  double beta = 0;                ///< the coefficient used by this iteration
  double mean_response_length = 0;
  double policy_loss = 0;         ///< last minibatch
  double value_loss = 0;
  double clip_fraction = 0;
  double approx_kl = 0;           ///< mean 0.5 (log-ratio)^2 of the last minibatch
  double entropy = 0;             ///< mean entropy (when the bonus is on)
  double ptx_loss = 0;            ///< scaled pretraining loss (when on)
  std::size_t updates = 0;        ///< policy updates made (fewer than epochs x minibatches on early stop)
  bool early_stopped = false;
};

/// One rollout: prompts and the sampled responses (token ids).
struct ppo_rollout {
  std::vector<std::vector<token_type>> prompts;
  std::vector<std::vector<token_type>> responses;
};

/// PPO with a KL penalty to a reference policy.
/// @tparam P an rlhf::policy (the trained policy and the frozen reference share its type)
/// @tparam V an rlhf::value_model
/// @tparam R an rlhf::reward_model
/// @tparam OP, OV optimizers of the policy and of the value model
/// @tparam C an rlhf::communicator (default rlhf::single_process). With N ranks, step() and learn() take
///         this rank's prompts (rollout); advantages are whitened with the union's moments, losses use the
///         union's token counts, gradients are summed over ranks, and the early stop and the adaptive KL
///         controller see the union's KL, so every rank ends the iteration with the parameters one process
///         would have after the same iteration on the union (with minibatches = 1; with more, each global
///         minibatch is the union of the ranks' local minibatches). fit() takes the whole prompt set on
///         every rank and each rank samples its block of each batch (rlhf::shard_of); sampling draws row
///         i of the global batch from the same stream whichever rank samples it.
template <class P, class V, class R, class OP, class OV, class C = single_process>
class ppo_trainer {
 public:
  using B = typename P::backend_type;
  using T = typename P::value_type;

  /// @param policy the policy being trained (starts as the SFT model)
  /// @param reference the frozen SFT policy of the KL penalty (never updated)
  /// @param value the value model (InstructGPT: rlhf::value_model_from(b, reward_model))
  /// @param reward the reward model (never updated here)
  /// @param comm the ranks training together (rank 0's parameters of all four models are broadcast at the
  ///        first iteration)
  ppo_trainer(P& policy, P& reference, V& value, R& reward, OP& policy_optimizer, OV& value_optimizer,
              ppo_options options = {}, C comm = {})
      : policy_(policy),
        reference_(reference),
        value_(value),
        reward_(reward),
        policy_opt_(policy_optimizer),
        value_opt_(value_optimizer),
        options_(std::move(options)),
        beta_(options_.beta),
        rng_(options_.seed),
        comm_(std::move(comm)) {
    detail::check_policy<P>();
    detail::check_value_model<V>();
    detail::check_reward_model<R>();
    detail::check_optimizer<OP, B, T>();
    detail::check_optimizer<OV, B, typename V::value_type>();
    detail::check_communicator<C, B>();
    constexpr const char* fn = "rlhf::ppo_trainer";
    detail::check_non_negative(fn, "options.beta", options_.beta);
    detail::check_positive(fn, "options.ppo_epochs", static_cast<double>(options_.ppo_epochs));
    detail::check_positive(fn, "options.minibatches", static_cast<double>(options_.minibatches));
    detail::check_positive(fn, "options.max_new_tokens", static_cast<double>(options_.max_new_tokens));
    detail::check_in_range(fn, "options.ema_decay", options_.ema_decay, 0.0, 1.0);
    detail::check_non_negative(fn, "options.early_stop_kl", options_.early_stop_kl);
    // The KL penalty and the PPO ratio assume the responses were sampled from the policy itself:
    // truncated (top-k, top-p) or tempered samples give biased, even negative, KL estimates and a
    // collapsing policy (TRL #925, #1857).
    if (options_.sampling.temperature != 1.0) {
      detail::throw_argument_error(fn, "options.sampling.temperature",
                                   "1 (PPO samples from the policy's own distribution)",
                                   std::to_string(options_.sampling.temperature));
    }
    if (options_.sampling.top_k != 0) {
      detail::throw_argument_error(fn, "options.sampling.top_k", "0 (PPO samples from the policy's own distribution)",
                                   std::to_string(options_.sampling.top_k));
    }
    if (options_.sampling.top_p > 0.0 && options_.sampling.top_p < 1.0) {
      detail::throw_argument_error(fn, "options.sampling.top_p", "1 (PPO samples from the policy's own distribution)",
                                   std::to_string(options_.sampling.top_p));
    }
    if (options_.control == kl_control::adaptive) {
      adaptive_.emplace(options_.beta, kl_per_sequence{options_.kl_target}, options_.kl_horizon);
    }
  }

  const ppo_options& options() const { return options_; }
  /// The current KL coefficient.
  double beta() const { return adaptive_ ? adaptive_->beta() : beta_; }
  /// Iterations done.
  std::size_t iterations() const { return iteration_; }
  /// The EMA of the policy weights (when options.ema_decay > 0), e.g. to evaluate or save it.
  weight_ema<B, T>& ema() { return ema_; }
  /// The ranks this trainer spans.
  const C& communicator() const { return comm_; }

  /// Saves everything a resumed run needs into directory `dir` (created if missing): the policy and the
  /// value model with their optimizers' state (policy.safetensors, value.safetensors; the EMA shadow
  /// beside the policy), and the trainer's own state (ppo_state.json: iteration, KL coefficient, the
  /// shuffling generator). Each file is replaced atomically. With several ranks, every rank calls it:
  /// rank 0 writes (the replicas are equal) and the call returns on every rank once the files are whole.
  void save_state(const B& b, const std::filesystem::path& dir) {
    if (comm_.rank() == 0) write_state(b, dir);
    comm_.barrier();
  }

  /// Restores a state written by save_state into this trainer and its models and optimizers (constructed
  /// as for the interrupted run), so that the following iterations equal the uninterrupted run's. With
  /// several ranks, every rank reads the same files.
  void load_state(const B& b, const std::filesystem::path& dir) {
    read_state(b, dir);
    replicas_.mark_equal();  // every replica read the same weights
  }

 private:
  void write_state(const B& b, const std::filesystem::path& dir) {
    std::filesystem::create_directories(dir);
    save_training_checkpoint(b, dir / "policy.safetensors", policy_, policy_opt_, {}, ema_tensors());
    save_training_checkpoint(b, dir / "value.safetensors", value_, value_opt_);
    std::ostringstream rng;
    rng << rng_;
    json_value state = json_value::object();
    state.set("iteration", iteration_);
    state.set("beta", beta());
    state.set("ema_initialized", ema_initialized_);
    state.set("shuffle_generator", rng.str());
    detail::write_file_atomically("rlhf::ppo_trainer::save_state", dir / "ppo_state.json", serialize_json(state, 2) + "\n");
  }

  void read_state(const B& b, const std::filesystem::path& dir) {
    constexpr std::string_view fn = "rlhf::ppo_trainer::load_state";
    std::ifstream in(dir / "ppo_state.json");
    if (!in) detail::throw_argument_error(fn, "dir", "a directory written by save_state", (dir / "ppo_state.json").string() + " missing");
    std::stringstream text;
    text << in.rdbuf();
    const json_value state = parse_json(text.str());
    const bool ema_on = state.at("ema_initialized").as_bool();
    if (ema_on && !ema_initialized_) {
      ema_ = weight_ema<B, T>(weight_ema_options{options_.ema_decay});
      ema_.reset(b, policy_.parameters());
      ema_initialized_ = true;
    }
    load_training_checkpoint(b, dir / "policy.safetensors", policy_, policy_opt_, ema_tensors());
    load_training_checkpoint(b, dir / "value.safetensors", value_, value_opt_);
    iteration_ = static_cast<std::size_t>(state.at("iteration").as_uint64());
    const double beta_saved = state.at("beta").as_double();
    if (adaptive_) {
      adaptive_.emplace(beta_saved, kl_per_sequence{options_.kl_target}, options_.kl_horizon);
    } else {
      beta_ = beta_saved;
    }
    std::istringstream rng(state.at("shuffle_generator").as_string());
    rng >> rng_;
  }

 public:

  /// Samples one response per prompt with the current policy (the rollout of step()).
  /// With several ranks, `prompts` is this rank's block of the global batch (blocks in rank order, as
  /// rlhf::shard_of cuts them): row i of the global batch is sampled from the same stream as by one process.
  ppo_rollout rollout(const B& b, const std::vector<std::vector<token_type>>& prompts) {
    sampling_options o = options_.sampling;
    o.seed = options_.sampling.seed + 0x9E3779B97F4A7C15ull * (iteration_ + 1);
    if (comm_.size() > 1) {  // this rank's first row in the global batch
      const double mine = static_cast<double>(prompts.size());
      const std::vector<double> counts = comm_.all_gather(std::span<const double>(&mine, 1));
      for (std::size_t r = 0; r < comm_.rank(); ++r) o.first_row += static_cast<std::uint64_t>(counts[r]);
    }
    replicas_.ensure(comm_, b, policy_, reference_, value_, reward_);
    if (prompts.empty()) return {};
    const auto seqs = policy_.generate(b, prompts, options_.max_new_tokens, o);
    ppo_rollout r;
    r.prompts = prompts;
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      r.responses.emplace_back(seqs[i].begin() + static_cast<std::ptrdiff_t>(prompts[i].size()), seqs[i].end());
    }
    return r;
  }

  /// One PPO iteration on a batch of prompts (see the file comment).
  /// @param prompts token ids, each non-empty
  /// @param pretraining PPO-ptx batch (prompt = first token(s), response = the text to model); used only
  ///        when options.ptx
  ppo_iteration_stats step(const B& b, const std::vector<std::vector<token_type>>& prompts,
                           std::span<const prompt_response> pretraining = {}) {
    constexpr std::string_view fn = "rlhf::ppo_trainer::step";
    if (prompts.empty() && comm_.size() == 1) detail::throw_argument_error(fn, "prompts", "at least one prompt", "none");
    if (options_.ptx && pretraining.empty() && comm_.size() == 1) {
      detail::throw_argument_error(fn, "pretraining", "a pretraining batch (options.ptx is on)", "none");
    }
    return learn(b, rollout(b, prompts), pretraining);
  }

  /// Runs run.iterations iterations, each on run.batch_size prompts taken in order from an endless
  /// sequence of seeded permutations of `prompts` (and, with PPO-ptx, run.ptx_batch_size rows of
  /// `pretraining` the same way), writing per-step metrics (step, iteration, rm_score, kl, reward, beta,
  /// response_length, policy_loss, value_loss, clip_fraction, approx_kl, entropy, ptx_loss, updates),
  /// checkpointing the whole trainer state (save_state) and resuming from run.checkpoint_dir. A resumed
  /// run equals the uninterrupted one (see training_run.hpp).
  /// @throws rlhf::invalid_argument on no prompts, run.iterations == 0, or ptx on without pretraining data
  run_result fit(const B& b, std::span<const std::vector<token_type>> prompts, const run_options& run,
                 std::span<const prompt_response> pretraining = {}) {
    constexpr std::string_view fn = "rlhf::ppo_trainer::fit";
    if (prompts.empty()) detail::throw_argument_error(fn, "prompts", "at least one prompt", "none");
    detail::check_run_options(fn, run);
    detail::check_positive(fn, "run.iterations", static_cast<double>(run.iterations));
    if (options_.ptx && pretraining.empty()) {
      detail::throw_argument_error(fn, "pretraining", "pretraining rows (options.ptx is on)", "none");
    }
    epoch_order prompt_order(prompts.size(), run.seed), ptx_order(pretraining.size(), run.seed + 1);
    const std::size_t ptx_batch = run.ptx_batch_size != 0 ? run.ptx_batch_size : run.batch_size;
    const auto one_step = [&](std::size_t s) {
      std::vector<std::vector<token_type>> batch;
      const std::vector<std::size_t> global = prompt_order.stream_batch(run.batch_size, s);
      for (const std::size_t i : shard(std::span<const std::size_t>(global), comm_)) batch.push_back(prompts[i]);
      std::vector<prompt_response> ptx;
      if (options_.ptx) {
        const std::vector<std::size_t> global_ptx = ptx_order.stream_batch(ptx_batch, s);
        for (const std::size_t i : shard(std::span<const std::size_t>(global_ptx), comm_)) ptx.push_back(pretraining[i]);
      }
      const ppo_iteration_stats st = step(b, batch, ptx);
      return metrics_row{{"iteration", static_cast<double>(st.iteration + 1)},
                         {"rm_score", st.mean_score},
                         {"kl", st.mean_kl},
                         {"reward", st.mean_reward},
                         {"beta", st.beta},
                         {"response_length", st.mean_response_length},
                         {"policy_loss", st.policy_loss},
                         {"value_loss", st.value_loss},
                         {"clip_fraction", st.clip_fraction},
                         {"approx_kl", st.approx_kl},
                         {"entropy", st.entropy},
                         {"ptx_loss", st.ptx_loss},
                         {"updates", static_cast<double>(st.updates)}};
    };
    return detail::run_training_loop(
        fn, run, "PPO", run.iterations, one_step, [&](const std::filesystem::path& dir) { write_state(b, dir); },
        [&](const std::filesystem::path& dir) { load_state(b, dir); }, detail::run_rank_of(comm_));
  }

  /// Steps 2-5 of an iteration on a given rollout (e.g. responses sampled elsewhere). With several ranks,
  /// this rank's rows (possibly none, as long as some rank has rows) and pretraining rows.
  ppo_iteration_stats learn(const B& b, const ppo_rollout& rollout, std::span<const prompt_response> pretraining = {}) {
    constexpr std::string_view fn = "rlhf::ppo_trainer::learn";
    if (rollout.prompts.size() != rollout.responses.size() || (rollout.prompts.empty() && comm_.size() == 1)) {
      detail::throw_argument_error(fn, "rollout", "as many responses as prompts, at least one",
                                   std::to_string(rollout.responses.size()) + " responses for " +
                                       std::to_string(rollout.prompts.size()) + " prompts");
    }
    const std::size_t rows = rollout.prompts.size();
    // Every rank's row count, once: the union's rows and the largest rank's (the minibatch count below).
    const double mine = static_cast<double>(rows);
    const std::vector<double> rank_rows = comm_.all_gather(std::span<const double>(&mine, 1));
    const double global_rows = std::accumulate(rank_rows.begin(), rank_rows.end(), 0.0);
    const double most_rows = *std::max_element(rank_rows.begin(), rank_rows.end());
    if (global_rows == 0) detail::throw_argument_error(fn, "rollout", "rows on some rank", "none on every rank");
    replicas_.ensure(comm_, b, policy_, reference_, value_, reward_);
    ppo_iteration_stats stats;
    stats.iteration = iteration_;
    stats.beta = beta();
    // Rows: prompt + response; the mask marks the response tokens (the actions).
    std::vector<prompt_response> pairs(rows);
    std::vector<mask_type> has_eos(rows, 0);
    double length_sum = 0;
    for (std::size_t i = 0; i < rows; ++i) {
      pairs[i] = {rollout.prompts[i], rollout.responses[i]};
      has_eos[i] = !rollout.responses[i].empty() && rollout.responses[i].back() == options_.sampling.stop_token;
      length_sum += static_cast<double>(rollout.responses[i].size());
    }
    token_batch host;
    std::vector<T> old_logp_host, advantages_host, old_values_host, returns_host;
    kl_penalized_rewards_stats rs{};
    if (rows > 0) {
      host = make_token_batch(pairs, options_.max_length, fn);
      const std::size_t cols = host.cols;
      const auto dev = upload(b, host);
      const auto eos = to_backend(b, has_eos);
      auto old_logp = allocate<T>(b, rows, cols), ref_logp = allocate<T>(b, rows, cols);
      auto old_values = allocate<T>(b, rows, cols), kl = allocate<T>(b, rows, cols), rewards = allocate<T>(b, rows, cols);
      auto advantages = allocate<T>(b, rows, cols), returns = allocate<T>(b, rows, cols);
      auto scores = allocate<T>(b, rows);
      policy_.log_probs(b, dev.tokens_view(), dev.lengths_view(), old_logp.view(), backend_matrix<B, T>{},
                        forward_mode::inference);
      reference_.log_probs(b, dev.tokens_view(), dev.lengths_view(), ref_logp.view(), backend_matrix<B, T>{},
                           forward_mode::inference);
      value_.values(b, dev.tokens_view(), dev.lengths_view(), old_values.view(), forward_mode::inference);
      reward_.scores(b, dev.tokens_view(), dev.lengths_view(), scores.view().flat(), forward_mode::inference);
      // Ouyang et al. 2022, eq. 2: r_t = -beta * KL_t, plus the RM score at the last response token; GAE over
      // the response tokens; the advantages' moments for whitening. One call: a backend with the one-pass kernel
      // (CUDA) reads each row once.
      kl_penalized_advantages_options ao{options_.kl, options_.rewards, options_.gae};
      ao.rewards.beta = beta();
      const kl_penalized_advantages_stats as = kl_penalized_advantages(
          b, as_const(old_logp.view()), as_const(ref_logp.view()), as_const(scores.view().flat()),
          as_const(old_values.view()), dev.mask_view(), as_const(eos.view().flat()), kl.view(), rewards.view(),
          advantages.view(), returns.view(), ao);
      rs = as.rewards;
      if (options_.whiten_advantages) {
        // Across ranks, the union's mean and variance (per-rank whitening is a peer bug: rlhf-math §2.8).
        const masked_moments moments = comm_.size() == 1 ? as.advantages : global_masked_moments(comm_, as.advantages);
        whiten(b, as_const(advantages.view()), dev.mask_view(), advantages.view(), options_.whitening, &moments);
      }
      // Host copies for minibatch gathers (PPO's per-row data is small next to the model).
      old_logp_host = to_host(b, old_logp.view());
      advantages_host = to_host(b, advantages.view());
      old_values_host = to_host(b, old_values.view());
      returns_host = to_host(b, returns.view());
    } else if (options_.whiten_advantages && comm_.size() > 1) {
      global_masked_moments(comm_, masked_moments{});  // take part in the union's moments
    }
    if (comm_.size() == 1) {
      stats.mean_score = rs.mean_raw_score;
      stats.mean_kl = rs.mean_kl_sum;
      stats.mean_reward = rs.mean_score + rs.mean_non_score_reward;
      stats.mean_response_length = length_sum / global_rows;
    } else {  // the union's per-sequence statistics (rows weigh equally)
      const double n = static_cast<double>(rows);
      const std::vector<double> sums = global_sums(
          comm_, {rs.mean_raw_score * n, rs.mean_kl_sum * n, (rs.mean_score + rs.mean_non_score_reward) * n, length_sum});
      stats.mean_score = sums[0] / global_rows;
      stats.mean_kl = sums[1] / global_rows;
      stats.mean_reward = sums[2] / global_rows;
      stats.mean_response_length = sums[3] / global_rows;
    }
    const minibatch_source src{host, std::move(old_logp_host), std::move(advantages_host), std::move(old_values_host),
                               std::move(returns_host)};
    std::vector<std::size_t> order(rows);
    std::iota(order.begin(), order.end(), std::size_t(0));
    // Every rank makes the same number of updates: a rank with fewer rows has empty minibatches.
    const std::size_t mb_count = std::max<std::size_t>(
        1, std::min(options_.minibatches, static_cast<std::size_t>(most_rows)));
    bool stop = false;
    for (std::size_t epoch = 0; epoch < options_.ppo_epochs && !stop; ++epoch) {
      shuffle_rows(order, epoch);
      for (std::size_t m = 0; m < mb_count && !stop; ++m) {
        const std::size_t first = m * rows / mb_count, last = (m + 1) * rows / mb_count;
        const minibatch mb = gather(b, src, std::span<const std::size_t>(order).subspan(first, last - first));
        const double policy_kl = update_policy(b, mb, pretraining, stats);
        update_value(b, mb, stats);
        ++stats.updates;
        if (options_.early_stop_kl > 0 && policy_kl > options_.early_stop_kl) {  // the union's KL: every rank agrees
          stop = true;
          stats.early_stopped = true;
        }
      }
    }
    if (adaptive_) adaptive_->update(kl_per_sequence{stats.mean_kl}, static_cast<std::size_t>(global_rows));
    if (options_.ema_decay > 0) {
      if (iteration_ == 0 && !ema_initialized_) {
        ema_ = weight_ema<B, T>(weight_ema_options{options_.ema_decay});
        ema_initialized_ = true;
      }
      ema_.update(b, policy_.parameters());
    }
    ++iteration_;
    return stats;
  }

 private:
  struct minibatch_source {
    const token_batch& batch;
    std::vector<T> old_logp, advantages, old_values, returns;
  };
  struct minibatch {
    device_token_batch<B> tokens;
    buffer_t<B, T> old_logp, advantages, old_values, returns;
    std::size_t rows = 0, cols = 0;
    aggregation_counts counts;  ///< valid tokens and sequences (for the union's counts)
  };

  // One process: the trainer's generator (its state is checkpointed). Several ranks: a generator derived
  // from (seed, iteration, epoch, rank), so a checkpoint needs no per-rank state.
  void shuffle_rows(std::vector<std::size_t>& order, std::size_t epoch) {
    if (comm_.size() == 1) {
      std::shuffle(order.begin(), order.end(), rng_);
      return;
    }
    std::seed_seq seq{static_cast<std::uint32_t>(options_.seed), static_cast<std::uint32_t>(options_.seed >> 32),
                      static_cast<std::uint32_t>(iteration_), static_cast<std::uint32_t>(epoch),
                      static_cast<std::uint32_t>(comm_.rank())};
    std::mt19937_64 g(seq);
    std::shuffle(order.begin(), order.end(), g);
  }

  // The aggregation of a loss over this rank's rows with the union's counts (one rank: unchanged).
  loss_aggregation union_aggregation(const aggregation_counts& local) const {
    return global_aggregation(comm_, options_.aggregation, local);
  }

  // Rows `idx` of the rollout batch, uploaded.
  static minibatch gather(const B& b, const minibatch_source& s, std::span<const std::size_t> idx) {
    const std::size_t cols = s.batch.cols, n = idx.size();
    token_batch t;
    t.rows = n;
    t.cols = cols;
    std::vector<T> lp(n * cols), adv(n * cols), ov(n * cols), ret(n * cols);
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t r = idx[i];
      const auto row = [&](const auto& v, auto& out) {
        std::copy(v.begin() + static_cast<std::ptrdiff_t>(r * cols), v.begin() + static_cast<std::ptrdiff_t>((r + 1) * cols),
                  out.begin() + static_cast<std::ptrdiff_t>(i * cols));
      };
      t.tokens.insert(t.tokens.end(), s.batch.tokens.begin() + static_cast<std::ptrdiff_t>(r * cols),
                      s.batch.tokens.begin() + static_cast<std::ptrdiff_t>((r + 1) * cols));
      t.mask.insert(t.mask.end(), s.batch.mask.begin() + static_cast<std::ptrdiff_t>(r * cols),
                    s.batch.mask.begin() + static_cast<std::ptrdiff_t>((r + 1) * cols));
      t.lengths.push_back(s.batch.lengths[r]);
      t.prompt_lengths.push_back(s.batch.prompt_lengths[r]);
      row(s.old_logp, lp);
      row(s.advantages, adv);
      row(s.old_values, ov);
      row(s.returns, ret);
    }
    const aggregation_counts counts = count_valid(t.mask, n, cols);
    return {upload(b, t),
            to_backend(b, std::span<const T>(lp), n, cols),
            to_backend(b, std::span<const T>(adv), n, cols),
            to_backend(b, std::span<const T>(ov), n, cols),
            to_backend(b, std::span<const T>(ret), n, cols),
            n,
            cols,
            counts};
  }

  // PPO-clip (+ entropy) backward, then PPO-ptx, then one policy update. Returns the minibatch's policy KL
  // (the union's, with several ranks).
  double update_policy(const B& b, const minibatch& mb, std::span<const prompt_response> pretraining,
                       ppo_iteration_stats& stats) {
    const bool want_entropy = options_.entropy_coefficient > 0;
    const loss_aggregation agg = union_aggregation(mb.counts);
    // PPO-ptx's batch and its global token count come first: no collective may fall between the last
    // backward pass (which starts the gradient sums) and their finish.
    token_batch pt;
    loss_aggregation ptx_agg{};
    if (options_.ptx) {
      if (!pretraining.empty()) pt = make_token_batch(pretraining, options_.max_length, "rlhf::ppo_trainer::step (pretraining)");
      // The pretraining term is a token mean over the pretraining batch (the union's, with several ranks).
      ptx_agg = global_aggregation(comm_, loss_aggregation{}, count_valid(pt.mask, pt.rows, pt.cols));
    }
    const bool ptx_backward = options_.ptx && !pretraining.empty();
    policy_.zero_grad(b);
    // Armed for this rank's last backward pass: its gradients are final.
    overlapped_gradient_all_reduce summed(comm_, b, policy_, options_.gradient_all_reduce, &policy_gradient_workspace_);
    ppo_clip_stats ps{};
    entropy_bonus_stats es{};
    if (mb.rows > 0) {
      auto logp = allocate<T>(b, mb.rows, mb.cols), d_logp = allocate<T>(b, mb.rows, mb.cols);
      auto entropy = allocate<T>(b, want_entropy ? mb.rows : 0, mb.cols);
      auto d_entropy = allocate<T>(b, want_entropy ? mb.rows : 0, mb.cols);
      policy_.log_probs(b, mb.tokens.tokens_view(), mb.tokens.lengths_view(), logp.view(),
                        want_entropy ? entropy.view() : backend_matrix<B, T>{}, forward_mode::training);
      // Schulman et al. 2017, eq. 7, on the response tokens.
      ps = ppo_clip_loss(b, as_const(logp.view()), as_const(mb.old_logp.view()), as_const(mb.advantages.view()),
                         mb.tokens.mask_view(), d_logp.view(), options_.clip, agg);
      if (want_entropy) {
        es = entropy_bonus(b, as_const(entropy.view()), mb.tokens.mask_view(), d_entropy.view(),
                           options_.entropy_coefficient, agg);
      }
      if (!ptx_backward) summed.arm();
      policy_.log_probs_backward(b, as_const(d_logp.view()),
                                 want_entropy ? as_const(d_entropy.view()) : backend_matrix<B, const T>{});
    }
    stats.ptx_loss = 0;
    if (ptx_backward) {
      // Ouyang et al. 2022, eq. 2, second term: gamma * E_pretrain[log pi(x)], as a loss to minimize.
      const auto pdev = upload(b, pt);
      auto plogp = allocate<T>(b, pt.rows, pt.cols), pd = allocate<T>(b, pt.rows, pt.cols);
      policy_.log_probs(b, pdev.tokens_view(), pdev.lengths_view(), plogp.view(), backend_matrix<B, T>{},
                        forward_mode::training);
      stats.ptx_loss = ptx_loss(b, as_const(plogp.view()), pdev.mask_view(), pd.view(), options_.ptx_loss, ptx_agg).loss;
      summed.arm();
      policy_.log_probs_backward(b, as_const(pd.view()), backend_matrix<B, const T>{});
    }
    summed.finish();
    optimizer_update(b, policy_opt_, policy_.parameters(), options_.max_grad_norm, options_.policy_schedule);
    if (comm_.size() == 1) {
      stats.policy_loss = ps.loss;
      stats.clip_fraction = ps.clip_fraction;
      stats.approx_kl = ps.approx_kl;
      stats.entropy = es.mean_entropy;
      return ps.policy_kl;
    }
    // The union's statistics: losses are shares (summed), token means are weighted by tokens.
    const double nt = ps.token_count;
    const std::vector<double> g = global_sums(comm_, {ps.loss, ps.clip_fraction * nt, ps.approx_kl * nt, ps.policy_kl * nt, nt,
                                                     es.mean_entropy * es.token_count, es.token_count, stats.ptx_loss});
    const double tokens = g[4] > 0 ? g[4] : 1.0;
    stats.policy_loss = g[0];
    stats.clip_fraction = g[1] / tokens;
    stats.approx_kl = g[2] / tokens;
    stats.entropy = g[6] > 0 ? g[5] / g[6] : 0.0;
    stats.ptx_loss = g[7];
    return g[3] / tokens;
  }

  void update_value(const B& b, const minibatch& mb, ppo_iteration_stats& stats) {
    using TV = typename V::value_type;
    static_assert(std::is_same_v<TV, T>, "rlhf::ppo_trainer: the policy and the value model must share the element type");
    const loss_aggregation agg = union_aggregation(mb.counts);
    value_.zero_grad(b);
    overlapped_gradient_all_reduce summed(comm_, b, value_, options_.gradient_all_reduce, &value_gradient_workspace_);
    value_loss_stats vs{};
    if (mb.rows > 0) {
      auto values = allocate<T>(b, mb.rows, mb.cols), d_values = allocate<T>(b, mb.rows, mb.cols);
      value_.values(b, mb.tokens.tokens_view(), mb.tokens.lengths_view(), values.view(), forward_mode::training);
      vs = clipped_value_loss(b, as_const(values.view()), as_const(mb.old_values.view()), as_const(mb.returns.view()),
                              mb.tokens.mask_view(), d_values.view(), options_.value, agg);
      summed.arm();
      value_.values_backward(b, as_const(d_values.view()));
    }
    summed.finish();
    optimizer_update(b, value_opt_, value_.parameters(), options_.max_grad_norm, options_.value_schedule);
    stats.value_loss = global_sum(comm_, vs.loss);
  }

  named_tensor_list<T, typename B::memory_space> ema_tensors() {
    return ema_initialized_ ? ema_.state() : named_tensor_list<T, typename B::memory_space>{};
  }

  P& policy_;
  P& reference_;
  V& value_;
  R& reward_;
  OP& policy_opt_;
  OV& value_opt_;
  ppo_options options_;
  double beta_;
  std::optional<adaptive_kl_controller<kl_per_sequence>> adaptive_;
  weight_ema<B, T> ema_;
  bool ema_initialized_ = false;
  std::mt19937_64 rng_;
  std::size_t iteration_ = 0;
  C comm_;
  detail::replicas_in_sync replicas_;
  gradient_all_reduce_workspace<B, T> policy_gradient_workspace_;  // packing buffers of the gradient sums, kept across steps
  gradient_all_reduce_workspace<B, T> value_gradient_workspace_;  // packing buffers of the gradient sums, kept across steps
};

}  // namespace rlhf
