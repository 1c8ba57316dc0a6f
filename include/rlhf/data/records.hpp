/// @file records.hpp
/// @brief The pipeline's data records (prompts, demonstrations, rankings), their JSONL readers and
/// writers, and the expansion of a ranking into its comparison pairs.
///
/// The three InstructGPT datasets (Ouyang et al. 2022, section 3.2): prompts written by users (each
/// with the user's id, which the split and the per-user cap need), labeler demonstrations for SFT,
/// and labeler rankings of K responses per prompt for the reward model. One JSON object per line:
///
///     {"id": "p1", "user_id": "u7", "text": "Write a story about a dragon."}
///     {"prompt_id": "p1", "response": "Once upon a time..."}
///     {"prompt_id": "p1", "responses": ["A", "B", "C", "D"], "ranks": [1, 0, 2, 1]}
///
/// Identifiers are strings or integers (an integer is kept as its decimal text, so 17 and "17" are
/// the same id). Unknown members are ignored, so that files may carry extra annotations. Every error
/// names the reader, the file, the line and the field (see jsonl.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "rlhf/data/json.hpp"
#include "rlhf/data/jsonl.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

/// A prompt submitted by a user: `{"id", "user_id", "text"}`.
struct prompt_record {
  /// Unique id of the prompt within its file.
  std::string id;
  /// Id of the user who wrote it (the split is disjoint by user, and each user contributes at most a
  /// fixed number of prompts).
  std::string user_id;
  /// The prompt text (UTF-8).
  std::string text;
  /// Field-wise equality.
  friend bool operator==(const prompt_record&, const prompt_record&) = default;
};

/// A labeler's demonstration of the desired output for one prompt: `{"prompt_id", "response"}`.
struct demonstration_record {
  /// Id of the prompt answered.
  std::string prompt_id;
  /// The demonstrated response (UTF-8).
  std::string response;
  /// Field-wise equality.
  friend bool operator==(const demonstration_record&, const demonstration_record&) = default;
};

/// A labeler's ranking of K >= 2 responses to one prompt: `{"prompt_id", "responses", "ranks"}`.
/// `ranks[i]` is the rank of `responses[i]`: 0 is best, larger is worse, equal ranks are ties.
struct ranking_record {
  /// Id of the prompt answered.
  std::string prompt_id;
  /// The K responses (UTF-8).
  std::vector<std::string> responses;
  /// Their ranks, one per response (0 = best; ties allowed).
  std::vector<std::int64_t> ranks;
  /// Field-wise equality.
  friend bool operator==(const ranking_record&, const ranking_record&) = default;
};

/// One comparison of a ranking: response `winner` is ranked strictly better than response `loser`
/// (indices into `ranking_record::responses`).
struct comparison_pair {
  /// Index of the preferred response.
  std::size_t winner = 0;
  /// Index of the other response.
  std::size_t loser = 0;
  /// Field-wise equality.
  friend bool operator==(const comparison_pair&, const comparison_pair&) = default;
};

namespace detail {

/// Checks a ranking's shape and ranks; `fail(field, expected, received)` reports the problem.
template <class Fail>
void check_ranking(const ranking_record& r, Fail&& fail) {
  const std::size_t k = r.responses.size();
  if (k < 2)
    fail("responses", "at least 2 responses (a ranking compares K >= 2 responses)",
         std::to_string(k) + (k == 1 ? " response" : " responses"));
  if (r.ranks.size() != k)
    fail("ranks", std::to_string(k) + " ranks (one per response)", std::to_string(r.ranks.size()) + " ranks");
  bool any_strict = false;
  for (std::size_t i = 0; i < k; ++i) {
    if (r.ranks[i] < 0)
      fail("ranks[" + std::to_string(i) + "]", "a non-negative integer", std::to_string(r.ranks[i]));
    if (r.ranks[i] != r.ranks[0]) any_strict = true;
  }
  // A ranking whose responses all tie has no comparison: the reward model's loss over its C(K,2)
  // pairs would be an average over nothing.
  if (!any_strict) fail("ranks", "at least two different ranks", "all ranks equal (every response tied)");
}

// Rejects a second record with the same key, naming the line of the first.
class duplicate_checker {
 public:
  void check(const jsonl_record& r, std::string_view field, const std::string& key) {
    const auto [it, inserted] = first_line_.emplace(key, r.line());
    if (!inserted)
      r.fail(field, "a unique id",
             "'" + key + "' again (first seen at line " + std::to_string(it->second) + ")");
  }

 private:
  std::unordered_map<std::string, std::size_t> first_line_;
};

}  // namespace detail

/// Reads a prompts file (JSONL, one `{"id", "user_id", "text"}` per line).
/// @param path the file
/// @return the prompts in file order
/// @note Throws rlhf::invalid_argument "rlhf::read_prompts: FILE:LINE: field 'F': expected X, received Y"
///       for a missing or mistyped field and for an id already used on an earlier line.
inline std::vector<prompt_record> read_prompts(const std::filesystem::path& path) {
  std::vector<prompt_record> out;
  detail::duplicate_checker ids;
  for_each_jsonl(path, "rlhf::read_prompts", [&](const jsonl_record& r) {
    prompt_record p{r.id_field("id"), r.id_field("user_id"), r.string_field("text")};
    ids.check(r, "id", p.id);
    out.push_back(std::move(p));
  });
  return out;
}

/// Reads a demonstrations file (JSONL, one `{"prompt_id", "response"}` per line).
/// @param path the file
/// @return the demonstrations in file order
/// @note A prompt id may appear only once per file (one demonstration per prompt); errors as
///       `read_prompts`, named "rlhf::read_demonstrations".
inline std::vector<demonstration_record> read_demonstrations(const std::filesystem::path& path) {
  std::vector<demonstration_record> out;
  detail::duplicate_checker ids;
  for_each_jsonl(path, "rlhf::read_demonstrations", [&](const jsonl_record& r) {
    demonstration_record d{r.id_field("prompt_id"), r.string_field("response")};
    ids.check(r, "prompt_id", d.prompt_id);
    out.push_back(std::move(d));
  });
  return out;
}

/// Reads a rankings file (JSONL, one `{"prompt_id", "responses", "ranks"}` per line).
/// @param path the file
/// @return the rankings in file order
/// @note Rejects, naming file, line and field: K < 2 responses, a ranks array whose length differs
///       from the responses', a negative or non-integer rank, a ranking whose ranks are all equal (no
///       comparison), and a prompt id already ranked on an earlier line.
inline std::vector<ranking_record> read_rankings(const std::filesystem::path& path) {
  std::vector<ranking_record> out;
  detail::duplicate_checker ids;
  for_each_jsonl(path, "rlhf::read_rankings", [&](const jsonl_record& r) {
    ranking_record k;
    k.prompt_id = r.id_field("prompt_id");
    k.responses = r.string_array_field("responses");
    k.ranks = r.non_negative_integer_array_field("ranks");
    detail::check_ranking(k, [&](std::string_view field, std::string_view expected, std::string_view received) {
      r.fail(field, expected, received);
    });
    ids.check(r, "prompt_id", k.prompt_id);
    out.push_back(std::move(k));
  });
  return out;
}

namespace detail {

// Checks that `key` is not empty and not repeated among the records being written.
inline void check_unique_for_write(std::string_view function, const std::filesystem::path& path, std::size_t index,
                                   std::string_view field, const std::string& key,
                                   std::unordered_map<std::string, std::size_t>& seen) {
  if (key.empty())
    throw_file_error(function, path,
                     "record " + std::to_string(index + 1) + ": field '" + std::string(field) +
                         "': expected a non-empty id, received the empty string");
  const auto [it, inserted] = seen.emplace(key, index);
  if (!inserted)
    throw_file_error(function, path,
                     "record " + std::to_string(index + 1) + ": field '" + std::string(field) +
                         "': expected a unique id, received '" + key + "' again (first in record " +
                         std::to_string(it->second + 1) + ")");
}

}  // namespace detail

/// Writes prompts as JSONL, atomically. Ids are written as strings.
/// @param path the file to create or replace
/// @param prompts the records; ids must be non-empty and unique (checked before writing)
inline void write_prompts(const std::filesystem::path& path, std::span<const prompt_record> prompts) {
  constexpr std::string_view fn = "rlhf::write_prompts";
  std::unordered_map<std::string, std::size_t> seen;
  std::vector<json_value> lines;
  lines.reserve(prompts.size());
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const prompt_record& p = prompts[i];
    detail::check_unique_for_write(fn, path, i, "id", p.id, seen);
    if (p.user_id.empty())
      detail::throw_file_error(fn, path, "record " + std::to_string(i + 1) +
                                             ": field 'user_id': expected a non-empty id, received the empty string");
    json_value v = json_value::object();
    v.set("id", p.id).set("user_id", p.user_id).set("text", p.text);
    lines.push_back(std::move(v));
  }
  write_jsonl(path, std::span<const json_value>(lines), fn);
}

/// Writes demonstrations as JSONL, atomically.
/// @param path the file to create or replace
/// @param demonstrations the records; prompt ids must be non-empty and unique (checked before writing)
inline void write_demonstrations(const std::filesystem::path& path,
                                 std::span<const demonstration_record> demonstrations) {
  constexpr std::string_view fn = "rlhf::write_demonstrations";
  std::unordered_map<std::string, std::size_t> seen;
  std::vector<json_value> lines;
  lines.reserve(demonstrations.size());
  for (std::size_t i = 0; i < demonstrations.size(); ++i) {
    detail::check_unique_for_write(fn, path, i, "prompt_id", demonstrations[i].prompt_id, seen);
    json_value v = json_value::object();
    v.set("prompt_id", demonstrations[i].prompt_id).set("response", demonstrations[i].response);
    lines.push_back(std::move(v));
  }
  write_jsonl(path, std::span<const json_value>(lines), fn);
}

/// Writes rankings as JSONL, atomically.
/// @param path the file to create or replace
/// @param rankings the records; each is validated as `read_rankings` would (K >= 2, one rank per
///        response, ranks >= 0 and not all equal, unique prompt ids) before anything is written
inline void write_rankings(const std::filesystem::path& path, std::span<const ranking_record> rankings) {
  constexpr std::string_view fn = "rlhf::write_rankings";
  std::unordered_map<std::string, std::size_t> seen;
  std::vector<json_value> lines;
  lines.reserve(rankings.size());
  for (std::size_t i = 0; i < rankings.size(); ++i) {
    const ranking_record& r = rankings[i];
    detail::check_unique_for_write(fn, path, i, "prompt_id", r.prompt_id, seen);
    detail::check_ranking(r, [&](std::string_view field, std::string_view expected, std::string_view received) {
      detail::throw_file_error(fn, path,
                               "record " + std::to_string(i + 1) + ": field '" + std::string(field) + "': expected " +
                                   std::string(expected) + ", received " + std::string(received));
    });
    json_value responses = json_value::array(), ranks = json_value::array();
    for (const auto& s : r.responses) responses.push_back(json_value(s));
    for (std::int64_t x : r.ranks) ranks.push_back(json_value(x));
    json_value v = json_value::object();
    v.set("prompt_id", r.prompt_id).set("responses", std::move(responses)).set("ranks", std::move(ranks));
    lines.push_back(std::move(v));
  }
  write_jsonl(path, std::span<const json_value>(lines), fn);
}

/// Convenience overloads taking vectors.
inline void write_prompts(const std::filesystem::path& path, const std::vector<prompt_record>& prompts) {
  write_prompts(path, std::span<const prompt_record>(prompts));
}
/// Convenience overload taking a vector.
inline void write_demonstrations(const std::filesystem::path& path, const std::vector<demonstration_record>& d) {
  write_demonstrations(path, std::span<const demonstration_record>(d));
}
/// Convenience overload taking a vector.
inline void write_rankings(const std::filesystem::path& path, const std::vector<ranking_record>& rankings) {
  write_rankings(path, std::span<const ranking_record>(rankings));
}

/// Expands a ranking into its comparisons: every pair (i, j), i < j, with different ranks, as
/// (winner, loser) where the winner has the smaller rank; tied pairs are skipped. Without ties this
/// is all C(K,2) = K(K-1)/2 pairs, the comparisons InstructGPT's reward-model loss averages over
/// (Ouyang et al. 2022, eq. 1).
/// @param ranking the ranking; validated (K >= 2, one rank per response, ranks >= 0, not all equal)
/// @return the pairs, ordered by (i, j) with i < j the response indices before orienting
/// @note Throws rlhf::invalid_argument "rlhf::ranking_pairs: argument 'ranking': ..." for an invalid ranking.
inline std::vector<comparison_pair> ranking_pairs(const ranking_record& ranking) {
  detail::check_ranking(ranking, [](std::string_view field, std::string_view expected, std::string_view received) {
    detail::throw_argument_error("rlhf::ranking_pairs", "ranking." + std::string(field), expected, received);
  });
  std::vector<comparison_pair> out;
  const std::size_t k = ranking.responses.size();
  out.reserve(k * (k - 1) / 2);
  for (std::size_t i = 0; i < k; ++i)
    for (std::size_t j = i + 1; j < k; ++j) {
      if (ranking.ranks[i] < ranking.ranks[j]) out.push_back({i, j});
      else if (ranking.ranks[j] < ranking.ranks[i]) out.push_back({j, i});
    }
  return out;
}

}  // namespace rlhf
