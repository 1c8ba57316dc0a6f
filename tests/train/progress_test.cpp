// The progress reporter in plain mode (not a terminal): a line every total/10 steps and at the end,
// with the count, the rate and the status text.
#include "rlhf/train/progress.hpp"

#include <cstdio>
#include <string>

#include <catch2/catch.hpp>

TEST_CASE("progress: plain lines when the output is not a terminal", "[train][progress]") {
  std::FILE* f = std::tmpfile();
  REQUIRE(f != nullptr);
  {
    rlhf::progress p("SFT", 20, f);
    CHECK_FALSE(p.interactive());
    for (std::size_t i = 1; i <= 20; ++i) p.update(i, "loss " + std::to_string(i));
    p.finish();
  }
  std::rewind(f);
  std::string text;
  char buf[256];
  while (std::fgets(buf, sizeof buf, f)) text += buf;
  std::fclose(f);
  std::size_t lines = 0;
  for (const char c : text) lines += c == '\n';
  CHECK(lines == 10);  // steps 2, 4, ..., 20
  CHECK(text.find("SFT  2/20") != std::string::npos);
  CHECK(text.find("20/20") != std::string::npos);
  CHECK(text.find("it/s") != std::string::npos);
  CHECK(text.find("loss 20") != std::string::npos);
  CHECK(text.find("loss 3") == std::string::npos);
  CHECK(text.find('[') == std::string::npos);  // no bar outside a terminal
}
