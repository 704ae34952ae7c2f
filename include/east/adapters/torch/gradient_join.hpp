#pragma once
// A residual block's input x feeds its first convolution and, unchanged, the residual add fused
// into its last BatchNorm. Autograd would add the two gradients of x in a pass of its own (read
// both, write one: 3 passes over an activation per block). A GradientJoin lets the BatchNorm's
// backward hand its residual gradient to the convolution's backward, which adds its input
// gradient into it in the pass that computes it (sparse::conv2d_grad_input's `add`): 1 pass.
// The order is safe: the convolution's output gradient depends on the BatchNorm's backward, so
// autograd always runs that first.
#include <torch/torch.h>

#include <string>

namespace east::torch_adapter {

/// The hand-over between the two uses of one tensor, made per forward by the block that uses it
/// twice (ResidualBlock). The convolution's forward accepts it only when it runs on compact weights
/// (libtorch's convolution has no add mode); the BatchNorm hands over only to an accepted join and
/// otherwise returns its residual gradient to autograd as usual.
struct GradientJoin : torch::CustomClassHolder {
  bool accepted = false;  ///< a compact convolution's backward will take `pending`
  at::Tensor pending;     ///< the residual gradient, from the BatchNorm's backward until taken
};
using GradientJoinPtr = c10::intrusive_ptr<GradientJoin>;

namespace detail {
inline void save_join(torch::autograd::AutogradContext* ctx, const GradientJoinPtr& join) {
  if (join) ctx->saved_data["gradient_join"] = c10::IValue::make_capsule(join);
}
inline GradientJoinPtr saved_join(torch::autograd::AutogradContext* ctx) {
  const auto it = ctx->saved_data.find("gradient_join");
  if (it == ctx->saved_data.end()) return {};
  return c10::static_intrusive_pointer_cast<GradientJoin>(it->second.toCapsule());
}
}  // namespace detail

}  // namespace east::torch_adapter
