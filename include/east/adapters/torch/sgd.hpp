#pragma once
// A small SGD (momentum, Nesterov, weight decay, global gradient-norm clipping) whose momentum
// buffers are allocated up front and never move, so east can mask them in place, and whose state
// is plain tensors that a checkpoint can save and restore exactly.
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "../../core/error.hpp"
#include "../../core/parameter_set.hpp"

namespace east {
namespace torch_adapter {

/// Hyperparameters of Sgd (EAST-SPEC §5 defaults).
struct SgdOptions {
  double momentum = 0.9;
  double weight_decay = 5e-4;
  bool nesterov = true;
};

/// SGD over named parameters: buf = m·buf + (g + wd·w); w -= lr·(g + wd·w + m·buf) (Nesterov)
/// or w -= lr·buf. Matches torch::optim::SGD with dampening 0.
class Sgd {
 public:
  /// @param params the module's named_parameters(); gradients are allocated (zeros) when missing.
  explicit Sgd(const torch::OrderedDict<std::string, torch::Tensor>& params, SgdOptions options = {})
      : options_(options) {
    constexpr const char* where = "east::torch_adapter::Sgd()";
    east::detail::require(options.momentum >= 0 && options.momentum < 1, where, "momentum ", options.momentum,
                          " (valid: [0, 1))");
    east::detail::require(options.weight_decay >= 0, where, "weight_decay ", options.weight_decay,
                          " (valid: >= 0)");
    east::detail::require(!options.nesterov || options.momentum > 0, where, "nesterov needs momentum > 0");
    for (const auto& p : params) {
      torch::Tensor w = p.value();
      if (!w.requires_grad()) continue;
      if (!w.grad().defined()) w.mutable_grad() = torch::zeros_like(w);
      names_.push_back(p.key());
      params_.push_back(w);
      momentum_.push_back(torch::zeros_like(w));
    }
  }

  /// Registers every momentum buffer of a layer of `params` as its optimizer state.
  void register_state(ParameterSet& params) const {
    for (std::size_t i = 0; i < names_.size(); ++i)
      if (params.find(names_[i]) != ParameterSet::npos)
        params.add_state(names_[i], momentum_[i].data_ptr<float>());
  }

  /// Zeroes gradients in place (never sets them to None: east holds views of them).
  void zero_grad() {
    for (std::size_t i = 0; i < params_.size(); ++i)
      if (!handed_over(i)) params_[i].mutable_grad().zero_();
  }

  /// Scales all gradients so their global L2 norm is at most `max_norm`; returns the norm before.
  /// `extra`: gradients of parameters updated elsewhere (e.g. SparseCompute's compact values),
  /// counted in the norm and scaled with the rest.
  double clip_grad_norm(double max_norm, const std::vector<torch::Tensor>& extra = {}) {
    double sq = 0;
    for (std::size_t i = 0; i < params_.size(); ++i)
      if (!handed_over(i)) sq += params_[i].grad().pow(2).sum().item<double>();
    for (const auto& g : extra) sq += g.pow(2).sum().item<double>();
    const double norm = std::sqrt(sq);
    if (max_norm > 0 && norm > max_norm) {
      const double s = max_norm / (norm + 1e-6);
      for (std::size_t i = 0; i < params_.size(); ++i)
        if (!handed_over(i)) params_[i].mutable_grad().mul_(s);
      for (auto g : extra) g.mul_(s);
    }
    return norm;
  }

  /// Hands parameter `name` over to another optimizer (or takes it back): zero_grad,
  /// clip_grad_norm and step skip it; its momentum buffer stays here (checkpoints, east's views).
  void set_handed_over(const std::string& name, bool handed) {
    handed_.resize(params_.size(), false);
    for (std::size_t i = 0; i < names_.size(); ++i)
      if (names_[i] == name) {
        handed_[i] = handed;
        return;
      }
    throw east::InvalidArgument("east::torch_adapter::Sgd::set_handed_over(): no parameter named '" + name +
                                "'");
  }
  bool handed_over(std::size_t i) const { return i < handed_.size() && handed_[i]; }

  /// One step at learning rate `lr`. Parameters listed in `frozen` (by index) are skipped.
  void step(double lr) {
    torch::NoGradGuard guard;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      if ((i < frozen_.size() && frozen_[i]) || handed_over(i)) continue;
      auto& w = params_[i];
      torch::Tensor d = w.grad();
      const double wd = i < decay_.size() ? decay_[i] : options_.weight_decay;
      if (wd != 0) d = d.add(w, wd);
      if (options_.momentum != 0) {
        auto& buf = momentum_[i];
        buf.mul_(options_.momentum).add_(d);
        d = options_.nesterov ? d.add(buf, options_.momentum) : buf;
      }
      w.add_(d, -lr * (i < lr_scale_.size() ? lr_scale_[i] : 1.0));
    }
  }

  /// A parameter group: every parameter whose name starts with `prefix` steps at `lr_scale` times
  /// the learning rate with weight decay `weight_decay` (the others: 1 and options().weight_decay).
  /// Returns how many parameters matched.
  std::size_t set_group(const std::string& prefix, double lr_scale, double weight_decay) {
    constexpr const char* where = "east::torch_adapter::Sgd::set_group()";
    east::detail::require(std::isfinite(lr_scale) && lr_scale >= 0, where, "lr_scale ", lr_scale, " for '",
                          prefix, "' (valid: finite, >= 0)");
    east::detail::require(std::isfinite(weight_decay) && weight_decay >= 0, where, "weight_decay ",
                          weight_decay, " for '", prefix, "' (valid: finite, >= 0)");
    lr_scale_.resize(params_.size(), 1.0);
    decay_.resize(params_.size(), options_.weight_decay);
    std::size_t n = 0;
    for (std::size_t i = 0; i < names_.size(); ++i)
      if (names_[i].compare(0, prefix.size(), prefix) == 0)
        lr_scale_[i] = lr_scale, decay_[i] = weight_decay, ++n;
    return n;
  }

  /// Freezes (skips) every parameter whose name starts with `prefix` (or un-freezes).
  void set_frozen_prefix(const std::string& prefix, bool frozen) {
    frozen_.resize(params_.size(), false);
    for (std::size_t i = 0; i < names_.size(); ++i)
      if (names_[i].compare(0, prefix.size(), prefix) == 0) frozen_[i] = frozen;
  }
  /// Freezes every parameter whose name contains `part`.
  void set_frozen_containing(const std::string& part, bool frozen) {
    frozen_.resize(params_.size(), false);
    for (std::size_t i = 0; i < names_.size(); ++i)
      if (names_[i].find(part) != std::string::npos) frozen_[i] = frozen;
  }

  const std::vector<std::string>& names() const { return names_; }
  const std::vector<torch::Tensor>& parameters() const { return params_; }
  /// Momentum buffers, one per parameter, in names() order (for checkpoints).
  std::vector<torch::Tensor>& momentum_buffers() { return momentum_; }
  const SgdOptions& options() const { return options_; }

 private:
  SgdOptions options_;
  std::vector<std::string> names_;
  std::vector<torch::Tensor> params_, momentum_;
  std::vector<bool> frozen_, handed_;
  std::vector<double> lr_scale_, decay_;  // per parameter (set_group); empty: 1 and options_
};

}  // namespace torch_adapter
}  // namespace east
