// The training step users get: the public CIFAR ResNet (east::torch_adapter::ResNet, fused
// BN(+add)+ReLU, east::nn::Conv2d) with torch::optim::SGD and a Sparsifier, its ERK masks made
// as the trainer makes them — on compact weights (crossover auto, what the trainer runs) against
// the same model and loop on masked dense weights (crossover 0: libtorch's convolutions, the
// masked-dense training every other DST library does). One step = zero_grad, forward,
// cross-entropy, backward, optimizer.step(), sparsity.step(). Also: a mask-update step, the same
// step with one weight per layer (the floor: everything but the nonzero work), and the memory of
// weights + optimizer state. Same threads for all; `uptime` before and after.
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

// Builds the model and its Sparsifier, then times ordinary steps and (optionally) one update step.
Run time_run(const Config& cfg, double density, bool compact_path) {
  torch::manual_seed(0);
  const bool cnn = cfg.model == "mnist-cnn";
  std::shared_ptr<torch::nn::Module> model_ptr;
  std::function<torch::Tensor(const torch::Tensor&)> forward;
  if (cnn) {
    custom_model::Net net;
    model_ptr = net.ptr();
    forward = [net](const torch::Tensor& x) mutable { return net->forward(x); };
  } else {
    ta::ResNetOptions o;
    o.depth = cfg.depth;
    o.width = cfg.width;
    o.in_channels = 3;
    o.num_classes = 10;
    ta::ResNet net(o);
    model_ptr = net.ptr();
    forward = [net](const torch::Tensor& x) mutable { return net->forward(x); };
  }
  torch::nn::Module& model = *model_ptr;
  model.train();
  torch::optim::SGD opt(model.parameters(),
                        torch::optim::SGDOptions(0.01).momentum(0.9).nesterov(true).weight_decay(5e-4));
  if (density <= 0) {  // the floor: one weight per layer (the minimum the allocation allows)
    std::size_t n = 0, layers = 0;
    for (const auto& r : ta::prunable_parameters(model)) n += static_cast<std::size_t>(r.weight.numel()), ++layers;
    density = static_cast<double>(layers) / static_cast<double>(n);
  }
  auto method = east::presets::rigl(density);
  // The two warm-up steps and `steps` timed steps are ordinary; the next one (step steps + 2) updates.
  method.update_interval = cfg.steps + 2;
  method.update_end = 1.0;
  ta::SparsifierOptions so;
  so.log = nullptr;
  so.init = east::InitScaling::none;
  so.crossover = compact_path ? cfg.crossover : east::sparse::Crossover{0.0, 0.0};
  const std::int64_t total = 4L * (cfg.steps + 3);
  ta::Sparsifier sparsity(model, opt, method, total, so);
  const auto x = cnn ? torch::randn({cfg.batch, 1, 28, 28}) : torch::randn({cfg.batch, 3, cfg.hw, cfg.hw});
  const auto y = torch::randint(0, 10, {cfg.batch});
  std::vector<double> phases[4];
  auto one_step = [&] {
    using clock = std::chrono::steady_clock;
    auto secs = [](clock::time_point a, clock::time_point b) { return std::chrono::duration<double>(b - a).count(); };
    const auto t0 = clock::now();
    opt.zero_grad();
    const auto loss = torch::nn::functional::cross_entropy(forward(x), y);
    const auto t1 = clock::now();
    loss.backward();
    const auto t2 = clock::now();
    opt.step();
    const auto t3 = clock::now();
    sparsity.step();
    const auto t4 = clock::now();
    for (auto [i, a, b] : {std::tuple{0, t0, t1}, std::tuple{1, t1, t2}, std::tuple{2, t2, t3}, std::tuple{3, t3, t4}})
      phases[i].push_back(secs(a, b));
    return secs(t0, t4);
  };
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  Run r;
  one_step();  // warm-up: allocations, lazy optimizer state; the second step still allocates some
  one_step();
  for (auto& p : phases) p.clear();
  std::vector<double> t;
  for (int i = 0; i < cfg.steps; ++i) t.push_back(one_step());
  r.step = median(t);
  for (int i = 0; i < 4; ++i) r.phase[i] = median(phases[i]);
  if (cfg.update) {
    if (!sparsity.is_update_step()) throw std::logic_error("bench: the schedule did not place an update here");
    r.update_step = one_step();
  }
  r.compact = sparsity.compact_layers();
  r.layers = sparsity.layers();
  r.nonzeros = sparsity.nonzeros();
  r.logical = sparsity.controller().params().logical_size();
  for (const auto& p : model.parameters()) r.state_bytes += static_cast<std::size_t>(p.numel()) * 4;
  for (const auto& kv : opt.state())
    for (torch::Tensor* s : ta::detail::state_tensors(*kv.second))
      r.state_bytes += static_cast<std::size_t>(s->numel()) * 4;
  return r;
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
  std::printf("%d thread(s), RigL ERK masks, SGD (momentum, Nesterov, weight decay); median of %d steps after two "
              "warm-ups; %s; OMP_WAIT_POLICY=%s\n",
              cfg.threads, cfg.steps, cfg.tune_malloc ? "east's caching CPU allocator" : "glibc's default malloc",
              wait_policy ? wait_policy : "(unset: libgomp's default)");
  // The floor: the same path with one weight per layer (everything but the nonzero work).
  const Run floor = time_run(cfg, 0.0, true);
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
    const Run e = time_run(cfg, d, true);
    splits.emplace_back(std::to_string(d), e);
    Run m;
    if (cfg.dense) m = time_run(cfg, d, false);
    auto ms = [](double s) {
      char b[32];
      std::snprintf(b, sizeof b, "%.2f", 1e3 * s);
      return std::string(b);
    };
    char ratio[32] = "-", mb[32] = "-";
    if (cfg.dense) {
      std::snprintf(ratio, sizeof ratio, "%.2fx", m.step / e.step);
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
