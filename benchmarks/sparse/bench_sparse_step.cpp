// The training step users get: the public CIFAR ResNet (east::torch_adapter::ResNet, fused
// BN(+add)+ReLU, east::nn::Conv2d) with torch::optim::SGD and a Sparsifier, its ERK masks made
// as the trainer makes them — on compact weights (crossover auto, what the trainer runs) against
// the same model and loop on masked dense weights (crossover 0: libtorch's convolutions, the
// masked-dense training every other DST library does). One step = zero_grad, forward,
// cross-entropy, backward, optimizer.step(), sparsity.step(). Also: a mask-update step, the same
// step with one weight per layer (the floor: everything but the nonzero work), and the memory of
// weights + optimizer state. Same threads for all; `uptime` before and after. The compact and
// masked-dense runs alternate in rounds and the ratio is the median of the rounds' (time_pair).
// --model=mnist-cnn times examples/custom_model's network (libtorch's MNIST CNN, no BatchNorm, on
// 1×28×28) the same way instead.
//   east_bench_sparse_step [--model=resnet|mnist-cnn] [--batch=64] [--threads=2] [--steps=3] [--depth=34]
//                          [--width=1] [--hw=32] [--densities=0.01,0.001,0.0005,0.0001] [--no-dense] [--no-update]
//                          [--default-malloc]   (without east::keep_freed_memory_for_reuse() and
//                                                use_caching_allocator(), which the trainer calls)
//                          [--crossover=CONV[,LINEAR[,STRIDED]]]  (the compact path's per-layer switch; default the
//                          Sparsifier's; STRIDED: strided convolutions, default max(CONV, 10%))
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <functional>
#include <memory>
#include <tuple>
#include <cstdio>
#include <cstdlib>
#include <east/adapters/torch.hpp>
#include <east/platform.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "../../examples/custom_model/net.hpp"

namespace {

namespace ta = east::torch_adapter;

struct Config {
  std::string model = "resnet";
  long batch = 64, hw = 32;
  int threads = 2, steps = 3, depth = 34;
  double width = 1.0;
  std::vector<double> densities{0.01, 0.001, 0.0005, 0.0001};
  bool dense = true, update = true;
  bool tune_malloc = true;  // keep_freed_memory_for_reuse() + use_caching_allocator(), as the trainer does
  east::sparse::Crossover crossover;  // the compact path's per-layer switch (the Sparsifier's default)
};

struct Run {
  double step = 0, update_step = 0;  // median seconds
  double phase[4] = {0, 0, 0, 0};    // median seconds of forward + loss, backward, optimizer.step(), sparsity.step()
  std::size_t compact = 0, layers = 0, state_bytes = 0, nonzeros = 0;
  std::size_t logical = 0;  // prunable weights, every shared use counted (what a density is of)
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Warm-up steps and rounds of timed steps per path (time_pair), and the steps before the update.
constexpr int kWarmups = 2, kRounds = 3;
int steps_before_update(const Config& cfg) { return kWarmups + kRounds * (cfg.steps + 1); }

// One model with its optimizer and Sparsifier, on the compact or the masked-dense path; step()
// runs and times one training step.
class Trial {
 public:
  Trial(const Config& cfg, double density, bool compact_path) {
    torch::manual_seed(0);
    const bool cnn = cfg.model == "mnist-cnn";
    if (cnn) {
      custom_model::Net net;
      model_ = net.ptr();
      forward_ = [net](const torch::Tensor& x) mutable { return net->forward(x); };
    } else {
      ta::ResNetOptions o;
      o.depth = cfg.depth;
      o.width = cfg.width;
      o.in_channels = 3;
      o.num_classes = 10;
      ta::ResNet net(o);
      model_ = net.ptr();
      forward_ = [net](const torch::Tensor& x) mutable { return net->forward(x); };
    }
    model_->train();
    opt_ = std::make_unique<torch::optim::SGD>(
        model_->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9).nesterov(true).weight_decay(5e-4));
    if (density <= 0) {  // the floor: one weight per layer (the minimum the allocation allows)
      std::size_t n = 0, layers = 0;
      for (const auto& r : ta::prunable_parameters(*model_)) n += static_cast<std::size_t>(r.weight.numel()), ++layers;
      density = static_cast<double>(layers) / static_cast<double>(n);
    }
    auto method = east::presets::rigl(density);
    // Warm-up and timed steps are ordinary; the next one updates.
    method.update_interval = steps_before_update(cfg);
    method.update_end = 1.0;
    ta::SparsifierOptions so;
    so.log = nullptr;
    so.init = east::InitScaling::none;
    so.crossover = compact_path ? cfg.crossover : east::sparse::Crossover{0.0, 0.0};
    const std::int64_t total = 4L * (steps_before_update(cfg) + 1);
    sparsity_ = std::make_unique<ta::Sparsifier>(*model_, *opt_, method, total, so);
    x_ = cnn ? torch::randn({cfg.batch, 1, 28, 28}) : torch::randn({cfg.batch, 3, cfg.hw, cfg.hw});
    y_ = torch::randint(0, 10, {cfg.batch});
  }
  /// One step = zero_grad, forward, cross-entropy, backward, optimizer.step(), sparsity.step();
  /// its seconds (its phases go to phases_ when `record`).
  double step(bool record = true) {
    using clock = std::chrono::steady_clock;
    auto secs = [](clock::time_point a, clock::time_point b) { return std::chrono::duration<double>(b - a).count(); };
    const auto t0 = clock::now();
    opt_->zero_grad();
    const auto loss = torch::nn::functional::cross_entropy(forward_(x_), y_);
    const auto t1 = clock::now();
    loss.backward();
    const auto t2 = clock::now();
    opt_->step();
    const auto t3 = clock::now();
    sparsity_->step();
    const auto t4 = clock::now();
    if (record)
      for (auto [i, a, b] : {std::tuple{0, t0, t1}, std::tuple{1, t1, t2}, std::tuple{2, t2, t3}, std::tuple{3, t3, t4}})
        phases_[i].push_back(secs(a, b));
    return secs(t0, t4);
  }
  double update_step() {
    if (!sparsity_->is_update_step()) throw std::logic_error("bench: the schedule did not place an update here");
    return step(false);
  }
  /// The run's figures, `steps` its timed ordinary steps.
  Run summary(const std::vector<double>& steps, double update) const {
    Run r;
    r.step = median(steps);
    for (int i = 0; i < 4; ++i) r.phase[i] = median(phases_[i]);
    r.update_step = update;
    r.compact = sparsity_->compact_layers();
    r.layers = sparsity_->layers();
    r.nonzeros = sparsity_->nonzeros();
    r.logical = sparsity_->controller().params().logical_size();
    for (const auto& p : model_->parameters()) r.state_bytes += static_cast<std::size_t>(p.numel()) * 4;
    for (const auto& kv : opt_->state())
      for (torch::Tensor* st : ta::detail::state_tensors(*kv.second))
        r.state_bytes += static_cast<std::size_t>(st->numel()) * 4;
    return r;
  }

 private:
  std::shared_ptr<torch::nn::Module> model_;
  std::function<torch::Tensor(const torch::Tensor&)> forward_;
  std::unique_ptr<torch::optim::SGD> opt_;
  std::unique_ptr<ta::Sparsifier> sparsity_;
  torch::Tensor x_, y_;
  std::vector<double> phases_[4];
};

// Times the compact path and, with `dense`, the masked-dense one at one density, in kRounds
// rounds: per round one untimed step then `steps` timed ones of the compact model, then the same
// for the dense one. Each path runs steps back to back as in training (a step right after the
// other model's runs ~10% slower: caches), and both see the same minutes of a host whose speed
// drifts by up to ~25%; `ratio` is the median over rounds of (dense median ÷ compact median).
// Then one update step each.
struct Pair {
  Run compact, dense;
  double ratio = 0;
};
Pair time_pair(const Config& cfg, double density, bool dense) {
  Trial c(cfg, density, true);
  std::unique_ptr<Trial> d = dense ? std::make_unique<Trial>(cfg, density, false) : nullptr;
  for (int i = 0; i < kWarmups; ++i) {  // allocations, lazy optimizer state
    c.step(false);
    if (d) d->step(false);
  }
  std::vector<double> tc, td, ratios;
  for (int r = 0; r < kRounds; ++r) {
    std::vector<double> rc, rd;
    c.step(false);
    for (int i = 0; i < cfg.steps; ++i) rc.push_back(c.step());
    tc.insert(tc.end(), rc.begin(), rc.end());
    if (!d) continue;
    d->step(false);
    for (int i = 0; i < cfg.steps; ++i) rd.push_back(d->step());
    td.insert(td.end(), rd.begin(), rd.end());
    ratios.push_back(median(rd) / median(rc));
  }
  const double uc = cfg.update ? c.update_step() : 0.0;
  const double ud = cfg.update && d ? d->update_step() : 0.0;
  Pair p;
  p.compact = c.summary(tc, uc);
  if (d) {
    p.dense = d->summary(td, ud);
    p.ratio = median(ratios);
  }
  return p;
}

std::string uptime() {
  FILE* f = popen("uptime", "r");
  if (!f) return "?";
  char buf[256] = {0};
  const bool ok = std::fgets(buf, sizeof buf, f) != nullptr;
  pclose(f);
  std::string s = ok ? buf : "?";
  if (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&](const char* flag) -> const char* {
      const std::string f = std::string(flag) + "=";
      return a.compare(0, f.size(), f) == 0 ? a.c_str() + f.size() : nullptr;
    };
    if (const char* v = val("--model")) cfg.model = v;
    else if (const char* v = val("--batch")) cfg.batch = std::atol(v);
    else if (const char* v = val("--threads")) cfg.threads = std::atoi(v);
    else if (const char* v = val("--steps")) cfg.steps = std::atoi(v);
    else if (const char* v = val("--depth")) cfg.depth = std::atoi(v);
    else if (const char* v = val("--width")) cfg.width = std::atof(v);
    else if (const char* v = val("--hw")) cfg.hw = std::atol(v);
    else if (const char* v = val("--densities")) {
      cfg.densities.clear();
      std::stringstream ss(v);
      for (std::string d; std::getline(ss, d, ',');) cfg.densities.push_back(std::stod(d));
    } else if (a == "--no-dense") cfg.dense = false;
    else if (a == "--default-malloc") cfg.tune_malloc = false;
    else if (a == "--no-update") cfg.update = false;
    else if (const char* v = val("--crossover")) {  // conv[,linear[,strided conv]]
      double* fields[] = {&cfg.crossover.conv, &cfg.crossover.linear, &cfg.crossover.conv_strided};
      std::stringstream ss(v);
      std::size_t n = 0;
      bool ok = true;
      for (std::string f; ok && std::getline(ss, f, ',');) {
        char* end = nullptr;
        const double x = std::strtod(f.c_str(), &end);
        ok = n < 3 && !f.empty() && *end == '\0' && x >= 0;
        if (ok) *fields[n++] = x;
      }
      if (!ok || n == 0 || (!std::string(v).empty() && std::string(v).back() == ',')) {
        std::fprintf(stderr,
                     "east_bench_sparse_step: --crossover=%s (valid: CONV[,LINEAR[,STRIDED]], numbers >= 0)\n", v);
        return 2;
      }
    }
    else {
      std::fprintf(stderr,
                   "usage: east_bench_sparse_step [--batch=64] [--threads=2] [--steps=3] [--depth=34] [--width=1] "
                   "[--hw=32] [--densities=0.01,0.001,...] [--no-dense] [--no-update] [--default-malloc] "
                   "[--crossover=CONV[,LINEAR[,STRIDED]]]\n");
      return 2;
    }
  }
  if (cfg.model != "resnet" && cfg.model != "mnist-cnn") {
    std::fprintf(stderr, "east_bench_sparse_step: --model=%s (valid: resnet, mnist-cnn)\n", cfg.model.c_str());
    return 2;
  }
  if (cfg.steps < 1 || cfg.batch < 1 || cfg.threads < 1) {
    std::fprintf(stderr, "east_bench_sparse_step: --steps, --batch and --threads must be >= 1\n");
    return 2;
  }
  torch::set_num_threads(cfg.threads);
  east::kernels::set_threads(cfg.threads);
  if (cfg.tune_malloc) {  // for both paths, as the trainer does
    east::keep_freed_memory_for_reuse();
    ta::use_caching_allocator();
  }
  std::printf("uptime before: %s\n", uptime().c_str());
  if (cfg.model == "mnist-cnn")
    std::printf("examples/custom_model's CNN (libtorch's MNIST network, no BatchNorm), batch %ld, 1x28x28, ",
                cfg.batch);
  else
    std::printf("public ResNet-%d width %g, batch %ld, 3x%ldx%ld, ", cfg.depth, cfg.width, cfg.batch, cfg.hw,
                cfg.hw);
  // libgomp's wait policy moves a 2-thread step by ~10% here (waking a sleeping thread per parallel
  // region), so the run says which one it had.
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  std::printf("%d thread(s), RigL ERK masks, SGD (momentum, Nesterov, weight decay); median of %d rounds x %d steps "
              "(compact and masked dense alternate by rounds; %d warm-ups); %s; OMP_WAIT_POLICY=%s\n",
              cfg.threads, kRounds, cfg.steps, kWarmups, cfg.tune_malloc ? "east's caching CPU allocator" : "glibc's default malloc",
              wait_policy ? wait_policy : "(unset: libgomp's default)");
  // The floor: the same path with one weight per layer (everything but the nonzero work).
  const Run floor = time_pair(cfg, 0.0, false).compact;
  std::printf("floor (one weight per layer, %zu nonzeros): step %.2f ms\n", floor.nonzeros, 1e3 * floor.step);
  std::vector<std::pair<std::string, Run>> splits{{"floor", floor}};
  std::printf("\n| density | masked dense ms | east ms | dense ÷ east | east ÷ floor | update step: dense ms | east ms "
              "| compact layers | weights+state MB dense / east |\n|---|---|---|---|---|---|---|---|---|\n");
  for (const double d : cfg.densities) {
    // A density whose budget is below one weight per layer cannot be built: say so and go on.
    if (std::floor(d * static_cast<double>(floor.logical)) < static_cast<double>(floor.layers)) {
      std::printf("| %g | skipped: %.0f nonzeros, fewer than one per layer (%zu layers) | | | | | | | |\n", d,
                  std::floor(d * static_cast<double>(floor.logical)), floor.layers);
      continue;
    }
    const Pair pair = time_pair(cfg, d, cfg.dense);
    const Run &e = pair.compact, &m = pair.dense;
    splits.emplace_back(std::to_string(d), e);
    auto ms = [](double s) {
      char b[32];
      std::snprintf(b, sizeof b, "%.2f", 1e3 * s);
      return std::string(b);
    };
    char ratio[32] = "-", mb[32] = "-";
    if (cfg.dense) {
      std::snprintf(ratio, sizeof ratio, "%.2fx", pair.ratio);
      std::snprintf(mb, sizeof mb, "%.2f", m.state_bytes / 1e6);
    }
    std::printf("| %g | %s | %s | %s | %.2f | %s | %s | %zu of %zu | %s / %.2f |\n", d,
                cfg.dense ? ms(m.step).c_str() : "-", ms(e.step).c_str(), ratio, e.step / floor.step,
                cfg.update && cfg.dense ? ms(m.update_step).c_str() : "-", cfg.update ? ms(e.update_step).c_str() : "-",
                e.compact, e.layers, mb, e.state_bytes / 1e6);
    std::fflush(stdout);
  }
  std::printf("\neast's step, split (medians, ms; they need not add up to the step's median):\n\n"
              "| density | forward + loss | backward | optimizer.step() | sparsity.step() |\n|---|---|---|---|---|\n");
  for (const auto& [name, run] : splits)
    std::printf("| %s | %.2f | %.2f | %.2f | %.2f |\n", name.c_str(), 1e3 * run.phase[0], 1e3 * run.phase[1],
                1e3 * run.phase[2], 1e3 * run.phase[3]);
  std::printf("\nuptime after: %s\n", uptime().c_str());
  return 0;
}
