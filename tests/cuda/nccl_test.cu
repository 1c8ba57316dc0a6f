// The NCCL communicator on one GPU, one rank: the file bootstrap (rank 0 writes the id atomically), the
// collectives on the CUDA backend's stream (in place on device memory, float and double), all_gather of
// host values, barrier, a broadcast from a rank that does not exist rejected; the bucketed gradient
// all-reduce and the parameter broadcast over device views; an SFT step with the communicator; started
// (nonblocking) all-reduces, and gradient sums overlapped with a llama_model's backward.
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
  // Started on the communicator's stream after the work queued on the backend's; waited stream-ordered.
  rlhf::nccl_pending_collective first = comm.all_reduce_async(b, x.view(), rlhf::reduce_op::sum);
  rlhf::nccl_pending_collective second = comm.all_reduce_async(b, x.view().row_block(0, 1), rlhf::reduce_op::max);
  first.wait();
  second.wait();
  expect(rlhf::to_host(b, x.view()) == host, "all_reduce_async over one rank leaves the data");
  { rlhf::nccl_pending_collective dropped = comm.all_reduce_async(b, x.view(), rlhf::reduce_op::sum); }
  expect(rlhf::to_host(b, x.view()) == host, "an unwaited handle synchronizes when destroyed");
}

}  // namespace

namespace nccl_test {
// The one-rank NCCL communicator presented as rank 0 of 2, so that the gradient reducer plans and starts
// its buckets (NCCL's sum over its one rank leaves the data: the plumbing is what is checked).
struct claims_two_ranks {
  rlhf::nccl_communicator nccl;
  std::size_t rank() const { return 0; }
  std::size_t size() const { return 2; }
  template <class B, class T, class S>
  void all_reduce(const B& b, rlhf::matrix_view<T, S> x, rlhf::reduce_op op) const { nccl.all_reduce(b, x, op); }
  template <class B, class T, class S>
  rlhf::nccl_pending_collective all_reduce_async(const B& b, rlhf::matrix_view<T, S> x, rlhf::reduce_op op) const {
    return nccl.all_reduce_async(b, x, op);
  }
  template <class B, class T, class S>
  void broadcast(const B& b, rlhf::matrix_view<T, S> x, std::size_t root) const { nccl.broadcast(b, x, root); }
  std::vector<double> all_gather(std::span<const double> v) const {
    std::vector<double> out = nccl.all_gather(v);
    out.insert(out.end(), v.begin(), v.end());
    return out;
  }
  void barrier() const { nccl.barrier(); }
};
}  // namespace nccl_test
static_assert(rlhf::nonblocking_communicator<rlhf::nccl_communicator, rlhf::cuda_backend>,
              "the NCCL communicator starts all-reduces on its own stream");


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
    // Gradient sums started on NCCL's stream during the backward (small buckets: one per tensor or so).
    const std::vector<rlhf::token_type> tok{1, 2, 3, 4, 5, 6};
    const auto tokens = rlhf::to_backend(b, std::span<const rlhf::token_type>(tok), 2, 3);
    auto lp = rlhf::allocate<float>(b, 2, 3);
    const auto d_lp = rlhf::allocate_filled<float>(b, 2, 3, 0.5f);
    const auto backward = [&] {
      policy.zero_grad(b);
      policy.log_probs(b, rlhf::as_const(tokens.view()), {}, lp.view(), {}, rlhf::forward_mode::training);
      policy.log_probs_backward(b, rlhf::as_const(d_lp.view()));
    };
    backward();
    std::vector<std::vector<float>> expected;
    for (const auto& p : policy.parameters()) expected.push_back(rlhf::to_host(b, p.grad.flat()));
    const nccl_test::claims_two_ranks two{comm};
    rlhf::overlapped_gradient_all_reduce summed(two, b, policy, rlhf::gradient_all_reduce_options{64 * sizeof(float)});
    summed.arm();
    backward();
    const rlhf::gradient_all_reduce_stats st = summed.finish();
    expect(st.collectives > 1 && st.started_early == st.collectives, "every bucket started during the backward");
    bool same = true;
    const auto params = policy.parameters();
    for (std::size_t k = 0; k < params.size(); ++k) same = same && rlhf::to_host(b, params[k].grad.flat()) == expected[k];
    expect(same, "overlapped sums over one rank leave every gradient as the backward made it");
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
