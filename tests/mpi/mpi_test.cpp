// Run under MPI with 2 ranks (ctest: `mpirun -np 2 rlhf_mpi_tests`): the MPI communicator's collectives on
// the CPU backends, and the equivalence of data-parallel training with one process on the whole batch:
// SFT, RM and PPO steps on 2 ranks holding half the batch each (uneven halves, ragged rows) end with the
// parameters one process gets on the whole batch; sampling does not depend on the number of ranks; fit()
// shards its batches, writes metrics and checkpoints once, and resumes on every rank.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "models/model_test_support.hpp"
#include "rlhf/backends/eigen.hpp"
#include "rlhf/backends/reference.hpp"
#include "rlhf/dist/mpi.hpp"
#include "rlhf/models/llama_reward_model.hpp"
#include "rlhf/models/llama_value_model.hpp"
#include "rlhf/optim/adamw.hpp"
#include "rlhf/train/ppo_trainer.hpp"
#include "rlhf/train/reward_trainer.hpp"
#include "rlhf/train/sft_trainer.hpp"
#include "train/train_test_support.hpp"

using namespace rlhf;
using namespace rlhf::test;

namespace {

const mpi_communicator& world() {
  static const mpi_communicator comm;
  return comm;
}
// The same processes with gradient sums started during the backward (MPI_Iallreduce); the default world
// sums after it.
const mpi_communicator& overlapping_world() {
  static const mpi_communicator comm(MPI_COMM_WORLD, true);
  return comm;
}

// (backend, element type, tolerance of the parameter comparison): the sums over ranks run in another
// order than one process's, so parameters agree to rounding.
struct reference_double {
  using backend = reference_backend;
  using value = double;
  static constexpr double tolerance = 1e-10;
};
struct eigen_double {
  using backend = eigen_backend;
  using value = double;
  static constexpr double tolerance = 1e-10;
};
// Double only: Adam divides by the root of the second moment, so a gradient element near 0 whose sign
// differs by rounding moves its parameter by a whole step; in float that happens within a few steps.
using cpu_configs = std::tuple<reference_double, eigen_double>;

template <class B, class T>
double max_parameter_difference(const B& b, const parameter_list<T, typename B::memory_space>& x,
                                const parameter_list<T, typename B::memory_space>& y) {
  REQUIRE(x.size() == y.size());
  double worst = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const std::vector<T> a = to_host(b, x[i].value.flat()), c = to_host(b, y[i].value.flat());
    for (std::size_t j = 0; j < a.size(); ++j) {
      worst = std::max(worst, std::fabs(static_cast<double>(a[j]) - static_cast<double>(c[j])));
    }
  }
  return worst;
}

// The largest difference of any parameter between the ranks (0 when the replicas are equal).
template <class B, class T>
double max_difference_across_ranks(const B& b, const parameter_list<T, typename B::memory_space>& params) {
  double worst = 0;
  for (const auto& p : params) {
    std::vector<double> mine;
    for (const T v : to_host(b, p.value.flat())) mine.push_back(static_cast<double>(v));
    const std::vector<double> all = world().all_gather(mine);
    for (std::size_t r = 1; r < world().size(); ++r)
      for (std::size_t j = 0; j < mine.size(); ++j) worst = std::max(worst, std::fabs(all[r * mine.size() + j] - all[j]));
  }
  return worst;
}

// Demonstrations of ragged lengths: after prompt {1, p}, respond p+1 .. p+k.
std::vector<prompt_response> demonstrations(std::size_t n) {
  std::vector<prompt_response> out;
  for (std::size_t i = 0; i < n; ++i) {
    const auto p = static_cast<token_type>(2 + i % 7);
    std::vector<token_type> response;
    for (std::size_t k = 0; k < 1 + i % 4; ++k) response.push_back(static_cast<token_type>(2 + (p + k) % 9));
    out.push_back({{1, p}, response});
  }
  return out;
}

// Ranked prompts with K = 3 or 4 responses (ragged K) of 2 to 4 tokens, ties included.
std::vector<ranked_responses> rankings() {
  std::mt19937_64 g(5);
  return planted_rankings(g, 5, 3, 4, 2, 4);
}

// The models of a PPO run: the same weights for the one-process run and the 2-rank run, except that the
// 2-rank run's rank 1 starts from other weights (the trainer's broadcast must replace them).
template <class B, class T>
struct ppo_models {
  llama_config c = tiny_llama_config(false);
  llama_model<B, T> policy, reference;
  llama_value_model<B, T> value;
  count_reward<B, T> reward{};
  adamw<B, T> policy_opt{adamw_options{3e-3}}, value_opt{adamw_options{1e-2}};
  ppo_models(const B& b, std::uint64_t seed) : policy(b, c), reference(b, c), value(b, c) {
    policy.init_random(b, seed, 0.2);
    reference.init_random(b, 4, 0.2);
    llama_model<B, T> body(b, c);
    body.init_random(b, seed + 1, 0.2);
    value.trunk().copy_parameters_from(b, body);
  }
};

ppo_options ppo_test_options() {
  ppo_options o;
  o.max_new_tokens = 4;
  o.ppo_epochs = 2;
  o.minibatches = 1;
  o.entropy_coefficient = 0.01;
  o.control = kl_control::adaptive;
  o.kl_horizon = 100;
  o.ptx = true;
  o.ptx_loss.coefficient = 0.5;
  o.sampling.seed = 9;
  return o;
}

}  // namespace

TEST_CASE("mpi_communicator: rank and size; all_reduce, broadcast, all_gather and barrier", "[mpi]") {
  const mpi_communicator& comm = world();
  REQUIRE(comm.size() == 2);
  static_assert(communicator<mpi_communicator, reference_backend>);
  static_assert(communicator<mpi_communicator, eigen_backend>);
  const reference_backend b;
  const double r = static_cast<double>(comm.rank());
  std::vector<double> d{1 + r, -r, 10 * r};
  comm.all_reduce(b, matrix_view<double, host_space>{d.data(), 1, 3}, reduce_op::sum);
  CHECK(d == std::vector<double>{3, -1, 10});
  std::vector<float> f{1 + float(r), -float(r)};
  comm.all_reduce(b, matrix_view<float, host_space>{f.data(), 2, 1}, reduce_op::max);
  CHECK(f == std::vector<float>{2, 0});
  std::vector<double> x{r, r + 0.5};
  comm.broadcast(b, matrix_view<double, host_space>{x.data(), 1, 2}, 1);
  CHECK(x == std::vector<double>{1, 1.5});
  const std::vector<double> mine{r, 2 * r};
  CHECK(comm.all_gather(mine) == std::vector<double>{0, 0, 1, 2});
  comm.barrier();
  CHECK(global_sum(comm, r + 1) == 3);
  CHECK(global_max(comm, r + 1) == 2);
  // The ranks disagree on the count: every rank throws (no rank is left waiting).
  const std::vector<double> uneven(comm.rank() + 1, 1.0);
  CHECK_THROWS_AS(comm.all_gather(uneven), distributed_error);
  CHECK_THROWS_WITH(comm.broadcast(b, matrix_view<double, host_space>{x.data(), 1, 2}, 2), Catch::Contains("'root'"));
}

TEST_CASE("mpi_communicator: all_reduce_async sums in place; several in flight; a handle waits when destroyed", "[mpi]") {
  const mpi_communicator& comm = world();
  static_assert(nonblocking_communicator<mpi_communicator, reference_backend>);
  CHECK_FALSE(comm.overlaps_computation());  // by default gradients are summed after the backward
  CHECK(overlapping_world().overlaps_computation());
  const reference_backend b;
  const double r = static_cast<double>(comm.rank());
  std::vector<double> a(1000, 1 + r), m{r, -r};
  std::vector<float> f(7, 2.5f);
  mpi_pending_collective first = comm.all_reduce_async(b, matrix_view<double, host_space>{a.data(), 1, a.size()}, reduce_op::sum);
  mpi_pending_collective second = comm.all_reduce_async(b, matrix_view<double, host_space>{m.data(), 1, 2}, reduce_op::max);
  {
    mpi_pending_collective third = comm.all_reduce_async(b, matrix_view<float, host_space>{f.data(), 7, 1}, reduce_op::sum);
    (void)third.test();
  }  // destroyed unwaited: it waits
  CHECK(f == std::vector<float>(7, 5.0f));
  second.wait();
  CHECK(m == std::vector<double>{1, 0});
  while (!first.test()) {
  }
  CHECK(a == std::vector<double>(1000, 3.0));
  CHECK(first.test());  // completed handles stay completed
  first.wait();
  mpi_pending_collective moved = std::move(second);
  moved.wait();
}

TEST_CASE("mpi_communicator: global masked moments and reward normalization equal those of the union", "[mpi]") {
  const mpi_communicator& comm = world();
  const reference_backend b;
  // Rank 0 holds 3 valid values, rank 1 holds 2 (and a masked one).
  const std::vector<double> x = comm.rank() == 0 ? std::vector<double>{1, 2, 4} : std::vector<double>{8, 16, 1e9};
  const std::vector<mask_type> m = comm.rank() == 0 ? std::vector<mask_type>{1, 1, 1} : std::vector<mask_type>{1, 1, 0};
  const masked_moments local = compute_masked_moments(b, matrix_view<const double, host_space>{x.data(), 1, 3},
                                                      matrix_view<const mask_type, host_space>{m.data(), 1, 3});
  const masked_moments g = global_masked_moments(comm, local);
  const double mean = (1 + 2 + 4 + 8 + 16) / 5.0;
  double m2 = 0;
  for (const double v : {1.0, 2.0, 4.0, 8.0, 16.0}) m2 += (v - mean) * (v - mean);
  CHECK(g.count == 5);
  CHECK(g.mean == Approx(mean).epsilon(1e-14));
  CHECK(g.m2 == Approx(m2).epsilon(1e-14));
  // Ziegler et al.'s reward normalization over every rank's rewards equals one process's over the union.
  const std::vector<double> rewards = comm.rank() == 0 ? std::vector<double>{0.5, 3, -1} : std::vector<double>{2, 7.5};
  const std::vector<double> all_rewards{0.5, 3, -1, 2, 7.5};
  const reward_gain_bias mine = normalization_from(
      global_masked_moments(comm, reward_moments_of(b, vector_view<const double, host_space>{rewards.data(), rewards.size()})));
  const reward_gain_bias whole =
      normalization_to(b, vector_view<const double, host_space>{all_rewards.data(), all_rewards.size()});
  CHECK(mine.gain == Approx(whole.gain).epsilon(1e-14));
  CHECK(mine.bias == Approx(whole.bias).epsilon(1e-14));
}

TEMPLATE_LIST_TEST_CASE("mpi: an SFT step on 2 ranks equals one process's step on the whole batch", "[mpi][sft]",
                        cpu_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b;
  const auto c = tiny_llama_config(false);
  llama_model<B, T> solo(b, c), ranked(b, c);
  solo.init_random(b, 2, 0.2);
  ranked.init_random(b, 2 + world().rank(), 0.2);  // rank 1 differs until the first step's broadcast
  adamw<B, T> solo_opt(adamw_options{0.02}), ranked_opt(adamw_options{0.02});
  sft_trainer one(solo, solo_opt);
  sft_options small_buckets;  // many buckets, each summed (MPI_Iallreduce) while the backward goes on
  small_buckets.gradient_all_reduce.bucket_bytes = 256;
  sft_trainer two(ranked, ranked_opt, small_buckets, overlapping_world());
  const std::vector<prompt_response> batch = demonstrations(5);  // 2 rows on rank 0, 3 on rank 1
  for (int step = 0; step < 3; ++step) {
    const sft_step_stats s1 = one.step(b, batch);
    const sft_step_stats s2 = two.step(b, shard(std::span<const prompt_response>(batch), world()));
    CHECK(s2.tokens == s1.tokens);
    CHECK(s2.loss == Approx(s1.loss).epsilon(1e-5));
    CHECK(s2.nll == Approx(s1.nll).epsilon(1e-5));
    CHECK(s2.update.grad_norm == Approx(s1.update.grad_norm).epsilon(1e-4));
  }
  CHECK(max_parameter_difference(b, solo.parameters(), ranked.parameters()) <= TestType::tolerance);
  CHECK(max_difference_across_ranks(b, ranked.parameters()) == 0);
  const sft_eval_stats e1 = one.evaluate(b, batch), e2 = two.evaluate(b, batch);
  CHECK(e2.tokens == e1.tokens);
  CHECK(e2.nll == Approx(e1.nll).epsilon(1e-5));
}

TEMPLATE_LIST_TEST_CASE("mpi: a reward-model step on 2 ranks equals one process's step on the whole batch",
                        "[mpi][reward]", cpu_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b;
  const auto c = tiny_llama_config();
  llama_model<B, T> lm(b, c);
  lm.init_random(b, 3, 0.2);
  auto solo = llama_reward_model<B, T>::from_language_model(b, lm, 1, 0.1);
  auto ranked = llama_reward_model<B, T>::from_language_model(b, lm, 1 + world().rank(), 0.1);
  adamw<B, T> solo_opt(adamw_options{0.01}), ranked_opt(adamw_options{0.01});
  reward_trainer one(solo, solo_opt);
  reward_trainer_options small_buckets;
  small_buckets.gradient_all_reduce.bucket_bytes = 256;
  reward_trainer two(ranked, ranked_opt, small_buckets, overlapping_world());
  const std::vector<ranked_responses> batch = rankings();
  for (int step = 0; step < 3; ++step) {
    const reward_step_stats s1 = one.step(b, batch);
    const reward_step_stats s2 = two.step(b, shard(std::span<const ranked_responses>(batch), world()));
    CHECK(s2.compared_pairs == s1.compared_pairs);
    CHECK(s2.loss == Approx(s1.loss).epsilon(1e-5));
    CHECK(s2.accuracy == Approx(s1.accuracy).epsilon(1e-12));
    CHECK(s2.mean_margin == Approx(s1.mean_margin).epsilon(1e-4).margin(1e-6));
  }
  CHECK(max_parameter_difference(b, solo.parameters(), ranked.parameters()) <= TestType::tolerance);
  CHECK(max_difference_across_ranks(b, ranked.parameters()) == 0);
  const reward_step_stats e1 = one.evaluate(b, batch), e2 = two.evaluate(b, batch);
  CHECK(e2.accuracy == Approx(e1.accuracy).epsilon(1e-12));
  CHECK(e2.loss == Approx(e1.loss).epsilon(1e-5));
  // InstructGPT's bias: the whole set's demonstrations, scored half on each rank.
  std::vector<prompt_response> demos;
  for (const auto& e : batch) demos.push_back({e.prompt, e.responses[0]});
  CHECK(two.normalize_to_demonstrations(b, demos) == Approx(one.normalize_to_demonstrations(b, demos)).epsilon(1e-5));
}

TEMPLATE_LIST_TEST_CASE("mpi: PPO iterations on 2 ranks (sampling, whitening, ptx, entropy, adaptive KL) equal one "
                        "process's on the whole batch",
                        "[mpi][ppo]", cpu_configs) {
  using B = typename TestType::backend;
  using T = typename TestType::value;
  const B b;
  ppo_models<B, T> solo(b, 6), ranked(b, 6 + 10 * world().rank());
  ppo_trainer one(solo.policy, solo.reference, solo.value, solo.reward, solo.policy_opt, solo.value_opt,
                  ppo_test_options());
  ppo_options small_buckets = ppo_test_options();
  small_buckets.gradient_all_reduce.bucket_bytes = 512;
  ppo_trainer two(ranked.policy, ranked.reference, ranked.value, ranked.reward, ranked.policy_opt, ranked.value_opt,
                  small_buckets, overlapping_world());
  std::vector<std::vector<token_type>> prompts;
  for (token_type p = 2; p < 9; ++p) prompts.push_back({1, p});  // 7 prompts: 3 on rank 0, 4 on rank 1
  const std::vector<prompt_response> ptx = demonstrations(3);   // 1 row on rank 0, 2 on rank 1
  const auto mine = shard(std::span<const std::vector<token_type>>(prompts), world());
  const auto my_ptx = shard(std::span<const prompt_response>(ptx), world());
  for (int it = 0; it < 2; ++it) {
    // The same rows sampled: rank r's rollout is rows [first, first + count) of the one-process rollout.
    const ppo_rollout r1 = one.rollout(b, prompts);
    const ppo_rollout r2 = two.rollout(b, {mine.begin(), mine.end()});
    const shard_range s = shard_of(prompts.size(), world().rank(), world().size());
    REQUIRE(r2.responses.size() == s.count);
    for (std::size_t i = 0; i < s.count; ++i) CHECK(r2.responses[i] == r1.responses[s.first + i]);
    const ppo_iteration_stats a = one.learn(b, r1, ptx);
    const ppo_iteration_stats d = two.learn(b, r2, my_ptx);
    CHECK(d.mean_score == Approx(a.mean_score).epsilon(1e-12));
    CHECK(d.mean_kl == Approx(a.mean_kl).epsilon(1e-4).margin(1e-6));
    CHECK(d.mean_response_length == a.mean_response_length);
    CHECK(d.policy_loss == Approx(a.policy_loss).epsilon(1e-3).margin(1e-6));
    CHECK(d.value_loss == Approx(a.value_loss).epsilon(1e-3).margin(1e-6));
    CHECK(d.ptx_loss == Approx(a.ptx_loss).epsilon(1e-4));
    CHECK(d.entropy == Approx(a.entropy).epsilon(1e-4));
    CHECK(d.updates == a.updates);
    CHECK(two.beta() == Approx(one.beta()).epsilon(1e-9));
  }
  CHECK(max_parameter_difference(b, solo.policy.parameters(), ranked.policy.parameters()) <= TestType::tolerance);
  CHECK(max_parameter_difference(b, solo.value.parameters(), ranked.value.parameters()) <= TestType::tolerance);
  CHECK(max_difference_across_ranks(b, ranked.policy.parameters()) == 0);
  CHECK(max_difference_across_ranks(b, ranked.value.parameters()) == 0);
}

TEST_CASE("mpi: ppo_trainer early stop is decided on the union's KL, so every rank makes the same updates",
          "[mpi][ppo]") {
  const reference_backend b;
  ppo_models<reference_backend, double> solo(b, 6), ranked(b, 6);
  ppo_options o = ppo_test_options();
  o.ptx = false;
  o.ppo_epochs = 6;
  o.early_stop_kl = 1e-3;
  solo.policy_opt.set_learning_rate(0.05);  // large steps: the KL passes the threshold within the epochs
  ranked.policy_opt.set_learning_rate(0.05);
  ppo_trainer one(solo.policy, solo.reference, solo.value, solo.reward, solo.policy_opt, solo.value_opt, o);
  ppo_trainer two(ranked.policy, ranked.reference, ranked.value, ranked.reward, ranked.policy_opt, ranked.value_opt, o,
                  world());
  std::vector<std::vector<token_type>> prompts;
  for (token_type p = 2; p < 7; ++p) prompts.push_back({1, p});
  const auto mine = shard(std::span<const std::vector<token_type>>(prompts), world());
  const ppo_iteration_stats a = one.step(b, prompts);
  const ppo_iteration_stats d = two.step(b, {mine.begin(), mine.end()});
  INFO("updates " << a.updates);
  CHECK(a.early_stopped);
  CHECK(a.updates < 6);
  CHECK(d.early_stopped == a.early_stopped);
  CHECK(d.updates == a.updates);
  CHECK(global_max(world(), static_cast<double>(d.updates)) == static_cast<double>(d.updates));
  CHECK(max_parameter_difference(b, solo.policy.parameters(), ranked.policy.parameters()) <= 1e-10);
}

TEST_CASE("mpi: fit() shards each batch, writes metrics and checkpoints once, and every rank resumes", "[mpi][fit]") {
  const reference_backend b;
  const auto c = tiny_llama_config(false);
  // One directory for both ranks: rank 0's process id names it.
  const double pid = global_max(world(), world().rank() == 0 ? static_cast<double>(::getpid()) : 0.0);
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("rlhf_mpi_fit_" + std::to_string(static_cast<long>(pid)));
  if (world().rank() == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  world().barrier();
  const std::vector<prompt_response> data = demonstrations(9);
  run_options run;
  run.epochs = 2;
  run.batch_size = 4;  // 3 steps per epoch: 4, 4 and 1 rows (the last step leaves rank 0 without rows)
  run.show_progress = false;
  run.seed = 3;
  run.metrics_path = dir / "metrics.csv";
  run.checkpoint_dir = dir / "checkpoints";
  run.checkpoint_every = 2;
  llama_model<reference_backend, double> solo(b, c), ranked(b, c), resumed(b, c);
  solo.init_random(b, 2, 0.2);
  ranked.init_random(b, 2, 0.2);
  adamw<reference_backend, double> solo_opt(adamw_options{0.02}), ranked_opt(adamw_options{0.02}),
      resumed_opt(adamw_options{0.02});
  sft_trainer one(solo, solo_opt);
  run_options solo_run = run;
  solo_run.metrics_path.clear();
  solo_run.checkpoint_dir.clear();
  solo_run.checkpoint_every = 0;
  const run_result r1 = one.fit(b, data, solo_run);
  // The 2-rank run stops after 4 of its 6 steps; a new trainer (other weights) resumes it.
  run_options part = run;
  part.stop_after = 4;
  sft_trainer two(ranked, ranked_opt, sft_options{}, world());
  CHECK(two.fit(b, data, part).steps_done == 4);
  resumed.init_random(b, 99, 0.2);
  sft_trainer three(resumed, resumed_opt, sft_options{}, world());
  const run_result r3 = three.fit(b, data, run);
  CHECK(r3.resumed_from == 4);
  CHECK(r3.finished);
  REQUIRE(r3.history.size() == 2);
  CHECK(r3.history.back().at(1).second == Approx(r1.history.back().at(1).second));  // the epoch column
  CHECK(r3.last("loss") == Approx(r1.last("loss")).epsilon(1e-6));
  CHECK(max_parameter_difference(b, solo.parameters(), resumed.parameters()) <= 1e-10);
  world().barrier();
  if (world().rank() == 0) {
    // Metrics: a header and one row per step, written by rank 0 only.
    std::ifstream in(dir / "metrics.csv");
    std::size_t lines = 0;
    for (std::string line; std::getline(in, line);) ++lines;
    CHECK(lines == 1 + 6);
    CHECK(std::filesystem::exists(dir / "checkpoints" / "step-000006" / "policy.safetensors"));
    CHECK_FALSE(std::filesystem::exists(dir / "checkpoints" / "step-000004"));
  }
  world().barrier();
  if (world().rank() == 0) std::filesystem::remove_all(dir);
}

int main(int argc, char** argv) {
  // Catch2 runs on every rank; only rank 0 reports successes, every rank reports its failures.
  return rlhf::mpi_main(argc, argv, [&](const rlhf::mpi_communicator&) {
    const int failed = Catch::Session().run(argc, argv);
    // Every rank's verdict: the job fails when any rank failed.
    return global_max(world(), static_cast<double>(failed)) > 0 ? 1 : 0;
  });
}
