#pragma once
// AnyController: one nameable type for a Controller of any Method (a virtual call per training
// step, nothing per weight), for code that picks its method at run time — the libtorch
// Sparsifier, the reference trainer, a command-line flag. east::presets (presets/preset.hpp)
// builds them by name.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../io/checkpoint.hpp"
#include "controller.hpp"

namespace east {

class AnyController {
 public:
  virtual ~AnyController() = default;
  // The training-loop hooks and the update decision (Controller's, without callbacks).
  virtual void before_optimizer_step(std::int64_t step) = 0;
  virtual bool after_optimizer_step(std::int64_t step) = 0;
  virtual bool is_update_step(std::int64_t step) const = 0;
  virtual UpdateReport update(std::int64_t step) = 0;
  virtual void apply_masks() = 0;
  virtual void sync_dense_views() const = 0;
  virtual void refresh_from_dense() = 0;
  virtual void set_per_step_masking(std::size_t layer, bool on) = 0;
  // Observers.
  virtual const std::vector<BitMask>& masks() const = 0;
  virtual const std::vector<BitMask>& ever_active() const = 0;
  virtual const ParameterSet& params() const = 0;
  virtual ParameterSet& params() = 0;
  virtual std::size_t nonzeros() const = 0;
  virtual double density() const = 0;
  virtual double stored_density() const = 0;
  virtual double target_density() const = 0;
  virtual std::uint64_t updates() const = 0;
  virtual std::uint64_t digest() const = 0;
  virtual std::vector<std::string> empty_layers() const = 0;
  virtual const UpdateReport& last_report() const = 0;
  // Resume.
  virtual ControllerState state() const = 0;
  virtual void restore(const ControllerState& s) = 0;
  /// east::save_checkpoint / load_checkpoint of the controller inside.
  virtual void save(const std::string& path, const std::string& user_data = {}) const = 0;
  virtual std::string load(const std::string& path) = 0;

  const BitMask& mask(const std::string& name) const { return masks()[index_of(name)]; }
  std::size_t index_of(const std::string& name) const {
    const auto i = params().find(name);
    detail::require(i != ParameterSet::npos, "east::AnyController", "unknown layer name '", name, "'");
    return i;
  }
};

/// The AnyController holding a Controller<M> (reach it with `controller()`).
template <class C>
class ControllerModel final : public AnyController {
 public:
  explicit ControllerModel(C c) : ctl_(std::move(c)) {}
  void before_optimizer_step(std::int64_t s) override { ctl_.before_optimizer_step(s); }
  bool after_optimizer_step(std::int64_t s) override { return ctl_.after_optimizer_step(s); }
  bool is_update_step(std::int64_t s) const override { return ctl_.is_update_step(s); }
  UpdateReport update(std::int64_t s) override { return ctl_.update(s); }
  void apply_masks() override { ctl_.apply_masks(); }
  void sync_dense_views() const override { ctl_.sync_dense_views(); }
  void refresh_from_dense() override { ctl_.refresh_from_dense(); }
  void set_per_step_masking(std::size_t l, bool on) override { ctl_.set_per_step_masking(l, on); }
  const std::vector<BitMask>& masks() const override { return ctl_.masks(); }
  const std::vector<BitMask>& ever_active() const override { return ctl_.ever_active(); }
  const ParameterSet& params() const override { return ctl_.params(); }
  ParameterSet& params() override { return ctl_.params(); }
  std::size_t nonzeros() const override { return ctl_.nonzeros(); }
  double density() const override { return ctl_.density(); }
  double stored_density() const override { return ctl_.stored_density(); }
  double target_density() const override { return ctl_.target_density(); }
  std::uint64_t updates() const override { return ctl_.updates(); }
  std::uint64_t digest() const override { return ctl_.digest(); }
  std::vector<std::string> empty_layers() const override { return ctl_.empty_layers(); }
  const UpdateReport& last_report() const override { return ctl_.last_report(); }
  ControllerState state() const override { return ctl_.state(); }
  void restore(const ControllerState& s) override { ctl_.restore(s); }
  void save(const std::string& path, const std::string& user_data) const override {
    save_checkpoint(ctl_, path, user_data);
  }
  std::string load(const std::string& path) override { return load_checkpoint(ctl_, path); }
  C& controller() { return ctl_; }
  const C& controller() const { return ctl_; }

 private:
  C ctl_;
};

/// Wraps a built controller: `std::unique_ptr<AnyController> c = east::erase(east::make_rigl(…));`
template <class C>
std::unique_ptr<AnyController> erase(C controller) {
  return std::make_unique<ControllerModel<C>>(std::move(controller));
}

}  // namespace east
