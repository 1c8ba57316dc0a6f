// The InstructGPT prompt rules (rlhf/data/prompt_split.hpp): the per-user cap (exactly N kept,
// deterministic, independent of input order), the user-disjoint split (disjoint, ratios within
// tolerance on 10k users, deterministic), the long-common-prefix deduplication (hand cases and the
// property that no two kept prompts share the prefix), and option validation.
#include "test_support.hpp"

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "rlhf/data/prompt_split.hpp"

using namespace rlhf;

namespace {
std::vector<std::string> ids_of(const std::vector<prompt_record>& v) {
  std::vector<std::string> out;
  for (const auto& p : v) out.push_back(p.id);
  return out;
}
std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}
}  // namespace

TEST_CASE("prompt_split: stable_hash is fixed across platforms and seed-dependent", "[data][prompt_split]") {
  // Pinned values: a change would silently change every split and cap made with the library.
  CHECK(stable_hash("", 0) == stable_hash("", 0));
  CHECK(stable_hash("user-1", 0) != stable_hash("user-1", 1));
  CHECK(stable_hash("user-1", 0) != stable_hash("user-2", 0));
  // FNV-1a of 8 zero bytes then "a", then the SplitMix64 finalizer, computed independently below.
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (int k = 0; k < 8; ++k) h = (h ^ 0u) * 0x100000001b3ULL;
  h = (h ^ static_cast<unsigned char>('a')) * 0x100000001b3ULL;
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
  h ^= h >> 31;
  CHECK(stable_hash("a", 0) == h);
}

TEST_CASE("prompt_split: the cap keeps exactly 200 of a user's 500, the same ones in any order", "[data][prompt_split]") {
  std::vector<prompt_record> prompts;
  for (int i = 0; i < 500; ++i) prompts.push_back({"big-" + std::to_string(i), "heavy", "text " + std::to_string(i)});
  for (int i = 0; i < 150; ++i) prompts.push_back({"small-" + std::to_string(i), "light", "t"});
  for (int i = 0; i < 200; ++i) prompts.push_back({"edge-" + std::to_string(i), "exact", "t"});
  prompt_cap_report rep;
  const auto kept = cap_prompts_per_user(prompts, 200, 0, &rep);
  CHECK(rep.input == 850);
  CHECK(rep.removed == 300);
  CHECK(rep.users_capped == 1);
  std::map<std::string, int> per_user;
  for (const auto& p : kept) ++per_user[p.user_id];
  CHECK(per_user["heavy"] == 200);
  CHECK(per_user["light"] == 150);
  CHECK(per_user["exact"] == 200);
  // Kept prompts stay in input order.
  std::vector<std::size_t> positions;
  for (const auto& p : kept)
    positions.push_back(static_cast<std::size_t>(
        std::find(prompts.begin(), prompts.end(), p) - prompts.begin()));
  CHECK(std::is_sorted(positions.begin(), positions.end()));
  // The kept set is exactly the 200 smallest hashes of the heavy user's ids.
  std::vector<std::pair<std::uint64_t, std::string>> hashes;
  for (int i = 0; i < 500; ++i) hashes.emplace_back(stable_hash("big-" + std::to_string(i), 0), "big-" + std::to_string(i));
  std::sort(hashes.begin(), hashes.end());
  std::set<std::string> expected;
  for (int i = 0; i < 200; ++i) expected.insert(hashes[static_cast<std::size_t>(i)].second);
  std::set<std::string> got;
  for (const auto& p : kept)
    if (p.user_id == "heavy") got.insert(p.id);
  CHECK(got == expected);
  // Independent of input order.
  std::mt19937 rng(3);
  for (int trial = 0; trial < 3; ++trial) {
    auto shuffled = prompts;
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    CHECK(sorted(ids_of(cap_prompts_per_user(shuffled, 200, 0))) == sorted(ids_of(kept)));
  }
  // Another seed chooses another subset, still 200.
  const auto other = cap_prompts_per_user(prompts, 200, 99);
  CHECK(other.size() == kept.size());
  CHECK(sorted(ids_of(other)) != sorted(ids_of(kept)));
  CHECK_THROWS_WITH(cap_prompts_per_user(prompts, 0),
                    Catch::Contains("rlhf::cap_prompts_per_user") && Catch::Contains("'max_per_user'"));
}

TEST_CASE("prompt_split: the split is disjoint by user with ratios within tolerance on 10k users", "[data][prompt_split]") {
  std::vector<prompt_record> prompts;
  std::mt19937 rng(11);
  for (int u = 0; u < 10000; ++u) {
    const int n = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < n; ++k)
      prompts.push_back({"p" + std::to_string(u) + "_" + std::to_string(k), "user" + std::to_string(u), "x"});
  }
  const prompt_split_options opt{0.7, 0.2, 0.1, 5};
  const prompt_split s = split_prompts_by_user(prompts, opt);
  CHECK(s.train.size() + s.validation.size() + s.test.size() == prompts.size());
  std::set<std::string> tr, va, te;
  for (const auto& p : s.train) tr.insert(p.user_id);
  for (const auto& p : s.validation) va.insert(p.user_id);
  for (const auto& p : s.test) te.insert(p.user_id);
  for (const auto& u : va) CHECK_FALSE(tr.count(u));
  for (const auto& u : te) CHECK_FALSE(tr.count(u));
  for (const auto& u : te) CHECK_FALSE(va.count(u));
  CHECK(tr.size() + va.size() + te.size() == 10000);
  // Binomial standard deviation of a fraction over 10k users is at most 0.005: 0.02 is 4 sigma.
  CHECK(std::abs(static_cast<double>(tr.size()) / 10000.0 - 0.7) < 0.02);
  CHECK(std::abs(static_cast<double>(va.size()) / 10000.0 - 0.2) < 0.02);
  CHECK(std::abs(static_cast<double>(te.size()) / 10000.0 - 0.1) < 0.02);
  // Each user's part is what user_split_part says, and the result ignores input order.
  for (const auto& p : s.validation) CHECK(user_split_part(p.user_id, opt) == split_part::validation);
  auto shuffled = prompts;
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  const prompt_split s2 = split_prompts_by_user(shuffled, opt);
  CHECK(sorted(ids_of(s2.train)) == sorted(ids_of(s.train)));
  CHECK(sorted(ids_of(s2.test)) == sorted(ids_of(s.test)));
  // Degenerate ratios: everything in one part.
  const prompt_split all_test = split_prompts_by_user(prompts, {0.0, 0.0, 1.0, 0});
  CHECK(all_test.test.size() == prompts.size());
  const prompt_split all_train = split_prompts_by_user(prompts, {1.0, 0.0, 0.0, 0});
  CHECK(all_train.train.size() == prompts.size());
}

TEST_CASE("prompt_split: ratios outside [0, 1] or not summing to 1 are rejected", "[data][prompt_split]") {
  const std::vector<prompt_record> p{{"a", "u", "t"}};
  CHECK_THROWS_WITH(split_prompts_by_user(p, {0.8, 0.1, 0.2, 0}),
                    Catch::Contains("rlhf::split_prompts_by_user: argument 'options': expected train_ratio + "
                                    "validation_ratio + test_ratio == 1, received a sum of 1.1"));
  CHECK_THROWS_WITH(split_prompts_by_user(p, {1.2, -0.1, -0.1, 0}),
                    Catch::Contains("'options.train_ratio'") && Catch::Contains("[0, 1]"));
  CHECK_THROWS_WITH(split_prompts_by_user(p, {0.5, -0.1, 0.6, 0}), Catch::Contains("'options.validation_ratio'"));
  CHECK_THROWS_WITH(split_prompts_by_user(p, {0.5, 0.5, std::nan(""), 0}), Catch::Contains("'options.test_ratio'"));
  CHECK_THROWS_WITH(user_split_part("u", {0.5, 0.1, 0.1, 0}), Catch::Contains("rlhf::user_split_part"));
  prompt_rules_options o;
  o.split.train_ratio = 0.9;
  CHECK_THROWS_WITH(apply_prompt_rules(p, o), Catch::Contains("rlhf::apply_prompt_rules") && Catch::Contains("'options'"));
}

TEST_CASE("prompt_split: prefix deduplication, hand cases", "[data][prompt_split]") {
  const std::vector<prompt_record> p{
      {"a", "u1", "Once upon a time there was a dragon"},
      {"b", "u2", "Once upon a time there was a princess"},  // same first 20 chars as a: removed
      {"c", "u1", "Once upon a"},                              // shorter than 20, distinct text: kept
      {"d", "u3", "Once upon a"},                              // identical short text: removed
      {"e", "u3", "Write a poem about the sea"},
      {"f", "u4", "Once upon a time, a dragon"},  // differs at char 17 (',' vs ' '): kept
  };
  prompt_dedup_report rep;
  const auto kept = dedup_prompt_prefixes(p, 20, &rep);
  CHECK(ids_of(kept) == std::vector<std::string>{"a", "c", "e", "f"});
  CHECK(rep.input == 6);
  CHECK(rep.removed == 2);
  // The earliest of a group survives: put "b" first and it is kept instead of "a".
  const std::vector<prompt_record> q{p[1], p[0]};
  CHECK(ids_of(dedup_prompt_prefixes(q, 20)) == std::vector<std::string>{"b"});
  // A longer prefix separates a and b: they share "Once upon a time there was a " (29 code points)
  // and differ at the 30th ('d' vs 'p').
  CHECK(ids_of(dedup_prompt_prefixes(std::vector<prompt_record>{p[0], p[1]}, 30)) == std::vector<std::string>{"a", "b"});
  CHECK(ids_of(dedup_prompt_prefixes(std::vector<prompt_record>{p[0], p[1]}, 29)) == std::vector<std::string>{"a"});
  // Code points, not bytes: "éé…" has 2-byte characters.
  CHECK(utf8_prefix("\xC3\xA9\xC3\xA9x", 2) == "\xC3\xA9\xC3\xA9");
  CHECK(utf8_prefix("ab", 5) == "ab");
  CHECK(utf8_prefix("\xF0\x9D\x84\x9Ez", 1) == "\xF0\x9D\x84\x9E");
  const std::vector<prompt_record> u{{"x", "u", "\xC3\xA9\xC3\xA9 one"}, {"y", "u", "\xC3\xA9\xC3\xA9 two"}};
  CHECK(dedup_prompt_prefixes(u, 3).size() == 1);  // 3 code points = 5 bytes shared
  CHECK(dedup_prompt_prefixes(u, 4).size() == 2);
  CHECK_THROWS_WITH(dedup_prompt_prefixes(p, 0),
                    Catch::Contains("rlhf::dedup_prompt_prefixes") && Catch::Contains("'prefix_chars'"));
}

TEST_CASE("prompt_split: property: no two kept prompts share the prefix; a removed one matches an earlier kept one",
          "[data][prompt_split]") {
  std::mt19937 rng(23);
  for (int trial = 0; trial < 20; ++trial) {
    // Small alphabet and short texts: many collisions.
    std::vector<prompt_record> p;
    const int n = 50 + static_cast<int>(rng() % 200);
    for (int i = 0; i < n; ++i) {
      std::string t;
      const std::size_t len = rng() % 8;
      for (std::size_t c = 0; c < len; ++c) t += static_cast<char>('a' + rng() % 3);
      p.push_back({"id" + std::to_string(i), "u", t});
    }
    const std::size_t L = 1 + rng() % 5;
    const auto kept = dedup_prompt_prefixes(p, L);
    std::set<std::string> prefixes;
    for (const auto& k : kept) CHECK(prefixes.insert(std::string(utf8_prefix(k.text, L))).second);
    // Naive oracle: scan in order, keep a prompt when no earlier kept prompt has its prefix.
    std::vector<std::string> naive;
    std::vector<std::string> kept_prefixes;
    for (const auto& q : p) {
      const std::string key(utf8_prefix(q.text, L));
      if (std::find(kept_prefixes.begin(), kept_prefixes.end(), key) == kept_prefixes.end()) {
        kept_prefixes.push_back(key);
        naive.push_back(q.id);
      }
    }
    CHECK(ids_of(kept) == naive);
  }
}

TEST_CASE("prompt_split: apply_prompt_rules dedups, caps, then splits, and reports each rule", "[data][prompt_split]") {
  std::vector<prompt_record> p;
  // User "heavy": 300 distinct prompts plus 50 repeats of its first prompt's prefix.
  for (int i = 0; i < 300; ++i) p.push_back({"h" + std::to_string(i), "heavy", "prompt number " + std::to_string(1000 + i)});
  for (int i = 0; i < 50; ++i) p.push_back({"r" + std::to_string(i), "heavy", "prompt number 1000 again " + std::to_string(i)});
  for (int u = 0; u < 100; ++u) p.push_back({"o" + std::to_string(u), "user" + std::to_string(u), "other " + std::to_string(u)});
  prompt_rules_options o;
  o.dedup_prefix_chars = 18;  // "prompt number 1000" is 18 characters
  prompt_rules_report rep;
  const prompt_split s = apply_prompt_rules(p, o, &rep);
  CHECK(rep.input == 450);
  CHECK(rep.removed_by_prefix == 50);
  CHECK(rep.removed_by_cap == 100);
  CHECK(rep.users_capped == 1);
  CHECK(rep.train + rep.validation + rep.test == 300);
  CHECK(rep.train == s.train.size());
  CHECK(rep.validation == s.validation.size());
  CHECK(rep.test == s.test.size());
  // Turning the rules off keeps everything.
  o.dedup_prefix_chars = 0;
  o.max_prompts_per_user = 0;
  const prompt_split all = apply_prompt_rules(p, o, &rep);
  CHECK(all.train.size() + all.validation.size() + all.test.size() == 450);
  CHECK(rep.removed_by_prefix == 0);
  CHECK(rep.removed_by_cap == 0);
}
