// What the plain-program benchmarks share (model_bench, ppo_iteration_bench, all_reduce_bench): wall-clock
// timing and the process's peak resident memory.
#pragma once

#include <sys/resource.h>

#include <chrono>

namespace rlhf::bench {

using clock_type = std::chrono::steady_clock;

inline double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// The process's peak resident set in MiB (Linux reports KiB).
inline double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

}  // namespace rlhf::bench
