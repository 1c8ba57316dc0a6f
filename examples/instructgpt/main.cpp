// The InstructGPT method end to end on a small task: make the pretrained stories260K model continue story
// openings with positive sentiment (the task of Ziegler et al. 2019), with the three steps of Ouyang et
// al. 2022 and one more round of steps 2 and 3:
//
//   0. prompts   story openings from synthetic users, at most 200 per user, deduplicated by prefix, split
//                into train / validation / test by user
//   1. SFT       the labeler writes demonstrations (its favourite of 4 samples of the pretrained model);
//                the policy is fine-tuned on them (loss on the response tokens only)
//   2. RM        the labeler ranks K = 4 samples of the SFT policy per prompt; the reward model (started
//                from the SFT model) learns from all C(4,2) pairs of each prompt; a bias centers the
//                demonstrations' rewards at 0
//   3. PPO       the policy maximizes the RM score minus beta * KL to the SFT policy; the value model
//                starts from the RM
//   2'+3'        the labeler ranks samples of the PPO policy; the RM is trained on them; PPO continues
//
// The labeler (labeler.hpp) is a program: it scores with the AFINN-165 lexicon and, when it judges,
// draws each word's valence from the raw VADER human ratings, so it disagrees with itself like people
// do. The trainers see only the files it writes. The report compares the pretrained, SFT and PPO
// policies by the labeler's score on the test users' prompts.
//
// Every training phase runs through the trainers' fit(): per-step metrics files, a progress bar, and
// checkpoints under OUT/checkpoints/ (every 10 PPO iterations). --resume continues an interrupted run
// from them, ending where the uninterrupted run would have; without it, a run starts over.
//
//   instructgpt [--quick] [--resume] [--data DIR] [--out DIR] [--seed N] [--threads N] [--beta B]
//               [--ppo-iterations N] [--round2-iterations N] [--eval-samples N]
//               [--attention-memory per-layer|shared|logsumexp]
//
// --attention-memory sets what the trained models' training passes keep of the attention
// (rlhf::attention_memory; default per-layer): the results agree to rounding in every mode.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "labeler.hpp"
#include "rlhf/rlhf.hpp"
#include "story_prompts.hpp"

#ifndef RLHF_EXAMPLE_DATA_DIR
#define RLHF_EXAMPLE_DATA_DIR "examples/data"
#endif

namespace {

using backend = rlhf::eigen_backend;
using policy_t = rlhf::llama_model<backend, float>;
using rm_t = rlhf::llama_reward_model<backend, float>;
using value_t = rlhf::llama_value_model<backend, float>;
using opt_t = rlhf::adamw<backend, float>;

struct settings {
  bool quick = false;
  bool resume = false;
  std::string data = RLHF_EXAMPLE_DATA_DIR;
  std::string out = "instructgpt_out";
  std::uint64_t seed = 1;
  // One thread by default: the model is small (260K parameters), so splitting each layer's small
  // products across threads costs more in fork/join than it saves, and far more when another program
  // keeps a core busy. --threads 2 is worth trying on an idle machine.
  int threads = 1;
  // Sizes (the --quick values are set in main).
  std::size_t users = 48, demo_samples = 4, k = 4, new_tokens = 24;
  std::size_t sft_epochs = 3, rm_epochs = 2, ppo_iterations = 60, round2_iterations = 30, ppo_batch = 32;
  std::size_t eval_samples = 8;  // per test prompt: with 4, the per-prompt win rate is visibly noisy
  double policy_lr = 2e-4, value_lr = 5e-4, rm_lr = 3e-4, sft_lr = 5e-4, beta = 0.2, kl_target = 6.0;
  rlhf::attention_memory attention = rlhf::attention_memory::per_layer_softmax;
};

rlhf::attention_memory parse_attention_memory(const std::string& v) {
  if (v == "per-layer") return rlhf::attention_memory::per_layer_softmax;
  if (v == "shared") return rlhf::attention_memory::shared_softmax;
  if (v == "logsumexp") return rlhf::attention_memory::logsumexp;
  throw std::runtime_error("--attention-memory: expected per-layer, shared or logsumexp, received '" + v + "'");
}

const rlhf::tokenizer* g_tok = nullptr;

std::vector<rlhf::token_type> encode_prompt(const std::string& text) { return g_tok->encode(text, true); }
// A continuation's text: each piece decoded after its predecessor (the first after a non-BOS context, so
// its leading space is kept and then dropped once: the tokenizer's encode adds it back as its dummy prefix).
std::string decode_response(const std::vector<rlhf::token_type>& t) {
  std::string out;
  rlhf::token_type prev = rlhf::tokenizer::unk_id;
  for (const rlhf::token_type x : t) {
    const std::string_view piece = g_tok->decode(prev, x);
    if (rlhf::tokenizer::printable(piece)) out.append(piece);
    prev = x;
  }
  if (!out.empty() && out.front() == ' ') out.erase(0, 1);
  return out;
}

// Samples `n` continuations of each prompt (the rows of one batched generate call per repetition).
std::vector<std::vector<std::vector<rlhf::token_type>>> sample(const backend& b, policy_t& policy,
                                                               const std::vector<std::vector<rlhf::token_type>>& prompts,
                                                               std::size_t n, std::size_t new_tokens, std::uint64_t seed) {
  std::vector<std::vector<std::vector<rlhf::token_type>>> out(prompts.size());
  rlhf::sampling_options o;  // temperature 1: the policy's own distribution
  o.stop_token = rlhf::tokenizer::bos_id;  // stories260K separates stories with BOS
  for (std::size_t s = 0; s < n; ++s) {
    o.seed = seed * 1000003 + s;
    const auto seqs = policy.generate(b, prompts, new_tokens, o);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      std::vector<rlhf::token_type> resp(seqs[i].begin() + static_cast<std::ptrdiff_t>(prompts[i].size()), seqs[i].end());
      if (!resp.empty() && resp.back() == rlhf::tokenizer::bos_id) resp.pop_back();
      out[i].push_back(std::move(resp));
    }
  }
  return out;
}

struct policy_eval {
  double mean_score = 0;
  std::vector<double> per_prompt;  // mean score per prompt
  std::vector<std::string> first_samples;
};

policy_eval evaluate_policy(const backend& b, policy_t& policy, const std::vector<std::vector<rlhf::token_type>>& prompts,
                            const settings& s, demo::sentiment_labeler& labeler, std::uint64_t seed) {
  policy_eval e;
  const auto samples = sample(b, policy, prompts, s.eval_samples, s.new_tokens, seed);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    double m = 0;
    for (const auto& r : samples[i]) m += labeler.score(decode_response(r)) / static_cast<double>(samples[i].size());
    e.per_prompt.push_back(m);
    e.mean_score += m / static_cast<double>(prompts.size());
    e.first_samples.push_back(decode_response(samples[i][0]));
  }
  return e;
}

// Mean over sequences of sum_t log pi(a_t) - log pi_ref(a_t) on the policy's own samples.
double kl_to(const backend& b, policy_t& policy, policy_t& reference, const std::vector<std::vector<rlhf::token_type>>& prompts,
             const settings& s, std::uint64_t seed) {
  const auto samples = sample(b, policy, prompts, 1, s.new_tokens, seed);
  std::vector<rlhf::prompt_response> rows;
  for (std::size_t i = 0; i < prompts.size(); ++i) rows.push_back({prompts[i], samples[i][0]});
  const auto host = rlhf::make_token_batch(rows);
  const auto dev = rlhf::upload(b, host);
  auto lp = rlhf::allocate<float>(b, host.rows, host.cols), lr = rlhf::allocate<float>(b, host.rows, host.cols);
  policy.log_probs(b, dev.tokens_view(), dev.lengths_view(), lp.view());
  reference.log_probs(b, dev.tokens_view(), dev.lengths_view(), lr.view());
  const auto a = rlhf::to_host(b, lp.view()), r = rlhf::to_host(b, lr.view());
  double kl = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (host.mask[i]) kl += static_cast<double>(a[i]) - static_cast<double>(r[i]);
  return kl / static_cast<double>(host.rows);
}

std::vector<rlhf::ranked_responses> to_ranked(const std::vector<demo::ranking_record>& records,
                                              const std::map<std::string, std::string>& prompt_text) {
  std::vector<rlhf::ranked_responses> out;
  for (const auto& r : records) {
    rlhf::ranked_responses e;
    e.prompt = encode_prompt(prompt_text.at(r.prompt_id));
    for (const auto& text : r.responses) e.responses.push_back(g_tok->encode(text, false));
    e.ranks.assign(r.ranks.begin(), r.ranks.end());
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // results and progress lines (stderr) interleave in logs
  settings s;
  // --quick sets the sizes first, so that explicit flags after it override them.
  for (int i = 1; i < argc; ++i) s.quick = s.quick || std::strcmp(argv[i], "--quick") == 0;
  if (s.quick) {
    s.users = 24;
    s.sft_epochs = 2;
    s.rm_epochs = 2;
    s.ppo_iterations = 16;
    s.round2_iterations = 6;
    s.ppo_batch = 24;
    s.eval_samples = 2;
    s.new_tokens = 16;
  }
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string flag = argv[i];
      const auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw std::runtime_error("missing value after " + flag);
        return argv[++i];
      };
      if (flag == "--quick") s.quick = true;
      else if (flag == "--resume") s.resume = true;
      else if (flag == "--data") s.data = value();
      else if (flag == "--out") s.out = value();
      else if (flag == "--seed") s.seed = std::stoull(value());
      else if (flag == "--threads") s.threads = std::stoi(value());
      else if (flag == "--beta") s.beta = std::stod(value());
      else if (flag == "--ppo-iterations") s.ppo_iterations = std::stoull(value());
      else if (flag == "--round2-iterations") s.round2_iterations = std::stoull(value());
      else if (flag == "--eval-samples") s.eval_samples = std::stoull(value());
      else if (flag == "--attention-memory") s.attention = parse_attention_memory(value());
      else {
        std::fprintf(stderr, "usage: instructgpt [--quick] [--resume] [--data DIR] [--out DIR] [--seed N] [--threads N] [--beta B]\n"
                             "                   [--ppo-iterations N] [--round2-iterations N] [--eval-samples N]\n"
                             "                   [--attention-memory per-layer|shared|logsumexp]\n");
        return 2;
      }
    }
  } catch (const std::exception& e) {  // a missing or malformed flag value
    std::fprintf(stderr, "instructgpt: bad command line: %s\n", e.what());
    return 2;
  }
  try {
    const backend b{s.threads};
    std::filesystem::create_directories(s.out);
    const auto tok = rlhf::tokenizer::load(s.data + "/tok512.bin");
    g_tok = &tok;
    demo::sentiment_labeler labeler(s.data, s.seed);
    std::printf("InstructGPT demo: positive-sentiment story continuations with stories260K%s\n\n",
                s.quick ? " (--quick)" : "");

    // 0. Prompts by user: cap, dedup, split.
    const demo::prompt_sets sets = demo::make_prompt_sets(s.users, s.seed, s.out);
    std::printf("prompts: %zu from %zu users; %zu removed as repeats (shared prefix), %zu by the 200-per-user cap; "
                "train %zu / validation %zu / test %zu prompts (disjoint users)\n",
                sets.generated, s.users, sets.removed_by_prefix, sets.removed_by_cap, sets.train.size(),
                sets.validation.size(), sets.test.size());
    std::map<std::string, std::string> prompt_text;
    for (const auto* part : {&sets.train, &sets.validation, &sets.test})
      for (const auto& p : *part) prompt_text[p.id] = p.text;
    const auto encode_all = [&](const std::vector<demo::prompt_record>& ps) {
      std::vector<std::vector<rlhf::token_type>> out;
      for (const auto& p : ps) out.push_back(encode_prompt(p.text));
      return out;
    };
    const auto train_prompts = encode_all(sets.train),
               test_prompts = encode_all(sets.test);

    policy_t pretrained = rlhf::load_llama2c(b, s.data + "/stories260K.bin");
    policy_t policy = rlhf::load_llama2c(b, s.data + "/stories260K.bin");
    policy.set_attention_memory(s.attention);  // the models that train: the policy, the RM and the critic

    // 1. Demonstrations: the labeler's favourite of N samples of the pretrained model, written to a file.
    {
      const auto samples = sample(b, pretrained, train_prompts, s.demo_samples, s.new_tokens, s.seed + 11);
      std::vector<demo::demonstration_record> demos;
      for (std::size_t i = 0; i < sets.train.size(); ++i) {
        std::vector<std::string> texts;
        for (const auto& r : samples[i]) texts.push_back(decode_response(r));
        demos.push_back({sets.train[i].id, texts[labeler.best(texts)]});
      }
      demo::write_demonstrations(s.out + "/demonstrations.jsonl", demos);
    }
    const auto demo_records = demo::read_demonstrations(s.out + "/demonstrations.jsonl");
    std::vector<rlhf::prompt_response> demonstrations;
    for (const auto& d : demo_records) demonstrations.push_back({encode_prompt(prompt_text.at(d.prompt_id)), tok.encode(d.response, false)});
    std::printf("\nstep 1: SFT on %zu demonstrations (labeler's best of %zu samples)\n", demonstrations.size(), s.demo_samples);
    opt_t sft_opt(rlhf::adamw_options{s.sft_lr, 0.9, 0.95, 1e-8, 0.0});
    rlhf::sft_options so;
    so.schedule = rlhf::cosine_schedule(s.sft_lr, 0, s.sft_epochs * ((demonstrations.size() + 15) / 16));
    rlhf::sft_trainer sft(policy, sft_opt, so);
    // Each phase's run: metrics file, progress label, checkpoints (started over unless --resume).
    const auto run_for = [&](const std::string& name, const char* label, std::uint64_t seed) {
      rlhf::run_options run;
      run.seed = seed;
      run.label = label;
      run.metrics_path = s.out + "/" + name + "_metrics.csv";
      run.checkpoint_dir = s.out + "/checkpoints/" + name;
      run.resume = s.resume;
      if (!s.resume) std::filesystem::remove_all(run.checkpoint_dir);
      return run;
    };
    {
      rlhf::run_options run = run_for("sft", "  SFT", s.seed + 3);
      run.epochs = s.sft_epochs;
      run.batch_size = 16;
      const auto r = sft.fit(b, demonstrations, run);
      std::printf("  SFT: %zu steps, final batch nll %.3f\n", r.total_steps, r.history.empty() ? std::nan("") : r.last("nll"));
    }
    policy_t sft_policy = policy.clone(b);  // frozen: the KL penalty's reference and the RM's start

    // 2. Rankings of K samples of the SFT policy, written to files, then the reward model.
    // The labeler ranks K samples of a policy per prompt (rlhf::collect_rankings); the records go to a
    // file, and the reward model reads them back from it.
    const auto collect_rankings = [&](policy_t& from, const std::vector<demo::prompt_record>& ps,
                                      const std::string& path, std::uint64_t seed) {
      rlhf::sampling_options o;
      o.stop_token = rlhf::tokenizer::bos_id;
      o.seed = seed;
      const auto records = rlhf::collect_rankings(b, from, std::span<const demo::prompt_record>(ps), encode_prompt,
                                                  decode_response, labeler, s.k, s.new_tokens, o);
      demo::write_rankings(path, records);
      return to_ranked(demo::read_rankings(path), prompt_text);
    };
    auto rankings = collect_rankings(sft_policy, sets.train, s.out + "/rankings_round1.jsonl", s.seed + 21);
    const auto valid_rankings = collect_rankings(sft_policy, sets.validation, s.out + "/rankings_validation.jsonl", s.seed + 22);
    auto rm = rm_t::from_language_model(b, sft_policy, s.seed);
    rm.trunk().set_attention_memory(s.attention);
    opt_t rm_opt(rlhf::adamw_options{s.rm_lr, 0.9, 0.95, 1e-8, 0.0});
    rlhf::reward_trainer rt(rm, rm_opt);
    const auto train_rm = [&](const std::vector<rlhf::ranked_responses>& data, std::size_t epochs, const std::string& name,
                              const char* label) {
      rlhf::run_options run = run_for(name, label, s.seed + 5 + epochs);
      run.epochs = epochs;
      run.batch_size = 8;
      rt.fit(b, data, run);
      const auto v = rt.evaluate(b, valid_rankings);
      const double bias = rt.normalize_to_demonstrations(b, demonstrations);
      std::printf("  validation: pairwise accuracy %.3f over %.0f pairs, loss %.3f; demonstration bias %+.3f\n", v.accuracy,
                  v.compared_pairs, v.loss, bias);
      return v.accuracy;
    };
    std::printf("\nstep 2: reward model on %zu prompts x K = %zu ranked samples of the SFT policy\n", rankings.size(), s.k);
    const double rm_accuracy_1 = train_rm(rankings, s.rm_epochs, "rm_round1", "  RM");

    // 3. PPO against the RM with the KL penalty to the SFT policy; the value model starts from the RM.
    auto critic = rlhf::value_model_from(b, rm);
    critic.trunk().set_attention_memory(s.attention);
    opt_t policy_opt(rlhf::adamw_options{s.policy_lr, 0.9, 0.95, 1e-8, 0.0});
    opt_t value_opt(rlhf::adamw_options{s.value_lr, 0.9, 0.95, 1e-8, 0.0});
    rlhf::ppo_options po;
    po.max_new_tokens = s.new_tokens;
    po.sampling.stop_token = rlhf::tokenizer::bos_id;
    po.sampling.seed = s.seed + 31;
    po.minibatches = 2;
    // InstructGPT's fixed beta = 0.02 lets this small policy drift ~30 nats from SFT within 90 iterations,
    // into a repeated sentence the reward model overrates (reward hacking); a fixed 0.1 still reached
    // ~23 nats. The adaptive controller steers the per-sequence KL towards kl_target instead.
    po.beta = s.beta;
    po.control = rlhf::kl_control::adaptive;  // Ziegler et al. 2019: steer the KL towards a target
    po.kl_target = s.kl_target;
    po.kl_horizon = 200;  // fast enough to act within this short run
    po.seed = s.seed;
    rlhf::ppo_trainer ppo(policy, sft_policy, critic, rm, policy_opt, value_opt, po);
    // PPO's curves for the plot, read back from the metrics files (complete after a --resume too).
    std::vector<double> curve_score, curve_kl;
    const auto run_ppo = [&](std::size_t iterations, const std::string& name, const char* label, std::uint64_t seed) {
      rlhf::run_options run = run_for(name, label, seed);
      run.iterations = iterations;
      run.batch_size = s.ppo_batch;
      run.checkpoint_every = 10;
      ppo.fit(b, train_prompts, run);
      const auto rows = rlhf::read_csv(run.metrics_path);
      for (std::size_t i = 1; i < rows.size(); ++i) {  // row 0: the header
        const auto column = [&](const char* key) {
          const auto& h = rows[0].fields;
          const auto at = static_cast<std::size_t>(std::find(h.begin(), h.end(), key) - h.begin());
          return std::stod(rows[i].fields.at(at));
        };
        curve_score.push_back(column("rm_score"));
        curve_kl.push_back(column("kl"));
      }
    };
    std::printf("\nstep 3: PPO, %zu iterations of %zu prompts (beta %.2f adaptive, KL target %.0f nats, clip 0.2, "
                "GAE lambda 0.95)\n",
                s.ppo_iterations, s.ppo_batch, po.beta, po.kl_target);
    run_ppo(s.ppo_iterations, "ppo_round1", "  PPO", s.seed + 7);

    // Round 2: new rankings of the current policy's samples, the RM trained on them, PPO continued.
    std::printf("\nround 2: rankings of the PPO policy's samples, RM update, PPO continued\n");
    auto rankings2 = collect_rankings(policy, sets.train, s.out + "/rankings_round2.jsonl", s.seed + 41);
    const double rm_accuracy_2 = train_rm(rankings2, 1, "rm_round2", "  RM (round 2)");
    run_ppo(s.round2_iterations, "ppo_round2", "  PPO (round 2)", s.seed + 8);
    rlhf::write_svg_plot(s.out + "/ppo_curves.svg", "PPO on stories260K: reward-model score and KL to SFT", "iteration",
                         {{"RM score (per sequence)", curve_score}, {"KL(PPO || SFT), nats per sequence", curve_kl}});

    // Report on the test users' prompts.
    std::printf("\nevaluation on %zu test prompts (%zu samples each, labeler's AFINN score)\n", test_prompts.size(),
                s.eval_samples);
    const auto e_pre = evaluate_policy(b, pretrained, test_prompts, s, labeler, s.seed + 51);
    const auto e_sft = evaluate_policy(b, sft_policy, test_prompts, s, labeler, s.seed + 52);
    const auto e_ppo = evaluate_policy(b, policy, test_prompts, s, labeler, s.seed + 53);
    double wins = 0;
    for (std::size_t i = 0; i < test_prompts.size(); ++i) {
      wins += e_ppo.per_prompt[i] > e_sft.per_prompt[i] ? 1.0 : e_ppo.per_prompt[i] == e_sft.per_prompt[i] ? 0.5 : 0.0;
    }
    const double win_rate = wins / static_cast<double>(test_prompts.size());
    const double kl = kl_to(b, policy, sft_policy, test_prompts, s, s.seed + 54);
    std::printf("\n| policy | labeler score (mean) |\n|---|---|\n| pretrained | %+.3f |\n| SFT | %+.3f |\n| PPO | %+.3f |\n",
                e_pre.mean_score, e_sft.mean_score, e_ppo.mean_score);
    std::printf("\nPPO beats SFT on %.1f%% of test prompts; KL(PPO || SFT) = %.2f nats per sequence; RM validation "
                "accuracy %.3f (round 1), %.3f (round 2)\n",
                100 * win_rate, kl, rm_accuracy_1, rm_accuracy_2);
    std::printf("\nsamples (test prompts):\n");
    for (std::size_t i = 0; i < std::min<std::size_t>(3, test_prompts.size()); ++i) {
      std::printf("  prompt: %s\n    SFT: %s\n    PPO: %s\n", sets.test[i].text.c_str(), e_sft.first_samples[i].c_str(),
                  e_ppo.first_samples[i].c_str());
    }
    {
      rlhf::metrics_log results(s.out + "/results.csv");
      results.write({{"rm_accuracy_round1", rm_accuracy_1},
                     {"rm_accuracy_round2", rm_accuracy_2},
                     {"score_pretrained", e_pre.mean_score},
                     {"score_sft", e_sft.mean_score},
                     {"score_ppo", e_ppo.mean_score},
                     {"win_rate_ppo_over_sft", win_rate},
                     {"kl_ppo_sft", kl}});
    }
    std::printf("\nwrote %s/{demonstrations,rankings_*}.jsonl, *_metrics.csv, ppo_curves.svg, results.csv; checkpoints/\n", s.out.c_str());
    if (s.quick && !(e_ppo.mean_score > e_sft.mean_score)) {
      std::fprintf(stderr, "check failed: PPO's labeler score does not beat SFT's\n");
      return 3;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
