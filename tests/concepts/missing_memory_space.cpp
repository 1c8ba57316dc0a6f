// A type that is no backend at all: the first diagnostic names `memory_space`.
// expect: lacks `using memory_space
#include "rlhf/backends/concepts.hpp"

struct not_a_backend {};
int main() { rlhf::detail::check_backend<not_a_backend>(); }
