#pragma once
// Communicator: the one seam between east's data-parallel helpers and a communication engine
// (Gloo through libtorch's c10d in adapters/torch/distributed.hpp; MPI or NCCL later). The
// controller never communicates: a training loop hands buffers to a Communicator and the
// helpers in distributed/exact.hpp, and the controller sees the reduced gradients.
//
// Every implementation goes through the same non-virtual entry points, which check arguments
// and count what each call moves (Traffic), so traffic is measured by counting, for any engine.
#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"

namespace east {
namespace distributed {

/// A collective failed: a peer died, did not answer within the timeout, or the ranks called
/// different collectives. The message names the operation, this rank and the peer or timeout.
/// After one, the communicator refuses every further call (the group is broken).
class CommunicationError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Ranks that must agree (masks after an update) do not. Thrown on every rank.
class RankDisagreement : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The kinds of call a Communicator counts.
enum class CallKind : int { all_reduce = 0, broadcast = 1, all_gather = 2, barrier = 3 };
inline constexpr std::size_t call_kind_count = 4;

inline const char* to_string(CallKind k) {
  switch (k) {
    case CallKind::all_reduce:
      return "all_reduce";
    case CallKind::broadcast:
      return "broadcast";
    case CallKind::all_gather:
      return "all_gather";
    case CallKind::barrier:
      return "barrier";
  }
  return "?";
}

/// Element types all_reduce_sum accepts.
enum class DType : std::uint8_t { float32, float64, uint64 };

inline std::size_t dtype_size(DType t) { return t == DType::float32 ? 4 : 8; }

/// Counts of one call kind.
struct TrafficCount {
  std::uint64_t calls = 0;
  /// Bytes of the buffer this rank handed in: what the call carries, independent of the engine's
  /// algorithm and of the number of ranks (an all-reduce of n floats counts 4n).
  std::uint64_t payload_bytes = 0;
  /// Estimate of the bytes this rank puts on the wire under bandwidth-optimal algorithms (see
  /// wire_bytes()); 0 on one rank.
  std::uint64_t wire_bytes = 0;
};

/// Bytes one rank sends for a call of `payload` bytes among `world_size` ranks: ring all-reduce
/// 2(N-1)/N·B (reduce-scatter + all-gather; what Gloo's default ring does), ring all-gather
/// (N-1)·B, broadcast (N-1)/N·B (the (N-1)·B a tree or chain sends, averaged over ranks),
/// barrier 0. Rounded down.
inline std::uint64_t wire_bytes(CallKind k, std::uint64_t payload, int world_size) {
  const std::uint64_t n = static_cast<std::uint64_t>(world_size);
  if (n <= 1) return 0;
  switch (k) {
    case CallKind::all_reduce:
      return 2 * (n - 1) * payload / n;
    case CallKind::all_gather:
      return (n - 1) * payload;
    case CallKind::broadcast:
      return (n - 1) * payload / n;
    case CallKind::barrier:
      return 0;
  }
  return 0;
}

/// What went through one communicator, per call kind. Subtract two snapshots to measure a step.
class Traffic {
 public:
  const TrafficCount& operator[](CallKind k) const { return counts_[static_cast<std::size_t>(k)]; }
  void record(CallKind k, std::uint64_t payload, std::uint64_t wire) {
    auto& c = counts_[static_cast<std::size_t>(k)];
    ++c.calls;
    c.payload_bytes += payload;
    c.wire_bytes += wire;
  }
  TrafficCount total() const {
    TrafficCount t;
    for (const auto& c : counts_) {
      t.calls += c.calls;
      t.payload_bytes += c.payload_bytes;
      t.wire_bytes += c.wire_bytes;
    }
    return t;
  }
  void reset() { counts_ = {}; }
  /// The traffic since `earlier` (a copy taken before).
  Traffic since(const Traffic& earlier) const {
    Traffic d;
    for (std::size_t i = 0; i < call_kind_count; ++i) {
      d.counts_[i].calls = counts_[i].calls - earlier.counts_[i].calls;
      d.counts_[i].payload_bytes = counts_[i].payload_bytes - earlier.counts_[i].payload_bytes;
      d.counts_[i].wire_bytes = counts_[i].wire_bytes - earlier.counts_[i].wire_bytes;
    }
    return d;
  }

 private:
  std::array<TrafficCount, call_kind_count> counts_{};
};

/// A group of `world_size` ranks, seen from one of them. Collectives block until every rank has
/// made the same call (same kind, same size, same root), in the same order on every rank.
/// Implementations override the do_* hooks; the public calls validate, count and mark the
/// communicator broken after a CommunicationError.
class Communicator {
 public:
  /// @param rank this process, in [0, world_size)  @param world_size >= 1
  /// @param timeout how long a collective may wait for its peers before failing
  Communicator(int rank, int world_size, std::chrono::milliseconds timeout)
      : rank_(rank), world_size_(world_size), timeout_(timeout) {
    constexpr const char* where = "east::distributed::Communicator()";
    detail::require(world_size >= 1, where, "world size ", world_size, " (valid: >= 1)");
    detail::require(rank >= 0 && rank < world_size, where, "rank ", rank, " (valid: [0, ", world_size, "))");
    detail::require(timeout.count() > 0, where, "timeout ", timeout.count(), " ms (valid: > 0)");
  }
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  /// The engine's name: "single", "in-process", "gloo".
  virtual std::string backend() const = 0;

  /// Sums `n` elements element-wise over all ranks, in place; every rank ends with the same bytes.
  void all_reduce_sum(float* data, std::size_t n) { reduce(data, n, DType::float32); }
  void all_reduce_sum(double* data, std::size_t n) { reduce(data, n, DType::float64); }
  /// Wraps modulo 2^64 (counts, digests summed as integers).
  void all_reduce_sum(std::uint64_t* data, std::size_t n) { reduce(data, n, DType::uint64); }

  /// Copies `bytes` bytes from rank `root`'s buffer into every other rank's.
  void broadcast_bytes(void* data, std::size_t bytes, int root) {
    constexpr const char* where = "east::distributed::Communicator::broadcast()";
    detail::require(root >= 0 && root < world_size_, where, "root ", root, " (valid: [0, ", world_size_,
                    "))");
    detail::require(data != nullptr || bytes == 0, where, "data is null with ", bytes, " bytes");
    if (bytes == 0) return;
    run(CallKind::broadcast, bytes, [&] { do_broadcast(data, bytes, root); });
  }
  template <class T>
  void broadcast(T* data, std::size_t n, int root) {
    static_assert(std::is_trivially_copyable<T>::value, "broadcast() copies bytes");
    broadcast_bytes(data, n * sizeof(T), root);
  }

  /// Every rank's `bytes` bytes, rank-major (rank r's at [r·bytes, (r+1)·bytes)). Every rank must
  /// pass the same size.
  std::vector<std::uint8_t> all_gather_bytes(const void* data, std::size_t bytes) {
    detail::require(data != nullptr || bytes == 0, "east::distributed::Communicator::all_gather()",
                    "data is null with ", bytes, " bytes");
    std::vector<std::uint8_t> out(bytes * static_cast<std::size_t>(world_size_));
    if (bytes == 0) return out;
    run(CallKind::all_gather, bytes, [&] { do_all_gather(data, bytes, out.data()); });
    return out;
  }
  /// Every rank's `n` values, rank-major.
  std::vector<std::uint64_t> all_gather(const std::uint64_t* data, std::size_t n) {
    const auto bytes = all_gather_bytes(data, n * sizeof(std::uint64_t));
    std::vector<std::uint64_t> out(n * static_cast<std::size_t>(world_size_));
    if (!bytes.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
    return out;
  }
  std::vector<std::uint64_t> all_gather(std::uint64_t value) { return all_gather(&value, 1); }

  /// Returns when every rank has called barrier().
  void barrier() {
    run(CallKind::barrier, 0, [&] { do_barrier(); });
  }

  const Traffic& traffic() const { return traffic_; }
  void reset_traffic() { traffic_.reset(); }
  /// True after a CommunicationError: the group is broken and every call throws.
  bool broken() const { return broken_; }

 protected:
  /// In place; `data` holds n elements of `type`.
  virtual void do_all_reduce_sum(void* data, std::size_t n, DType type) = 0;
  virtual void do_broadcast(void* data, std::size_t bytes, int root) = 0;
  /// `out` has room for world_size()·bytes bytes.
  virtual void do_all_gather(const void* data, std::size_t bytes, void* out) = 0;
  virtual void do_barrier() = 0;

 private:
  void reduce(void* data, std::size_t n, DType type) {
    detail::require(data != nullptr || n == 0, "east::distributed::Communicator::all_reduce_sum()",
                    "data is null with ", n, " elements");
    if (n == 0) return;
    const std::size_t bytes = n * dtype_size(type);
    run(CallKind::all_reduce, bytes, [&] { do_all_reduce_sum(data, n, type); });
  }

  template <class F>
  void run(CallKind kind, std::size_t bytes, F&& call) {
    if (broken_)
      throw CommunicationError(detail::concat("east::distributed: ", to_string(kind), " on rank ", rank_,
                                              " of ", world_size_, " refused: an earlier collective failed (",
                                              broken_reason_, ")"));
    try {
      call();
    } catch (const CommunicationError& e) {
      broken_ = true;
      broken_reason_ = e.what();
      throw;
    }
    traffic_.record(kind, bytes, wire_bytes(kind, bytes, world_size_));
  }

  int rank_, world_size_;
  std::chrono::milliseconds timeout_;
  Traffic traffic_;
  bool broken_ = false;
  std::string broken_reason_;
};

/// One process: rank 0 of 1. Collectives are copies or no-ops, and still counted, so a
/// single-process run reports the payload a data-parallel run would carry per rank.
class SingleProcess final : public Communicator {
 public:
  SingleProcess() : Communicator(0, 1, std::chrono::hours(24)) {}
  std::string backend() const override { return "single"; }

 protected:
  void do_all_reduce_sum(void*, std::size_t, DType) override {}
  void do_broadcast(void*, std::size_t, int) override {}
  void do_all_gather(const void* data, std::size_t bytes, void* out) override {
    std::memcpy(out, data, bytes);
  }
  void do_barrier() override {}
};

}  // namespace distributed
}  // namespace east
