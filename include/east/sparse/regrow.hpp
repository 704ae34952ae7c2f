#pragma once
// Regrowth scores without a dense gradient tensor for the whole model. Gradient-based regrowth
// (RigL, EAST) needs, at a mask update, the k inactive positions of largest |∂L/∂w| of each
// layer. The sparse kernels only produce gradients at active positions, so the dense gradient
// of one layer is computed one block of output channels at a time (conv2d_grad_weight_rows /
// linear_grad_weight_rows or any callable), the block's best k inactive positions are selected
// with the exact selection kernels, and merged into a running top-k.
//
// Cost per layer and update: the dense weight-gradient FLOPs of that layer (N·H_out·W_out
// multiply-adds per weight — what a dense backward pays every step, paid here only at update
// steps), one selection pass over each block, and O(k) per block for the merge. Memory: one
// block (block_rows · cols floats, 4 MiB by default) plus 2k candidates, instead of 4 B per
// weight of the whole model.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../core/error.hpp"
#include "../kernels/select.hpp"
#include "../masks/bit_mask.hpp"

namespace east::sparse {

/// The chosen positions (dense indices, increasing) and their gradient values.
struct GrowCandidates {
  std::vector<std::size_t> index;
  std::vector<float> grad;
};

namespace detail {
/// dst (words_for(len) words) = bits [begin, begin + len) of src, tail bits cleared.
inline void extract_bits(const std::uint64_t* src, std::size_t begin, std::size_t len, std::uint64_t* dst) {
  const std::size_t words = (len + 63) / 64, shift = begin & 63, w0 = begin >> 6;
  for (std::size_t i = 0; i < words; ++i) {
    std::uint64_t v = src[w0 + i] >> shift;
    // The next source word exists whenever bits of it are needed (they lie inside the mask).
    if (shift && (i * 64 + 64 - shift) < len) v |= src[w0 + i + 1] << (64 - shift);
    dst[i] = v;
  }
  if (len & 63) dst[words - 1] &= (std::uint64_t{1} << (len & 63)) - 1;
}
}  // namespace detail

/// The k inactive positions of `mask` with the largest |gradient| (ties: lower index first), the
/// gradient being produced block by block by rows_fn(row_begin, row_end, float* out) (out is
/// (row_end − row_begin) · cols floats, row-major). Exactly min(k, inactive count) positions.
/// @param block_rows rows per block (0: as many as fit in 1 Mi floats, at least 1).
template <class RowsFn>
GrowCandidates top_inactive_gradient(const BitMask& mask, std::size_t rows, std::size_t cols, std::size_t k,
                                     RowsFn&& rows_fn, std::size_t block_rows = 0) {
  constexpr const char* where = "east::sparse::top_inactive_gradient()";
  ::east::detail::require(rows >= 1 && cols >= 1 && mask.size() == rows * cols, where, "mask has ",
                          mask.size(), " positions for ", rows, " x ", cols, " (valid: equal, >= 1)");
  const std::size_t inactive = mask.size() - mask.count();
  ::east::detail::require(k <= inactive, where, "k = ", k, " (valid: 0..", inactive, " inactive positions)");
  if (block_rows == 0) block_rows = std::max<std::size_t>(1, (std::size_t{1} << 20) / cols);
  GrowCandidates pool;
  if (k == 0) return pool;
  std::vector<float> buf, cand;
  std::vector<std::uint64_t> bits, picked;
  for (std::size_t r0 = 0; r0 < rows; r0 += block_rows) {
    const std::size_t r1 = std::min(rows, r0 + block_rows), len = (r1 - r0) * cols;
    buf.resize(len);
    rows_fn(r0, r1, buf.data());
    bits.assign(kernels::words_for(len), 0);
    detail::extract_bits(mask.words(), r0 * cols, len, bits.data());
    std::size_t active = 0;
    for (auto w : bits) active += static_cast<std::size_t>(__builtin_popcountll(w));
    const std::size_t kb = std::min(k, len - active);
    if (kb == 0) continue;
    const auto sel = kernels::select_abs(buf.data(), len, kb, kernels::Extreme::largest, bits.data(),
                                         kernels::Among::inactive);
    picked.assign(bits.size(), 0);
    kernels::mark_selected_abs(buf.data(), len, sel, kernels::Extreme::largest, bits.data(),
                               kernels::Among::inactive, picked.data());
    // Pool indices all precede this block's, so appending keeps the pool sorted by index and the
    // selection's lower-index tie rule stays the global one.
    for (std::size_t wi = 0; wi < picked.size(); ++wi)
      for (std::uint64_t w = picked[wi]; w; w &= w - 1) {
        const std::size_t i = wi * 64 + static_cast<std::size_t>(__builtin_ctzll(w));
        pool.index.push_back(r0 * cols + i);
        pool.grad.push_back(buf[i]);
      }
    if (pool.index.size() > k) {
      const std::size_t m = pool.index.size();
      const auto s = kernels::select_abs(pool.grad.data(), m, k, kernels::Extreme::largest);
      picked.assign(kernels::words_for(m), 0);
      kernels::mark_selected_abs(pool.grad.data(), m, s, kernels::Extreme::largest, nullptr,
                                 kernels::Among::all, picked.data());
      std::size_t o = 0;
      for (std::size_t i = 0; i < m; ++i)
        if (kernels::test_bit(picked.data(), i)) {
          pool.index[o] = pool.index[i];
          pool.grad[o++] = pool.grad[i];
        }
      pool.index.resize(o);
      pool.grad.resize(o);
    }
  }
  return pool;
}

}  // namespace east::sparse
