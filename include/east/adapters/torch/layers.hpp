#pragma once
// Drop-in libtorch layers that train on their nonzeros: east::nn::Conv2d and east::nn::Linear are
// torch::nn::Conv2d / Linear (same options, parameters, state-dict names and forward) until a
// Sparsifier (sparsifier.hpp) binds them; then, while their density is below the crossover, their
// forward and backward run east's sparse kernels over compact weights (sparse::CompactLayer's
// index), and their optimizer state is nnz floats. Above the crossover they run libtorch's dense
// kernels on the masked weight. Changing `torch::nn::Conv2d` to `east::nn::Conv2d` in a model is
// the whole model-side change (docs/torch-sparsifier.md).
#include <torch/torch.h>

#include <cstring>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "../../core/error.hpp"
#include "../../masks/bit_mask.hpp"
#include "../../sparse/compact_layer.hpp"
#include "../../sparse/policy.hpp"
#include "gradient_join.hpp"
#include "gradient_reuse.hpp"
#include "optimizer_state.hpp"

namespace east {
namespace torch_adapter {

class Conv2dImpl;
class LinearImpl;

namespace detail {

/// What a registered prunable layer runs on and why (for the Sparsifier's summary).
struct LayerMode {
  bool compact = false;  ///< on east's sparse kernels now
  std::string reason;    ///< why it stays dense, when it cannot run compact
};

/// The libtorch side of one prunable layer bound to a Sparsifier: a sparse::CompactLayer (the
/// controller's LayerStorage) whose weights are either the module's dense `weight` (masked; a
/// gradient hook masks its gradient and keeps the raw one on update steps) or, below the
/// crossover, a compact parameter `compact_values` of nnz floats that east's kernels use.
class TorchLayer : public sparse::CompactLayer {
 public:
  enum class Kind { conv2d, linear, other };

  struct Geometry {
    std::size_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, kh = 1, kw = 1;
  };

  /// @param module the layer's module; @param weight its `weight` parameter, registered as
  /// `name` in `params`; @param kind conv2d / linear when its options allow east's kernels
  /// (`reason` says why not otherwise); @param optimizer holds `weight`.
  TorchLayer(ParameterSet& params, const std::string& name, torch::nn::Module& module, torch::Tensor weight,
             torch::Tensor bias, Kind kind, Geometry geom, std::string reason, torch::optim::Optimizer& optimizer,
             double crossover)
      : CompactLayer(params, name, static_cast<std::size_t>(weight.dim()), "east::torch_adapter::Sparsifier"),
        module_(&module),
        weight_t_(std::move(weight)),
        bias_(std::move(bias)),
        kind_(kind),
        geom_(geom),
        reason_(std::move(reason)),
        optimizer_(&optimizer),
        opt_kind_(optimizer_kind(optimizer)),
        crossover_(crossover) {
    if (kind_ != Kind::other) {
      // The compact parameter exists from the start (empty while dense), in the optimizer group
      // that holds the weight: parameter order, and so optimizer checkpoints, never change.
      // A module bound before (by a Sparsifier since destroyed) keeps its emptied parameter.
      if (auto* earlier = module.named_parameters(/*recurse=*/false).find("compact_values")) {
        values_ = *earlier;
        values_.set_data(torch::empty({0}));
        values_.mutable_grad() = torch::Tensor();
      } else {
        values_ = module.register_parameter("compact_values", torch::empty({0}));
      }
      bool held = false;
      for (const auto& g : optimizer.param_groups())
        for (const auto& p : g.params()) held = held || p.unsafeGetTensorImpl() == values_.unsafeGetTensorImpl();
      for (auto& g : optimizer.param_groups())
        for (const auto& p : g.params())
          if (!held && p.unsafeGetTensorImpl() == weight_t_.unsafeGetTensorImpl()) {
            g.params().push_back(values_);
            held = true;
            break;
          }
      if (auto s = detail::initial_state(opt_kind_, values_, optimizer))
        optimizer.state()[state_key(values_)] = std::move(s);
      // A leaf's hook runs once per backward, after every use of the layer in that pass has
      // delivered its gradient: it marks where one backward's captures end (dense_gradient()).
      values_hook_ = values_.register_hook([this](const torch::Tensor&) {
        if (capture_) pass_ends_.push_back(captures_t_.size());
      });
    }
    // Masks the dense gradient (an inactive weight is not a parameter) after keeping it raw on
    // update steps: regrowth reads it there.
    hook_ = weight_t_.register_hook([this](const torch::Tensor& g) -> torch::Tensor {
      if (!mask_ready_) return g;
      torch::NoGradGuard ng;
      if (capture_) {
        if (!dense_capture_.defined()) dense_capture_ = torch::zeros_like(weight_t_);
        dense_capture_.add_(g);
      }
      if (mask_.count() == mask_.size()) return g;  // a dense layer: nothing to mask
      auto masked = g.contiguous().clone();
      mask_.apply(masked.data_ptr<float>());
      return masked;
    });
    bind();
  }
  TorchLayer(const TorchLayer&) = delete;
  TorchLayer& operator=(const TorchLayer&) = delete;
  ~TorchLayer() override { release(); }

  /// Hands the layer back to libtorch: the dense weight becomes current and trains densely again
  /// (masks are no longer enforced), the compact parameter is emptied and unused.
  void release() {
    if (released_) return;
    released_ = true;
    if (compact_) {
      torch::NoGradGuard ng;
      sync_to_dense();
      leave_compact();
    }
    weight_t_.remove_hook(hook_);
    if (values_.defined() && kind_ != Kind::other) values_.remove_hook(values_hook_);
  }

  // ---------------------------------------------------------------- LayerStorage
  bool detached() const override { return compact_; }
  void sync_to_dense() override {
    if (!compact_) return;
    torch::NoGradGuard ng;
    copy_values_in();
    weight_.scatter(weight_t_.data_ptr<float>());
  }
  float* dense_gradient(float* scratch) override {
    ::east::detail::require(!captures_t_.empty(), "east::torch_adapter::Sparsifier", "layer '", name_,
                            "' ran no backward on a mask-update step (every prunable layer must take part in "
                            "the step's forward and backward)");
    torch::NoGradGuard ng;
    auto out = torch::from_blob(scratch, weight_t_.sizes(), torch::kFloat);
    out.zero_();
    if (pass_ends_.size() <= 1) {
      for (const auto& [x, dy] : captures_t_) out.add_(dense_weight_gradient(x, dy));
    } else {
      // Several backward passes (accumulated micro-batches): each pass's uses are summed first,
      // then the passes in order, so K micro-batches in one process add exactly what K
      // data-parallel ranks, one pass each, add (docs/distributed.md).
      torch::Tensor pass;
      std::size_t i = 0;
      for (std::size_t p = 0; p <= pass_ends_.size(); ++p) {
        const std::size_t end = p < pass_ends_.size() ? pass_ends_[p] : captures_t_.size();
        if (end <= i) continue;
        if (end - i == 1) {
          out.add_(dense_weight_gradient(captures_t_[i].first, captures_t_[i].second));
        } else {
          if (!pass.defined()) pass = torch::empty_like(out);
          pass.zero_();
          for (std::size_t k = i; k < end; ++k)
            pass.add_(dense_weight_gradient(captures_t_[k].first, captures_t_[k].second));
          out.add_(pass);
        }
        i = end;
      }
    }
    if (reduce_) reduce_(scratch, size());
    return scratch;
  }
  void on_mask_changed(const BitMask& mask) override {
    torch::NoGradGuard ng;
    mask_ = mask;
    mask_ready_ = true;
    const bool want = kind_ != Kind::other && !released_ && mask.density() < crossover_;
    if (want && compact_) {  // a new index: carry values (from the dense view) and state
      const sparse::CsrWeight old = weight_;
      CompactLayer::on_mask_changed(mask);
      const sparse::CsrWeight& now = weight_;
      detail::move_state(*optimizer_, opt_kind_, values_, values_,
                         [&](const torch::Tensor& t) { return carry(old, now, t); });
      reset_values();
    } else if (want) {  // dense → compact
      attached_ = false;
      CompactLayer::on_mask_changed(mask);
      const sparse::CsrWeight& now = weight_;
      detail::move_state(*optimizer_, opt_kind_, weight_t_, values_, [&](const torch::Tensor& t) {
        auto c = t.contiguous();
        auto v = torch::empty({static_cast<long>(now.nnz())});
        now.gather_array(c.data_ptr<float>(), v.data_ptr<float>());
        return v;
      });
      reset_values();
      weight_t_.mutable_grad() = torch::Tensor();  // the optimizer skips the stale dense weight
      compact_ = true;
    } else if (compact_) {  // compact → dense: the controller synced the weights first
      leave_compact();
    }
    dense_capture_ = torch::Tensor();
  }
  void prepare_step(bool capture) override {
    capture_ = capture;
    captures_t_.clear();
    pass_ends_.clear();
    dense_capture_ = torch::Tensor();
  }

  // ---------------------------------------------------------------- the Sparsifier's view
  /// The dense gradient the controller reads for a dense-form layer: the raw one kept on update
  /// steps, else the module's (masked) gradient; null when there is none.
  float* dense_grad_view() {
    if (capture_) {
      if (!dense_capture_.defined()) dense_capture_ = torch::zeros_like(weight_t_);
      return dense_capture_.data_ptr<float>();
    }
    const auto& g = weight_t_.grad();
    return g.defined() && g.is_contiguous() ? g.data_ptr<float>() : nullptr;
  }
  /// Optimizer buffers of the dense weight (masked with it), as they are now.
  std::vector<float*> dense_state_views() {
    std::vector<float*> out;
    if (compact_) return out;
    auto& st = optimizer_->state();
    const auto it = st.find(state_key(weight_t_));
    if (it == st.end() || !it->second) return out;
    for (torch::Tensor* t : detail::state_tensors(*it->second))
      if (t->numel() == weight_t_.numel() && t->is_contiguous()) out.push_back(t->data_ptr<float>());
    return out;
  }
  float* dense_weight_view() { return weight_t_.data_ptr<float>(); }
  /// On an update step of a dense-form layer: passes the raw gradient kept for regrowth through
  /// the reducer (e.g. an all-reduce), once, before the controller reads it.
  void reduce_kept_gradient() {
    if (compact_ || !capture_ || !reduce_) return;
    if (!dense_capture_.defined()) dense_capture_ = torch::zeros_like(weight_t_);
    reduce_(dense_capture_.data_ptr<float>(), size());
  }
  /// Applied to every dense gradient read at a mask update (e.g. an all-reduce across ranks).
  void set_gradient_reducer(std::function<void(float*, std::size_t)> r) { reduce_ = std::move(r); }
  LayerMode mode() const { return {compact_, reason_}; }
  Kind kind() const { return kind_; }
  const torch::Tensor& weight_tensor() const { return weight_t_; }
  const torch::Tensor& values_tensor() const { return values_; }
  torch::nn::Module* module() const { return module_; }

  // ---------------------------------------------------------------- forward on compact weights
  /// `join` (convolutions): this use's input gradient is summed with the other uses' in the join's
  /// passes (gradient_join.hpp).
  torch::Tensor forward(const torch::Tensor& x, const GradientJoinPtr& join = {});

  // Used by the autograd functions.
  void copy_values_in() {
    if (weight_.nnz())
      std::memcpy(weight_.values(), values_.data_ptr<float>(), weight_.nnz() * sizeof(float));
  }
  void keep_for_gradient(const torch::Tensor& x, const torch::Tensor& dy) {
    if (capture_) captures_t_.emplace_back(x, dy);
  }
  bool keeps_gradients() const { return capture_; }  // this backward's dy is kept (an update step)
  sparse::Conv2dGeometry conv_geometry(const torch::Tensor& x) const {
    return {static_cast<std::size_t>(x.size(0)), static_cast<std::size_t>(x.size(1)),
            static_cast<std::size_t>(x.size(2)), static_cast<std::size_t>(x.size(3)),
            weight_.rows(), geom_.kh, geom_.kw, geom_.stride_h, geom_.stride_w, geom_.pad_h, geom_.pad_w};
  }
  const sparse::CsrWeight& csr() const { return weight_; }

 private:
  void add_dense_gradient(float*) const override {}  // dense_gradient() is overridden

  // ∂L/∂W of one captured backward at libtorch's GEMM speed.
  torch::Tensor dense_weight_gradient(const torch::Tensor& x, const torch::Tensor& dy) const {
    if (kind_ == Kind::linear) return dy.t().mm(x);
    const long sh = static_cast<long>(geom_.stride_h), sw = static_cast<long>(geom_.stride_w);
    const long ph = static_cast<long>(geom_.pad_h), pw = static_cast<long>(geom_.pad_w);
    return std::get<1>(at::convolution_backward(dy, x, weight_t_, c10::nullopt, {sh, sw}, {ph, pw}, {1, 1}, false,
                                                {0, 0}, 1, {false, true, false}));
  }
  // t (over `from`'s entries) carried to `to`'s entries; zero where a position is new.
  static torch::Tensor carry(const sparse::CsrWeight& from, const sparse::CsrWeight& to, const torch::Tensor& t) {
    auto src = t.contiguous();
    auto out = torch::zeros({static_cast<long>(to.nnz())});
    const float* s = src.data_ptr<float>();
    float* d = out.data_ptr<float>();
    for (std::size_t r = 0; r < to.rows(); ++r) {
      std::size_t a = from.row_ptr()[r], b = to.row_ptr()[r];
      const std::size_t ae = from.row_ptr()[r + 1], be = to.row_ptr()[r + 1];
      while (a < ae && b < be) {
        if (from.col()[a] < to.col()[b]) ++a;
        else if (from.col()[a] > to.col()[b]) ++b;
        else d[b++] = s[a++];
      }
    }
    return out;
  }
  void reset_values() {
    auto v = torch::from_blob(weight_.values(), {static_cast<long>(weight_.nnz())}, torch::kFloat).clone();
    values_.set_data(v);
    values_.mutable_grad() = torch::Tensor();
  }
  void leave_compact() {
    const sparse::CsrWeight& old = weight_;
    detail::move_state(*optimizer_, opt_kind_, values_, weight_t_, [&](const torch::Tensor& t) {
      auto d = torch::zeros_like(weight_t_);
      auto c = t.contiguous();
      old.scatter_array(c.data_ptr<float>(), d.data_ptr<float>());
      mask_.apply(d.data_ptr<float>());
      return d;
    });
    if (auto s = detail::initial_state(opt_kind_, values_, *optimizer_)) optimizer_->state()[state_key(values_)] = std::move(s);
    values_.set_data(torch::empty({0}));
    values_.mutable_grad() = torch::Tensor();
    compact_ = false;
  }

  torch::nn::Module* module_;
  torch::Tensor weight_t_, bias_, values_;
  Kind kind_;
  Geometry geom_;
  std::string reason_;
  torch::optim::Optimizer* optimizer_;
  OptimizerKind opt_kind_;
  double crossover_;
  unsigned hook_ = 0, values_hook_ = 0;
  BitMask mask_;
  bool mask_ready_ = false, compact_ = false, released_ = false;
  torch::Tensor dense_capture_;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> captures_t_;
  std::vector<std::size_t> pass_ends_;  // captures_t_.size() at the end of each backward pass
  std::function<void(float*, std::size_t)> reduce_;
};

/// y = conv2d(x, W) with W the layer's compact weight.
class CompactConv2dFunction : public torch::autograd::Function<CompactConv2dFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input,
                               const torch::Tensor& values, TorchLayer* layer, GradientJoinPtr join) {
    constexpr const char* where = "east::nn::Conv2d::forward()";
    ::east::detail::require(input.dim() == 4 && input.scalar_type() == torch::kFloat && input.device().is_cpu(),
                            where, "layer '", layer->name(), "': input must be a float32 CPU NCHW tensor, got ",
                            input.dim(), " dimensions of ", c10::toString(input.scalar_type()));
    (void)values;
    const auto x = input.contiguous();
    const auto g = layer->conv_geometry(x);
    ::east::detail::require(g.c_in * g.kh * g.kw == layer->csr().cols(), where, "layer '", layer->name(),
                            "': input has ", g.c_in, " channels (valid: ", layer->csr().cols() / (g.kh * g.kw), ")");
    layer->copy_values_in();
    auto y = torch::empty({static_cast<long>(g.batch), static_cast<long>(g.c_out), static_cast<long>(g.out_h()),
                           static_cast<long>(g.out_w())});
    sparse::conv2d_forward(g, x.data_ptr<float>(), layer->csr(), y.data_ptr<float>());
    ctx->save_for_backward({x});
    ctx->saved_data["layer"] = reinterpret_cast<std::int64_t>(layer);  // the module outlives its graphs
    if (join) ++join->convolutions, ++join->uses;
    detail::save_join(ctx, join);
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto x = ctx->get_saved_variables()[0];
    auto* layer = reinterpret_cast<TorchLayer*>(ctx->saved_data["layer"].toInt());
    const auto g = layer->conv_geometry(x);
    const GradientJoinPtr join = detail::saved_join(ctx);
    const bool add = join && join->pending.defined();
    // dx written over dy (gradient_reuse.hpp) unless dy is kept for a mask update's dense gradient
    const bool in_place = ctx->needs_input_grad(0) && !add && !layer->keeps_gradients() &&
                          sparse::conv2d_backward_in_place_ok(g) && detail::reusable_gradient(grads, 0, x);
    const torch::Tensor dy = grads[0].contiguous();
    torch::Tensor dx, dv;
    if (ctx->needs_input_grad(0)) {
      if (add) {  // another use's gradient of x, parked: add this one into it
        dx = std::move(join->pending);
        join->pending = torch::Tensor();
        ::east::detail::require(dx.sizes() == x.sizes() && dx.scalar_type() == torch::kFloat && dx.is_contiguous(),
                                "east::nn::Conv2d backward", "layer '", layer->name(), "': joined gradient ",
                                dx.sizes(), " (valid: a contiguous float32 tensor of the input's shape ", x.sizes(),
                                ")");
      } else {
        dx = in_place ? dy : torch::empty_like(x);
      }
    }
    if (ctx->needs_input_grad(1)) dv = torch::empty({static_cast<long>(layer->csr().nnz())});
    sparse::conv2d_backward(g, x.data_ptr<float>(), dy.data_ptr<float>(), layer->csr(),
                            dx.defined() ? dx.data_ptr<float>() : nullptr, dv.defined() ? dv.data_ptr<float>() : nullptr,
                            add);
    if (join) dx = detail::arrive(*join, std::move(dx));
    layer->keep_for_gradient(x, dy);
    return {dx, dv, torch::Tensor(), torch::Tensor()};
  }
};

/// y = x Wᵀ with W the layer's compact weight; x {batch, in}.
class CompactLinearFunction : public torch::autograd::Function<CompactLinearFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input,
                               const torch::Tensor& values, TorchLayer* layer) {
    (void)values;
    const auto x = input.contiguous();
    layer->copy_values_in();
    auto y = torch::empty({x.size(0), static_cast<long>(layer->csr().rows())});
    sparse::linear_forward(x.data_ptr<float>(), static_cast<std::size_t>(x.size(0)), layer->csr(), y.data_ptr<float>());
    ctx->save_for_backward({x});
    ctx->saved_data["layer"] = reinterpret_cast<std::int64_t>(layer);
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto x = ctx->get_saved_variables()[0];
    auto* layer = reinterpret_cast<TorchLayer*>(ctx->saved_data["layer"].toInt());
    const torch::Tensor dy = grads[0].contiguous();
    const auto batch = static_cast<std::size_t>(x.size(0));
    torch::Tensor dx, dv;
    if (ctx->needs_input_grad(0)) {
      dx = torch::empty_like(x);
      sparse::linear_grad_input(dy.data_ptr<float>(), batch, layer->csr(), dx.data_ptr<float>());
    }
    if (ctx->needs_input_grad(1)) {
      dv = torch::empty({static_cast<long>(layer->csr().nnz())});
      sparse::linear_grad_weight(x.data_ptr<float>(), dy.data_ptr<float>(), batch, layer->csr(), dv.data_ptr<float>());
    }
    layer->keep_for_gradient(x, dy);
    return {dx, dv, torch::Tensor()};
  }
};

inline torch::Tensor TorchLayer::forward(const torch::Tensor& x, const GradientJoinPtr& join) {
  if (kind_ == Kind::conv2d) {
    auto y = CompactConv2dFunction::apply(x, values_, this, join);
    return bias_.defined() ? y + bias_.view({1, -1, 1, 1}) : y;
  }
  // Linear: any leading dimensions, like torch::nn::Linear.
  const auto in = static_cast<long>(weight_.cols());
  ::east::detail::require(x.dim() >= 1 && x.size(-1) == in && x.scalar_type() == torch::kFloat && x.device().is_cpu(),
                          "east::nn::Linear::forward()", "layer '", name_, "': input must be float32 CPU with last "
                          "dimension ", in, ", got ", x.sizes());
  auto lead = x.sizes().vec();
  lead.pop_back();
  auto y = CompactLinearFunction::apply(x.reshape({-1, in}), values_, this);
  if (bias_.defined()) y = y + bias_;
  lead.push_back(static_cast<long>(weight_.rows()));
  return y.reshape(lead);
}

}  // namespace detail

/// torch::nn::Conv2d whose forward runs on compact weights once a Sparsifier binds it and its
/// density is below the crossover (groups 1, dilation 1, zero padding; other options stay dense).
class Conv2dImpl : public torch::nn::Conv2dImpl {
 public:
  using torch::nn::Conv2dImpl::Conv2dImpl;
  torch::Tensor forward(const torch::Tensor& input) { return forward_joined(input, {}); }
  /// forward() whose input gradient is summed with the other uses of `input` in `join`, when this
  /// layer runs on compact weights (gradient_join.hpp; a residual block's convolutions of its input).
  torch::Tensor forward_joined(const torch::Tensor& input, const GradientJoinPtr& join) {
    if (east_layer_ && east_layer_->detached()) return east_layer_->forward(input, join);
    return torch::nn::Conv2dImpl::forward(input);
  }
  /// conv2d(input, scale · weight) for a one-element `scale`: a weight-shared use (EAST's residual
  /// sharing) of this layer's tensor, on the same compact weights; `join` as forward_joined().
  torch::Tensor forward_scaled(const torch::Tensor& input, const torch::Tensor& scale,
                               const GradientJoinPtr& join = {}) {
    if (east_layer_ && east_layer_->detached()) return east_layer_->forward(input, join) * scale;
    return torch::nn::functional::detail::conv2d(input, weight * scale, bias, options.stride(), options.padding(),
                                                 options.dilation(), options.groups());
  }
  /// The binding a Sparsifier made (null otherwise).
  detail::TorchLayer* east_layer() const { return east_layer_; }
  void set_east_layer(detail::TorchLayer* l) { east_layer_ = l; }

 private:
  detail::TorchLayer* east_layer_ = nullptr;
};
TORCH_MODULE(Conv2d);

/// torch::nn::Linear whose forward runs on compact weights once a Sparsifier binds it and its
/// density is below the crossover.
class LinearImpl : public torch::nn::LinearImpl {
 public:
  using torch::nn::LinearImpl::LinearImpl;
  torch::Tensor forward(const torch::Tensor& input) {
    if (east_layer_ && east_layer_->detached()) return east_layer_->forward(input);
    return torch::nn::LinearImpl::forward(input);
  }
  detail::TorchLayer* east_layer() const { return east_layer_; }
  void set_east_layer(detail::TorchLayer* l) { east_layer_ = l; }

 private:
  detail::TorchLayer* east_layer_ = nullptr;
};
TORCH_MODULE(Linear);

}  // namespace torch_adapter

/// The drop-in names: `east::nn::Conv2d` for `torch::nn::Conv2d`, `east::nn::Linear` for
/// `torch::nn::Linear` (options are libtorch's: torch::nn::Conv2dOptions, LinearOptions).
namespace nn {
using torch_adapter::Conv2d;
using torch_adapter::Conv2dImpl;
using torch_adapter::Linear;
using torch_adapter::LinearImpl;
}  // namespace nn

}  // namespace east
