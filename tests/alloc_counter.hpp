#pragma once
// Replaces the global operator new/delete of the test program that includes this header (include
// it in exactly one file of a program) with counting ones, so a test can bound what a piece of
// code allocates: the sum of every request while armed, the largest single request, and a cap
// above which a request is refused with std::bad_alloc without touching memory.
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace east_test {

struct AllocCounter {
  std::atomic<bool> armed{false};
  std::atomic<std::size_t> total{0}, largest{0}, calls{0};
  std::size_t cap = static_cast<std::size_t>(-1);  ///< larger requests throw std::bad_alloc

  void note(std::size_t n) {
    if (!armed.load(std::memory_order_relaxed)) return;
    total.fetch_add(n, std::memory_order_relaxed);
    calls.fetch_add(1, std::memory_order_relaxed);
    std::size_t l = largest.load(std::memory_order_relaxed);
    while (n > l && !largest.compare_exchange_weak(l, n, std::memory_order_relaxed)) {
    }
  }
  bool refuse(std::size_t n) const { return armed.load(std::memory_order_relaxed) && n > cap; }
};

inline AllocCounter& alloc_counter() {
  static AllocCounter c;
  return c;
}

/// Counts what the enclosing scope allocates; refuses single requests above `cap` bytes.
class CountAllocations {
 public:
  explicit CountAllocations(std::size_t cap = static_cast<std::size_t>(-1)) {
    auto& c = alloc_counter();
    c.total = 0;
    c.largest = 0;
    c.calls = 0;
    c.cap = cap;
    c.armed = true;
  }
  ~CountAllocations() { stop(); }
  void stop() { alloc_counter().armed = false; }
  std::size_t total() const { return alloc_counter().total; }
  std::size_t largest() const { return alloc_counter().largest; }
};

namespace detail_alloc {
inline void* allocate(std::size_t n) {
  auto& c = alloc_counter();
  c.note(n);
  if (c.refuse(n)) return nullptr;
  return std::malloc(n == 0 ? 1 : n);
}
}  // namespace detail_alloc
}  // namespace east_test

#if defined(__GNUC__) && !defined(__clang__)
// These operators are the matching pair: new takes its memory from malloc, delete gives it back.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) {
  if (void* p = east_test::detail_alloc::allocate(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  if (void* p = east_test::detail_alloc::allocate(n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return east_test::detail_alloc::allocate(n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return east_test::detail_alloc::allocate(n);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
