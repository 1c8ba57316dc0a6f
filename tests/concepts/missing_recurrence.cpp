// A backend that hides the reverse linear recurrence: the diagnostic names it and the docs section.
// expect: lacks `reverse_linear_recurrence.*docs/backends.md#scan_backend
#include "rlhf/backends/reference.hpp"

struct no_scan_backend : rlhf::reference_backend {
  template <class... A>
  void reverse_linear_recurrence(A...) const = delete;
};

static_assert(rlhf::reduce_backend<no_scan_backend>, "still a reduce backend");
int main() { rlhf::detail::check_scan_backend<no_scan_backend>(); }
