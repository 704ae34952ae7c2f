#pragma once
// Training a libtorch model's convolutions on east's sparse kernels without changing the model's
// parameters. For every registered Conv2d weight whose density is below the crossover,
// SparseCompute keeps a compact copy (CsrWeight index, nnz values, nnz momentum) that forward,
// backward and the optimizer step use between mask updates; the dense tensors stay what east's
// controller, checkpoints and the rest of the program see. They are brought up to date at mask
// updates and checkpoints (write_dense) and the compact copies are rebuilt from them afterwards
// (attach), so the controller needs no compact code path.
//
// A training step (examples/trainer/trainer.hpp does exactly this):
//   const bool upd = controller.is_update_step(step);
//   compute.begin_step(upd);                  // update steps also capture dense weight gradients
//   sgd.zero_grad(); compute.zero_grad();
//   loss = criterion(model(x), y); loss.backward();   // the model calls compute.conv2d(...)
//   controller.before_optimizer_step(step);
//   sgd.clip_grad_norm(max_norm, compute.gradients());
//   sgd.step(lr); compute.step(lr);
//   if (upd) compute.write_dense();
//   controller.after_optimizer_step(step);
//   if (upd) compute.attach(controller.masks());   // then, per layer l:
//                controller.set_per_step_masking(l, !compute.attached(name of l))
// The last line only saves time: the dense tensors of attached layers are stale between updates,
// so re-masking them every step is wasted passes over the whole dense model.
#include <torch/torch.h>

#include <string>
#include <unordered_map>
#include <vector>

#include "../../core/error.hpp"
#include "../../core/parameter_set.hpp"
#include "../../masks/bit_mask.hpp"
#include "../torch_sparse.hpp"
#include "registration.hpp"
#include "sgd.hpp"

namespace east {
namespace torch_adapter {

class SparseCompute {
 public:
  /// Registers every Conv2d of `module` (groups 1, dilation 1, square stride/padding) whose weight
  /// is a layer of `params`. `sgd` (which must outlive this object) optimizes everything else; its
  /// momentum buffers of attached layers are the dense home of their compact momentum.
  /// @param crossover a layer runs sparse when its density is below crossover.conv (use a value
  ///        above 1 to run every registered convolution sparse, 0 to run none)
  SparseCompute(torch::nn::Module& module, const ParameterSet& params, Sgd& sgd,
                sparse::Crossover crossover = {})
      : sgd_(&sgd), crossover_(crossover) {
    constexpr const char* where = "east::torch_adapter::SparseCompute()";
    east::detail::require(crossover.conv >= 0.0, where, "crossover.conv ", crossover.conv, " (valid: >= 0)");
    std::unordered_map<std::string, torch::Tensor> momentum;
    for (std::size_t i = 0; i < sgd.names().size(); ++i) momentum[sgd.names()[i]] = sgd.momentum_buffers()[i];
    for (const auto& [mname, m] : detail::all_modules(module)) {
      const auto* conv = m->as<torch::nn::Conv2d>();
      if (!conv) continue;
      const auto& o = conv->options;
      const auto* pad = c10::get_if<torch::ExpandingArray<2>>(&o.padding());
      const auto st = *o.stride(), dil = *o.dilation();
      if (!pad || o.groups() != 1 || st[0] != st[1] || (**pad)[0] != (**pad)[1] || dil[0] != 1 || dil[1] != 1)
        continue;  // shapes the sparse kernels do not cover stay on libtorch's convolution
      const std::string name = mname.empty() ? "weight" : mname + ".weight";
      const auto layer = params.find(name);
      if (layer == ParameterSet::npos) continue;
      Entry e;
      e.name = name;
      e.layer = layer;
      e.weight = conv->weight;
      const auto it = momentum.find(name);
      if (it != momentum.end()) e.momentum = it->second;
      e.state = std::make_unique<sparse::SparseLayerState>();
      e.state->stride = static_cast<std::size_t>(st[0]);
      e.state->pad = static_cast<std::size_t>((**pad)[0]);
      e.state->kh = static_cast<std::size_t>(conv->weight.size(2));
      e.state->kw = static_cast<std::size_t>(conv->weight.size(3));
      by_impl_[e.weight.unsafeGetTensorImpl()] = entries_.size();
      entries_.push_back(std::move(e));
    }
  }
  SparseCompute(const SparseCompute&) = delete;
  SparseCompute& operator=(const SparseCompute&) = delete;

  /// (Re)builds the compact copies from the dense weights and momentum buffers under `masks`
  /// (the controller's, indexed like `params`): layers below the crossover become attached
  /// (their dense tensors are then not updated until write_dense), the others run densely.
  /// Call at the start, after every mask update and after loading a checkpoint.
  void attach(const std::vector<BitMask>& masks) {
    constexpr const char* where = "east::torch_adapter::SparseCompute::attach()";
    for (const auto& e : entries_)
      east::detail::require(
          e.layer < masks.size() && masks[e.layer].size() == static_cast<std::size_t>(e.weight.numel()),
          where, "no mask of ", e.weight.numel(), " bits for layer '", e.name, "'");
    torch::NoGradGuard ng;
    for (auto& e : entries_) {
      const BitMask& mask = masks[e.layer];
      const bool sparse = crossover_.for_conv(mask.density()) == sparse::Backend::sparse;
      sgd_->set_handed_over(e.name, sparse);
      e.attached = sparse;
      e.state->dense_grad = at::Tensor();
      if (!sparse) {
        e.state->weight = sparse::CsrWeight();
        e.state->momentum.clear();
        e.values = at::Tensor();
        continue;
      }
      const auto rows = static_cast<std::size_t>(e.weight.size(0));
      const auto cols = static_cast<std::size_t>(e.weight.numel()) / rows;
      e.state->weight =
          sparse::CsrWeight(e.weight.data_ptr<float>(), mask, rows, cols, e.state->kh * e.state->kw);
      e.state->momentum.assign(e.state->weight.nnz(), 0.0f);
      if (e.momentum.defined())
        e.state->weight.gather_array(e.momentum.data_ptr<float>(), e.state->momentum.data());
      e.values = torch::from_blob(e.state->weight.values(), {static_cast<long>(e.state->weight.nnz())},
                                  torch::kFloat)
                     .clone()
                     .set_requires_grad(true);
    }
    capturing_ = false;
  }

  /// Writes the compact weights and momentum of attached layers into their dense tensors (zeros
  /// at inactive positions): before a mask update, a checkpoint, or handing the model elsewhere.
  void write_dense() {
    torch::NoGradGuard ng;
    for (auto& e : entries_) {
      if (!e.attached) continue;
      sparse::SparseConv2dFunction::sync_values(e.values, *e.state);
      e.state->weight.scatter(e.weight.data_ptr<float>());
      if (e.momentum.defined())
        e.state->weight.scatter_array(e.state->momentum.data(), e.momentum.data_ptr<float>());
    }
  }

  /// Starts a step: with `capture_dense_gradients` (mask-update steps) the backward also writes
  /// each attached layer's whole dense weight gradient into its dense .grad, where the
  /// controller's regrowth criterion reads it.
  void begin_step(bool capture_dense_gradients) {
    capturing_ = capture_dense_gradients;
    for (auto& e : entries_) {
      if (!e.attached) continue;
      if (capturing_) {
        auto g = e.weight.mutable_grad();
        east::detail::require(g.defined(), "east::torch_adapter::SparseCompute::begin_step()", "layer '",
                              e.name,
                              "' has no gradient tensor (register the model with make_parameter_set first)");
        g.zero_();
        e.state->dense_grad = g;
      } else {
        e.state->dense_grad = at::Tensor();
      }
    }
  }

  /// Drops the compact gradients (autograd allocates nnz floats per layer in the next backward).
  void zero_grad() {
    for (auto& e : entries_)
      if (e.attached && e.values.grad().defined()) e.values.mutable_grad() = at::Tensor();
  }

  /// The gradients that stand for the attached layers in a global gradient norm: the dense ones
  /// on capture steps (what a masked-dense loop sees before the update masks them), else the
  /// compact ones. Scaling them (Sgd::clip_grad_norm) scales what step() uses.
  std::vector<torch::Tensor> gradients() const {
    std::vector<torch::Tensor> g;
    for (const auto& e : entries_) {
      if (!e.attached) continue;
      if (capturing_)
        g.push_back(e.state->dense_grad);
      else if (e.values.grad().defined())
        g.push_back(e.values.grad());
    }
    return g;
  }

  /// SGD (the Sgd's momentum, Nesterov and weight decay) over the compact values of attached
  /// layers. On capture steps the gradient is read from the dense one at the active positions.
  void step(double lr) {
    const auto& o = sgd_->options();
    kernels::SgdParams p;
    p.lr = static_cast<float>(lr);
    p.momentum = static_cast<float>(o.momentum);
    p.weight_decay = static_cast<float>(o.weight_decay);
    p.nesterov = o.nesterov;
    torch::NoGradGuard ng;
    std::vector<float> gathered;
    for (auto& e : entries_) {
      const std::size_t n = e.state->weight.nnz();
      if (!e.attached || n == 0) continue;
      const float* g = nullptr;
      if (capturing_) {
        gathered.resize(n);
        e.state->weight.gather_array(e.state->dense_grad.data_ptr<float>(), gathered.data());
        g = gathered.data();
      } else if (e.values.grad().defined()) {
        g = e.values.grad().data_ptr<float>();
      } else {
        continue;  // not used in this step's forward
      }
      sparse::sgd_step(e.values.data_ptr<float>(), g, p.momentum != 0.0f ? e.state->momentum.data() : nullptr,
                       n, p);
    }
  }

  /// y = conv2d(x, weight) (· scale, a one-element tensor, when defined) with weight a tensor
  /// registered here: on the sparse kernels when attached, else libtorch's conv2d (which then
  /// computes conv2d(x, weight · scale), exactly the dense module's arithmetic).
  at::Tensor conv2d(const at::Tensor& x, const at::Tensor& weight, std::int64_t stride, std::int64_t pad,
                    const at::Tensor& scale = {}) {
    Entry* e = attached_entry(weight);
    if (!e) return torch::conv2d(x, scale.defined() ? weight * scale : weight, {}, stride, pad);
    east::detail::require(static_cast<std::size_t>(stride) == e->state->stride &&
                              static_cast<std::size_t>(pad) == e->state->pad,
                          "east::torch_adapter::SparseCompute::conv2d()", "layer '", e->name,
                          "' called with stride ", stride, " and padding ", pad, " (valid: its module's ",
                          e->state->stride, " and ", e->state->pad, ")");
    auto y = sparse::SparseConv2dFunction::apply(x.contiguous(), e->values, e->state.get());
    return scale.defined() ? y * scale : y;
  }

  /// `conv`'s forward: on the sparse kernels when its weight is attached (with the stride and
  /// padding read from the module at registration), else the module's own forward.
  at::Tensor forward(torch::nn::Conv2dImpl& conv, const at::Tensor& x) {
    Entry* e = attached_entry(conv.weight);
    if (!e) return conv.forward(x);
    return sparse::SparseConv2dFunction::apply(x.contiguous(), e->values, e->state.get());
  }

  /// Registered convolutions, and how many of them run sparse now.
  std::size_t size() const { return entries_.size(); }
  std::size_t attached_count() const {
    std::size_t n = 0;
    for (const auto& e : entries_) n += e.attached;
    return n;
  }
  bool attached(const std::string& name) const {
    for (const auto& e : entries_)
      if (e.name == name) return e.attached;
    return false;
  }
  /// Bytes of the compact state: index, values and momentum of attached layers.
  std::size_t compact_bytes() const {
    std::size_t b = 0;
    for (const auto& e : entries_)
      if (e.attached) b += e.state->weight.bytes() + e.state->momentum.size() * sizeof(float);
    return b;
  }
  const sparse::Crossover& crossover() const { return crossover_; }

 private:
  struct Entry {
    std::string name;
    std::size_t layer = 0;   // index in the ParameterSet (and the controller's masks)
    torch::Tensor weight;    // the dense parameter
    torch::Tensor momentum;  // the Sgd's dense momentum buffer (undefined without momentum)
    std::unique_ptr<sparse::SparseLayerState> state;  // stable address: autograd graphs point at it
    torch::Tensor values;                             // compact weights, a leaf autograd differentiates
    bool attached = false;
  };
  Entry* attached_entry(const at::Tensor& weight) {
    const auto it = by_impl_.find(weight.unsafeGetTensorImpl());
    return it != by_impl_.end() && entries_[it->second].attached ? &entries_[it->second] : nullptr;
  }

  Sgd* sgd_;
  sparse::Crossover crossover_;
  std::vector<Entry> entries_;
  std::unordered_map<const void*, std::size_t> by_impl_;
  bool capturing_ = false;
};

}  // namespace torch_adapter
}  // namespace east
