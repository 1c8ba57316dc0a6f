// The data-parallel gradient all-reduce under MPI (run with `mpirun -np N`; the target rlhf_run_all_reduce
// runs 2 ranks): rlhf::all_reduce_gradients over a llama_model's gradients (one buffer, reduced in place)
// and over separately allocated tensors (packed into buckets), against the floor of one in-place
// MPI_Allreduce of the same bytes in one buffer (what bucketing costs), and against this machine's memory
// bandwidth measured by a STREAM-style triad on every rank at once in the same run (the hardware limit of
// a shared-memory all-reduce: every byte is read and written several times).
//
// Then one backward pass of a 7.4M-parameter llama_model with its gradient sums after it and overlapped
// with it (rlhf::overlapped_gradient_all_reduce).
//
// Bytes: a ring all-reduce of S bytes moves 2 (N - 1) / N * S per rank (NCCL's "bus bandwidth"
// convention), so busbw = S / t * 2 (N - 1) / N is comparable across N and with a link's bandwidth.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_support.hpp"
#include "rlhf/backends/eigen.hpp"
#include "rlhf/dist/gradient_all_reduce.hpp"
#include "rlhf/dist/mpi.hpp"
#include "rlhf/dist/global_statistics.hpp"
#include "rlhf/models/llama.hpp"

#ifndef RLHF_BENCH_DATA_DIR
#define RLHF_BENCH_DATA_DIR "examples/data"
#endif

namespace {

using rlhf::bench::clock_type;
using rlhf::bench::seconds_since;
using backend = rlhf::eigen_backend;

// Median of `reps` timings of f(), every rank starting together.
template <class F>
double median_seconds(const rlhf::mpi_communicator& comm, int reps, F&& f) {
  std::vector<double> t;
  f();  // warm-up
  for (int i = 0; i < reps; ++i) {
    comm.barrier();
    const auto t0 = clock_type::now();
    f();
    t.push_back(seconds_since(t0));
  }
  std::sort(t.begin(), t.end());
  return rlhf::global_max(comm, t[t.size() / 2]);  // the slowest rank's median
}

// STREAM triad a = b + s c over 3 x 32 MiB of doubles per rank, every rank at once: the machine's
// bandwidth under N concurrent streams (24 bytes per element), summed over ranks.
double triad_bandwidth(const rlhf::mpi_communicator& comm) {
  const std::size_t n = std::size_t(4) << 20;
  std::vector<double> a(n), b(n, 1.0), c(n, 2.0);
  const double s = median_seconds(comm, 5, [&] {
    for (std::size_t i = 0; i < n; ++i) a[i] = b[i] + 3.0 * c[i];
  });
  const double mine = 24.0 * static_cast<double>(n) / s;
  return rlhf::global_sums(comm, {mine})[0];
}

struct tensors {
  std::vector<rlhf::host_buffer<float>> values, grads;
  rlhf::parameter_list<float> params;
  std::size_t elements = 0;
  void add(std::size_t rows, std::size_t cols) {
    values.emplace_back(rows, cols);
    grads.emplace_back(rows, cols);
    std::fill(grads.back().data(), grads.back().data() + rows * cols, 1.0f);
    char name[32];  // snprintf: GCC 12 reports a false -Wrestrict for "t" + std::to_string(i)
    std::snprintf(name, sizeof name, "t%zu", params.size());
    params.push_back({name, values.back().view(), grads.back().view()});
    elements += rows * cols;
  }
};

void report(const rlhf::mpi_communicator& comm, const backend& b, const char* name, tensors& t, double machine_bw) {
  const double bytes = 4.0 * static_cast<double>(t.elements);
  const double n = static_cast<double>(comm.size());
  const int reps = t.elements > (std::size_t(8) << 20) ? 5 : 30;
  rlhf::gradient_all_reduce_stats st{};
  rlhf::gradient_all_reduce_workspace<backend, float> workspace;  // kept across steps, as the trainers do
  const double bucketed =
      median_seconds(comm, reps, [&] { st = rlhf::all_reduce_gradients(comm, b, t.params, {}, &workspace); });
  rlhf::host_buffer<float> flat(1, t.elements);
  std::fill(flat.data(), flat.data() + t.elements, 1.0f);
  const double floor = median_seconds(comm, reps, [&] { comm.all_reduce(b, flat.view(), rlhf::reduce_op::sum); });
  const double busbw = bytes / bucketed * 2.0 * (n - 1.0) / n;
  if (comm.rank() == 0) {
    std::printf("%-38s %8.2f MB  %4zu tensors  %3zu collectives  %5.1f %% packed  %9.3f ms  busbw %6.2f GB/s  = %5.1f %% of "
                "memory bw  one buffer %9.3f ms (x%.2f)\n",
                name, bytes / 1e6, t.params.size(), st.collectives,
                100.0 * static_cast<double>(st.packed_elements) / static_cast<double>(t.elements), bucketed * 1e3,
                busbw / 1e9, 100.0 * busbw / machine_bw, floor * 1e3, bucketed / floor);
  }
}

// One training step's backward and gradient sum on a llama_model of the 7.4M shape (2 rows of 32
// tokens per rank): the backward alone (no communication: the compute floor), the backward followed by
// all_reduce_gradients (sequential, MPI_Allreduce: mpi_communicator's default), and the same sums started
// bucket by bucket while the backward runs (rlhf::overlapped_gradient_all_reduce over a communicator made
// with overlap_gradients = true: MPI_Iallreduce, progressed between layers). The exposed communication is the excess over the floor.
void backward_overlap(const rlhf::mpi_communicator& comm, const backend& b) {
  rlhf::llama_config c;
  c.dim = 256;
  c.hidden_dim = 688;
  c.n_layers = 8;
  c.n_heads = 8;
  c.n_kv_heads = 8;
  c.vocab_size = 4096;
  c.seq_len = 64;
  c.shared_classifier = true;
  rlhf::llama_model<backend, float> model(b, c);
  model.init_random(b, 1, 0.02);
  const std::size_t rows = 2, cols = 32;
  std::vector<rlhf::token_type> ids(rows * cols);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<rlhf::token_type>((i * 7919 + comm.rank() * 31) % c.vocab_size);
  const auto tokens = rlhf::to_backend(b, std::span<const rlhf::token_type>(ids), rows, cols);
  auto lp = rlhf::allocate<float>(b, rows, cols);
  const auto d_lp = rlhf::allocate_filled<float>(b, rows, cols, 1.0f);
  const auto forward_backward = [&](auto&& before_backward) {
    model.zero_grad(b);
    model.log_probs(b, rlhf::as_const(tokens.view()), {}, lp.view(), {}, rlhf::forward_mode::training);
    before_backward();
    model.log_probs_backward(b, rlhf::as_const(d_lp.view()));
  };
  const int reps = 7;
  const double alone = median_seconds(comm, reps, [&] { forward_backward([] {}); });
  const double sequential = median_seconds(comm, reps, [&] {
    forward_backward([] {});
    rlhf::all_reduce_gradients(comm, b, model.parameters());
  });
  rlhf::gradient_all_reduce_stats st{};
  const rlhf::mpi_communicator overlapping(MPI_COMM_WORLD, true);  // MPI_Iallreduce during the backward
  const double overlapped = median_seconds(comm, reps, [&] {
    rlhf::overlapped_gradient_all_reduce summed(overlapping, b, model);
    forward_backward([&] { summed.arm(); });
    st = summed.finish();
  });
  if (comm.rank() == 0) {
    const double mb = 4.0 * static_cast<double>(rlhf::parameter_count(model.parameters())) / 1e6;
    std::printf("\nforward + backward + gradient sum, llama_model 7.4M shape (%.1f MB of gradients, %zu x %zu tokens per rank):\n",
                mb, rows, cols);
    std::printf("  backward alone (no communication)      %9.2f ms\n", alone * 1e3);
    std::printf("  backward, then all_reduce_gradients     %9.2f ms  exposed communication %7.2f ms  (MPI_Allreduce: the "
                "default)\n",
                sequential * 1e3,
                (sequential - alone) * 1e3);
    std::printf("  sums overlapped with the backward       %9.2f ms  exposed communication %7.2f ms  (MPI_Iallreduce, %zu "
                "buckets, %zu started during the backward)  x%.3f of sequential\n",
                overlapped * 1e3, (overlapped - alone) * 1e3, st.collectives, st.started_early, overlapped / sequential);
  }
}

}  // namespace

int main(int argc, char** argv) {
  return rlhf::mpi_main(argc, argv, [](const rlhf::mpi_communicator& comm) {
    const backend b{1};
    const double machine_bw = triad_bandwidth(comm);
    if (comm.rank() == 0) {
      std::printf("all_reduce_gradients over MPI: %zu ranks; memory bandwidth (triad on every rank at once) %.1f GB/s\n",
                  comm.size(), machine_bw / 1e9);
    }
    {  // The demo's policy: the model's own gradients (one buffer: reduced in place), then the same shapes
       // as separate tensors (packed into buckets).
      auto model = rlhf::load_llama2c(b, std::string(RLHF_BENCH_DATA_DIR) + "/stories260K.bin");
      tensors own;
      own.params = model.parameters();
      own.elements = rlhf::parameter_count(own.params);
      report(comm, b, "stories260K llama_model (fp32)", own, machine_bw);
      tensors t;
      for (const auto& p : model.parameters()) t.add(p.value.rows, p.value.cols);
      report(comm, b, "stories260K shapes, separate tensors", t, machine_bw);
    }
    {  // A 7.4M-parameter Llama shape: embeddings, 8 layers of 7 matrices and 2 norms, a final norm.
      tensors t;
      t.add(4096, 256);
      for (int l = 0; l < 8; ++l) {
        t.add(1, 256);
        for (int m = 0; m < 4; ++m) t.add(256, 256);
        t.add(1, 256);
        for (int m = 0; m < 3; ++m) t.add(688, 256);
      }
      t.add(1, 256);
      report(comm, b, "7.4M-parameter Llama (fp32)", t, machine_bw);
    }
    {  // Large tensors: 64M parameters in 16 tensors (the in-place path).
      tensors t;
      for (int i = 0; i < 16; ++i) t.add(2048, 2048);
      report(comm, b, "64M parameters, 16 tensors (fp32)", t, machine_bw);
    }
    backward_overlap(comm, b);
    return 0;
  });
}
