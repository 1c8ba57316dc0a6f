/// @file scalar_head.hpp
/// @brief A linear head from hidden states to one scalar per row, `s = h . w + c`: the projection that
///        replaces the unembedding in a reward model (one score per sequence) and a value model (one
///        value per token) (Ouyang et al. 2022, §3.5; Stiennon et al. 2020, §3.4).
#pragma once

#include <cstddef>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "rlhf/backends/checks.hpp"
#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/view.hpp"
#include "rlhf/error.hpp"
#include "rlhf/models/layers/linear.hpp"
#include "rlhf/models/parameters.hpp"

namespace rlhf {

namespace detail {

// out[i] += bias[0] (the bias stays in backend memory: no host round trip per call).
template <class T, class S>
struct scalar_head_add_bias {
  vector_view<T, S> out;
  vector_view<const T, S> bias;
  RLHF_HOST_DEVICE void operator()(std::size_t i) const { out[i] = out[i] + bias[0]; }
};

// bias_grad[0] += delta.
template <class T, class S>
struct scalar_head_add_to_first {
  vector_view<T, S> v;
  double delta = 0.0;
  RLHF_HOST_DEVICE void operator()(std::size_t) const { v[0] = static_cast<T>(static_cast<double>(v[0]) + delta); }
};

struct scalar_head_as_double {
  template <class T>
  RLHF_HOST_DEVICE double operator()(T v) const {
    return static_cast<double>(v);
  }
};
struct scalar_head_plus {
  RLHF_HOST_DEVICE double operator()(double a, double b) const { return a + b; }
};

}  // namespace detail

/// A linear map from D-wide hidden rows to scalars, `out[i] = hidden(i, :) . weight + bias`, with its
/// parameters ("<prefix>weight" [1, D], "<prefix>bias" [1, 1]) and their gradients in backend memory.
/// @tparam B a complete backend
/// @tparam T float or double
template <class B, class T>
class scalar_head {
 public:
  /// A head of width `dim` with zero weight and bias, parameters named `prefix` + "weight" / "bias".
  scalar_head(const B& b, std::size_t dim, std::string prefix)
      : prefix_(std::move(prefix)),
        weight_(allocate_filled<T>(b, 1, dim, T(0))),
        bias_(allocate_filled<T>(b, 1, 1, T(0))),
        weight_grad_(allocate_filled<T>(b, 1, dim, T(0))),
        bias_grad_(allocate_filled<T>(b, 1, 1, T(0))) {}

  /// Width D.
  std::size_t dim() const { return weight_.view().cols; }

  /// Draws the weight from N(0, stddev^2) (seeded, on the host) and sets the bias to 0.
  void init_random(const B& b, std::uint64_t seed, double stddev) {
    detail::check_non_negative("rlhf::scalar_head::init_random", "stddev", stddev);
    std::mt19937_64 g(seed);
    std::normal_distribution<double> d(0.0, stddev);
    std::vector<T> host(dim());
    for (auto& x : host) x = static_cast<T>(d(g));
    b.copy(vector_view<const T, host_space>{host.data(), host.size()}, weight_.view().flat());
    b.fill(bias_.view().flat(), T(0));
  }

  /// The head's two parameters.
  void append_parameters(parameter_list<T, typename B::memory_space>& list) {
    list.push_back({prefix_ + "weight", weight_.view(), weight_grad_.view()});
    list.push_back({prefix_ + "bias", bias_.view(), bias_grad_.view()});
  }
  void zero_grad(const B& b) {
    b.fill(weight_grad_.view().flat(), T(0));
    b.fill(bias_grad_.view().flat(), T(0));
  }

  /// The bias (one host copy).
  double bias(const B& b) const { return static_cast<double>(to_host(b, bias_.view().flat())[0]); }
  /// Adds `delta` to the bias: the shift that gives the demonstrations a mean reward of 0.
  void add_to_bias(const B& b, double delta) {
    b.for_each_index(1, detail::scalar_head_add_to_first<T, typename B::memory_space>{bias_.view().flat(), delta});
  }

  /// Copies the weight and bias of another head of the same width.
  void copy_from(const B& b, const scalar_head& other) {
    detail::check_same_shape("rlhf::scalar_head::copy_from", "other", other.weight_.view(), "this head's weight",
                             weight_.view());
    b.copy(other.weight_.view().flat(), weight_.view().flat());
    b.copy(other.bias_.view().flat(), bias_.view().flat());
  }

  /// `out[i] = hidden(i, :) . weight + bias` (one GEMM with a single output column).
  void forward(const B& b, backend_matrix<B, const T> hidden, backend_vector<B, T> out) const {
    if (hidden.rows == 0) return;
    linear_forward(b, hidden, as_const(weight_.view()), backend_matrix<B, T>{out.data, out.size, 1});
    b.for_each_index(out.size, detail::scalar_head_add_bias<T, typename B::memory_space>{out, as_const(bias_.view().flat())});
  }

  /// Backward of forward: writes `d_hidden(i, :) = d_out[i] * weight` and adds `sum_i d_out[i] hidden(i, :)`
  /// and `sum_i d_out[i]` to the weight and bias gradients.
  void backward(const B& b, backend_matrix<B, const T> hidden, backend_vector<B, const T> d_out,
                backend_matrix<B, T> d_hidden) {
    if (hidden.rows == 0) return;
    linear_backward(b, hidden, as_const(weight_.view()), backend_matrix<B, const T>{d_out.data, d_out.size, 1}, d_hidden,
                    weight_grad_.view());
    const double sum = b.transform_reduce(0.0, detail::scalar_head_plus{}, detail::scalar_head_as_double{}, d_out);
    b.for_each_index(1, detail::scalar_head_add_to_first<T, typename B::memory_space>{bias_grad_.view().flat(), sum});
  }

 private:
  std::string prefix_;
  buffer_t<B, T> weight_, bias_, weight_grad_, bias_grad_;
};

}  // namespace rlhf
