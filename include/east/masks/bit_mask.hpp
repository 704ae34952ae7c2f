#pragma once
// BitMask: one packed bit per weight (bit i of word i/64, LSB first), with an exact count.
// Active = 1. Bits beyond size() are always zero, so word-level operations need no tail care.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../core/error.hpp"
#include "../core/random.hpp"
#include "../kernels/select.hpp"

namespace east {

class BitMask {
 public:
  BitMask() = default;
  /// n positions, all active (`value` = true) or all inactive.
  explicit BitMask(std::size_t n, bool value = false) : size_(n), words_(kernels::words_for(n), 0) {
    if (value) fill(true);
  }

  std::size_t size() const { return size_; }
  /// Number of active positions (kept exact by every mutator).
  std::size_t count() const { return count_; }
  double density() const { return size_ ? static_cast<double>(count_) / size_ : 0.0; }

  bool test(std::size_t i) const { return kernels::test_bit(words_.data(), i); }
  bool operator[](std::size_t i) const { return test(i); }
  void set(std::size_t i, bool v = true) {
    auto& w = words_[i >> 6];
    const std::uint64_t bit = std::uint64_t{1} << (i & 63);
    const bool was = w & bit;
    if (was == v) return;
    w ^= bit;
    count_ += v ? 1 : static_cast<std::size_t>(-1);
  }
  void reset(std::size_t i) { set(i, false); }
  void fill(bool v) {
    std::fill(words_.begin(), words_.end(), v ? ~std::uint64_t{0} : 0);
    clear_tail();
    count_ = v ? size_ : 0;
  }

  const std::uint64_t* words() const { return words_.data(); }
  std::size_t word_count() const { return words_.size(); }
  /// Replaces the words (size must match); recounts. For kernels and checkpoint loading.
  void assign_words(const std::uint64_t* w) {
    std::memcpy(words_.data(), w, words_.size() * sizeof(std::uint64_t));
    clear_tail();
    recount();
  }
  /// Mutable words for kernels; call recount() after changing them.
  std::uint64_t* mutable_words() { return words_.data(); }
  void recount() {
    std::size_t c = 0;
    for (auto w : words_) c += static_cast<std::size_t>(__builtin_popcountll(w));
    count_ = c;
  }

  /// Calls f(i) for every active position in increasing order.
  template <class F>
  void for_each_active(F&& f) const {
    for (std::size_t wi = 0; wi < words_.size(); ++wi)
      for (std::uint64_t w = words_[wi]; w; w &= w - 1)
        f(wi * 64 + static_cast<std::size_t>(__builtin_ctzll(w)));
  }
  /// Calls f(i) for every inactive position in increasing order.
  template <class F>
  void for_each_inactive(F&& f) const {
    for (std::size_t wi = 0; wi < words_.size(); ++wi) {
      std::uint64_t w = ~words_[wi];
      if (wi + 1 == words_.size() && (size_ & 63)) w &= (std::uint64_t{1} << (size_ & 63)) - 1;
      for (; w; w &= w - 1) f(wi * 64 + static_cast<std::size_t>(__builtin_ctzll(w)));
    }
  }

  /// Zeroes x where inactive (weights, gradients, optimizer buffers).
  void apply(float* x) const { kernels::apply_mask(x, words_.data(), size_); }

  /// Framework interop: one byte (0/1) or one float (0/1) per position.
  std::vector<std::uint8_t> to_bytes() const {
    std::vector<std::uint8_t> b(size_);
    for (std::size_t i = 0; i < size_; ++i) b[i] = test(i);
    return b;
  }
  std::vector<float> to_floats() const {
    std::vector<float> f(size_);
    for (std::size_t i = 0; i < size_; ++i) f[i] = test(i) ? 1.0f : 0.0f;
    return f;
  }
  /// Non-zero bytes are active.
  static BitMask from_bytes(const std::uint8_t* b, std::size_t n) {
    BitMask m(n);
    for (std::size_t i = 0; i < n; ++i)
      if (b[i]) m.words_[i >> 6] |= std::uint64_t{1} << (i & 63);
    m.recount();
    return m;
  }
  /// Non-zero floats are active; NaN is rejected.
  static BitMask from_floats(const float* f, std::size_t n) {
    BitMask m(n);
    for (std::size_t i = 0; i < n; ++i) {
      detail::require(f[i] == f[i], "east::BitMask::from_floats()", "value at index ", i,
                      " is NaN (valid: 0 for inactive, any other number for active)");
      if (f[i] != 0.0f) m.words_[i >> 6] |= std::uint64_t{1} << (i & 63);
    }
    m.recount();
    return m;
  }

  /// A cheap 64-bit digest of the pattern, for checking that data-parallel ranks agree.
  std::uint64_t digest() const {
    std::uint64_t h = mix64(size_);
    for (auto w : words_) h = mix64(h ^ w);
    return h;
  }

  friend bool operator==(const BitMask& a, const BitMask& b) {
    return a.size_ == b.size_ && a.words_ == b.words_;
  }
  friend bool operator!=(const BitMask& a, const BitMask& b) { return !(a == b); }

 private:
  void clear_tail() {
    if ((size_ & 63) && !words_.empty()) words_.back() &= (std::uint64_t{1} << (size_ & 63)) - 1;
  }
  std::size_t size_ = 0;
  std::size_t count_ = 0;
  std::vector<std::uint64_t> words_;
};

}  // namespace east
