// A value model that does not say which backend and element type it uses: the diagnostic asks for them.
// expect: a value model needs member types `backend_type` and `value_type`.*docs/models.md#value-model
#include "rlhf/models/concepts.hpp"

struct untyped_critic {
  void values() {}
};

int main() { rlhf::detail::check_value_model<untyped_critic>(); }
