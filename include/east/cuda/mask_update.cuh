#pragma once
// The whole-model mask update on the GPU: what east::Controller::update() does per sparse
// layer, for a magnitude-prune / gradient-regrow method (RigL; EAST's default criteria):
//   dropped = the n_drop smallest |w| among active positions,
//   grown   = the n_grow largest |g| among positions inactive before this update,
//   mask    = (mask & ~dropped) | grown,   ever_active |= mask,
//   w = 0 and every optimizer state buffer = 0 at grown and at inactive positions.
// Like the controller it is all-or-nothing: non-finite weights (or gradients of a layer that
// grows) or an n_drop / n_grow larger than the candidates leave every layer untouched and raise
// *d_failed; the per-layer MaskUpdateStatus says which layer and why. The host decides the
// counts (east::layer_counts and the drop fraction), as the controller does; the selections
// are the exact ones of east/cuda/select.cuh, so the new masks equal the CPU's bit for bit.
#include "mask.cuh"
#include "select.cuh"

namespace east::cuda {

/// Up to this many optimizer state buffers per layer (SGD momentum: 1, Adam: 2).
constexpr int kMaxStateBuffers = 4;

/// One sparse layer's device buffers and counts (a host-side struct of device pointers).
struct LayerUpdate {
  float* weight = nullptr;               ///< n weights (device)
  const float* grad = nullptr;           ///< n dense gradients (device); needed when n_grow > 0
  std::uint64_t* mask = nullptr;         ///< words_for(n) mask words, updated in place
  std::uint64_t* ever_active = nullptr;  ///< optional words_for(n) words, OR-ed with the new mask
  float* state[kMaxStateBuffers] = {};   ///< optimizer buffers zeroed with the weights
  int num_state = 0;
  std::size_t n = 0;
  std::size_t n_drop = 0;  ///< how many active weights to drop (smallest |w|)
  std::size_t n_grow = 0;  ///< how many inactive positions to grow (largest |g|)
};

/// Per-layer outcome (device memory, one per layer).
struct MaskUpdateStatus {
  NonfiniteResult weight_nonfinite;  ///< NaN/Inf among the weights
  NonfiniteResult grad_nonfinite;    ///< NaN/Inf among the gradients (checked when n_grow > 0)
  SelectResult drop;                 ///< the drop selection (status kSelectBadK: too many)
  SelectResult grow;                 ///< the grow selection
};

namespace detail {

/// The committed mask word: (mask & ~dropped) | grown, as Controller::update() phase 2.
__host__ __device__ constexpr std::uint64_t committed_word(std::uint64_t mask, std::uint64_t dropped,
                                                         std::uint64_t grown) {
  return (mask & ~dropped) | grown;
}

/// Positions of a word whose weight and optimizer state become 0 at the commit: grown ones
/// (grow_init = zero, state reset) and those inactive in the new mask (apply_masks()).
__host__ __device__ constexpr std::uint64_t zeroed_word(std::uint64_t mask, std::uint64_t dropped,
                                                      std::uint64_t grown) {
  return ~committed_word(mask, dropped, grown) | grown;
}

__global__ void update_check_kernel(MaskUpdateStatus* st, int* failed) {
  if (st->drop.status != kSelectOk || st->grow.status != kSelectOk) atomicExch(failed, 1);
}

struct StatePtrs {
  float* p[kMaxStateBuffers];
  int count;
};

// Commit, element pass: zero weights and state at grown positions and at positions inactive in
// the new mask (computed from the old words, which the word pass below overwrites afterwards).
// Coalesced, one thread per element; skipped entirely when any layer failed.
__global__ void update_zero_kernel(float* w, const std::uint64_t* mask, const std::uint64_t* dropped,
                                   const std::uint64_t* grown, StatePtrs state, std::size_t n,
                                   const int* failed) {
  if (*failed) return;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const std::size_t wi = i >> 6;
    const std::uint64_t zero = zeroed_word(mask[wi], dropped[wi], grown[wi]);
    if (!((zero >> (i & 63)) & 1u)) continue;
    if (__float_as_uint(w[i]) != 0u) w[i] = 0.0f;
    for (int s = 0; s < state.count; ++s)
      if (__float_as_uint(state.p[s][i]) != 0u) state.p[s][i] = 0.0f;
  }
}

// Commit, word pass: mask = (mask & ~dropped) | grown; ever_active |= mask.
__global__ void update_words_kernel(std::uint64_t* mask, std::uint64_t* ever, const std::uint64_t* dropped,
                                    const std::uint64_t* grown, std::size_t words, const int* failed) {
  if (*failed) return;
  for (std::size_t wi = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; wi < words;
       wi += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const std::uint64_t nw = committed_word(mask[wi], dropped[wi], grown[wi]);
    mask[wi] = nw;
    if (ever) ever[wi] |= nw;
  }
}

}  // namespace detail

/// Mask update of a whole model in one stream (CUB-style two-phase temporary storage).
///
/// @param layers    host array of L layer descriptions (device pointers inside).
/// @param d_status  L MaskUpdateStatus (device), written for every layer.
/// @param d_failed  one int (device): 0 if the update was committed, 1 if nothing changed.
/// A bad layer description (null weight/mask/gradient/state where needed, a count above n,
/// num_state outside 0..kMaxStateBuffers) throws east::InvalidArgument before anything is queued;
/// counts above the number of *candidates* are only known on the device (MaskUpdateStatus).
/// The caller synchronises and reads *d_failed (and d_status for the reason); nothing else of the
/// model is read back here, so the call is asynchronous like every other call of the backend.
/// Every mask word is written by exactly one thread: no atomics on masks, no races.
inline cudaError_t mask_update(void* d_temp, std::size_t& temp_bytes, const LayerUpdate* layers,
                               std::size_t L, MaskUpdateStatus* d_status, int* d_failed,
                               cudaStream_t stream = 0) {
  if (L > 0 && layers == nullptr) return cudaErrorInvalidValue;
  // The layer descriptions are host-side configuration: a bad one throws before anything is
  // queued (or sized), like a momentum without a buffer in masked_sgd.
  constexpr const char* where = "east::cuda::mask_update";
  for (std::size_t l = 0; l < L; ++l) {
    const LayerUpdate& u = layers[l];
    ::east::detail::require(u.n == 0 || (u.weight != nullptr && u.mask != nullptr), where, "layer ", l,
                            ": weight or mask is null with n = ", u.n);
    ::east::detail::require(u.n_grow == 0 || u.grad != nullptr, where, "layer ", l, ": n_grow = ", u.n_grow,
                            " needs a gradient (got null)");
    ::east::detail::require(u.n_drop <= u.n && u.n_grow <= u.n, where, "layer ", l, ": n_drop = ", u.n_drop,
                            ", n_grow = ", u.n_grow, " (valid: 0..n = ", u.n, ")");
    ::east::detail::require(u.num_state >= 0 && u.num_state <= kMaxStateBuffers, where, "layer ", l,
                            ": num_state = ", u.num_state, " (valid: 0..", kMaxStateBuffers, ")");
    for (int s = 0; s < u.num_state; ++s)
      ::east::detail::require(u.n == 0 || u.state[s] != nullptr, where, "layer ", l, ": state[", s,
                              "] is null");
  }
  std::size_t max_n = 0, total_words = 0;
  for (std::size_t l = 0; l < L; ++l) {
    max_n = layers[l].n > max_n ? layers[l].n : max_n;
    total_words += detail::words_for(layers[l].n);
  }
  // Temporary storage of the largest per-layer selection and marking, reused layer by layer
  // (stream order makes the reuse safe).
  std::size_t sel_bytes = 0, mark_bytes = 0;
  cudaError_t err = cudaSuccess;
  for (std::size_t l = 0; l <= L; ++l) {
    const std::size_t n = l < L ? layers[l].n : max_n;
    std::size_t sb = 0, mb = 0;
    if ((err = select_abs(nullptr, sb, nullptr, n, 0, Extreme::largest, nullptr, Among::all, nullptr,
                          stream)) != cudaSuccess)
      return err;
    if ((err = mark_selected_abs(nullptr, mb, nullptr, n, nullptr, Extreme::largest, nullptr, Among::all,
                                 nullptr, stream)) != cudaSuccess)
      return err;
    sel_bytes = sb > sel_bytes ? sb : sel_bytes;
    mark_bytes = mb > mark_bytes ? mb : mark_bytes;
  }
  void* parts[4] = {nullptr, nullptr, nullptr, nullptr};
  const std::size_t sizes[4] = {sizeof(std::uint64_t) * total_words, sizeof(std::uint64_t) * total_words,
                                sel_bytes, mark_bytes};
  err = detail::alias_temporaries(d_temp, temp_bytes, parts, sizes);
  if (err != cudaSuccess || d_temp == nullptr) return err;
  if (d_status == nullptr || d_failed == nullptr) return cudaErrorInvalidValue;
  auto* dropped_all = static_cast<std::uint64_t*>(parts[0]);
  auto* grown_all = static_cast<std::uint64_t*>(parts[1]);
  if ((err = cudaMemsetAsync(d_failed, 0, sizeof(int), stream)) != cudaSuccess) return err;
  if ((err = cudaMemsetAsync(parts[0], 0, sizes[0], stream)) != cudaSuccess) return err;
  if ((err = cudaMemsetAsync(parts[1], 0, sizes[1], stream)) != cudaSuccess) return err;

  // Phase 1: decide every layer's dropped and grown sets; change nothing.
  std::size_t off = 0;
  for (std::size_t l = 0; l < L; ++l) {
    const LayerUpdate& u = layers[l];
    MaskUpdateStatus* st = d_status + l;
    std::uint64_t* dropped = dropped_all + off;
    std::uint64_t* grown = grown_all + off;
    off += detail::words_for(u.n);
    const unsigned grid = detail::elt_grid(u.n);
    detail::nonfinite_init_kernel<<<1, 1, 0, stream>>>(&st->weight_nonfinite.count,
                                                       &st->weight_nonfinite.first, u.n);
    detail::nonfinite_init_kernel<<<1, 1, 0, stream>>>(&st->grad_nonfinite.count, &st->grad_nonfinite.first,
                                                       u.n);
    if (u.n > 0)
      detail::nonfinite_kernel<<<grid, detail::kEltThreads, 0, stream>>>(
          u.weight, u.n, &st->weight_nonfinite.count, &st->weight_nonfinite.first, d_failed);
    if (u.n > 0 && u.n_grow > 0)
      detail::nonfinite_kernel<<<grid, detail::kEltThreads, 0, stream>>>(
          u.grad, u.n, &st->grad_nonfinite.count, &st->grad_nonfinite.first, d_failed);
    std::size_t b = sel_bytes;
    if ((err = select_abs(parts[2], b, u.weight, u.n, u.n_drop, Extreme::smallest, u.mask, Among::active,
                          &st->drop, stream)) != cudaSuccess)
      return err;
    b = mark_bytes;
    if ((err = mark_selected_abs(parts[3], b, u.weight, u.n, &st->drop, Extreme::smallest, u.mask,
                                 Among::active, dropped, stream)) != cudaSuccess)
      return err;
    // With n_grow = 0 the gradient is not read: select over the weights with k = 0.
    const float* gsrc = u.n_grow > 0 ? u.grad : u.weight;
    b = sel_bytes;
    if ((err = select_abs(parts[2], b, gsrc, u.n, u.n_grow, Extreme::largest, u.mask, Among::inactive,
                          &st->grow, stream)) != cudaSuccess)
      return err;
    b = mark_bytes;
    if ((err = mark_selected_abs(parts[3], b, gsrc, u.n, &st->grow, Extreme::largest, u.mask, Among::inactive,
                                 grown, stream)) != cudaSuccess)
      return err;
    detail::update_check_kernel<<<1, 1, 0, stream>>>(st, d_failed);
    // A launch that failed would leave this layer undecided (and *d_failed possibly unraised):
    // stop before any commit kernel is queued, so a failed call changes nothing.
    if ((err = cudaPeekAtLastError()) != cudaSuccess) return err;
  }
  // Phase 2: commit, unless some layer failed.
  off = 0;
  for (std::size_t l = 0; l < L; ++l) {
    const LayerUpdate& u = layers[l];
    detail::StatePtrs sp{};
    sp.count = u.num_state;
    for (int s = 0; s < u.num_state; ++s) sp.p[s] = u.state[s];
    const std::size_t words = detail::words_for(u.n);
    if (words > 0) {
      detail::update_zero_kernel<<<detail::elt_grid(u.n), detail::kEltThreads, 0, stream>>>(
          u.weight, u.mask, dropped_all + off, grown_all + off, sp, u.n, d_failed);
      detail::update_words_kernel<<<detail::grid_for(detail::div_up(words, 256), 16), 256, 0, stream>>>(
          u.mask, u.ever_active, dropped_all + off, grown_all + off, words, d_failed);
    }
    off += words;
  }
  return cudaGetLastError();
}

/// Host check of the statuses copied back after a failed mask_update: throws
/// east::InvalidArgument naming the first failing layer (by index) and the reason.
inline void check_mask_update(const MaskUpdateStatus* status, std::size_t L,
                              const char* where = "east::cuda::mask_update") {
  for (std::size_t l = 0; l < L; ++l) {
    const auto& s = status[l];
    ::east::detail::require(s.weight_nonfinite.count == 0, where, "layer ", l, " has ",
                            s.weight_nonfinite.count, " non-finite weight(s), first at index ",
                            s.weight_nonfinite.first, " (valid: finite values)");
    ::east::detail::require(s.grad_nonfinite.count == 0, where, "layer ", l, " has ", s.grad_nonfinite.count,
                            " non-finite gradient(s), first at index ", s.grad_nonfinite.first,
                            " (valid: finite values)");
    check_selection(s.drop, where);
    check_selection(s.grow, where);
  }
}

}  // namespace east::cuda
