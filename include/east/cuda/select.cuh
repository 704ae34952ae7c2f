#pragma once
// Exact selection of the k largest/smallest keys on the GPU, and the bit mask of the selected
// positions. Results equal east::kernels::select_* / mark_selected_* bit for bit: the same
// Selection{threshold, ties, k}, ties at the threshold taken in increasing index order.
//
// Selection is a 3-pass radix select over the 32 key bits (digits of 11, 11, 10 bits): each
// pass builds a histogram of the candidates that share the already decided high bits (per-block
// shared-memory counters, then integer atomics into global memory), and a one-block scan picks
// the digit holding the k-th best key. Integer counts make every pass order-independent, so the
// result is exact and deterministic. Marking resolves the ties by index: a per-tile count of
// threshold-equal candidates, an exclusive scan over tiles (cub::DeviceScan), then each warp
// ranks its equal keys by ballot. See docs/cuda.md.
#include <cub/cub.cuh>

#include "../core/error.hpp"
#include "common.cuh"  // first: the nvcc guard

namespace east::cuda {

constexpr int kSelectOk = 0;    ///< SelectResult::status: the selection is valid
constexpr int kSelectBadK = 1;  ///< SelectResult::status: k exceeds the number of candidates

/// What a device selection writes (device memory, caller-owned). `selection` is what the CPU's
/// east::kernels::select_abs/select_keys returns for the same input.
struct SelectResult {
  Selection selection;            ///< threshold (in key space), ties, k
  unsigned long long candidates;  ///< number of candidates under (mask, among)
  unsigned long long equal;       ///< candidates whose key equals the threshold (k > 0)
  int status;                     ///< kSelectOk, or kSelectBadK (then nothing is marked)
};

/// Host check of a SelectResult copied back from the device: throws east::InvalidArgument, as
/// the CPU selection does, when k exceeded the number of candidates.
inline void check_selection(const SelectResult& r, const char* where = "east::cuda::select") {
  ::east::detail::require(r.status == kSelectOk, where, "k = ", r.selection.k,
                          " exceeds the number of candidates ", r.candidates, " (valid: 0..", r.candidates,
                          ")");
}

namespace detail {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kItems = 16;                         // keys per lane per tile
constexpr std::size_t kWarpSpan = 32 * kItems;     // 512 keys = 8 mask words per warp
constexpr std::size_t kTile = kWarps * kWarpSpan;  // 4096 keys = 64 mask words per block
constexpr int kBins = 2048;
constexpr int kPasses = 3;
__host__ __device__ constexpr int pass_shift(int p) { return p == 0 ? 21 : (p == 1 ? 10 : 0); }
__host__ __device__ constexpr int pass_bits(int p) { return p == 2 ? 10 : 11; }

// ---- The selection's logic, shared by the kernels and the host-side tests (tests/cuda run
// these on the host against the CPU reference, so they are covered without a GPU).

/// Digit of an ordered key in pass p (bits [shift, shift + bits)).
__host__ __device__ constexpr std::uint32_t radix_digit(std::uint32_t okey, int pass) {
  return (okey >> pass_shift(pass)) & ((1u << pass_bits(pass)) - 1u);
}

/// Whether an ordered key's bits above pass p's digit equal `prefix`'s (always true in pass 0).
__host__ __device__ constexpr bool radix_in_prefix(std::uint32_t okey, std::uint32_t prefix, int pass) {
  return pass_shift(pass) + pass_bits(pass) >= 32 ||
         (okey >> (pass_shift(pass) + pass_bits(pass))) == (prefix >> (pass_shift(pass) + pass_bits(pass)));
}

/// The prefix after choosing `digit` in pass p.
__host__ __device__ constexpr std::uint32_t radix_extend(std::uint32_t prefix, std::uint32_t digit, int pass) {
  return prefix | (digit << pass_shift(pass));
}

constexpr int kScanPer = kBins / kThreads;  // histogram bins per scan thread

/// Bin held in slot j by scan thread t: thread 0 holds the best (highest) bins.
__host__ __device__ constexpr std::uint32_t scan_bin(int t, int j) {
  return static_cast<std::uint32_t>(kBins - 1 - (t * kScanPer + j));
}

/// Scan thread's part of the digit choice: `c` are its bins' counts (best first), `above` the
/// number of keys in better bins. Returns the slot whose bin holds the kl-th best key (kl >= 1),
/// with the keys in better bins in *before and the bin's count in *count, or -1 when it is in
/// another thread's bins. (Unrolled, so c stays in registers.)
__host__ __device__ inline int kth_slot(const unsigned long long (&c)[kScanPer], unsigned long long above,
                                        unsigned long long kl, unsigned long long* before,
                                        unsigned long long* count) {
  unsigned long long cum = above;
  int found = -1;
  EAST_CUDA_UNROLL
  for (int j = 0; j < kScanPer; ++j) {
    if (found < 0 && cum < kl && kl <= cum + c[j]) {
      found = j;
      *before = cum;
      *count = c[j];
    }
    cum += c[j];
  }
  return found;
}

/// Position of key j of lane `lane` of warp `warp` in tile `tile` (warp-striped, coalesced).
__host__ __device__ constexpr std::size_t tile_pos(std::size_t tile, int warp, int j, int lane) {
  return tile * kTile + static_cast<std::size_t>(warp) * kWarpSpan + static_cast<std::size_t>(j) * 32 +
         static_cast<std::size_t>(lane);
}

/// Mask word m (0..kItems/2) written by warp `warp` of tile `tile`: positions
/// tile_pos(tile, warp, 2m, .) and tile_pos(tile, warp, 2m + 1, .).
__host__ __device__ constexpr std::size_t tile_word(std::size_t tile, int warp, int m) {
  return tile_pos(tile, warp, 0, 0) / 64 + static_cast<std::size_t>(m);
}
static_assert(kWarpSpan % 64 == 0 && kTile % 64 == 0, "a warp's span is whole mask words");

/// The word of lanes' ballots 2m (low half) and 2m + 1 (high half).
__host__ __device__ constexpr std::uint64_t ballot_word(std::uint32_t lo, std::uint32_t hi) {
  return static_cast<std::uint64_t>(lo) | (static_cast<std::uint64_t>(hi) << 32);
}

/// The lowest `count` set bits of x (count <= popcount(x)).
__host__ __device__ inline std::uint32_t lowest_bits(std::uint32_t x, unsigned long long count) {
  std::uint32_t t = 0;
  for (; count > 0 && x != 0; --count) {
    const std::uint32_t lsb = x & (0u - x);
    t |= lsb;
    x ^= lsb;
  }
  return t;
}

__host__ __device__ inline int popcount32(std::uint32_t x) {
#if defined(__CUDA_ARCH__)
  return __popc(x);
#else
  int c = 0;
  for (; x; x &= x - 1) ++c;
  return c;
#endif
}

/// One warp's tie resolution: `eq[j]` are the ballots of threshold-equal candidates, `rank` the
/// number of equal candidates at lower positions (earlier tiles and warps). Adds to take[j]
/// the equal lanes whose rank is below `ties`, in increasing position order.
__host__ __device__ inline void take_ties(std::uint32_t (&take)[kItems], const std::uint32_t (&eq)[kItems],
                                          unsigned long long rank, unsigned long long ties) {
  EAST_CUDA_UNROLL
  for (int j = 0; j < kItems; ++j) {
    const unsigned long long m = static_cast<unsigned long long>(popcount32(eq[j]));
    if (rank + m <= ties)
      take[j] |= eq[j];
    else if (rank < ties)  // the boundary: the lowest (ties - rank) equal lanes
      take[j] |= lowest_bits(eq[j], ties - rank);
    rank += m;
  }
}

struct SelectState {
  unsigned long long k_left;  // how many of the keys sharing `prefix` are still to take
  std::uint32_t prefix;       // ordered-key bits decided so far
  int finished;               // 1: nothing left to do (k = 0, bad k, or done)
};

// Histogram of the current digit over candidates whose higher ordered-key bits equal prefix.
// Keys are read warp-striped (coalesced): lane l of warp w takes tile + w*512 + j*32 + l.
template <class Src>
__global__ void __launch_bounds__(kThreads)
    radix_hist_kernel(Src src, std::size_t n, Extreme ext, const std::uint64_t* mask, Among among, int pass,
                      const SelectState* st, unsigned long long* hist) {
  __shared__ unsigned int sh[kBins];
  std::uint32_t prefix = 0;
  if (pass > 0) {
    if (st->finished) return;
    prefix = st->prefix;
  }
  for (int b = threadIdx.x; b < kBins; b += kThreads) sh[b] = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const std::size_t tiles = div_up(n, kTile);
  for (std::size_t t = blockIdx.x; t < tiles; t += gridDim.x) {
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const std::size_t i = tile_pos(t, warp, j, lane);
      if (i < n && candidate(mask, among, i)) {
        const std::uint32_t k = ordered(src(i), ext);
        if (radix_in_prefix(k, prefix, pass)) atomicAdd(&sh[radix_digit(k, pass)], 1u);
      }
    }
  }
  __syncthreads();
  for (int b = threadIdx.x; b < kBins; b += kThreads)
    if (sh[b] != 0) atomicAdd(&hist[b], static_cast<unsigned long long>(sh[b]));
}

// One block: finds the digit holding the k-th best key, from the best digit down.
__global__ void __launch_bounds__(kThreads)
    radix_scan_kernel(const unsigned long long* hist, int pass, unsigned long long k, Extreme ext,
                      SelectState* st, SelectResult* out) {
  using Scan = cub::BlockScan<unsigned long long, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ int s_finished;
  __shared__ unsigned long long s_kleft;
  __shared__ std::uint32_t s_prefix;
  unsigned long long c[kScanPer];
  unsigned long long sum = 0;
#pragma unroll
  for (int j = 0; j < kScanPer; ++j) {
    c[j] = hist[scan_bin(threadIdx.x, j)];  // thread 0 holds the best digits
    sum += c[j];
  }
  unsigned long long above = 0, total = 0;
  Scan(tmp).ExclusiveSum(sum, above, total);
  if (threadIdx.x == 0) {
    if (pass == 0) {
      out->selection.threshold = 0;
      out->selection.ties = 0;
      out->selection.k = static_cast<std::size_t>(k);
      out->candidates = total;
      out->equal = 0;
      out->status = k > total ? kSelectBadK : kSelectOk;
      st->prefix = 0;
      st->k_left = k;
      st->finished = (k == 0 || k > total) ? 1 : 0;
    }
    s_finished = st->finished;
    s_kleft = st->k_left;
    s_prefix = st->prefix;
  }
  __syncthreads();
  if (s_finished) return;
  unsigned long long before = 0, count = 0;
  const int j = kth_slot(c, above, s_kleft, &before, &count);  // exactly one thread finds it
  if (j >= 0) {
    const std::uint32_t prefix = radix_extend(s_prefix, scan_bin(threadIdx.x, j), pass);
    if (pass == kPasses - 1) {
      out->selection.threshold = ordered(prefix, ext);  // ordered() is its own inverse
      out->selection.ties = static_cast<std::size_t>(s_kleft - before);
      out->equal = count;
      st->finished = 1;
    } else {
      st->prefix = prefix;
      st->k_left = s_kleft - before;
    }
  }
}

template <class Src>
cudaError_t select_impl(void* d_temp, std::size_t& temp_bytes, Src src, std::size_t n, std::size_t k,
                        Extreme ext, const std::uint64_t* mask, Among among, SelectResult* d_out,
                        cudaStream_t stream) {
  void* parts[2] = {nullptr, nullptr};
  const std::size_t sizes[2] = {sizeof(unsigned long long) * kBins * kPasses, sizeof(SelectState)};
  cudaError_t err = alias_temporaries(d_temp, temp_bytes, parts, sizes);
  if (err != cudaSuccess || d_temp == nullptr) return err;
  if (d_out == nullptr || (n > 0 && src.ptr() == nullptr)) return cudaErrorInvalidValue;
  auto* hist = static_cast<unsigned long long*>(parts[0]);
  auto* st = static_cast<SelectState*>(parts[1]);
  err = cudaMemsetAsync(hist, 0, sizes[0], stream);
  if (err != cudaSuccess) return err;
  const unsigned grid = grid_for(div_up(n, kTile));
  for (int pass = 0; pass < kPasses; ++pass) {
    radix_hist_kernel<<<grid, kThreads, 0, stream>>>(src, n, ext, mask, among, pass, st, hist + pass * kBins);
    radix_scan_kernel<<<1, kThreads, 0, stream>>>(hist + pass * kBins, pass, k, ext, st, d_out);
    if ((err = cudaPeekAtLastError()) != cudaSuccess) return err;
  }
  return cudaGetLastError();
}

// Number of threshold-equal candidates per tile; skipped (zeros) when every equal key is taken.
template <class Src>
__global__ void __launch_bounds__(kThreads)
    tie_count_kernel(Src src, std::size_t n, const std::uint64_t* mask, Among among, const SelectResult* sel,
                     unsigned long long* tile_counts) {
  __shared__ unsigned int s_warp[kWarps];
  const int status = sel->status;
  const std::size_t k = sel->selection.k, ties = sel->selection.ties;
  const std::uint32_t thr = sel->selection.threshold;
  if (status != kSelectOk || k == 0 || ties >= sel->equal) {
    if (threadIdx.x == 0) tile_counts[blockIdx.x] = 0;
    return;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned int cnt = 0;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const std::size_t i = tile_pos(blockIdx.x, warp, j, lane);
    cnt += (i < n && candidate(mask, among, i) && src(i) == thr) ? 1u : 0u;
  }
  for (int o = 16; o > 0; o >>= 1) cnt += __shfl_xor_sync(0xFFFFFFFFu, cnt, o);
  if (lane == 0) s_warp[warp] = cnt;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long t = 0;
    for (int w = 0; w < kWarps; ++w) t += s_warp[w];
    tile_counts[blockIdx.x] = t;
  }
}

// Sets the bits of the selected positions (OR into out). One block per tile of 4096 keys; the
// warp of 512 keys writes its 8 words, so no two threads touch one word.
template <class Src>
__global__ void __launch_bounds__(kThreads)
    mark_kernel(Src src, std::size_t n, Extreme ext, const std::uint64_t* mask, Among among,
                const SelectResult* sel, const unsigned long long* tile_offsets, std::uint64_t* out) {
  __shared__ unsigned long long s_warp[kWarps];
  const int status = sel->status;
  const std::size_t k = sel->selection.k;
  if (status != kSelectOk || k == 0) return;
  const unsigned long long ties = sel->selection.ties;
  const std::uint32_t thr = sel->selection.threshold, othr = ordered(thr, ext);
  const bool all_ties = ties >= sel->equal;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  std::uint32_t take[kItems], eq[kItems];
  unsigned long long weq = 0;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const std::size_t i = tile_pos(blockIdx.x, warp, j, lane);
    const bool c = i < n && candidate(mask, among, i);
    const std::uint32_t key = c ? src(i) : 0u;
    take[j] = __ballot_sync(0xFFFFFFFFu, c && ordered(key, ext) > othr);
    eq[j] = __ballot_sync(0xFFFFFFFFu, c && key == thr);
    weq += static_cast<unsigned long long>(__popc(eq[j]));
  }
  if (all_ties) {
#pragma unroll
    for (int j = 0; j < kItems; ++j) take[j] |= eq[j];
  } else {
    if (lane == 0) s_warp[warp] = weq;
    __syncthreads();
    unsigned long long rank = tile_offsets[blockIdx.x];  // equal candidates before this warp
    for (int w = 0; w < warp; ++w) rank += s_warp[w];
    take_ties(take, eq, rank, ties);
  }
  const std::size_t words = words_for(n);
#pragma unroll
  for (int m = 0; m < kItems / 2; ++m) {
    if (lane == m) {
      const std::uint64_t word = ballot_word(take[2 * m], take[2 * m + 1]);
      const std::size_t w = tile_word(blockIdx.x, warp, m);
      if (w < words && word != 0) out[w] |= word;
    }
  }
}

template <class Src>
cudaError_t mark_impl(void* d_temp, std::size_t& temp_bytes, Src src, std::size_t n,
                      const SelectResult* d_sel, Extreme ext, const std::uint64_t* mask, Among among,
                      std::uint64_t* d_out, cudaStream_t stream) {
  const std::size_t tiles = div_up(n, kTile);
  // One block per tile (grid.x < 2^31) and CUB's int item count: n up to about 8.8e12.
  if (tiles > 0x7FFFFFFFu) return cudaErrorInvalidValue;
  std::size_t scan_bytes = 0;
  cudaError_t err = cub::DeviceScan::ExclusiveSum(
      nullptr, scan_bytes, static_cast<unsigned long long*>(nullptr),
      static_cast<unsigned long long*>(nullptr), static_cast<int>(tiles > 0 ? tiles : 1), stream);
  if (err != cudaSuccess) return err;
  void* parts[3] = {nullptr, nullptr, nullptr};
  const std::size_t sizes[3] = {sizeof(unsigned long long) * (tiles + 1),
                                sizeof(unsigned long long) * (tiles + 1), scan_bytes};
  err = alias_temporaries(d_temp, temp_bytes, parts, sizes);
  if (err != cudaSuccess || d_temp == nullptr) return err;
  if (d_sel == nullptr || (n > 0 && (src.ptr() == nullptr || d_out == nullptr))) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  auto* counts = static_cast<unsigned long long*>(parts[0]);
  auto* offsets = static_cast<unsigned long long*>(parts[1]);
  tie_count_kernel<<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(src, n, mask, among, d_sel, counts);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  err = cub::DeviceScan::ExclusiveSum(parts[2], scan_bytes, counts, offsets, static_cast<int>(tiles), stream);
  if (err != cudaSuccess) return err;
  mark_kernel<<<static_cast<unsigned>(tiles), kThreads, 0, stream>>>(src, n, ext, mask, among, d_sel, offsets,
                                                                     d_out);
  return cudaGetLastError();
}

}  // namespace detail

/// Exact selection of the k largest/smallest |x[i]| among candidates (CUB-style two-phase call).
///
/// Call with d_temp == nullptr to get temp_bytes, then again with that much device memory.
/// Nothing is synchronised; the result lands in *d_out in stream order.
/// @param d_temp,temp_bytes caller-owned temporary storage (two-phase).
/// @param d_x      n floats (device); keys are abs_key(x[i]): NaN sorts above +Inf.
/// @param k        0..candidates; a larger k gives d_out->status = kSelectBadK (see check_selection).
/// @param d_mask   words_for(n) mask words (device) for `among`; nullptr: every position.
/// @param d_out    one SelectResult (device).
inline cudaError_t select_abs(void* d_temp, std::size_t& temp_bytes, const float* d_x, std::size_t n,
                              std::size_t k, Extreme extreme, const std::uint64_t* d_mask, Among among,
                              SelectResult* d_out, cudaStream_t stream = 0) {
  return detail::select_impl(d_temp, temp_bytes, detail::AbsKeys{d_x}, n, k, extreme, d_mask, among, d_out,
                             stream);
}

/// As select_abs, over raw uint32 keys (all 32 bits).
inline cudaError_t select_keys(void* d_temp, std::size_t& temp_bytes, const std::uint32_t* d_keys,
                               std::size_t n, std::size_t k, Extreme extreme, const std::uint64_t* d_mask,
                               Among among, SelectResult* d_out, cudaStream_t stream = 0) {
  return detail::select_impl(d_temp, temp_bytes, detail::RawKeys{d_keys}, n, k, extreme, d_mask, among, d_out,
                             stream);
}

/// Sets bit i of d_out (words_for(n) words, device, zeroed by the caller unless OR is wanted)
/// for every position selected by *d_sel, exactly as east::kernels::mark_selected_abs. Does
/// nothing when d_sel->status != kSelectOk. Two-phase temporary storage as select_abs.
inline cudaError_t mark_selected_abs(void* d_temp, std::size_t& temp_bytes, const float* d_x, std::size_t n,
                                     const SelectResult* d_sel, Extreme extreme, const std::uint64_t* d_mask,
                                     Among among, std::uint64_t* d_out, cudaStream_t stream = 0) {
  return detail::mark_impl(d_temp, temp_bytes, detail::AbsKeys{d_x}, n, d_sel, extreme, d_mask, among, d_out,
                           stream);
}

/// As mark_selected_abs, over raw uint32 keys.
inline cudaError_t mark_selected_keys(void* d_temp, std::size_t& temp_bytes, const std::uint32_t* d_keys,
                                      std::size_t n, const SelectResult* d_sel, Extreme extreme,
                                      const std::uint64_t* d_mask, Among among, std::uint64_t* d_out,
                                      cudaStream_t stream = 0) {
  return detail::mark_impl(d_temp, temp_bytes, detail::RawKeys{d_keys}, n, d_sel, extreme, d_mask, among,
                           d_out, stream);
}

}  // namespace east::cuda
