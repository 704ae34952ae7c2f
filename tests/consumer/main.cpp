// Uses the installed package the way a user's trainer would: the public headers, one preset,
// a compact layer and a checkpoint round trip. Built with -Wall -Wextra -Wpedantic -Werror.
#include <cstdio>
#include <east/data/idx.hpp>
#include <east/east.hpp>
#include <east/sparse/sparse.hpp>
#include <sstream>
#include <vector>

int main() {
  std::vector<float> w(64 * 32, 0.5f), g(64 * 32, 0.1f), w2(10 * 64, 0.25f);
  east::ParameterSet params;
  params.add("fc", w.data(), {64, 32}, g.data());
  params.add("out", w2.data(), {10, 64});
  east::sparse::CompactLinear out(params, "out");
  auto rigl = east::make_rigl(params, {0.1, /*update every*/ 10, /*end*/ 100});
  std::vector<float> x(4 * 64, 1.0f), y(4 * 10), dy(4 * 10, 0.01f);
  for (long step = 0; step < 20; ++step) {
    out.forward(x.data(), 4, y.data());
    out.backward(x.data(), dy.data(), 4, nullptr);
    rigl.before_optimizer_step(step);
    out.sgd_step({0.1f, 0.9f});
    rigl.after_optimizer_step(step);
  }
  std::stringstream file;
  east::save_checkpoint(rigl, file);
  const auto digest = rigl.digest();
  east::load_checkpoint(rigl, file);
  const auto nnz = rigl.masks()[0].count() + rigl.masks()[1].count();
  std::printf("consumer: nnz %zu of %zu, digest kept %d\n", nnz, w.size() + w2.size(), digest == rigl.digest());
  return nnz == 268 && digest == rigl.digest() ? 0 : 1;  // floor(0.1 * 2688)
}
