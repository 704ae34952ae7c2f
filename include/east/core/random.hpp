#pragma once
// Counter-based randomness: every random decision is a pure function of (seed, stream, index),
// so results never depend on thread count or on the order in which layers are visited, and a
// checkpoint only needs the seed (streams derive from seed, step, layer) to resume bit-identically.
#include <cstdint>

namespace east {

/// SplitMix64 finaliser: a well-mixed 64-bit hash of a 64-bit input.
constexpr std::uint64_t mix64(std::uint64_t x) noexcept {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// Identifies one random stream: a seed plus a purpose-specific key (layer, update, role).
struct RandomStream {
  std::uint64_t key = 0;

  constexpr RandomStream derive(std::uint64_t salt) const noexcept {
    return RandomStream{mix64(key ^ mix64(salt + 0x632BE59BD9B4E019ull))};
  }
  /// 32 random bits for position i of this stream.
  constexpr std::uint32_t bits32(std::uint64_t i) const noexcept {
    return static_cast<std::uint32_t>(mix64(key + i * 0xD1B54A32D192ED03ull) >> 32);
  }
  /// Uniform double in [0, 1) for position i.
  constexpr double uniform(std::uint64_t i) const noexcept {
    return static_cast<double>(mix64(key + i * 0xD1B54A32D192ED03ull) >> 11) * 0x1.0p-53;
  }
};

constexpr RandomStream make_stream(std::uint64_t seed) noexcept { return RandomStream{mix64(seed)}; }

}  // namespace east
