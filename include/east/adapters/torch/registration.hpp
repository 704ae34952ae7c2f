#pragma once
// Registering a torch::nn::Module's prunable weights with east: builds a ParameterSet of views
// into the module's own tensors (weights, gradients, optimizer buffers). Nothing is copied;
// east's controller then masks those tensors in place.
#include <torch/torch.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "../../core/error.hpp"
#include "../../core/parameter_set.hpp"

namespace east {
namespace torch_adapter {

/// A module that uses weight tensors owned by another module (residual weight sharing).
/// Registration counts every tensor listed here as one more use of its owner's stored tensor,
/// so budgets count each use (EAST-SPEC §3). Such a module must not register those tensors as
/// its own parameters.
class SharesWeights {
 public:
  virtual ~SharesWeights() = default;
  /// The borrowed tensors, one entry per use (a tensor used twice is listed twice).
  virtual std::vector<torch::Tensor> borrowed_weights() const = 0;
};

/// A module whose parameters are never prunable (e.g. DyReLU's hyper-network): registration
/// skips it and everything below it.
class NeverPruned {
 public:
  virtual ~NeverPruned() = default;
};

/// Which parameters of a module become east layers.
struct RegisterOptions {
  /// Weights of Conv1d/2d/3d modules (default) — biases are never registered.
  bool convolutions = true;
  /// Weights of Linear modules (default).
  bool linear = true;
  /// Optional filter on the full parameter name (e.g. "layer1.0.conv1.weight"); a parameter
  /// is registered only when it returns true.
  std::function<bool(const std::string&)> include;
  /// Names (full parameter names) registered with LayerRole::dense (counted, never pruned),
  /// e.g. the first convolution.
  std::vector<std::string> dense;
  /// Allocate a zero gradient for parameters that have none yet, so the gradient views stay
  /// valid (autograd accumulates into an existing gradient in place).
  bool allocate_grads = true;
};

namespace detail {
inline void require_cpu_float(const torch::Tensor& t, const std::string& name, const char* where) {
  east::detail::require(t.defined(), where, "tensor '", name, "' is undefined");
  east::detail::require(t.device().is_cpu(), where, "tensor '", name, "' is on ", t.device().str(),
                        " (valid: CPU; copy to CPU or use a GPU adapter)");
  east::detail::require(t.scalar_type() == torch::kFloat, where, "tensor '", name, "' has dtype ",
                        c10::toString(t.scalar_type()), " (valid: float32)");
  east::detail::require(t.is_contiguous(), where, "tensor '", name,
                        "' is not contiguous (valid: contiguous)");
}

inline bool is_conv(const torch::nn::Module& m) {
  return m.as<torch::nn::Conv1d>() || m.as<torch::nn::Conv2d>() || m.as<torch::nn::Conv3d>();
}
/// The module itself (name "") and every descendant, without needing the module to live in a
/// shared_ptr (modules(include_self = true) would throw for a module on the stack).
inline std::vector<std::pair<std::string, torch::nn::Module*>> all_modules(torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::nn::Module*>> out{{"", &module}};
  for (const auto& item : module.named_modules("", /*include_self=*/false))
    out.emplace_back(item.key(), item.value().get());
  return out;
}
}  // namespace detail

/// One registered tensor: its east name (the module's parameter name) and the tensor itself.
struct RegisteredTensor {
  std::string name;
  torch::Tensor weight;
};

/// Full names of the prunable parameters of `module` under `options`, in registration order.
inline std::vector<RegisteredTensor> prunable_parameters(torch::nn::Module& module,
                                                         const RegisterOptions& options = {}) {
  std::vector<RegisteredTensor> out;
  std::vector<std::string> skipped_prefixes;
  for (const auto& [mname, m] : detail::all_modules(module)) {
    bool under_skipped = false;
    for (const auto& p : skipped_prefixes)
      if (mname == p || mname.compare(0, p.size() + 1, p + ".") == 0) under_skipped = true;
    if (under_skipped) continue;
    if (dynamic_cast<const NeverPruned*>(m)) {
      skipped_prefixes.push_back(mname);
      continue;
    }
    const bool take =
        (options.convolutions && detail::is_conv(*m)) || (options.linear && m->as<torch::nn::Linear>());
    if (!take) continue;
    for (const auto& p : m->named_parameters(/*recurse=*/false)) {
      if (p.key() != "weight") continue;
      const std::string full = mname.empty() ? p.key() : mname + "." + p.key();
      if (options.include && !options.include(full)) continue;
      out.push_back({full, p.value()});
    }
  }
  return out;
}

/// Builds east's views of `module`'s prunable weights (see RegisterOptions) and their gradients;
/// counts borrowed uses (SharesWeights) with ParameterSet::set_uses. Register optimizer buffers
/// afterwards (Sgd::register_state, or seed_sgd_momentum for torch::optim::SGD).
/// The module's parameters and gradients must not be reallocated afterwards (use
/// check_views to verify); they must be contiguous float32 CPU tensors.
inline ParameterSet make_parameter_set(torch::nn::Module& module, const RegisterOptions& options = {}) {
  constexpr const char* where = "east::torch_adapter::make_parameter_set()";
  ParameterSet params;
  std::map<const void*, std::string> by_impl;
  for (auto& r : prunable_parameters(module, options)) {
    detail::require_cpu_float(r.weight, r.name, where);
    torch::Tensor w = r.weight;
    if (options.allocate_grads && !w.grad().defined()) w.mutable_grad() = torch::zeros_like(w);
    float* g = nullptr;
    if (w.grad().defined()) {
      detail::require_cpu_float(w.grad(), r.name + ".grad", where);
      g = w.grad().data_ptr<float>();
    }
    Shape shape(w.sizes().begin(), w.sizes().end());
    params.add(r.name, w.data_ptr<float>(), shape, g);
    by_impl[w.unsafeGetTensorImpl()] = r.name;
  }
  east::detail::require(!params.empty(), where,
                        "no prunable parameter found (valid: a module with Conv/Linear "
                        "weights that pass RegisterOptions::include)");
  for (const auto& name : options.dense) params.set_role(name, LayerRole::dense);
  std::map<std::string, std::size_t> uses;
  for (const auto& item : detail::all_modules(module))
    if (const auto* s = dynamic_cast<const SharesWeights*>(item.second))
      for (const auto& t : s->borrowed_weights()) {
        const auto it = by_impl.find(t.unsafeGetTensorImpl());
        if (it != by_impl.end()) ++uses[it->second];
      }
  for (const auto& [name, extra] : uses) params.set_uses(name, 1 + extra);
  return params;
}

/// Throws InvalidArgument when a registered weight or gradient no longer lives where the
/// ParameterSet points (e.g. a gradient set to None by zero_grad(set_to_none) and reallocated).
inline void check_views(torch::nn::Module& module, const ParameterSet& params) {
  constexpr const char* where = "east::torch_adapter::check_views()";
  const auto named = module.named_parameters(true);
  for (const auto& l : params) {
    const auto* t = named.find(l.name);
    east::detail::require(t != nullptr, where, "layer '", l.name, "' is no parameter of the module");
    east::detail::require(t->data_ptr<float>() == l.weight, where, "weight of '", l.name,
                          "' was reallocated after registration (keep parameters in place)");
    if (l.grad)
      east::detail::require(t->grad().defined() && t->grad().data_ptr<float>() == l.grad, where,
                            "gradient of '", l.name,
                            "' was reallocated or reset to None after registration (zero it in place: "
                            "zero_grad(false) or east's Sgd::zero_grad)");
  }
}

/// Re-points every view of `params` at `module`'s tensors as they are now: weights, and gradients
/// (null when a gradient is None, e.g. after zero_grad(set_to_none)). Call it each step before the
/// controller's hooks when the loop may replace gradients (the Sparsifier does the equivalent
/// itself). Optimizer buffers registered with add_state are not touched.
inline void refresh_views(torch::nn::Module& module, ParameterSet& params) {
  constexpr const char* where = "east::torch_adapter::refresh_views()";
  const auto named = module.named_parameters(true);
  for (auto& l : params) {
    const auto* t = named.find(l.name);
    east::detail::require(t != nullptr, where, "layer '", l.name, "' is no parameter of the module");
    detail::require_cpu_float(*t, l.name, where);
    l.weight = t->data_ptr<float>();
    const auto& g = t->grad();
    if (g.defined()) detail::require_cpu_float(g, l.name + ".grad", where);
    l.grad = g.defined() ? g.data_ptr<float>() : nullptr;
  }
}

/// Makes torch::optim::SGD's momentum buffers exist now (zeros, which gives the same first
/// step as SGD's lazy clone) and registers them as optimizer state of the matching layers, so
/// east zeroes momentum at grown and masked positions. Call before the first optimizer step.
inline void seed_sgd_momentum(torch::optim::SGD& optimizer, torch::nn::Module& module, ParameterSet& params) {
  const auto named = module.named_parameters(true);
  for (auto& group : optimizer.param_groups())
    for (auto& p : group.params()) {
      const auto key = c10::guts::to_string(p.unsafeGetTensorImpl());
      auto& st = optimizer.state();
      if (st.find(key) == st.end()) {
        auto s = std::make_unique<torch::optim::SGDParamState>();
        s->momentum_buffer(torch::zeros_like(p));
        st[key] = std::move(s);
      }
      auto& buf = static_cast<torch::optim::SGDParamState&>(*st[key]).momentum_buffer();
      for (const auto& item : named)
        if (item.value().unsafeGetTensorImpl() == p.unsafeGetTensorImpl() &&
            params.find(item.key()) != ParameterSet::npos)
          params.add_state(item.key(), buf.data_ptr<float>());
    }
}

}  // namespace torch_adapter
}  // namespace east
