/// @file prompt_split.hpp
/// @brief The InstructGPT prompt rules: long-common-prefix deduplication, at most N prompts per user,
/// and a train / validation / test split that is disjoint by user.
///
/// Ouyang et al. 2022 (InstructGPT), section 3.2: prompts were "heuristically deduplicated by checking
/// for prompts that share a long common prefix", the number of prompts was limited "to 200 per user
/// ID", and the train, validation and test splits were created "based on user ID, so that the
/// validation and test sets contain no data from users whose data is in the training set".
///
/// Every rule here is deterministic and independent of the order of the input file wherever the
/// rule allows it:
/// - the cap keeps, for each user, the N prompts with the smallest seeded hash of their prompt id
///   (so the same prompts survive however the file is shuffled);
/// - the split sends each user, by the seeded hash of the user id, to one part;
/// - the prefix rule keeps the earliest prompt (in input order) of each group sharing a prefix:
///   "earliest" is the only order that means "a later prompt repeats an earlier one".
/// The hash is FNV-1a (64-bit) over the seed and the id bytes, finished with the SplitMix64 mixer:
/// the same on every platform and compiler, so splits are reproducible across machines.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "rlhf/data/records.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

/// A portable 64-bit hash of `text` under `seed` (FNV-1a over the seed's 8 bytes then the text,
/// finished with the SplitMix64 mixer). Stable across platforms and library versions.
/// @param text the bytes to hash (an id)
/// @param seed selects an independent hash function
/// @return the hash
inline std::uint64_t stable_hash(std::string_view text, std::uint64_t seed) {
  std::uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a offset basis
  constexpr std::uint64_t prime = 0x100000001b3ULL;
  for (int k = 0; k < 8; ++k) {
    h ^= (seed >> (8 * k)) & 0xFFu;
    h *= prime;
  }
  for (char c : text) {
    h ^= static_cast<unsigned char>(c);
    h *= prime;
  }
  // SplitMix64 finalizer: FNV alone leaves the high bits weakly mixed for short ids.
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h;
}

/// What `cap_prompts_per_user` did.
struct prompt_cap_report {
  /// Prompts given.
  std::size_t input = 0;
  /// Prompts dropped because their user had more than the cap.
  std::size_t removed = 0;
  /// Users that had more prompts than the cap.
  std::size_t users_capped = 0;
};

/// Keeps at most `max_per_user` prompts per user id (InstructGPT: 200), choosing deterministically:
/// for a user over the cap, the prompts with the smallest `stable_hash(id, seed)` (ties broken by
/// id) stay. The choice depends only on the ids and the seed, never on the input order.
/// @param prompts the prompts (ids should be unique; see read_prompts)
/// @param max_per_user the cap; 0 is rejected
/// @param seed selects which prompts of a capped user survive
/// @param report optional; receives the counts
/// @return the kept prompts, in input order
inline std::vector<prompt_record> cap_prompts_per_user(std::span<const prompt_record> prompts,
                                                       std::size_t max_per_user = 200, std::uint64_t seed = 0,
                                                       prompt_cap_report* report = nullptr) {
  if (max_per_user == 0)
    detail::throw_argument_error("rlhf::cap_prompts_per_user", "max_per_user", "a value >= 1", "0");
  std::unordered_map<std::string_view, std::vector<std::size_t>> by_user;
  for (std::size_t i = 0; i < prompts.size(); ++i) by_user[prompts[i].user_id].push_back(i);
  std::vector<char> keep(prompts.size(), 1);
  prompt_cap_report rep;
  rep.input = prompts.size();
  for (auto& [user, idx] : by_user) {
    if (idx.size() <= max_per_user) continue;
    ++rep.users_capped;
    std::vector<std::pair<std::uint64_t, std::size_t>> keyed;
    keyed.reserve(idx.size());
    for (std::size_t i : idx) keyed.emplace_back(stable_hash(prompts[i].id, seed), i);
    // Partial order by (hash, id): only the first max_per_user matter.
    const auto less = [&](const auto& a, const auto& b) {
      if (a.first != b.first) return a.first < b.first;
      if (prompts[a.second].id != prompts[b.second].id) return prompts[a.second].id < prompts[b.second].id;
      return prompts[a.second].text < prompts[b.second].text;
    };
    std::nth_element(keyed.begin(), keyed.begin() + static_cast<std::ptrdiff_t>(max_per_user), keyed.end(), less);
    for (std::size_t r = max_per_user; r < keyed.size(); ++r) keep[keyed[r].second] = 0;
    rep.removed += idx.size() - max_per_user;
  }
  std::vector<prompt_record> out;
  out.reserve(prompts.size() - rep.removed);
  for (std::size_t i = 0; i < prompts.size(); ++i)
    if (keep[i]) out.push_back(prompts[i]);
  if (report) *report = rep;
  return out;
}

/// What `dedup_prompt_prefixes` did.
struct prompt_dedup_report {
  /// Prompts given.
  std::size_t input = 0;
  /// Prompts dropped because an earlier kept prompt has the same prefix.
  std::size_t removed = 0;
};

/// The first `chars` Unicode code points of a UTF-8 text (the whole text when shorter), as bytes.
/// Counting code points rather than bytes keeps the rule the same for every script.
/// @param text UTF-8 text (read_prompts guarantees it is well formed)
/// @param chars the prefix length in code points
/// @return a prefix of `text` that ends on a code point boundary
inline std::string_view utf8_prefix(std::string_view text, std::size_t chars) {
  std::size_t i = 0, n = 0;
  while (i < text.size() && n < chars) {
    ++i;  // skip continuation bytes (10xxxxxx) of this code point
    while (i < text.size() && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) ++i;
    ++n;
  }
  return text.substr(0, i);
}

/// Removes prompts that share a long common prefix with an earlier prompt (InstructGPT's
/// heuristic deduplication). Two prompts collide when their first `prefix_chars` code points are
/// equal (a prompt shorter than that collides only with an identical text). Of each group of
/// colliding prompts the earliest in input order is kept. O(n log n): the prompts are sorted by
/// (prefix, input position) and neighbours compared.
/// @param prompts the prompts
/// @param prefix_chars the prefix length in code points; 0 is rejected
/// @param report optional; receives the counts
/// @return the kept prompts, in input order; no two of them share their first `prefix_chars` code points
inline std::vector<prompt_record> dedup_prompt_prefixes(std::span<const prompt_record> prompts,
                                                        std::size_t prefix_chars = 64,
                                                        prompt_dedup_report* report = nullptr) {
  if (prefix_chars == 0)
    detail::throw_argument_error("rlhf::dedup_prompt_prefixes", "prefix_chars", "a value >= 1", "0");
  std::vector<std::pair<std::string_view, std::size_t>> keyed;
  keyed.reserve(prompts.size());
  for (std::size_t i = 0; i < prompts.size(); ++i) keyed.emplace_back(utf8_prefix(prompts[i].text, prefix_chars), i);
  std::sort(keyed.begin(), keyed.end());  // by prefix, then by input position: the first of a run is the earliest
  std::vector<char> keep(prompts.size(), 0);
  std::size_t kept = 0;
  for (std::size_t r = 0; r < keyed.size(); ++r) {
    if (r == 0 || keyed[r].first != keyed[r - 1].first) {
      keep[keyed[r].second] = 1;
      ++kept;
    }
  }
  std::vector<prompt_record> out;
  out.reserve(kept);
  for (std::size_t i = 0; i < prompts.size(); ++i)
    if (keep[i]) out.push_back(prompts[i]);
  if (report) *report = {prompts.size(), prompts.size() - kept};
  return out;
}

/// Options of the user-disjoint split.
struct prompt_split_options {
  /// Fraction of users whose prompts go to the training part.
  double train_ratio = 0.8;
  /// Fraction of users whose prompts go to the validation part.
  double validation_ratio = 0.1;
  /// Fraction of users whose prompts go to the test part.
  double test_ratio = 0.1;
  /// Seed of the user hash: a different seed gives a different (equally valid) split.
  std::uint64_t seed = 0;
};

/// The three parts of a user-disjoint split, each in input order.
struct prompt_split {
  /// Prompts of the training users.
  std::vector<prompt_record> train;
  /// Prompts of the validation users.
  std::vector<prompt_record> validation;
  /// Prompts of the test users.
  std::vector<prompt_record> test;
};

/// Which part a user belongs to.
enum class split_part : unsigned char {
  /// The training part.
  train,
  /// The validation part.
  validation,
  /// The test part.
  test,
};

namespace detail {
inline void check_split_options(std::string_view fn, const prompt_split_options& o) {
  check_in_range(fn, "options.train_ratio", o.train_ratio, 0.0, 1.0);
  check_in_range(fn, "options.validation_ratio", o.validation_ratio, 0.0, 1.0);
  check_in_range(fn, "options.test_ratio", o.test_ratio, 0.0, 1.0);
  const double sum = o.train_ratio + o.validation_ratio + o.test_ratio;
  if (std::fabs(sum - 1.0) > 1e-9)
    throw_argument_error(fn, "options", "train_ratio + validation_ratio + test_ratio == 1",
                         "a sum of " + to_display_string(sum));
}
}  // namespace detail

/// The part of the split a user id falls in: u = (top 53 bits of stable_hash(user_id, seed)) / 2^53
/// is uniform in [0, 1); train when u < train_ratio, validation when u < train_ratio +
/// validation_ratio, test otherwise.
/// @param user_id the user
/// @param options ratios (each in [0, 1], summing to 1) and seed
/// @return the part
inline split_part user_split_part(std::string_view user_id, const prompt_split_options& options = {}) {
  detail::check_split_options("rlhf::user_split_part", options);
  const double u = static_cast<double>(stable_hash(user_id, options.seed) >> 11) * 0x1.0p-53;
  if (u < options.train_ratio) return split_part::train;
  if (u < options.train_ratio + options.validation_ratio) return split_part::validation;
  return split_part::test;
}

/// Splits prompts into train / validation / test so that no user has prompts in two parts
/// (InstructGPT section 3.2). Each user goes to the part `user_split_part` names, so the fraction of
/// users (not of prompts) in each part approaches its ratio.
/// @param prompts the prompts
/// @param options ratios and seed; ratios outside [0, 1] or not summing to 1 (within 1e-9) are rejected
/// @return the three parts, each in input order
inline prompt_split split_prompts_by_user(std::span<const prompt_record> prompts,
                                          const prompt_split_options& options = {}) {
  detail::check_split_options("rlhf::split_prompts_by_user", options);
  prompt_split out;
  std::unordered_map<std::string_view, split_part> part_of;
  for (const prompt_record& p : prompts) {
    auto it = part_of.find(p.user_id);
    if (it == part_of.end()) it = part_of.emplace(p.user_id, user_split_part(p.user_id, options)).first;
    switch (it->second) {
      case split_part::train: out.train.push_back(p); break;
      case split_part::validation: out.validation.push_back(p); break;
      case split_part::test: out.test.push_back(p); break;
    }
  }
  return out;
}

/// Options of `apply_prompt_rules` (defaults: InstructGPT's 200 per user, a 64-code-point prefix,
/// an 80 / 10 / 10 split by user).
struct prompt_rules_options {
  /// Prefix length (code points) of the deduplication; 0 turns deduplication off.
  std::size_t dedup_prefix_chars = 64;
  /// At most this many prompts per user id (InstructGPT: 200); 0 turns the cap off.
  std::size_t max_prompts_per_user = 200;
  /// Seed of the cap's choice.
  std::uint64_t cap_seed = 0;
  /// Ratios and seed of the split.
  prompt_split_options split;
};

/// Counts from `apply_prompt_rules`.
struct prompt_rules_report {
  /// Prompts given.
  std::size_t input = 0;
  /// Removed by the common-prefix rule.
  std::size_t removed_by_prefix = 0;
  /// Removed by the per-user cap.
  std::size_t removed_by_cap = 0;
  /// Users that had more prompts than the cap (after deduplication).
  std::size_t users_capped = 0;
  /// Prompts in the training part.
  std::size_t train = 0;
  /// Prompts in the validation part.
  std::size_t validation = 0;
  /// Prompts in the test part.
  std::size_t test = 0;
};

/// The three rules in the order the paper implies: deduplicate (so that repeats do not count
/// against a user's cap), cap per user, then split by user.
/// @param prompts the prompts
/// @param options see prompt_rules_options
/// @param report optional; receives the counts removed by each rule and the part sizes
/// @return the split
inline prompt_split apply_prompt_rules(std::span<const prompt_record> prompts, const prompt_rules_options& options = {},
                                       prompt_rules_report* report = nullptr) {
  detail::check_split_options("rlhf::apply_prompt_rules", options.split);
  prompt_rules_report rep;
  rep.input = prompts.size();
  std::vector<prompt_record> current(prompts.begin(), prompts.end());
  if (options.dedup_prefix_chars > 0) {
    prompt_dedup_report d;
    current = dedup_prompt_prefixes(current, options.dedup_prefix_chars, &d);
    rep.removed_by_prefix = d.removed;
  }
  if (options.max_prompts_per_user > 0) {
    prompt_cap_report c;
    current = cap_prompts_per_user(current, options.max_prompts_per_user, options.cap_seed, &c);
    rep.removed_by_cap = c.removed;
    rep.users_capped = c.users_capped;
  }
  prompt_split out = split_prompts_by_user(current, options.split);
  rep.train = out.train.size();
  rep.validation = out.validation.size();
  rep.test = out.test.size();
  if (report) *report = rep;
  return out;
}

}  // namespace rlhf
