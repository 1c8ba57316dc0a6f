/// @file training_run.hpp
/// @brief The loop every trainer's fit() runs: a deterministic data order, per-step metrics to CSV or
///        JSONL, a progress bar, periodic checkpoints, and resumption that reproduces the uninterrupted run.
///
/// Why resumption is exact: the batch of step s is a pure function of (seed, s) (rlhf::epoch_order: each
/// epoch is its own seeded permutation, so no generator state has to survive an interruption), and a
/// checkpoint holds everything else a step reads (the models, the optimizers' state and step counts, and
/// for PPO its generator and KL coefficient). A resumed run loads the newest checkpoint, cuts the metrics
/// file back to the rows of the steps that checkpoint holds, and repeats the lost steps bit for bit.
///
/// Checkpoint directory layout (`run_options::checkpoint_dir`):
///
///     latest            "step-000120": the newest complete checkpoint (replaced atomically)
///     step-000120/      run_state.json {"step", "total_steps"} and the trainer's files
///
/// A checkpoint is written into `step-N.partial/` and renamed to `step-N/` when complete; only then does
/// `latest` move to it and the older one go. An interruption at any moment leaves a complete checkpoint.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "rlhf/data/atomic_write.hpp"
#include "rlhf/data/json.hpp"
#include "rlhf/error.hpp"
#include "rlhf/train/metrics_log.hpp"
#include "rlhf/train/progress.hpp"

namespace rlhf {

/// How a trainer's fit() runs: sizes, data order, logging, checkpoints.
struct run_options {
  std::size_t epochs = 1;      ///< SFT and RM: passes over the training data
  std::size_t iterations = 0;  ///< PPO: iterations (required there)
  std::size_t batch_size = 16; ///< rows (SFT), ranked prompts (RM) or prompts (PPO) per step
  std::size_t ptx_batch_size = 0;  ///< PPO-ptx: pretraining rows per iteration (0: batch_size)
  std::uint64_t seed = 1;      ///< the data order (see rlhf::epoch_order)
  std::filesystem::path metrics_path;  ///< per-step metrics, ".csv" or ".jsonl" (empty: none)
  bool show_progress = true;   ///< a progress bar (terminal) or plain lines on stderr
  std::string label;           ///< the progress label (empty: the trainer's name)
  std::filesystem::path checkpoint_dir;  ///< where checkpoints go (empty: none)
  std::size_t checkpoint_every = 0;      ///< steps between checkpoints (0: only when the call ends)
  bool checkpoint_at_end = true;         ///< also checkpoint when the call ends (finished or stop_after)
  bool resume = true;          ///< continue from checkpoint_dir's newest checkpoint when there is one
  std::size_t stop_after = 0;  ///< end this call after this many steps (0: run to the end), e.g. a time slot
  std::size_t eval_every = 0;  ///< steps between validation evaluations (0: at the end only)
};

/// What a fit() call did.
struct run_result {
  std::size_t total_steps = 0;   ///< steps of the whole run
  std::size_t resumed_from = 0;  ///< steps a loaded checkpoint held (0: a fresh start)
  std::size_t steps_done = 0;    ///< steps complete when the call returned
  bool finished = false;         ///< steps_done == total_steps
  std::vector<metrics_row> history;  ///< the metrics of the steps this call ran, in order
  /// The last value of a metric in history, NaN when absent or never finite (e.g. "validation_nll").
  double last(std::string_view name) const {
    for (auto it = history.rbegin(); it != history.rend(); ++it)
      for (const auto& [k, v] : *it)
        if (k == name && std::isfinite(v)) return v;
    return std::nan("");
  }
};

/// A deterministic order over n items, epoch after epoch: epoch e is a permutation drawn from a generator
/// seeded by (seed, e) alone, so that the items of any step can be recomputed after an interruption.
class epoch_order {
 public:
  epoch_order(std::size_t n, std::uint64_t seed) : n_(n), seed_(seed) {}

  std::size_t size() const { return n_; }

  /// The permutation of epoch e.
  const std::vector<std::size_t>& epoch(std::size_t e) {
    if (!cached_ || cached_epoch_ != e) {
      perm_.resize(n_);
      std::iota(perm_.begin(), perm_.end(), std::size_t{0});
      std::seed_seq seq{static_cast<std::uint32_t>(seed_), static_cast<std::uint32_t>(seed_ >> 32),
                        static_cast<std::uint32_t>(e), static_cast<std::uint32_t>(static_cast<std::uint64_t>(e) >> 32)};
      std::mt19937_64 g(seq);
      std::shuffle(perm_.begin(), perm_.end(), g);
      cached_ = true;
      cached_epoch_ = e;
    }
    return perm_;
  }

  /// Batch `index` of an epoch cut into batches of `batch` items (the last one may be shorter).
  std::vector<std::size_t> epoch_batch(std::size_t batch, std::size_t index) {
    const std::size_t per_epoch = batches_per_epoch(batch);
    const auto& p = epoch(index / per_epoch);
    const std::size_t first = (index % per_epoch) * batch;
    return {p.begin() + static_cast<std::ptrdiff_t>(first),
            p.begin() + static_cast<std::ptrdiff_t>(std::min(n_, first + batch))};
  }

  /// Batch `index` of the endless stream of epochs cut into batches of exactly `batch` items (a batch
  /// may span two epochs).
  std::vector<std::size_t> stream_batch(std::size_t batch, std::size_t index) {
    std::vector<std::size_t> out;
    out.reserve(batch);
    for (std::size_t pos = index * batch; out.size() < batch; ++pos) out.push_back(epoch(pos / n_)[pos % n_]);
    return out;
  }

  std::size_t batches_per_epoch(std::size_t batch) const { return (n_ + batch - 1) / batch; }

 private:
  std::size_t n_;
  std::uint64_t seed_;
  bool cached_ = false;
  std::size_t cached_epoch_ = 0;
  std::vector<std::size_t> perm_;
};

namespace detail {

inline std::string checkpoint_name(std::size_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%06zu", step);
  return buf;
}

/// The newest complete checkpoint in `dir` (the one `latest` names), or nothing.
inline std::optional<std::filesystem::path> latest_checkpoint(std::string_view fn, const std::filesystem::path& dir) {
  std::ifstream in(dir / "latest");
  if (!in) return std::nullopt;
  std::string name;
  std::getline(in, name);
  const auto path = dir / name;
  if (name.empty() || !std::filesystem::is_directory(path)) {
    throw_argument_error(fn, "run.checkpoint_dir", "'latest' naming a checkpoint directory in " + dir.string(),
                         "'" + name + "'");
  }
  return path;
}

/// Writes a checkpoint of `step` with `write(directory)`, then makes it the latest (see the file comment).
inline void write_checkpoint(std::string_view fn, const std::filesystem::path& dir, std::size_t step, std::size_t total,
                             const std::function<void(const std::filesystem::path&)>& write) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  const std::string name = checkpoint_name(step);
  const fs::path partial = dir / (name + ".partial"), final_dir = dir / name;
  fs::remove_all(partial);
  fs::create_directories(partial);
  write(partial);
  json_value state = json_value::object();
  state.set("step", static_cast<std::uint64_t>(step));
  state.set("total_steps", static_cast<std::uint64_t>(total));
  write_file_atomically(fn, partial / "run_state.json", serialize_json(state, 2) + "\n");
  std::optional<fs::path> previous;
  std::ifstream in(dir / "latest");
  if (in) {
    std::string old;
    std::getline(in, old);
    if (!old.empty() && old != name) previous = dir / old;
  }
  fs::remove_all(final_dir);
  fs::rename(partial, final_dir);
  write_file_atomically(fn, dir / "latest", name + "\n");
  if (previous) fs::remove_all(*previous);
}

/// The step count a checkpoint directory holds.
inline std::size_t checkpoint_step(std::string_view fn, const std::filesystem::path& path) {
  std::ifstream in(path / "run_state.json");
  if (!in) throw_argument_error(fn, "run.checkpoint_dir", "run_state.json in " + path.string(), "none");
  std::stringstream text;
  text << in.rdbuf();
  return static_cast<std::size_t>(parse_json(text.str()).at("step").as_uint64());
}

/// Keeps the first `rows` data rows of a metrics file (and a CSV's header): the rows of steps a resumed
/// run repeats go, so that the file ends up as the uninterrupted run's.
inline void keep_first_metrics_rows(std::string_view fn, const std::filesystem::path& path, std::size_t rows) {
  std::ifstream in(path);
  if (!in) return;
  const bool csv = path.extension() == ".csv";
  std::string line, kept;
  std::size_t n = 0;
  while (std::getline(in, line) && n < rows + (csv ? 1 : 0)) {
    kept += line + "\n";
    ++n;
  }
  in.close();
  write_file_atomically(fn, path, kept);
}

inline std::string status_text(const metrics_row& row, std::size_t fields) {
  std::string s;
  char buf[64];
  for (std::size_t i = 0, shown = 0; i < row.size() && shown < fields; ++i) {
    if (row[i].first == "step" || row[i].first == "epoch" || !std::isfinite(row[i].second)) continue;
    std::snprintf(buf, sizeof buf, "%s%s %.4g", shown ? "  " : "", row[i].first.c_str(), row[i].second);
    s += buf;
    ++shown;
  }
  return s;
}

/// The loop of every fit(): resume, run steps [done, total), log, report progress, checkpoint.
/// @param step runs step s and returns its metrics ("step" is prepended here)
/// @param save writes the trainer's state into a directory
/// @param load restores it from a directory
/// A rank's part in the run loop of a data-parallel job: only the writer (rank 0) writes metrics,
/// progress and checkpoints; every rank resumes from the same checkpoint; `barrier` (when set) runs after
/// each checkpoint so that no rank goes on (and could fail and resume) before the checkpoint is whole.
struct run_rank {
  bool writer = true;
  std::function<void()> barrier;
};

inline run_result run_training_loop(std::string_view fn, const run_options& run, std::string_view default_label,
                                    std::size_t total, const std::function<metrics_row(std::size_t)>& step,
                                    const std::function<void(const std::filesystem::path&)>& save,
                                    const std::function<void(const std::filesystem::path&)>& load,
                                    const run_rank& rank = {}) {
  run_result r;
  r.total_steps = total;
  const bool checkpoints = !run.checkpoint_dir.empty();
  if (!checkpoints && run.checkpoint_every != 0) {
    throw_argument_error(fn, "run.checkpoint_dir", "a directory (run.checkpoint_every is set)", "empty");
  }
  if (checkpoints && run.resume) {
    if (const auto latest = latest_checkpoint(fn, run.checkpoint_dir)) {
      const std::size_t held = checkpoint_step(fn, *latest);
      if (held > total) {
        throw_argument_error(fn, "run.checkpoint_dir", "a checkpoint of at most " + std::to_string(total) + " steps",
                             "one of " + std::to_string(held) + " steps (" + latest->string() + ")");
      }
      load(*latest);
      r.resumed_from = held;
    }
  }
  const auto checkpoint = [&](std::size_t step_count) {
    if (rank.writer) write_checkpoint(fn, run.checkpoint_dir, step_count, total, save);
    if (rank.barrier) rank.barrier();
  };
  std::optional<metrics_log> log;
  if (!run.metrics_path.empty() && rank.writer) {
    if (r.resumed_from > 0) keep_first_metrics_rows(fn, run.metrics_path, r.resumed_from);
    log.emplace(run.metrics_path, r.resumed_from > 0);
  }
  std::optional<progress> bar;
  if (run.show_progress && rank.writer) {
    bar.emplace(run.label.empty() ? std::string(default_label) : run.label, total);
    if (r.resumed_from > 0) bar->update(r.resumed_from, "resumed");
  }
  std::size_t s = r.resumed_from, saved = r.resumed_from;
  const std::size_t end = run.stop_after == 0 ? total : std::min(total, r.resumed_from + run.stop_after);
  for (; s < end; ++s) {
    metrics_row row = step(s);
    row.insert(row.begin(), {"step", static_cast<double>(s + 1)});
    if (log) log->write(row);
    if (bar) bar->update(s + 1, status_text(row, 3));
    r.history.push_back(std::move(row));
    if (checkpoints && run.checkpoint_every != 0 && (s + 1) % run.checkpoint_every == 0) {
      checkpoint(s + 1);
      saved = s + 1;
    }
  }
  if (checkpoints && run.checkpoint_at_end && saved != s) checkpoint(s);
  if (bar) bar->finish();
  r.steps_done = s;
  r.finished = s == total;
  return r;
}

/// Whether validation runs after step s (0-based) of `total`.
inline bool evaluate_after(const run_options& run, std::size_t s, std::size_t total) {
  return s + 1 == total || (run.eval_every != 0 && (s + 1) % run.eval_every == 0);
}

inline void check_run_options(std::string_view fn, const run_options& run) {
  check_positive(fn, "run.batch_size", static_cast<double>(run.batch_size));
}

}  // namespace detail
}  // namespace rlhf
