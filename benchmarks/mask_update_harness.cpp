// Times one full mask update per preset for a model described by a text file of layer shapes
// ("name d0 d1 ..." per line), with the streaming-read floor of the same weights and gradients
// beside it (both presets regrow by gradient, so both arrays must be read once).
//   east_mask_update_harness shapes.txt [density=0.001] [threads=1] [reps=5]
#include "model_harness.hpp"

#include <cstdio>
#include <cstdlib>

int main(int argc, char** argv) {
  using namespace east;
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s shapes.txt [density=0.001] [threads=1] [reps=5]\n", argv[0]);
    return 2;
  }
  const double density = argc > 2 ? std::atof(argv[2]) : 0.001;
  const int threads = argc > 3 ? std::atoi(argv[3]) : 1;
  const int reps = argc > 4 ? std::atoi(argv[4]) : 5;
  try {
    kernels::set_threads(threads);
    bench::ModelBuffers m(bench::read_shapes(argv[1]));
    const double floor = bench::time_stream(m, reps, true);
    std::printf("%zu layers, %zu weights, density %g, %d thread(s), ISA %s\n", m.layers.size(), m.size(),
                density, threads, kernels::isa_name(kernels::active_isa()));
    std::printf("floor (one streaming read of the weights and gradients): %.3f ms\n", floor * 1e3);
    const auto c = bench::harness_config(density);
    {
      auto ctl = make_rigl(m.parameter_set(), c);
      const double t = bench::time_updates(ctl, reps);
      std::printf("rigl   full mask update: %9.3f ms  (%.1fx the floor)\n", t * 1e3, t / floor);
    }
    {
      auto ctl = make_cyclic(m.parameter_set(), c, CyclicDensity{});
      const double t = bench::time_updates(ctl, reps);
      std::printf("cyclic full mask update: %9.3f ms  (%.1fx the floor)\n", t * 1e3, t / floor);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
