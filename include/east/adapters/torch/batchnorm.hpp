#pragma once
// BatchNorm2d fused with the residual add and ReLU that follow it (east/sparse/batchnorm.hpp
// kernels) as a libtorch autograd function and a drop-in module:
//   BatchNormReLU2d bn(torch::nn::BatchNorm2dOptions(64));     // relu(BN(x))
//   y = bn(x);  y = bn->forward(x, shortcut);                 // relu(BN(x) + shortcut)
//   BatchNormReLU2d plain(torch::nn::BatchNorm2dOptions(64), /*relu=*/false);  // BN(x) only
// Parameters and buffers are named as torch::nn::BatchNorm2d's (weight, bias, running_mean,
// running_var, num_batches_tracked), so state dicts load into either. One read and one write of
// each activation per pass instead of libtorch's separate BN, add and ReLU ops; results do not
// depend on the thread count (east::kernels::set_threads). CPU, float32 or float64, NCHW.
#include <torch/torch.h>

#include "../../core/error.hpp"
#include "../../sparse/batchnorm.hpp"

namespace east::torch_adapter {

namespace detail {
inline sparse::BatchNormShape bn_shape(const at::Tensor& x) {
  std::size_t plane = 1;
  for (long d = 2; d < x.dim(); ++d) plane *= static_cast<std::size_t>(x.size(d));
  return {static_cast<std::size_t>(x.size(0)), static_cast<std::size_t>(x.size(1)), plane};
}
// libtorch 1.13's Function::apply cannot take undefined tensors, so an absent optional argument
// (weight, bias, residual, running statistics) travels as an empty tensor.
inline at::Tensor absent_as_empty(const at::Tensor& t, const at::Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}
inline bool given(const at::Tensor& t) { return t.defined() && t.numel() > 0; }
template <class T>
const T* ptr_or_null(const at::Tensor& t) {
  return given(t) ? t.data_ptr<T>() : nullptr;
}
template <class T>
T* mut_ptr_or_null(const at::Tensor& t) {
  return given(t) ? t.data_ptr<T>() : nullptr;
}
}  // namespace detail

/// Autograd function behind batchnorm_relu(); absent optional tensors are passed as empty ones.
class BatchNormReLUFunction : public torch::autograd::Function<BatchNormReLUFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& residual,
                            at::Tensor running_mean, at::Tensor running_var, bool training, double momentum,
                            double eps, bool relu) {
    constexpr const char* where = "east::torch_adapter::BatchNormReLUFunction::forward()";
    ::east::detail::require(input.defined() && input.device().is_cpu() && input.dim() >= 2, where,
                            "input must be a CPU tensor with >= 2 dimensions (N, C, ...)");
    const auto dtype = input.scalar_type();
    ::east::detail::require(dtype == at::kFloat || dtype == at::kDouble, where, "input dtype ",
                            c10::toString(dtype), " (valid: float32, float64)");
    const at::Tensor x = input.contiguous();
    const long c = x.size(1);
    auto check = [&](const at::Tensor& t, const char* what, bool per_channel) {
      if (!detail::given(t)) return;
      ::east::detail::require(t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous(), where,
                              what, " must be a contiguous CPU tensor of the input's dtype");
      if (per_channel)
        ::east::detail::require(t.dim() == 1 && t.size(0) == c, where, what, " has ", t.numel(),
                                " elements (valid: ", c, ", one per channel)");
      else
        ::east::detail::require(t.sizes() == x.sizes(), where, what, " shape ", t.sizes(),
                                " (valid: the input's ", x.sizes(), ")");
    };
    check(weight, "weight", true);
    check(bias, "bias", true);
    check(running_mean, "running_mean", true);
    check(running_var, "running_var", true);
    check(residual, "residual", false);
    ::east::detail::require(detail::given(running_mean) == detail::given(running_var), where,
                            "running_mean and running_var must both be given or both be undefined");
    const sparse::BatchNormOptions o{momentum, eps, training || !detail::given(running_mean), relu};
    const auto s = detail::bn_shape(x);
    auto y = torch::empty_like(x);
    auto mean = torch::empty({c}, x.options()), invstd = torch::empty({c}, x.options());
    AT_DISPATCH_FLOATING_TYPES(dtype, "east_batchnorm_relu", [&] {
      sparse::batchnorm_forward<scalar_t>(s, x.data_ptr<scalar_t>(), detail::ptr_or_null<scalar_t>(residual),
                                  detail::ptr_or_null<scalar_t>(weight), detail::ptr_or_null<scalar_t>(bias),
                                  detail::mut_ptr_or_null<scalar_t>(running_mean),
                                  detail::mut_ptr_or_null<scalar_t>(running_var), o, y.data_ptr<scalar_t>(),
                                  mean.data_ptr<scalar_t>(), invstd.data_ptr<scalar_t>());
    });
    ctx->save_for_backward({x, y, weight, mean, invstd});
    ctx->saved_data["training"] = o.training;
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["has_residual"] = detail::given(residual);
    ctx->saved_data["has_bias"] = detail::given(bias);
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &y = saved[1], &weight = saved[2], &mean = saved[3], &invstd = saved[4];
    const at::Tensor dy = grads[0].contiguous();
    sparse::BatchNormOptions o;
    o.training = ctx->saved_data["training"].toBool();
    o.relu = ctx->saved_data["relu"].toBool();
    o.eps = ctx->saved_data["eps"].toDouble();
    const bool has_res = ctx->saved_data["has_residual"].toBool();
    const bool need_w = detail::given(weight) && ctx->needs_input_grad(1);
    const bool need_b = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2);
    auto dx = torch::empty_like(x);
    at::Tensor dres = has_res && ctx->needs_input_grad(3) ? torch::empty_like(x) : at::Tensor();
    const long c = x.size(1);
    at::Tensor dw = need_w ? torch::empty({c}, x.options()) : at::Tensor();
    at::Tensor db = need_b ? torch::empty({c}, x.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "east_batchnorm_relu_backward", [&] {
      sparse::batchnorm_backward<scalar_t>(
          detail::bn_shape(x), dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
          detail::ptr_or_null<scalar_t>(weight), mean.data_ptr<scalar_t>(), invstd.data_ptr<scalar_t>(), o,
          dx.data_ptr<scalar_t>(), detail::mut_ptr_or_null<scalar_t>(dres),
          detail::mut_ptr_or_null<scalar_t>(dw), detail::mut_ptr_or_null<scalar_t>(db));
    });
    return {dx,           dw,           db,           dres,         at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

/// y = relu(batch_norm(x) [+ residual]) (relu = false: without the ReLU) with east's fused kernels.
/// weight, bias, residual, running_mean/var may be undefined; the running statistics are updated
/// in place when `training`. Gradients flow to input, weight, bias and residual.
inline at::Tensor batchnorm_relu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                                 const at::Tensor& residual, const at::Tensor& running_mean,
                                 const at::Tensor& running_var, bool training, double momentum, double eps,
                                 bool relu = true) {
  ::east::detail::require(input.defined(), "east::torch_adapter::batchnorm_relu()", "input is undefined");
  auto e = [&](const at::Tensor& t) { return detail::absent_as_empty(t, input); };
  return BatchNormReLUFunction::apply(input, e(weight), e(bias), e(residual), e(running_mean), e(running_var),
                                      training, momentum, eps, relu);
}

/// Drop-in for torch::nn::BatchNorm2d followed by ReLU (relu = true) or alone (relu = false),
/// with an optional residual added before the ReLU: forward(x) or forward(x, residual).
class BatchNormReLU2dImpl : public torch::nn::Module {
 public:
  explicit BatchNormReLU2dImpl(const torch::nn::BatchNorm2dOptions& options, bool relu = true)
      : options(options), relu_(relu) {
    ::east::detail::require(options.num_features() >= 1, "east::torch_adapter::BatchNormReLU2d", "num_features ",
                            options.num_features(), " (valid: >= 1)");
    const long c = options.num_features();
    if (options.affine()) {
      weight = register_parameter("weight", torch::ones({c}));
      bias = register_parameter("bias", torch::zeros({c}));
    }
    if (options.track_running_stats()) {
      running_mean = register_buffer("running_mean", torch::zeros({c}));
      running_var = register_buffer("running_var", torch::ones({c}));
      num_batches_tracked = register_buffer("num_batches_tracked", torch::zeros({}, torch::kLong));
    }
  }
  explicit BatchNormReLU2dImpl(long num_features, bool relu = true)
      : BatchNormReLU2dImpl(torch::nn::BatchNorm2dOptions(num_features), relu) {}

  at::Tensor forward(const at::Tensor& x, const at::Tensor& residual = {}) {
    ::east::detail::require(x.dim() == 4, "east::torch_adapter::BatchNormReLU2d", "input has ", x.dim(),
                            " dimensions (valid: 4, NCHW)");
    double momentum = options.momentum().value_or(0.0);
    const bool update = is_training() && options.track_running_stats();
    if (update) {
      torch::NoGradGuard ng;
      num_batches_tracked.add_(1);
      // momentum = None in torch means a cumulative average: factor 1 / batches seen.
      if (!options.momentum()) momentum = 1.0 / static_cast<double>(num_batches_tracked.item<long>());
    }
    // Eval without running statistics normalises with the batch (torch does the same).
    return batchnorm_relu(x, weight, bias, residual, running_mean, running_var,
                          is_training() || !options.track_running_stats(), momentum, options.eps(), relu_);
  }

  torch::nn::BatchNorm2dOptions options;
  at::Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 private:
  bool relu_;
};
TORCH_MODULE(BatchNormReLU2d);

}  // namespace east::torch_adapter

namespace east::nn {
using torch_adapter::BatchNormReLU2d;
using torch_adapter::BatchNormReLU2dImpl;
}  // namespace east::nn
