#pragma once
// DyReLU-B with EAST's phasing as a torch::nn module. Two interchangeable backends:
//   torch_ops — a composition of torch operations differentiated by autograd;
//   kernels   — east's framework-free kernels (east/activations/dyrelu.hpp) wrapped in a
//               torch::autograd::Function.
// Both compute, per sample b and channel c (EAST-SPEC §2):
//   theta = GAP(x); d = 2σ(W2·ReLU(W1·theta + b1) + b2) − 1 (4C values, [Δa1, Δa2, Δb1, Δb2]
//   per channel); [a1, a2, b1, b2] = [1, 0, 0, 0] + β·[1, 1, 0.5, 0.5]·d; y = max(a1 x + b1, a2 x + b2).
// β = 0 is exactly ReLU and skips the hyper-network.
#include <torch/torch.h>

#include <memory>
#include <string>

#include "../../activations/dyrelu.hpp"
#include "../../core/error.hpp"
#include "registration.hpp"

namespace east {
namespace torch_adapter {

/// Which implementation a DyReLUB module runs.
enum class DyReLUBackend { torch_ops, kernels };

inline const char* to_string(DyReLUBackend b) { return b == DyReLUBackend::torch_ops ? "torch" : "kernels"; }

namespace detail {
/// autograd::Function around east::dyrelu_forward / dyrelu_backward. The workspace (owned by
/// the module) carries forward's intermediates to backward; one forward per backward.
struct DyReLUKernelFunction : public torch::autograd::Function<DyReLUKernelFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor w1,
                               torch::Tensor b1, torch::Tensor w2, torch::Tensor b2, double beta,
                               int64_t workspace, bool frozen) {
    auto* ws = reinterpret_cast<DyReLUWorkspace<float>*>(workspace);
    x = x.contiguous();
    const int B = static_cast<int>(x.size(0)), C = static_cast<int>(x.size(1));
    const int H = static_cast<int>(x.size(2)), W = static_cast<int>(x.size(3));
    DyReLUParams<float> p{w1.data_ptr<float>(), b1.data_ptr<float>(), w2.data_ptr<float>(),
                          b2.data_ptr<float>(), static_cast<int>(w1.size(0))};
    torch::Tensor y = torch::empty_like(x);
    dyrelu_forward(p, x.data_ptr<float>(), y.data_ptr<float>(), B, C, H, W, beta, *ws);
    ctx->save_for_backward({x, w1, b1, w2, b2});
    ctx->saved_data["ws"] = workspace;
    ctx->saved_data["frozen"] = frozen;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w1 = saved[1], &b1 = saved[2], &w2 = saved[3], &b2 = saved[4];
    auto* ws = reinterpret_cast<DyReLUWorkspace<float>*>(ctx->saved_data["ws"].toInt());
    const bool frozen = ctx->saved_data["frozen"].toBool();
    torch::Tensor dy = grad_out[0].contiguous();
    const int B = static_cast<int>(x.size(0)), C = static_cast<int>(x.size(1));
    const int H = static_cast<int>(x.size(2)), W = static_cast<int>(x.size(3));
    DyReLUParams<float> p{w1.data_ptr<float>(), b1.data_ptr<float>(), w2.data_ptr<float>(),
                          b2.data_ptr<float>(), static_cast<int>(w1.size(0))};
    torch::Tensor dx = torch::empty_like(x);
    torch::Tensor gw1, gb1, gw2, gb2;
    if (!frozen) {
      gw1 = torch::zeros_like(w1), gb1 = torch::zeros_like(b1), gw2 = torch::zeros_like(w2),
      gb2 = torch::zeros_like(b2);
      DyReLUGrads<float> g{gw1.data_ptr<float>(), gb1.data_ptr<float>(), gw2.data_ptr<float>(),
                           gb2.data_ptr<float>()};
      dyrelu_backward(p, x.data_ptr<float>(), dy.data_ptr<float>(), dx.data_ptr<float>(), B, C, H, W, *ws,
                      &g);
    } else {
      dyrelu_backward(p, x.data_ptr<float>(), dy.data_ptr<float>(), dx.data_ptr<float>(), B, C, H, W, *ws,
                      static_cast<const DyReLUGrads<float>*>(nullptr));
    }
    return {dx, gw1, gb1, gw2, gb2, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};
}  // namespace detail

/// DyReLU-B (K = 2, reduction 4) with phasing β ∈ [0, 1]. Its hyper-network ("fc1", "fc2") is
/// never pruned (the module is NeverPruned). set_beta() each step from a phase schedule
/// (east/activations/phase_schedule.hpp); set_frozen(true) stops gradients to the hyper-network.
class DyReLUBImpl : public torch::nn::Module, public NeverPruned {
 public:
  /// @param channels C of the NCHW input  @param reduction hidden = max(1, C / reduction)
  explicit DyReLUBImpl(int64_t channels, int reduction = 4, DyReLUBackend backend = DyReLUBackend::torch_ops)
      : channels_(channels), backend_(backend) {
    east::detail::require(channels >= 1, "east::torch_adapter::DyReLUB()", "channels ", channels,
                          " (valid: >= 1)");
    const int hidden = dyrelu_hidden_size(static_cast<int>(channels), reduction);
    fc1 = register_module("fc1", torch::nn::Linear(channels, hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, 4 * channels));
    ws_ = std::make_shared<DyReLUWorkspace<float>>();
  }

  torch::Tensor forward(const torch::Tensor& x) {
    east::detail::require(x.dim() == 4 && x.size(1) == channels_, "east::torch_adapter::DyReLUB::forward()",
                          "input of shape ", x.sizes(), " (valid: N x ", channels_, " x H x W)");
    if (beta_ == 0.0) return torch::relu(x);
    if (backend_ == DyReLUBackend::kernels && x.scalar_type() == torch::kFloat && x.device().is_cpu())
      return detail::DyReLUKernelFunction::apply(x, fc1->weight, fc1->bias, fc2->weight, fc2->bias, beta_,
                                                 reinterpret_cast<int64_t>(ws_.get()), frozen_);
    return forward_torch_ops(x);
  }

  /// The torch-ops composition (also the reference the kernels are tested against).
  torch::Tensor forward_torch_ops(const torch::Tensor& x) {
    if (beta_ == 0.0) return torch::relu(x);
    const auto B = x.size(0), C = x.size(1);
    torch::Tensor w1 = fc1->weight, b1 = fc1->bias, w2 = fc2->weight, b2 = fc2->bias;
    if (frozen_) w1 = w1.detach(), b1 = b1.detach(), w2 = w2.detach(), b2 = b2.detach();
    auto theta = x.mean({2, 3});
    auto h = torch::relu(torch::linear(theta, w1, b1));
    auto d = (2.0 * torch::sigmoid(torch::linear(h, w2, b2)) - 1.0).view({B, C, 4});
    // [1, 0, 0, 0] + β·[1, 1, 0.5, 0.5]·d
    auto scale = torch::tensor({1.0f, 1.0f, 0.5f, 0.5f}, x.options()) * static_cast<float>(beta_);
    auto init = torch::tensor({1.0f, 0.0f, 0.0f, 0.0f}, x.options());
    auto coef = (d * scale + init).unsqueeze(-1).unsqueeze(-1);  // B x C x 4 x 1 x 1
    auto a1 = coef.select(2, 0), a2 = coef.select(2, 1), c1 = coef.select(2, 2), c2 = coef.select(2, 3);
    return torch::max(x * a1 + c1, x * a2 + c2);
  }

  void set_beta(double beta) {
    east::detail::require(beta >= 0.0 && beta <= 1.0, "east::torch_adapter::DyReLUB::set_beta()", "beta ",
                          beta, " (valid: [0, 1])");
    beta_ = beta;
  }
  double beta() const { return beta_; }
  void set_frozen(bool frozen) { frozen_ = frozen; }
  bool frozen() const { return frozen_; }
  void set_backend(DyReLUBackend b) { backend_ = b; }
  DyReLUBackend backend() const { return backend_; }
  int64_t channels() const { return channels_; }

  torch::nn::Linear fc1{nullptr}, fc2{nullptr};

 private:
  int64_t channels_;
  DyReLUBackend backend_;
  double beta_ = 1.0;
  bool frozen_ = false;
  std::shared_ptr<DyReLUWorkspace<float>> ws_;
};
TORCH_MODULE(DyReLUB);

/// Sets β (and the freeze flag) of every DyReLUB module inside `module`.
inline void set_dyrelu_phase(torch::nn::Module& module, double beta, bool frozen = false) {
  for (const auto& item : detail::all_modules(module))
    if (auto* d = item.second->as<DyReLUBImpl>()) {
      d->set_beta(beta);
      d->set_frozen(frozen);
    }
}

/// Selects the backend of every DyReLUB module inside `module`.
inline void set_dyrelu_backend(torch::nn::Module& module, DyReLUBackend backend) {
  for (const auto& item : detail::all_modules(module))
    if (auto* d = item.second->as<DyReLUBImpl>()) d->set_backend(backend);
}

}  // namespace torch_adapter
}  // namespace east
