/// @file gae_step_map.hpp
/// @brief One step of masked GAE as an affine map of the state carried from later steps, and the
/// associative composition that lets a parallel kernel regroup a row's reverse sweep.
///
/// GAE with masked steps skipped (rlhf/advantages/gae.hpp; Schulman et al. 2016, eq. 16) sweeps a row from
/// its end carrying the state x = (v, a): the value and the advantage of the next valid step (0 past the
/// end). Step t maps it to
///
///     valid t:  (v, a) -> (V_t, (r_t - V_t) + gamma v + gamma lambda a)       A_t is the new a
///     masked t: (v, a) -> (v, a)
///
/// Both are affine maps x -> M x + c with M lower triangular, [[p, 0], [q, s]]; products of such matrices
/// are lower triangular again, so the composition of a run of steps is one map of the same five numbers,
/// and composition is associative. A row is then a suffix scan of step maps: a kernel composes each
/// thread's run of steps, scans the runs across a warp, and applies the result to the state entering
/// from the later part of the row (rlhf/backends/cuda/gae.cuh). Host-and-device code: the CPU tests hold
/// any grouping of the composition to the sequential sweep (tests/backends/gae_step_map_test.cpp).
#pragma once

#include "rlhf/config.hpp"

namespace rlhf::detail {

/// x -> [[p, 0], [q, s]] x + (cv, ca) on the state x = (v, a); the default is the identity (a masked step).
template <class T>
struct gae_step_map {
  T p = T(1);
  T q = T(0);
  T s = T(1);
  T cv = T(0);
  T ca = T(0);

  /// The map of step t. A masked step is the identity and reads neither its reward nor its value (they
  /// may hold anything, NaN included).
  RLHF_HOST_DEVICE static gae_step_map step(T reward, T value, bool valid, T gamma, T gamma_lambda) {
    if (!valid) return gae_step_map{};
    return gae_step_map{T(0), gamma, gamma_lambda, value, reward - value};
  }

  /// The composition "apply `later` first, then this map": the map of this run of steps followed (in time)
  /// by the run of `later`, as a reverse sweep meets them.
  RLHF_HOST_DEVICE gae_step_map after(const gae_step_map& later) const {
    return gae_step_map{p * later.p, q * later.p + s * later.q, s * later.s, p * later.cv + cv,
                        q * later.cv + s * later.ca + ca};
  }

  /// Applies the map to the state (v, a) in place.
  RLHF_HOST_DEVICE void apply(T& v, T& a) const {
    const T nv = p * v + cv;
    const T na = q * v + s * a + ca;
    v = nv;
    a = na;
  }
};

}  // namespace rlhf::detail
