// What the CUDA test programs share (Catch2 does not build under nvcc): a failure counter, `expect`, and a
// close-to comparison of host vectors with a message naming the first differing index.
#pragma once

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace rlhf::test {

inline int failures = 0;

inline void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("FAILED: %s\n", what.c_str());
  }
}

template <class T>
bool close(const std::vector<T>& got, const std::vector<T>& want, double rtol, double atol, std::string& why) {
  if (got.size() != want.size()) {
    why = "size " + std::to_string(got.size()) + " != " + std::to_string(want.size());
    return false;
  }
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(got[i]), w = static_cast<double>(want[i]);
    if ((std::isnan(g) && std::isnan(w)) || (std::isinf(g) && g == w)) continue;
    if (!(std::abs(g - w) <= atol + rtol * std::abs(w))) {
      why = "index " + std::to_string(i) + ": got " + std::to_string(g) + ", want " + std::to_string(w);
      return false;
    }
  }
  return true;
}

template <class T>
void check_close(const std::vector<T>& got, const std::vector<T>& want, double rtol, double atol, const std::string& what) {
  std::string why;
  expect(close(got, want, rtol, atol, why), what + ": " + why);
}

}  // namespace rlhf::test
