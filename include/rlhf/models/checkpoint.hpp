/// @file checkpoint.hpp
/// @brief Saving and loading a model's parameters (and optimizer state) as safetensors checkpoints.
///
/// A checkpoint is one safetensors file (see rlhf/data/safetensors.hpp): each parameter of the model's
/// `parameter_list` is stored under its name with its matrix shape [rows, cols] and dtype F32 (float)
/// or F64 (double); extra named tensors (optimizer moments, an EMA copy of the weights) sit beside them;
/// string metadata (by convention the model configuration as JSON under "config") goes in the header's
/// "__metadata__". The file is written atomically (temporary file, fsync, rename), so a crash during a
/// save leaves the previous checkpoint intact.
///
/// Loading validates the whole file first (header, offsets, sizes), then checks that every expected
/// tensor is present with the right dtype and shape, and only then copies anything into the backend's
/// buffers: a failed load leaves the model untouched. Errors name the file, the tensor and the mismatch:
///
///     rlhf::load_checkpoint: model.safetensors: tensor 'layers.0.attention.wq': expected shape [64, 64],
///     received [64, 32]
#pragma once

#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/data/safetensors.hpp"
#include "rlhf/error.hpp"
#include "rlhf/models/parameters.hpp"

namespace rlhf {

/// A named tensor saved or loaded beside a model's parameters (e.g. optimizer state: an optimizer's
/// `state()` is such a list).
template <class T, class Space = host_space>
using checkpoint_tensor = named_tensor<T, Space>;

/// A list of extra named tensors.
template <class T, class Space = host_space>
using checkpoint_tensor_list = named_tensor_list<T, Space>;

/// Options of `load_checkpoint`.
struct checkpoint_load_options {
  /// Reject a file holding tensors that are neither a parameter nor an extra tensor (their names are
  /// listed in the error). Off: such tensors are ignored (e.g. to load only a model from a file that
  /// also holds optimizer state).
  bool strict = true;
};

namespace detail {

template <class T, class Space>
struct checkpoint_slot {
  const std::string* name;
  matrix_view<T, Space> value;
};

// Parameters then extras, with unique non-empty names.
template <class T, class Space>
std::vector<checkpoint_slot<T, Space>> checkpoint_slots(std::string_view function, const parameter_list<T, Space>& params,
                                                         const checkpoint_tensor_list<T, Space>& extra) {
  std::vector<checkpoint_slot<T, Space>> slots;
  slots.reserve(params.size() + extra.size());
  for (const auto& p : params) slots.push_back({&p.name, p.value});
  for (const auto& e : extra) slots.push_back({&e.name, e.value});
  std::set<std::string_view> seen;
  for (std::size_t k = 0; k < slots.size(); ++k) {
    const char* arg = k < params.size() ? "params" : "extra";
    const std::string& name = *slots[k].name;
    if (name.empty()) throw_argument_error(function, arg, "non-empty tensor names", "an empty name");
    if (name == "__metadata__")
      throw_argument_error(function, arg, "a tensor name", "the reserved name '__metadata__'");
    if (!seen.insert(name).second)
      throw_argument_error(function, arg, "unique tensor names across 'params' and 'extra'",
                           "the name '" + name + "' twice");
    if (slots[k].value.data == nullptr && slots[k].value.size() != 0)
      throw_argument_error(function, arg, "a view with data for tensor '" + name + "'", "a null view of shape " +
                                                                                             shape_string(slots[k].value));
  }
  return slots;
}

[[noreturn]] inline void throw_checkpoint(const std::filesystem::path& path, std::string_view what) {
  throw_safetensors("rlhf::load_checkpoint", path, what);
}

}  // namespace detail

/// Saves a model's parameters, extra tensors and metadata to a safetensors file, atomically.
///
/// Values are copied from the backend to the host with `rlhf::to_host` (host-accessible memory is
/// written directly after a `synchronize()`). Gradients are not saved.
/// @tparam B the backend (any rlhf::backend)
/// @tparam T float (stored as F32) or double (stored as F64)
/// @param b the backend that owns the views' memory
/// @param path the checkpoint file; its directory must exist; an existing file is replaced
/// @param params the model's parameters (`value` of each is saved under `name`, shape [rows, cols])
/// @param extra further named tensors, e.g. optimizer state
/// @param metadata strings stored in the header, e.g. {{"config", "<model config as JSON>"}}
/// @note Throws `rlhf::invalid_argument` for empty, reserved or duplicate names (before writing) and for
///       I/O errors (after removing the temporary file; an existing checkpoint is left as it was).
template <class B, class T>
void save_checkpoint(const B& b, const std::filesystem::path& path, const parameter_list<T, typename B::memory_space>& params,
                     const checkpoint_tensor_list<T, typename B::memory_space>& extra = {},
                     const std::map<std::string, std::string>& metadata = {}) {
  detail::check_backend<B>();
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "rlhf::save_checkpoint: parameters must be float or double");
  using Space = typename B::memory_space;
  const auto slots = detail::checkpoint_slots<T, Space>("rlhf::save_checkpoint", params, extra);
  std::vector<std::vector<T>> host;  // copies of device memory (unused for host-accessible spaces)
  std::vector<safetensors_tensor_ref> refs;
  refs.reserve(slots.size());
  if constexpr (Space::host_accessible) {
    b.synchronize();  // pending work on the parameters must be finished before their bytes are read
  } else {
    host.reserve(slots.size());
    for (const auto& s : slots) host.push_back(to_host(b, s.value));
  }
  for (std::size_t k = 0; k < slots.size(); ++k) {
    const auto& s = slots[k];
    std::span<const T> data;
    if constexpr (Space::host_accessible) data = std::span<const T>(s.value.data, s.value.size());
    else data = std::span<const T>(host[k]);
    refs.push_back(make_tensor_ref<T>(*s.name, data, {s.value.rows, s.value.cols}));
  }
  write_safetensors(path, refs, metadata);
}

/// Loads a checkpoint written by `save_checkpoint` (or any safetensors file with matching names, dtypes
/// and shapes) into a model's parameters and extra tensors, and returns the file's metadata.
///
/// A tensor matches a view of shape [rows, cols] when its shape is [rows, cols], or [cols] when
/// rows == 1 (vectors written by PyTorch are 1-D). Nothing is copied unless every tensor matches.
/// @tparam B the backend (any rlhf::backend)
/// @tparam T float (expects F32) or double (expects F64)
/// @param b the backend that owns the views' memory
/// @param path the checkpoint file
/// @param params the model's parameters: each `value` is overwritten from the tensor named `name`
/// @param extra further named tensors to overwrite, e.g. optimizer state
/// @param options whether tensors the caller did not ask for are an error (default) or ignored
/// @return the metadata (empty if the file has none)
/// @note Throws `rlhf::invalid_argument`: "rlhf::read_safetensors: <path>: ..." for a corrupted or
///       truncated file, "rlhf::load_checkpoint: <path>: tensor '<name>': expected ..., received ..." for
///       a missing tensor or a wrong dtype or shape, and for unexpected tensors in strict mode.
template <class B, class T>
std::map<std::string, std::string> load_checkpoint(const B& b, const std::filesystem::path& path,
                                                   const parameter_list<T, typename B::memory_space>& params,
                                                   const checkpoint_tensor_list<T, typename B::memory_space>& extra = {},
                                                   const checkpoint_load_options& options = {}) {
  detail::check_backend<B>();
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "rlhf::load_checkpoint: parameters must be float or double");
  using Space = typename B::memory_space;
  const auto slots = detail::checkpoint_slots<T, Space>("rlhf::load_checkpoint", params, extra);
  safetensors_file file = read_safetensors(path);

  // Check everything before copying anything.
  constexpr safetensors_dtype want_dtype = dtype_of<T>;
  std::set<std::string_view> expected;
  for (const auto& s : slots) {
    expected.insert(*s.name);
    const std::string where = "tensor '" + *s.name + "': ";
    const std::string want_shape = shape_string(s.value);
    const auto it = file.tensors.find(*s.name);
    if (it == file.tensors.end())
      detail::throw_checkpoint(path, where + "expected a tensor of dtype " + dtype_name(want_dtype) + " and shape " +
                                         want_shape + ", received none (the file has no tensor of that name)");
    const safetensors_tensor& t = it->second;
    if (t.dtype != want_dtype)
      detail::throw_checkpoint(path, where + "expected dtype " + dtype_name(want_dtype) + ", received " +
                                         dtype_name(t.dtype));
    const bool same = t.shape == std::vector<std::size_t>{s.value.rows, s.value.cols};
    const bool one_d = s.value.rows == 1 && t.shape == std::vector<std::size_t>{s.value.cols};
    if (!same && !one_d)
      detail::throw_checkpoint(path, where + "expected shape " + want_shape +
                                         (s.value.rows == 1 ? " (or [" + std::to_string(s.value.cols) + "])" : "") +
                                         ", received " + shape_string(t.shape));
  }
  if (options.strict) {
    std::string unexpected;
    std::size_t count = 0;
    for (const auto& [name, t] : file.tensors) {
      if (expected.count(name)) continue;
      if (++count <= 10) unexpected += (count > 1 ? ", '" : "'") + name + "'";
    }
    if (count > 10) unexpected += " and " + std::to_string(count - 10) + " more";
    if (count != 0)
      detail::throw_checkpoint(path, "expected only the requested tensors (" + std::to_string(slots.size()) +
                                         "), received " + std::to_string(count) + " more: " + unexpected +
                                         " (set checkpoint_load_options::strict = false to ignore them)");
  }

  std::vector<T> host;
  for (const auto& s : slots) {
    const safetensors_tensor& t = file.tensors.at(*s.name);
    host.resize(s.value.size());
    if (!host.empty()) std::memcpy(host.data(), t.bytes.data(), host.size() * sizeof(T));
    b.copy(vector_view<const T, host_space>{host.data(), host.size()}, s.value.flat());
    b.synchronize();  // `host` is reused by the next tensor
  }
  return std::move(file.metadata);
}

}  // namespace rlhf
