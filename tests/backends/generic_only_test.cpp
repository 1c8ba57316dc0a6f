// generic_only<B> forwards primitives but hides B's specializations from argument-dependent lookup.
#include "test_support.hpp"

#include "rlhf/backends/generic_only.hpp"

namespace probe_ns {
struct probe_backend : rlhf::reference_backend {};
// A specialization hook for probe_backend, found by ADL.
inline int rlhf_specialized_probe(const probe_backend&) { return 1; }
}  // namespace probe_ns

namespace {
template <class B>
int dispatch_probe(const B& b) {
  if constexpr (requires { rlhf_specialized_probe(b); }) {
    return rlhf_specialized_probe(b);
  } else {
    return 0;  // generic path
  }
}
}  // namespace

TEST_CASE("generic_only hides hooks and keeps every primitive", "[backends][generic_only]") {
  CHECK(dispatch_probe(probe_ns::probe_backend{}) == 1);
  CHECK(dispatch_probe(rlhf::generic_only<probe_ns::probe_backend>{}) == 0);
  STATIC_REQUIRE(rlhf::complete_backend<rlhf::generic_only<probe_ns::probe_backend>>);
  const rlhf::generic_only<rlhf::reference_backend> b;
  auto buf = rlhf::allocate_filled<double>(b, 2, 2, 3.0);
  CHECK(rlhf::to_host(b, buf.view()) == std::vector<double>(4, 3.0));
}
