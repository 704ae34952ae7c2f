#pragma once
// GlooCommunicator: east's Communicator (distributed/communicator.hpp) on libtorch's c10d Gloo
// process group — TCPStore (tcp://HOST:PORT, rank 0 serves it) or FileStore (file:///PATH) for
// the rendezvous, Gloo's TCP transport for the collectives. Needs libtorch built with
// distributed support (Debian's libtorch 1.13 is) and Gloo's headers (Debian's libgloo-dev);
// CMake's EAST_HAS_GLOO says whether both were found. Needs only ATen and c10d, not
// <torch/torch.h>; adapters/torch/distributed.hpp adds helpers for torch::nn modules. Not part of
// adapters/torch.hpp.
//
// Failures: a peer that dies makes the others' next collective fail at once (connection reset),
// a peer that hangs makes it fail after the timeout; both throw
// distributed::CommunicationError naming the operation, this rank, the timeout and Gloo's
// message (which names the peer's address). Never a hang.
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1  // c10d's Gloo header is empty without it
#endif
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <signal.h>
#include <string>
#include <vector>

#include "../../core/error.hpp"
#include "../../distributed/communicator.hpp"
#include "../../distributed/exact.hpp"
#include "../../distributed/init.hpp"

namespace east {
namespace torch_adapter {

/// One rank of a Gloo group. Construction joins the group (blocks until every rank has joined,
/// at most options.timeout); destruction leaves it.
class GlooCommunicator final : public distributed::Communicator {
 public:
  /// @param options world size, rank, init address, timeout, interface; unset fields come from
  /// the environment (distributed::resolve_init_options()). Throws InvalidArgument for bad
  /// options, distributed::CommunicationError when the group cannot be formed in time.
  explicit GlooCommunicator(distributed::InitOptions options = {})
      : GlooCommunicator(distributed::resolve_init_options(std::move(options)), Resolved{}) {}

  std::string backend() const override { return "gloo"; }
  /// The options after resolution (environment filled in).
  const distributed::InitOptions& options() const { return options_; }

 protected:
  void do_all_reduce_sum(void* data, std::size_t n, distributed::DType type) override {
    const auto st = type == distributed::DType::float32   ? at::kFloat
                    : type == distributed::DType::float64 ? at::kDouble
                                                          : at::kLong;  // uint64 sums wrap like int64
    std::vector<at::Tensor> t{at::from_blob(data, {static_cast<int64_t>(n)}, at::TensorOptions().dtype(st))};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = timeout();
    run("all_reduce_sum", [&] { return pg_->allreduce(t, o); });
  }
  void do_broadcast(void* data, std::size_t bytes, int root) override {
    std::vector<at::Tensor> t{bytes_tensor(data, bytes)};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = timeout();
    run("broadcast", [&] { return pg_->broadcast(t, o); });
  }
  void do_all_gather(const void* data, std::size_t bytes, void* out) override {
    std::vector<at::Tensor> in{bytes_tensor(const_cast<void*>(data), bytes)};
    std::vector<std::vector<at::Tensor>> outs(1);
    for (int r = 0; r < world_size(); ++r)
      outs[0].push_back(
          bytes_tensor(static_cast<std::uint8_t*>(out) + static_cast<std::size_t>(r) * bytes, bytes));
    c10d::AllgatherOptions o;
    o.timeout = timeout();
    run("all_gather", [&] { return pg_->allgather(outs, in, o); });
  }
  void do_barrier() override {
    c10d::BarrierOptions o;
    o.timeout = timeout();
    run("barrier", [&] { return pg_->barrier(o); });
  }

 private:
  struct Resolved {};
  GlooCommunicator(distributed::InitOptions o, Resolved)
      : Communicator(o.rank, o.world_size, o.timeout), options_(std::move(o)) {
    // A write to a dead peer's socket must become an error, not a silent SIGPIPE death.
    struct sigaction old {};
    if (sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
    if (world_size() == 1 && options_.init.empty()) options_.init = "none";
    try {
      if (options_.init == "none") {
        store_ = c10::make_intrusive<c10d::HashStore>();
      } else {
        const auto a = distributed::parse_init_url(options_.init);
        if (a.kind == distributed::InitAddress::Kind::file) {
          store_ = c10::make_intrusive<c10d::FileStore>(a.path, world_size());
        } else {
          c10d::TCPStoreOptions so;
          so.port = a.port;
          so.isServer = rank() == 0;
          so.numWorkers = static_cast<std::size_t>(world_size());
          so.waitWorkers = true;
          so.timeout = timeout();
          store_ = c10::make_intrusive<c10d::TCPStore>(a.host, so);
        }
      }
      store_->setTimeout(timeout());
      auto go = c10d::ProcessGroupGloo::Options::create(timeout());
      go->devices.push_back(options_.interface.empty()
                                ? c10d::ProcessGroupGloo::createDefaultDevice()
                                : c10d::ProcessGroupGloo::createDeviceForInterface(options_.interface));
      pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store_, rank(), world_size(), go);
    } catch (const std::exception& e) {
      throw distributed::CommunicationError(east::detail::concat(
          "east::torch_adapter::GlooCommunicator(): rank ", rank(), " of ", world_size(),
          " could not join the group at '", options_.init, "'",
          options_.interface.empty() ? std::string() : " on interface '" + options_.interface + "'",
          " (timeout ", timeout().count(), " ms): ", first_line(e.what())));
    }
  }

  static at::Tensor bytes_tensor(void* p, std::size_t bytes) {
    return at::from_blob(p, {static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte));
  }
  // c10d's messages carry a C++ stack trace after the first line.
  static std::string first_line(const char* what) {
    std::string s(what);
    const auto nl = s.find('\n');
    return nl == std::string::npos ? s : s.substr(0, nl);
  }

  template <class Start>
  void run(const char* op, Start&& start) {
    try {
      auto work = start();
      work->wait();
    } catch (const std::exception& e) {
      throw distributed::CommunicationError(
          east::detail::concat("east::torch_adapter::GlooCommunicator: ", op, " on rank ", rank(), " of ",
                               world_size(), " failed (a peer died or did not answer within the timeout of ",
                               timeout().count(), " ms): ", first_line(e.what())));
    }
  }

  distributed::InitOptions options_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
};

}  // namespace torch_adapter
}  // namespace east
