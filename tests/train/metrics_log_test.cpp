// Metrics logs: CSV with a header and JSONL rows, flushed per row, appended on resume, and errors.
#include "rlhf/train/metrics_log.hpp"

#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include "temp_files.hpp"
#include <catch2/catch.hpp>

namespace {
std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}
}  // namespace

TEST_CASE("metrics_log: CSV header and rows; append keeps the header once", "[train][metrics]") {
  rlhf::test::temp_dir dir;
  const auto path = dir / "m.csv";
  {
    rlhf::metrics_log log(path);
    CHECK(log.format() == rlhf::metrics_format::csv);
    log.write({{"step", 0}, {"loss", 1.5}});
    CHECK(slurp(path) == "step,loss\n0,1.5\n");  // flushed per row
    log.write({{"step", 1}, {"loss", 0.25}});
    CHECK_THROWS_WITH(log.write({{"step", 2}}), Catch::Contains("rlhf::metrics_log::write") && Catch::Contains("'row'"));
  }
  {
    rlhf::metrics_log log(path, true);
    log.write({{"step", 2}, {"loss", 0.125}});
  }
  CHECK(slurp(path) == "step,loss\n0,1.5\n1,0.25\n2,0.125\n");
}

TEST_CASE("metrics_log: JSONL rows, non-finite values as null; unknown extension rejected", "[train][metrics]") {
  rlhf::test::temp_dir dir;
  const auto path = dir / "m.jsonl";
  {
    rlhf::metrics_log log(path);
    log.write({{"step", 3}, {"kl", std::numeric_limits<double>::quiet_NaN()}});
  }
  CHECK(slurp(path) == "{\"step\":3,\"kl\":null}\n");
  CHECK_THROWS_WITH(rlhf::metrics_log(dir / "m.txt"), Catch::Contains("'path'") && Catch::Contains(".csv or .jsonl"));
}
