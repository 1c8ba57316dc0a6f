/// @file rlhf.hpp
/// @brief Umbrella header: the whole library for the backends this translation unit can use.
///
/// Includes the core (every algorithm, the reference backend) and, when Eigen is available
/// (`__has_include(<Eigen/Core>)`), the Eigen backend; with the CMake component `thrust`
/// (`RLHF_HAS_THRUST`), the Thrust backend.
#pragma once

#include "rlhf/config.hpp"
#include "rlhf/error.hpp"

#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/generic_only.hpp"
#include "rlhf/backends/host_buffer.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/reference.hpp"
#include "rlhf/backends/view.hpp"
#if defined(RLHF_HAS_EIGEN) || __has_include(<Eigen/Core>)
#include "rlhf/backends/eigen.hpp"
#endif
#if defined(RLHF_HAS_THRUST)
#include "rlhf/backends/thrust.hpp"
#endif

#include "rlhf/ops/kl_estimators.hpp"
#include "rlhf/ops/sequence_mask.hpp"
#include "rlhf/ops/token_logprobs.hpp"
#include "rlhf/ops/whitening.hpp"

#include "rlhf/losses/entropy_bonus.hpp"
#include "rlhf/losses/loss_aggregation.hpp"
#include "rlhf/losses/ppo_clip_loss.hpp"
#include "rlhf/losses/ptx_loss.hpp"
#include "rlhf/losses/ranking_loss.hpp"
#include "rlhf/losses/sft_loss.hpp"
#include "rlhf/losses/value_loss.hpp"

#include "rlhf/advantages/gae.hpp"
#include "rlhf/advantages/kl_penalized_advantages.hpp"
#include "rlhf/advantages/kl_penalized_rewards.hpp"
#include "rlhf/advantages/reward_normalization.hpp"

#include "rlhf/data/csv.hpp"
#include "rlhf/data/human_preferences.hpp"
#include "rlhf/data/json.hpp"
#include "rlhf/data/jsonl.hpp"
#include "rlhf/data/prompt_split.hpp"
#include "rlhf/data/records.hpp"
#include "rlhf/data/safetensors.hpp"

#include "rlhf/models/checkpoint.hpp"
#include "rlhf/models/concepts.hpp"
#include "rlhf/models/layers/attention.hpp"
#include "rlhf/models/layers/embedding.hpp"
#include "rlhf/models/layers/linear.hpp"
#include "rlhf/models/layers/rms_norm.hpp"
#include "rlhf/models/layers/rope.hpp"
#include "rlhf/models/layers/swiglu.hpp"
#include "rlhf/models/llama.hpp"
#include "rlhf/models/llama2c_checkpoint.hpp"
#include "rlhf/models/llama_checkpoint.hpp"
#include "rlhf/models/llama_config.hpp"
#include "rlhf/models/llama_reward_model.hpp"
#include "rlhf/models/llama_value_model.hpp"
#include "rlhf/models/parameters.hpp"
#include "rlhf/models/sampling.hpp"
#include "rlhf/models/scalar_head.hpp"
#include "rlhf/models/tokenizer.hpp"

#include "rlhf/dist/communicator.hpp"
#include "rlhf/dist/global_statistics.hpp"
#include "rlhf/dist/gradient_all_reduce.hpp"
#include "rlhf/dist/shard.hpp"
#include "rlhf/dist/single_process.hpp"
#if defined(RLHF_HAS_MPI)
#include "rlhf/dist/mpi.hpp"
#endif

#include "rlhf/optim/adamw.hpp"
#include "rlhf/optim/ema.hpp"
#include "rlhf/optim/gradient_clipping.hpp"
#include "rlhf/optim/lr_schedule.hpp"
#include "rlhf/optim/optimizer.hpp"
#include "rlhf/optim/sgd.hpp"

#include "rlhf/train/kl_controller.hpp"
#include "rlhf/train/labeler.hpp"
#include "rlhf/train/metrics_log.hpp"
#include "rlhf/train/optimizer_update.hpp"
#include "rlhf/train/ppo_trainer.hpp"
#include "rlhf/train/progress.hpp"
#include "rlhf/train/reward_trainer.hpp"
#include "rlhf/train/sft_trainer.hpp"
#include "rlhf/train/svg_plot.hpp"
#include "rlhf/train/token_batch.hpp"
#include "rlhf/train/training_checkpoint.hpp"
#include "rlhf/train/training_run.hpp"
