#pragma once
// Data-parallel helpers for torch::nn modules over any east Communicator (the Gloo engine is
// adapters/torch/gloo.hpp, which needs c10d's Gloo headers; these helpers do not): rank 0's
// initial parameters and buffers on every rank. Not part of adapters/torch.hpp.
#include <torch/torch.h>

#include <string>
#include <vector>

#include "../../core/error.hpp"
#include "../../distributed/communicator.hpp"
#include "../../distributed/exact.hpp"

namespace east {
namespace torch_adapter {

/// Views of every floating-point parameter and buffer of `module` (BN running statistics
/// included), in registration order, for FloatPack::broadcast() of the initial state.
inline distributed::FloatPack pack_module_state(torch::nn::Module& module) {
  constexpr const char* where = "east::torch_adapter::pack_module_state()";
  distributed::FloatPack pack;
  const auto add = [&](const std::string& name, at::Tensor& t) {
    if (!t.defined() || t.scalar_type() != at::kFloat) return;  // e.g. num_batches_tracked (int64)
    east::detail::require(t.device().is_cpu() && t.is_contiguous(), where, "tensor '", name,
                          "' is not a contiguous CPU tensor");
    pack.add(t.data_ptr<float>(), static_cast<std::size_t>(t.numel()));
  };
  for (auto& p : module.named_parameters()) add(p.key(), p.value());
  for (auto& b : module.named_buffers()) add(b.key(), b.value());
  return pack;
}

/// Rank `root`'s parameters and buffers on every rank (one broadcast of the float ones, one of
/// the int64 ones such as BatchNorm's num_batches_tracked). Call once after building the model.
inline void broadcast_module_state(distributed::Communicator& comm, torch::nn::Module& module, int root = 0) {
  torch::NoGradGuard no_grad;
  auto pack = pack_module_state(module);
  pack.broadcast(comm, root);
  std::vector<int64_t> ints;
  std::vector<at::Tensor> int_tensors;
  for (auto& b : module.named_buffers())
    if (b.value().defined() && b.value().scalar_type() == at::kLong) {
      int_tensors.push_back(b.value());
      const auto* p = b.value().data_ptr<int64_t>();
      ints.insert(ints.end(), p, p + b.value().numel());
    }
  if (ints.empty()) return;
  comm.broadcast(ints.data(), ints.size(), root);
  std::size_t k = 0;
  for (auto& t : int_tensors) {
    auto* p = t.data_ptr<int64_t>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = ints[k++];
  }
}

}  // namespace torch_adapter
}  // namespace east
