/// @file atomic_write.hpp
/// @brief Replacing a file's content atomically: write a temporary file, fsync it, rename it over the target.
///
/// Shared by the text writers of the data layer (JSONL prompt, demonstration and ranking files). A
/// crash or an error at any point leaves either the old file or the complete new one, never a torn
/// file: the bytes go to `<path>.tmp.<pid>.<counter>` in the target's directory (same file system,
/// so `rename` is atomic), which is flushed with `fsync`, renamed over the target, and the directory
/// is `fsync`ed (best effort) so that the rename itself survives a power loss. `write_safetensors` and
/// the training checkpoints write through it too.
///
/// @note POSIX only (Linux, macOS).
#pragma once

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <span>
#include <sstream>
#include <string>
#include <string_view>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rlhf/error.hpp"

namespace rlhf::detail {

/// "FUNCTION: PATH: WHAT" as an rlhf::invalid_argument.
[[noreturn]] inline void throw_file_error(std::string_view function, const std::filesystem::path& path,
                                          std::string_view what) {
  std::ostringstream os;
  os << function << ": " << path.string() << ": " << what;
  throw invalid_argument(os.str());
}

/// strerror text with the errno value, for I/O error messages.
inline std::string errno_message(int err) {
  return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")";
}

/// Process-wide counter that makes temporary names unique across threads of one process.
inline std::atomic<unsigned long long>& atomic_write_counter() {
  static std::atomic<unsigned long long> counter{0};
  return counter;
}

/// Replaces the content of `path` with the concatenation of `pieces`, atomically (see the file comment).
/// The pieces are written one after the other, so large payloads (checkpoint tensors) need no joined copy.
/// @param function the public function that writes, named in error messages (e.g. "rlhf::write_prompts")
/// @param path the file to create or replace; its directory must exist
/// @param pieces the complete new content, in order
/// @note Throws rlhf::invalid_argument "FUNCTION: PATH: cannot ...: <strerror> (errno N)" on any I/O
///       error, after removing the temporary file; the target is then untouched.
inline void write_file_atomically(std::string_view function, const std::filesystem::path& path,
                                  std::span<const std::span<const std::byte>> pieces) {
  const std::filesystem::path tmp = path.string() + ".tmp." + std::to_string(static_cast<long long>(::getpid())) +
                                    "." + std::to_string(atomic_write_counter().fetch_add(1));
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    throw_file_error(function, path, "cannot create the temporary file " + tmp.string() + ": " + errno_message(errno));
  // Any failure from here on closes the descriptor (if still open) and removes the temporary file.
  struct cleanup {
    const std::filesystem::path& p;
    int& fd;
    bool armed = true;
    ~cleanup() {
      if (fd >= 0) ::close(fd);
      if (armed) ::unlink(p.c_str());
    }
  } guard{tmp, fd};
  for (const std::span<const std::byte> piece : pieces) {
    const std::byte* data = piece.data();
    std::size_t left = piece.size();
    while (left > 0) {
      // Loop over partial writes and EINTR; Linux writes at most ~2 GiB per call.
      const std::size_t chunk = left < (std::size_t(1) << 30) ? left : (std::size_t(1) << 30);
      const ssize_t n = ::write(fd, data, chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0)
        throw_file_error(function, path,
                         "cannot write the temporary file " + tmp.string() + ": " +
                             (n < 0 ? errno_message(errno) : std::string("no progress (0 bytes written)")));
      data += n;
      left -= static_cast<std::size_t>(n);
    }
  }
  // The data must be on disk before the rename makes it visible under the target's name.
  if (::fsync(fd) != 0)
    throw_file_error(function, path, "cannot fsync the temporary file " + tmp.string() + ": " + errno_message(errno));
  const int to_close = fd;
  fd = -1;
  if (::close(to_close) != 0)
    throw_file_error(function, path, "cannot close the temporary file " + tmp.string() + ": " + errno_message(errno));
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    throw_file_error(function, path,
                     "cannot rename the temporary file " + tmp.string() + " over it: " + errno_message(errno));
  guard.armed = false;
  // Make the rename durable too (best effort: some file systems cannot fsync a directory).
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

/// Replaces the content of `path` with `bytes`, atomically (see the file comment).
inline void write_file_atomically(std::string_view function, const std::filesystem::path& path,
                                  std::string_view bytes) {
  const std::span<const std::byte> one(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size());
  write_file_atomically(function, path, std::span<const std::span<const std::byte>>(&one, 1));
}

}  // namespace rlhf::detail
