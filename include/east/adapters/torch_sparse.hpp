#pragma once
// libtorch modules whose weights are stored compactly (east::sparse::CsrWeight) and whose
// forward/backward run east's sparse kernels through torch::autograd::Function, so a libtorch
// training loop gets cost proportional to the nonzeros without changing its code:
//   SparseConv2d / SparseLinear   drop-in for torch::nn::Conv2d / Linear (no bias / with bias)
//   module.values()               the nnz weights, a torch parameter (autograd gives its gradient)
//   module.sgd_step(params)       fused SGD with momentum over the compact values
//   module.set_mask(mask)         at mask updates: new index, values and momentum carried over
//   module.to_dense()             the masked dense weight (for checkpoints, the controller, tests)
// CPU, float32, contiguous NCHW only. See docs/sparse.md.
#include <torch/torch.h>

#include <cstring>
#include <memory>

#include "../core/error.hpp"
#include "../masks/bit_mask.hpp"
#include "../sparse/sparse.hpp"

namespace east::sparse {

namespace detail {
inline void require_cpu_float_contiguous(const at::Tensor& t, const char* where, const char* what) {
  ::east::detail::require(
      t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), where, what,
      " must be a defined, contiguous float32 CPU tensor");
}
}  // namespace detail

/// The compact weight and geometry of one sparse layer (owned by its module).
struct SparseLayerState {
  CsrWeight weight;
  std::vector<float> momentum;  ///< nnz floats, SGD momentum over the compact values
  std::size_t stride = 1, pad = 0;
  std::size_t kh = 1, kw = 1;
  /// When defined (a dense {C_out, C_in, kh, kw} tensor), each backward also adds the layer's
  /// whole dense weight gradient into it: what gradient regrowth needs at a mask update.
  at::Tensor dense_grad;
};

/// Autograd function y = conv2d(x, W) with W = (state->weight index, `values`).
class SparseConv2dFunction : public torch::autograd::Function<SparseConv2dFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& values, SparseLayerState* state) {
    constexpr const char* where = "east::sparse::SparseConv2dFunction::forward()";
    detail::require_cpu_float_contiguous(input, where, "input");
    ::east::detail::require(input.dim() == 4, where, "input has ", input.dim(),
                            " dimensions (valid: 4, NCHW)");
    const auto g = geometry(input, *state);
    sync_values(values, *state);
    auto y = torch::empty({static_cast<long>(g.batch), static_cast<long>(g.c_out),
                           static_cast<long>(g.out_h()), static_cast<long>(g.out_w())},
                          input.options());
    conv2d_forward(g, input.data_ptr<float>(), state->weight, y.data_ptr<float>());
    ctx->save_for_backward({input});
    // The module owns the state and outlives the graph built from its forward.
    ctx->saved_data["state"] = reinterpret_cast<std::int64_t>(state);
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto input = ctx->get_saved_variables()[0];
    auto* state = reinterpret_cast<SparseLayerState*>(ctx->saved_data["state"].toInt());
    const auto g = geometry(input, *state);
    const at::Tensor dy = grads[0].contiguous();
    at::Tensor dx, dv;
    if (ctx->needs_input_grad(0)) {
      dx = torch::empty_like(input);
      conv2d_grad_input(g, dy.data_ptr<float>(), state->weight, dx.data_ptr<float>());
    }
    if (ctx->needs_input_grad(1)) {
      dv = torch::empty({static_cast<long>(state->weight.nnz())}, input.options());
      conv2d_grad_weight(g, input.data_ptr<float>(), dy.data_ptr<float>(), state->weight,
                         dv.data_ptr<float>());
    }
    if (state->dense_grad.defined()) {
      // Mask-update steps only: the dense weight gradient at libtorch's GEMM speed.
      torch::NoGradGuard ng;
      const long s = static_cast<long>(state->stride), p = static_cast<long>(state->pad);
      state->dense_grad.add_(
          std::get<1>(at::convolution_backward(dy, input, state->dense_grad, c10::nullopt, {s, s}, {p, p},
                                               {1, 1}, false, {0, 0}, 1, {false, true, false})));
    }
    return {dx, dv, at::Tensor()};
  }

  static Conv2dGeometry geometry(const at::Tensor& x, const SparseLayerState& s) {
    Conv2dGeometry g;
    g.batch = static_cast<std::size_t>(x.size(0));
    g.c_in = static_cast<std::size_t>(x.size(1));
    g.h = static_cast<std::size_t>(x.size(2));
    g.w = static_cast<std::size_t>(x.size(3));
    g.c_out = s.weight.rows();
    g.kh = s.kh;
    g.kw = s.kw;
    g.stride_h = g.stride_w = s.stride;
    g.pad_h = g.pad_w = s.pad;
    return g;
  }
  // The kernels read the CsrWeight's values; the parameter tensor is the one autograd and
  // optimizers see. Copying nnz floats per forward keeps both views consistent.
  static void sync_values(const at::Tensor& values, SparseLayerState& s) {
    ::east::detail::require(values.numel() == static_cast<long>(s.weight.nnz()), "east::sparse::SparseConv2d",
                            "values has ", values.numel(), " elements (valid: nnz = ", s.weight.nnz(), ")");
    if (s.weight.nnz())
      std::memcpy(s.weight.values(), values.data_ptr<float>(), s.weight.nnz() * sizeof(float));
  }
};

/// Autograd function y = x Wᵀ + b with W compact.
class SparseLinearFunction : public torch::autograd::Function<SparseLinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& values, const at::Tensor& bias, SparseLayerState* state) {
    constexpr const char* where = "east::sparse::SparseLinearFunction::forward()";
    detail::require_cpu_float_contiguous(input, where, "input");
    ::east::detail::require(input.dim() == 2 && input.size(1) == static_cast<long>(state->weight.cols()),
                            where, "input shape must be {batch, ", state->weight.cols(), "}");
    SparseConv2dFunction::sync_values(values, *state);
    auto y = torch::empty({input.size(0), static_cast<long>(state->weight.rows())}, input.options());
    linear_forward(input.data_ptr<float>(), static_cast<std::size_t>(input.size(0)), state->weight,
                   y.data_ptr<float>(), has_bias(bias) ? bias.data_ptr<float>() : nullptr);
    ctx->save_for_backward({input});
    ctx->saved_data["state"] = reinterpret_cast<std::int64_t>(state);
    ctx->saved_data["has_bias"] = has_bias(bias);
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto input = ctx->get_saved_variables()[0];
    auto* state = reinterpret_cast<SparseLayerState*>(ctx->saved_data["state"].toInt());
    const at::Tensor dy = grads[0].contiguous();
    const auto batch = static_cast<std::size_t>(input.size(0));
    at::Tensor dx, dv, db;
    if (ctx->needs_input_grad(0)) {
      dx = torch::empty_like(input);
      linear_grad_input(dy.data_ptr<float>(), batch, state->weight, dx.data_ptr<float>());
    }
    if (ctx->needs_input_grad(1)) {
      dv = torch::empty({static_cast<long>(state->weight.nnz())}, input.options());
      linear_grad_weight(input.data_ptr<float>(), dy.data_ptr<float>(), batch, state->weight,
                         dv.data_ptr<float>());
    }
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) db = dy.sum(0);
    return {dx, dv, db, at::Tensor()};
  }
  // No bias is an empty tensor: libtorch 1.13's Function::apply rejects undefined inputs.
  static bool has_bias(const at::Tensor& b) { return b.defined() && b.numel() > 0; }
};

/// Dense weight-gradient rows of a convolution computed by libtorch (oneDNN), for
/// top_inactive_gradient at mask updates: rows_fn(r0, r1, out) fills out with ∂L/∂W for output
/// channels [r0, r1), row-major. Same FLOPs as the dense backward's weight gradient of those rows,
/// at GEMM speed (east's conv2d_grad_weight_rows is a plain loop, 3–60× slower on ResNet shapes).
/// @param input the layer's forward input {N, C_in, H, W}  @param grad_output {N, C_out, H', W'}
inline auto torch_conv2d_grad_weight_rows(const at::Tensor& input, const at::Tensor& grad_output,
                                          std::size_t kh, std::size_t kw, std::size_t stride,
                                          std::size_t pad) {
  return [input, grad_output, kh, kw, stride, pad](std::size_t r0, std::size_t r1, float* out) {
    torch::NoGradGuard ng;
    const auto dy = grad_output.slice(1, static_cast<long>(r0), static_cast<long>(r1)).contiguous();
    const auto w = torch::empty(
        {static_cast<long>(r1 - r0), input.size(1), static_cast<long>(kh), static_cast<long>(kw)},
        input.options());
    const long s = static_cast<long>(stride), p = static_cast<long>(pad);
    const auto gw = std::get<1>(at::convolution_backward(dy, input, w, c10::nullopt, {s, s}, {p, p}, {1, 1},
                                                         false, {0, 0}, 1, {false, true, false}))
                        .contiguous();
    std::memcpy(out, gw.data_ptr<float>(), static_cast<std::size_t>(gw.numel()) * sizeof(float));
  };
}

/// Common part of the sparse modules: compact values as a parameter, SGD, mask changes.
class SparseLayerBase {
 public:
  /// The nnz stored weights (a registered parameter named "values").
  at::Tensor& values() { return values_; }
  const SparseLayerState& state() const { return *state_; }
  std::size_t nnz() const { return state_->weight.nnz(); }
  double density() const { return state_->weight.density(); }

  /// Fused SGD with momentum over the compact values, from values().grad() (then zeroed).
  void sgd_step(const kernels::SgdParams& p) {
    if (!values_.grad().defined() || nnz() == 0) return;
    torch::NoGradGuard ng;
    auto g = values_.mutable_grad();
    sparse::sgd_step(values_.data_ptr<float>(), g.data_ptr<float>(),
                     p.momentum != 0.0f ? state_->momentum.data() : nullptr, nnz(), p);
    g.zero_();
  }

  /// Replaces the mask (at a mask update): kept positions keep value and momentum, new ones
  /// start at 0. The values parameter keeps its identity but changes size, so a torch optimizer
  /// holding per-parameter state for it must be rebuilt (sgd_step needs nothing).
  void set_mask(const BitMask& mask) {
    torch::NoGradGuard ng;
    SparseConv2dFunction::sync_values(values_, *state_);
    state_->weight = state_->weight.remap(mask, {&state_->momentum});
    reset_values_parameter();
  }

  /// The masked dense weight, shaped like the dense layer's.
  at::Tensor to_dense() const {
    auto d = torch::empty(dense_shape_);
    SparseConv2dFunction::sync_values(values_, *state_);
    state_->weight.scatter(d.data_ptr<float>());
    return d;
  }

 protected:
  /// Copies the compact values into the module's "values" parameter. Same parameter object, new
  /// data, so the module's parameter list (and any optimizer holding it) stays valid.
  void reset_values(torch::nn::Module& module) {
    auto v = torch::from_blob(state_->weight.values(), {static_cast<long>(nnz())}, torch::kFloat).clone();
    if (values_.defined()) {
      values_.set_data(v);
      values_.mutable_grad() = at::Tensor();
    } else {
      values_ = module.register_parameter("values", v);
    }
  }
  void init_state(const at::Tensor& dense, const BitMask& mask, std::size_t group) {
    constexpr const char* where = "east::sparse::SparseLayer";
    detail::require_cpu_float_contiguous(dense, where, "weight");
    dense_shape_ = dense.sizes().vec();
    const auto rows = static_cast<std::size_t>(dense.size(0));
    const auto cols = static_cast<std::size_t>(dense.numel()) / rows;
    state_->weight = CsrWeight(dense.data_ptr<float>(), mask, rows, cols, group);
    state_->momentum.assign(state_->weight.nnz(), 0.0f);
  }
  virtual void reset_values_parameter() = 0;
  virtual ~SparseLayerBase() = default;

  std::unique_ptr<SparseLayerState> state_ = std::make_unique<SparseLayerState>();
  at::Tensor values_;
  std::vector<std::int64_t> dense_shape_;
};

/// Conv2d (no bias, dilation 1, groups 1) with a compact weight. Built from a dense weight
/// {C_out, C_in, kh, kw} and its mask.
class SparseConv2dImpl : public torch::nn::Module, public SparseLayerBase {
 public:
  SparseConv2dImpl(const at::Tensor& dense_weight, const BitMask& mask, std::size_t stride, std::size_t pad) {
    ::east::detail::require(dense_weight.dim() == 4, "east::sparse::SparseConv2d", "weight has ",
                            dense_weight.dim(), " dimensions (valid: 4)");
    state_->kh = static_cast<std::size_t>(dense_weight.size(2));
    state_->kw = static_cast<std::size_t>(dense_weight.size(3));
    state_->stride = stride;
    state_->pad = pad;
    init_state(dense_weight.contiguous(), mask, state_->kh * state_->kw);
    reset_values_parameter();
  }
  at::Tensor forward(const at::Tensor& x) {
    return SparseConv2dFunction::apply(x.contiguous(), values_, state_.get());
  }

 protected:
  void reset_values_parameter() override { reset_values(*this); }
};
TORCH_MODULE(SparseConv2d);

/// Linear layer (optional dense bias) with a compact weight {out, in}.
class SparseLinearImpl : public torch::nn::Module, public SparseLayerBase {
 public:
  SparseLinearImpl(const at::Tensor& dense_weight, const BitMask& mask, const at::Tensor& bias = {}) {
    ::east::detail::require(dense_weight.dim() == 2, "east::sparse::SparseLinear", "weight has ",
                            dense_weight.dim(), " dimensions (valid: 2)");
    init_state(dense_weight.contiguous(), mask, 1);
    reset_values_parameter();
    if (bias.defined()) bias_ = register_parameter("bias", bias.detach().clone());
  }
  at::Tensor forward(const at::Tensor& x) {
    return SparseLinearFunction::apply(x.contiguous(), values_, bias_.defined() ? bias_ : torch::empty({0}),
                                       state_.get());
  }
  at::Tensor& bias() { return bias_; }

 protected:
  void reset_values_parameter() override { reset_values(*this); }

 private:
  at::Tensor bias_;
};
TORCH_MODULE(SparseLinear);

}  // namespace east::sparse
