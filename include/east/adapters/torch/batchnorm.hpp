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

#include <vector>

#include "../../core/error.hpp"
#include "../../sparse/batchnorm.hpp"
#include "gradient_join.hpp"
#include "gradient_reuse.hpp"

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
                            double eps, bool relu, GradientJoinPtr join) {
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
    // Without a residual the backward recomputes the ReLU's mask from x: y is not kept for it.
    const bool has_res = detail::given(residual);
    ctx->save_for_backward({x, relu && has_res ? y : at::Tensor(), weight, bias, mean, invstd});
    ctx->saved_data["training"] = o.training;
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["has_residual"] = has_res;
    ctx->saved_data["has_bias"] = detail::given(bias);
    if (has_res && join && join->convolutions > 0) {  // a compact convolution of the residual will add
      ++join->uses;
      detail::save_join(ctx, join);
    }
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &y = saved[1], &weight = saved[2], &bias = saved[3], &mean = saved[4],
                     &invstd = saved[5];
    const bool in_place = detail::reusable_gradient(grads, 0, x);  // dx written over dy (gradient_reuse.hpp)
    const at::Tensor dy = grads[0].contiguous();
    sparse::BatchNormOptions o;
    o.training = ctx->saved_data["training"].toBool();
    o.relu = ctx->saved_data["relu"].toBool();
    o.eps = ctx->saved_data["eps"].toDouble();
    const bool has_res = ctx->saved_data["has_residual"].toBool();
    const bool need_w = detail::given(weight) && ctx->needs_input_grad(1);
    const bool need_b = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2);
    auto dx = in_place ? dy : torch::empty_like(x);
    at::Tensor dres = has_res && ctx->needs_input_grad(3) ? torch::empty_like(x) : at::Tensor();
    const GradientJoinPtr join = detail::saved_join(ctx);
    const long c = x.size(1);
    at::Tensor dw = need_w ? torch::empty({c}, x.options()) : at::Tensor();
    at::Tensor db = need_b ? torch::empty({c}, x.options()) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "east_batchnorm_relu_backward", [&] {
      sparse::batchnorm_backward<scalar_t>(
          detail::bn_shape(x), dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), detail::ptr_or_null<scalar_t>(y),
          detail::ptr_or_null<scalar_t>(weight), detail::ptr_or_null<scalar_t>(bias), mean.data_ptr<scalar_t>(),
          invstd.data_ptr<scalar_t>(), o,
          dx.data_ptr<scalar_t>(), detail::mut_ptr_or_null<scalar_t>(dres),
          detail::mut_ptr_or_null<scalar_t>(dw), detail::mut_ptr_or_null<scalar_t>(db));
    });
    if (join) dres = detail::arrive(*join, std::move(dres));  // parked: the convolution adds into it
    return {dx,           dw,           db,           dres,         at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

/// y = relu(batch_norm(x) [+ residual]) (relu = false: without the ReLU) with east's fused kernels.
/// weight, bias, residual, running_mean/var may be undefined; the running statistics are updated
/// in place when `training`. Gradients flow to input, weight, bias and residual; with a `join` that a
/// compact convolution of the residual joined (gradient_join.hpp), the residual's gradient is
/// summed in that convolution's input-gradient pass.
inline at::Tensor batchnorm_relu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                                 const at::Tensor& residual, const at::Tensor& running_mean,
                                 const at::Tensor& running_var, bool training, double momentum, double eps,
                                 bool relu = true, const GradientJoinPtr& join = {}) {
  ::east::detail::require(input.defined(), "east::torch_adapter::batchnorm_relu()", "input is undefined");
  auto e = [&](const at::Tensor& t) { return detail::absent_as_empty(t, input); };
  return BatchNormReLUFunction::apply(input, e(weight), e(bias), e(residual), e(running_mean), e(running_var),
                                      training, momentum, eps, relu, join);
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

  /// relu(BN(x) [+ residual]); `join`: sum the residual's gradient in the input-gradient pass of
  /// a compact convolution of the residual that joined it (gradient_join.hpp).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& residual = {}, const GradientJoinPtr& join = {}) {
    ::east::detail::require(x.dim() == 4, "east::torch_adapter::BatchNormReLU2d", "input has ", x.dim(),
                            " dimensions (valid: 4, NCHW)");
    double momentum = options.momentum().value_or(0.0);
    const bool update = is_training() && options.track_running_stats();
    if (update && defer_) {
      // Momentum 1 over zeroed buffers: the kernel writes this batch's mean and unbiased variance
      // (the values it would blend into the running statistics); the output is unchanged.
      auto mean = torch::zeros({options.num_features()}, x.options());
      auto var = torch::zeros({options.num_features()}, x.options());
      auto y = batchnorm_relu(x, weight, bias, residual, mean, var, true, 1.0, options.eps(), relu_, join);
      recorded_.push_back(std::move(mean));
      recorded_.push_back(std::move(var));
      return y;
    }
    if (update) {
      torch::NoGradGuard ng;
      num_batches_tracked.add_(1);
      // momentum = None in torch means a cumulative average: factor 1 / batches seen.
      if (!options.momentum()) momentum = 1.0 / static_cast<double>(num_batches_tracked.item<long>());
    }
    // Eval without running statistics normalises with the batch (torch does the same).
    return batchnorm_relu(x, weight, bias, residual, running_mean, running_var,
                          is_training() || !options.track_running_stats(), momentum, options.eps(), relu_, join);
  }

  /// Deferred running statistics (gradient accumulation, data parallelism): while on, a training
  /// forward normalises with its batch's statistics as always but, instead of updating
  /// running_mean / running_var / num_batches_tracked, records the batch's per-channel mean and
  /// unbiased variance; apply_running_statistics() later applies recorded batches in a chosen
  /// order (e.g. the global micro-batch order over every rank), so that K micro-batches in one
  /// process and K ranks update the buffers with the same arithmetic. Needs
  /// track_running_stats; turning it off drops what was not taken.
  void set_defer_running_stats(bool on) {
    ::east::detail::require(!on || options.track_running_stats(),
                            "east::torch_adapter::BatchNormReLU2d::set_defer_running_stats()",
                            "the module has no running statistics (track_running_stats is false)");
    defer_ = on;
    if (!on) recorded_.clear();
  }
  bool defers_running_stats() const { return defer_; }
  /// Training forwards recorded since the last take_recorded_statistics().
  std::size_t recorded_batches() const { return recorded_.size() / 2; }
  /// Appends the recorded statistics to `out` as floats, batch by batch (C means, then C unbiased
  /// variances per batch), and forgets them.
  void take_recorded_statistics(std::vector<float>& out) {
    for (const auto& t : recorded_) {
      const auto f = t.to(torch::kFloat).contiguous();
      out.insert(out.end(), f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
    }
    recorded_.clear();
  }
  /// Updates the running statistics with one batch's recorded (mean, unbiased variance) — 2·C
  /// floats as take_recorded_statistics() writes them — as that batch's training forward would
  /// have without deferral: num_batches_tracked + 1, running = (1 − momentum)·running +
  /// momentum·statistic in double (momentum None: 1 / batches tracked).
  void apply_running_statistics(const float* stats) {
    ::east::detail::require(options.track_running_stats(),
                            "east::torch_adapter::BatchNormReLU2d::apply_running_statistics()",
                            "the module has no running statistics (track_running_stats is false)");
    torch::NoGradGuard ng;
    num_batches_tracked.add_(1);
    const double mo = options.momentum() ? *options.momentum()
                                         : 1.0 / static_cast<double>(num_batches_tracked.item<long>());
    const long c = options.num_features();
    AT_DISPATCH_FLOATING_TYPES(running_mean.scalar_type(), "east_batchnorm_apply_stats", [&] {
      scalar_t* rm = running_mean.data_ptr<scalar_t>();
      scalar_t* rv = running_var.data_ptr<scalar_t>();
      for (long i = 0; i < c; ++i) {
        rm[i] = static_cast<scalar_t>((1.0 - mo) * static_cast<double>(rm[i]) +
                                      mo * static_cast<double>(stats[i]));
        rv[i] = static_cast<scalar_t>((1.0 - mo) * static_cast<double>(rv[i]) +
                                      mo * static_cast<double>(stats[c + i]));
      }
    });
  }

  torch::nn::BatchNorm2dOptions options;
  at::Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 private:
  bool relu_;
  bool defer_ = false;
  std::vector<at::Tensor> recorded_;  // mean, var of each deferred training forward
};
TORCH_MODULE(BatchNormReLU2d);

/// Every BatchNormReLU2d with running statistics inside `module`, in registration order.
inline std::vector<BatchNormReLU2dImpl*> batchnorms_with_running_stats(torch::nn::Module& module) {
  std::vector<BatchNormReLU2dImpl*> out;
  if (auto* self = module.as<BatchNormReLU2dImpl>())
    if (self->options.track_running_stats()) out.push_back(self);
  for (const auto& m : module.modules(/*include_self=*/false))
    if (auto* b = m->as<BatchNormReLU2dImpl>())
      if (b->options.track_running_stats()) out.push_back(b);
  return out;
}

/// BatchNormReLU2dImpl::set_defer_running_stats() on every one inside `module`.
inline void set_defer_running_stats(torch::nn::Module& module, bool on) {
  for (auto* b : batchnorms_with_running_stats(module)) b->set_defer_running_stats(on);
}

/// Floats one batch's statistics take over every BatchNormReLU2d inside `module` (2·channels summed).
inline std::size_t running_statistics_size(torch::nn::Module& module) {
  std::size_t n = 0;
  for (auto* b : batchnorms_with_running_stats(module))
    n += 2 * static_cast<std::size_t>(b->options.num_features());
  return n;
}

/// The statistics every BatchNormReLU2d inside `module` recorded, batch-major: for each of the
/// `batches` recorded forwards, each module's means and variances in registration order
/// (running_statistics_size() floats per batch). Every module must have recorded `batches`.
inline std::vector<float> take_running_statistics(torch::nn::Module& module, std::size_t batches) {
  const auto bns = batchnorms_with_running_stats(module);
  for (std::size_t i = 0; i < bns.size(); ++i)  // checked before anything is taken
    ::east::detail::require(
        bns[i]->recorded_batches() == batches, "east::torch_adapter::take_running_statistics()", "BatchNorm ",
        i, " recorded ", bns[i]->recorded_batches(), " batches (valid: ", batches,
        ", one per training forward; is deferral on and every module used once per forward?)");
  std::vector<std::vector<float>> per(bns.size());
  for (std::size_t i = 0; i < bns.size(); ++i) bns[i]->take_recorded_statistics(per[i]);
  std::vector<float> out;
  out.reserve(batches * running_statistics_size(module));
  for (std::size_t k = 0; k < batches; ++k)
    for (std::size_t i = 0; i < bns.size(); ++i) {
      const std::size_t n = 2 * static_cast<std::size_t>(bns[i]->options.num_features());
      out.insert(out.end(), per[i].begin() + static_cast<long>(k * n),
                 per[i].begin() + static_cast<long>((k + 1) * n));
    }
  return out;
}

/// Applies `batches` batches of statistics laid out as take_running_statistics() returns them (for
/// data parallelism: every rank's, all-gathered in global micro-batch order), one batch after the other.
inline void apply_running_statistics(torch::nn::Module& module, const float* stats, std::size_t batches) {
  const auto bns = batchnorms_with_running_stats(module);
  for (std::size_t k = 0; k < batches; ++k)
    for (auto* b : bns) {
      b->apply_running_statistics(stats);
      stats += 2 * static_cast<std::size_t>(b->options.num_features());
    }
}

}  // namespace east::torch_adapter

namespace east::nn {
using torch_adapter::BatchNormReLU2d;
using torch_adapter::BatchNormReLU2dImpl;
}  // namespace east::nn
