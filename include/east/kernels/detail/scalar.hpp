#pragma once
// Portable bodies of the kernels (the "scalar" ISA). Same results as the SIMD bodies, word by
// word over the mask, so they double as the fallback on any CPU.
#include <cmath>

#include "common.hpp"

namespace east::kernels::detail::scalar {

/// Filters candidates in [begin, end) (begin a multiple of 64): counts t < lo, t == lo, t == hi
/// and stores lo < t < hi into out (room for cap + 64). Sets overflow and stops past cap.
inline void filter(const KeySource& src, std::size_t begin, std::size_t end, const std::uint64_t* mask,
                   Among among, std::uint32_t lo, std::uint32_t hi, std::uint32_t* out, std::size_t cap,
                   FilterCounts& c) {
  std::size_t lt = 0, eql = 0, eqh = 0, mid = 0;
  for (std::size_t b = begin; b < end; b += 64) {
    if (mid > cap) {
      c.overflow = true;
      break;
    }
    std::uint64_t cw = candidate_word(mask, among, b, end);
    while (cw) {
      const std::size_t i = b + static_cast<std::size_t>(ctz64(cw));
      cw &= cw - 1;
      const std::uint32_t t = (load_bits(src.data, i) & src.and_mask) ^ src.xor_mask;
      lt += t < lo;
      eql += t == lo;
      eqh += t == hi;
      out[mid] = t;
      mid += (t > lo) & (t < hi);
    }
  }
  c.lt += lt;
  c.eq_lo += eql;
  c.eq_hi += eqh;
  c.mid += mid;
}

/// Sets bits of candidates with t < thr and of the first `limit` with t == thr in [begin, end).
/// Returns how many had t == thr.
inline std::size_t mark(const KeySource& src, std::size_t begin, std::size_t end, const std::uint64_t* mask,
                        Among among, std::uint32_t thr, std::size_t limit, std::uint64_t* out) {
  std::size_t seen = 0;
  for (std::size_t b = begin; b < end; b += 64) {
    std::uint64_t cw = candidate_word(mask, among, b, end);
    std::uint64_t lt = 0, eq = 0;
    while (cw) {
      const int j = ctz64(cw);
      cw &= cw - 1;
      const std::uint32_t t = (load_bits(src.data, b + j) & src.and_mask) ^ src.xor_mask;
      lt |= std::uint64_t{t < thr} << j;
      eq |= std::uint64_t{t == thr} << j;
    }
    if (eq) {
      const std::size_t e = static_cast<std::size_t>(popcount64(eq));
      seen += e;
      if (e <= limit) {
        limit -= e;
      } else {
        eq = keep_lowest_bits(eq, limit);
        limit = 0;
      }
      lt |= eq;
    }
    if (lt) out[b >> 6] |= lt;
  }
  return seen;
}

inline void apply_mask(float* x, const std::uint64_t* mask, std::size_t begin, std::size_t end) {
  for (std::size_t b = begin; b < end; b += 64) {
    std::uint64_t off = ~mask[b >> 6] & valid_word(b, end);
    while (off) {
      const std::size_t i = b + static_cast<std::size_t>(ctz64(off));
      off &= off - 1;
      if (load_bits(x, i) != 0) x[i] = 0.0f;  // write only what changes: pruned weights stay 0
    }
  }
}

inline void fill_where(float* x, const std::uint64_t* where, std::size_t begin, std::size_t end,
                       float value) {
  std::uint32_t vb;
  std::memcpy(&vb, &value, 4);
  for (std::size_t b = begin; b < end; b += 64) {
    std::uint64_t on = where[b >> 6] & valid_word(b, end);
    while (on) {
      const std::size_t i = b + static_cast<std::size_t>(ctz64(on));
      on &= on - 1;
      if (load_bits(x, i) != vb) x[i] = value;
    }
  }
}

inline NonfiniteCount count_nonfinite(const float* x, std::size_t begin, std::size_t end) {
  NonfiniteCount r;
  for (std::size_t i = begin; i < end; ++i)
    if ((load_bits(x, i) & 0x7FFFFFFFu) >= 0x7F800000u) {
      if (r.count == 0) r.first = i;
      ++r.count;
    }
  return r;
}

/// Fused masked SGD on [begin, end); hist (kHistBins, may be null) accumulates new |w| bins.
inline void masked_sgd(float* w, const float* g, float* buf, const std::uint64_t* mask, std::size_t begin,
                       std::size_t end, const SgdParams& p, std::uint32_t* hist) {
  const bool mom = p.momentum != 0.0f, wd = p.weight_decay != 0.0f;
  const float damp1 = 1.0f - p.dampening, neg_lr = -p.lr;
  for (std::size_t b = begin; b < end; b += 64) {
    const std::uint64_t valid = valid_word(b, end), on = mask[b >> 6] & valid;
    std::uint64_t off = ~on & valid;
    while (off) {  // inactive: zero only what is not zero yet
      const std::size_t i = b + static_cast<std::size_t>(ctz64(off));
      off &= off - 1;
      if (load_bits(w, i) != 0) w[i] = 0.0f;
      if (mom && load_bits(buf, i) != 0) buf[i] = 0.0f;
    }
    std::uint64_t act = on;
    while (act) {
      const std::size_t i = b + static_cast<std::size_t>(ctz64(act));
      act &= act - 1;
      float gi = g[i];
      if (wd) gi = std::fma(p.weight_decay, w[i], gi);
      float d = gi;
      if (mom) {
        const float bb = std::fma(p.momentum, buf[i], damp1 * gi);
        buf[i] = bb;
        d = p.nesterov ? std::fma(p.momentum, bb, gi) : bb;
      }
      const float wn = std::fma(neg_lr, d, w[i]);
      w[i] = wn;
      if (hist) ++hist[hist_bin(abs_key(wn))];
    }
  }
}

}  // namespace east::kernels::detail::scalar
