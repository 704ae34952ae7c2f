// Per-layer forward / backward of CIFAR-style ResNet-34 convolution shapes: east's sparse
// kernels at several densities against libtorch's dense convolution (torch::conv2d,
// at::convolution_backward) in the same binary, 2 threads each. Prints the usual Google
// Benchmark table, then a markdown table of median times and speed-ups, and the crossover
// density where sparse forward + backward equals dense (log-linear interpolation).
//   east_bench_sparse_conv [--batch=32] [--threads=2] [google benchmark flags]
#include <benchmark/benchmark.h>

#include <east/sparse/sparse.hpp>

#if defined(EAST_BENCH_HAS_TORCH)
#include <torch/torch.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

struct LayerShape {
  const char* name;
  std::size_t c_in, c_out, hw, k, stride, pad;
};

// Every distinct convolution shape of a CIFAR-style ResNet-34 (32×32 input) but the dense stem.
const LayerShape kLayers[] = {
    {"l1.conv3x3", 64, 64, 32, 3, 1, 1},    {"l2.0.conv1_s2", 64, 128, 32, 3, 2, 1},
    {"l2.conv3x3", 128, 128, 16, 3, 1, 1},  {"l2.0.down1x1", 64, 128, 32, 1, 2, 0},
    {"l3.conv3x3", 256, 256, 8, 3, 1, 1},   {"l4.conv3x3", 512, 512, 4, 3, 1, 1},
    {"l4.0.down1x1", 256, 512, 8, 1, 2, 0},
};
// How often each shape occurs in ResNet-34 (3, 4, 6, 3 blocks): for the whole-network sum.
const int kCount[] = {6, 1, 7, 1, 11, 5, 1};
const double kDensities[] = {0.1, 0.03, 0.01, 0.003, 0.001, 0.0001};

std::size_t g_batch = 32;
int g_threads = 2;

std::vector<float> randn(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

east::sparse::Conv2dGeometry geometry(const LayerShape& l) {
  return east::sparse::Conv2dGeometry::square(g_batch, l.c_in, l.hw, l.c_out, l.k, l.stride, l.pad);
}

east::sparse::CsrWeight make_weight(const LayerShape& l, double density) {
  const auto g = geometry(l);
  std::mt19937_64 rng(static_cast<std::uint64_t>(density * 1e6) + l.c_in);
  const auto cut = static_cast<std::uint64_t>(density * 18446744073709551615.0);
  east::BitMask m(g.weight_size());
  for (std::size_t i = 0; i < m.size(); ++i)
    if (rng() < cut) m.set(i);
  const auto w = randn(g.weight_size(), 1);
  return east::sparse::CsrWeight(w.data(), m, l.c_out, l.c_in * l.k * l.k, l.k * l.k);
}

void add(const std::string& name, std::function<void(benchmark::State&)> fn) {
  benchmark::RegisterBenchmark(name.c_str(), [fn](benchmark::State& s) { fn(s); })
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime()
      ->MinTime(0.2)
      ->Repetitions(3)
      ->ReportAggregatesOnly(true);
}

std::string dname(double d) {
  char b[32];
  std::snprintf(b, sizeof b, "%g%%", d * 100);
  return b;
}

void register_all() {
  for (const auto& l : kLayers) {
    const auto g = geometry(l);
    const std::string L = l.name;
    for (double d : kDensities) {
      const std::string D = dname(d);
      add("sparse_fwd/" + L + "/" + D, [l, g, d](benchmark::State& s) {
        east::kernels::set_threads(g_threads);
        const auto wt = make_weight(l, d);
        const auto x = randn(g.input_size(), 2);
        std::vector<float> y(g.output_size());
        for (auto _ : s) {
          east::sparse::conv2d_forward(g, x.data(), wt, y.data());
          benchmark::DoNotOptimize(y.data());
        }
        s.counters["nnz"] = static_cast<double>(wt.nnz());
      });
      add("sparse_bwd/" + L + "/" + D, [l, g, d](benchmark::State& s) {
        east::kernels::set_threads(g_threads);
        const auto wt = make_weight(l, d);
        const auto x = randn(g.input_size(), 2), dy = randn(g.output_size(), 3);
        std::vector<float> dx(g.input_size()), gw(wt.nnz());
        for (auto _ : s) {
          east::sparse::conv2d_grad_input(g, dy.data(), wt, dx.data());
          east::sparse::conv2d_grad_weight(g, x.data(), dy.data(), wt, gw.data());
          benchmark::DoNotOptimize(dx.data());
          benchmark::DoNotOptimize(gw.data());
        }
      });
    }
    // The two halves of sparse_bwd alone, and the floor of the forward and input gradient: one
    // write of their output (the kernels overwrite y / dx), timed in the same binary.
    for (double d : kDensities) {
      const std::string D = dname(d);
      add("sparse_dx/" + L + "/" + D, [l, g, d](benchmark::State& s) {
        east::kernels::set_threads(g_threads);
        const auto wt = make_weight(l, d);
        const auto dy = randn(g.output_size(), 3);
        std::vector<float> dx(g.input_size());
        for (auto _ : s) {
          east::sparse::conv2d_grad_input(g, dy.data(), wt, dx.data());
          benchmark::DoNotOptimize(dx.data());
        }
      });
      add("sparse_dw/" + L + "/" + D, [l, g, d](benchmark::State& s) {
        east::kernels::set_threads(g_threads);
        const auto wt = make_weight(l, d);
        const auto x = randn(g.input_size(), 2), dy = randn(g.output_size(), 3);
        std::vector<float> gw(wt.nnz());
        for (auto _ : s) {
          east::sparse::conv2d_grad_weight(g, x.data(), dy.data(), wt, gw.data());
          benchmark::DoNotOptimize(gw.data());
        }
      });
    }
    add("floor_write_y/" + L, [g](benchmark::State& s) {
      std::vector<float> y(g.output_size(), 1.0f);
      for (auto _ : s) {
        std::fill(y.begin(), y.end(), 0.0f);
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
      }
    });
    add("floor_write_dx/" + L, [g](benchmark::State& s) {
      std::vector<float> dx(g.input_size(), 1.0f);
      for (auto _ : s) {
        std::fill(dx.begin(), dx.end(), 0.0f);
        benchmark::DoNotOptimize(dx.data());
        benchmark::ClobberMemory();
      }
    });
    // Regrowth scores at a mask update (0.1% density, grow 30% of nnz): dense weight gradient of
    // the layer block by block + exact top-k over inactive positions. Compare with dense_bwd.
    add("regrow/" + L + "/0.1%", [l, g](benchmark::State& s) {
      east::kernels::set_threads(g_threads);
      const auto wt = make_weight(l, 0.001);
      east::BitMask mask(g.weight_size());
      for (std::size_t j = 0; j < wt.nnz(); ++j) mask.set(wt.position(j));
      const auto x = randn(g.input_size(), 2), dy = randn(g.output_size(), 3);
      const std::size_t k = std::max<std::size_t>(1, wt.nnz() * 3 / 10);
      for (auto _ : s) {
        auto top = east::sparse::top_inactive_gradient(
            mask, wt.rows(), wt.cols(), k, [&](std::size_t r0, std::size_t r1, float* out) {
              east::sparse::conv2d_grad_weight_rows(g, x.data(), dy.data(), r0, r1, out);
            });
        benchmark::DoNotOptimize(top.index.data());
      }
    });
#if defined(EAST_BENCH_HAS_TORCH)
    add("dense_fwd/" + L + "/dense", [l](benchmark::State& s) {
      at::set_num_threads(g_threads);
      const auto x = torch::randn({static_cast<long>(g_batch), static_cast<long>(l.c_in),
                                   static_cast<long>(l.hw), static_cast<long>(l.hw)});
      const auto w = torch::randn({static_cast<long>(l.c_out), static_cast<long>(l.c_in),
                                   static_cast<long>(l.k), static_cast<long>(l.k)});
      torch::NoGradGuard ng;
      for (auto _ : s) {
        auto y = torch::conv2d(x, w, {}, static_cast<long>(l.stride), static_cast<long>(l.pad));
        benchmark::DoNotOptimize(y.data_ptr());
      }
    });
    add("dense_bwd/" + L + "/dense", [l, g](benchmark::State& s) {
      at::set_num_threads(g_threads);
      const auto x = torch::randn({static_cast<long>(g_batch), static_cast<long>(l.c_in),
                                   static_cast<long>(l.hw), static_cast<long>(l.hw)});
      const auto w = torch::randn({static_cast<long>(l.c_out), static_cast<long>(l.c_in),
                                   static_cast<long>(l.k), static_cast<long>(l.k)});
      const auto dy = torch::randn({static_cast<long>(g_batch), static_cast<long>(l.c_out),
                                    static_cast<long>(g.out_h()), static_cast<long>(g.out_w())});
      const long st = static_cast<long>(l.stride), pd = static_cast<long>(l.pad);
      torch::NoGradGuard ng;
      for (auto _ : s) {
        auto r = at::convolution_backward(dy, x, w, c10::nullopt, {st, st}, {pd, pd}, {1, 1}, false, {0, 0},
                                          1, {true, true, false});
        benchmark::DoNotOptimize(std::get<0>(r).data_ptr());
      }
    });
#endif
  }
}

// Collects medians and prints the markdown table and crossovers after the console output.
class TableReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs)
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name == "median")
        ms_[r.run_name.function_name] = r.GetAdjustedRealTime();  // unit: ms
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::printf(
        "\n| layer (batch %zu, %d threads) | density | sparse fwd ms | sparse bwd ms | dense fwd ms | "
        "dense bwd ms | fwd speed-up | bwd speed-up | fwd+bwd speed-up "
        "|\n|---|---|---|---|---|---|---|---|---|\n",
        g_batch, g_threads);
    std::map<double, double> net_sparse;
    double net_dense = 0;
    for (std::size_t li = 0; li < sizeof kLayers / sizeof kLayers[0]; ++li) {
      const std::string L = kLayers[li].name;
      const double df = get("dense_fwd/" + L + "/dense"), db = get("dense_bwd/" + L + "/dense");
      net_dense += kCount[li] * (df + db);
      double prev_d = 0, prev_r = 0, cross = -1;
      for (double d : kDensities) {
        const std::string D = dname(d);
        const double sf = get("sparse_fwd/" + L + "/" + D), sb = get("sparse_bwd/" + L + "/" + D);
        net_sparse[d] += kCount[li] * (sf + sb);
        const double r = (df + db) / (sf + sb);
        std::printf("| %s | %s | %.3f | %.3f | %.3f | %.3f | %.2f | %.2f | %.2f |\n", L.c_str(), D.c_str(),
                    sf, sb, df, db, df / sf, db / sb, r);
        if (cross < 0 && prev_d > 0 && prev_r < 1 && r >= 1)
          cross = std::exp(std::log(prev_d) + (std::log(d) - std::log(prev_d)) * (0 - std::log(prev_r)) /
                                                  (std::log(r) - std::log(prev_r)));
        if (prev_d == 0 && r >= 1) cross = 2;  // sparse wins at every measured density
        prev_d = d;
        prev_r = r;
      }
      if (cross > 1)
        std::printf("crossover %s: above %s (sparse wins everywhere measured)\n", L.c_str(),
                    dname(kDensities[0]).c_str());
      else if (cross > 0)
        std::printf("crossover %s: %s\n", L.c_str(), dname(cross).c_str());
      else
        std::printf("crossover %s: below %s\n", L.c_str(), dname(prev_d).c_str());
    }
    std::printf("\nRegrowth scores at a mask update (dense dW block by block + top-k inactive), 0.1%%:\n");
    for (std::size_t li = 0; li < sizeof kLayers / sizeof kLayers[0]; ++li) {
      const std::string L = kLayers[li].name;
      const double r = get("regrow/" + L + "/0.1%"), db = get("dense_bwd/" + L + "/dense");
      std::printf("  %s: %.1f ms (libtorch dense backward of the layer: %.1f ms, ratio %.1f)\n", L.c_str(), r,
                  db, r / db);
    }
    std::printf("\nWhole-network conv time (ResNet-34 shape counts), fwd+bwd, batch %zu: dense %.1f ms\n",
                g_batch, net_dense);
    for (auto it = net_sparse.rbegin(); it != net_sparse.rend(); ++it)
      std::printf("  density %s: sparse %.2f ms, speed-up x%.1f\n", dname(it->first).c_str(), it->second,
                  net_dense / it->second);
    std::fflush(stdout);
  }

 private:
  double get(const std::string& k) const {
    const auto it = ms_.find(k);
    return it == ms_.end() ? NAN : it->second;
  }
  std::map<std::string, double> ms_;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--batch=", 8) == 0)
      g_batch = std::stoul(argv[i] + 8);
    else if (std::strncmp(argv[i], "--threads=", 10) == 0)
      g_threads = std::stoi(argv[i] + 10);
    else
      rest.push_back(argv[i]);
  }
  int n = static_cast<int>(rest.size());
  register_all();
  benchmark::Initialize(&n, rest.data());
  TableReporter rep;
  benchmark::RunSpecifiedBenchmarks(&rep);
  return 0;
}
