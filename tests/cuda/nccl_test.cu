// The NCCL communicator on one GPU, one rank: the file bootstrap (rank 0 writes the id atomically), the
// collectives on the CUDA backend's stream (in place on device memory, float and double), all_gather of
// host values, barrier, a broadcast from a rank that does not exist rejected; the bucketed gradient
// all-reduce and the parameter broadcast over device views; an SFT step with the communicator.
// A single rank checks the plumbing (every call reaches NCCL and returns the right data); the reduction
// over several ranks is what the MPI tests check on the CPU with the same trainers.
// Built by nvcc with the nccl component; labelled `gpu`; exits 77 (ctest: skipped) without a GPU.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "cuda_test_support.hpp"
#include "rlhf/backends/cuda.cuh"
#include "rlhf/backends/memory.hpp"
#include "rlhf/dist/gradient_all_reduce.hpp"
#include "rlhf/dist/nccl.hpp"
#include "rlhf/optim/adamw.hpp"
#include "rlhf/train/sft_trainer.hpp"

using rlhf::test::expect;
using rlhf::test::failures;

static_assert(rlhf::communicator<rlhf::nccl_communicator, rlhf::cuda_backend>,
              "the NCCL communicator qualifies for the CUDA backend");

namespace {

template <class T>
void collectives(const rlhf::nccl_communicator& comm, const rlhf::cuda_backend& b) {
  const std::vector<T> host{1, -2, 3, 4.5, 0, 7};
  auto x = rlhf::to_backend(b, std::span<const T>(host), 2, 3);
  comm.all_reduce(b, x.view(), rlhf::reduce_op::sum);
  expect(rlhf::to_host(b, x.view()) == host, "all_reduce sum over one rank leaves the data");
  comm.all_reduce(b, x.view(), rlhf::reduce_op::max);
  expect(rlhf::to_host(b, x.view()) == host, "all_reduce max over one rank leaves the data");
  comm.broadcast(b, x.view(), 0);
  expect(rlhf::to_host(b, x.view()) == host, "broadcast from rank 0");
}

}  // namespace

int main(int argc, char** argv) {
  if (rlhf::cuda_device_count() == 0) {
    std::printf("rlhf NCCL communicator test: no CUDA device, skipped (this binary compiled)\n");
    return 77;
  }
  const std::filesystem::path id_file = argc > 1 ? argv[1] : "rlhf_nccl_id";
  std::filesystem::remove(id_file);
  try {
    const rlhf::nccl_communicator comm = rlhf::nccl_communicator::from_file(id_file, 0, 1, 0);
    expect(comm.rank() == 0 && comm.size() == 1, "rank 0 of 1");
    expect(std::filesystem::exists(id_file), "rank 0 wrote the id file");
    const rlhf::cuda_backend b;
    collectives<float>(comm, b);
    collectives<double>(comm, b);
    const std::vector<double> v{1.5, -2, 3};
    expect(comm.all_gather(v) == v, "all_gather over one rank");
    comm.barrier();
    bool threw = false;
    try {
      std::vector<float> h{1};
      auto y = rlhf::to_backend(b, std::span<const float>(h), 1, 1);
      comm.broadcast(b, y.view(), 1);
    } catch (const rlhf::invalid_argument& e) {
      threw = std::string(e.what()).find("'root'") != std::string::npos;
    }
    expect(threw, "broadcast from rank 1 of 1 is rejected naming 'root'");
    // Gradients and parameters in device memory through the helpers the trainers use.
    rlhf::llama_config c;
    c.dim = 8;
    c.hidden_dim = 12;
    c.n_layers = 1;
    c.n_heads = 2;
    c.n_kv_heads = 2;
    c.vocab_size = 11;
    c.seq_len = 8;
    rlhf::llama_model<rlhf::cuda_backend, float> policy(b, c);
    policy.init_random(b, 3, 0.1);
    const auto before = rlhf::to_host(b, policy.parameters()[0].value.flat());
    rlhf::broadcast_parameters(comm, b, policy.parameters());
    expect(rlhf::to_host(b, policy.parameters()[0].value.flat()) == before, "broadcast_parameters over one rank");
    rlhf::adamw<rlhf::cuda_backend, float> opt(rlhf::adamw_options{0.01});
    rlhf::sft_trainer trainer(policy, opt, rlhf::sft_options{}, comm);
    const std::vector<rlhf::prompt_response> batch{{{1, 2}, {3, 4}}, {{1, 5}, {6}}};
    const rlhf::sft_step_stats s = trainer.step(b, batch);
    expect(s.tokens == 3 && std::isfinite(s.loss), "an SFT step with the NCCL communicator");
  } catch (const std::exception& e) {
    std::printf("FAILED: %s\n", e.what());
    ++failures;
  }
  std::filesystem::remove(id_file);
  if (failures != 0) {
    std::printf("rlhf NCCL communicator test: %d failure(s)\n", failures);
    return 1;
  }
  std::printf("rlhf NCCL communicator test: OK\n");
  return 0;
}
