// Linear layers of an MLP (784→1024, 1024→1024, 1024→10, batch 128): east's sparse kernels at
// several densities against a dense Eigen GEMM of the same layer, in the same binary and thread
// count. Three sparse paths (sparse/linear.hpp):
//   fm        feature-major activations ({features, batch}): no transposes
//   bm_t      batch-major, transposed into feature-major scratch per call
//   bm_d      batch-major, gathered directly (what the library picks when nnz < rows + cols)
// fwd = y = x Wᵀ; bwd = input gradient + weight gradient at the stored positions (dense: dX and
// the whole dW). Prints the Google Benchmark table, then a markdown table of medians and
// speed-ups, the crossover density of each path (log-linear interpolation where sparse fwd + bwd
// equals dense), and where the batch-major direct path stops beating the transposed one. With
// 1 thread the tables use CPU time (robust to other load on a shared machine), else wall time.
//   east_bench_sparse_linear [--batch=128] [--threads=1] [google benchmark flags]
#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <east/sparse/sparse.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
namespace sd = east::sparse::detail;

struct LayerShape {
  const char* name;
  std::size_t in, out;
};
const LayerShape kLayers[] = {{"784x1024", 784, 1024}, {"1024x1024", 1024, 1024}, {"1024x10", 1024, 10}};
const double kDensities[] = {0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.3};
const char* kPaths[] = {"fm", "bm_t", "bm_d"};

std::size_t g_batch = 128;
int g_threads = 1;

std::vector<float> randn(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// Exactly k active positions, uniformly at random.
east::sparse::CsrWeight make_weight_nnz(const LayerShape& l, std::size_t k) {
  const std::size_t n = l.in * l.out;
  std::vector<std::size_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::mt19937_64 rng(k * 131 + l.in * 7 + l.out);
  for (std::size_t i = 0; i < k; ++i) std::swap(idx[i], idx[i + rng() % (n - i)]);
  east::BitMask m(n);
  for (std::size_t i = 0; i < k; ++i) m.set(idx[i]);
  const auto w = randn(n, 1);
  return east::sparse::CsrWeight(w.data(), m, l.out, l.in);
}
// round(density · size) active positions (at least 1).
east::sparse::CsrWeight make_weight(const LayerShape& l, double density) {
  return make_weight_nnz(
      l, std::max<std::size_t>(
             1, static_cast<std::size_t>(std::llround(density * static_cast<double>(l.in * l.out)))));
}
// The batch-major rule: nnz = (rows + cols) · kRuleFactors[k].
const double kRuleFactors[] = {1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0 / 2, 1.0};
std::size_t rule_nnz(const LayerShape& l, double f) {
  return std::max<std::size_t>(1, static_cast<std::size_t>(f * static_cast<double>(l.in + l.out)));
}

void add(const std::string& name, std::function<void(benchmark::State&)> fn) {
  benchmark::RegisterBenchmark(name.c_str(), [fn](benchmark::State& s) { fn(s); })
      ->Unit(benchmark::kMicrosecond)
      ->MinTime(0.1)
      ->Repetitions(3)
      ->ReportAggregatesOnly(true);
}

std::string dname(double d) {
  char b[32];
  std::snprintf(b, sizeof b, "%g%%", d * 100);
  return b;
}

// One path's forward and backward, with the layout conversions it implies.
void forward(int path, const float* x, const east::sparse::CsrWeight& wt, float* y, std::vector<float>& xt,
             std::vector<float>& yt) {
  const std::size_t B = g_batch, in = wt.cols(), out = wt.rows();
  if (path == 0) return sd::linear_forward_fm(x, B, wt, y, nullptr);
  if (path == 2) return sd::linear_forward_direct(x, B, wt, y, nullptr);
  xt.resize(in * B), yt.resize(out * B);  // as linear_forward's transposed branch
  sd::transpose(x, B, in, xt.data());
  sd::linear_forward_fm(xt.data(), B, wt, yt.data(), nullptr);
  sd::transpose(yt.data(), out, B, y);
}
void backward(int path, const float* x, const float* dy, const east::sparse::CsrWeight& wt, float* dx,
              float* gw, std::vector<float>& xt, std::vector<float>& dyt, std::vector<float>& dxt) {
  const std::size_t B = g_batch, in = wt.cols(), out = wt.rows();
  if (path == 0) {
    sd::linear_grad_input_fm(dy, B, wt, dx);
    return sd::linear_grad_weight_fm(x, dy, B, wt, gw);
  }
  if (path == 2) {
    sd::linear_grad_input_direct(dy, B, wt, dx);
    return sd::linear_grad_weight_direct(x, dy, B, wt, gw);
  }
  xt.resize(in * B), dyt.resize(out * B), dxt.resize(in * B);  // as the public functions do
  sd::transpose(dy, B, out, dyt.data());
  sd::linear_grad_input_fm(dyt.data(), B, wt, dxt.data());
  sd::transpose(dxt.data(), in, B, dx);
  sd::transpose(x, B, in, xt.data());
  sd::transpose(dy, B, out, dyt.data());
  sd::linear_grad_weight_fm(xt.data(), dyt.data(), B, wt, gw);
}

void register_all() {
  for (const auto& l : kLayers) {
    const std::string L = l.name;
    for (double d : kDensities) {
      const std::string D = dname(d);
      for (int p = 0; p < 3; ++p) {
        add(std::string("fwd/") + kPaths[p] + "/" + L + "/" + D, [l, d, p](benchmark::State& s) {
          east::kernels::set_threads(g_threads);
          const auto wt = make_weight(l, d);
          const auto x = randn(g_batch * l.in, 2);
          std::vector<float> y(g_batch * l.out), xt, yt;
          for (auto _ : s) {
            forward(p, x.data(), wt, y.data(), xt, yt);
            benchmark::DoNotOptimize(y.data());
          }
          s.counters["nnz"] = static_cast<double>(wt.nnz());
        });
        add(std::string("bwd/") + kPaths[p] + "/" + L + "/" + D, [l, d, p](benchmark::State& s) {
          east::kernels::set_threads(g_threads);
          const auto wt = make_weight(l, d);
          const auto x = randn(g_batch * l.in, 2), dy = randn(g_batch * l.out, 3);
          std::vector<float> dx(g_batch * l.in), gw(wt.nnz()), xt, dyt, dxt;
          for (auto _ : s) {
            backward(p, x.data(), dy.data(), wt, dx.data(), gw.data(), xt, dyt, dxt);
            benchmark::DoNotOptimize(dx.data());
            benchmark::DoNotOptimize(gw.data());
          }
        });
      }
    }
    // The batch-major paths at nnz = (rows + cols) · f: where does gathering directly stop paying?
    for (double f : kRuleFactors)
      for (int p = 1; p < 3; ++p)
        add(std::string("rule/") + kPaths[p] + "/" + L + "/" + std::to_string(rule_nnz(l, f)),
            [l, f, p](benchmark::State& s) {
              east::kernels::set_threads(g_threads);
              const auto wt = make_weight_nnz(l, rule_nnz(l, f));
              const auto x = randn(g_batch * l.in, 2), dy = randn(g_batch * l.out, 3);
              std::vector<float> y(g_batch * l.out), dx(g_batch * l.in), gw(wt.nnz()), xt, yt, dyt, dxt;
              for (auto _ : s) {
                forward(p, x.data(), wt, y.data(), xt, yt);
                backward(p, x.data(), dy.data(), wt, dx.data(), gw.data(), xt, dyt, dxt);
                benchmark::DoNotOptimize(y.data());
                benchmark::DoNotOptimize(gw.data());
              }
            });
    // The dense weight gradient a RigL mask update asks of a compact layer (feature-major
    // captures) against the same product as an Eigen GEMM.
    add("dgrad/rows/" + L, [l](benchmark::State& s) {
      east::kernels::set_threads(g_threads);
      const auto x = randn(g_batch * l.in, 2), dy = randn(g_batch * l.out, 3);
      std::vector<float> gw(l.in * l.out);
      for (auto _ : s) {
        east::sparse::linear_grad_weight_rows(x.data(), dy.data(), g_batch, l.in, l.out, 0, l.out, gw.data(),
                                              east::sparse::Layout::feature_major);
        benchmark::DoNotOptimize(gw.data());
      }
    });
    add("dgrad/eigen/" + L, [l](benchmark::State& s) {
      Eigen::setNbThreads(g_threads);
      const auto x = randn(g_batch * l.in, 2), dy = randn(g_batch * l.out, 3);
      const Eigen::Map<const Matrix> X(x.data(), l.in, g_batch), DY(dy.data(), l.out, g_batch);
      Matrix GW(l.out, l.in);
      for (auto _ : s) {
        GW.noalias() = DY * X.transpose();
        benchmark::DoNotOptimize(GW.data());
      }
    });
    // Dense baseline: Eigen GEMMs on {out, in} row-major W and {features, batch} activations.
    add("fwd/dense/" + L, [l](benchmark::State& s) {
      Eigen::setNbThreads(g_threads);
      const auto w = randn(l.in * l.out, 1), x = randn(g_batch * l.in, 2);
      const Eigen::Map<const Matrix> W(w.data(), l.out, l.in), X(x.data(), l.in, g_batch);
      Matrix Y(l.out, g_batch);
      for (auto _ : s) {
        Y.noalias() = W * X;
        benchmark::DoNotOptimize(Y.data());
      }
    });
    add("bwd/dense/" + L, [l](benchmark::State& s) {
      Eigen::setNbThreads(g_threads);
      const auto w = randn(l.in * l.out, 1), x = randn(g_batch * l.in, 2), dy = randn(g_batch * l.out, 3);
      const Eigen::Map<const Matrix> W(w.data(), l.out, l.in), X(x.data(), l.in, g_batch),
          DY(dy.data(), l.out, g_batch);
      Matrix DX(l.in, g_batch), GW(l.out, l.in);
      for (auto _ : s) {
        DX.noalias() = W.transpose() * DY;
        GW.noalias() = DY * X.transpose();
        benchmark::DoNotOptimize(DX.data());
        benchmark::DoNotOptimize(GW.data());
      }
    });
  }
}

// Collects medians; prints the markdown table and crossovers after the console output.
class TableReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs)
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name == "median")
        // unit: µs. One thread: the process's CPU time, which a shared machine's other load
        // disturbs far less than wall time; more threads: wall time.
        us_[r.run_name.function_name] = g_threads == 1 ? r.GetAdjustedCPUTime() : r.GetAdjustedRealTime();
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::printf(
        "\n%s time, medians:\n| layer (in x out, batch %zu, %d thread(s)) | density | nnz | dense fwd+bwd us "
        "| fm fwd+bwd us | "
        "bm_t fwd+bwd us | bm_d fwd+bwd us | fm speed-up | bm_t speed-up | bm_d speed-up | bm_d/bm_t |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n",
        g_threads == 1 ? "CPU" : "wall", g_batch, g_threads);
    for (const auto& l : kLayers) {
      const std::string L = l.name;
      const double dense = get("fwd/dense/" + L) + get("bwd/dense/" + L);
      double prev_d[3] = {0, 0, 0}, prev_r[3] = {0, 0, 0}, cross[3] = {-1, -1, -1};
      double direct_wins_below = -1;
      for (double d : kDensities) {
        const std::string D = dname(d);
        double t[3];
        for (int p = 0; p < 3; ++p)
          t[p] = get(std::string("fwd/") + kPaths[p] + "/" + L + "/" + D) +
                 get(std::string("bwd/") + kPaths[p] + "/" + L + "/" + D);
        const auto nnz = std::max<long long>(1, std::llround(d * static_cast<double>(l.in * l.out)));
        std::printf("| %s | %s | %lld | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f | %.2f | %.2f |\n", L.c_str(),
                    D.c_str(), nnz, dense, t[0], t[1], t[2], dense / t[0], dense / t[1], dense / t[2],
                    t[2] / t[1]);
        if (t[2] < t[1]) direct_wins_below = d;
        for (int p = 0; p < 3; ++p) {
          const double r = dense / t[p];  // > 1: sparse wins
          if (cross[p] < 0 && prev_d[p] > 0 && prev_r[p] >= 1 && r < 1)
            cross[p] = std::exp(std::log(prev_d[p]) + (std::log(d) - std::log(prev_d[p])) *
                                                          (0 - std::log(prev_r[p])) /
                                                          (std::log(r) - std::log(prev_r[p])));
          if (prev_d[p] == 0 && r < 1) cross[p] = 0;  // dense wins at every measured density
          prev_d[p] = d;
          prev_r[p] = r;
        }
      }
      for (int p = 0; p < 3; ++p) {
        if (cross[p] < 0)
          std::printf("crossover %s %s: above %s (sparse wins everywhere measured)\n", L.c_str(), kPaths[p],
                      dname(kDensities[sizeof kDensities / sizeof kDensities[0] - 1]).c_str());
        else if (cross[p] == 0)
          std::printf("crossover %s %s: below %s\n", L.c_str(), kPaths[p], dname(kDensities[0]).c_str());
        else
          std::printf("crossover %s %s: %s\n", L.c_str(), kPaths[p], dname(cross[p]).c_str());
      }
      const double rule = static_cast<double>(l.in + l.out) / 16.0 / static_cast<double>(l.in * l.out);
      std::printf(
          "  %s: bm_d beats bm_t up to density %s; gather_directly (16 nnz < rows + cols) switches at %s\n",
          L.c_str(), direct_wins_below < 0 ? "none measured" : dname(direct_wins_below).c_str(),
          dname(rule).c_str());
    }
    std::printf("\nBatch-major paths at nnz = (rows + cols) * f (fwd + bwd, us): direct / transposed\n");
    for (const auto& l : kLayers) {
      const std::string L = l.name;
      std::printf("  %s:", L.c_str());
      for (double f : kRuleFactors) {
        const std::string k = std::to_string(rule_nnz(l, f));
        const double d = get("rule/bm_d/" + L + "/" + k), t = get("rule/bm_t/" + L + "/" + k);
        std::printf("  f=1/%g nnz %s: %.0f/%.0f = %.2f;", 1 / f, k.c_str(), d, t, d / t);
      }
      std::printf("\n");
    }
    std::printf(
        "\nDense weight gradient at a mask update (linear_grad_weight_rows, feature-major) vs Eigen GEMM:\n");
    for (const auto& l : kLayers) {
      const std::string L = l.name;
      const double r = get("dgrad/rows/" + L), e = get("dgrad/eigen/" + L);
      std::printf("  %s: %.1f us vs %.1f us (ratio %.1f)\n", L.c_str(), r, e, r / e);
    }
    std::fflush(stdout);
  }

 private:
  double get(const std::string& k) const {
    const auto it = us_.find(k);
    return it == us_.end() ? NAN : it->second;
  }
  std::map<std::string, double> us_;
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
