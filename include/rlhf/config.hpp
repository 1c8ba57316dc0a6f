/// @file config.hpp
/// @brief Version, the one device-annotation macro, and feature macros.
///
/// This is the only header (besides `backends/cuda/`) that looks at the compiler: every other header
/// stays nvcc-agnostic and marks host-and-device callable code with `RLHF_HOST_DEVICE`.
#pragma once

// The version is parsed from these three lines by CMake: keep them in this form.
#define RLHF_VERSION_MAJOR 0
#define RLHF_VERSION_MINOR 1
#define RLHF_VERSION_PATCH 0

#define RLHF_VERSION_STRING "0.1.0"

#if defined(__cplusplus) && __cplusplus < 202002L && !defined(_MSVC_LANG)
#error "rlhf requires C++20: compile with -std=c++20 (CMake: target_link_libraries(... rlhf::core) sets it)."
#endif

/// Marks a function or functor as callable from host code and, under a CUDA compiler, from device code.
/// Element functors passed to backend primitives must carry it so that a device backend can run them.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define RLHF_HOST_DEVICE __host__ __device__
#define RLHF_HAS_CUDA_COMPILER 1
#else
#define RLHF_HOST_DEVICE
#define RLHF_HAS_CUDA_COMPILER 0
#endif

/// Forces inlining of small element functors in hot loops.
#if defined(__GNUC__) || defined(__clang__)
#define RLHF_FORCE_INLINE inline __attribute__((always_inline))
#else
#define RLHF_FORCE_INLINE inline
#endif

#if defined(_OPENMP)
#define RLHF_HAS_OPENMP 1
#else
#define RLHF_HAS_OPENMP 0
#endif

/// `RLHF_SIMD_LOOP(reduction(+ : a, b))` before a loop lets the compiler vectorize the loop's sums into a and b
/// by reassociating them (`#pragma omp simd` with the given clauses): without it, GCC and Clang keep a
/// floating-point sum in source order, one add after the other, because reassociation changes the rounding.
/// The order it picks is fixed for a given build, so results stay reproducible run to run. Active under
/// OpenMP (`-fopenmp`), or `-fopenmp-simd` with `RLHF_OPENMP_SIMD` defined (the rlhf::eigen CMake target adds
/// both when it does not use OpenMP); otherwise, and under a CUDA compiler (generic row functors also run in
/// device code), the loop compiles as written.
#define RLHF_PRAGMA(text) _Pragma(#text)
#if (defined(_OPENMP) || defined(RLHF_OPENMP_SIMD)) && !defined(__CUDACC__)
#define RLHF_SIMD_LOOP(...) RLHF_PRAGMA(omp simd __VA_ARGS__)
#else
#define RLHF_SIMD_LOOP(...)
#endif

/// Define `RLHF_DISABLE_CONCEPT_CHECKS` to skip the library's `static_assert`s on backend types (for
/// example while a backend is half written). Constraint failures then surface as ordinary compile errors.
#if defined(RLHF_DISABLE_CONCEPT_CHECKS)
#define RLHF_CONCEPT_CHECKS 0
#else
#define RLHF_CONCEPT_CHECKS 1
#endif

namespace rlhf {
/// Library version as a string, e.g. "0.1.0".
inline constexpr const char* version_string = RLHF_VERSION_STRING;
}  // namespace rlhf
