// The version macros CMake parses and the string agree.
#include "test_support.hpp"

#include <string>

#include "rlhf/config.hpp"

TEST_CASE("version macros and string agree", "[config]") {
  const std::string expected = std::to_string(RLHF_VERSION_MAJOR) + "." + std::to_string(RLHF_VERSION_MINOR) + "." +
                               std::to_string(RLHF_VERSION_PATCH);
  CHECK(expected == rlhf::version_string);
}
