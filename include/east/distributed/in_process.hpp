#pragma once
// InProcessGroup: N ranks as N threads of one process, for tests and for reasoning about exact
// data parallelism without a network. Its all-reduce sums in rank order ((x0 + x1) + x2 ...),
// i.e. exactly what one process accumulating micro-batches 0, 1, ... computes; Gloo's ring does
// not for N > 2 (see distributed/exact.hpp). A collective that waits longer than the timeout,
// a rank that calls abort(), or ranks calling different collectives fail on every rank with a
// CommunicationError naming the operation and the missing or aborted peers.
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "communicator.hpp"

namespace east {
namespace detail {

struct InProcessShared {
  explicit InProcessShared(int n) : data(n), bytes(n), kinds(n), roots(n), outs(n), arrived_flag(n) {}
  std::mutex m;
  std::condition_variable cv;
  int arrived = 0;
  std::uint64_t generation = 0;
  std::vector<void*> data;  // in-place buffer (all-reduce, broadcast) or input (all-gather)
  std::vector<std::size_t> bytes;
  std::vector<int> kinds;  // CallKind, or -1 with a dtype folded in for all-reduce
  std::vector<int> roots;
  std::vector<void*> outs;
  std::vector<bool> arrived_flag;
  bool failed = false;
  std::string failure;
};

}  // namespace detail

namespace distributed {

class InProcessGroup;

/// One rank of an InProcessGroup; use it from one thread.
class InProcessCommunicator final : public Communicator {
 public:
  std::string backend() const override { return "in-process"; }
  /// Marks this rank as dead: every rank blocked in (or later entering) a collective fails.
  void abort(const std::string& why) {
    std::lock_guard<std::mutex> lock(s_->m);
    if (!s_->failed) {
      s_->failed = true;
      s_->failure = detail::concat("rank ", rank(), " aborted: ", why);
    }
    s_->cv.notify_all();
  }

 protected:
  void do_all_reduce_sum(void* data, std::size_t n, DType type) override {
    collective("all_reduce_sum", 16 + static_cast<int>(type), data, n * dtype_size(type), 0, nullptr);
  }
  void do_broadcast(void* data, std::size_t bytes, int root) override {
    collective("broadcast", static_cast<int>(CallKind::broadcast), data, bytes, root, nullptr);
  }
  void do_all_gather(const void* data, std::size_t bytes, void* out) override {
    collective("all_gather", static_cast<int>(CallKind::all_gather), const_cast<void*>(data), bytes, 0, out);
  }
  void do_barrier() override {
    collective("barrier", static_cast<int>(CallKind::barrier), nullptr, 0, 0, nullptr);
  }

 private:
  friend class InProcessGroup;
  InProcessCommunicator(int rank, int world, std::chrono::milliseconds timeout,
                        std::shared_ptr<detail::InProcessShared> s)
      : Communicator(rank, world, timeout), s_(std::move(s)) {}

  template <class T>
  static void sum_in_rank_order(detail::InProcessShared& s, int world, std::size_t n) {
    // Accumulate into rank 0's buffer first (x0 + x1 + ... left to right), then copy out.
    T* acc = static_cast<T*>(s.data[0]);
    for (int r = 1; r < world; ++r) {
      const T* x = static_cast<const T*>(s.data[static_cast<std::size_t>(r)]);
      for (std::size_t i = 0; i < n; ++i) acc[i] = acc[i] + x[i];
    }
    for (int r = 1; r < world; ++r) std::memcpy(s.data[static_cast<std::size_t>(r)], acc, n * sizeof(T));
  }

  // The last rank to arrive checks that every rank made the same call and performs it on
  // everybody's buffers (the others are blocked, so their buffers are alive).
  void finish(detail::InProcessShared& s) {
    const int world = world_size();
    for (int r = 1; r < world; ++r)
      if (s.kinds[r] != s.kinds[0] || s.bytes[r] != s.bytes[0] || s.roots[r] != s.roots[0]) {
        s.failed = true;
        s.failure = detail::concat("ranks made different calls: rank 0 kind ", s.kinds[0], " ", s.bytes[0],
                                   " bytes root ", s.roots[0], ", rank ", r, " kind ", s.kinds[r], " ",
                                   s.bytes[r], " bytes root ", s.roots[r]);
        return;
      }
    const int kind = s.kinds[0];
    const std::size_t bytes = s.bytes[0];
    if (kind >= 16) {
      const auto type = static_cast<DType>(kind - 16);
      const std::size_t n = bytes / dtype_size(type);
      if (type == DType::float32) sum_in_rank_order<float>(s, world, n);
      if (type == DType::float64) sum_in_rank_order<double>(s, world, n);
      if (type == DType::uint64) sum_in_rank_order<std::uint64_t>(s, world, n);
    } else if (kind == static_cast<int>(CallKind::broadcast)) {
      for (int r = 0; r < world; ++r)
        if (r != s.roots[0]) std::memcpy(s.data[r], s.data[s.roots[0]], bytes);
    } else if (kind == static_cast<int>(CallKind::all_gather)) {
      for (int r = 0; r < world; ++r)
        for (int q = 0; q < world; ++q)
          std::memcpy(static_cast<std::uint8_t*>(s.outs[r]) + static_cast<std::size_t>(q) * bytes, s.data[q],
                      bytes);
    }
  }

  void collective(const char* op, int kind, void* data, std::size_t bytes, int root, void* out) {
    auto& s = *s_;
    const auto r = static_cast<std::size_t>(rank());
    std::unique_lock<std::mutex> lock(s.m);
    auto fail = [&](const std::string& why) {
      return CommunicationError(detail::concat("east::distributed::InProcessGroup: ", op, " on rank ", rank(),
                                               " of ", world_size(), " failed: ", why));
    };
    if (s.failed) throw fail(s.failure);
    s.data[r] = data;
    s.bytes[r] = bytes;
    s.kinds[r] = kind;
    s.roots[r] = root;
    s.outs[r] = out;
    s.arrived_flag[r] = true;
    const std::uint64_t gen = s.generation;
    if (++s.arrived == world_size()) {
      finish(s);
      s.arrived = 0;
      s.arrived_flag.assign(s.arrived_flag.size(), false);
      ++s.generation;
      s.cv.notify_all();
      if (s.failed) throw fail(s.failure);
      return;
    }
    const bool done = s.cv.wait_for(lock, timeout(), [&] { return s.generation != gen || s.failed; });
    if (s.generation != gen && !s.failed) return;
    if (!done && !s.failed) {
      std::string missing;
      for (std::size_t q = 0; q < s.arrived_flag.size(); ++q)
        if (!s.arrived_flag[q]) missing += (missing.empty() ? "" : ", ") + std::to_string(q);
      s.failed = true;
      s.failure = detail::concat("timed out after ", timeout().count(), " ms waiting for rank(s) ", missing);
      s.cv.notify_all();
    }
    throw fail(s.failure);
  }

  std::shared_ptr<detail::InProcessShared> s_;
};

/// Makes the `world_size` communicators of one in-process group; hand one to each thread.
class InProcessGroup {
 public:
  explicit InProcessGroup(int world_size, std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    detail::require(world_size >= 1, "east::distributed::InProcessGroup()", "world size ", world_size,
                    " (valid: >= 1)");
    auto s = std::make_shared<detail::InProcessShared>(world_size);
    for (int r = 0; r < world_size; ++r)
      ranks_.emplace_back(new InProcessCommunicator(r, world_size, timeout, s));
  }
  InProcessCommunicator& operator[](int rank) { return *ranks_.at(static_cast<std::size_t>(rank)); }
  int size() const { return static_cast<int>(ranks_.size()); }

 private:
  std::vector<std::unique_ptr<InProcessCommunicator>> ranks_;
};

}  // namespace distributed
}  // namespace east
