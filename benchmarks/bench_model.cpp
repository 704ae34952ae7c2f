// Whole-model mask update (drop + grow for every layer) for the parameter shapes of ResNet-34
// and ResNet-50 at 99.9% sparsity: RigL and EAST's cyclic schedule, 1 and 2 threads. Each
// iteration also times one streaming read of the same weights and gradients (1 thread), the
// floor of an update that regrows by gradient; the counter x_floor is the median update time ÷
// the median floor time of the same run, so machine load affects both sides alike.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "model_harness.hpp"

namespace {

using namespace east;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

template <class Make>
void bm_update(benchmark::State& s, int depth, Make make) {
  kernels::set_threads(static_cast<int>(s.range(0)));
  bench::ModelBuffers m(bench::resnet_shapes(depth));
  auto ctl = make(m.parameter_set());
  std::int64_t step = 100;
  ctl.update(step);  // warm-up: the controller's buffers reach their size
  std::vector<double> t_update, t_floor;
  for (auto _ : s) {
    const auto a = std::chrono::steady_clock::now();
    ctl.update(step += 100);
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
    s.SetIterationTime(t);
    t_update.push_back(t);
    t_floor.push_back(bench::time_stream(m, 1, true));
  }
  const double floor = median(t_floor);
  s.counters["weights"] = static_cast<double>(m.size());
  s.counters["floor_ms"] = floor * 1e3;
  s.counters["x_floor"] = floor > 0 ? median(t_update) / floor : 0.0;
  s.SetBytesProcessed(static_cast<std::int64_t>(s.iterations()) * static_cast<std::int64_t>(m.size()) * 8);
  kernels::set_threads(1);
}

void bm_stream(benchmark::State& s, int depth) {
  bench::ModelBuffers m(bench::resnet_shapes(depth));
  for (auto _ : s) benchmark::DoNotOptimize(bench::time_stream(m, 1, true));
  s.SetBytesProcessed(static_cast<std::int64_t>(s.iterations()) * static_cast<std::int64_t>(m.size()) * 8);
}

auto rigl = [](ParameterSet p) { return make_rigl(std::move(p), bench::harness_config(0.001)); };
auto cyclic = [](ParameterSet p) {
  return make_cyclic(std::move(p), bench::harness_config(0.001), CyclicDensity{});
};

}  // namespace

BENCHMARK_CAPTURE(bm_stream, resnet34_weights_and_grads, 34)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Repetitions(3)
    ->ReportAggregatesOnly(true);
BENCHMARK_CAPTURE(bm_stream, resnet50_weights_and_grads, 50)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Repetitions(3)
    ->ReportAggregatesOnly(true);
BENCHMARK_CAPTURE(bm_update, resnet34_rigl, 34, rigl)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime()
    ->Repetitions(3)
    ->ReportAggregatesOnly(true);
BENCHMARK_CAPTURE(bm_update, resnet34_cyclic, 34, cyclic)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime()
    ->Repetitions(3)
    ->ReportAggregatesOnly(true);
BENCHMARK_CAPTURE(bm_update, resnet50_rigl, 50, rigl)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime()
    ->Repetitions(3)
    ->ReportAggregatesOnly(true);
BENCHMARK_CAPTURE(bm_update, resnet50_cyclic, 50, cyclic)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseManualTime()
    ->Repetitions(3)
    ->ReportAggregatesOnly(true);

BENCHMARK_MAIN();
