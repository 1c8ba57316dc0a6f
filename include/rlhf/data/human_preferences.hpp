/// @file human_preferences.hpp
/// @brief Readers for two sets of real human preference data: the K = 4 answer comparisons of
/// Wu et al. 2023 (FineGrainedRLHF, `fgrlhf_feedback_train.json`) and the ETHICS utilitarianism
/// pairs of Hendrycks et al. 2021 (`util_train.csv`, `util_test.csv`).
///
/// Both produce `preference_pair {prompt, chosen, rejected}`, the unit a reward model's pairwise
/// loss consumes (Ouyang et al. 2022, eq. 1); the FineGrainedRLHF reader also keeps each question's
/// four answers and six labels so that all C(4,2) comparisons of one prompt can form one batch
/// element, and derives a ranking from them.
///
/// FineGrainedRLHF file: one JSON array; element q is an object with (at least) "question" (string),
/// "prediction 1" .. "prediction 4" (strings), "preference" (6 integers for the pairs 1v2, 1v3, 1v4,
/// 2v3, 2v4, 3v4 in that order: 1 = the first answer is preferred, 2 = the second, 0 = tie), "gold"
/// (a human-written answer) and "feedback" with "corrected-prediction" (a human correction).
/// The file is a single line, so errors give the element index (0-based) and the field:
///
///     rlhf::read_fgrlhf_feedback: prefs/fgrlhf_feedback_train.json: element 17: field 'preference[3]': expected 0, 1 or 2, received the number 5
///
/// ETHICS file: CSV without a header, two scenarios per line, the first judged more pleasant than
/// the second by crowd workers. Errors give the line:
///
///     rlhf::read_ethics_pairs: prefs/util_train.csv:12: expected 2 fields, received 3 fields
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "rlhf/data/atomic_write.hpp"
#include "rlhf/data/csv.hpp"
#include "rlhf/data/json.hpp"
#include "rlhf/data/jsonl.hpp"
#include "rlhf/data/records.hpp"
#include "rlhf/error.hpp"

namespace rlhf {

/// One human comparison in text form: for `prompt`, `chosen` was preferred over `rejected`.
struct preference_pair {
  /// The prompt (may be empty).
  std::string prompt;
  /// The preferred response.
  std::string chosen;
  /// The other response.
  std::string rejected;
  /// Field-wise equality.
  friend bool operator==(const preference_pair&, const preference_pair&) = default;
};

/// The label of one pair in the FineGrainedRLHF data.
enum class pair_preference : unsigned char {
  /// Equally good (label 0).
  tie = 0,
  /// The first answer of the pair is preferred (label 1).
  first = 1,
  /// The second answer of the pair is preferred (label 2).
  second = 2,
};

/// The answer pairs of the "preference" array, in file order: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
/// as 0-based answer indices, i.e. 1v2, 1v3, 1v4, 2v3, 2v4, 3v4.
inline constexpr std::array<std::pair<std::size_t, std::size_t>, 6> fgrlhf_pair_order{
    {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}}};

/// One question of the FineGrainedRLHF feedback file.
struct fgrlhf_question {
  /// The question (used as the prompt).
  std::string question;
  /// The four model answers ("prediction 1" .. "prediction 4").
  std::array<std::string, 4> answers;
  /// The six human labels, pairs in `fgrlhf_pair_order`.
  std::array<pair_preference, 6> preference{};
  /// The human-written reference answer ("gold"), a demonstration.
  std::string gold;
  /// The human correction of the first answer ("feedback" / "corrected-prediction"), a demonstration.
  std::string corrected;
};

/// Reads the FineGrainedRLHF feedback file (see the file comment for its structure).
/// @param path the file (e.g. `.../prefs/fgrlhf_feedback_train.json`)
/// @return the questions in file order
/// @note Throws rlhf::invalid_argument naming the file and, for a bad JSON document, the line and
///       column, or, for a bad element, its index and the field.
inline std::vector<fgrlhf_question> read_fgrlhf_feedback(const std::filesystem::path& path) {
  constexpr std::string_view fn = "rlhf::read_fgrlhf_feedback";
  std::ifstream in(path, std::ios::binary);
  if (!in) detail::throw_file_error(fn, path, "cannot open the file for reading");
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) detail::throw_file_error(fn, path, "read error");
  json_value doc;
  try {
    doc = parse_json(text);
  } catch (const invalid_argument& e) {
    std::string msg = e.what();
    constexpr std::string_view prefix = "rlhf::parse_json: ";
    if (msg.compare(0, prefix.size(), prefix) == 0) msg = msg.substr(prefix.size());
    detail::throw_file_error(fn, path, "invalid JSON " + msg);
  }
  if (!doc.is_array()) detail::throw_file_error(fn, path, "expected a JSON array, received " + detail::describe_json_value(doc));
  std::vector<fgrlhf_question> out;
  out.reserve(doc.size());
  for (std::size_t q = 0; q < doc.size(); ++q) {
    const json_value& e = doc.as_array()[q];
    const auto fail = [&](std::string_view field, std::string_view expected, std::string_view received) {
      detail::throw_file_error(fn, path,
                               "element " + std::to_string(q) + ": field '" + std::string(field) + "': expected " +
                                   std::string(expected) + ", received " + std::string(received));
    };
    if (!e.is_object())
      detail::throw_file_error(fn, path, "element " + std::to_string(q) + ": expected an object, received " +
                                             detail::describe_json_value(e));
    const auto member = [&](std::string_view name) -> const json_value& {
      const json_value* v = e.find(name);
      if (!v) fail(name, "a member '" + std::string(name) + "'", "an object without it");
      return *v;
    };
    const auto string_member = [&](const json_value& v, std::string_view name) -> std::string {
      if (!v.is_string()) fail(name, "a string", detail::describe_json_value(v));
      return v.as_string();
    };
    fgrlhf_question item;
    item.question = string_member(member("question"), "question");
    for (std::size_t a = 0; a < 4; ++a) {
      const std::string name = "prediction " + std::to_string(a + 1);
      item.answers[a] = string_member(member(name), name);
    }
    const json_value& pref = member("preference");
    if (!pref.is_array() || pref.size() != 6)
      fail("preference", "an array of 6 labels (pairs 1v2, 1v3, 1v4, 2v3, 2v4, 3v4)", detail::describe_json_value(pref));
    for (std::size_t k = 0; k < 6; ++k) {
      const json_value& l = pref.as_array()[k];
      const std::string name = "preference[" + std::to_string(k) + "]";
      if (!l.is_integer()) fail(name, "0, 1 or 2", detail::describe_json_value(l));
      std::int64_t x = -1;
      try {
        x = l.as_int64();
      } catch (const invalid_argument&) {
      }
      if (x < 0 || x > 2) fail(name, "0, 1 or 2", detail::describe_json_value(l));
      item.preference[k] = static_cast<pair_preference>(x);
    }
    item.gold = string_member(member("gold"), "gold");
    const json_value& feedback = member("feedback");
    if (!feedback.is_object()) fail("feedback", "an object", detail::describe_json_value(feedback));
    const json_value* corrected = feedback.find("corrected-prediction");
    if (!corrected) fail("feedback.corrected-prediction", "a member 'corrected-prediction'", "an object without it");
    item.corrected = string_member(*corrected, "feedback.corrected-prediction");
    out.push_back(std::move(item));
  }
  return out;
}

/// The comparisons of the FineGrainedRLHF questions as text pairs, ties skipped: for each question,
/// the labelled pairs in `fgrlhf_pair_order`, prompt = the question.
/// @param questions from read_fgrlhf_feedback
/// @return one pair per non-tie label (question order, then pair order)
inline std::vector<preference_pair> fgrlhf_preference_pairs(const std::vector<fgrlhf_question>& questions) {
  std::vector<preference_pair> out;
  for (const fgrlhf_question& q : questions) {
    for (std::size_t k = 0; k < 6; ++k) {
      const auto [i, j] = fgrlhf_pair_order[k];
      if (q.preference[k] == pair_preference::first) out.push_back({q.question, q.answers[i], q.answers[j]});
      else if (q.preference[k] == pair_preference::second) out.push_back({q.question, q.answers[j], q.answers[i]});
    }
  }
  return out;
}

/// A ranking of a question's four answers derived from its six pairwise labels by Copeland score
/// (wins minus losses; rank 0 = highest score, equal scores tie). When the labels are transitive
/// the ranking reproduces every one of them; when they contain a cycle some labels are lost (the
/// pairs themselves are always available from fgrlhf_preference_pairs).
/// @param question one question
/// @param prompt_id the id to give the ranking
/// @return the ranking, or nothing when all four answers get the same score (e.g. all six labels are ties)
inline std::optional<ranking_record> fgrlhf_ranking(const fgrlhf_question& question, std::string prompt_id) {
  std::array<int, 4> score{};
  for (std::size_t k = 0; k < 6; ++k) {
    const auto [i, j] = fgrlhf_pair_order[k];
    if (question.preference[k] == pair_preference::first) {
      ++score[i];
      --score[j];
    } else if (question.preference[k] == pair_preference::second) {
      ++score[j];
      --score[i];
    }
  }
  std::array<int, 4> distinct = score;
  std::sort(distinct.begin(), distinct.end(), [](int a, int b) { return a > b; });
  const auto end = std::unique(distinct.begin(), distinct.end());
  if (end - distinct.begin() < 2) return std::nullopt;
  ranking_record r;
  r.prompt_id = std::move(prompt_id);
  for (std::size_t a = 0; a < 4; ++a) {
    r.responses.push_back(question.answers[a]);
    // Dense rank: how many distinct scores are higher.
    r.ranks.push_back(static_cast<std::int64_t>(std::find(distinct.begin(), end, score[a]) - distinct.begin()));
  }
  return r;
}

/// How `read_ethics_pairs` forms the prompt.
enum class ethics_prompt : unsigned char {
  /// The prompt is the leading whole words both scenarios share (leaving each response at least
  /// one word); the responses are the rest, so prompt + chosen and prompt + rejected are exactly the
  /// two scenarios. The data's README suggests this: most pairs share such a prefix.
  shared_word_prefix,
  /// The prompt is empty; the responses are the whole scenarios.
  empty,
};

/// Options of read_ethics_pairs.
struct ethics_options {
  /// How the prompt is formed.
  ethics_prompt prompt = ethics_prompt::shared_word_prefix;
};

/// Splits two texts at their longest shared prefix of whole words: the largest p such that both
/// texts agree on [0, p), both have a space or tab at p, and both keep a non-blank character after
/// p. Returns 0 when there is none. Whitespace at p stays with the responses, so that concatenating
/// prompt and response restores the text exactly.
/// @param a one text
/// @param b the other
/// @return the prefix length in bytes
inline std::size_t shared_word_prefix_length(std::string_view a, std::string_view b) {
  const std::size_t n = std::min(a.size(), b.size());
  std::size_t lcp = 0;
  while (lcp < n && a[lcp] == b[lcp]) ++lcp;
  const auto blank = [](char c) { return c == ' ' || c == '\t'; };
  const auto has_word_after = [&](std::string_view s, std::size_t p) {
    return s.find_first_not_of(" \t", p) != std::string_view::npos;
  };
  for (std::size_t p = std::min(lcp, n); p > 0; --p) {
    if (p < a.size() && p < b.size() && blank(a[p]) && blank(b[p]) && has_word_after(a, p) && has_word_after(b, p))
      return p;
  }
  return 0;
}

/// Reads an ETHICS utilitarianism file: CSV, no header, two scenarios per line, the first more
/// pleasant (chosen) than the second (rejected).
/// @param path the file (e.g. `.../prefs/util_train.csv`)
/// @param options how the prompt is formed
/// @return one pair per line, in file order
/// @note Throws rlhf::invalid_argument "rlhf::read_ethics_pairs: FILE:LINE: ..." for a CSV error, a
///       line without exactly 2 fields, or an empty scenario.
inline std::vector<preference_pair> read_ethics_pairs(const std::filesystem::path& path,
                                                      const ethics_options& options = {}) {
  constexpr std::string_view fn = "rlhf::read_ethics_pairs";
  const std::vector<csv_row> rows = read_csv(path, fn);
  std::vector<preference_pair> out;
  out.reserve(rows.size());
  for (const csv_row& row : rows) {
    const auto fail = [&](std::string_view expected, std::string_view received) {
      detail::throw_file_error(fn, path.string() + ":" + std::to_string(row.line),
                               "expected " + std::string(expected) + ", received " + std::string(received));
    };
    if (row.fields.size() != 2)
      fail("2 fields (the more pleasant scenario, then the other)", std::to_string(row.fields.size()) + " fields");
    for (std::size_t c = 0; c < 2; ++c)
      if (row.fields[c].find_first_not_of(" \t\r\n") == std::string::npos)
        fail("a non-empty scenario in field " + std::to_string(c + 1), "an empty field");
    const std::string& a = row.fields[0];
    const std::string& b = row.fields[1];
    if (options.prompt == ethics_prompt::empty) {
      out.push_back({std::string(), a, b});
    } else {
      const std::size_t p = shared_word_prefix_length(a, b);
      out.push_back({a.substr(0, p), a.substr(p), b.substr(p)});
    }
  }
  return out;
}

}  // namespace rlhf
