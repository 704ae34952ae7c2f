#pragma once
// Version and the few macros users may override before including east.

#define EAST_VERSION_MAJOR 0
#define EAST_VERSION_MINOR 1
#define EAST_VERSION_PATCH 0

#if defined(__GNUC__) || defined(__clang__)
#define EAST_RESTRICT __restrict__
#define EAST_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define EAST_RESTRICT
#define EAST_ALWAYS_INLINE inline
#endif

#if defined(__CUDACC__)
#define EAST_HOST_DEVICE __host__ __device__
#else
#define EAST_HOST_DEVICE
#endif
