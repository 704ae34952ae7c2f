#pragma once
// Building blocks of exact data parallelism over any Communicator: one packed all-reduce per
// step, the mask-digest agreement check after every mask update, the settings check at start-up
// and rank 0's broadcast of the initial tensors.
//
// Why every rank makes the same mask decision as one process
// ----------------------------------------------------------
// The controller is a deterministic function of (weights, masks, optimizer state, gradients,
// step, seed, policy state): its random choices come from counter-based streams keyed by
// (seed, step, layer), not from a process or thread RNG, and its selections are exact top-k with
// index tie-breaks. By induction over steps every rank holds identical bytes of all of these:
//   * start: rank 0 broadcasts the initial tensors (FloatPack::broadcast); masks come from the
//     seed, so they agree without being sent (check_masks_agree() confirms it);
//   * each step: every rank all-reduces the same packed gradient and ends with the same bytes
//     (Gloo's ring ends with an all-gather of the reduced chunks; Reduction::rank_order has
//     every rank do the same additions in the same order); the optimizer and the controller then
//     run on identical inputs, so they produce identical outputs.
// The digest check guards the induction against what breaks it: different binaries or settings,
// kernels whose result depends on the machine (FMA or not, instruction-set dispatch) in the
// optimizer step, or nondeterministic reductions.
//
// Why the reduced gradient can equal one process accumulating the same micro-batches
// ----------------------------------------------------------------------------------
// One process with K micro-batches accumulates g = g0; g += g1; ... (libtorch's AccumulateGrad:
// one IEEE addition per element per micro-batch, left to right). N = K ranks, rank r computing
// micro-batch r, hold g_r with the same bits when forward and backward are deterministic given
// (weights, micro-batch) — the same kernels and, for libtorch's CPU reductions, the same thread
// count. The sum over ranks then matches bit for bit when its order of additions matches:
//   * N = 2: any all-reduce computes fl(g0 + g1) or fl(g1 + g0) per element, and IEEE addition
//     is commutative, so Gloo's ring is exact (test_distributed_gloo checks it on ±0, ±inf,
//     subnormals and random values).
//   * N >= 3: Gloo's ring reduces each chunk starting at a different rank, e.g. (g1 + g2) + g0
//     for one chunk; floating-point addition is not associative, so the result is the same on
//     every rank but generally not the one process's ((g0 + g1) + g2). Reduction::rank_order
//     all-gathers every rank's buffer and sums g0 + g1 + ... left to right on every rank: exact
//     for any N, at (N-1)·B bytes sent per rank instead of the ring's 2(N-1)/N·B (equal at N = 2,
//     N/2 times more beyond) and N·B of memory.
// Scaling: Gloo has no average, so sum and scale. Scale the same way as the single process does
// (e.g. the loss by 1/K before backward in both runs, scale = 1 here); a power-of-two scale is
// exact in either place.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/random.hpp"
#include "communicator.hpp"

namespace east {
namespace distributed {

/// How a packed all-reduce sums over ranks (see the header comment).
enum class Reduction {
  engine,      ///< the communicator's all_reduce_sum (Gloo: ring); exact vs one process for N <= 2
  rank_order,  ///< all-gather, then every rank sums rank 0, 1, ... left to right; exact for any N
};

/// Many float buffers of different sizes (views of the caller's memory) moved as one contiguous
/// message: one collective per call instead of one per tensor.
class FloatPack {
 public:
  /// Adds a view of `n` floats at `data` (n may be 0, e.g. a layer without nonzeros).
  FloatPack& add(float* data, std::size_t n) {
    detail::require(data != nullptr || n == 0, "east::distributed::FloatPack::add()", "buffer ",
                    views_.size(), " is null with ", n, " floats");
    views_.emplace_back(data, n);
    size_ += n;
    return *this;
  }
  FloatPack& add(std::vector<float>& v) { return add(v.data(), v.size()); }
  void clear() {
    views_.clear();
    size_ = 0;
  }
  /// Total floats over all views.
  std::size_t size() const { return size_; }
  /// Number of views.
  std::size_t count() const { return views_.size(); }
  std::size_t bytes() const { return size_ * sizeof(float); }

  /// Copies every view, in order, into `out` (size() floats).
  void pack(float* out) const {
    for (const auto& v : views_) {
      if (v.second) std::memcpy(out, v.first, v.second * sizeof(float));
      out += v.second;
    }
  }
  /// Copies `in` (size() floats) back into the views, multiplied by `scale` unless it is 1.
  void unpack(const float* in, float scale = 1.0f) {
    for (const auto& v : views_) {
      if (scale == 1.0f) {
        if (v.second) std::memcpy(v.first, in, v.second * sizeof(float));
      } else {
        for (std::size_t i = 0; i < v.second; ++i) v.first[i] = in[i] * scale;
      }
      in += v.second;
    }
  }

  /// Sums every view over all ranks with one collective, then multiplies by `scale` (1/N for a
  /// mean: Gloo has no average). Every rank ends with the same bytes.
  void all_reduce_sum(Communicator& comm, Reduction how = Reduction::engine, float scale = 1.0f) {
    if (size_ == 0) return;
    buffer_.resize(size_);
    pack(buffer_.data());
    if (how == Reduction::engine || comm.world_size() == 1) {
      comm.all_reduce_sum(buffer_.data(), size_);
    } else {
      const auto all = comm.all_gather_bytes(buffer_.data(), bytes());
      const float* parts = reinterpret_cast<const float*>(all.data());
      std::memcpy(buffer_.data(), parts, bytes());  // rank 0's part, then + rank 1's, ...
      for (int r = 1; r < comm.world_size(); ++r) {
        const float* x = parts + static_cast<std::size_t>(r) * size_;
        for (std::size_t i = 0; i < size_; ++i) buffer_[i] = buffer_[i] + x[i];
      }
    }
    unpack(buffer_.data(), scale);
  }

  /// Overwrites every view with rank `root`'s values (one collective), e.g. the initial weights.
  void broadcast(Communicator& comm, int root = 0) {
    if (size_ == 0) return;
    buffer_.resize(size_);
    pack(buffer_.data());
    comm.broadcast(buffer_.data(), size_, root);
    unpack(buffer_.data());
  }

 private:
  std::vector<std::pair<float*, std::size_t>> views_;
  std::size_t size_ = 0;
  std::vector<float> buffer_;  // reused between steps
};

/// 64-bit digest of raw bytes (e.g. a weight tensor), for agreement checks.
inline std::uint64_t digest_bytes(const void* data, std::size_t bytes) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  std::uint64_t h = mix64(bytes);
  std::size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = mix64(h ^ w);
  }
  std::uint64_t tail = 0;
  if (i < bytes) std::memcpy(&tail, p + i, bytes - i);
  return mix64(h ^ tail ^ 0x7A11);
}

/// Per-item digests every rank must agree on (masks, weights), with one overall digest.
struct Digests {
  std::uint64_t overall = 0;
  std::vector<std::string> names;
  std::vector<std::uint64_t> items;
};

/// The controller's digest() and one digest per layer mask.
template <class ControllerT>
Digests mask_digests(const ControllerT& controller) {
  Digests d;
  d.overall = controller.digest();
  const auto& masks = controller.masks();
  for (std::size_t l = 0; l < masks.size(); ++l) {
    d.names.push_back(controller.params()[l].name);
    d.items.push_back(masks[l].digest());
  }
  return d;
}

/// Checks that every rank holds the same `what` (e.g. "masks") after `step`. One all-gather of 8
/// bytes when they agree; otherwise a second gathers the per-item digests and every rank throws
/// the same RankDisagreement naming the step, the first differing item and each rank's digest.
inline void check_digests_agree(Communicator& comm, std::int64_t step, const std::string& what,
                                const Digests& d) {
  const auto overall = comm.all_gather(d.overall);
  if (std::all_of(overall.begin(), overall.end(), [&](std::uint64_t x) { return x == overall[0]; })) return;
  const auto where = "east::distributed::check_digests_agree()";
  const auto fail = [&](const std::string& detail_text) {
    return RankDisagreement(detail::concat(where, ": ", what, " differ across ranks after step ", step, ": ",
                                           detail_text, "; every rank stops"));
  };
  const auto counts = comm.all_gather(static_cast<std::uint64_t>(d.items.size()));
  for (int r = 1; r < comm.world_size(); ++r)
    if (counts[r] != counts[0])
      throw fail(detail::concat("rank 0 has ", counts[0], " items, rank ", r, " has ", counts[r]));
  const std::size_t n = d.items.size();
  const auto items = comm.all_gather(d.items.data(), n);
  for (std::size_t i = 0; i < n; ++i) {
    bool same = true;
    for (int r = 1; r < comm.world_size(); ++r) same = same && items[r * n + i] == items[i];
    if (same) continue;
    std::string per_rank;
    for (int r = 0; r < comm.world_size(); ++r) {
      char hex[20];
      std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(items[r * n + i]));
      per_rank += detail::concat(r ? ", " : "", "rank ", r, " ", hex);
    }
    throw fail(detail::concat("first differing is '", i < d.names.size() ? d.names[i] : std::to_string(i),
                              "' (index ", i, "): ", per_rank));
  }
  throw fail("the overall digests differ although every item agrees");
}

/// check_digests_agree() of the controller's masks: call on every rank after every mask update.
template <class ControllerT>
void check_masks_agree(Communicator& comm, std::int64_t step, const ControllerT& controller) {
  check_digests_agree(comm, step, "masks", mask_digests(controller));
}

/// Settings every rank must share (name, value), e.g. the trainer's flags without --rank.
using Settings = std::vector<std::pair<std::string, std::string>>;

inline std::string serialize_settings(const Settings& s) {
  std::string out;
  for (const auto& kv : s) {
    out += kv.first;
    out.push_back('\0');
    out += kv.second;
    out.push_back('\0');
  }
  return out;
}

inline std::uint64_t settings_fingerprint(const Settings& s) {
  const auto text = serialize_settings(s);
  return digest_bytes(text.data(), text.size());
}

namespace detail_settings {
inline Settings parse(const std::uint8_t* p, std::size_t n) {
  Settings s;
  std::size_t i = 0;
  while (i < n && p[i] != 0xFF) {
    std::string k, v;
    while (i < n && p[i] != 0) k.push_back(static_cast<char>(p[i++]));
    ++i;
    while (i < n && p[i] != 0) v.push_back(static_cast<char>(p[i++]));
    ++i;
    s.emplace_back(std::move(k), std::move(v));
  }
  return s;
}
inline const std::string* find(const Settings& s, const std::string& key) {
  for (const auto& kv : s)
    if (kv.first == key) return &kv.second;
  return nullptr;
}
}  // namespace detail_settings

/// Start-up check: every rank must pass the same settings. One all-gather of 8 bytes when they
/// agree; otherwise every rank gathers all settings and throws the same InvalidArgument naming
/// the first differing setting and its value on every rank.
inline void check_settings_agree(Communicator& comm, const Settings& mine) {
  const auto prints = comm.all_gather(settings_fingerprint(mine));
  if (std::all_of(prints.begin(), prints.end(), [&](std::uint64_t x) { return x == prints[0]; })) return;
  std::string text = serialize_settings(mine);
  const auto lengths = comm.all_gather(static_cast<std::uint64_t>(text.size()));
  const std::size_t longest = *std::max_element(lengths.begin(), lengths.end()) + 1;
  text.resize(longest, '\xFF');  // 0xFF never starts a setting name: the end marker
  const auto all = comm.all_gather_bytes(text.data(), longest);
  std::vector<Settings> per_rank;
  for (int r = 0; r < comm.world_size(); ++r)
    per_rank.push_back(detail_settings::parse(all.data() + r * longest, longest));
  std::vector<std::string> keys;  // rank 0's order, then names only other ranks have
  for (const auto& s : per_rank)
    for (const auto& kv : s)
      if (std::find(keys.begin(), keys.end(), kv.first) == keys.end()) keys.push_back(kv.first);
  for (const auto& k : keys) {
    const std::string* v0 = detail_settings::find(per_rank[0], k);
    bool same = true;
    for (const auto& s : per_rank) {
      const std::string* v = detail_settings::find(s, k);
      same = same && ((v == nullptr) == (v0 == nullptr)) && (!v || *v == *v0);
    }
    if (same) continue;
    std::string values;
    for (int r = 0; r < comm.world_size(); ++r) {
      const std::string* v = detail_settings::find(per_rank[r], k);
      values += detail::concat(r ? ", " : "", "rank ", r, " ", v ? "'" + *v + "'" : std::string("(unset)"));
    }
    throw InvalidArgument(
        detail::concat("east::distributed::check_settings_agree(): ranks were started with "
                       "different settings: '",
                       k, "' is ", values, " (valid: the same value on every rank)"));
  }
  throw InvalidArgument(
      "east::distributed::check_settings_agree(): ranks were started with settings in a different order "
      "(valid: the same settings in the same order on every rank)");
}

}  // namespace distributed
}  // namespace east
