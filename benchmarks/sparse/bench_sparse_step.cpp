// One training step (forward, cross-entropy, backward, SGD with momentum) of a full-width
// CIFAR-style ResNet-34 at a given sparsity: east's sparse modules (SparseConv2d, compact SGD)
// against the masked-dense libtorch step that RigL-style code runs (dense convs, SGD over dense
// weights, mask multiplied in after the step). Same threads for both. Also prints the memory of
// weights + optimizer state, and the step time of the sparse model with empty masks — what the
// dense parts (stem, BatchNorm, ReLU, activation writes, loss) cost on their own. The east model
// uses the fused BatchNorm(+add)+ReLU of adapters/torch_fused.hpp (--unfused: torch's BN, add, ReLU).
// --breakdown times each kind of op of one step alone over the model's shapes and compares it with
// the bytes it must move at a streaming bandwidth measured in the same run.
//   east_bench_sparse_step [--batch=64] [--threads=2] [--steps=3] [--density=0.001] [--unfused]
//                          [--breakdown [--hw=32]]
#include <malloc.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <east/adapters/torch_fused.hpp>
#include <east/adapters/torch_sparse.hpp>
#include <random>
#include <string>
#include <vector>

namespace {

struct Config {
  long batch = 64;
  int threads = 2;
  int steps = 3;
  double density = 0.001;
  std::string only;  // "dense", "sparse" or "empty": time one variant (for profiling)
  bool check = false;
  bool fused = true;  // east model: fused BN(+add)+ReLU
  bool breakdown = false;
  long hw = 32;
};

east::BitMask random_mask(std::size_t n, double density, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  const auto cut = static_cast<std::uint64_t>(density * 18446744073709551615.0);
  east::BitMask m(n);
  for (std::size_t i = 0; i < n; ++i)
    if (rng() < cut) m.set(i);
  return m;
}

// conv(3x3 or 1x1) → either a dense torch conv (masked after each step) or an east SparseConv2d.
struct ConvSlot {
  torch::nn::Conv2d dense{nullptr};
  east::sparse::SparseConv2d sparse{nullptr};
  at::Tensor mask;  // dense variant: float 0/1 mask
  at::Tensor operator()(const at::Tensor& x) { return dense ? dense->forward(x) : sparse->forward(x); }
};

// Where a conv's BN sits: before a ReLU (stem, conv1 of a block), before the residual add and
// ReLU (conv2), or alone (downsample shortcut).
enum class Role { relu, add_relu, plain };

struct Net : torch::nn::Module {
  bool sparse, fused;
  torch::nn::Conv2d stem{nullptr};
  torch::nn::BatchNorm2d stem_bn{nullptr};
  east::sparse::BatchNormReLU2d stem_fbn{nullptr};
  std::vector<ConvSlot> convs;
  std::vector<torch::nn::BatchNorm2d> bns;
  std::vector<east::sparse::BatchNormReLU2d> fbns;  // fused variant (sparse && fused)
  std::vector<Role> roles;
  std::vector<std::vector<long>> in_shapes;  // each conv's input shape, filled by forward
  struct Block {
    int c1, c2, down = -1;
  };
  std::vector<Block> blocks;
  torch::nn::Linear fc{nullptr};
  std::size_t prunable = 0;
  Net* from_ = nullptr;

  /// With `from` (a masked-dense net), the sparse net takes its weights, masks and dense params.
  Net(bool sparse_, double density, long in_ch, Net* from = nullptr, bool fused_ = true)
      : sparse(sparse_), fused(sparse_ && fused_), from_(from) {
    stem = register_module("stem",
                           torch::nn::Conv2d(torch::nn::Conv2dOptions(in_ch, 64, 3).padding(1).bias(false)));
    if (fused)
      stem_fbn = register_module("stem_bn", east::sparse::BatchNormReLU2d(64));
    else
      stem_bn = register_module("stem_bn", torch::nn::BatchNorm2d(64));
    long in = 64;
    const long widths[] = {64, 128, 256, 512};
    const int depth[] = {3, 4, 6, 3};
    for (int s = 0; s < 4; ++s)
      for (int b = 0; b < depth[s]; ++b) {
        const long stride = (s > 0 && b == 0) ? 2 : 1, out = widths[s];
        Block blk;
        blk.c1 = add_conv(in, out, 3, stride, 1, density, Role::relu);
        blk.c2 = add_conv(out, out, 3, 1, 1, density, Role::add_relu);
        if (stride != 1 || in != out) blk.down = add_conv(in, out, 1, stride, 0, density, Role::plain);
        blocks.push_back(blk);
        in = out;
      }
    fc = register_module("fc", torch::nn::Linear(512, 10));
    if (from_) {  // same dense parameters (stem, BN, fc) as the masked-dense net
      torch::NoGradGuard ng;
      auto mine = named_parameters();
      for (auto& p : from_->named_parameters())
        if (auto* t = mine.find(p.key())) t->copy_(p.value());
    }
  }

  int add_conv(long in, long out, long k, long stride, long pad, double density, Role role) {
    const int id = static_cast<int>(convs.size());
    auto proto =
        torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, k).stride(stride).padding(pad).bias(false));
    const auto n = static_cast<std::size_t>(proto->weight.numel());
    prunable += n;
    auto mask = random_mask(n, density, 1000 + id);
    at::Tensor w = proto->weight.detach().contiguous();
    if (from_) {
      const auto& src = from_->convs[static_cast<std::size_t>(id)];
      w = src.dense->weight.detach().contiguous();
      mask = east::BitMask::from_floats(src.mask.data_ptr<float>(), n);
    }
    ConvSlot slot;
    if (sparse) {
      slot.sparse = register_module("conv" + std::to_string(id),
                                    east::sparse::SparseConv2d(w, mask, static_cast<std::size_t>(stride),
                                                               static_cast<std::size_t>(pad)));
    } else {
      slot.dense = register_module("conv" + std::to_string(id), proto);
      const auto f = mask.to_floats();
      slot.mask =
          torch::from_blob(const_cast<float*>(f.data()), proto->weight.sizes(), torch::kFloat).clone();
      torch::NoGradGuard ng;
      slot.dense->weight.mul_(slot.mask);
    }
    convs.push_back(slot);
    roles.push_back(role);
    if (fused)
      fbns.push_back(register_module("bn" + std::to_string(id),
                                     east::sparse::BatchNormReLU2d(out, /*relu=*/role != Role::plain)));
    else
      bns.push_back(register_module("bn" + std::to_string(id), torch::nn::BatchNorm2d(out)));
    return id;
  }

  at::Tensor conv(int id, const at::Tensor& x) {
    const auto i = static_cast<std::size_t>(id);
    if (in_shapes.size() <= i) in_shapes.resize(i + 1);
    in_shapes[i] = x.sizes().vec();
    return convs[i](x);
  }
  at::Tensor cbn(int id, const at::Tensor& x) {
    return bns[static_cast<std::size_t>(id)]->forward(conv(id, x));
  }

  at::Tensor forward(at::Tensor x) {
    if (fused) {
      x = stem_fbn->forward(stem->forward(x));
      for (const auto& b : blocks) {
        auto y = fbns[static_cast<std::size_t>(b.c1)]->forward(conv(b.c1, x));
        const auto sc = b.down >= 0 ? fbns[static_cast<std::size_t>(b.down)]->forward(conv(b.down, x)) : x;
        x = fbns[static_cast<std::size_t>(b.c2)]->forward(conv(b.c2, y), sc);
      }
    } else {
      x = torch::relu(stem_bn->forward(stem->forward(x)));
      for (const auto& b : blocks) {
        auto y = torch::relu(cbn(b.c1, x));
        y = cbn(b.c2, y);
        x = torch::relu(y + (b.down >= 0 ? cbn(b.down, x) : x));
      }
    }
    x = torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
    return fc->forward(x);
  }
};

double step_seconds(Net& net, const at::Tensor& x, const at::Tensor& y, int steps,
                    std::vector<double>* losses = nullptr) {
  // Dense parameters (all for the masked-dense net; stem, BN and fc for the sparse one) go to
  // torch's SGD; the sparse convs step their compact values themselves.
  std::vector<at::Tensor> dense_params;
  for (auto& p : net.named_parameters())
    if (p.key().find(".values") == std::string::npos) dense_params.push_back(p.value());
  torch::optim::SGD opt(dense_params, torch::optim::SGDOptions(0.01).momentum(0.9));
  const east::kernels::SgdParams sp{0.01f, 0.9f};
  std::vector<double> times;
  for (int s = 0; s < steps + 1; ++s) {  // first step warms up (allocations, momentum buffers)
    const auto t0 = std::chrono::steady_clock::now();
    opt.zero_grad();
    auto loss = torch::nn::functional::cross_entropy(net.forward(x), y);
    if (losses) losses->push_back(loss.item<double>());
    loss.backward();
    opt.step();
    torch::NoGradGuard ng;
    for (auto& c : net.convs) {
      if (c.sparse)
        c.sparse->sgd_step(sp);
      else
        c.dense->weight.mul_(c.mask);  // keep pruned weights at zero, as RigL-style code does
    }
    const auto t1 = std::chrono::steady_clock::now();
    if (s > 0) times.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

std::size_t state_bytes(Net& net) {
  std::size_t b = 0;
  for (auto& c : net.convs) {
    if (c.sparse)
      b += c.sparse->state().weight.bytes() + 4 * c.sparse->state().momentum.size();
    else
      b += 2 * 4 * static_cast<std::size_t>(c.dense->weight.numel());  // weight + momentum
  }
  return b;
}

template <class F>
double median_seconds(F&& f, int reps) {
  std::vector<double> t;
  f();  // warm-up: allocations, page faults
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Each kind of op of one training step, timed alone over the model's shapes, against the bytes it
// has to move at least (read inputs once, write outputs once) at a streaming bandwidth measured in
// the same run. Rows marked * are what the east (fused) step runs; the others are what libtorch's
// separate BN / add / ReLU ops cost for comparison.
void breakdown(const Config& cfg) {
  const long ch = cfg.hw == 28 ? 1 : 3, hw = cfg.hw;
  const auto x = torch::randn({cfg.batch, ch, hw, hw});
  const auto lab = torch::randint(0, 10, {cfg.batch}, torch::kLong);
  Net net(true, cfg.density, ch, nullptr, true), empty(true, 0.0, ch, nullptr, true);
  Net unfused(true, cfg.density, ch, nullptr, false);
  const double t_step = step_seconds(net, x, lab, cfg.steps);
  const double t_empty = step_seconds(empty, x, lab, cfg.steps);
  const double t_unfused = step_seconds(unfused, x, lab, cfg.steps);
  const int reps = 3;

  // Streaming bandwidth: c = a + b over 64 Mi floats (12 B per element moved), same threads.
  double bw;
  {
    const long n = 64L << 20;
    auto a = torch::rand({n}), b = torch::rand({n}), c = torch::empty({n});
    bw = 12.0 * n / median_seconds([&] { at::add_out(c, a, b); }, reps);
  }

  // Activation sites: every conv's output gets a BN; conv1 and the stem a ReLU; conv2 the
  // residual add and ReLU; downsample convs BN only.
  struct Site {
    at::Tensor x, y, dy, res, w, b, rm, rv, mean, invstd;
    Role role;
  };
  std::vector<Site> sites;
  auto add_site = [&](std::vector<long> shape, Role role) {
    Site st;
    st.x = torch::randn(shape);
    st.dy = torch::randn(shape);
    st.res = torch::randn(shape);
    const long c = shape[1];
    st.w = torch::ones({c});
    st.b = torch::zeros({c});
    st.rm = torch::zeros({c});
    st.rv = torch::ones({c});
    st.mean = torch::empty({c});
    st.invstd = torch::empty({c});
    st.y = torch::empty(shape);
    st.role = role;
    sites.push_back(st);
  };
  add_site({cfg.batch, 64, hw, hw}, Role::relu);  // stem
  struct ConvCase {
    east::sparse::Conv2dGeometry g;
    const east::sparse::CsrWeight *w, *w0;
    at::Tensor x, y, dy, dx, dw;
  };
  std::vector<ConvCase> cc;
  for (std::size_t i = 0; i < net.convs.size(); ++i) {
    const auto& in = net.in_shapes[i];
    auto& st = net.convs[i].sparse->state();
    ConvCase c;
    c.g = east::sparse::SparseConv2dFunction::geometry(torch::empty(in), st);
    c.w = &st.weight;
    c.w0 = &empty.convs[i].sparse->state().weight;
    c.x = torch::randn(in);
    const std::vector<long> out = {cfg.batch, static_cast<long>(c.g.c_out), static_cast<long>(c.g.out_h()),
                                   static_cast<long>(c.g.out_w())};
    c.y = torch::empty(out);
    c.dy = torch::randn(out);
    c.dx = torch::empty(in);
    c.dw = torch::empty({static_cast<long>(st.weight.nnz())});
    cc.push_back(c);
    add_site(out, net.roles[i]);
  }
  auto elems = [](const at::Tensor& t) { return static_cast<double>(t.numel()); };

  struct Row {
    std::string name;
    std::size_t calls;
    double seconds, bytes;
    bool in_step;
  };
  std::vector<Row> rows;
  auto time_sites = [&](const char* name, bool in_step, double bytes_per_elem, auto pred, auto op) {
    std::size_t calls = 0;
    double bytes = 0;
    for (auto& st : sites)
      if (pred(st)) {
        ++calls;
        bytes += bytes_per_elem * elems(st.x);
      }
    const double t = median_seconds(
        [&] {
          for (auto& st : sites)
            if (pred(st)) op(st);
        },
        reps);
    rows.push_back({name, calls, t, bytes, in_step});
  };
  auto all = [](const Site&) { return true; };
  auto relu_site = [](const Site& s) { return s.role != Role::plain; };
  auto add_site_p = [](const Site& s) { return s.role == Role::add_relu; };
  using east::sparse::BatchNormOptions;
  auto east_opts = [](const Site& s) { return BatchNormOptions{0.1, 1e-5, true, s.role != Role::plain}; };
  auto shape_of = [](const at::Tensor& t) {
    return east::sparse::BatchNormShape{static_cast<std::size_t>(t.size(0)),
                                        static_cast<std::size_t>(t.size(1)),
                                        static_cast<std::size_t>(t.size(2) * t.size(3))};
  };
  // east fused: bytes = read x (+ residual) and write y; backward reads dy, x, y and writes dx
  // (+ d residual).
  {
    std::size_t calls = sites.size();
    double bytes = 0;
    for (auto& st : sites) bytes += (st.role == Role::add_relu ? 12.0 : 8.0) * elems(st.x);
    const double t = median_seconds(
        [&] {
          for (auto& st : sites)
            east::sparse::batchnorm_forward<float>(
                shape_of(st.x), st.x.data_ptr<float>(),
                st.role == Role::add_relu ? st.res.data_ptr<float>() : nullptr, st.w.data_ptr<float>(),
                st.b.data_ptr<float>(), st.rm.data_ptr<float>(), st.rv.data_ptr<float>(), east_opts(st),
                st.y.data_ptr<float>(), st.mean.data_ptr<float>(), st.invstd.data_ptr<float>());
        },
        reps);
    rows.push_back({"east fused BN(+add)+ReLU forward (kernel)", calls, t, bytes, true});
    bytes = 0;
    for (auto& st : sites) bytes += (st.role == Role::add_relu ? 20.0 : 16.0) * elems(st.x);
    // Outputs preallocated: this row times the kernel alone (the module row adds allocation).
    std::vector<at::Tensor> dx(sites.size()), dr(sites.size());
    for (std::size_t i = 0; i < sites.size(); ++i) {
      dx[i] = torch::empty_like(sites[i].x);
      dr[i] = sites[i].role == Role::add_relu ? torch::empty_like(sites[i].x) : at::Tensor();
    }
    const double tb = median_seconds(
        [&] {
          for (std::size_t i = 0; i < sites.size(); ++i) {
            auto& st = sites[i];
            float dw[512], db[512];
            east::sparse::batchnorm_backward<float>(
                shape_of(st.x), st.dy.data_ptr<float>(), st.x.data_ptr<float>(), st.y.data_ptr<float>(),
                st.w.data_ptr<float>(), st.mean.data_ptr<float>(), st.invstd.data_ptr<float>(), east_opts(st),
                dx[i].data_ptr<float>(), dr[i].defined() ? dr[i].data_ptr<float>() : nullptr, dw, db);
          }
        },
        reps);
    rows.push_back({"east fused BN(+add)+ReLU backward (kernel)", calls, tb, bytes, true});
  }
  time_sites("east fused BN+ReLU fwd+bwd through autograd (module)", false, 0.0, all, [&](Site& st) {
    auto xx = st.x.detach().requires_grad_(true);
    auto r = st.role == Role::add_relu ? st.res.detach().requires_grad_(true) : at::Tensor();
    auto yy = east::sparse::batchnorm_relu(xx, st.w, st.b, r, st.rm, st.rv, true, 0.1, 1e-5,
                                           st.role != Role::plain);
    yy.backward(st.dy);
  });
  // libtorch's separate ops (what the unfused step runs).
  time_sites("torch BN forward (native_batch_norm)", false, 8.0, all, [&](Site& st) {
    st.y = std::get<0>(at::native_batch_norm(st.x, st.w, st.b, st.rm, st.rv, true, 0.1, 1e-5));
  });
  time_sites("torch BN backward (native_batch_norm_backward)", false, 12.0, all, [&](Site& st) {
    auto r = at::native_batch_norm_backward(st.dy, st.x, st.w, st.rm, st.rv, st.mean, st.invstd, true, 1e-5,
                                            {true, true, true});
  });
  time_sites("torch ReLU forward", false, 8.0, relu_site, [&](Site& st) { auto r = at::relu(st.x); });
  time_sites("torch ReLU backward (threshold_backward)", false, 12.0, relu_site,
             [&](Site& st) { auto r = at::threshold_backward(st.dy, st.x, 0); });
  time_sites("torch residual add forward", false, 12.0, add_site_p,
             [&](Site& st) { auto r = st.x + st.res; });
  time_sites("torch gradient accumulation at block inputs (add)", false, 12.0, add_site_p,
             [&](Site& st) { auto r = st.dy + st.res; });
  // Conv kernels: bytes = the dense output (forward) or input gradient (dx) they must write;
  // the weight gradient must write nothing dense (its floor is ~0: reads of touched planes only).
  auto time_convs = [&](const char* name, bool in_step, bool with_w, int which) {
    double bytes = 0;
    for (auto& c : cc) bytes += which == 0 ? 4.0 * elems(c.y) : which == 1 ? 4.0 * elems(c.x) : 0.0;
    const double t = median_seconds(
        [&] {
          for (auto& c : cc) {
            const auto& w = with_w ? *c.w : *c.w0;
            if (which == 0) {
              c.y = torch::empty_like(c.y);
              east::sparse::conv2d_forward(c.g, c.x.data_ptr<float>(), w, c.y.data_ptr<float>());
            } else if (which == 1) {
              c.dx = torch::empty_like(c.dx);
              east::sparse::conv2d_grad_input(c.g, c.dy.data_ptr<float>(), w, c.dx.data_ptr<float>());
            } else {
              east::sparse::conv2d_grad_weight(c.g, c.x.data_ptr<float>(), c.dy.data_ptr<float>(), w,
                                               c.dw.data_ptr<float>());
            }
          }
        },
        reps);
    rows.push_back({name, cc.size(), t, bytes, in_step});
  };
  time_convs("east sparse conv forward", true, true, 0);
  time_convs("east sparse conv input gradient", true, true, 1);
  time_convs("east sparse conv weight gradient", true, true, 2);
  time_convs("  (conv forward, empty masks: zero-fill only)", false, false, 0);
  time_convs("  (conv input gradient, empty masks)", false, false, 1);
  {  // dense stem conv, pool, fc, loss with autograd
    auto xs = x.detach();
    const double t = median_seconds(
        [&] {
          auto h = net.stem->forward(xs);
          auto p = torch::adaptive_avg_pool2d(h, {1, 1}).flatten(1).repeat({1, 8});  // 64 → fc's 512
          auto l = torch::nn::functional::cross_entropy(net.fc->forward(p), lab);
          l.backward();
        },
        reps);
    rows.push_back({"torch stem conv + pool + fc + loss, fwd+bwd", 1, t, 0.0, true});
  }
  std::printf(
      "\nBreakdown, input %ldx%ldx%ld, batch %ld, %d threads, density %g; streaming bandwidth %.1f GB/s\n",
      ch, hw, hw, cfg.batch, cfg.threads, cfg.density, bw / 1e9);
  std::printf(
      "| piece | calls | ms | bytes moved MB | floor ms at %.0f GB/s | x floor "
      "|\n|---|---|---|---|---|---|\n",
      bw / 1e9);
  double sum = 0;
  for (const auto& r : rows) {
    const double floor_ms = 1e3 * r.bytes / bw;
    std::printf("| %s%s | %zu | %.1f | %.0f | %.1f | %s |\n", r.name.c_str(), r.in_step ? " *" : "", r.calls,
                1e3 * r.seconds, r.bytes / 1e6, floor_ms,
                r.bytes > 0
                    ? std::to_string(static_cast<int>(std::lround(r.seconds * 1e3 / floor_ms))).c_str()
                    : "-");
    if (r.in_step) sum += r.seconds;
  }
  std::printf("| sum of * rows | | %.1f | | | |\n", 1e3 * sum);
  std::printf("| whole east step (fused) | | %.1f | | | |\n", 1e3 * t_step);
  std::printf("| rest: autograd, allocation, SGD, tensor bookkeeping | | %.1f | | | |\n",
              1e3 * (t_step - sum));
  std::printf("| whole east step, empty masks | | %.1f | | | |\n", 1e3 * t_empty);
  std::printf("| whole east step, torch BN/add/ReLU (unfused) | | %.1f | | | |\n", 1e3 * t_unfused);
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  for (int i = 1; i < argc; ++i) {
    if (!std::strncmp(argv[i], "--batch=", 8))
      cfg.batch = std::stol(argv[i] + 8);
    else if (!std::strncmp(argv[i], "--threads=", 10))
      cfg.threads = std::stoi(argv[i] + 10);
    else if (!std::strncmp(argv[i], "--steps=", 8))
      cfg.steps = std::stoi(argv[i] + 8);
    else if (!std::strncmp(argv[i], "--density=", 10))
      cfg.density = std::stod(argv[i] + 10);
    else if (!std::strncmp(argv[i], "--only=", 7))
      cfg.only = argv[i] + 7;
    else if (!std::strcmp(argv[i], "--check"))
      cfg.check = true;
    else if (!std::strcmp(argv[i], "--unfused"))
      cfg.fused = false;
    else if (!std::strcmp(argv[i], "--breakdown"))
      cfg.breakdown = true;
    else if (!std::strncmp(argv[i], "--hw=", 5))
      cfg.hw = std::stol(argv[i] + 5);
  }
  // glibc returns large freed blocks to the OS, so every step's fresh activation tensors
  // page-fault again (a fifth of the sparse step in perf). Keep freed memory for reuse, for
  // both variants alike (what jemalloc/tcmalloc or a caching allocator would do).
  if (!std::getenv("EAST_BENCH_DEFAULT_MALLOC")) {
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  }
  at::set_num_threads(cfg.threads);
  east::kernels::set_threads(cfg.threads);
  torch::manual_seed(0);
  std::printf(
      "ResNet-34 (CIFAR-style, full width) training step, batch %ld, %d threads, density %g, median of %d\n",
      cfg.batch, cfg.threads, cfg.density, cfg.steps);
  std::printf(
      "| input | masked-dense libtorch s | east sparse s | speed-up | east, torch BN/add/ReLU s | "
      "east, empty masks s | weights+momentum dense MB | compact MB | smaller |\n"
      "|---|---|---|---|---|---|---|---|---|\n");
  if (cfg.check) {
    // Each layer alone through autograd: SparseConv2d vs torch::conv2d with the masked weight.
    double lworst = 0;
    for (auto [cin, cout, hw, k, st, pd] : std::vector<std::array<long, 6>>{
             {64, 64, 32, 3, 1, 1}, {64, 128, 32, 3, 2, 1}, {256, 512, 8, 1, 2, 0}, {512, 512, 4, 3, 1, 1}}) {
      auto w = torch::randn({cout, cin, k, k});
      const auto mask = random_mask(static_cast<std::size_t>(w.numel()), cfg.density, 7);
      const auto mf = mask.to_floats();
      w.mul_(torch::from_blob(const_cast<float*>(mf.data()), w.sizes(), torch::kFloat));
      east::sparse::SparseConv2d sc(w, mask, static_cast<std::size_t>(st), static_cast<std::size_t>(pd));
      auto x1 = torch::randn({cfg.batch, cin, hw, hw}).requires_grad_(true);
      auto x2 = x1.detach().clone().requires_grad_(true);
      auto wd = w.clone().requires_grad_(true);
      auto y1 = sc->forward(x1);
      auto y2 = torch::conv2d(x2, wd, {}, st, pd);
      const auto dy = torch::randn_like(y2);
      y1.backward(dy);
      y2.backward(dy);
      auto gd = torch::zeros_like(w);
      sc->state().weight.scatter_array(sc->values().grad().data_ptr<float>(), gd.data_ptr<float>());
      auto rel = [](const at::Tensor& a, const at::Tensor& b) {
        return (a - b).abs().max().item<double>() / std::max(1e-30, b.abs().max().item<double>());
      };
      const double ey = rel(y1, y2), ex = rel(x1.grad(), x2.grad()), ew = rel(gd, wd.grad() * (w != 0));
      std::printf("layer %ld->%ld %ldx%ld k%ld s%ld: rel diff y %.2g dx %.2g dw %.2g\n", cin, cout, hw, hw, k,
                  st, ey, ex, ew);
      lworst = std::max({lworst, ey, ex, ew});
    }
    // The sparse net built from the masked-dense one must follow the same trajectory.
    const auto x = torch::randn({cfg.batch, 3, 32, 32});
    const auto y = torch::randint(0, 10, {cfg.batch}, torch::kLong);
    Net dense(false, cfg.density, 3);
    Net sparse(true, cfg.density, 3, &dense);
    // Gradients of one backward, layer by layer, relative to the layer's largest gradient.
    for (Net* n : {&dense, &sparse}) torch::nn::functional::cross_entropy(n->forward(x), y).backward();
    double gworst = 0;
    for (std::size_t i = 0; i < dense.convs.size(); ++i) {
      auto& sc = sparse.convs[i].sparse;
      auto gd = torch::zeros_like(dense.convs[i].dense->weight);
      sc->state().weight.scatter_array(sc->values().grad().data_ptr<float>(), gd.data_ptr<float>());
      const auto ref = dense.convs[i].dense->weight.grad() * dense.convs[i].mask;
      const double scale = ref.abs().max().item<double>();
      const double e = scale > 0 ? (gd - ref).abs().max().item<double>() / scale : 0.0;
      if (std::getenv("EAST_CHECK_VERBOSE"))
        std::printf("conv%zu %s grad rel diff %.3g\n", i,
                    c10::str(dense.convs[i].dense->weight.sizes()).c_str(), e);
      gworst = std::max(gworst, e);
    }
    {  // Regrowth scores via libtorch's weight gradient, block by block, vs the dense gradient.
      auto x = torch::randn({cfg.batch, 64, 16, 16});
      auto dy = torch::randn({cfg.batch, 128, 8, 8});
      const auto w = torch::zeros({128, 64, 3, 3});
      const auto full = std::get<1>(at::convolution_backward(dy, x, w, c10::nullopt, {2, 2}, {1, 1}, {1, 1},
                                                             false, {0, 0}, 1, {false, true, false}));
      const auto mask = random_mask(static_cast<std::size_t>(w.numel()), 0.1, 3);
      const auto top = east::sparse::top_inactive_gradient(
          mask, 128, 64 * 9, 100, east::sparse::torch_conv2d_grad_weight_rows(x, dy, 3, 3, 2, 1),
          /*block_rows=*/40);
      double e = 0;
      for (std::size_t i = 0; i < top.index.size(); ++i)
        e = std::max(e,
                     std::fabs(top.grad[i] - full.view(-1)[static_cast<long>(top.index[i])].item<double>()));
      std::printf(
          "torch_conv2d_grad_weight_rows + top_inactive_gradient: %zu picked, largest value difference "
          "%.3g\n",
          top.index.size(), e);
      lworst = std::max(lworst, e);
    }
    std::printf(
        "whole net, sparse vs masked-dense: largest conv gradient difference (relative to the layer's "
        "largest): %.3g\n",
        gworst);
    {  // Float64 copy of the masked-dense net: how far each float32 run is from exact.
      Net dd(false, cfg.density, 3);
      {
        torch::NoGradGuard ng;
        auto mine = dd.named_parameters();
        for (auto& p : dense.named_parameters()) mine.find(p.key())->copy_(p.value());
      }
      dd.to(torch::kFloat64);
      torch::nn::functional::cross_entropy(dd.forward(x.to(torch::kFloat64)), y).backward();
      double e_dense = 0, e_sparse = 0;
      for (std::size_t i = 0; i < dense.convs.size(); ++i) {
        const auto m = dense.convs[i].mask;
        const auto ref = dd.convs[i].dense->weight.grad().to(torch::kFloat) * m;
        const double sc = ref.abs().max().item<double>();
        if (sc == 0) continue;
        auto& spc = sparse.convs[i].sparse;
        auto gs = torch::zeros_like(ref);
        spc->state().weight.scatter_array(spc->values().grad().data_ptr<float>(), gs.data_ptr<float>());
        e_dense = std::max(e_dense,
                           (dense.convs[i].dense->weight.grad() * m - ref).abs().max().item<double>() / sc);
        e_sparse = std::max(e_sparse, (gs - ref).abs().max().item<double>() / sc);
      }
      std::printf(
          "whole net vs a float64 masked-dense run: largest conv gradient error: masked-dense float32 %.3g, "
          "east sparse float32 %.3g\n",
          e_dense, e_sparse);
    }
    for (Net* n : {&dense, &sparse})
      for (auto& p : n->parameters())
        if (p.grad().defined()) p.mutable_grad().zero_();
    std::vector<double> ld, ls;
    step_seconds(sparse, x, y, cfg.steps, &ls);  // before dense: it copied dense's initial weights
    step_seconds(dense, x, y, cfg.steps, &ld);
    double worst = 0;
    for (std::size_t i = 0; i < ld.size(); ++i) {
      std::printf("step %zu loss masked-dense %.7f sparse %.7f\n", i, ld[i], ls[i]);
      worst = std::max(worst, std::fabs(ld[i] - ls[i]) / std::fabs(ld[i]));
    }
    double wdiff = 0;
    for (std::size_t i = 0; i < dense.convs.size(); ++i)
      wdiff = std::max(
          wdiff,
          (dense.convs[i].dense->weight - sparse.convs[i].sparse->to_dense()).abs().max().item<double>());
    std::printf("largest relative loss difference %.3g, largest weight difference after %zu steps %.3g\n",
                worst, ld.size(), wdiff);
    return lworst < 1e-4 ? 0 : 1;
  }
  if (cfg.breakdown) {
    breakdown(cfg);
    return 0;
  }
  if (!cfg.only.empty()) {
    const auto x = torch::randn({cfg.batch, 3, 32, 32});
    const auto y = torch::randint(0, 10, {cfg.batch}, torch::kLong);
    Net net(cfg.only != "dense", cfg.only == "empty" ? 0.0 : cfg.density, 3, nullptr, cfg.fused);
    std::printf("%s step: %.3f s\n", cfg.only.c_str(), step_seconds(net, x, y, cfg.steps));
    return 0;
  }
  for (long hw : {32L, 28L}) {
    const long ch = hw == 32 ? 3 : 1;
    const auto x = torch::randn({cfg.batch, ch, hw, hw});
    const auto y = torch::randint(0, 10, {cfg.batch}, torch::kLong);
    Net dense(false, cfg.density, ch), sparse(true, cfg.density, ch, nullptr, cfg.fused),
        unfused(true, cfg.density, ch, nullptr, false), empty(true, 0.0, ch, nullptr, cfg.fused);
    const double td = step_seconds(dense, x, y, cfg.steps);
    const double ts = step_seconds(sparse, x, y, cfg.steps);
    const double tu = step_seconds(unfused, x, y, cfg.steps);
    const double te = step_seconds(empty, x, y, cfg.steps);
    const double md = state_bytes(dense) / 1e6, ms = state_bytes(sparse) / 1e6;
    std::printf("| %ldx%ldx%ld | %.3f | %.3f | x%.1f | %.3f | %.3f | %.1f | %.2f | x%.0f |\n", ch, hw, hw, td,
                ts, td / ts, tu, te, md, ms, md / ms);
    std::fflush(stdout);
    if (hw == 32) std::printf("(prunable conv weights: %zu)\n", dense.prunable);
  }
  return 0;
}
