/// @file labeler.hpp
/// @brief Where new comparisons come from when steps 2 and 3 repeat: a `labeler` ranks K samples of the
///        current policy per prompt (Ouyang et al. 2022, §3.5: "comparison data is collected on the
///        current best policy"), and collect_rankings() turns a policy and a labeler into ranking records.
///
/// A labeler is an interface over text, so it can be a program (the demo's lexicon labeler), a bridge to
/// people (write the samples out, read their rankings back), or a file of human rankings
/// (ranking_file_labeler).
#pragma once

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "rlhf/data/records.hpp"
#include "rlhf/error.hpp"
#include "rlhf/models/concepts.hpp"
#include "rlhf/models/sampling.hpp"

namespace rlhf {

/// Ranks responses to a prompt: `l.rank(prompt, responses)` returns one rank per response (0 best, equal
/// ranks tie), or an empty vector to decline (the prompt is then left out).
template <class L>
concept labeler = requires(L& l, const std::string& prompt, const std::vector<std::string>& responses) {
  { l.rank(prompt, responses) } -> std::convertible_to<std::vector<std::int64_t>>;
};

/// A labeler that answers from rankings people made earlier (e.g. a rankings.jsonl with its prompts):
/// rank(prompt, responses) finds the recorded ranking of that prompt whose responses are the given ones
/// (in any order) and returns its ranks in the order asked; anything else declines (empty result).
class ranking_file_labeler {
 public:
  /// @param prompts the prompts the rankings refer to (by id)
  /// @param rankings the recorded rankings
  /// @throws rlhf::invalid_argument when a ranking names an unknown prompt id
  ranking_file_labeler(std::span<const prompt_record> prompts, std::span<const ranking_record> rankings) {
    std::map<std::string, const prompt_record*> by_id;
    for (const auto& p : prompts) by_id[p.id] = &p;
    for (std::size_t i = 0; i < rankings.size(); ++i) {
      const auto it = by_id.find(rankings[i].prompt_id);
      if (it == by_id.end()) {
        detail::throw_argument_error("rlhf::ranking_file_labeler", "rankings[" + std::to_string(i) + "].prompt_id",
                                     "the id of one of the prompts", "'" + rankings[i].prompt_id + "'");
      }
      by_text_.emplace(it->second->text, rankings[i]);
    }
  }

  std::vector<std::int64_t> rank(const std::string& prompt, const std::vector<std::string>& responses) const {
    const auto [first, last] = by_text_.equal_range(prompt);
    for (auto it = first; it != last; ++it) {
      const ranking_record& r = it->second;
      if (r.responses.size() != responses.size()) continue;
      std::vector<std::int64_t> ranks;
      std::vector<bool> used(r.responses.size(), false);
      for (const auto& resp : responses) {
        std::size_t k = 0;
        while (k < r.responses.size() && (used[k] || r.responses[k] != resp)) ++k;
        if (k == r.responses.size()) break;
        used[k] = true;
        ranks.push_back(r.ranks[k]);
      }
      if (ranks.size() == responses.size()) return ranks;
    }
    return {};
  }

 private:
  std::multimap<std::string, ranking_record> by_text_;
};

static_assert(labeler<ranking_file_labeler>);

/// Samples K responses per prompt from the policy, has the labeler rank them, and returns the rankings
/// (prompts the labeler declines, and rankings where every response ties, are left out: they hold no
/// comparison).
/// @param b the backend
/// @param policy an rlhf::policy
/// @param prompts the prompts (ids and text)
/// @param encode text -> prompt token ids (e.g. BOS + the tokenizer's pieces)
/// @param decode response token ids -> text
/// @param k responses per prompt (>= 2)
/// @param max_new_tokens response length limit
/// @param sampling how to sample (K draws per prompt with seeds sampling.seed, sampling.seed + 1, ...);
///        responses end before the stop token
template <class B, class P, labeler L>
std::vector<ranking_record> collect_rankings(const B& b, P& policy, std::span<const prompt_record> prompts,
                                             const std::function<std::vector<token_type>(const std::string&)>& encode,
                                             const std::function<std::string(const std::vector<token_type>&)>& decode,
                                             L& labeler, std::size_t k, std::size_t max_new_tokens,
                                             sampling_options sampling = {}) {
  detail::check_policy<P>();
  if (k < 2) detail::throw_argument_error("rlhf::collect_rankings", "k", "at least 2 responses per prompt", std::to_string(k));
  std::vector<std::vector<token_type>> encoded;
  for (const auto& p : prompts) encoded.push_back(encode(p.text));
  std::vector<std::vector<std::string>> texts(prompts.size());
  const std::uint64_t seed = sampling.seed;
  for (std::size_t s = 0; s < k && !prompts.empty(); ++s) {
    sampling.seed = seed + s;
    const auto seqs = policy.generate(b, encoded, max_new_tokens, sampling);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      std::vector<token_type> resp(seqs[i].begin() + static_cast<std::ptrdiff_t>(encoded[i].size()), seqs[i].end());
      if (!resp.empty() && resp.back() == sampling.stop_token) resp.pop_back();
      texts[i].push_back(decode(resp));
    }
  }
  std::vector<ranking_record> out;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const std::vector<std::int64_t> ranks = labeler.rank(prompts[i].text, texts[i]);
    if (ranks.empty()) continue;
    if (ranks.size() != texts[i].size()) {
      detail::throw_argument_error("rlhf::collect_rankings", "labeler",
                                   "one rank per response (" + std::to_string(texts[i].size()) + ")",
                                   std::to_string(ranks.size()) + " for prompt '" + prompts[i].id + "'");
    }
    if (std::all_of(ranks.begin(), ranks.end(), [&](std::int64_t r) { return r == ranks[0]; })) continue;
    out.push_back({prompts[i].id, std::move(texts[i]), ranks});
  }
  return out;
}

}  // namespace rlhf
