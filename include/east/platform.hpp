#pragma once
// Process-wide settings that help training loops; nothing in east calls them by itself.
#include <cstddef>  // defines __GLIBC__ (via features.h) before the test below
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace east {

/// glibc returns large freed blocks to the operating system at once, so a training loop that
/// frees its activations every step (libtorch does) page-faults them in again on the next step:
/// about a fifth of a 99.9%-sparse ResNet step here (docs/sparse.md). Raising the mmap and trim
/// thresholds keeps those blocks for reuse, as jemalloc, tcmalloc or a caching allocator would.
/// Returns false where it does nothing (not glibc). Call once at start-up.
inline bool keep_freed_memory_for_reuse(int bytes = 1 << 30) {
#if defined(__GLIBC__)
  return mallopt(M_MMAP_THRESHOLD, bytes) == 1 && mallopt(M_TRIM_THRESHOLD, bytes) == 1;
#else
  (void)bytes;
  return false;
#endif
}

}  // namespace east
