// Readers of real human preference data (rlhf/data/human_preferences.hpp): the FineGrainedRLHF K = 4
// comparisons and the ETHICS utilitarianism pairs. Synthetic files exercise the structure and every
// error; the real files in RLHF_SHARED_DATA_DIR/prefs (checked by sha256 first) are loaded and their
// counts compared with the data's README. When the directory is absent (a user's machine) those
// tests print a warning and pass without checking.
#include "test_support.hpp"

#include <array>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "rlhf/data/human_preferences.hpp"
#include "temp_files.hpp"

using namespace rlhf;

namespace {
void write_text(const std::filesystem::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
}

// SHA-256 (FIPS 180-4), to check a data file before trusting counts measured on it.
std::string sha256_hex(const std::string& data) {
  static constexpr std::uint32_t k[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
      0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
      0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
      0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
      0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
      0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
  std::uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::string m = data;
  const std::uint64_t bits = static_cast<std::uint64_t>(data.size()) * 8;
  m += static_cast<char>(0x80);
  while (m.size() % 64 != 56) m += '\0';
  for (int i = 7; i >= 0; --i) m += static_cast<char>((bits >> (8 * i)) & 0xFF);
  const auto rotr = [](std::uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  for (std::size_t off = 0; off < m.size(); off += 64) {
    std::uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = (std::uint32_t(static_cast<unsigned char>(m[off + 4 * i])) << 24) |
             (std::uint32_t(static_cast<unsigned char>(m[off + 4 * i + 1])) << 16) |
             (std::uint32_t(static_cast<unsigned char>(m[off + 4 * i + 2])) << 8) |
             std::uint32_t(static_cast<unsigned char>(m[off + 4 * i + 3]));
    for (int i = 16; i < 64; ++i) {
      const std::uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const std::uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    std::uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      const std::uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const std::uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (std::uint32_t v : h)
    for (int i = 7; i >= 0; --i) out += hex[(v >> (4 * i)) & 15];
  return out;
}

std::string file_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

#ifdef RLHF_SHARED_DATA_DIR
const std::filesystem::path shared_prefs = std::filesystem::path(RLHF_SHARED_DATA_DIR) / "prefs";
#else
const std::filesystem::path shared_prefs;
#endif

// The real file if present with the expected hash; otherwise a warning and an empty path.
std::filesystem::path real_file(const std::string& name, const std::string& expected_sha256) {
  const std::filesystem::path p = shared_prefs.empty() ? std::filesystem::path() : shared_prefs / name;
  if (p.empty() || !std::filesystem::exists(p)) {
    WARN("skipped: the real data file " << (p.empty() ? name + " (RLHF_SHARED_DATA_DIR not defined)" : p.string())
                                        << " is not available");
    return {};
  }
  INFO("checking the sha256 of " << p.string() << " (see the data README)");
  REQUIRE(sha256_hex(file_bytes(p)) == expected_sha256);
  return p;
}

// One FineGrainedRLHF element with the given labels.
std::string fg_element(const std::string& q, const std::string& pref) {
  return "{\"question\": \"" + q + "\", \"passages\": [[\"T\", \"s\"]], \"gold\": \"G\", \"prediction 1\": \"A1\", " +
         "\"prediction 2\": \"A2\", \"prediction 3\": \"A3\", \"prediction 4\": \"A4\", \"preference\": " + pref +
         ", \"feedback\": {\"errors\": [], \"missing-info\": [], \"corrected-prediction\": \"C\"}}";
}
}  // namespace

TEST_CASE("human_preferences: sha256 helper matches FIPS 180-4 test vectors", "[data][human_preferences]") {
  CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST_CASE("human_preferences: FineGrainedRLHF structure, pairs and derived ranking", "[data][human_preferences]") {
  test::temp_dir dir("rlhf_prefs");
  const auto p = dir / "fg.json";
  // Labels of the first element: 1v2 tie, 1v3 -> 1, 1v4 -> 4, 2v3 -> 2, 2v4 tie, 3v4 -> 4 (the first
  // question of the real file). Second element: a cycle 1 > 2 > 3 > 1 with 4 worst. Third: all ties.
  write_text(p, "[" + fg_element("Q1?", "[0, 1, 2, 1, 0, 2]") + ", " + fg_element("Q2?", "[1, 2, 1, 1, 1, 1]") +
                    ", " + fg_element("Q3?", "[0, 0, 0, 0, 0, 0]") + "]");
  const auto qs = read_fgrlhf_feedback(p);
  REQUIRE(qs.size() == 3);
  CHECK(qs[0].question == "Q1?");
  CHECK(qs[0].answers == std::array<std::string, 4>{"A1", "A2", "A3", "A4"});
  CHECK(qs[0].gold == "G");
  CHECK(qs[0].corrected == "C");
  CHECK(qs[0].preference[2] == pair_preference::second);
  CHECK(qs[0].preference[0] == pair_preference::tie);

  const auto pairs = fgrlhf_preference_pairs(qs);
  // Q1: 4 strict labels; Q2: 6; Q3: none.
  REQUIRE(pairs.size() == 10);
  CHECK(pairs[0] == preference_pair{"Q1?", "A1", "A3"});  // 1v3 -> 1
  CHECK(pairs[1] == preference_pair{"Q1?", "A4", "A1"});  // 1v4 -> 4
  CHECK(pairs[2] == preference_pair{"Q1?", "A2", "A3"});  // 2v3 -> 2
  CHECK(pairs[3] == preference_pair{"Q1?", "A4", "A3"});  // 3v4 -> 4
  CHECK(pairs[4] == preference_pair{"Q2?", "A1", "A2"});
  CHECK(pairs[5] == preference_pair{"Q2?", "A3", "A1"});  // 1v3 -> 3 (the cycle)

  // Q1 Copeland scores: A1 +1-1 = 0, A2 +1 = 1, A3 -3, A4 +2 -> dense ranks A4 0, A2 1, A1 2, A3 3.
  const auto r1 = fgrlhf_ranking(qs[0], "q1");
  REQUIRE(r1.has_value());
  CHECK(r1->prompt_id == "q1");
  CHECK(r1->responses == std::vector<std::string>{"A1", "A2", "A3", "A4"});
  CHECK(r1->ranks == std::vector<std::int64_t>{2, 1, 3, 0});
  CHECK(ranking_pairs(*r1).size() == 6);
  // Q2: A1 beats 2 and 4, loses to 3: +1; A2 beats 3, 4, loses to 1: +1; A3 beats 1, 4, loses to 2: +1;
  // A4 -3. The cycle ties A1..A3 at rank 0, A4 rank 1.
  const auto r2 = fgrlhf_ranking(qs[1], "q2");
  REQUIRE(r2.has_value());
  CHECK(r2->ranks == std::vector<std::int64_t>{0, 0, 0, 1});
  CHECK_FALSE(fgrlhf_ranking(qs[2], "q3").has_value());
}

TEST_CASE("human_preferences: FineGrainedRLHF errors name the file, element and field", "[data][human_preferences]") {
  test::temp_dir dir("rlhf_prefs");
  const auto p = dir / "fg.json";
  const std::string at = "rlhf::read_fgrlhf_feedback: " + p.string() + ": ";
  const auto err = [&](const std::string& text) {
    write_text(p, text);
    try {
      (void)read_fgrlhf_feedback(p);
    } catch (const rlhf::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(err("[" + fg_element("Q", "[1,1,1,1,1,1]") + "]").empty());
  CHECK_THAT(err("[\n" + fg_element("Q", "[1,1,1,1,1,1]") + ",\n]"), Catch::StartsWith(at + "invalid JSON at line 3, column 1"));
  CHECK_THAT(err("{}"), Catch::Equals(at + "expected a JSON array, received an object"));
  CHECK_THAT(err("[1]"), Catch::Equals(at + "element 0: expected an object, received the number 1"));
  CHECK_THAT(err("[" + fg_element("Q", "[1,1,1,1,1,1]") + ", " + fg_element("Q", "[1,1,1,5,1,1]") + "]"),
             Catch::Equals(at + "element 1: field 'preference[3]': expected 0, 1 or 2, received the number 5"));
  CHECK_THAT(err("[" + fg_element("Q", "[1,1,1,1,1]") + "]"),
             Catch::Contains("element 0: field 'preference': expected an array of 6 labels"));
  CHECK_THAT(err("[" + fg_element("Q", "[1,1,1,1,1,\"1\"]") + "]"),
             Catch::Contains("field 'preference[5]': expected 0, 1 or 2, received the string \"1\""));
  std::string no_pred = fg_element("Q", "[1,1,1,1,1,1]");
  no_pred.replace(no_pred.find("\"prediction 3\""), 14, "\"prediction 9\"");
  CHECK_THAT(err("[" + no_pred + "]"), Catch::Contains("element 0: field 'prediction 3': expected a member 'prediction 3'"));
  std::string bad_q = fg_element("Q", "[1,1,1,1,1,1]");
  bad_q.replace(bad_q.find("\"Q\""), 3, "null");
  CHECK_THAT(err("[" + bad_q + "]"), Catch::Contains("element 0: field 'question': expected a string, received null"));
  std::string no_fix = fg_element("Q", "[1,1,1,1,1,1]");
  no_fix.replace(no_fix.find("\"corrected-prediction\""), 22, "\"corrected\"");
  CHECK_THAT(err("[" + no_fix + "]"), Catch::Contains("field 'feedback.corrected-prediction'"));
  CHECK_THROWS_WITH(read_fgrlhf_feedback(dir / "none.json"), Catch::Contains("cannot open"));
}

TEST_CASE("human_preferences: ETHICS pairs, shared word prefix as the prompt", "[data][human_preferences]") {
  // The same-prefix rule on hand cases: the prompt is whole shared words, each response keeps a word.
  CHECK(shared_word_prefix_length("I cooked breakfast.", "I cooked breakfast.  I threw it up after.") == 8);
  CHECK(shared_word_prefix_length("I built a sandcastle with my nephew. We made one.", "I built a sandcastle with my nephew") == 28);
  CHECK(shared_word_prefix_length("I went home.", "You went home.") == 0);
  CHECK(shared_word_prefix_length("same text", "same text") == 4);
  CHECK(shared_word_prefix_length("a", "a") == 0);
  CHECK(shared_word_prefix_length("", "x y") == 0);
  CHECK(shared_word_prefix_length("go now  ", "go now") == 2);  // trailing blanks are not a word

  test::temp_dir dir("rlhf_prefs");
  const auto p = dir / "util.csv";
  write_text(p,
             "I cooked breakfast.  I ate it.,I cooked breakfast.\n"
             "\"I said \"\"hi, friend\"\" and smiled.\",\"I said \"\"go away\"\".\"\r\n"
             "\"A line\nwith a break\",B other");
  const auto pairs = read_ethics_pairs(p);
  REQUIRE(pairs.size() == 3);
  CHECK(pairs[0] == preference_pair{"I cooked", " breakfast.  I ate it.", " breakfast."});
  CHECK(pairs[1] == preference_pair{"I said", " \"hi, friend\" and smiled.", " \"go away\"."});
  CHECK(pairs[2] == preference_pair{"", "A line\nwith a break", "B other"});
  const auto plain = read_ethics_pairs(p, {ethics_prompt::empty});
  CHECK(plain[0] == preference_pair{"", "I cooked breakfast.  I ate it.", "I cooked breakfast."});

  write_text(p, "a b,a c\nonly one field\n");
  CHECK_THROWS_WITH(read_ethics_pairs(p),
                    "rlhf::read_ethics_pairs: " + p.string() +
                        ":2: expected 2 fields (the more pleasant scenario, then the other), received 1 fields");
  write_text(p, "a b,a c\n\nx,y,z\n");
  CHECK_THROWS_WITH(read_ethics_pairs(p), Catch::Contains(p.string() + ":3: expected 2 fields"));
  write_text(p, "a b,\" \"\n");
  CHECK_THROWS_WITH(read_ethics_pairs(p), Catch::Contains(p.string() + ":1: expected a non-empty scenario in field 2"));
  write_text(p, "a b,\"a c\n");
  CHECK_THROWS_WITH(read_ethics_pairs(p), Catch::StartsWith("rlhf::read_ethics_pairs: " + p.string() + ":1: expected a closing"));
}

TEST_CASE("human_preferences: the real FineGrainedRLHF file matches its README", "[data][human_preferences][real]") {
  const auto p = real_file("fgrlhf_feedback_train.json", "b299f15e8b47a778740d5faff960eb4393d6ecd23963a5c942afe3f81b3fdc1b");
  if (p.empty()) return;
  const auto qs = read_fgrlhf_feedback(p);
  // README: 399 questions, each with 4 answers and labels for all 6 pairs.
  REQUIRE(qs.size() == 399);
  std::set<std::string> questions;
  std::size_t ties = 0, rankable = 0;
  for (std::size_t i = 0; i < qs.size(); ++i) {
    const auto& q = qs[i];
    questions.insert(q.question);
    CHECK_FALSE(q.question.empty());
    for (const auto& a : q.answers) CHECK_FALSE(a.empty());
    CHECK_FALSE(q.gold.empty());
    for (auto l : q.preference) ties += l == pair_preference::tie;
    if (const auto r = fgrlhf_ranking(q, std::to_string(i))) {
      ++rankable;
      CHECK(r->responses.size() == 4);
    }
  }
  CHECK(questions.size() == 399);
  // Label counts measured independently (a Python scan of the same file): 1255 "first", 832
  // "second", 307 ties out of 399 x 6 = 2394; 11 questions are all ties.
  CHECK(ties == 307);
  CHECK(fgrlhf_preference_pairs(qs).size() == 2394 - 307);
  CHECK(rankable == 399 - 11);
  CHECK(qs[0].question == "When does bloom by troye sivan come out?");
  const std::array<pair_preference, 6> first_labels{pair_preference::tie, pair_preference::first, pair_preference::second,
                                                    pair_preference::first, pair_preference::tie, pair_preference::second};
  CHECK(qs[0].preference == first_labels);
}

TEST_CASE("human_preferences: the real ETHICS files match their README", "[data][human_preferences][real]") {
  struct expected_file {
    const char* name;
    const char* sha256;
    std::size_t pairs, with_prompt, with_comma;
  };
  // Counts from the README (13,738 / 4,808 pairs); pairs with a shared word prefix and pairs with a comma
  // inside a quoted field measured independently (Python's csv module on the same files).
  const expected_file files[] = {
      {"util_train.csv", "7a85de016925918dd2d20001657a1ba685be221488eb2ede67dd544e35a335a3", 13738, 13703, 3251},
      {"util_test.csv", "cd54a453d4db84179bef58fdb430a45d0823b512d0d7194c420ae0cba790fd50", 4808, 4099, 1303},
  };
  for (const auto& f : files) {
    const auto p = real_file(f.name, f.sha256);
    if (p.empty()) continue;
    const auto pairs = read_ethics_pairs(p);
    const auto whole = read_ethics_pairs(p, {ethics_prompt::empty});
    REQUIRE(pairs.size() == f.pairs);
    REQUIRE(whole.size() == f.pairs);
    std::size_t with_prompt = 0, with_comma = 0;
    for (std::size_t i = 0; i < pairs.size(); ++i) {
      with_prompt += !pairs[i].prompt.empty();
      // The prompt split loses nothing: prompt + response is the scenario, byte for byte.
      if (pairs[i].prompt + pairs[i].chosen != whole[i].chosen || pairs[i].prompt + pairs[i].rejected != whole[i].rejected)
        FAIL_CHECK("line " << i + 1 << ": prompt + response differs from the scenario");
      with_comma += (whole[i].chosen + whole[i].rejected).find(',') != std::string::npos;
      CHECK(whole[i].prompt.empty());
    }
    CHECK(with_prompt == f.with_prompt);
    CHECK(with_comma == f.with_comma);
  }
  if (const auto p = real_file("util_train.csv", files[0].sha256); !p.empty()) {
    const auto pairs = read_ethics_pairs(p);
    CHECK(pairs[0] == preference_pair{"I built a sandcastle with my", " nephew. We made one small castle.", " nephew"});
  }
}
