// Whole-model mask update (drop + grow for every layer) for the parameter shapes of ResNet-34
// and ResNet-50 at 99.9% sparsity: RigL and EAST's cyclic schedule, 1 and 2 threads, next to
// one streaming read of the same weights.
#include <benchmark/benchmark.h>

#include "model_harness.hpp"

namespace {

using namespace east;

template <class Make>
void bm_update(benchmark::State& s, int depth, Make make) {
  kernels::set_threads(static_cast<int>(s.range(0)));
  bench::ModelBuffers m(bench::resnet_shapes(depth));
  auto ctl = make(m.parameter_set());
  std::int64_t step = 0;
  for (auto _ : s) ctl.update(step += 100);
  s.counters["weights"] = static_cast<double>(m.size());
  s.SetBytesProcessed(static_cast<std::int64_t>(s.iterations()) * static_cast<std::int64_t>(m.size()) * 4);
  kernels::set_threads(1);
}

void bm_stream(benchmark::State& s, int depth) {
  bench::ModelBuffers m(bench::resnet_shapes(depth));
  for (auto _ : s) benchmark::DoNotOptimize(bench::time_stream(m, 1));
  s.SetBytesProcessed(static_cast<std::int64_t>(s.iterations()) * static_cast<std::int64_t>(m.size()) * 4);
}

auto rigl = [](ParameterSet p) { return make_rigl(std::move(p), bench::harness_config(0.001)); };
auto cyclic = [](ParameterSet p) {
  return make_cyclic(std::move(p), bench::harness_config(0.001), CyclicDensity{});
};

}  // namespace

BENCHMARK_CAPTURE(bm_stream, resnet34, 34)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Repetitions(3)
    ->ReportAggregatesOnly(true);
BENCHMARK_CAPTURE(bm_stream, resnet50, 50)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Repetitions(3)
    ->ReportAggregatesOnly(true);
BENCHMARK_CAPTURE(bm_update, resnet34_rigl, 34, rigl)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Repetitions(3)
    ->ReportAggregatesOnly(true);
BENCHMARK_CAPTURE(bm_update, resnet34_cyclic, 34, cyclic)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Repetitions(3)
    ->ReportAggregatesOnly(true);
BENCHMARK_CAPTURE(bm_update, resnet50_rigl, 50, rigl)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Repetitions(3)
    ->ReportAggregatesOnly(true);
BENCHMARK_CAPTURE(bm_update, resnet50_cyclic, 50, cyclic)
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Repetitions(3)
    ->ReportAggregatesOnly(true);

BENCHMARK_MAIN();
