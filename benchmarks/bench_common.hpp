#pragma once
// Shared pieces of east's benchmark programs: cached inputs, the streaming-read floor, and a
// reporter that prints, after the usual table, each fast path's ratios against the baselines
// measured in the same run (medians over repetitions).
#include <benchmark/benchmark.h>

#include <east/kernels/select.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace east::bench {

/// Benchmark names are "family/impl/config"; ratios compare impls of one family and config.
inline std::string name(const std::string& family, const std::string& impl, const std::string& config) {
  return family + "/" + impl + "/" + config;
}

inline std::string human(std::size_t n) {
  std::ostringstream os;
  if (n % 100000 == 0 && n >= 1000000)
    os << static_cast<double>(n) / 1e6 << "M";
  else
    os << n;
  return os.str();
}

struct Options {
  std::vector<std::size_t> sizes{1000000, 11700000, 21800000, 25600000};  // ResNet-18/34/50 sizes
  std::vector<double> ks{0.1, 1, 10, 50};                                 // percent of N
  std::vector<int> threads{1, 2};
  std::string baselines = "all";  // all: + scalar reference and torch; fast: nth_element only
};

inline std::string kname(double pct) {
  std::ostringstream os;
  os << pct << "%";
  return os.str();
}

inline std::size_t k_of(std::size_t n, double pct) {
  return static_cast<std::size_t>(static_cast<double>(n) * pct / 100.0);
}

/// Registers fn as family/impl/config with `reps` repetitions, medians reported.
inline void add(const std::string& full, std::function<void(benchmark::State&)> fn, int iters = 0) {
  auto* b = benchmark::RegisterBenchmark(full.c_str(), [fn](benchmark::State& s) { fn(s); });
  b->Unit(benchmark::kMillisecond)->UseRealTime()->Repetitions(3)->ReportAggregatesOnly(true);
  if (iters > 0) b->Iterations(iters);
}

/// Deterministic N(0, 0.05) weights, cached per size (the same bytes for every benchmark).
inline const std::vector<float>& weights(std::size_t n) {
  static std::map<std::size_t, std::unique_ptr<std::vector<float>>> cache;
  auto& slot = cache[n];
  if (!slot) {
    slot = std::make_unique<std::vector<float>>(n);
    std::mt19937_64 rng(n);
    std::normal_distribution<float> nd(0.0f, 0.05f);
    for (auto& v : *slot) v = nd(rng);
  }
  return *slot;
}

/// A random mask with the given density (bits beyond n clear).
inline std::vector<std::uint64_t> random_mask(std::size_t n, double density, std::uint64_t seed) {
  std::vector<std::uint64_t> m(kernels::words_for(n), 0);
  std::mt19937_64 rng(seed);
  const auto cut = static_cast<std::uint64_t>(density * 18446744073709551615.0);
  for (std::size_t i = 0; i < n; ++i)
    if (density >= 1.0 || rng() < cut) m[i >> 6] |= std::uint64_t{1} << (i & 63);
  return m;
}

/// One streaming read of n floats (integer sum of the bits, so it vectorizes): the floor.
inline std::uint32_t stream_read(const float* x, std::size_t n, int threads) {
  std::uint32_t acc = 0;
  const auto* u = reinterpret_cast<const std::uint32_t*>(x);
  const auto len = static_cast<std::ptrdiff_t>(n);
#if defined(_OPENMP)
#pragma omp parallel for reduction(+ : acc) num_threads(threads) schedule(static)
#endif
  for (std::ptrdiff_t i = 0; i < len; ++i) acc += u[i];
  (void)threads;
  return acc;
}

/// Console output plus a summary: for every "family/east/config", the median time, each other
/// impl's time divided by it (speed-up), and the fraction of the streaming-read floor reached.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  /// bytes_per_weight: minimum bytes a family must move per weight (for the floor ratio).
  explicit RatioReporter(std::map<std::string, double> bytes_per_weight)
      : bytes_(std::move(bytes_per_weight)) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.run_type != Run::RT_Aggregate || r.aggregate_name != "median") continue;
      const std::string full = r.run_name.function_name;
      const auto a = full.find('/'), b = full.find('/', a + 1);
      if (a == std::string::npos || b == std::string::npos) continue;
      const double secs = r.GetAdjustedRealTime() * unit_seconds(r.time_unit);
      times_[full.substr(0, a)][full.substr(b + 1)][full.substr(a + 1, b - a - 1)] = secs;
    }
  }

  void Finalize() override {
    ConsoleReporter::Finalize();
    std::printf(
        "\n== ratios (median times; speed-up = baseline time / east time; floor = streaming-read time of "
        "the bytes the kernel must move / east time) ==\n");
    for (auto& [family, configs] : times_) {
      if (family == "stream") continue;
      for (auto& [config, impls] : configs) {
        auto east = impls.find("east");
        if (east == impls.end()) continue;
        std::printf("%-8s %-28s east %9.3f ms", family.c_str(), config.c_str(), east->second * 1e3);
        for (auto& [impl, t] : impls)
          if (impl != "east") std::printf(" | %s x%.1f", impl.c_str(), t / east->second);
        for (auto& [impl, t] : single_thread(family, config))
          std::printf(" | %s(t=1) x%.1f", impl.c_str(), t / east->second);
        const double floor = floor_seconds(family, config);
        if (floor > 0) std::printf(" | floor %.0f%%", 100.0 * floor / east->second);
        std::printf("\n");
      }
    }
    std::fflush(stdout);
  }

 private:
  static double unit_seconds(benchmark::TimeUnit u) {
    switch (u) {
      case benchmark::kNanosecond:
        return 1e-9;
      case benchmark::kMicrosecond:
        return 1e-6;
      case benchmark::kMillisecond:
        return 1e-3;
      default:
        return 1.0;
    }
  }
  // Config fields are "N=..,k=..,t=.."; baselines measured on one thread only are matched by
  // replacing t=2 with t=1.
  std::map<std::string, double> single_thread(const std::string& family, const std::string& config) {
    std::map<std::string, double> out;
    const auto pos = config.find("t=");
    if (pos == std::string::npos || config.compare(pos, 3, "t=1") == 0) return out;
    std::string c1 = config;
    c1.replace(pos,
               config.find(',', pos) == std::string::npos ? std::string::npos : config.find(',', pos) - pos,
               "t=1");
    auto it = times_[family].find(c1);
    if (it == times_[family].end()) return out;
    for (auto& [impl, t] : it->second)
      if (impl != "east" && !times_[family][config].count(impl)) out[impl] = t;
    return out;
  }
  double floor_seconds(const std::string& family, const std::string& config) {
    auto bw = bytes_.find(family);
    if (bw == bytes_.end()) return 0;
    // stream config is "N=..,t=..": take N and t from the kernel's config.
    std::string n, t;
    std::istringstream is(config);
    for (std::string f; std::getline(is, f, ',');) {
      if (f.rfind("N=", 0) == 0) n = f;
      if (f.rfind("t=", 0) == 0) t = f;
    }
    auto& s = times_["stream"];
    auto it = s.find(n + "," + t);
    if (it == s.end() || it->second.empty()) return 0;
    return it->second.begin()->second * bw->second / 4.0;  // the stream moves 4 B per weight
  }

  std::map<std::string, double> bytes_;
  std::map<std::string, std::map<std::string, std::map<std::string, double>>> times_;
};

}  // namespace east::bench
