#pragma once
// A residual block's input x has two uses: its first convolution and either the residual add
// fused into its last BatchNorm (identity shortcut) or the shortcut's convolution (projection).
// Autograd would add the two gradients of x in a pass of its own (read both, write one: 3 passes
// over an activation per block). A GradientJoin instead lets the first backward to run park its
// gradient of x and the last one add into it in the pass that computes its own
// (sparse::conv2d_grad_input's `add`): 1 pass. Convolutions can add; a BatchNorm can only park,
// which is safe because the convolution it hands to depends on its backward.
#include <torch/torch.h>

#include <string>

namespace east::torch_adapter {

/// The hand-over between the uses of one tensor, made per forward by the block that uses it twice
/// (ResidualBlock). A convolution's forward joins only when it runs on compact weights (libtorch's
/// convolution has no add mode); a BatchNorm joins only after a convolution did. Participants that
/// did not join return their gradient to autograd as usual.
struct GradientJoin : torch::CustomClassHolder {
  int convolutions = 0;  ///< compact convolutions that joined (they can add)
  int uses = 0;          ///< every participant that joined
  int arrived = 0;       ///< participants whose backward ran (this pass)
  at::Tensor pending;    ///< the gradient parked so far
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
/// A participant's backward arriving with its gradient `g` of the shared tensor (undefined when it
/// has none). A convolution has already taken `pending` as its buffer and added into it; anything
/// still pending is added here (a pass of its own; only if a BatchNorm ran last, which a block does
/// not do). Returns what this participant gives autograd: nothing until the last one, which
/// returns the sum.
inline at::Tensor arrive(GradientJoin& join, at::Tensor g) {
  if (join.pending.defined()) {
    g = g.defined() ? join.pending.add_(g) : join.pending;
    join.pending = at::Tensor();
  }
  if (++join.arrived < join.uses) {
    join.pending = std::move(g);
    return {};
  }
  join.arrived = 0;  // a later backward through the same graph (retain_graph) starts again
  return g;
}
}  // namespace detail

}  // namespace east::torch_adapter
