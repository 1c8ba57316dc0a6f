/// @file parameters.hpp
/// @brief How a model exposes its trainable tensors to optimizers and checkpoints.
///
/// A model owns its parameter and gradient buffers (in its backend's memory). It lends them out as a
/// list of `parameter_view`s: a stable unique name, the value and the gradient, both viewed as a matrix
/// of the parameter's shape (a vector parameter is 1 x n). Optimizers update `value` from `grad`;
/// checkpoints save and load `value` under `name`. The list's order is fixed for a given model
/// configuration, so an optimizer may key its state by position; it should still check the names.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "rlhf/backends/view.hpp"

namespace rlhf {

/// One trainable tensor of a model: its name, value and gradient (same shape, same memory space).
template <class T, class Space = host_space>
struct parameter_view {
  std::string name;             ///< unique within the model, e.g. "layers.0.attention.wq"
  matrix_view<T, Space> value;  ///< the parameter
  matrix_view<T, Space> grad;   ///< its gradient, same shape; accumulated by backward passes
};

/// A named tensor that is not a parameter: optimizer or EMA state, or any extra tensor saved beside a
/// model's parameters in a checkpoint (e.g. "adamw.m.layers.0.attention.wq"). A writable view, so a
/// checkpoint loader can fill it.
template <class T, class Space = host_space>
struct named_tensor {
  std::string name;             ///< unique within its list
  matrix_view<T, Space> value;  ///< the buffer; its shape is the tensor's shape
};

/// A list of named tensors.
template <class T, class Space = host_space>
using named_tensor_list = std::vector<named_tensor<T, Space>>;

/// A model's parameters, in a fixed order.
template <class T, class Space = host_space>
using parameter_list = std::vector<parameter_view<T, Space>>;

/// Total number of scalar parameters in a list.
template <class T, class Space>
std::size_t parameter_count(const parameter_list<T, Space>& params) {
  std::size_t n = 0;
  for (const auto& p : params) n += p.value.size();
  return n;
}

}  // namespace rlhf
