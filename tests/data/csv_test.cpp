// The CSV reader (rlhf/data/csv.hpp): quoted fields with commas, doubled quotes and line breaks,
// CRLF, a last record without a line end, blank lines, a BOM; errors with file and line; and a
// random round trip against a writer written here from RFC 4180.
#include "test_support.hpp"

#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "rlhf/data/csv.hpp"
#include "temp_files.hpp"

using namespace rlhf;

namespace {
using rows_t = std::vector<std::vector<std::string>>;
rows_t fields_of(const std::vector<csv_row>& rows) {
  rows_t out;
  for (const auto& r : rows) out.push_back(r.fields);
  return out;
}
std::vector<std::size_t> lines_of(const std::vector<csv_row>& rows) {
  std::vector<std::size_t> out;
  for (const auto& r : rows) out.push_back(r.line);
  return out;
}
// RFC 4180 writer: quote every field that needs it, doubling quotes.
std::string to_csv(const rows_t& rows, const char* eol) {
  std::string out;
  for (const auto& r : rows) {
    for (std::size_t i = 0; i < r.size(); ++i) {
      if (i) out += ',';
      const std::string& f = r[i];
      if (f.find_first_of(",\"\r\n") != std::string::npos || f.empty()) {
        out += '"';
        for (char c : f) {
          if (c == '"') out += '"';
          out += c;
        }
        out += '"';
      } else {
        out += f;
      }
    }
    out += eol;
  }
  return out;
}
}  // namespace

TEST_CASE("csv: plain and quoted fields, doubled quotes, commas and newlines inside quotes", "[data][csv]") {
  const std::string text =
      "a,b,c\n"
      "\"x, y\",\"say \"\"hi\"\"\",plain\r\n"
      "\n"
      "\"two\nlines\",,\"\"\n"
      "last,no newline";
  const auto rows = parse_csv(text);
  const rows_t expected{{"a", "b", "c"}, {"x, y", "say \"hi\"", "plain"}, {"two\nlines", "", ""}, {"last", "no newline"}};
  CHECK(fields_of(rows) == expected);
  // Line numbers are physical lines where each record starts (line 3 is blank; record 3 spans 4-5).
  CHECK(lines_of(rows) == std::vector<std::size_t>{1, 2, 4, 6});
  CHECK(parse_csv("").empty());
  CHECK(parse_csv("\n\r\n\n").empty());
  CHECK(fields_of(parse_csv("\xEF\xBB\xBF" "a,b\n")) == rows_t{{"a", "b"}});
  CHECK(fields_of(parse_csv(",\n")) == rows_t{{"", ""}});
  CHECK(fields_of(parse_csv("\"a\r\nb\"\r\n")) == rows_t{{"a\r\nb"}});
  CHECK(fields_of(parse_csv("a\rb\n")) == rows_t{{"a\rb"}});  // a lone CR is data
}

TEST_CASE("csv: errors name function, source and line", "[data][csv]") {
  CHECK_THROWS_WITH(parse_csv("ok\n\"open\nstill open", "rlhf::reader", "f.csv"),
                    "rlhf::reader: f.csv:2: expected a closing '\"' for the quoted field of field 1, received end of file");
  CHECK_THROWS_WITH(parse_csv("a\nb,\"q\"x\n", "rlhf::reader", "f.csv"),
                    Catch::StartsWith("rlhf::reader: f.csv:2: expected ',' or a line end after a closing '\"' (field 2)") &&
                        Catch::EndsWith("received 'x'"));
  CHECK_THROWS_WITH(parse_csv("a\n\nb\"c\n", "rlhf::reader", "f.csv"),
                    Catch::StartsWith("rlhf::reader: f.csv:3: expected no '\"' inside an unquoted field"));
  // After a multi-line quoted field, later lines are still counted right.
  CHECK_THROWS_WITH(parse_csv("\"1\n2\n3\",x\nbad\"\n"), Catch::Contains("<text>:4:"));
  test::temp_dir dir("rlhf_csv");
  CHECK_THROWS_WITH(read_csv(dir / "none.csv"), Catch::Contains("rlhf::read_csv") && Catch::Contains("none.csv") &&
                                                    Catch::Contains("cannot open"));
  {
    std::ofstream out(dir / "bad.csv", std::ios::binary);
    out << "a,b\nc,\"d\n";
  }
  CHECK_THROWS_WITH(read_csv(dir / "bad.csv"), Catch::Contains((dir / "bad.csv").string() + ":2:"));
}

TEST_CASE("csv: property: parse(write(rows)) == rows over random fields", "[data][csv]") {
  std::mt19937 rng(5);
  const std::string alphabet = "ab ,\"\n\r\xC3\xA9";
  for (int trial = 0; trial < 200; ++trial) {
    rows_t rows;
    const std::size_t nrows = 1 + rng() % 6;
    for (std::size_t r = 0; r < nrows; ++r) {
      std::vector<std::string> row;
      const std::size_t nf = 1 + rng() % 4;
      for (std::size_t f = 0; f < nf; ++f) {
        std::string s;
        const std::size_t len = rng() % 6;
        for (std::size_t c = 0; c < len; ++c) s += alphabet[rng() % alphabet.size()];
        row.push_back(s);
      }
      rows.push_back(row);
    }
    CHECK(fields_of(parse_csv(to_csv(rows, "\n"))) == rows);
    CHECK(fields_of(parse_csv(to_csv(rows, "\r\n"))) == rows);
  }
}
