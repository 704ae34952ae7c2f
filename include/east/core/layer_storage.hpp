#pragma once
// LayerStorage: a layer whose weights live somewhere other than its dense view between mask
// updates — compact (CSR) storage that forward, backward and the optimizer use directly
// (east::sparse::CompactLayer, the libtorch modules built on it). The controller drives it
// through these hooks, so a training loop needs no extra calls for it (docs/compact-layers.md):
//
//   construction, restore(), apply_masks()  → on_mask_changed(mask)
//   every step, at the end of after_optimizer_step(step)
//                                           → prepare_step(step + 1 is an update step that reads gradients)
//   while detached(): before/after_optimizer_step skip the layer's per-step masking
//   update(step): sync_to_dense() first; dense_gradient() while deciding regrowth (one layer at
//                 a time); on_mask_changed(new mask) after the commit
#include <cstddef>

namespace east {

class BitMask;

class LayerStorage {
 public:
  virtual ~LayerStorage() = default;

  /// True while the layer trains on its own storage and its dense views (weight, gradient,
  /// optimizer buffers) are stale. The controller then skips its per-step masking.
  virtual bool detached() const = 0;

  /// Writes the current weights into the dense weight view (zeros at inactive positions).
  /// Called at the start of every mask update while detached().
  virtual void sync_to_dense() = 0;

  /// The dense gradient ∂L/∂W of the step just run (all positions, the sum over its
  /// micro-batches), for regrowth: fills `scratch` (the layer's size in floats, owned by the
  /// controller) or returns a pointer to storage of its own. Called during a mask update while
  /// detached(), one layer at a time, only when the regrow criterion reads gradients and
  /// prepare_step(true) announced the step.
  virtual float* dense_gradient(float* scratch) = 0;

  /// The mask changed (construction, a mask update, restore(), apply_masks()): rebuild from the
  /// dense weight view under `mask`. Optimizer state of positions active before and after is
  /// kept; other positions start at zero (what masking a dense buffer does).
  virtual void on_mask_changed(const BitMask& mask) = 0;

  /// Whether the next step's backward must keep what dense_gradient() needs (its mask update
  /// reads gradients). Called at construction and at the end of every after_optimizer_step.
  virtual void prepare_step(bool capture_gradient) = 0;
};

}  // namespace east
