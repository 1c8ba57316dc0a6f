// Downstream use of an installed rlhf, found with find_package(rlhf CONFIG REQUIRED COMPONENTS ...).
#include <cstdio>
#include <vector>

#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/reference.hpp"
#if CONSUMER_USES_EIGEN
#include "rlhf/backends/eigen.hpp"
#endif

template <class B>
int run(const B& b, const char* name) {
  std::vector<double> x{1, 2, 3};
  auto buf = rlhf::to_backend(b, x);
  const double sum = b.transform_reduce(0.0, [](double a, double c) { return a + c; }, [](double v) { return v; },
                                        buf.view().flat());
  std::printf("%s backend: sum = %g\n", name, sum);
  return sum == 6.0 ? 0 : 1;
}

int main() {
  int failures = run(rlhf::reference_backend{}, "reference");
#if CONSUMER_USES_EIGEN
  failures += run(rlhf::eigen_backend{}, "eigen");
#endif
  if (failures == 0) std::printf("rlhf consumer OK (rlhf %s)\n", rlhf::version_string);
  return failures;
}
