#pragma once
// The reference trainer: CIFAR-style ResNets trained densely or with east's sparse methods
// (static, SET, RigL, EAST and EAST's ablations) under the EAST-SPEC §5 recipe, with every phase
// a fraction of training (EAST-SPEC §6). Used by main.cpp and by tests/test_torch_trainer.cpp.
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <east/activations/phase_schedule.hpp>
#include <east/adapters/torch.hpp>
#include <east/adapters/torch/resnet_graph.hpp>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "data.hpp"

namespace east_trainer {

namespace ta = east::torch_adapter;

/// Everything a run depends on. Defaults: the README's demo (EAST, 99.9%, Fashion-MNIST).
struct Config {
  std::string dataset = "fashion-mnist";
  std::string data_dir;         ///< empty: /usr/share/datasets/fashion-mnist or ./data/<dataset>
  std::string method = "east";  ///< dense static set rigl east east-no-dyrelu east-no-sharing east-no-cyclic
  double sparsity = 0.999;
  int depth = 34;
  double width = 0.25;  ///< multiplier of 64/128/256/512
  int epochs = 4;
  int64_t batch = 128;
  double lr = 0.1;
  double momentum = 0.9;
  double weight_decay = 5e-4;
  bool nesterov = true;
  double clip = 1.0;         ///< global gradient-norm clip; 0 = off
  int64_t train_subset = 0;  ///< images of the train file used (0 = all); val_fraction of them held out
  int64_t test_subset = 0;   ///< test images evaluated (0 = all)
  double val_fraction = 0.1;
  bool augment = true;          ///< pad 4 + random crop, horizontal flip
  std::uint64_t seed = 0;       ///< init, masks, data order, augmentation
  std::uint64_t data_seed = 0;  ///< subset and validation split (same for every seed by default)
  int threads = 2;
  int updates = 20;              ///< mask updates per run (ΔT = update_end·T / updates)
  double update_end = 0.75;      ///< no mask updates after this fraction of training
  double drop_fraction = 0.5;    ///< cosine drop fraction f_0 …
  double drop_floor = 0.005;     ///< … to f_min at update_end
  double cyclic_fraction = 0.4;  ///< EAST: cycles cover this fraction of training
  int cycles = 2;
  double cyclic_multiplier = 3.0;
  double dyrelu_start = 0.25;  ///< EAST: β = 1 until here …
  double dyrelu_end = 0.5;     ///< … linear to 0 here
  bool freeze_hypernet = false;
  std::string dyrelu_impl = "kernels";  ///< torch | kernels
  // freeze_hypernet: from dyrelu_start on, no gradients and no optimizer steps for the hyper-networks.
  // DyReLU study options (docs/dyrelu-probes.md); the defaults are EAST-SPEC §2.
  std::string dyrelu_init = "default";  ///< default (torch's Linear init) | relu (fc2 zeroed: exactly ReLU)
  std::string dyrelu_ramp = "linear";  ///< linear | cosine (β = ½(1 + cos πp), p the linear ramp's progress)
  std::string dyrelu_mode = "full";    ///< full | ramp-only (ES2's code: plain ReLU while β = 1)
  double hyper_lr = 1.0;               ///< learning-rate multiplier of the DyReLU hyper-networks
  double hyper_wd = -1.0;              ///< their weight decay; < 0 = --weight-decay
  int dyrelu_on = -1, sharing_on = -1, cyclic_on = -1;  ///< trick overrides: -1 = the method's, 0 off, 1 on
  /// Repair the initial masks so every layer lies on an input→output path (east/masks/connectivity.hpp).
  bool connect = false;
  bool connect_all = false;  ///< --connect-all: every weight on an input→output path (implies connect)
  /// Convolutions: auto (east's sparse kernels below sparse::Crossover's density, libtorch above),
  /// sparse (all on east's kernels), dense (libtorch with masked dense weights). Same training
  /// either way, up to floating-point rounding.
  std::string kernels = "auto";
  std::string out_dir;  ///< results, checkpoint; empty = no files
  bool resume = false;
  int stop_after_epochs = -1;  ///< stop (as if interrupted) after this many epochs in this process
  int64_t log_every = 0;       ///< steps between progress lines; 0 = about 10 per epoch
  bool quiet = false;
  std::string command_line;  ///< recorded in the results

  bool sparse() const { return method != "dense"; }
  bool dyrelu() const {
    if (dyrelu_on >= 0) return dyrelu_on == 1;
    return method == "east" || method == "east-no-sharing" || method == "east-no-cyclic";
  }
  bool share() const {
    if (sharing_on >= 0) return sharing_on == 1;
    return method == "east" || method == "east-no-dyrelu" || method == "east-no-cyclic";
  }
  bool cyclic() const {
    if (cyclic_on >= 0) return cyclic_on == 1;
    return method == "east" || method == "east-no-dyrelu" || method == "east-no-sharing";
  }
  bool dynamic() const { return method != "dense" && method != "static"; }
};

inline void validate(Config& c) {
  using east::detail::require;
  const char* w = "east-trainer";
  const std::vector<std::string> methods = {
      "dense", "static", "set", "rigl", "east", "east-no-dyrelu", "east-no-sharing", "east-no-cyclic"};
  bool ok = false;
  for (const auto& m : methods) ok |= m == c.method;
  require(ok, w, "--method ", c.method,
          " (valid: dense, static, set, rigl, east, east-no-dyrelu, east-no-sharing, east-no-cyclic)");
  require(c.sparsity >= 0 && c.sparsity < 1, w, "--sparsity ", c.sparsity, " (valid: [0, 1), e.g. 0.999)");
  require(c.method == "dense" || c.sparsity > 0, w, "--sparsity 0 only makes sense with --method dense");
  require(c.depth == 18 || c.depth == 34 || c.depth == 50, w, "--depth ", c.depth, " (valid: 18, 34, 50)");
  require(c.width > 0 && c.width <= 16, w, "--width ", c.width, " (valid: (0, 16])");
  require(c.epochs >= 1 && c.epochs <= 100000, w, "--epochs ", c.epochs, " (valid: >= 1)");
  require(c.batch >= 2 && c.batch <= 65536, w, "--batch ", c.batch, " (valid: 2..65536)");
  require(c.lr > 0 && std::isfinite(c.lr), w, "--lr ", c.lr, " (valid: > 0)");
  require(c.momentum >= 0 && c.momentum < 1, w, "--momentum ", c.momentum, " (valid: [0, 1))");
  require(c.weight_decay >= 0, w, "--weight-decay ", c.weight_decay, " (valid: >= 0)");
  require(c.clip >= 0, w, "--clip ", c.clip, " (valid: >= 0, 0 = off)");
  require(c.train_subset >= 0, w, "--train-subset ", c.train_subset, " (valid: >= 0, 0 = all)");
  require(c.test_subset >= 0, w, "--test-subset ", c.test_subset, " (valid: >= 0, 0 = all)");
  require(c.val_fraction >= 0 && c.val_fraction < 0.9, w, "--val-fraction ", c.val_fraction,
          " (valid: [0, 0.9))");
  require(c.threads >= 1 && c.threads <= 1024, w, "--threads ", c.threads, " (valid: >= 1)");
  require(c.updates >= 1, w, "--updates ", c.updates, " (valid: >= 1)");
  require(c.update_end > 0 && c.update_end <= 1, w, "--update-end ", c.update_end, " (valid: (0, 1])");
  require(c.drop_fraction >= 0 && c.drop_fraction <= 1, w, "--drop-fraction ", c.drop_fraction,
          " (valid: [0, 1])");
  require(c.drop_floor >= 0 && c.drop_floor <= c.drop_fraction, w, "--drop-floor ", c.drop_floor,
          " (valid: [0, drop-fraction])");
  require(c.cyclic_fraction > 0 && c.cyclic_fraction <= 1, w, "--cyclic-fraction ", c.cyclic_fraction,
          " (valid: (0, 1])");
  require(c.cycles >= 1, w, "--cycles ", c.cycles, " (valid: >= 1)");
  require(c.cyclic_multiplier >= 1, w, "--cyclic-multiplier ", c.cyclic_multiplier, " (valid: >= 1)");
  require(c.dyrelu_start >= 0 && c.dyrelu_start <= c.dyrelu_end && c.dyrelu_end <= 1, w, "--dyrelu-start ",
          c.dyrelu_start, " --dyrelu-end ", c.dyrelu_end, " (valid: 0 <= start <= end <= 1)");
  require(c.dyrelu_impl == "torch" || c.dyrelu_impl == "kernels", w, "--dyrelu-impl ", c.dyrelu_impl,
          " (valid: torch, kernels)");
  require(c.kernels == "auto" || c.kernels == "sparse" || c.kernels == "dense", w, "--kernels ", c.kernels,
          " (valid: auto, sparse, dense)");
  require(c.dyrelu_init == "default" || c.dyrelu_init == "relu", w, "--dyrelu-init ", c.dyrelu_init,
          " (valid: default, relu)");
  require(c.dyrelu_ramp == "linear" || c.dyrelu_ramp == "cosine", w, "--dyrelu-ramp ", c.dyrelu_ramp,
          " (valid: linear, cosine)");
  require(c.dyrelu_mode == "full" || c.dyrelu_mode == "ramp-only", w, "--dyrelu-mode ", c.dyrelu_mode,
          " (valid: full, ramp-only)");
  require(c.hyper_lr >= 0 && std::isfinite(c.hyper_lr), w, "--hyper-lr ", c.hyper_lr, " (valid: >= 0)");
  require(std::isfinite(c.hyper_wd), w, "--hyper-wd ", c.hyper_wd,
          " (valid: >= 0, or < 0 for --weight-decay)");
  require(c.cyclic_on != 1 || c.method == "rigl" || c.method.rfind("east", 0) == 0, w,
          "--cyclic on needs --method rigl or east* (cyclic density regrows by gradient), not ", c.method);
  require(c.sharing_on != 1 || c.sparse(), w, "--sharing on needs a sparse --method, not ", c.method);
  require(!c.resume || !c.out_dir.empty(), w, "--resume needs --out DIR (where the checkpoint is)");
  if (c.data_dir.empty()) {
    if (c.dataset == "fashion-mnist")
      c.data_dir = "/usr/share/datasets/fashion-mnist";
    else if (c.dataset == "mnist")
      c.data_dir = "/usr/share/datasets/mnist";
    else
      c.data_dir = "data/" + c.dataset;
  }
}

/// What a run produced.
struct LayerSummary {
  std::string name;
  std::size_t size = 0, uses = 1, nnz = 0;
};
struct Result {
  Config config;
  double test_accuracy = 0, test_loss = 0, val_accuracy = 0, train_loss = 0;
  double density = 1, stored_density = 1;
  std::size_t nonzeros = 0, logical_size = 0, stored_size = 0;
  std::int64_t steps = 0, mask_updates = 0;
  std::size_t sparse_kernel_layers = 0;  ///< convolutions on east's sparse kernels at the end
  double seconds = 0;
  std::vector<double> loss_history;  ///< training loss of every step run in this process
  bool finished = false;             ///< false when stopped by stop_after_epochs
  std::vector<LayerSummary> layers;
  std::vector<double> val_history;
  std::vector<std::string> empty_layers;
  /// Input→output paths through the initial and the final masks (east/masks/connectivity.hpp).
  east::ConnectivityReport path_initial, path_final;
};

// ---------------------------------------------------------------- controllers, type-erased

/// The four controller types the trainer uses behind one interface.
struct AnyController {
  virtual ~AnyController() = default;
  virtual void before(std::int64_t step) = 0;
  virtual bool after(std::int64_t step) = 0;
  virtual bool is_update_step(std::int64_t step) const = 0;
  virtual void set_per_step_masking(std::size_t layer, bool on) = 0;
  virtual std::size_t nonzeros() const = 0;
  virtual double density() const = 0;
  virtual double stored_density() const = 0;
  virtual const std::vector<east::BitMask>& masks() const = 0;
  virtual const east::ParameterSet& params() const = 0;
  virtual std::uint64_t updates() const = 0;
  virtual std::vector<std::string> empty_layers() const = 0;
  virtual void save(const std::string& path, const std::string& blob) const = 0;
  virtual std::string load(const std::string& path) = 0;
};

template <class C>
struct ControllerHolder : AnyController {
  explicit ControllerHolder(C c) : ctl(std::move(c)) {}
  void before(std::int64_t s) override { ctl.before_optimizer_step(s); }
  bool after(std::int64_t s) override { return ctl.after_optimizer_step(s); }
  bool is_update_step(std::int64_t s) const override { return ctl.is_update_step(s); }
  void set_per_step_masking(std::size_t l, bool on) override { ctl.set_per_step_masking(l, on); }
  std::size_t nonzeros() const override { return ctl.nonzeros(); }
  double density() const override { return ctl.density(); }
  double stored_density() const override { return ctl.stored_density(); }
  const std::vector<east::BitMask>& masks() const override { return ctl.masks(); }
  const east::ParameterSet& params() const override { return ctl.params(); }
  std::uint64_t updates() const override { return ctl.updates(); }
  std::vector<std::string> empty_layers() const override { return ctl.empty_layers(); }
  void save(const std::string& path, const std::string& blob) const override {
    east::save_checkpoint(ctl, path, blob);
  }
  std::string load(const std::string& path) override { return east::load_checkpoint(ctl, path); }
  C ctl;
};
template <class C>
std::unique_ptr<AnyController> hold(C c) {
  return std::make_unique<ControllerHolder<C>>(std::move(c));
}

/// Schedules in steps, derived from fractions of the run.
struct Plan {
  std::int64_t total_steps = 0, steps_per_epoch = 0;
  east::DstConfig dst;
  east::CyclicDensity cyclic;
  east::LinearPhase phase;
};

inline Plan make_plan(const Config& c, std::int64_t steps_per_epoch) {
  Plan p;
  p.steps_per_epoch = steps_per_epoch;
  p.total_steps = steps_per_epoch * c.epochs;
  const auto T = p.total_steps;
  p.dst.density = 1.0 - c.sparsity;
  p.dst.end_step = std::max<std::int64_t>(2, static_cast<std::int64_t>(std::llround(c.update_end * T)));
  p.dst.update_interval = std::max<std::int64_t>(1, p.dst.end_step / (c.updates + 1));
  p.dst.begin_step = p.dst.update_interval;
  p.dst.drop_fraction = c.drop_fraction;
  p.dst.drop_floor = c.drop_floor;
  p.cyclic.target = p.dst.density;
  p.cyclic.multiplier = std::min(c.cyclic_multiplier, 1.0 / p.dst.density);
  p.cyclic.cycles = c.cycles;
  p.cyclic.length =
      std::max<std::int64_t>(1, static_cast<std::int64_t>(std::llround(c.cyclic_fraction * T / c.cycles)));
  p.phase = east::LinearPhase::from_fractions(c.dyrelu_start, c.dyrelu_end, std::max<std::int64_t>(1, T),
                                              c.freeze_hypernet);
  return p;
}

/// β at `step` under the run's ramp shape and DyReLU mode (EAST-SPEC §2 by default).
inline double dyrelu_beta(const Config& c, const Plan& p, std::int64_t step) {
  double beta = p.phase.beta(step);
  if (c.dyrelu_ramp == "cosine") beta = 0.5 * (1.0 + std::cos(M_PI * (1.0 - beta)));
  if (c.dyrelu_mode == "ramp-only" && beta == 1.0) beta = 0.0;  // ES2's code: ReLU until the ramp
  return beta;
}

/// Prefixes ("layer1.0.act1.") of the parameters of every DyReLU-B module in `model`.
inline std::vector<std::string> hypernet_prefixes(torch::nn::Module& model) {
  std::vector<std::string> out;
  for (const auto& item : model.named_modules("", /*include_self=*/false))
    if (item.value()->as<ta::DyReLUBImpl>()) out.push_back(item.key() + ".");
  return out;
}

/// The DyReLU options that act on the model and optimizer once: the hyper-networks' init and
/// their learning-rate multiplier and weight decay (an optimizer group).
inline void configure_hypernets(const Config& c, torch::nn::Module& model, ta::Sgd& sgd) {
  if (!c.dyrelu()) return;
  torch::NoGradGuard guard;
  for (const auto& item : model.named_modules("", /*include_self=*/false))
    if (auto* d = item.value()->as<ta::DyReLUBImpl>(); d && c.dyrelu_init == "relu") {
      d->fc2->weight.zero_();  // d = 2σ(0) − 1 = 0: every coefficient starts at ReLU's
      d->fc2->bias.zero_();
    }
  if (c.hyper_lr != 1.0 || c.hyper_wd >= 0)
    for (const auto& prefix : hypernet_prefixes(model))
      sgd.set_group(prefix, c.hyper_lr, c.hyper_wd >= 0 ? c.hyper_wd : c.weight_decay);
}

/// Sets β and the freeze of every DyReLU-B module for `step`. A frozen hyper-network also takes no
/// optimizer steps (no momentum, no weight decay), so it stays exactly where it was; so does one
/// that is not used yet (ramp-only before the ramp: as in ES2, where it has no gradient).
inline void apply_dyrelu_phase(const Config& c, const Plan& p, std::int64_t step, torch::nn::Module& model,
                               ta::Sgd& sgd) {
  if (!c.dyrelu()) return;
  const bool frozen = east::phase_frozen(p.phase, step);
  ta::set_dyrelu_phase(model, dyrelu_beta(c, p, step), frozen);
  const bool unused = c.dyrelu_mode == "ramp-only" && p.phase.beta(step) == 1.0;
  if (c.freeze_hypernet || c.dyrelu_mode == "ramp-only")
    for (const auto& prefix : hypernet_prefixes(model)) sgd.set_frozen_prefix(prefix, frozen || unused);
}

inline std::unique_ptr<AnyController> make_controller(
    const Config& c, const Plan& p, east::ParameterSet params,
    std::shared_ptr<const east::ConnectivityGraph> graph = nullptr) {
  east::ControllerOptions opt;
  opt.seed = c.seed;
  if (c.connect || c.connect_all) opt.connectivity = std::move(graph);
  opt.connect_every_weight = c.connect_all;
  if (c.method == "dense") return hold(east::make_static(std::move(params), 1.0, opt));
  if (c.method == "static") return hold(east::make_static(std::move(params), p.dst.density, opt));
  if (c.method == "set") return hold(east::make_set(std::move(params), p.dst, opt));
  if (!c.cyclic()) return hold(east::make_rigl(std::move(params), p.dst, opt));
  return hold(east::make_cyclic(std::move(params), p.dst, p.cyclic, opt));
}

// ---------------------------------------------------------------- data pipeline

/// Deterministic permutation of 0..n-1 from a counter-based stream (Fisher–Yates).
inline std::vector<int64_t> permutation(int64_t n, east::RandomStream s) {
  std::vector<int64_t> v(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j =
        static_cast<int64_t>(s.uniform(static_cast<std::uint64_t>(i)) * static_cast<double>(i + 1));
    std::swap(v[static_cast<std::size_t>(i)], v[static_cast<std::size_t>(std::min(j, i))]);
  }
  return v;
}

/// Images normalised to float once; batches gathered (and augmented) from it.
struct Prepared {
  torch::Tensor train_x, train_y, val_x, val_y, test_x, test_y;
  int64_t channels = 1, classes = 10;
};

inline torch::Tensor normalise(const torch::Tensor& u8, const Dataset& d) {
  auto x = u8.to(torch::kFloat).div_(255.0f);
  const auto C = x.size(1);
  auto mean = torch::tensor(d.mean).view({1, C, 1, 1});
  auto sd = torch::tensor(d.stdev).view({1, C, 1, 1});
  return ((x - mean) / sd).contiguous();
}

inline Prepared prepare(const Dataset& d, const Config& c) {
  Prepared p;
  p.channels = d.train.images.size(1);
  p.classes = d.classes;
  const int64_t n = d.train.size();
  int64_t used = c.train_subset > 0 ? std::min(c.train_subset, n) : n;
  auto perm = permutation(n, east::make_stream(c.data_seed).derive(0xDA7A));
  const int64_t nval = c.val_fraction > 0
                           ? std::max<int64_t>(1, static_cast<int64_t>(std::llround(c.val_fraction * used)))
                           : 0;
  east::detail::require(used - nval >= c.batch, "east-trainer", "the training split has ", used - nval,
                        " images, fewer than one batch of ", c.batch,
                        " (raise --train-subset or lower --batch)");
  auto idx = torch::from_blob(perm.data(), {used}, torch::kInt64).clone();
  auto val_idx = idx.slice(0, 0, nval), train_idx = idx.slice(0, nval, used);
  auto x = normalise(d.train.images, d);
  p.train_x = x.index_select(0, train_idx).contiguous();
  p.train_y = d.train.labels.index_select(0, train_idx).contiguous();
  if (nval > 0)
    p.val_x = x.index_select(0, val_idx).contiguous(),
    p.val_y = d.train.labels.index_select(0, val_idx).contiguous();
  const int64_t nt = c.test_subset > 0 ? std::min(c.test_subset, d.test.size()) : d.test.size();
  p.test_x = normalise(d.test.images.slice(0, 0, nt), d);
  p.test_y = d.test.labels.slice(0, 0, nt).contiguous();
  return p;
}

/// Gathers a batch; with augmentation: zero-pad 4, random crop, random horizontal flip, every
/// choice a function of (seed, epoch, position in the epoch) so a resumed run sees the same data.
inline std::pair<torch::Tensor, torch::Tensor> make_batch(const Prepared& p,
                                                          const std::vector<int64_t>& order, int64_t first,
                                                          int64_t count, bool augment, east::RandomStream s) {
  const auto C = p.train_x.size(1), H = p.train_x.size(2), W = p.train_x.size(3);
  auto x = torch::empty({count, C, H, W});
  auto y = torch::empty({count}, torch::kInt64);
  const float* src = p.train_x.data_ptr<float>();
  float* dst = x.data_ptr<float>();
  const int64_t* ls = p.train_y.data_ptr<int64_t>();
  int64_t* ld = y.data_ptr<int64_t>();
  const int64_t plane = H * W, img = C * plane;
  for (int64_t b = 0; b < count; ++b) {
    const int64_t i = order[static_cast<std::size_t>(first + b)];
    ld[b] = ls[i];
    const float* si = src + i * img;
    float* di = dst + b * img;
    if (!augment) {
      std::memcpy(di, si, sizeof(float) * static_cast<std::size_t>(img));
      continue;
    }
    const auto r = s.derive(static_cast<std::uint64_t>(first + b));
    const int64_t dy = static_cast<int64_t>(r.uniform(0) * 9) - 4,
                  dx = static_cast<int64_t>(r.uniform(1) * 9) - 4;
    const bool flip = r.uniform(2) < 0.5;
    for (int64_t ch = 0; ch < C; ++ch)
      for (int64_t yy = 0; yy < H; ++yy)
        for (int64_t xx = 0; xx < W; ++xx) {
          const int64_t sy = yy + dy, sx0 = xx + dx;
          const int64_t sx = flip ? W - 1 - sx0 : sx0;
          di[ch * plane + yy * W + xx] =
              (sy >= 0 && sy < H && sx0 >= 0 && sx0 < W) ? si[ch * plane + sy * W + sx] : 0.0f;
        }
  }
  return {x, y};
}

/// Accuracy and mean loss of `model` on (x, y), in eval mode, in batches.
inline std::pair<double, double> evaluate(ta::ResNet& model, const torch::Tensor& x, const torch::Tensor& y) {
  if (!x.defined() || x.size(0) == 0) return {0.0, 0.0};
  torch::NoGradGuard guard;
  model->eval();
  int64_t correct = 0;
  double loss = 0;
  for (int64_t i = 0; i < x.size(0); i += 500) {
    const auto n = std::min<int64_t>(500, x.size(0) - i);
    auto out = model->forward(x.slice(0, i, i + n));
    loss += torch::nn::functional::cross_entropy(
                out, y.slice(0, i, i + n),
                torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                .item<double>();
    correct += out.argmax(1).eq(y.slice(0, i, i + n)).sum().item<int64_t>();
  }
  model->train();
  return {static_cast<double>(correct) / static_cast<double>(x.size(0)),
          loss / static_cast<double>(x.size(0))};
}

inline std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  std::ostringstream o;
  const auto t = static_cast<long>(s + 0.5);
  if (t >= 3600)
    o << t / 3600 << "h" << std::setw(2) << std::setfill('0') << (t % 3600) / 60 << "m";
  else if (t >= 60)
    o << t / 60 << "m" << std::setw(2) << std::setfill('0') << t % 60 << "s";
  else
    o << t << "s";
  return o.str();
}

/// A string of every setting that changes the result: a checkpoint is only resumed under the same.
inline std::string fingerprint(const Config& c) {
  std::ostringstream o;
  o.precision(17);
  o << c.dataset << '|' << c.method << '|' << c.sparsity << '|' << c.depth << '|' << c.width << '|'
    << c.epochs << '|' << c.batch << '|' << c.lr << '|' << c.momentum << '|' << c.weight_decay << '|'
    << c.nesterov << '|' << c.clip << '|' << c.train_subset << '|' << c.test_subset << '|' << c.val_fraction
    << '|' << c.augment << '|' << c.seed << '|' << c.data_seed << '|' << c.updates << '|' << c.update_end
    << '|' << c.drop_fraction << '|' << c.drop_floor << '|' << c.cyclic_fraction << '|' << c.cycles << '|'
    << c.cyclic_multiplier << '|' << c.dyrelu_start << '|' << c.dyrelu_end << '|' << c.freeze_hypernet;
  // Settings added later join only when they differ from their defaults, so the checkpoints of
  // earlier runs keep their fingerprint.
  if (c.dyrelu_init != "default") o << "|init " << c.dyrelu_init;
  if (c.dyrelu_ramp != "linear") o << "|ramp " << c.dyrelu_ramp;
  if (c.dyrelu_mode != "full") o << "|mode " << c.dyrelu_mode;
  if (c.hyper_lr != 1.0) o << "|hyper-lr " << c.hyper_lr;
  if (c.hyper_wd >= 0) o << "|hyper-wd " << c.hyper_wd;
  if (c.dyrelu_on >= 0 || c.sharing_on >= 0 || c.cyclic_on >= 0)
    o << "|tricks " << c.dyrelu_on << c.sharing_on << c.cyclic_on;
  if (c.connect) o << "|connect";
  if (c.connect_all) o << "|connect-all";
  return o.str();
}

// ---------------------------------------------------------------- results

inline std::string json_escape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    if (ch == '"' || ch == '\\')
      o += '\\', o += ch;
    else if (ch == '\n')
      o += "\\n";
    else if (static_cast<unsigned char>(ch) < 0x20)
      o += ' ';
    else
      o += ch;
  }
  return o;
}

inline void write_results(const Result& r, const std::string& dir) {
  const auto& c = r.config;
  {
    std::ofstream j(dir + "/result.json.tmp");
    j.precision(10);
    j << "{\n  \"method\": \"" << c.method << "\",\n  \"dataset\": \"" << c.dataset
      << "\",\n  \"sparsity\": " << c.sparsity << ",\n  \"depth\": " << c.depth
      << ",\n  \"width\": " << c.width << ",\n  \"epochs\": " << c.epochs << ",\n  \"seed\": " << c.seed
      << ",\n  \"train_subset\": " << c.train_subset
      << ",\n  \"finished\": " << (r.finished ? "true" : "false")
      << ",\n  \"test_accuracy\": " << r.test_accuracy << ",\n  \"test_loss\": " << r.test_loss
      << ",\n  \"val_accuracy\": " << r.val_accuracy << ",\n  \"train_loss\": " << r.train_loss
      << ",\n  \"density\": " << r.density << ",\n  \"stored_density\": " << r.stored_density
      << ",\n  \"nonzeros\": " << r.nonzeros << ",\n  \"logical_size\": " << r.logical_size
      << ",\n  \"stored_size\": " << r.stored_size << ",\n  \"steps\": " << r.steps
      << ",\n  \"mask_updates\": " << r.mask_updates << ",\n  \"kernels\": \"" << c.kernels
      << "\",\n  \"sparse_kernel_layers\": " << r.sparse_kernel_layers << ",\n  \"seconds\": " << r.seconds
      << ",\n  \"command\": \"" << json_escape(c.command_line) << "\",\n  \"val_history\": [";
    for (std::size_t i = 0; i < r.val_history.size(); ++i) j << (i ? ", " : "") << r.val_history[i];
    j << "],\n  \"connect\": \"" << (c.connect_all ? "all" : c.connect ? "layers" : "off") << "\"";
    for (const auto* rep : {&r.path_initial, &r.path_final}) {
      const char* when = rep == &r.path_initial ? "initial" : "final";
      j << ",\n  \"path_" << when << "\": {\"connected\": " << (rep->connected ? "true" : "false")
        << ", \"cut_node\": \"" << rep->cut_node << "\", \"off_path\": " << rep->off_path.size()
        << ", \"weights_on_path\": " << rep->weights_on_path << ", \"weights\": " << rep->weights << "}";
    }
    j << ",\n  \"empty_layers\": [";
    for (std::size_t i = 0; i < r.empty_layers.size(); ++i)
      j << (i ? ", " : "") << '"' << r.empty_layers[i] << '"';
    j << "],\n  \"layers\": [\n";
    for (std::size_t i = 0; i < r.layers.size(); ++i) {
      const auto& l = r.layers[i];
      j << "    {\"name\": \"" << l.name << "\", \"size\": " << l.size << ", \"uses\": " << l.uses
        << ", \"nnz\": " << l.nnz
        << ", \"density\": " << static_cast<double>(l.nnz) / static_cast<double>(l.size) << "}"
        << (i + 1 < r.layers.size() ? ",\n" : "\n");
    }
    j << "  ]\n}\n";
  }
  std::rename((dir + "/result.json.tmp").c_str(), (dir + "/result.json").c_str());
  std::ofstream csv(dir + "/result.csv");
  csv.precision(10);
  csv << "method,dataset,sparsity,depth,width,epochs,seed,test_accuracy,val_accuracy,density,nonzeros,"
         "logical_size,seconds\n"
      << c.method << ',' << c.dataset << ',' << c.sparsity << ',' << c.depth << ',' << c.width << ','
      << c.epochs << ',' << c.seed << ',' << r.test_accuracy << ',' << r.val_accuracy << ',' << r.density
      << ',' << r.nonzeros << ',' << r.logical_size << ',' << r.seconds << '\n';
}

inline void print_summary(const Result& r, std::ostream& os) {
  const auto& c = r.config;
  os << std::fixed;
  os << "\n== summary: " << c.method << ", ResNet-" << c.depth << " width " << c.width << ", " << c.dataset
     << ", sparsity " << std::setprecision(4) << 100 * c.sparsity << "%, seed " << c.seed << "\n";
  os << "test accuracy " << std::setprecision(2) << 100 * r.test_accuracy << "%  (val "
     << 100 * r.val_accuracy << "%, test loss " << std::setprecision(4) << r.test_loss << ")\n";
  os << "nonzeros " << r.nonzeros << " of " << r.logical_size << " (every use counted; " << r.stored_size
     << " stored): density " << std::setprecision(6) << r.density << " (stored " << r.stored_density << ")\n";
  os << "mask updates " << r.mask_updates << ", steps " << r.steps << ", time " << format_duration(r.seconds)
     << ", kernels " << c.kernels << " (" << r.sparse_kernel_layers
     << " convolutions on east's sparse kernels)\n";
  os << "per layer (name: nnz / size [x uses] = density):\n";
  for (const auto& l : r.layers)
    os << "  " << std::left << std::setw(28) << l.name << std::right << std::setw(7) << l.nnz << " / "
       << std::setw(8) << l.size << (l.uses > 1 ? " x" + std::to_string(l.uses) : std::string("   ")) << " = "
       << std::setprecision(5) << static_cast<double>(l.nnz) / static_cast<double>(l.size) << "\n";
  os << "weights on an input-output path: " << r.path_initial.weights_on_path << " of "
     << r.path_initial.weights << " at the start, " << r.path_final.weights_on_path << " of "
     << r.path_final.weights << " at the end\n";
  for (const auto* rep : {&r.path_initial, &r.path_final})
    if (!rep->message().empty())
      os << "WARNING: " << (rep == &r.path_initial ? "initial" : "final") << " masks: " << rep->message()
         << "\n";
  if (!r.empty_layers.empty()) {
    os << "WARNING: layers with no active weight (their output is constant): ";
    for (const auto& n : r.empty_layers) os << n << ' ';
    os << "\n";
  }
  os.unsetf(std::ios::fixed);
}

// ---------------------------------------------------------------- the run

inline Result run(Config c, std::ostream& log = std::cerr) {
  validate(c);
  const auto t0 = std::chrono::steady_clock::now();
  torch::set_num_threads(c.threads);
  east::kernels::set_threads(c.threads);
  torch::manual_seed(c.seed);
  const Dataset data = load_dataset(c.dataset, c.data_dir);
  const Prepared p = prepare(data, c);

  Result r;
  ta::ResNetOptions mo;
  mo.depth = c.depth;
  mo.width = c.width;
  mo.in_channels = p.channels;
  mo.num_classes = p.classes;
  mo.dyrelu = c.dyrelu();
  mo.share = c.share();
  mo.backend = c.dyrelu_impl == "torch" ? ta::DyReLUBackend::torch_ops : ta::DyReLUBackend::kernels;
  mo.seed = c.seed;
  ta::ResNet model(mo);
  model->train();

  ta::Sgd sgd(model->named_parameters(), ta::SgdOptions{c.momentum, c.weight_decay, c.nesterov});
  east::ParameterSet params = ta::make_parameter_set(*model);
  sgd.register_state(params);
  configure_hypernets(c, *model, sgd);
  const int64_t n_train = p.train_x.size(0);
  const int64_t spe = n_train / c.batch;  // drop the last partial batch
  const Plan plan = make_plan(c, spe);
  const auto graph = ta::resnet_connectivity(*model);
  auto ctl = make_controller(c, plan, params, graph);
  r.path_initial = east::check_connectivity(*graph, ctl->params(), ctl->masks());
  // Convolutions below the crossover density train on compact weights (docs/sparse.md).
  std::unique_ptr<ta::SparseCompute> compute;
  if (c.sparse() && c.kernels != "dense") {
    east::sparse::Crossover x;
    if (c.kernels == "sparse") x.conv = 2.0;  // every density is below it
    compute = std::make_unique<ta::SparseCompute>(*model, ctl->params(), sgd, x);
    model->set_sparse_compute(compute.get());
  }

  r.config = c;
  int start_epoch = 0;
  double elapsed_before = 0;
  const std::string ckpt = c.out_dir.empty() ? "" : c.out_dir + "/checkpoint.east";
  if (c.resume && file_exists(ckpt)) {
    const std::string blob = ctl->load(ckpt);
    ta::StateReader rd(blob);
    const auto fp = rd.get_string("fingerprint");
    if (fp != fingerprint(c))
      throw east::InvalidArgument("east-trainer: --resume: the checkpoint '" + ckpt +
                                  "' was written by a run with other settings (" + fp +
                                  "); use another --out or drop --resume");
    start_epoch = rd.get<int32_t>("epoch");
    elapsed_before = rd.get<double>("elapsed");
    const auto nh = rd.get<std::uint64_t>("history length");
    for (std::uint64_t i = 0; i < nh; ++i) r.val_history.push_back(rd.get<double>("history"));
    rd.get_module(*model);
    rd.get_sgd(sgd);
    ta::check_views(*model, ctl->params());
    if (!c.quiet) log << "resumed from " << ckpt << " at epoch " << start_epoch << "\n";
  }
  // Layers on compact copies need no per-step masking of their (stale) dense tensors.
  const auto attach = [&] {
    compute->attach(ctl->masks());
    for (std::size_t l = 0; l < ctl->params().size(); ++l)
      ctl->set_per_step_masking(l, !compute->attached(ctl->params()[l].name));
  };
  if (compute) attach();

  if (!c.quiet) {
    log << "east-trainer: " << c.method << " ResNet-" << c.depth << " width " << c.width << " on "
        << c.dataset << " (" << n_train << " train, " << (p.val_x.defined() ? p.val_x.size(0) : 0) << " val, "
        << p.test_x.size(0) << " test), sparsity " << c.sparsity << ", " << c.epochs << " epochs x " << spe
        << " steps, batch " << c.batch << ", threads " << c.threads << "\n";
    log << "  prunable weights " << params.logical_size() << " (stored " << params.stored_size() << ") in "
        << params.size() << " layers; nonzeros " << ctl->nonzeros();
    if (c.dynamic())
      log << "; mask update every " << plan.dst.update_interval << " steps until step " << plan.dst.end_step;
    if (c.cyclic())
      log << "; cyclic density x" << plan.cyclic.multiplier << " over steps [0, " << plan.cyclic.end() << ")";
    if (c.dyrelu())
      log << "; DyReLU beta 1 -> 0 over steps [" << plan.phase.start << ", " << plan.phase.end << "] ("
          << c.dyrelu_impl << ")";
    log << "\n";
    if (!r.path_initial.message().empty())
      log << "  WARNING: initial masks: " << r.path_initial.message() << "\n";
    if (compute)
      log << "  convolutions on east's sparse kernels: " << compute->attached_count() << " of "
          << compute->size() << " (" << c.kernels << ", crossover density " << compute->crossover().conv
          << "), compact state " << std::fixed << std::setprecision(2)
          << static_cast<double>(compute->compact_bytes()) / 1e6 << " MB\n"
          << std::defaultfloat;
  }

  const int64_t log_every = c.log_every > 0 ? c.log_every : std::max<int64_t>(1, spe / 10);
  const int64_t T = plan.total_steps;
  const auto data_stream = east::make_stream(c.seed).derive(0xBA7C);
  double last_loss = 0;
  int epochs_run = 0;
  for (int epoch = start_epoch; epoch < c.epochs; ++epoch) {
    if (c.stop_after_epochs >= 0 && epochs_run >= c.stop_after_epochs) {
      r.seconds =
          elapsed_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      r.finished = false;
      return r;
    }
    const auto es = data_stream.derive(static_cast<std::uint64_t>(epoch));
    const auto order = permutation(n_train, es.derive(1));
    const auto epoch_t0 = std::chrono::steady_clock::now();
    double loss_sum = 0;
    int64_t loss_n = 0;
    for (int64_t b = 0; b < spe; ++b) {
      const int64_t step = static_cast<int64_t>(epoch) * spe + b;
      const double lr = c.lr * (step >= T / 2 ? 0.1 : 1.0) * (step >= (3 * T) / 4 ? 0.1 : 1.0);
      apply_dyrelu_phase(c, plan, step, *model, sgd);
      auto [x, y] = make_batch(p, order, b * c.batch, c.batch, c.augment, es.derive(2));
      // With sparse kernels: update steps also capture the dense weight gradients (regrowth),
      // and the dense tensors are brought up to date around the controller's mask update.
      const bool upd = ctl->is_update_step(step);
      if (compute) compute->begin_step(upd);
      sgd.zero_grad();
      if (compute) compute->zero_grad();
      auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
      loss.backward();
      ctl->before(step);
      if (c.clip > 0)
        sgd.clip_grad_norm(c.clip, compute ? compute->gradients() : std::vector<torch::Tensor>{});
      sgd.step(lr);
      if (compute) compute->step(lr);
      if (compute && upd) compute->write_dense();
      ctl->after(step);
      if (compute && upd) attach();
      const double lv = loss.item<double>();
      r.loss_history.push_back(lv);
      east::detail::require(std::isfinite(lv), "east-trainer", "loss became ", lv, " at step ", step,
                            " (lower --lr?)");
      loss_sum += lv;
      ++loss_n;
      last_loss = lv;
      if (!c.quiet && ((b + 1) % log_every == 0 || b + 1 == spe)) {
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_t0).count();
        const double rate = static_cast<double>((b + 1) * c.batch) / std::max(secs, 1e-9);
        const double eta = static_cast<double>((T - step - 1) * c.batch) / rate;
        log << "epoch " << epoch + 1 << "/" << c.epochs << "  step " << step + 1 << "/" << T << "  loss "
            << std::fixed << std::setprecision(4) << loss_sum / static_cast<double>(loss_n) << "  lr "
            << std::setprecision(4) << lr << "  density " << std::setprecision(5) << ctl->density() << "  "
            << std::setprecision(0) << rate << " img/s  ETA " << format_duration(eta) << "\n";
        log.unsetf(std::ios::fixed);
      }
    }
    r.train_loss = loss_sum / static_cast<double>(std::max<int64_t>(1, loss_n));
    ta::check_views(*model, ctl->params());
    const auto [va, vl] = evaluate(model, p.val_x, p.val_y);
    r.val_history.push_back(va);
    if (!c.quiet)
      log << "epoch " << epoch + 1 << " done: train loss " << std::fixed << std::setprecision(4)
          << r.train_loss << ", val acc " << std::setprecision(2) << 100 * va << "% (loss "
          << std::setprecision(4) << vl << ")\n";
    log.unsetf(std::ios::fixed);
    ++epochs_run;
    if (!ckpt.empty()) {
      ta::StateWriter w;
      w.put_string(fingerprint(c));
      w.put(static_cast<int32_t>(epoch + 1));
      w.put(elapsed_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      w.put(static_cast<std::uint64_t>(r.val_history.size()));
      for (double v : r.val_history) w.put(v);
      if (compute) compute->write_dense();
      w.put_module(*model);
      w.put_sgd(sgd);
      ctl->save(ckpt, w.bytes());
    }
  }
  (void)last_loss;
  const auto [ta_, tl] = evaluate(model, p.test_x, p.test_y);
  r.test_accuracy = ta_;
  r.test_loss = tl;
  r.val_accuracy = r.val_history.empty() ? 0 : r.val_history.back();
  r.density = ctl->density();
  r.stored_density = ctl->stored_density();
  r.nonzeros = ctl->nonzeros();
  r.logical_size = ctl->params().logical_size();
  r.stored_size = ctl->params().stored_size();
  r.steps = T;
  r.mask_updates = static_cast<std::int64_t>(ctl->updates());
  r.sparse_kernel_layers = compute ? compute->attached_count() : 0;
  r.empty_layers = ctl->empty_layers();
  r.path_final = east::check_connectivity(*graph, ctl->params(), ctl->masks());
  for (std::size_t l = 0; l < ctl->params().size(); ++l) {
    const auto& v = ctl->params()[l];
    r.layers.push_back({v.name, v.size(), v.uses, ctl->masks()[l].count()});
  }
  r.seconds = elapsed_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.finished = true;
  if (!c.out_dir.empty()) write_results(r, c.out_dir);
  return r;
}

}  // namespace east_trainer
