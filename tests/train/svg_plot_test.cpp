// The SVG plot: a well-formed document with one panel and one polyline per series, the points scaled into
// the panel, titles escaped, written atomically (no temporary left).
#include "rlhf/train/svg_plot.hpp"

#include <fstream>
#include <sstream>
#include <string>

#include "temp_files.hpp"
#include <catch2/catch.hpp>

TEST_CASE("write_svg_plot: one panel and polyline per series", "[train][svg]") {
  rlhf::test::temp_dir dir;
  const auto path = dir / "curves.svg";
  rlhf::write_svg_plot(path, "reward & KL", "PPO step", {{"reward", {0, 1, 2, 3}}, {"KL <nats>", {0.5, 0.5}}});
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  const std::string svg = s.str();
  CHECK(svg.rfind("<svg ", 0) == 0);
  CHECK(svg.find("</svg>") != std::string::npos);
  std::size_t polylines = 0;
  for (std::size_t at = svg.find("<polyline"); at != std::string::npos; at = svg.find("<polyline", at + 1)) ++polylines;
  CHECK(polylines == 2);
  CHECK(svg.find("reward &amp; KL") != std::string::npos);
  CHECK(svg.find("KL &lt;nats&gt;") != std::string::npos);
  // First panel: x from 70 to 620 over 4 points, y from the bottom (220) to the top (40).
  CHECK(svg.find("points=\"70,220 253.3,160 436.7,100 620,40 \"") != std::string::npos);
  CHECK(dir.count() == 1);
}
