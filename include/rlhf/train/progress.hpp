/// @file progress.hpp
/// @brief Training progress on the console: a live bar with rate and ETA when the output is a terminal,
///        one plain line per report otherwise (logs and CI stay readable).
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <string>

namespace rlhf {

/// A progress reporter for `total` steps of a named phase.
///
///     rlhf::progress bar("PPO", iterations);
///     for (...) { ...; bar.update(i + 1, "score 1.23  kl 0.41"); }
///     bar.finish();
///
/// On a terminal: `PPO  [#######.......]  42/100  3.1 it/s  ETA 19s  score 1.23  kl 0.41`, redrawn in
/// place (at most 10 times a second). Elsewhere: a line every `plain_every` steps and at the end.
class progress {
 public:
  /// @param label the phase, printed first
  /// @param total number of steps (0: unknown, no bar or ETA)
  /// @param out the stream (stderr by default, so stdout stays for results)
  /// @param plain_every in plain mode, print every this many steps (0: total / 10)
  progress(std::string label, std::size_t total, std::FILE* out = stderr, std::size_t plain_every = 0)
      : label_(std::move(label)),
        total_(total),
        out_(out),
        tty_(isatty(fileno(out)) != 0),
        every_(plain_every != 0 ? plain_every : (total >= 10 ? total / 10 : 1)),
        start_(clock::now()),
        last_draw_(start_ - std::chrono::seconds(1)) {}

  /// Whether the bar is drawn in place (the stream is a terminal).
  bool interactive() const { return tty_; }

  /// Reports that `done` steps are complete, with an optional status text (metrics).
  void update(std::size_t done, const std::string& status = "") {
    done_ = done;
    const auto now = clock::now();
    if (tty_) {
      if (now - last_draw_ < std::chrono::milliseconds(100) && done != total_) return;
      last_draw_ = now;
      std::fprintf(out_, "\r%s\033[K", line(now, status).c_str());
    } else if (done % every_ == 0 || done == total_) {
      std::fprintf(out_, "%s\n", line(now, status).c_str());
    }
    std::fflush(out_);
  }

  /// Ends the bar (a newline on a terminal).
  void finish() {
    if (tty_) std::fprintf(out_, "\n");
    std::fflush(out_);
  }

  /// The text of a report (also used for plain lines).
  std::string line(std::chrono::steady_clock::time_point now, const std::string& status) const {
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
    std::string s = label_ + "  ";
    char buf[160];
    if (total_ > 0) {
      if (tty_) {
        constexpr std::size_t width = 24;
        const std::size_t filled = done_ >= total_ ? width : done_ * width / total_;
        s += "[" + std::string(filled, '#') + std::string(width - filled, '.') + "]  ";
      }
      std::snprintf(buf, sizeof buf, "%zu/%zu  %.2f it/s", done_, total_, rate);
      s += buf;
      if (rate > 0 && done_ < total_) {
        std::snprintf(buf, sizeof buf, "  ETA %.0fs", static_cast<double>(total_ - done_) / rate);
        s += buf;
      } else {
        std::snprintf(buf, sizeof buf, "  %.1fs", elapsed);
        s += buf;
      }
    } else {
      std::snprintf(buf, sizeof buf, "%zu  %.2f it/s", done_, rate);
      s += buf;
    }
    if (!status.empty()) s += "  " + status;
    return s;
  }

 private:
  using clock = std::chrono::steady_clock;
  std::string label_;
  std::size_t total_;
  std::FILE* out_;
  bool tty_;
  std::size_t every_;
  std::size_t done_ = 0;
  clock::time_point start_, last_draw_;
};

}  // namespace rlhf
