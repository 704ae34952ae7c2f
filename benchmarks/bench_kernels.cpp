// Kernel benchmarks: exact selection, mask update (select + mark), mask application and the
// fused masked SGD step, each against its baselines in the same run (see docs/benchmarks.md).
//
//   east_bench_kernels [--sizes=1000000,25600000] [--ks=0.1,1,10,50] [--threads=1,2]
//                      [--baselines=all|fast|none] [google benchmark flags...]
#include "bench_common.hpp"

#include <algorithm>
#include <cstdlib>
#include <functional>

namespace east::bench {

#if defined(EAST_BENCH_HAS_TORCH)
void register_torch(const Options& o);  // bench_torch.cpp
#endif

template <class T>
std::vector<T> parse_list(const std::string& s) {
  std::vector<T> out;
  std::istringstream is(s);
  for (std::string f; std::getline(is, f, ',');) out.push_back(static_cast<T>(std::stod(f)));
  return out;
}

Options parse(int& argc, char** argv) {
  Options o;
  int w = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--sizes=", 0) == 0)
      o.sizes = parse_list<std::size_t>(a.substr(8));
    else if (a.rfind("--ks=", 0) == 0)
      o.ks = parse_list<double>(a.substr(5));
    else if (a.rfind("--threads=", 0) == 0)
      o.threads = parse_list<int>(a.substr(10));
    else if (a.rfind("--baselines=", 0) == 0)
      o.baselines = a.substr(12);
    else
      argv[w++] = argv[i];
  }
  argc = w;
  return o;
}

void use_threads(int t) { kernels::set_threads(t); }

void register_all(const Options& o) {
  using namespace east::kernels;
  for (std::size_t n : o.sizes) {
    const std::string N = "N=" + human(n);
    for (int t : o.threads) {
      add(name("stream", "read", N + ",t=" + std::to_string(t)), [n, t](benchmark::State& s) {
        const auto& w = weights(n);
        for (auto _ : s) benchmark::DoNotOptimize(stream_read(w.data(), n, t));
        s.SetBytesProcessed(static_cast<std::int64_t>(s.iterations() * n * 4));
      });
    }
    for (double pct : o.ks) {
      const std::size_t k = k_of(n, pct);
      const std::string cfg = N + ",k=" + kname(pct);
      for (int t : o.threads) {
        const std::string c = cfg + ",t=" + std::to_string(t);
        // Pruning step: the k smallest |w| among all weights.
        add(name("select", "east", c), [n, k, t](benchmark::State& s) {
          use_threads(t);
          const auto& w = weights(n);
          for (auto _ : s) benchmark::DoNotOptimize(select_abs(w.data(), n, k, Extreme::smallest));
          s.SetBytesProcessed(static_cast<std::int64_t>(s.iterations() * n * 4));
          use_threads(1);
        });
        // Mask update = selection + writing the mask bits.
        add(name("update", "east", c), [n, k, t](benchmark::State& s) {
          use_threads(t);
          const auto& w = weights(n);
          std::vector<std::uint64_t> bits(words_for(n));
          for (auto _ : s) {
            std::fill(bits.begin(), bits.end(), 0);
            const Selection sel = select_abs(w.data(), n, k, Extreme::smallest);
            mark_selected_abs(w.data(), n, sel, Extreme::smallest, nullptr, Among::all, bits.data());
            benchmark::DoNotOptimize(bits.data());
          }
          use_threads(1);
        });
      }
      if (o.baselines == "none") continue;
      const std::string c1 = cfg + ",t=1";
      // What a straightforward C++ mask update does: copy the keys, std::nth_element.
      add(
          name("select", "nth_element", c1),
          [n, k](benchmark::State& s) {
            const auto& w = weights(n);
            std::vector<std::uint32_t> keys(n);
            for (auto _ : s) {
              for (std::size_t i = 0; i < n; ++i) keys[i] = abs_key(w[i]);
              std::nth_element(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(k > 0 ? k - 1 : 0),
                               keys.end());
              benchmark::DoNotOptimize(keys.data());
            }
          },
          1);
      add(
          name("update", "nth_element", c1),
          [n, k](benchmark::State& s) {
            const auto& w = weights(n);
            std::vector<std::uint32_t> keys(n);
            std::vector<std::uint64_t> bits(words_for(n));
            for (auto _ : s) {
              for (std::size_t i = 0; i < n; ++i) keys[i] = abs_key(w[i]);
              std::nth_element(keys.begin(), keys.begin() + static_cast<std::ptrdiff_t>(k > 0 ? k - 1 : 0),
                               keys.end());
              const std::uint32_t thr = keys[k > 0 ? k - 1 : 0];
              std::fill(bits.begin(), bits.end(), 0);
              for (std::size_t i = 0; i < n; ++i)  // ties not resolved: a lower bound on its cost
                if (abs_key(w[i]) < thr) bits[i >> 6] |= std::uint64_t{1} << (i & 63);
              benchmark::DoNotOptimize(bits.data());
            }
          },
          1);
      if (o.baselines == "all" && (n == o.sizes.front() || n == o.sizes.back()) && pct == 1.0) {
        add(
            name("select", "reference", c1),
            [n, k](benchmark::State& s) {
              const auto& w = weights(n);
              for (auto _ : s)
                benchmark::DoNotOptimize(reference::select_abs(w.data(), n, k, Extreme::smallest));
            },
            1);
      }
    }
  }
#if defined(EAST_BENCH_HAS_TORCH)
  if (o.baselines == "all") register_torch(o);
#endif

  // Mask application and the fused SGD step at the largest size, three densities.
  const std::size_t n = *std::max_element(o.sizes.begin(), o.sizes.end());
  const std::string N = "N=" + human(n);
  for (double density : {1.0, 0.1, 0.001}) {
    std::ostringstream ds;
    ds << "d=" << density * 100 << "%";
    for (int t : o.threads) {
      const std::string c = N + "," + ds.str() + ",t=" + std::to_string(t);
      // Re-applying a mask to weights whose pruned entries are zero already (the steady state).
      add(name("apply", "east", c), [n, density, t](benchmark::State& s) {
        use_threads(t);
        std::vector<float> w = weights(n);
        const auto mask = random_mask(n, density, 7);
        kernels::apply_mask(w.data(), mask.data(), n);
        for (auto _ : s) {
          kernels::apply_mask(w.data(), mask.data(), n);
          benchmark::DoNotOptimize(w.data());
        }
        use_threads(1);
      });
      // SGD with momentum 0.9, weight decay 5e-4, under the mask, one pass.
      add(name("sgd", "east", c), [n, density, t](benchmark::State& s) {
        use_threads(t);
        std::vector<float> w = weights(n), g(n, 1e-3f), b(n, 0.0f);
        const auto mask = random_mask(n, density, 7);
        kernels::SgdParams p;
        p.lr = 1e-3f;
        p.momentum = 0.9f;
        p.weight_decay = 5e-4f;
        for (auto _ : s) {
          kernels::masked_sgd(w.data(), g.data(), b.data(), mask.data(), n, p);
          benchmark::DoNotOptimize(w.data());
        }
        use_threads(1);
      });
    }
    if (o.baselines == "none") continue;
    const std::string c1 = N + "," + ds.str() + ",t=1";
    add(name("apply", "reference", c1), [n, density](benchmark::State& s) {
      std::vector<float> w = weights(n);
      const auto mask = random_mask(n, density, 7);
      for (auto _ : s) {
        kernels::reference::apply_mask(w.data(), mask.data(), n);
        benchmark::DoNotOptimize(w.data());
      }
    });
    add(name("sgd", "reference", c1), [n, density](benchmark::State& s) {
      std::vector<float> w = weights(n), g(n, 1e-3f), b(n, 0.0f);
      const auto mask = random_mask(n, density, 7);
      kernels::SgdParams p;
      p.lr = 1e-3f;
      p.momentum = 0.9f;
      p.weight_decay = 5e-4f;
      for (auto _ : s) {
        kernels::reference::masked_sgd(w.data(), g.data(), b.data(), mask.data(), n, p);
        benchmark::DoNotOptimize(w.data());
      }
    });
    // What dense-mask libraries do: a dense SGD step, then the mask applied to w and the buffer.
    add(name("sgd", "dense+mask", c1), [n, density](benchmark::State& s) {
      std::vector<float> w = weights(n), g(n, 1e-3f), b(n, 0.0f), m(n);
      const auto bits = random_mask(n, density, 7);
      for (std::size_t i = 0; i < n; ++i) m[i] = kernels::test_bit(bits.data(), i) ? 1.0f : 0.0f;
      for (auto _ : s) {
        for (std::size_t i = 0; i < n; ++i) {
          const float gi = g[i] + 5e-4f * w[i];
          b[i] = 0.9f * b[i] + gi;
          w[i] -= 1e-3f * b[i];
        }
        for (std::size_t i = 0; i < n; ++i) {
          w[i] *= m[i];
          b[i] *= m[i];
        }
        benchmark::DoNotOptimize(w.data());
      }
    });
  }
}

}  // namespace east::bench

int main(int argc, char** argv) {
  const auto opts = east::bench::parse(argc, argv);
  benchmark::Initialize(&argc, argv);
  east::bench::register_all(opts);
  std::printf("east kernels: ISA %s, threads %s\n", east::kernels::isa_name(east::kernels::active_isa()),
              "per benchmark (t=)");
  // Minimum bytes per weight each family must move (docs/benchmarks.md, ../shared/PERF.md).
  east::bench::RatioReporter reporter({{"select", 4.0}, {"update", 4.0}, {"apply", 4.125}, {"sgd", 20.125}});
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
