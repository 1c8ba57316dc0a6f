// The demo's prompts: story openings written by synthetic users, put through the paper's prompt rules
// (at most 200 prompts per user, prefix deduplication, train / validation / test split by user).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "rlhf/data/prompt_split.hpp"
#include "rlhf/data/records.hpp"
#include "rlhf/rlhf.hpp"

namespace demo {

using prompt_record = rlhf::prompt_record;
using demonstration_record = rlhf::demonstration_record;
using ranking_record = rlhf::ranking_record;

struct prompt_sets {
  std::size_t generated = 0, kept = 0, removed_by_prefix = 0, removed_by_cap = 0;
  std::vector<prompt_record> train, validation, test;
};

// Story openings: a setting, a name, an unfinished sentence. The name comes early, so openings share
// at most a short prefix unless they are the same story. Their base sentiment under stories260K varies
// (some lean sad), which leaves the policy room to improve.
inline std::vector<std::string> openings(const std::string& name, const std::string& friend_name) {
  static const char* settings[] = {"",          "One day, ",        "After school, ", "In the morning, ",
                                   "At night, ", "On a sunny day, ", "Yesterday, ",    "At the beach, "};
  static const char* endings[] = {" saw a", " went to the", " found a", " and FRIEND wanted to", " was sad because",
                                  " looked at the big", " had a little", " and FRIEND went to", " heard a loud",
                                  " cried when", " wanted to play with", " did not like the"};
  std::vector<std::string> out;
  for (const char* setting : settings) {
    for (std::string ending : endings) {
      const auto at = ending.find("FRIEND");
      if (at != std::string::npos) ending.replace(at, 6, friend_name);
      out.push_back(setting + name + ending);
    }
  }
  return out;
}

// `users` synthetic users; user 0 writes far more than 200 prompts (the cap applies), the others a few
// each. Writes prompts.jsonl in `out`, reads it back, applies the rules and returns the splits.
inline prompt_sets make_prompt_sets(std::size_t users, std::uint64_t seed, const std::string& out) {
  static const char* names[] = {"Tom",  "Lily", "Sue",  "Ben",  "Mia",  "Max",   "Anna", "Sam",  "Lucy", "Tim",
                                "Sara", "Jack", "Zoe",  "Leo",  "Emma", "Bob",   "Amy",  "Jake", "Kim",  "Joe",
                                "Mom",  "Dad",  "Nina", "Fred", "Rose", "Spot",  "Kitty", "Ella", "Ollie", "Grace",
                                "Jill", "Pete", "Ruby", "Toby", "Lola", "Billy", "Daisy", "Finn", "Molly", "Sid"};
  constexpr std::size_t n_names = sizeof names / sizeof names[0];
  std::vector<prompt_record> all;
  for (std::size_t u = 0; u < users; ++u) {
    const std::string user = "user" + std::to_string(u);
    // User 0 writes 300 prompts (the 200 cap applies); the others 6 to 15 each.
    const std::size_t count = u == 0 ? 300 : 6 + (u * 7 + seed) % 10;
    for (std::size_t k = 0; k < count; ++k) {
      const std::size_t pick = u * 131 + k * 37;  // spreads users over names, settings and endings
      const std::string name = names[pick % n_names], friend_name = names[(pick / n_names + 1 + u) % n_names];
      const auto list = openings(name, friend_name);
      all.push_back({user + "-" + std::to_string(k), user, list[(pick / 7 + k) % list.size()]});
    }
  }
  const std::string path = out + "/prompts.jsonl";
  rlhf::write_prompts(path, all);
  const auto prompts = rlhf::read_prompts(path);
  prompt_sets sets;
  sets.generated = prompts.size();
  rlhf::prompt_rules_options rules;
  rules.dedup_prefix_chars = 20;  // openings differ after the name; longer shared prefixes are repeats
  rules.cap_seed = seed;
  rules.split = {0.7, 0.15, 0.15, seed};
  rlhf::prompt_rules_report report;
  const rlhf::prompt_split split = rlhf::apply_prompt_rules(prompts, rules, &report);
  sets.removed_by_prefix = report.removed_by_prefix;
  sets.removed_by_cap = report.removed_by_cap;
  sets.kept = split.train.size() + split.validation.size() + split.test.size();
  sets.train = split.train;
  sets.validation = split.validation;
  sets.test = split.test;
  return sets;
}

inline void write_demonstrations(const std::string& path, const std::vector<demonstration_record>& d) {
  rlhf::write_demonstrations(path, d);
}
inline std::vector<demonstration_record> read_demonstrations(const std::string& path) {
  return rlhf::read_demonstrations(path);
}
inline void write_rankings(const std::string& path, const std::vector<ranking_record>& r) { rlhf::write_rankings(path, r); }
inline std::vector<ranking_record> read_rankings(const std::string& path) { return rlhf::read_rankings(path); }

}  // namespace demo
