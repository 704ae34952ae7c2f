// Tutorial program for docs/tutorial-custom-schedule.md: compose your own pruning schedule.
//
// Three user-written policies (a density schedule with a warm-up and step-downs, a linearly
// decaying drop fraction, a gradient regrow criterion with a seeded random factor) are composed
// with east's ERK distribution and periodic update schedule into one east::Method. A small
// student MLP (Eigen) learns a random teacher on synthetic data; a callback prints one row per
// mask update and checks that every count is exact. Exit code 1 when an invariant fails.
#include <Eigen/Core>
#include <east/adapters/eigen.hpp>
#include <east/east.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

// [density-schedule]
// Dense-ish warm-up, then the density is multiplied by `factor` every `stage` steps until it
// reaches `target`. A DensitySchedule needs only `double density(std::int64_t) const`.
struct WarmupStepDown {
  double start = 0.5;         // density during the warm-up
  double target = 0.05;       // final density
  double factor = 0.5;        // each stage multiplies the density by this
  std::int64_t warmup = 100;  // steps at `start`
  std::int64_t stage = 100;   // steps per stage after the warm-up

  double density(std::int64_t step) const {
    if (step < warmup) return start;
    const auto stages = 1 + (step - warmup) / stage;
    return std::max(target, start * std::pow(factor, static_cast<double>(stages)));
  }
  // Optional hook: make every step where the density changes an update step, even when it is
  // not on the update schedule's grid, so the masks follow the schedule exactly.
  bool forces_update(std::int64_t step) const { return step > 0 && density(step) != density(step - 1); }
};
// [density-schedule]

// [drop-schedule]
// f(t) falls linearly from `initial` at step 0 to `floor` at step `end`, then stays there.
struct LinearDecayDrop {
  double initial = 0.4;
  double floor = 0.05;
  std::int64_t end = 500;

  double drop_fraction(std::int64_t step) const {
    const double p = std::clamp(static_cast<double>(step) / static_cast<double>(end), 0.0, 1.0);
    return initial + (floor - initial) * p;
  }
};
// [drop-schedule]

// [regrow-criterion]
// Grow where |g| · (1 − jitter·u) is largest, u uniform in [0, 1) from the layer's counter-based
// stream: mostly RigL, with seeded exploration among similar gradients. The result is the same
// on every run and thread count, because u depends only on (seed, step, layer, position).
struct JitteredGradientRegrow {
  float jitter = 0.25f;

  east::Scores regrow_scores(const east::LayerContext& ctx) const {
    const auto& layer = ctx.layer;
    if (layer.grad == nullptr)
      throw east::InvalidArgument("JitteredGradientRegrow: layer '" + layer.name + "' has no gradient");
    const std::size_t n = layer.size();
    ctx.scratch.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      const float g = layer.grad[i];
      // Keys bypass the controller's NaN/Inf check on float scores: do it here.
      if (!std::isfinite(g))
        throw east::InvalidArgument("JitteredGradientRegrow: layer '" + layer.name +
                                    "' has a non-finite gradient at index " + std::to_string(i));
      const float u = static_cast<float>(ctx.stream.uniform(i));
      // abs_key orders non-negative floats exactly like their values.
      ctx.scratch[i] = east::kernels::abs_key(g * (1.0f - jitter * u));
    }
    return east::Scores{nullptr, ctx.scratch.data()};  // rank by key: the largest are grown
  }
};
// [regrow-criterion]

// A 64-128-64-10 ReLU MLP with SGD + momentum, trained to imitate a fixed random teacher.
struct Mlp {
  std::vector<Eigen::MatrixXf> W, gW, mW;  // weights {n_out, n_in}, gradients, momentum
  explicit Mlp(unsigned seed) {
    const int sizes[] = {64, 128, 64, 10};
    std::mt19937 rng(seed);
    for (int l = 0; l < 3; ++l) {
      std::normal_distribution<float> nd(0.0f, std::sqrt(2.0f / static_cast<float>(sizes[l])));
      Eigen::MatrixXf w(sizes[l + 1], sizes[l]);
      for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = nd(rng);
      W.push_back(w);
      gW.push_back(Eigen::MatrixXf::Zero(w.rows(), w.cols()));
      mW.push_back(Eigen::MatrixXf::Zero(w.rows(), w.cols()));
    }
  }
  Eigen::MatrixXf forward(const Eigen::MatrixXf& X, std::vector<Eigen::MatrixXf>* acts = nullptr) const {
    Eigen::MatrixXf h = X;
    for (int l = 0; l < 3; ++l) {
      if (acts) acts->push_back(h);
      h = W[l] * h;
      if (l < 2) h = h.cwiseMax(0.0f);
    }
    return h;
  }
  // Mean squared error against Y; fills gW.
  float loss_and_grad(const Eigen::MatrixXf& X, const Eigen::MatrixXf& Y) {
    std::vector<Eigen::MatrixXf> a;
    const Eigen::MatrixXf out = forward(X, &a);
    const float inv = 1.0f / static_cast<float>(X.cols());
    Eigen::MatrixXf delta = (out - Y) * inv;
    const float loss = 0.5f * (out - Y).squaredNorm() * inv;
    for (int l = 2; l >= 0; --l) {
      gW[l].noalias() = delta * a[l].transpose();
      if (l > 0)
        delta = (W[l].transpose() * delta).cwiseProduct((a[l].array() > 0.0f).cast<float>().matrix());
    }
    return loss;
  }
  void sgd(float lr, float momentum) {
    for (int l = 0; l < 3; ++l) {
      mW[l] = momentum * mW[l] + gW[l];
      W[l] -= lr * mW[l];
    }
  }
};

// [callback]
// Prints one row per mask update and checks the invariants east promises. Every hook is
// optional; this one implements on_update and on_density_change.
template <class Ctl>
struct UpdateTable {
  const Ctl& ctl;
  std::vector<std::size_t> previous;  // per-layer counts before the update
  int failures = 0;

  void check(bool ok, const char* what, std::int64_t step) {
    if (!ok) {
      std::printf("  FAILED at step %lld: %s\n", static_cast<long long>(step), what);
      ++failures;
    }
  }
  void on_density_change(std::int64_t step, double from, double to) {
    std::printf("  -- step %lld: density %.4f -> %.4f\n", static_cast<long long>(step), from, to);
  }
  void on_update(const east::UpdateReport& r) {
    std::printf("%5lld %8.4f %6.3f %6zu %7zu %6zu", static_cast<long long>(r.step), r.density,
                r.drop_fraction, r.total_nnz(), r.total_dropped(), r.total_grown());
    for (const auto& l : r.layers) std::printf(" %5zu", l.nnz);
    std::printf(" %7.3f\n", r.layers[0].ever_active_fraction);

    const auto& method = ctl.method();
    check(r.density == method.density.density(r.step), "report density == schedule", r.step);
    const auto expected =
        east::layer_counts(method.distribution, ctl.params(), r.density, ctl.options().allocation);
    check(r.total_nnz() == east::nonzero_budget(ctl.params(), r.density), "total == budget", r.step);
    for (std::size_t l = 0; l < r.layers.size(); ++l) {
      const auto& lr = r.layers[l];
      check(lr.nnz == expected[l], "layer count == distribution's share", r.step);
      check(ctl.masks()[l].count() == lr.nnz, "mask count == report", r.step);
      check(previous[l] - lr.dropped + lr.grown == lr.nnz, "before - dropped + grown == after", r.step);
      previous[l] = lr.nnz;
    }
  }
};
template <class Ctl>
UpdateTable(const Ctl&, std::vector<std::size_t>, int) -> UpdateTable<Ctl>;
// [callback]

int main() try {
  constexpr std::int64_t steps = 600;
  constexpr int batch = 32;
  // east::east links OpenMP when available, which Eigen then uses; for matrices this small a
  // thread team only costs time (and spins on a loaded machine).
  Eigen::setNbThreads(1);
  Mlp student(1);
  const Mlp teacher(2);

  // [register]
  east::ParameterSet params;
  for (int l = 0; l < 3; ++l) {
    const std::string name = "fc" + std::to_string(l + 1);
    east::add_eigen(params, name, student.W[l], student.gW[l]);
    params.add_state(name, student.mW[l].data());  // momentum: masked, reset where weights grow
  }
  // [register]

  // [compose]
  east::Method method{east::ErdosRenyiKernel{},                                    // distribution
                      WarmupStepDown{0.5, 0.05, 0.5, 100, 100},                    // density schedule
                      LinearDecayDrop{0.4, 0.05, 500},                             // drop schedule
                      east::Periodic{/*interval=*/40, /*begin=*/40, /*end=*/520},  // update schedule
                      east::MagnitudePrune{},                                      // prune criterion
                      JitteredGradientRegrow{0.25f}};                              // regrow criterion
                                                                                   // (grow init: ZeroInit)
  east::Controller ctl(params, method, east::ControllerOptions{/*seed=*/7});
  // [compose]

  std::vector<std::size_t> initial;
  for (const auto& m : ctl.masks()) initial.push_back(m.count());
  UpdateTable table{ctl, initial, 0};

  std::printf("initial: %zu of %zu weights active (density %.4f); fc1 %zu, fc2 %zu, fc3 %zu\n\n",
              ctl.nonzeros(), ctl.params().logical_size(), ctl.density(), initial[0], initial[1], initial[2]);
  std::printf(" step  density drop f    nnz dropped  grown   fc1   fc2   fc3 fc1 ever\n");

  // [loop]
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Eigen::MatrixXf X(64, batch);
  float first_loss = 0, loss = 0;
  for (std::int64_t step = 0; step < steps; ++step) {
    for (Eigen::Index i = 0; i < X.size(); ++i) X.data()[i] = nd(rng);
    const Eigen::MatrixXf Y = teacher.forward(X);
    loss = student.loss_and_grad(X, Y);  // forward + backward: dense gradients in gW
    if (step == 0) first_loss = loss;
    ctl.before_optimizer_step(step);        // masks gW, except on update steps
    student.sgd(0.01f, 0.9f);               // the user's optimizer
    ctl.after_optimizer_step(step, table);  // update steps: move/drop/grow; always: re-mask
    for (int l = 0; l < 3; ++l) {           // pruned weights stay exactly zero
      const auto nz = static_cast<std::size_t>((student.W[l].array() != 0.0f).count());
      table.check(nz <= ctl.masks()[static_cast<std::size_t>(l)].count(), "weights outside the mask are zero",
                  step);
    }
  }
  // [loop]

  // [final-check]
  const double final_density = ctl.method().density.density(steps - 1);
  table.check(ctl.nonzeros() == east::nonzero_budget(ctl.params(), final_density), "final count == budget",
              steps);
  table.check(ctl.empty_layers().empty(), "no layer collapsed to zero weights", steps);
  std::printf("\n%llu updates; final density %.4f (%zu nonzeros); loss %.4f -> %.4f; mask digest %016llx\n",
              static_cast<unsigned long long>(ctl.updates()), ctl.density(), ctl.nonzeros(), first_loss, loss,
              static_cast<unsigned long long>(ctl.digest()));
  if (table.failures > 0) {
    std::printf("%d invariant(s) failed\n", table.failures);
    return 1;
  }
  std::printf("all invariants hold\n");
  return 0;
  // [final-check]
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
