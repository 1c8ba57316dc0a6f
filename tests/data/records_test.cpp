// The pipeline's records (rlhf/data/records.hpp): round trips of prompts, demonstrations and
// rankings; every error path with file:line:field in the message; the expansion of a ranking into
// its comparison pairs (C(K,2) without ties, tied pairs skipped).
#include "test_support.hpp"

#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "rlhf/data/records.hpp"
#include "temp_files.hpp"

using namespace rlhf;

namespace {
void write_text(const std::filesystem::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
}

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

TEST_CASE("records: prompts, demonstrations and rankings round-trip through JSONL", "[data][records]") {
  test::temp_dir dir("rlhf_records");
  const std::vector<prompt_record> prompts{
      {"p1", "u1", "Write a story about a dragon."},
      {"p2", "u1", "Line one\nline two, \"quoted\", tab\t, unicode: é ✓ 𝄞"},
      {"17", "u2", ""},
  };
  write_prompts(dir / "prompts.jsonl", prompts);
  CHECK(read_prompts(dir / "prompts.jsonl") == prompts);

  const std::vector<demonstration_record> demos{{"p1", "Once upon a time..."}, {"17", ""}};
  write_demonstrations(dir / "demos.jsonl", demos);
  CHECK(read_demonstrations(dir / "demos.jsonl") == demos);

  const std::vector<ranking_record> rankings{
      {"p1", {"A", "B", "C", "D"}, {1, 0, 2, 1}},
      {"p2", {"x", "y"}, {0, 1}},
      {"17", {"a", "b", "c", "d", "e", "f", "g", "h", "i"}, {8, 7, 6, 5, 4, 3, 2, 1, 0}},
  };
  write_rankings(dir / "rankings.jsonl", rankings);
  CHECK(read_rankings(dir / "rankings.jsonl") == rankings);
  CHECK(dir.count() == 3);
}

TEST_CASE("records: integer ids read as their decimal text; extra members are ignored", "[data][records]") {
  test::temp_dir dir("rlhf_records");
  const auto p = dir / "prompts.jsonl";
  write_text(p, "{\"id\": 5, \"user_id\": -3, \"text\": \"hi\", \"source\": \"api\"}\r\n\r\n{\"id\": \"6\", \"user_id\": \"u\", \"text\": \"yo\"}");
  const auto got = read_prompts(p);
  REQUIRE(got.size() == 2);
  CHECK(got[0] == prompt_record{"5", "-3", "hi"});
  CHECK(got[1] == prompt_record{"6", "u", "yo"});
  // 5 and "5" are the same id.
  write_text(p, "{\"id\": 5, \"user_id\": 1, \"text\": \"a\"}\n{\"id\": \"5\", \"user_id\": 1, \"text\": \"b\"}\n");
  CHECK_THROWS_WITH(read_prompts(p), Catch::Contains(":2: field 'id': expected a unique id, received '5' again (first seen at line 1)"));
}

TEST_CASE("records: every loader error names function, file:line and field", "[data][records]") {
  test::temp_dir dir("rlhf_records");
  const auto p = dir / "f.jsonl";
  const std::string at = p.string() + ":";
  const auto prompts_error = [&](const std::string& text) {
    write_text(p, text);
    return error_of([&] { (void)read_prompts(p); });
  };
  const std::string ok = "{\"id\": \"a\", \"user_id\": \"u\", \"text\": \"t\"}\n";
  // Bad JSON on line 2.
  CHECK_THAT(prompts_error(ok + "{\"id\": \"b\",}\n"), Catch::StartsWith("rlhf::read_prompts: " + at + "2: invalid JSON"));
  // Missing field, wrong types, null user id.
  CHECK_THAT(prompts_error(ok + "\n{\"id\": \"b\", \"text\": \"t\"}\n"),
             Catch::Equals("rlhf::read_prompts: " + at + "3: field 'user_id': expected a member 'user_id', received an object without it"));
  CHECK_THAT(prompts_error("{\"id\": \"b\", \"user_id\": null, \"text\": \"t\"}"),
             Catch::Equals("rlhf::read_prompts: " + at + "1: field 'user_id': expected a string or integer, received null"));
  CHECK_THAT(prompts_error("{\"id\": \"b\", \"user_id\": \"u\", \"text\": 3}"),
             Catch::Contains(at + "1: field 'text': expected a string, received the number 3"));
  CHECK_THAT(prompts_error("{\"id\": [1], \"user_id\": \"u\", \"text\": \"t\"}"),
             Catch::Contains(at + "1: field 'id': expected a string or integer, received an array of 1 elements"));
  CHECK_THAT(prompts_error("[\"a\", \"u\", \"t\"]"), Catch::Contains(at + "1: expected a JSON object, received an array"));
  // Duplicate id.
  CHECK_THAT(prompts_error(ok + ok), Catch::Contains(at + "2: field 'id': expected a unique id, received 'a' again (first seen at line 1)"));

  const auto demos_error = [&](const std::string& text) {
    write_text(p, text);
    return error_of([&] { (void)read_demonstrations(p); });
  };
  CHECK_THAT(demos_error("{\"prompt_id\": \"a\"}"),
             Catch::StartsWith("rlhf::read_demonstrations: " + at + "1: field 'response': expected a member 'response'"));
  CHECK_THAT(demos_error("{\"prompt_id\": \"a\", \"response\": false}"),
             Catch::Contains(at + "1: field 'response': expected a string, received false"));
  CHECK_THAT(demos_error("{\"prompt_id\": \"a\", \"response\": \"x\"}\n{\"prompt_id\": \"a\", \"response\": \"y\"}"),
             Catch::Contains(at + "2: field 'prompt_id': expected a unique id"));

  const auto rank_error = [&](const std::string& text) {
    write_text(p, text);
    return error_of([&] { (void)read_rankings(p); });
  };
  const std::string good = "{\"prompt_id\": \"a\", \"responses\": [\"x\", \"y\"], \"ranks\": [0, 1]}\n";
  CHECK(rank_error(good).empty());
  // K < 2.
  CHECK_THAT(rank_error(good + "{\"prompt_id\": \"b\", \"responses\": [\"x\"], \"ranks\": [0]}"),
             Catch::Equals("rlhf::read_rankings: " + at +
                           "2: field 'responses': expected at least 2 responses (a ranking compares K >= 2 responses), received 1 response"));
  CHECK_THAT(rank_error("{\"prompt_id\": \"b\", \"responses\": [], \"ranks\": []}"),
             Catch::Contains(at + "1: field 'responses': expected at least 2 responses") && Catch::Contains("received 0 responses"));
  // ranks.size() != responses.size().
  CHECK_THAT(rank_error("{\"prompt_id\": \"b\", \"responses\": [\"x\", \"y\", \"z\"], \"ranks\": [0, 1]}"),
             Catch::Contains(at + "1: field 'ranks': expected 3 ranks (one per response), received 2 ranks"));
  // Negative, fractional, non-numeric ranks.
  CHECK_THAT(rank_error("{\"prompt_id\": \"b\", \"responses\": [\"x\", \"y\"], \"ranks\": [0, -2]}"),
             Catch::Contains(at + "1: field 'ranks[1]': expected a non-negative integer, received the number -2"));
  CHECK_THAT(rank_error("{\"prompt_id\": \"b\", \"responses\": [\"x\", \"y\"], \"ranks\": [0.5, 1]}"),
             Catch::Contains(at + "1: field 'ranks[0]': expected a non-negative integer, received the number 0.5"));
  CHECK_THAT(rank_error("{\"prompt_id\": \"b\", \"responses\": [\"x\", \"y\"], \"ranks\": \"01\"}"),
             Catch::Contains(at + "1: field 'ranks': expected an array of non-negative integers"));
  // All tied: no comparison.
  CHECK_THAT(rank_error("{\"prompt_id\": \"b\", \"responses\": [\"x\", \"y\", \"z\"], \"ranks\": [1, 1, 1]}"),
             Catch::Contains(at + "1: field 'ranks': expected at least two different ranks"));
  // Wrong response type, missing field.
  CHECK_THAT(rank_error("{\"prompt_id\": \"b\", \"responses\": [\"x\", null], \"ranks\": [0, 1]}"),
             Catch::Contains(at + "1: field 'responses[1]': expected a string, received null"));
  CHECK_THAT(rank_error("{\"prompt_id\": \"b\", \"ranks\": [0, 1]}"),
             Catch::Contains(at + "1: field 'responses': expected a member 'responses'"));
  // Duplicate prompt id.
  CHECK_THAT(rank_error(good + "\n" + good), Catch::Contains(at + "3: field 'prompt_id': expected a unique id, received 'a' again (first seen at line 1)"));
}

TEST_CASE("records: writers validate before touching the file", "[data][records]") {
  test::temp_dir dir("rlhf_records");
  const auto p = dir / "r.jsonl";
  const std::vector<ranking_record> good{{"a", {"x", "y"}, {0, 1}}};
  write_rankings(p, good);
  CHECK_THROWS_WITH(write_rankings(p, std::vector<ranking_record>{{"a", {"x"}, {0}}}),
                    Catch::StartsWith("rlhf::write_rankings: " + p.string() + ": record 1: field 'responses'"));
  CHECK_THROWS_WITH(write_rankings(p, std::vector<ranking_record>{{"a", {"x", "y"}, {0}}}),
                    Catch::Contains("record 1: field 'ranks': expected 2 ranks"));
  CHECK_THROWS_WITH(write_rankings(p, std::vector<ranking_record>{{"a", {"x", "y"}, {0, 1}}, {"a", {"x", "y"}, {1, 0}}}),
                    Catch::Contains("record 2: field 'prompt_id': expected a unique id, received 'a' again (first in record 1)"));
  CHECK_THROWS_WITH(write_prompts(dir / "p.jsonl", std::vector<prompt_record>{{"", "u", "t"}}),
                    Catch::Contains("rlhf::write_prompts") && Catch::Contains("record 1: field 'id'"));
  CHECK_THROWS_WITH(write_prompts(dir / "p.jsonl", std::vector<prompt_record>{{"a", "", "t"}}),
                    Catch::Contains("record 1: field 'user_id'"));
  CHECK_THROWS_WITH(write_prompts(dir / "p.jsonl", std::vector<prompt_record>{{"a", "u", "\xFF"}}),
                    Catch::Contains("rlhf::write_prompts") && Catch::Contains("record 1"));
  CHECK_THROWS_WITH(write_demonstrations(dir / "d.jsonl", std::vector<demonstration_record>{{"a", "x"}, {"a", "y"}}),
                    Catch::Contains("rlhf::write_demonstrations") && Catch::Contains("record 2: field 'prompt_id'"));
  CHECK(read_rankings(p) == good);  // untouched
  CHECK(dir.entries() == std::vector<std::string>{"r.jsonl"});
}

TEST_CASE("records: ranking_pairs gives C(K,2) pairs without ties and skips tied pairs", "[data][records]") {
  // K = 4, ranks {1, 0, 2, 1}: response 1 is best, 0 and 3 tie, 2 is worst.
  // Pairs in (i, j) order: (0,1) -> 1 beats 0; (0,2) -> 0 beats 2; (0,3) tie, skipped;
  // (1,2) -> 1 beats 2; (1,3) -> 1 beats 3; (2,3) -> 3 beats 2. Five of the six.
  const ranking_record r{"p", {"A", "B", "C", "D"}, {1, 0, 2, 1}};
  const std::vector<comparison_pair> expected{{1, 0}, {0, 2}, {1, 2}, {1, 3}, {3, 2}};
  CHECK(ranking_pairs(r) == expected);

  // No ties: all C(K,2) pairs, each oriented toward the smaller rank.
  std::mt19937 rng(7);
  for (std::size_t k = 2; k <= 9; ++k) {
    ranking_record s{"p", std::vector<std::string>(k, "x"), {}};
    for (std::size_t i = 0; i < k; ++i) s.ranks.push_back(static_cast<std::int64_t>(i));
    std::shuffle(s.ranks.begin(), s.ranks.end(), rng);
    const auto pairs = ranking_pairs(s);
    CHECK(pairs.size() == k * (k - 1) / 2);
    for (const auto& q : pairs) CHECK(s.ranks[q.winner] < s.ranks[q.loser]);
  }
  // Random ties: count equals the number of (i < j) with different ranks.
  for (int trial = 0; trial < 50; ++trial) {
    const std::size_t k = 2 + static_cast<std::size_t>(rng() % 8);
    ranking_record s{"p", std::vector<std::string>(k, "x"), {}};
    for (std::size_t i = 0; i < k; ++i) s.ranks.push_back(static_cast<std::int64_t>(rng() % 3));
    s.ranks[0] = 0;
    s.ranks[1] = 1;
    std::size_t strict = 0;
    for (std::size_t i = 0; i < k; ++i)
      for (std::size_t j = i + 1; j < k; ++j) strict += s.ranks[i] != s.ranks[j];
    const auto pairs = ranking_pairs(s);
    CHECK(pairs.size() == strict);
    for (const auto& q : pairs) CHECK(s.ranks[q.winner] < s.ranks[q.loser]);
  }
  // Invalid rankings are rejected.
  CHECK_THROWS_WITH(ranking_pairs(ranking_record{"p", {"x"}, {0}}),
                    Catch::Contains("rlhf::ranking_pairs") && Catch::Contains("'ranking.responses'"));
  CHECK_THROWS_WITH(ranking_pairs(ranking_record{"p", {"x", "y"}, {0, 0}}),
                    Catch::Contains("rlhf::ranking_pairs") && Catch::Contains("'ranking.ranks'"));
  CHECK_THROWS_WITH(ranking_pairs(ranking_record{"p", {"x", "y"}, {0, -1}}),
                    Catch::Contains("'ranking.ranks[1]'"));
}

TEST_CASE("records: random edits of a valid rankings file load or are rejected naming file:line",
          "[data][records][property]") {
  // As the JSON parser's property test, one level up: bytes overwritten, inserted, erased or cut off in a valid
  // rankings file; read_rankings returns records that keep the ranking rules, or throws rlhf::invalid_argument
  // naming itself and the file.
  test::temp_dir dir("rlhf_records");
  const auto p = dir / "rankings.jsonl";
  write_rankings(p, std::vector<ranking_record>{{"p1", {"A", "B", "C", "D"}, {1, 0, 2, 1}},
                                                {"p2", {"x", "y", "z", "w"}, {0, 1, 2, 3}}});
  std::ifstream in(p, std::ios::binary);
  const std::string valid{std::istreambuf_iterator<char>(in), {}};
  const std::string syntax = "{}[]\",:0123456789 \n";
  auto g = rlhf::test::rng(74);
  int loaded = 0, rejected = 0;
  for (int trial = 0; trial < 600; ++trial) {
    write_text(p, rlhf::test::randomly_edited(g, valid, 1 + trial % 3, syntax));
    try {
      for (const auto& r : read_rankings(p)) {
        REQUIRE(r.responses.size() >= 2);
        REQUIRE(r.ranks.size() == r.responses.size());
      }
      ++loaded;
    } catch (const rlhf::invalid_argument& e) {
      ++rejected;
      REQUIRE_THAT(std::string(e.what()), Catch::StartsWith("rlhf::read_rankings: " + p.string() + ":"));
    }
  }
  CHECK(loaded > 0);
  CHECK(rejected > loaded);
}
