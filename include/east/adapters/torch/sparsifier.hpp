#pragma once
// Sparsifier: sparse training of any libtorch model in a standard loop, one object.
//
//   Net model;                                   // east::nn::Conv2d / Linear where it had torch::nn::
//   torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
//   east::torch_adapter::Sparsifier sparsity(*model, optimizer, east::presets::rigl(0.01),
//                                            epochs * steps_per_epoch);                        // + 1
//   for (...) {
//     optimizer.zero_grad();
//     loss_fn(model->forward(x), y).backward();   // any number of micro-batches
//     optimizer.step();
//     sparsity.step();                                                                        // + 1
//   }
//   sparsity.save("run.east");  /  sparsity.load("run.east");                                // + 1 each
//
// It registers every Conv/Linear weight of the model (east/adapters/torch/registration.hpp),
// builds the method's controller (masks, schedule, fan-in scaling of the surviving weights),
// masks each dense weight's gradient during backward (a tensor hook: the optimizer, gradient
// clipping and weight decay never see inactive weights) and re-masks weights and optimizer state
// after each step. Layers of east's drop-in types below the crossover density train on compact
// weights instead: their `compact_values` parameter (nnz floats) is added to the optimizer group
// of their weight, so the user's optimizer and LR scheduler update them as any parameter, and
// the Sparsifier carries the optimizer's state through every mask update. docs/torch-sparsifier.md.
#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "../../controller/any_controller.hpp"
#include "../../core/error.hpp"
#include "../../presets/preset.hpp"
#include "dyrelu.hpp"
#include "layers.hpp"
#include "registration.hpp"
#include "state.hpp"

namespace east {
namespace torch_adapter {

struct SparsifierOptions {
  std::uint64_t seed = 0;                 ///< masks and every random decision of the method
  InitScaling init = InitScaling::fan_in;  ///< rescale surviving initial weights (init/fan_in.hpp)
  /// Layers of east's drop-in types run on compact weights while their density is below the
  /// crossover (conv and linear separately); e.g. {2, 2} runs every one compact, {0, 0} none.
  sparse::Crossover crossover{};
  RegisterOptions registration{};  ///< which weights are prunable (default: every Conv/Linear weight)
  AllocationOptions allocation{};  ///< minimum nonzeros per layer
  /// Optional: initial masks repaired onto input→output paths (east/masks/connectivity.hpp;
  /// e.g. resnet_connectivity(net)); connect_every_weight moves every weight onto a path.
  std::shared_ptr<const ConnectivityGraph> connectivity = nullptr;
  bool connect_every_weight = false;
  std::ostream* log = &std::clog;  ///< one line per layer that cannot run compact, and why; null: quiet
};

class Sparsifier {
 public:
  /// @param model the network (its Conv/Linear weights become prunable layers)
  /// @param optimizer the user's optimizer, holding every prunable weight (SGD, Adam, AdamW,
  ///        RMSprop or Adagrad); it must outlive this object
  /// @param method a preset (east::presets::rigl(0.01), …) with any field changed
  /// @param total_steps optimizer steps of the whole run (schedules are fractions of it)
  Sparsifier(torch::nn::Module& model, torch::optim::Optimizer& optimizer, const Preset& method,
             std::int64_t total_steps, SparsifierOptions options = {})
      : model_(&model), optimizer_(&optimizer), method_(method), total_(total_steps), options_(std::move(options)) {
    constexpr const char* where = "east::torch_adapter::Sparsifier()";
    east::detail::require(total_steps >= 1, where, "total_steps ", total_steps, " (valid: >= 1)");
    if (method.kind != Preset::Kind::dense) east::detail::require_density(method.density, where);
    method.schedule(total_steps);  // validates the schedule's fields
    (void)optimizer_kind(optimizer);
    east::detail::require(options_.crossover.conv >= 0 && options_.crossover.linear >= 0 &&
                              !std::isnan(options_.crossover.conv_strided),
                          where, "crossover ", options_.crossover.conv, " / ", options_.crossover.linear, " / ",
                          options_.crossover.conv_strided,
                          " (valid: conv and linear >= 0; conv_strided a number, negative for its default)");
    RegisterOptions reg = options_.registration;
    reg.allocate_grads = false;
    ParameterSet params = make_parameter_set(model, reg);

    // Everything is checked before anything changes.
    std::map<std::string, torch::nn::Module*> modules;
    for (const auto& [name, m] : detail::all_modules(model)) modules[name] = m;
    std::vector<Plan> plans;
    for (const auto& layer : params) {
      if (layer.role == LayerRole::excluded) continue;
      const std::string path = layer.name.size() > 7 ? layer.name.substr(0, layer.name.size() - 7) : "";
      torch::nn::Module* m = modules.at(path);
      Plan p{layer.name, m, m->named_parameters(false)["weight"], {}, detail::TorchLayer::Kind::other, {}, {}};
      if (const auto* b = m->named_parameters(false).find("bias")) p.bias = *b;
      east::detail::require(holds(optimizer, p.weight), where, "the optimizer does not hold '", layer.name,
                            "' (valid: an optimizer built over the model's parameters)");
      classify(*m, p);
      if (method.kind == Preset::Kind::snfs && p.kind != detail::TorchLayer::Kind::other) {
        p.kind = detail::TorchLayer::Kind::other;
        p.reason = "SNFS reads every layer's dense gradient every step";
      }
      plans.push_back(std::move(p));
    }
    for (auto& p : plans) {
      const bool strided = p.geometry.stride_h > 1 || p.geometry.stride_w > 1;
      const double x = p.kind == detail::TorchLayer::Kind::linear
                           ? options_.crossover.linear
                           : (strided ? options_.crossover.strided_conv() : options_.crossover.conv);
      layers_.push_back(std::make_unique<detail::TorchLayer>(params, p.name, *p.module, p.weight, p.bias, p.kind,
                                                             p.geometry, p.reason, optimizer, x));
      if (auto* c = dynamic_cast<Conv2dImpl*>(p.module)) c->set_east_layer(layers_.back().get());
      if (auto* l = dynamic_cast<LinearImpl*>(p.module)) l->set_east_layer(layers_.back().get());
      if (options_.log && !p.reason.empty())
        *options_.log << "east: " << p.name << " stays dense: " << p.reason << "\n";
    }
    refresh_views(params);
    ControllerOptions co;
    co.seed = options_.seed;
    co.init = options_.init;
    co.allocation = options_.allocation;
    co.connectivity = options_.connectivity;
    co.connect_every_weight = options_.connect_every_weight;
    try {
      ctl_ = method.build(std::move(params), total_steps, co);
    } catch (...) {
      release();
      throw;
    }
    if (method.kind == Preset::Kind::east) phase_ = make_east_phase(method.east_config(total_steps));
    set_phase();
  }
  Sparsifier(const Sparsifier&) = delete;
  Sparsifier& operator=(const Sparsifier&) = delete;
  /// Hands the model back: compact layers write their weights into the dense tensors and train
  /// densely again (masks are no longer enforced).
  ~Sparsifier() { release(); }

  /// Call once per optimizer step, after optimizer.step(): re-masks, updates the masks on
  /// update steps, advances the schedule (and EAST's DyReLU phase).
  void step() {
    if (ctl_->is_update_step(step_))
      for (auto& l : layers_) l->reduce_kept_gradient();
    refresh_views(ctl_->params());
    ctl_->before_optimizer_step(step_);
    ctl_->after_optimizer_step(step_);
    ++step_;
    set_phase();
  }

  /// Optimizer steps done (the step the next call to step() completes).
  std::int64_t steps() const { return step_; }
  std::int64_t total_steps() const { return total_; }
  /// Whether the coming step updates the masks.
  bool is_update_step() const { return ctl_->is_update_step(step_); }
  /// EAST's DyReLU β for the coming step (0 for other methods).
  double beta() const { return method_.kind == Preset::Kind::east ? phase_.beta(step_) : 0.0; }
  const Preset& method() const { return method_; }

  AnyController& controller() { return *ctl_; }
  const AnyController& controller() const { return *ctl_; }
  std::size_t nonzeros() const { return ctl_->nonzeros(); }
  double density() const { return ctl_->density(); }
  /// Prunable layers on compact weights now.
  std::size_t compact_layers() const {
    std::size_t n = 0;
    for (const auto& l : layers_) n += l->mode().compact;
    return n;
  }
  std::size_t layers() const { return layers_.size(); }
  /// One line per prunable layer: name, shape, nonzeros, density, compact or dense (and why).
  std::string summary() const {
    std::ostringstream o;
    o << method_.name() << " at density " << ctl_->density() << ": " << ctl_->nonzeros() << " nonzeros of "
      << ctl_->params().logical_size() << ", " << compact_layers() << " of " << layers_.size()
      << " layers on compact weights\n";
    for (const auto& l : layers_) {
      const auto& v = ctl_->params().at(l->name());
      const auto& m = ctl_->mask(l->name());
      o << "  " << l->name() << " [";
      for (std::size_t d = 0; d < v.shape.size(); ++d) o << (d ? "x" : "") << v.shape[d];
      o << "] " << m.count() << " nonzeros, density " << m.density() << ", "
        << (l->mode().compact ? "compact" : "dense");
      if (!l->mode().reason.empty()) o << " (" << l->mode().reason << ")";
      o << "\n";
    }
    return o.str();
  }

  /// Every dense gradient the controller reads at a mask update goes through `reduce` first (data,
  /// floats), e.g. an all-reduce across data-parallel ranks.
  void set_gradient_reducer(std::function<void(float*, std::size_t)> reduce) {
    for (auto& l : layers_) l->set_gradient_reducer(reduce);
  }

  /// One CRC-checked file: masks and schedule state, the step, every model tensor, the
  /// optimizer's state and `extra` (anything of the caller's; east/io/checkpoint.hpp holds the format).
  void save(const std::string& path, const std::string& extra = {}) const {
    ctl_->sync_dense_views();
    StateWriter w;
    w.put_string(fingerprint());
    w.put(step_);
    w.put_module(*model_);
    w.put_string(save_optimizer_state(*optimizer_));
    w.put_string(extra);
    ctl_->save(path, w.bytes());
  }
  /// Resumes what save() wrote, from a Sparsifier built like the saving one (same model,
  /// optimizer type, method and total steps); anything else is refused and leaves the masks as
  /// they were. Returns save()'s `extra`.
  std::string load(const std::string& path) {
    const ControllerState before = ctl_->state();
    const std::string blob = ctl_->load(path);
    std::string extra;
    try {
      StateReader r(blob);
      const std::string fp = r.get_string("fingerprint");
      if (fp != fingerprint())
        throw InvalidArgument("east::torch_adapter::Sparsifier::load(): '" + path +
                              "' was written with other settings (" + fp + "; this run: " +
                              fingerprint() + ")");
      const auto step = r.get<std::int64_t>("step");
      if (step < 0 || step > total_)
        throw CorruptCheckpoint(east::detail::concat("east::torch_adapter::Sparsifier::load(): step ", step,
                                                     " (valid: 0..", total_, ")"));
      r.get_module(*model_);
      ctl_->refresh_from_dense();
      load_optimizer_state(*optimizer_, r.get_string("optimizer state"));
      extra = r.get_string("extra");
      step_ = step;
    } catch (...) {
      ctl_->restore(before);
      throw;
    }
    set_phase();
    return extra;
  }

 private:
  struct Plan {
    std::string name;
    torch::nn::Module* module;
    torch::Tensor weight, bias;
    detail::TorchLayer::Kind kind;
    detail::TorchLayer::Geometry geometry;
    std::string reason;
  };

  static bool holds(const torch::optim::Optimizer& o, const torch::Tensor& t) {
    for (const auto& g : o.param_groups())
      for (const auto& p : g.params())
        if (p.unsafeGetTensorImpl() == t.unsafeGetTensorImpl()) return true;
    return false;
  }

  // Whether east's kernels can run this layer, and its geometry.
  static void classify(torch::nn::Module& m, Plan& p) {
    using Kind = detail::TorchLayer::Kind;
    if (auto* c = dynamic_cast<Conv2dImpl*>(&m)) {
      const auto& o = c->options;
      const auto k = *o.kernel_size(), s = *o.stride(), d = *o.dilation();
      if (o.groups() != 1) return void(p.reason = "groups " + std::to_string(o.groups()) + " (compact: 1)");
      if (d[0] != 1 || d[1] != 1) return void(p.reason = "dilation other than 1");
      if (!c10::get_if<torch::enumtype::kZeros>(&o.padding_mode())) return void(p.reason = "padding mode other than zeros");
      detail::TorchLayer::Geometry g;
      g.kh = static_cast<std::size_t>(k[0]), g.kw = static_cast<std::size_t>(k[1]);
      g.stride_h = static_cast<std::size_t>(s[0]), g.stride_w = static_cast<std::size_t>(s[1]);
      if (const auto* pad = c10::get_if<torch::ExpandingArray<2>>(&o.padding())) {
        g.pad_h = static_cast<std::size_t>((**pad)[0]), g.pad_w = static_cast<std::size_t>((**pad)[1]);
      } else if (c10::get_if<torch::enumtype::kSame>(&o.padding())) {
        if (k[0] % 2 == 0 || k[1] % 2 == 0) return void(p.reason = "'same' padding of an even kernel");
        g.pad_h = static_cast<std::size_t>(k[0] / 2), g.pad_w = static_cast<std::size_t>(k[1] / 2);
      }
      p.kind = Kind::conv2d;
      p.geometry = g;
    } else if (dynamic_cast<LinearImpl*>(&m)) {
      p.kind = Kind::linear;
    } else {
      p.reason = "a libtorch module; east::nn::Conv2d / east::nn::Linear train on compact weights";
    }
  }

  // The controller's views of dense-form layers point at the tensors as they are now (libtorch
  // may reallocate gradients, e.g. zero_grad(set_to_none), and optimizers create state lazily).
  void refresh_views(ParameterSet& params) {
    for (auto& l : layers_) {
      auto& v = params.at(l->name());
      v.weight = l->dense_weight_view();
      v.grad = l->mode().compact ? nullptr : l->dense_grad_view();
      v.state = l->dense_state_views();
    }
  }

  void set_phase() {
    if (method_.kind != Preset::Kind::east) return;
    const std::int64_t s = std::min(step_, total_ - 1);
    const bool frozen = phase_.frozen(s);
    set_dyrelu_phase(*model_, phase_.beta(s), frozen);
    // A frozen (or not yet used) hyper-network has no gradient, so the optimizer skips it: no
    // momentum, no weight decay, as in the authors' code.
    if (frozen)
      for (const auto& item : detail::all_modules(*model_))
        if (auto* d = item.second->as<DyReLUBImpl>())
          for (auto& p : d->parameters()) p.mutable_grad() = torch::Tensor();
  }

  std::string fingerprint() const {
    std::ostringstream o;
    o.precision(17);
    o << method_.name() << '|' << method_.density << '|' << total_ << '|' << method_.updates << '|'
      << method_.update_interval << '|' << method_.update_end << '|' << method_.drop_fraction << '|'
      << method_.drop_floor << '|' << options_.seed << '|' << layers_.size();
    if (method_.fan_in_init) o << "|fan-in-init " << method_.fan_in_gain;  // only when on: old files load
    return o.str();
  }

  void release() {
    for (auto& l : layers_) {
      l->release();
      if (auto* c = dynamic_cast<Conv2dImpl*>(l->module())) c->set_east_layer(nullptr);
      if (auto* x = dynamic_cast<LinearImpl*>(l->module())) x->set_east_layer(nullptr);
    }
  }

  torch::nn::Module* model_;
  torch::optim::Optimizer* optimizer_;
  Preset method_;
  std::int64_t total_;
  SparsifierOptions options_;
  std::vector<std::unique_ptr<detail::TorchLayer>> layers_;
  std::unique_ptr<AnyController> ctl_;
  EastPhase phase_{false, {}};
  std::int64_t step_ = 0;
};

}  // namespace torch_adapter
}  // namespace east
