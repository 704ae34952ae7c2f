// Prints EAST's schedules over a run as CSV (step, density, drop fraction, DyReLU β, update):
// the data behind docs/east.png. Uses the real preset, so the plot is what a run does.
//   east_schedules [total_steps=10000] [density=0.001]
#include <east/east.hpp>

#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) try {
  const std::int64_t total = argc > 1 ? std::atoll(argv[1]) : 10000;
  const double density = argc > 2 ? std::atof(argv[2]) : 0.001;
  // A stand-in layer big enough that the density steps are visible; the schedules do not
  // depend on it.
  std::vector<float> w(1 << 20, 1.0f), g(1 << 20, 1.0f);
  east::ParameterSet params;
  params.add("layer", w.data(), {1024, 1024}, g.data());
  east::EastConfig cfg;
  cfg.density = density;
  cfg.total_steps = total;
  auto ctl = east::make_east(params, cfg);
  const auto phase = east::make_east_phase(cfg);
  std::printf("step,scheduled_density,mask_density,drop_fraction,beta,update\n");
  for (std::int64_t step = 0; step <= total; ++step) {
    const bool update = ctl.is_update_step(step);
    if (update) ctl.update(step);
    if (update || step % std::max<std::int64_t>(1, total / 500) == 0)
      std::printf("%lld,%.8g,%.8g,%.6g,%.6g,%d\n", static_cast<long long>(step),
                  ctl.method().density.density(step), ctl.density(), ctl.method().drop.drop_fraction(step),
                  phase.beta(step), update ? 1 : 0);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
