// Uses the installed package the way a user's trainer would: one include, one preset.
#include <east/east.hpp>
#include <cstdio>
#include <vector>

int main() {
  std::vector<float> w(64 * 32, 0.5f), g(64 * 32, 0.1f);
  east::ParameterSet params;
  params.add("fc", w.data(), {64, 32}, g.data());
  auto rigl = east::make_rigl(params, {0.1, /*update every*/ 10, /*end*/ 100});
  for (long step = 0; step < 20; ++step) {
    rigl.before_optimizer_step(step);
    rigl.after_optimizer_step(step);
  }
  const auto nnz = rigl.masks()[0].count();
  std::printf("consumer: nnz %zu of %zu\n", nnz, w.size());
  return nnz == 204 ? 0 : 1;  // floor(0.1 * 2048)
}
