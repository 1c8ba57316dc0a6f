// JSON Lines (rlhf/data/jsonl.hpp) and the atomic writer it uses (rlhf/data/atomic_write.hpp): line
// handling (CRLF, blank lines, no final newline, BOM), line numbers in every error, the checked
// field accessors, round trips, and atomic replacement.
#include "test_support.hpp"

#include <fstream>
#include <string>
#include <vector>

#include "rlhf/data/jsonl.hpp"
#include "temp_files.hpp"

using namespace rlhf;

namespace {
void write_text(const std::filesystem::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
}

std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The message thrown by `f`, or "" if nothing is thrown.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const rlhf::invalid_argument& e) {
    return e.what();
  }
  return {};
}
}  // namespace

TEST_CASE("jsonl: LF, CRLF, blank lines, a last line without newline and a BOM are all read", "[data][jsonl]") {
  test::temp_dir dir("rlhf_jsonl");
  const auto p = dir / "a.jsonl";
  // Lines: 1 BOM + {"a":1}, 2 blank, 3 CRLF line, 4 spaces only, 5 a tab and CR, 6 last without '\n'.
  write_text(p, "\xEF\xBB\xBF{\"a\":1}\n\n[2, 3]\r\n   \n\t\r\n\"last\"");
  const auto entries = read_jsonl(p);
  REQUIRE(entries.size() == 3);
  CHECK(entries[0].line == 1);
  CHECK(entries[0].value.at("a").as_int64() == 1);
  CHECK(entries[1].line == 3);
  CHECK(entries[1].value.size() == 2);
  CHECK(entries[2].line == 6);
  CHECK(entries[2].value.as_string() == "last");

  write_text(p, "");
  CHECK(read_jsonl(p).empty());
  write_text(p, "\n\n\r\n");
  CHECK(read_jsonl(p).empty());
}

TEST_CASE("jsonl: invalid JSON names function, file, line and column", "[data][jsonl]") {
  test::temp_dir dir("rlhf_jsonl");
  const auto p = dir / "bad.jsonl";
  write_text(p, "{\"a\": 1}\n\n{\"a\": 1 x}\n");
  const std::string msg = error_of([&] { (void)read_jsonl(p, "rlhf::my_reader"); });
  CHECK_THAT(msg, Catch::StartsWith("rlhf::my_reader: " + p.string() + ":3: invalid JSON at column 9"));
  CHECK_THAT(msg, Catch::Contains("expected ',' or '}'") && Catch::Contains("received 'x'"));

  // Two values on one line, a trailing comma, invalid UTF-8 inside a string: all rejected at their line.
  write_text(p, "1\n2 3\n");
  CHECK_THAT(error_of([&] { (void)read_jsonl(p); }), Catch::Contains(p.string() + ":2: invalid JSON"));
  write_text(p, "[1,]\n");
  CHECK_THAT(error_of([&] { (void)read_jsonl(p); }), Catch::Contains(p.string() + ":1: invalid JSON"));
  write_text(p, "\"ok\"\n\"\xC3\x28\"\n");
  CHECK_THAT(error_of([&] { (void)read_jsonl(p); }), Catch::Contains(p.string() + ":2: invalid JSON"));
  // A BOM is tolerated only at the start of the file.
  write_text(p, "1\n\xEF\xBB\xBF" "2\n");
  CHECK_THAT(error_of([&] { (void)read_jsonl(p); }), Catch::Contains(p.string() + ":2: invalid JSON"));

  const auto missing = dir / "missing.jsonl";
  CHECK_THROWS_WITH(read_jsonl(missing), Catch::Contains("rlhf::read_jsonl") && Catch::Contains("missing.jsonl") &&
                                             Catch::Contains("cannot open"));
}

TEST_CASE("jsonl: checked field accessors name file:line:field, expected and received", "[data][jsonl]") {
  const std::filesystem::path p = "data/prompts.jsonl";
  const json_value v = parse_json(
      R"({"s": "x", "n": null, "i": 17, "f": 1.5, "big": 9223372036854775808, "e": "", "arr": ["a", 2], "r": [0, -1], "rf": [0, 1.0], "obj": {}})");
  const jsonl_record r("rlhf::read_prompts", p, 17, v);
  CHECK(r.where() == "rlhf::read_prompts: data/prompts.jsonl:17: ");
  CHECK(r.string_field("s") == "x");
  CHECK(r.id_field("s") == "x");
  CHECK(r.id_field("i") == "17");
  CHECK_THROWS_WITH(r.id_field("n"), "rlhf::read_prompts: data/prompts.jsonl:17: field 'n': expected a string or "
                                     "integer, received null");
  CHECK_THROWS_WITH(r.id_field("f"), Catch::Contains(":17: field 'f': expected a string or integer, received the number 1.5"));
  CHECK_THROWS_WITH(r.id_field("big"), Catch::Contains("field 'big'") && Catch::Contains("9223372036854775808"));
  CHECK_THROWS_WITH(r.id_field("e"), Catch::Contains("field 'e': expected a non-empty string or integer"));
  CHECK_THROWS_WITH(r.string_field("i"), Catch::Contains("field 'i': expected a string, received the number 17"));
  CHECK_THROWS_WITH(r.string_field("missing"),
                    Catch::Contains(":17: field 'missing': expected a member 'missing', received an object without it"));
  CHECK_THROWS_WITH(r.string_array_field("arr"),
                    Catch::Contains("field 'arr[1]': expected a string, received the number 2"));
  CHECK_THROWS_WITH(r.string_array_field("obj"), Catch::Contains("field 'obj': expected an array of strings, received an object"));
  CHECK_THROWS_WITH(r.non_negative_integer_array_field("r"),
                    Catch::Contains("field 'r[1]': expected a non-negative integer, received the number -1"));
  CHECK_THROWS_WITH(r.non_negative_integer_array_field("rf"),
                    Catch::Contains("field 'rf[1]': expected a non-negative integer, received the number 1.0"));
  // Long strings are cut in a message, at a code point boundary.
  const json_value long_value = parse_json("{\"t\": \"" + std::string(39, 'a') + "\xC3\xA9" + std::string(20, 'b') + "\"}");
  const jsonl_record lr("f", p, 2, long_value);
  CHECK_THROWS_WITH(lr.string_array_field("t"),
                    Catch::Contains("expected an array of strings, received the string \"" + std::string(39, 'a') + "\"..."));
  // A line that is not an object.
  const json_value arr = parse_json("[1]");
  const jsonl_record ar("rlhf::read_prompts", p, 4, arr);
  CHECK_THROWS_WITH(ar.string_field("id"),
                    "rlhf::read_prompts: data/prompts.jsonl:4: expected a JSON object, received an array of 1 elements");
}

TEST_CASE("jsonl: write_jsonl round-trips values, one compact line each", "[data][jsonl]") {
  test::temp_dir dir("rlhf_jsonl");
  const auto p = dir / "out.jsonl";
  std::vector<json_value> values;
  values.push_back(parse_json(R"({"text": "two\nlines", "u": "é ✓ 𝄞", "n": 18446744073709551615})"));
  values.push_back(json_value(nullptr));
  values.push_back(parse_json("[1, 2.5, \"x\"]"));
  write_jsonl(p, values);
  const std::string text = read_text(p);
  CHECK(std::count(text.begin(), text.end(), '\n') == 3);
  CHECK(text.back() == '\n');
  const auto back = read_jsonl(p);
  REQUIRE(back.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(back[i].line == i + 1);
    CHECK(back[i].value == values[i]);
  }
  CHECK(back[0].value.at("n").as_uint64() == 18446744073709551615ULL);
  CHECK(dir.count() == 1);  // no temporary file left behind

  // An unwritable value (NaN) is rejected before the file is touched; the old content stays.
  std::vector<json_value> bad{json_value(1), json_value(std::nan(""))};
  CHECK_THROWS_WITH(write_jsonl(p, bad, "rlhf::write_prompts"),
                    Catch::StartsWith("rlhf::write_prompts: " + p.string() + ": record 2:"));
  CHECK(read_jsonl(p).size() == 3);
  CHECK(dir.count() == 1);
}

TEST_CASE("atomic_write: replaces content, leaves no temporary file, reports I/O errors", "[data][jsonl]") {
  test::temp_dir dir("rlhf_atomic");
  const auto p = dir / "f.txt";
  detail::write_file_atomically("rlhf::test_writer", p, "first");
  CHECK(read_text(p) == "first");
  detail::write_file_atomically("rlhf::test_writer", p, "second, longer content");
  CHECK(read_text(p) == "second, longer content");
  detail::write_file_atomically("rlhf::test_writer", p, "");
  CHECK(read_text(p).empty());
  CHECK(dir.entries() == std::vector<std::string>{"f.txt"});
  // A missing directory: the error names the writer, the file and the failing step.
  const auto q = dir / "no_such_dir" / "g.txt";
  CHECK_THROWS_WITH(detail::write_file_atomically("rlhf::test_writer", q, "x"),
                    Catch::StartsWith("rlhf::test_writer: " + q.string() + ": cannot create the temporary file"));
  CHECK(dir.count() == 1);
}
