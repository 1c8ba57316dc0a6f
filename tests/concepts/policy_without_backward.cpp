// A user's policy with a forward but no backward: the diagnostic names `log_probs_backward` and the docs.
// expect: a policy needs `log_probs.*log_probs_backward.*docs/models.md#policy
#include <vector>

#include "rlhf/backends/reference.hpp"
#include "rlhf/models/concepts.hpp"

struct forward_only_policy {
  using backend_type = rlhf::reference_backend;
  using value_type = float;
  rlhf::parameter_list<float> parameters() { return {}; }
  void zero_grad(const backend_type&) {}
  void log_probs(const backend_type&, rlhf::matrix_view<const rlhf::token_type>, rlhf::vector_view<const std::int32_t>,
                 rlhf::matrix_view<float>, rlhf::matrix_view<float>, rlhf::forward_mode) {}
  std::vector<std::vector<rlhf::token_type>> generate(const backend_type&, const std::vector<std::vector<rlhf::token_type>>& p,
                                                      std::size_t, const rlhf::sampling_options&) {
    return p;
  }
};

int main() { rlhf::detail::check_policy<forward_only_policy>(); }
