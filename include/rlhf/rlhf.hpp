/// @file rlhf.hpp
/// @brief Umbrella header: the whole library for the backends this translation unit can use.
///
/// Includes the core (every algorithm, the reference backend) and, when Eigen is available
/// (`__has_include(<Eigen/Core>)`), the Eigen backend.
#pragma once

#include "rlhf/config.hpp"
#include "rlhf/error.hpp"

#include "rlhf/backends/concepts.hpp"
#include "rlhf/backends/generic_only.hpp"
#include "rlhf/backends/host_buffer.hpp"
#include "rlhf/backends/memory.hpp"
#include "rlhf/backends/reference.hpp"
#include "rlhf/backends/view.hpp"
#if __has_include(<Eigen/Core>)
#include "rlhf/backends/eigen.hpp"
#endif
