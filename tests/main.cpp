// Test runner: prints the library version and the backends in this binary, and guarantees a seed.
// Every random test draws from rlhf::test::rng(), seeded from Catch's --rng-seed; when none is given
// a fixed default is used, so runs are reproducible and a failing seed can be replayed.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <string>
#include <vector>

#include "rlhf/config.hpp"
#if defined(_OPENMP)
#include <omp.h>
#endif

int main(int argc, char* argv[]) {
  Catch::Session session;
  if (const int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  if (session.configData().rngSeed == 0) session.configData().rngSeed = 20261123u;
  const bool listing = session.configData().listTests || session.configData().listTestNamesOnly ||
                       session.configData().listTags || session.configData().listReporters;
  if (!listing) {
    std::printf("rlhf %s tests; backends: reference%s%s%s%s; OpenMP threads: %d; rng seed: %u\n", rlhf::version_string,
#if RLHF_TEST_HAS_EIGEN
                ", eigen",
#else
                "",
#endif
#if RLHF_TEST_HAS_EIGEN && RLHF_TEST_GENERIC_ONLY
                ", generic_only<eigen>",
#else
                "",
#endif
#if RLHF_TEST_XTENSOR_EVERYWHERE
                ", xtensor",
#elif RLHF_TEST_HAS_XTENSOR
                ", xtensor (xtensor_test only)",
#else
                "",
#endif
#if RLHF_TEST_HAS_THRUST && RLHF_TEST_HAS_THRUST_OMP
                ", thrust_omp",
#elif RLHF_TEST_HAS_THRUST
                ", thrust_cpp",
#else
                "",
#endif
#if defined(_OPENMP)
                omp_get_max_threads(),
#else
                1,
#endif
                session.configData().rngSeed);
  }
  return session.run();
}
