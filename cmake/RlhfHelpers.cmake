# Helper functions for the project's own tests, examples and benchmarks.

# Warnings used for everything the project compiles itself (never exported to consumers).
function(rlhf_target_warnings target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE
      "$<$<COMPILE_LANGUAGE:CXX>:-Wall;-Wextra;-Wpedantic;-Wshadow;-Wconversion;-Wno-sign-conversion>")
    # CUDA sources: the same warnings from nvcc's host compiler, since a user's .cu compiles our headers too
    # (-Wpedantic left out: it flags nvcc's own generated host code).
    if(CMAKE_CUDA_COMPILER_ID STREQUAL "NVIDIA")
      target_compile_options(${target} PRIVATE
        $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wshadow,-Wconversion,-Wno-sign-conversion>)
    endif()
  endif()
endfunction()

# rlhf_add_example(<name> <source>... [LINKS <targets>...] [ARGS <args>...])
# Builds an example and registers it as a ctest (label `example`) run with ARGS.
function(rlhf_add_example name)
  cmake_parse_arguments(EX "" "" "LINKS;ARGS" ${ARGN})
  add_executable(${name} ${EX_UNPARSED_ARGUMENTS})
  target_link_libraries(${name} PRIVATE ${EX_LINKS})
  rlhf_target_warnings(${name})
  if(RLHF_BUILD_TESTS)
    add_test(NAME example.${name} COMMAND ${name} ${EX_ARGS})
    set_tests_properties(example.${name} PROPERTIES LABELS "example;cpu")
  endif()
endfunction()
