// The strict JSON reader and writer (rlhf/data/json.hpp): valid and invalid documents, escapes and
// UTF-8, numbers and exact big integers, duplicate keys, the depth limit, error positions, and
// parse(serialize(v)) == v over random documents.
#include "test_support.hpp"

#include <cstdint>
#include <limits>
#include <string>

#include "rlhf/data/json.hpp"

using namespace rlhf;

namespace {
// The message of the error parse_json throws for `text` (empty if it parses).
std::string parse_error(std::string_view text, const json_parse_options& o = {}) {
  try {
    (void)parse_json(text, o);
  } catch (const rlhf::invalid_argument& e) {
    return e.what();
  }
  return {};
}
}  // namespace

TEST_CASE("json: scalars and containers parse to the right kinds and values", "[data][json]") {
  CHECK(parse_json("null").is_null());
  CHECK(parse_json("true").as_bool() == true);
  CHECK(parse_json(" \t\r\nfalse \n").as_bool() == false);
  CHECK(parse_json("0").as_double() == 0.0);
  CHECK(parse_json("-12.5e1").as_double() == -125.0);
  CHECK(parse_json("1E-2").as_double() == 0.01);
  CHECK(parse_json("\"hi\"").as_string() == "hi");
  CHECK(parse_json("[]").as_array().empty());
  CHECK(parse_json("{}").as_object().empty());

  const auto v = parse_json(R"({"b": [1, 2.5, "x", null, true], "a": {"c": {}}, "z": -0})");
  REQUIRE(v.is_object());
  REQUIRE(v.size() == 3);
  // Members keep document order, not sorted order.
  CHECK(v.as_object()[0].first == "b");
  CHECK(v.as_object()[1].first == "a");
  CHECK(v.as_object()[2].first == "z");
  CHECK(v.at("b").size() == 5);
  CHECK(v.at("b").at(0).as_int64() == 1);
  CHECK(v.at("b").at(1).as_double() == 2.5);
  CHECK(v.at("b").at(2).as_string() == "x");
  CHECK(v.at("b").at(3).is_null());
  CHECK(v.at("b").at(4).as_bool());
  CHECK(v.at("a").at("c").is_object());
  CHECK(v.at("z").as_int64() == 0);
  CHECK(v.at("z").as_uint64() == 0);
  CHECK(v.find("missing") == nullptr);
  CHECK_THROWS_WITH(v.at("missing"), Catch::Contains("rlhf::json_value::at") && Catch::Contains("'missing'"));
  CHECK_THROWS_WITH(v.at("b").at(5), Catch::Contains("expected an index below 5, received 5"));
  CHECK_THROWS_WITH(v.at("b").as_string(), Catch::Contains("expected a string, received an array"));
  CHECK_THROWS_WITH(v.at("b").at(2).as_double(), Catch::Contains("expected a number, received a string"));
}

TEST_CASE("json: string escapes, \\u escapes and surrogate pairs decode to UTF-8", "[data][json]") {
  CHECK(parse_json(R"("a\"b\\c\/d\b\f\n\r\t")").as_string() == "a\"b\\c/d\b\f\n\r\t");
  CHECK(parse_json(R"("\u0041\u00e9\u20AC")").as_string() == "A\xC3\xA9\xE2\x82\xAC");  // A, e-acute, euro sign
  // U+1F600 is the pair D83D DE00 (RFC 8259 section 7): 0x10000 + (0x3D << 10) + 0x200 = 0x1F600.
  CHECK(parse_json(R"("\uD83D\uDE00")").as_string() == "\xF0\x9F\x98\x80");
  CHECK(parse_json(R"("\u0000")").as_string() == std::string(1, '\0'));
  // Raw UTF-8 passes through unchanged.
  CHECK(parse_json("\"\xE6\x97\xA5\xE6\x9C\xAC\"").as_string() == "\xE6\x97\xA5\xE6\x9C\xAC");

  CHECK_THROWS_WITH(parse_json(R"("\x")"), Catch::Contains("expected an escape character") && Catch::Contains("'x'"));
  CHECK_THROWS_WITH(parse_json(R"("\u12G4")"), Catch::Contains("4 hexadecimal digits") && Catch::Contains("'G'"));
  CHECK_THROWS_WITH(parse_json(R"("\uDE00")"), Catch::Contains("lone low surrogate"));
  CHECK_THROWS_WITH(parse_json(R"("\uD83D")"), Catch::Contains("low surrogate"));
  CHECK_THROWS_WITH(parse_json(R"("\uD83Dx")"), Catch::Contains("low surrogate"));
  CHECK_THROWS_WITH(parse_json(R"("\uD83D\u0041")"), Catch::Contains("a low surrogate"));
  CHECK_THROWS_WITH(parse_json("\"a\nb\""), Catch::Contains("control characters must be escaped") &&
                                                Catch::Contains("U+000A") && Catch::Contains("line 1, column 3"));
  CHECK_THROWS_WITH(parse_json("\"abc"), Catch::Contains("end of the string") && Catch::Contains("end of input"));
  // Malformed UTF-8: a lone continuation byte, an overlong '/', an encoded surrogate, beyond U+10FFFF, truncated.
  for (const char* bad : {"\"\x80\"", "\"\xC0\xAF\"", "\"\xED\xA0\x80\"", "\"\xF4\x90\x80\x80\"", "\"\xE6\x97\""}) {
    CAPTURE(bad);
    CHECK_THROWS_WITH(parse_json(bad), Catch::Contains("well-formed UTF-8"));
  }
}

TEST_CASE("json: numbers keep their literal text; big integers are exact", "[data][json]") {
  const auto big = parse_json("18446744073709551615");  // 2^64 - 1
  CHECK(big.is_integer());
  CHECK(big.as_uint64() == std::numeric_limits<std::uint64_t>::max());
  CHECK_THROWS_WITH(big.as_int64(), Catch::Contains("expected an integer in [-2^63, 2^63), received 18446744073709551615"));
  CHECK(big.number_text() == "18446744073709551615");
  CHECK(serialize_json(big) == "18446744073709551615");

  // 2^53 + 1 is not a double: the text keeps it exactly.
  const auto odd = parse_json("9007199254740993");
  CHECK(odd.as_int64() == 9007199254740993LL);
  CHECK(odd.as_double() == 9007199254740992.0);
  CHECK(parse_json("-9223372036854775808").as_int64() == std::numeric_limits<std::int64_t>::min());
  CHECK_THROWS_WITH(parse_json("-1").as_uint64(), Catch::Contains("expected an integer in [0, 2^64), received -1"));
  CHECK_THROWS_WITH(parse_json("18446744073709551616").as_uint64(), Catch::Contains("[0, 2^64)"));
  CHECK_THROWS_WITH(parse_json("1.0").as_int64(), Catch::Contains("received 1.0"));
  CHECK_THROWS_WITH(parse_json("1e3").as_int64(), Catch::Contains("received 1e3"));
  CHECK_FALSE(parse_json("1.0").is_integer());

  // Integers built in code keep exact text too.
  CHECK(serialize_json(json_value(std::numeric_limits<std::uint64_t>::max())) == "18446744073709551615");
  CHECK(json_value(std::int64_t{-5}).as_int64() == -5);
  // Doubles print as the shortest text that reads back exactly.
  CHECK(serialize_json(json_value(0.1)) == "0.1");
  CHECK(serialize_json(json_value(1e300)) == "1e+300");
  // Integral doubles stay floating-point for other readers, and -0.0 keeps its sign.
  CHECK(serialize_json(json_value(3.0)) == "3.0");
  CHECK(serialize_json(json_value(-0.0)) == "-0.0");
  CHECK(std::signbit(parse_json(serialize_json(json_value(-0.0))).as_double()));
  CHECK_FALSE(parse_json(serialize_json(json_value(3.0))).is_integer());
  CHECK(serialize_json(json_value(3)) == "3");
  CHECK(parse_json(serialize_json(json_value(0.1f))).as_double() == static_cast<double>(0.1f));
  CHECK_THROWS_WITH(serialize_json(json_value(std::nan(""))), Catch::Contains("rlhf::serialize_json") &&
                                                                   Catch::Contains("expected finite numbers"));
  CHECK_THROWS_WITH(serialize_json(json_value(std::numeric_limits<double>::infinity())),
                    Catch::Contains("expected finite numbers"));

  // Range: overflow is an error, underflow rounds to (signed) zero.
  CHECK_THROWS_WITH(parse_json("1e400"), Catch::Contains("within the range of a double") && Catch::Contains("1e400"));
  CHECK_THROWS_WITH(parse_json("[-123.4e307]"), Catch::Contains("within the range"));
  CHECK(parse_json("1e-400").as_double() == 0.0);
  CHECK(std::signbit(parse_json("-0.0001e-400").as_double()));
  CHECK(parse_json("0e999999999999").as_double() == 0.0);
  CHECK(parse_json("4.9e-324").as_double() > 0.0);  // the smallest subnormal is representable

  // Grammar: no leading zeros, '+', bare '.', missing digits, hex, NaN, Infinity.
  CHECK_THROWS_WITH(parse_json("01"), Catch::Contains("no leading zeros"));
  CHECK_THROWS_WITH(parse_json("-01"), Catch::Contains("no leading zeros"));
  CHECK_THROWS_WITH(parse_json("+1"), Catch::Contains("expected a JSON value, received '+'"));
  CHECK_THROWS_WITH(parse_json(".5"), Catch::Contains("expected a JSON value, received '.'"));
  CHECK_THROWS_WITH(parse_json("1."), Catch::Contains("a digit after '.'"));
  CHECK_THROWS_WITH(parse_json("1e"), Catch::Contains("a digit in the exponent"));
  CHECK_THROWS_WITH(parse_json("1e+"), Catch::Contains("a digit in the exponent"));
  CHECK_THROWS_WITH(parse_json("-"), Catch::Contains("expected a digit, received end of input"));
  CHECK_THROWS_WITH(parse_json("0x10"), Catch::Contains("end of input after the value") && Catch::Contains("'x'"));
  CHECK_THROWS_WITH(parse_json("NaN"), Catch::Contains("expected a JSON value, received 'N'"));
  CHECK_THROWS_WITH(parse_json("-Infinity"), Catch::Contains("expected a digit, received 'I'"));
}

TEST_CASE("json: invalid documents are rejected with line, column, expected and received", "[data][json]") {
  CHECK(parse_error(R"({"a": 1, "b": 2x})") ==
        "rlhf::parse_json: at line 1, column 16: expected ',' or '}', received 'x'");
  CHECK(parse_error("{\n  \"a\": 1,\n  \"b\" 2\n}") ==
        "rlhf::parse_json: at line 3, column 7: expected ':', received '2'");
  CHECK(parse_error("") == "rlhf::parse_json: at line 1, column 1: expected a JSON value, received end of input");
  CHECK(parse_error("   ") == "rlhf::parse_json: at line 1, column 4: expected a JSON value, received end of input");
  CHECK(parse_error("[1, 2") == "rlhf::parse_json: at line 1, column 6: expected ',' or ']', received end of input");
  CHECK(parse_error("[1,]") == "rlhf::parse_json: at line 1, column 4: expected a JSON value, received ']' (trailing comma)");
  CHECK(parse_error(R"({"a":1,})") ==
        "rlhf::parse_json: at line 1, column 8: expected '\"' (a member name), received '}' (trailing comma)");
  CHECK(parse_error("{'a': 1}") == "rlhf::parse_json: at line 1, column 2: expected '\"' (a member name), received '''");
  CHECK(parse_error("{\"a\" : 1} 2") ==
        "rlhf::parse_json: at line 1, column 11: expected end of input after the value, received '2'");
  CHECK(parse_error("tru") == "rlhf::parse_json: at line 1, column 4: expected 'true', received end of input");
  CHECK(parse_error("nul1") == "rlhf::parse_json: at line 1, column 4: expected 'null', received '1'");
  CHECK(parse_error("[1 2]") == "rlhf::parse_json: at line 1, column 4: expected ',' or ']', received '2'");
  CHECK(parse_error("// c\n1") == "rlhf::parse_json: at line 1, column 1: expected a JSON value, received '/'");
  CHECK(parse_error("\xEF\xBB\xBF{}") ==
        "rlhf::parse_json: at line 1, column 1: expected a JSON value, received a UTF-8 byte-order mark");
  CHECK(parse_error("[\x01]") == "rlhf::parse_json: at line 1, column 2: expected a JSON value, received U+0001");
  CHECK(parse_error("\v1") == "rlhf::parse_json: at line 1, column 1: expected a JSON value, received U+000B");
  CHECK(parse_error("[\xC3\xA9]") == "rlhf::parse_json: at line 1, column 2: expected a JSON value, received byte 0xC3");
  CHECK(parse_error(std::string_view("1\0", 2)) ==
        "rlhf::parse_json: at line 1, column 2: expected end of input after the value, received U+0000");
  // Every prefix of a valid document is invalid (and none crashes or reads past the end).
  const std::string doc = R"({"k": [1, -2.5e3, "\u00e9\n", {"t": true, "f": false, "n": null}]})";
  REQUIRE(parse_error(doc).empty());
  for (std::size_t n = 0; n < doc.size(); ++n) {
    CAPTURE(n);
    // A fresh copy of exactly n bytes so that ASan catches any read past the end.
    const std::string prefix(doc.substr(0, n));
    const std::unique_ptr<char[]> exact(new char[n + 1]);
    std::copy(prefix.begin(), prefix.end(), exact.get());
    CHECK_THAT(parse_error(std::string_view(exact.get(), n)), Catch::StartsWith("rlhf::parse_json: at line 1, column"));
  }
}

TEST_CASE("json: duplicate keys are rejected unless allowed (then the last wins)", "[data][json]") {
  CHECK(parse_error(R"({"a": 1, "b": 2, "a": 3})") ==
        "rlhf::parse_json: at line 1, column 18: expected a unique member name, received duplicate key 'a'");
  // Keys are compared after unescaping.
  CHECK_THAT(parse_error(R"({"a": 1, "\u0061": 2})"), Catch::Contains("duplicate key 'a'"));
  CHECK(parse_error(R"({"a": {"a": 1}, "b": {"a": 2}})").empty());  // same key in different objects is fine
  json_parse_options lax;
  lax.allow_duplicate_keys = true;
  const auto v = parse_json(R"({"a": 1, "b": 2, "a": 3})", lax);
  REQUIRE(v.size() == 2);
  CHECK(v.at("a").as_int64() == 3);
  CHECK(v.as_object()[0].first == "a");

  json_value o = json_value::object();
  o.as_object().emplace_back("x", 1);
  o.as_object().emplace_back("x", 2);
  CHECK_THROWS_WITH(serialize_json(o), Catch::Contains("rlhf::serialize_json") && Catch::Contains("duplicate key 'x'"));
}

TEST_CASE("json: nesting depth is limited", "[data][json]") {
  const auto nested = [](std::size_t depth, char open, char close) {
    return std::string(depth, open) + std::string(depth, close);
  };
  CHECK(parse_error(nested(256, '[', ']')).empty());
  CHECK(parse_error(nested(257, '[', ']')) ==
        "rlhf::parse_json: at line 1, column 257: expected nesting depth at most 256, received depth 257");
  json_parse_options shallow;
  shallow.max_depth = 2;
  CHECK(parse_error(R"({"a": [1]})", shallow).empty());
  CHECK(parse_error(R"({"a": [{}]})", shallow) ==
        "rlhf::parse_json: at line 1, column 8: expected nesting depth at most 2, received depth 3");
  // A very deep document fails cleanly instead of overflowing the stack.
  CHECK_THAT(parse_error(nested(1000000, '[', ']')), Catch::Contains("nesting depth at most 256"));
}

TEST_CASE("json: serialize writes compact or indented text and escapes what JSON requires", "[data][json]") {
  json_value v;
  v.set("name", "a\"b\\c\n\x01\xC3\xA9");
  v.set("n", 3);
  v.set("list", json_value::array().push_back(1.5).push_back(nullptr).push_back(false));
  v.set("empty", json_value::object());
  v.set("n", -7);  // replaces in place, keeping the position
  CHECK(serialize_json(v) ==
        R"({"name":"a\"b\\c\n\u0001)" "\xC3\xA9" R"(","n":-7,"list":[1.5,null,false],"empty":{}})");
  CHECK(serialize_json(v, 2) ==
        "{\n  \"name\": \"a\\\"b\\\\c\\n\\u0001\xC3\xA9\",\n  \"n\": -7,\n  \"list\": [\n    1.5,\n    null,\n"
        "    false\n  ],\n  \"empty\": {}\n}");
  CHECK(parse_json(serialize_json(v)) == v);
  CHECK(parse_json(serialize_json(v, 4)) == v);
  CHECK_THROWS_WITH(serialize_json(json_value("\xFF")), Catch::Contains("rlhf::serialize_json") &&
                                                            Catch::Contains("well-formed UTF-8"));
}

TEST_CASE("json: parse(serialize(v)) == v for random documents", "[data][json][property]") {
  auto g = rlhf::test::rng(71);
  std::uniform_int_distribution<int> pick(0, 7);
  std::uniform_int_distribution<int> len(0, 4);
  std::uniform_int_distribution<int> ch(0, 0x2FF);
  std::normal_distribution<double> num(0.0, 1e6);
  std::function<json_value(int)> make = [&](int depth) -> json_value {
    const int k = depth > 4 ? pick(g) % 5 : pick(g);
    switch (k) {
      case 0: return json_value(nullptr);
      case 1: return json_value(pick(g) % 2 == 0);
      case 2: return json_value(num(g));
      case 3: return json_value(static_cast<std::int64_t>(g()));
      case 4: {
        std::string s;
        for (int i = len(g); i > 0; --i) {
          const unsigned cp = static_cast<unsigned>(ch(g));
          if (cp < 0x80) {
            s += static_cast<char>(cp);
          } else {
            s += static_cast<char>(0xC0 | (cp >> 6));
            s += static_cast<char>(0x80 | (cp & 0x3F));
          }
        }
        return json_value(s);
      }
      case 5:
      case 6: {
        json_value a = json_value::array();
        for (int i = len(g); i > 0; --i) a.push_back(make(depth + 1));
        return a;
      }
      default: {
        json_value o = json_value::object();
        for (int i = len(g); i > 0; --i) o.set("k" + std::to_string(pick(g)), make(depth + 1));
        return o;
      }
    }
  };
  for (int trial = 0; trial < 300; ++trial) {
    const json_value v = make(0);
    const std::string text = serialize_json(v);
    CAPTURE(text);
    REQUIRE(parse_json(text) == v);
    REQUIRE(serialize_json(parse_json(text)) == text);
    REQUIRE(parse_json(serialize_json(v, 1)) == v);
  }
}

TEST_CASE("json: random edits of a valid document parse or are rejected with a positioned error",
          "[data][json][property]") {
  // Bytes overwritten (any value, or a character of JSON's syntax), inserted, erased or cut off: the parser
  // accepts the result or throws rlhf::invalid_argument with a line and column, nothing else (the ASan build
  // watches the reads; a longer run of such edits, 300,000 documents under ASan, found nothing else either).
  const std::string valid =
      R"({"user_id": "u-1", "n": [1, -2.5e3, 0.125, 18446744073709551615], "s": "x\u00e9\"y\\", )"
      R"("emoji": "\ud83d\ude00", "ok": true, "none": null, "nested": {"a": [[], {}], "b": "é"}})";
  REQUIRE_NOTHROW(parse_json(valid));
  const std::string syntax = "{}[]\",:0123456789eE+-.\\u \n";
  auto g = rlhf::test::rng(73);
  int parsed = 0, rejected = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    const std::string text = rlhf::test::randomly_edited(g, valid, 1 + trial % 4, syntax);
    try {
      (void)parse_json(text);
      ++parsed;
    } catch (const rlhf::invalid_argument& e) {
      ++rejected;
      REQUIRE_THAT(std::string(e.what()), Catch::StartsWith("rlhf::parse_json: ") && Catch::Contains("line "));
    }
  }
  CHECK(parsed > 0);
  CHECK(rejected > parsed);
}
