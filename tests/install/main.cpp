// A downstream project using an installed rlhf found with find_package(rlhf CONFIG REQUIRED COMPONENTS ...):
// computes GAE and the PPO-clip loss on a hand-computed case with every backend it was given.
#include <cmath>
#include <cstdio>
#include <vector>

#include "rlhf/advantages/gae.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/reference.hpp"
#include "rlhf/losses/ppo_clip_loss.hpp"
#include "rlhf/testing/conformance.hpp"
#if CONSUMER_USES_EIGEN
#include "rlhf/backends/eigen.hpp"
#endif
#if CONSUMER_USES_THRUST
#include "rlhf/backends/thrust.hpp"
#endif
#if CONSUMER_USES_XTENSOR
#include "rlhf/backends/xtensor.hpp"
#endif
#if CONSUMER_USES_CUDA
#include "rlhf/backends/cuda.cuh"
#endif
#if CONSUMER_USES_MPI
#include "rlhf/dist/global_statistics.hpp"
#include "rlhf/dist/mpi.hpp"
#endif
#if CONSUMER_USES_NCCL
#include "rlhf/dist/nccl.hpp"
#endif

template <class B>
int run(const B& b, const char* name) {
  // One response of 3 tokens, reward 1 at the end, values 0.5, gamma = lambda = 1:
  // returns are 1 everywhere and advantages 1 - 0.5 = 0.5.
  auto rewards = rlhf::to_backend(b, std::vector<double>{0, 0, 1}, 1, 3);
  auto values = rlhf::to_backend(b, std::vector<double>{0.5, 0.5, 0.5}, 1, 3);
  auto mask = rlhf::allocate_filled<rlhf::mask_type>(b, 1, 3, 1);
  auto adv = rlhf::allocate<double>(b, 1, 3), ret = rlhf::allocate<double>(b, 1, 3);
  rlhf::gae(b, rewards.view(), values.view(), mask.view(), adv.view(), ret.view(), rlhf::gae_options{1.0, 1.0});
  const auto a = rlhf::to_host(b, adv.view());
  const auto r = rlhf::to_host(b, ret.view());

  // PPO-clip at ratio 1: loss = -mean(A) = -0.5, d loss / d logp = -A / 3 per token.
  auto logp = rlhf::to_backend(b, std::vector<double>{-1, -2, -3}, 1, 3);
  auto d_logp = rlhf::allocate<double>(b, 1, 3);
  const auto stats = rlhf::ppo_clip_loss(b, logp.view(), logp.view(), adv.view(), mask.view(), d_logp.view());
  const auto g = rlhf::to_host(b, d_logp.view());

  bool ok = true;
  for (int t = 0; t < 3; ++t) {
    ok = ok && std::abs(a[t] - 0.5) < 1e-12 && std::abs(r[t] - 1.0) < 1e-12 && std::abs(g[t] + 0.5 / 3) < 1e-12;
  }
  ok = ok && std::abs(stats.loss + 0.5) < 1e-12 && stats.clip_fraction == 0.0;
  std::printf("%s backend: advantages %.3f %.3f %.3f, PPO loss %.4f -> %s\n", name, a[0], a[1], a[2], stats.loss,
              ok ? "ok" : "WRONG");
  // The installed conformance suite, as a backend author would run it.
  rlhf::testing::conformance_options co;
  co.name = name;
  const rlhf::testing::conformance_report report = rlhf::testing::check_conformance<float>(b, co);
  std::printf("%s\n", report.summary().c_str());
  ok = ok && report.ok();
  return ok ? 0 : 1;
}

#if CONSUMER_USES_MPI
// One process (MPI's singleton start, no mpirun): rank 0 of 1, the collectives over the reference backend.
int run_mpi(int argc, char** argv) {
  return rlhf::mpi_main(argc, argv, [](const rlhf::mpi_communicator& comm) {
    std::vector<double> x{1.5, -2};
    comm.all_reduce(rlhf::reference_backend{}, rlhf::matrix_view<double, rlhf::host_space>{x.data(), 1, 2},
                    rlhf::reduce_op::sum);
    const bool ok = comm.size() == 1 && x == std::vector<double>{1.5, -2} && rlhf::global_sum(comm, 2.0) == 2.0;
    std::printf("mpi communicator: rank %zu of %zu -> %s\n", comm.rank(), comm.size(), ok ? "ok" : "WRONG");
    return ok ? 0 : 1;
  });
}
#endif

int main([[maybe_unused]] int argc, [[maybe_unused]] char** argv) {
  int failures = run(rlhf::reference_backend{}, "reference");
#if CONSUMER_USES_MPI
  failures += run_mpi(argc, argv);
#endif
#if CONSUMER_USES_NCCL
  static_assert(sizeof(rlhf::nccl_communicator::unique_id) > 0, "the NCCL communicator compiles");
  std::printf("nccl communicator: compiled (one rank per GPU; run by the gpu tests where a GPU is present)\n");
#endif
#if CONSUMER_USES_EIGEN
  failures += run(rlhf::eigen_backend{}, "eigen");
#endif
#if CONSUMER_USES_THRUST
  failures += run(rlhf::thrust_cpp_backend{}, "thrust_cpp");
#endif
#if CONSUMER_USES_XTENSOR
  failures += run(rlhf::xtensor_backend{}, "xtensor");
#endif
#if CONSUMER_USES_CUDA
  if (rlhf::cuda_device_count() > 0) {
    failures += run(rlhf::cuda_backend{}, "cuda");
  } else {
    std::printf("cuda backend: compiled; no CUDA device, not run\n");
  }
#endif
  if (failures == 0) std::printf("rlhf consumer OK (rlhf %s)\n", rlhf::version_string);
  return failures;
}
