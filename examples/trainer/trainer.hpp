#pragma once
// The reference trainer: CIFAR-style ResNets trained densely or with east's sparse methods
// (static, SET, RigL, EAST and EAST's ablations) under the EAST-SPEC §5 recipe, with every phase
// a fraction of training (EAST-SPEC §6). Used by main.cpp and by tests/test_torch_trainer.cpp.
#include <torch/torch.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <east/activations/phase_schedule.hpp>
#include <east/adapters/torch.hpp>
#include <east/platform.hpp>
#include <east/adapters/torch/distributed.hpp>
#include <east/distributed.hpp>
#if defined(EAST_HAS_GLOO)
#include <east/adapters/torch/gloo.hpp>
#endif
#include <east/adapters/torch/resnet_graph.hpp>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <set>
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
  // DyReLU study options (docs/dyrelu-probes.md); the defaults are the EAST preset's.
  std::string dyrelu_init = "default";  ///< default (torch's Linear init) | relu (fc2 zeroed: exactly ReLU)
  std::string dyrelu_ramp = "linear";  ///< linear | cosine (β = ½(1 + cos πp), p the linear ramp's progress)
  std::string dyrelu_mode = "ramp-only";  ///< ramp-only (ES2's code: plain ReLU while β = 1) | full
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

  // Data parallelism (docs/distributed.md). `batch` stays the global batch: data order, step
  // counts and every schedule are the same for any world size and accumulation.
  int world_size = -1;        ///< ranks; -1: $WORLD_SIZE, else 1
  int rank = -1;              ///< this process; -1: $RANK, else 0
  std::string dist_init;      ///< tcp://HOST:PORT | file:///PATH; empty: $EAST_DIST_INIT, MASTER_*
  double dist_timeout = 300;  ///< seconds a rank waits for its peers (joining and every collective)
  int accumulate = 1;         ///< micro-batches per optimizer step on each rank
  std::string dist_reduce = "ring";  ///< ring (Gloo's) | rank-order (exact vs one process)

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
  require(c.world_size == -1 || (c.world_size >= 1 && c.world_size <= 65536), w, "--world-size ",
          c.world_size, " (valid: 1..65536)");
  require(c.rank == -1 || (c.rank >= 0 && (c.world_size < 0 || c.rank < c.world_size)), w, "--rank ", c.rank,
          " (valid: [0, world size))");
  require(c.dist_timeout > 0 && c.dist_timeout <= 86400 * 7, w, "--dist-timeout ", c.dist_timeout,
          " (valid: (0, 604800] seconds)");
  require(c.accumulate >= 1 && c.accumulate <= 65536, w, "--accumulate ", c.accumulate, " (valid: 1..65536)");
  require(c.dist_reduce == "ring" || c.dist_reduce == "rank-order", w, "--dist-reduce ", c.dist_reduce,
          " (valid: ring, rank-order)");
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
  std::uint64_t mask_digest = 0;     ///< the controller's digest of every mask at the end
  std::uint64_t weights_digest = 0;  ///< digest of every model parameter and buffer at the end
  // Data parallelism: how the run was split and what one rank sent (payload bytes, counted by
  // the communicator; the same on every rank).
  int world_size = 1, accumulate = 1;
  std::int64_t micro_batch = 0;           ///< images per micro-batch
  std::int64_t dp_steps = 0;              ///< steps run in this process with a communicator
  std::uint64_t gradient_bytes = 0;       ///< the packed gradient all-reduces (one per step)
  std::uint64_t last_gradient_bytes = 0;  ///< … of the last step
  std::uint64_t update_bytes = 0;         ///< dense gradients reduced at mask updates
  std::int64_t dp_updates = 0;            ///< mask updates run in this process
  std::uint64_t statistics_bytes = 0;     ///< BatchNorm statistics all-gathers (one per step)
  std::uint64_t check_bytes = 0;          ///< agreement checks, evaluation results
  std::uint64_t wire_bytes = 0;           ///< estimate of all bytes this rank sent (docs/distributed.md)
  /// Input→output paths through the initial and the final masks (east/masks/connectivity.hpp).
  east::ConnectivityReport path_initial, path_final;
};

// ---------------------------------------------------------------- the method

/// The method as an east preset; every phase is a fraction of the run (EAST-SPEC §6).
inline east::Preset make_preset(const Config& c) {
  // rigl with --cyclic on or --dyrelu on is EAST with those tricks only (same schedules otherwise).
  const bool east_kind = c.method.rfind("east", 0) == 0 || (c.method == "rigl" && (c.cyclic() || c.dyrelu()));
  const std::string base = east_kind ? "east" : c.method;
  east::Preset p = east::presets::by_name(base, c.method == "dense" ? 1.0 : 1.0 - c.sparsity);
  p.updates = c.updates;
  p.update_end = c.update_end;
  p.drop_fraction = c.drop_fraction;
  p.drop_floor = c.drop_floor;
  p.east.cyclic = c.cyclic();
  p.east.cyclic_fraction = c.cyclic_fraction;
  p.east.cycles = c.cycles;
  p.east.multiplier = c.cyclic_multiplier;
  p.east.dyrelu = c.dyrelu();
  p.east.dyrelu_start = c.dyrelu_start;
  p.east.dyrelu_end = c.dyrelu_end;
  p.east.freeze_hypernet = c.freeze_hypernet;
  p.east.dyrelu_phasing = c.dyrelu_mode == "full" ? east::DyReluPhasing::full : east::DyReluPhasing::ramp_only;
  p.east.dyrelu_ramp = c.dyrelu_ramp == "cosine" ? east::DyReluRamp::cosine : east::DyReluRamp::linear;
  p.east.weight_sharing = c.share();
  return p;
}

/// The optimizer: torch::optim::SGD over every parameter; the DyReLU hyper-networks in a second
/// group when --hyper-lr / --hyper-wd set their own learning-rate multiplier or weight decay.
/// Returns the groups' learning-rate multipliers.
inline std::vector<double> optimizer_groups(const Config& c, torch::nn::Module& model,
                                            std::vector<torch::optim::OptimizerParamGroup>& groups) {
  const auto opts = [&](double wd) {
    return std::make_unique<torch::optim::SGDOptions>(
        torch::optim::SGDOptions(c.lr).momentum(c.momentum).nesterov(c.nesterov).weight_decay(wd));
  };
  std::vector<torch::Tensor> hyper, rest;
  std::set<const void*> in_hyper;
  if (c.dyrelu() && (c.hyper_lr != 1.0 || c.hyper_wd >= 0))
    for (const auto& item : model.named_modules("", /*include_self=*/false))
      if (auto* d = item.value()->as<ta::DyReLUBImpl>())
        for (const auto& t : d->parameters()) hyper.push_back(t), in_hyper.insert(t.unsafeGetTensorImpl());
  for (const auto& t : model.parameters())
    if (!in_hyper.count(t.unsafeGetTensorImpl())) rest.push_back(t);
  groups.emplace_back(rest, opts(c.weight_decay));
  if (hyper.empty()) return {1.0};
  groups.emplace_back(hyper, opts(c.hyper_wd >= 0 ? c.hyper_wd : c.weight_decay));
  return {1.0, c.hyper_lr};
}

/// --dyrelu-init relu: every hyper-network's last layer zeroed, so d = 2σ(0) − 1 = 0 and DyReLU-B
/// starts as exactly ReLU (the coefficients [1, 0, 0, 0] of the DyReLU paper).
inline void init_hypernets(const Config& c, torch::nn::Module& model) {
  if (!c.dyrelu() || c.dyrelu_init != "relu") return;
  torch::NoGradGuard guard;
  for (const auto& item : model.named_modules("", /*include_self=*/false))
    if (auto* d = item.value()->as<ta::DyReLUBImpl>()) {
      d->fc2->weight.zero_();
      d->fc2->bias.zero_();
    }
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

/// Accuracy and mean loss of `model` on (x, y), in eval mode, in chunks of 500 images. With a
/// communicator of N ranks, rank r evaluates chunks r, r + N, …; the per-chunk results are
/// all-gathered and added in chunk order, so every rank gets the bits one process gets.
inline std::pair<double, double> evaluate(ta::ResNet& model, const torch::Tensor& x, const torch::Tensor& y,
                                          east::distributed::Communicator* comm = nullptr) {
  if (!x.defined() || x.size(0) == 0) return {0.0, 0.0};
  torch::NoGradGuard guard;
  model->eval();
  const int64_t chunk = 500, chunks = (x.size(0) + chunk - 1) / chunk;
  const int N = comm ? comm->world_size() : 1, me = comm ? comm->rank() : 0;
  // Per chunk: (loss as the bits of a double, correct), for the chunks this rank evaluates.
  std::vector<std::uint64_t> mine(2 * static_cast<std::size_t>((chunks + N - 1) / N), 0);
  for (int64_t c = me, k = 0; c < chunks; c += N, ++k) {
    const int64_t i = c * chunk, n = std::min<int64_t>(chunk, x.size(0) - i);
    auto out = model->forward(x.slice(0, i, i + n));
    const double loss = torch::nn::functional::cross_entropy(
                            out, y.slice(0, i, i + n),
                            torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                            .item<double>();
    const int64_t correct = out.argmax(1).eq(y.slice(0, i, i + n)).sum().item<int64_t>();
    std::memcpy(&mine[2 * static_cast<std::size_t>(k)], &loss, sizeof loss);
    mine[2 * static_cast<std::size_t>(k) + 1] = static_cast<std::uint64_t>(correct);
  }
  const auto all = N > 1 ? comm->all_gather(mine.data(), mine.size()) : mine;
  int64_t correct = 0;
  double loss = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    const std::size_t at =
        static_cast<std::size_t>(c % N) * mine.size() + 2 * static_cast<std::size_t>(c / N);
    double l;
    std::memcpy(&l, &all[at], sizeof l);
    loss += l;
    correct += static_cast<int64_t>(all[at + 1]);
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
  if (c.dyrelu_mode != "ramp-only") o << "|mode " << c.dyrelu_mode;
  if (c.hyper_lr != 1.0) o << "|hyper-lr " << c.hyper_lr;
  if (c.hyper_wd >= 0) o << "|hyper-wd " << c.hyper_wd;
  if (c.dyrelu_on >= 0 || c.sharing_on >= 0 || c.cyclic_on >= 0)
    o << "|tricks " << c.dyrelu_on << c.sharing_on << c.cyclic_on;
  if (c.connect) o << "|connect";
  if (c.connect_all) o << "|connect-all";
  return o.str();
}

// ---------------------------------------------------------------- data parallelism

namespace ed = east::distributed;

/// Every setting ranks must share, by flag name (start-up check; not --rank, --threads, paths
/// or logging). The data itself is compared separately, by digest.
inline ed::Settings dist_settings(const Config& c) {
  auto str = [](const auto& v) -> std::string {
    if constexpr (std::is_same_v<std::decay_t<decltype(v)>, bool>) {
      return v ? "yes" : "no";
    } else {
      char b[64];
      const auto e = std::to_chars(b, b + sizeof b, v);  // shortest text that reads back the same
      return std::string(b, e.ptr);
    }
  };
  return {{"--dataset", c.dataset},
          {"--method", c.method},
          {"--sparsity", str(c.sparsity)},
          {"--depth", str(c.depth)},
          {"--width", str(c.width)},
          {"--epochs", str(c.epochs)},
          {"--batch", str(c.batch)},
          {"--lr", str(c.lr)},
          {"--momentum", str(c.momentum)},
          {"--weight-decay", str(c.weight_decay)},
          {"--no-nesterov", str(!c.nesterov)},
          {"--clip", str(c.clip)},
          {"--train-subset", str(c.train_subset)},
          {"--test-subset", str(c.test_subset)},
          {"--val-fraction", str(c.val_fraction)},
          {"--no-augment", str(!c.augment)},
          {"--seed", str(c.seed)},
          {"--data-seed", str(c.data_seed)},
          {"--updates", str(c.updates)},
          {"--update-end", str(c.update_end)},
          {"--drop-fraction", str(c.drop_fraction)},
          {"--drop-floor", str(c.drop_floor)},
          {"--cyclic-fraction", str(c.cyclic_fraction)},
          {"--cycles", str(c.cycles)},
          {"--cyclic-multiplier", str(c.cyclic_multiplier)},
          {"--dyrelu-start", str(c.dyrelu_start)},
          {"--dyrelu-end", str(c.dyrelu_end)},
          {"--freeze-hypernet", str(c.freeze_hypernet)},
          {"--dyrelu-impl", c.dyrelu_impl},
          {"--kernels", c.kernels},
          {"--resume", str(c.resume)},
          {"--stop-after-epochs", str(c.stop_after_epochs)},
          {"--world-size", str(c.world_size)},
          {"--accumulate", str(c.accumulate)},
          {"--dist-reduce", c.dist_reduce}};
}

/// Digests of named tensors (every rank must hold the same bytes).
inline ed::Digests tensor_digests(const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  ed::Digests d;
  std::uint64_t all = 0;
  for (const auto& [name, t] : tensors) {
    const auto c = t.contiguous();
    const auto h = ed::digest_bytes(c.data_ptr(), static_cast<std::size_t>(c.numel()) * c.element_size());
    d.names.push_back(name);
    d.items.push_back(h);
    all = east::mix64(all ^ h);
  }
  d.overall = all;
  return d;
}

/// Every parameter and buffer of the model, by name.
inline std::vector<std::pair<std::string, torch::Tensor>> model_state(torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : m.named_parameters()) out.emplace_back(p.key(), p.value());
  for (const auto& b : m.named_buffers()) out.emplace_back(b.key(), b.value());
  return out;
}

/// The packed gradient of one data-parallel step: every parameter gradient that exists, as
/// views; the dense-form prunable weights (masked during backward) by their active entries only,
/// so traffic follows the nonzeros whichever kernels a layer runs on; DyReLU hyper-networks only
/// while β > 0 and not frozen (their gradient is zero on every rank otherwise).
class GradientPack {
 public:
  GradientPack(torch::nn::Module& model, const east::AnyController& ctl) {
    std::map<const void*, ta::DyReLUBImpl*> hyper;
    for (const auto& m : model.modules())
      if (auto* d = m->as<ta::DyReLUBImpl>())
        for (const auto& p : d->parameters()) hyper[p.unsafeGetTensorImpl()] = d;
    for (const auto& p : model.named_parameters()) {
      Entry e{p.value(), -1, nullptr};
      const auto l = ctl.params().find(p.key());
      if (l != east::ParameterSet::npos) e.mask = static_cast<long>(l);
      if (const auto it = hyper.find(p.value().unsafeGetTensorImpl()); it != hyper.end())
        e.dyrelu = it->second;
      entries_.push_back(std::move(e));
    }
    scratch_.resize(entries_.size());
  }

  /// Sums the gradients (and `loss`, one float) over all ranks in one collective; every rank ends
  /// with the same bytes. Returns the payload bytes.
  std::size_t all_reduce(ed::Communicator& comm, ed::Reduction how, const east::AnyController& ctl,
                         float* loss) {
    ed::FloatPack pack;
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      auto& e = entries_[i];
      const auto& g = e.param.grad();
      if (!g.defined() || g.numel() == 0) continue;
      if (e.dyrelu && (e.dyrelu->beta() == 0.0 || e.dyrelu->frozen())) continue;
      east::detail::require(g.is_contiguous() && g.scalar_type() == torch::kFloat && g.device().is_cpu(),
                            "east-trainer", "gradient ", i, " is not a contiguous float32 CPU tensor");
      float* gp = g.data_ptr<float>();
      if (e.mask >= 0) {
        const east::BitMask& m = ctl.masks()[static_cast<std::size_t>(e.mask)];
        east::detail::require(m.size() == static_cast<std::size_t>(g.numel()), "east-trainer", "mask ",
                              e.mask, " has ", m.size(), " entries for a gradient of ", g.numel());
        auto& v = scratch_[i];
        v.clear();
        m.for_each_active([&](std::size_t j) { v.push_back(gp[j]); });
        pack.add(v);
      } else {
        pack.add(gp, static_cast<std::size_t>(g.numel()));
      }
    }
    pack.add(loss, 1);
    pack.all_reduce_sum(comm, how);
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      auto& e = entries_[i];
      if (e.mask < 0 || scratch_[i].empty()) continue;
      const auto& g = e.param.grad();
      if (!g.defined() || g.numel() == 0) continue;
      float* gp = g.data_ptr<float>();
      std::size_t k = 0;
      ctl.masks()[static_cast<std::size_t>(e.mask)].for_each_active(
          [&](std::size_t j) { gp[j] = scratch_[i][k++]; });
      scratch_[i].clear();
    }
    return pack.bytes();
  }

 private:
  struct Entry {
    torch::Tensor param;
    long mask;                // prunable weight: its layer in the controller; -1 otherwise
    ta::DyReLUBImpl* dyrelu;  // a DyReLU hyper-network parameter: its module
  };
  std::vector<Entry> entries_;
  std::vector<std::vector<float>> scratch_;
};

/// Joins the group a run's flags (or the environment) name. One process without Gloo is fine.
inline std::unique_ptr<ed::Communicator> join_group(const Config& c) {
  ed::InitOptions o;
  o.world_size = c.world_size;
  o.rank = c.rank;
  o.init = c.dist_init;
  o.timeout = std::chrono::milliseconds(static_cast<long long>(std::llround(c.dist_timeout * 1000.0)));
  o = ed::resolve_init_options(o);
  if (o.world_size == 1) return std::make_unique<ed::SingleProcess>();
#if defined(EAST_HAS_GLOO)
  return std::make_unique<ta::GlooCommunicator>(o);
#else
  throw east::InvalidArgument(east::detail::concat(
      "east-trainer: --world-size ", o.world_size,
      " needs the Gloo engine, and this east-trainer was built without it (valid: 1; install libgloo-dev "
      "and rebuild)"));
#endif
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

inline std::string hex_digest(std::uint64_t d) {
  char hex[20];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(d));
  return hex;
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
      << ",\n  \"mask_updates\": " << r.mask_updates << ",\n  \"mask_digest\": \""
      << hex_digest(r.mask_digest) << "\",\n  \"weights_digest\": \"" << hex_digest(r.weights_digest) << "\""
      << ",\n  \"kernels\": \"" << c.kernels << "\",\n  \"sparse_kernel_layers\": " << r.sparse_kernel_layers
      << ",\n  \"seconds\": " << r.seconds << ",\n  \"command\": \"" << json_escape(c.command_line)
      << "\",\n  \"val_history\": [";
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
  if (r.world_size > 1 || r.accumulate > 1) {
    const double steps = static_cast<double>(std::max<std::int64_t>(1, r.dp_steps));
    os << "data parallel: " << r.world_size << " rank(s) x " << r.accumulate << " micro-batch(es) of "
       << r.micro_batch << " images; payload per rank, counted by the communicator over " << r.dp_steps
       << " steps:\n";
    os << std::setprecision(0) << "  gradients " << static_cast<double>(r.gradient_bytes) / steps
       << " bytes per step (last step " << r.last_gradient_bytes << "), dense gradients at mask updates "
       << static_cast<double>(r.update_bytes) / static_cast<double>(std::max<std::int64_t>(1, r.dp_updates))
       << " bytes per update (" << r.dp_updates << " updates), BatchNorm statistics "
       << static_cast<double>(r.statistics_bytes) / steps << " bytes per step, checks " << r.check_bytes
       << " bytes; wire estimate " << r.wire_bytes << " bytes in all\n";
  }
  os.unsetf(std::ios::fixed);
  std::uint64_t losses = 0;
  for (double l : r.loss_history) losses = east::mix64(losses ^ ed::digest_bytes(&l, sizeof l));
  os << "mask digest " << hex_digest(r.mask_digest) << ", weights digest " << hex_digest(r.weights_digest)
     << ", loss digest " << hex_digest(losses) << " (" << r.loss_history.size()
     << " steps in this process)\n";
}

// ---------------------------------------------------------------- the run

inline Result run(Config c, std::ostream& log = std::cerr) {
  validate(c);
  const auto t0 = std::chrono::steady_clock::now();
  torch::set_num_threads(c.threads);
  east::kernels::set_threads(c.threads);
  east::keep_freed_memory_for_reuse();           // no page faults on every step's fresh activations
  east::torch_adapter::use_caching_allocator();  // and large tensors page-aligned, reused (~10% of a step)
  torch::manual_seed(c.seed);
  // Data parallelism: join the group first (one process: SingleProcess) and refuse ranks started
  // with other settings before anything slow happens.
  const std::unique_ptr<ed::Communicator> comm = join_group(c);
  const int N = comm->world_size(), rank = comm->rank(), K = c.accumulate;
  c.world_size = N;
  c.rank = rank;
  if (N > 1) ed::check_settings_agree(*comm, dist_settings(c));
  // N = 1, K = 1 is the plain loop; otherwise every step is K micro-batches per rank.
  const bool dp = N > 1 || K > 1;
  const bool talk = !c.quiet && rank == 0;
  east::detail::require(c.batch % (static_cast<int64_t>(N) * K) == 0, "east-trainer", "--batch ", c.batch,
                        " does not split into world size ", N, " x --accumulate ", K, " = ",
                        static_cast<int64_t>(N) * K, " equal micro-batches (valid: a multiple of ",
                        static_cast<int64_t>(N) * K, ")");
  const int64_t micro = c.batch / (static_cast<int64_t>(N) * K);
  const Dataset data = load_dataset(c.dataset, c.data_dir);
  const Prepared p = prepare(data, c);
  if (N > 1) {
    std::vector<std::pair<std::string, torch::Tensor>> d = {{"train images", p.train_x},
                                                            {"train labels", p.train_y},
                                                            {"test images", p.test_x},
                                                            {"test labels", p.test_y}};
    if (p.val_x.defined())
      d.push_back({"validation images", p.val_x}), d.push_back({"validation labels", p.val_y});
    ed::check_digests_agree(*comm, 0, "the data (same files and --data-dir contents on every rank?)",
                            tensor_digests(d));
  }

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
  if (N > 1) ta::broadcast_module_state(*comm, *model);  // rank 0's initial weights everywhere
  // BatchNorm running statistics are applied after each step, in global micro-batch order.
  if (dp) ta::set_defer_running_stats(*model, true);

  init_hypernets(c, *model);
  // The user's side of a libtorch loop: torch::optim::SGD; east's side: one Sparsifier.
  std::vector<torch::optim::OptimizerParamGroup> groups;
  const std::vector<double> lr_scale = optimizer_groups(c, *model, groups);
  torch::optim::SGD sgd(groups, torch::optim::SGDOptions(c.lr));
  const int64_t n_train = p.train_x.size(0);
  const int64_t spe = n_train / c.batch;  // drop the last partial batch
  const int64_t T = spe * c.epochs;
  const east::Preset preset = make_preset(c);
  ta::SparsifierOptions so;
  so.seed = c.seed;
  so.init = east::InitScaling::none;  // the paper's recipe: BatchNorm sets each layer's scale
  const auto graph = ta::resnet_connectivity(*model);
  if (c.connect || c.connect_all) so.connectivity = graph;
  so.connect_every_weight = c.connect_all;
  // Convolutions below the crossover density train on compact weights (docs/sparse.md).
  if (c.kernels == "sparse") so.crossover = {2.0, 2.0};
  if (c.kernels == "dense") so.crossover = {0.0, 0.0};
  so.log = nullptr;
  ta::Sparsifier sparsity(*model, sgd, preset, T, so);
  const auto& params = sparsity.controller().params();
  r.path_initial = east::check_connectivity(*graph, params, sparsity.controller().masks());

  r.config = c;
  int start_epoch = 0;
  double elapsed_before = 0;
  const std::string ckpt = c.out_dir.empty() ? "" : c.out_dir + "/checkpoint.east";
  if (c.resume && file_exists(ckpt)) {
    std::string blob;
    try {
      blob = sparsity.load(ckpt);
    } catch (const east::InvalidArgument& e) {  // the Sparsifier's own fingerprint (method, length, seed, …)
      throw east::InvalidArgument("east-trainer: --resume: the checkpoint '" + ckpt +
                                  "' was written by a run with other settings (" + e.what() +
                                  "); use another --out or drop --resume");
    }
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
    if (talk) log << "resumed from " << ckpt << " at epoch " << start_epoch << "\n";
  }
  const ed::Reduction how = c.dist_reduce == "rank-order" ? ed::Reduction::rank_order : ed::Reduction::engine;
  std::unique_ptr<GradientPack> grads;
  if (dp) {
    // Mask updates read every prunable layer's dense gradient: the global one (the loss is
    // scaled per micro-batch, so the sum is the global mean).
    ed::Communicator* cm = comm.get();
    if (how == ed::Reduction::engine)
      sparsity.set_gradient_reducer([cm](float* d, std::size_t n) { cm->all_reduce_sum(d, n); });
    else
      sparsity.set_gradient_reducer([cm](float* d, std::size_t n) {
        ed::FloatPack one;
        one.add(d, n);
        one.all_reduce_sum(*cm, ed::Reduction::rank_order);
      });
    grads = std::make_unique<GradientPack>(*model, sparsity.controller());
    // Masks come from the seed and are never sent: check that every rank has the same, and the
    // same weights (broadcast, or loaded from the same checkpoint).
    ed::check_masks_agree(*comm, sparsity.steps(), sparsity.controller());
    ed::check_digests_agree(*comm, sparsity.steps(), "model tensors", tensor_digests(model_state(*model)));
  }
  r.world_size = N;
  r.accumulate = K;
  r.micro_batch = micro;

  if (talk) {
    log << "east-trainer: " << c.method << " ResNet-" << c.depth << " width " << c.width << " on "
        << c.dataset << " (" << n_train << " train, " << (p.val_x.defined() ? p.val_x.size(0) : 0) << " val, "
        << p.test_x.size(0) << " test), sparsity " << c.sparsity << ", " << c.epochs << " epochs x " << spe
        << " steps, batch " << c.batch << ", threads " << c.threads << "\n";
    log << "  prunable weights " << params.logical_size() << " (stored " << params.stored_size() << ") in "
        << params.size() << " layers; nonzeros " << sparsity.nonzeros();
    const auto sched = preset.schedule(T);
    if (c.dynamic())
      log << "; mask update every " << sched.update_interval << " steps until step " << sched.end_step;
    if (c.cyclic()) {
      const auto ec = preset.east_config(T);
      log << "; cyclic density x" << ec.multiplier << " over steps [0, " << east::detail::east_cyclic(ec).end()
          << ")";
    }
    if (c.dyrelu()) {
      const auto ph = east::make_east_phase(preset.east_config(T));
      log << "; DyReLU beta 1 -> 0 over steps [" << ph.ramp.start << ", " << ph.ramp.end << "] (" << c.dyrelu_impl
          << ", " << c.dyrelu_mode << ")";
    }
    log << "\n";
    if (!r.path_initial.message().empty())
      log << "  WARNING: initial masks: " << r.path_initial.message() << "\n";
    log << "  layers on east's sparse kernels: " << sparsity.compact_layers() << " of " << sparsity.layers()
        << " (" << c.kernels << ", crossover density " << so.crossover.conv << ")\n";
    if (dp)
      log << "  data parallel: " << N << " rank(s) x " << K << " micro-batch(es) of " << micro
          << " images per step (global batch " << c.batch << "), " << comm->backend()
          << (N > 1 ? std::string(" reduce ") + c.dist_reduce : std::string()) << "\n";
  }

  const int64_t log_every = c.log_every > 0 ? c.log_every : std::max<int64_t>(1, spe / 10);
  const auto data_stream = east::make_stream(c.seed).derive(0xBA7C);
  std::vector<int64_t> order;
  east::RandomStream epoch_stream = data_stream;
  // One data-parallel step of global batch b: micro-batch j = rank·K + k of the global batch is
  // this rank's k-th, its loss scaled by 1/(N·K) so the summed gradient is the global mean; one
  // packed all-reduce, BatchNorm statistics in global micro-batch order, clipping by the global
  // norm, the optimizer, the Sparsifier (whose mask updates read all-reduced dense gradients)
  // and the mask agreement check after every update. Returns the global loss.
  const float scale = 1.0f / static_cast<float>(static_cast<int64_t>(N) * K);
  auto data_parallel_step = [&](int64_t b) -> double {
    sgd.zero_grad();
    float loss = 0.0f;  // summed in micro-batch order, then over ranks
    for (int k = 0; k < K; ++k) {
      const int64_t j = static_cast<int64_t>(rank) * K + k;
      auto [x, y] = make_batch(p, order, b * c.batch + j * micro, micro, c.augment, epoch_stream.derive(2));
      auto l = torch::nn::functional::cross_entropy(model->forward(x), y) * scale;
      l.backward();
      loss += l.item<float>();
    }
    const auto g = grads->all_reduce(*comm, how, sparsity.controller(), &loss);
    r.gradient_bytes += g;
    r.last_gradient_bytes = g;
    const auto stats = ta::take_running_statistics(*model, static_cast<std::size_t>(K));
    const auto all = comm->all_gather_bytes(stats.data(), stats.size() * sizeof(float));
    r.statistics_bytes += stats.size() * sizeof(float);
    std::vector<float> ordered(all.size() / sizeof(float));  // rank-major = global micro-batch order
    if (!all.empty()) std::memcpy(ordered.data(), all.data(), all.size());
    ta::apply_running_statistics(*model, ordered.data(), static_cast<std::size_t>(N) * K);
    if (c.clip > 0) torch::nn::utils::clip_grad_norm_(model->parameters(), c.clip);
    sgd.step();
    const bool update = sparsity.is_update_step();
    const auto before = comm->traffic();
    sparsity.step();
    if (update) {
      r.update_bytes += comm->traffic().since(before).total().payload_bytes;
      ++r.dp_updates;
      ed::check_masks_agree(*comm, sparsity.steps(), sparsity.controller());
      if (talk)
        log << "step " << sparsity.steps() << ": mask update; masks agree on " << N << " rank(s), digest "
            << hex_digest(sparsity.controller().digest()) << "\n";
    }
    ++r.dp_steps;
    return static_cast<double>(loss);
  };
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
    order = permutation(n_train, es.derive(1));
    epoch_stream = es;
    const auto epoch_t0 = std::chrono::steady_clock::now();
    double loss_sum = 0;
    int64_t loss_n = 0;
    for (int64_t b = 0; b < spe; ++b) {
      const int64_t step = static_cast<int64_t>(epoch) * spe + b;
      const double lr = c.lr * (step >= T / 2 ? 0.1 : 1.0) * (step >= (3 * T) / 4 ? 0.1 : 1.0);
      for (std::size_t g = 0; g < sgd.param_groups().size(); ++g)
        static_cast<torch::optim::SGDOptions&>(sgd.param_groups()[g].options()).lr(lr * lr_scale[g]);
      double lv;
      if (!dp) {
        auto [x, y] = make_batch(p, order, b * c.batch, c.batch, c.augment, es.derive(2));
        sgd.zero_grad();
        auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
        loss.backward();
        if (c.clip > 0) torch::nn::utils::clip_grad_norm_(model->parameters(), c.clip);
        sgd.step();
        sparsity.step();  // masks, mask updates, compact weights, EAST's DyReLU phase
        lv = loss.item<double>();
      } else {
        lv = data_parallel_step(b);
      }
      r.loss_history.push_back(lv);
      east::detail::require(std::isfinite(lv), "east-trainer", "loss became ", lv, " at step ", step,
                            " (lower --lr?)");
      loss_sum += lv;
      ++loss_n;
      last_loss = lv;
      if (talk && ((b + 1) % log_every == 0 || b + 1 == spe)) {
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_t0).count();
        const double rate = static_cast<double>((b + 1) * c.batch) / std::max(secs, 1e-9);
        const double eta = static_cast<double>((T - step - 1) * c.batch) / rate;
        log << "epoch " << epoch + 1 << "/" << c.epochs << "  step " << step + 1 << "/" << T << "  loss "
            << std::fixed << std::setprecision(4) << loss_sum / static_cast<double>(loss_n) << "  lr "
            << std::setprecision(4) << lr << "  density " << std::setprecision(5) << sparsity.density() << "  "
            << std::setprecision(0) << rate << " img/s  ETA " << format_duration(eta) << "\n";
        log.unsetf(std::ios::fixed);
      }
    }
    r.train_loss = loss_sum / static_cast<double>(std::max<int64_t>(1, loss_n));
    const auto [va, vl] = evaluate(model, p.val_x, p.val_y, dp ? comm.get() : nullptr);
    r.val_history.push_back(va);
    if (talk)
      log << "epoch " << epoch + 1 << " done: train loss " << std::fixed << std::setprecision(4)
          << r.train_loss << ", val acc " << std::setprecision(2) << 100 * va << "% (loss "
          << std::setprecision(4) << vl << ")\n";
    log.unsetf(std::ios::fixed);
    ++epochs_run;
    if (!ckpt.empty() && dp) sparsity.controller().sync_dense_views();  // every rank, as rank 0's save() does
    if (!ckpt.empty() && rank == 0) {
      ta::StateWriter w;
      w.put_string(fingerprint(c));
      w.put(static_cast<int32_t>(epoch + 1));
      w.put(elapsed_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      w.put(static_cast<std::uint64_t>(r.val_history.size()));
      for (double v : r.val_history) w.put(v);
      sparsity.save(ckpt, w.bytes());
    }
  }
  (void)last_loss;
  const auto [ta_, tl] = evaluate(model, p.test_x, p.test_y, dp ? comm.get() : nullptr);
  r.test_accuracy = ta_;
  r.test_loss = tl;
  r.val_accuracy = r.val_history.empty() ? 0 : r.val_history.back();
  const auto& ctl = sparsity.controller();
  r.density = ctl.density();
  r.stored_density = ctl.stored_density();
  r.nonzeros = ctl.nonzeros();
  r.logical_size = params.logical_size();
  r.stored_size = params.stored_size();
  r.steps = T;
  r.mask_updates = static_cast<std::int64_t>(ctl.updates());
  r.sparse_kernel_layers = sparsity.compact_layers();
  r.empty_layers = ctl.empty_layers();
  r.path_final = east::check_connectivity(*graph, params, ctl.masks());
  for (std::size_t l = 0; l < params.size(); ++l) {
    const auto& v = params[l];
    r.layers.push_back({v.name, v.size(), v.uses, ctl.masks()[l].count()});
  }
  r.mask_digest = ctl.digest();
  ctl.sync_dense_views();  // the dense views of compact layers, as a checkpoint holds them
  const auto tensors = tensor_digests(model_state(*model));
  r.weights_digest = tensors.overall;
  if (dp) {
    // Every rank ends with the same masks, weights and buffers.
    ed::check_masks_agree(*comm, sparsity.steps(), ctl);
    ed::check_digests_agree(*comm, sparsity.steps(), "model tensors", tensors);
    const auto& t = comm->traffic();
    r.check_bytes = t.total().payload_bytes - r.gradient_bytes - r.update_bytes - r.statistics_bytes;
    r.wire_bytes = t.total().wire_bytes;
  }
  r.seconds = elapsed_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.finished = true;
  if (!c.out_dir.empty() && rank == 0) write_results(r, c.out_dir);
  return r;
}

}  // namespace east_trainer
