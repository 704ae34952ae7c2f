// A framework-free example: a 784-300-100-10 MLP written with Eigen, trained on Fashion-MNIST
// (Debian's dataset-fashion-mnist package) dense and with RigL at 99% sparsity through east.
// Shows the few lines a hand-written trainer needs: register views, call two hooks per step.
//
//   mlp_fashion_mnist [--methods dense,rigl,set,static] [--density 0.01] [--epochs 5] [--seed 1]
//                     [--data /usr/share/datasets/fashion-mnist]
#include <Eigen/Core>
#include <east/adapters/eigen.hpp>
#include <east/data/idx.hpp>
#include <east/east.hpp>
#include <east/progress.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Options {
  std::vector<std::string> methods{"dense", "rigl"};
  double density = 0.01;
  int epochs = 5;
  unsigned seed = 1;
  int batch = 128;
  float lr = 0.05f, momentum = 0.9f, weight_decay = 5e-4f;
  std::string data = "/usr/share/datasets/fashion-mnist";
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw east::InvalidArgument("mlp_fashion_mnist: " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--methods") {
      o.methods.clear();
      std::stringstream ss(next());
      for (std::string m; std::getline(ss, m, ',');) o.methods.push_back(m);
    } else if (a == "--density")
      o.density = std::stod(next());
    else if (a == "--epochs")
      o.epochs = std::stoi(next());
    else if (a == "--seed")
      o.seed = static_cast<unsigned>(std::stoul(next()));
    else if (a == "--data")
      o.data = next();
    else if (a == "--help" || a == "-h") {
      std::puts(
          "usage: mlp_fashion_mnist [--methods dense,rigl,set,static] [--density D] [--epochs E] [--seed S] "
          "[--data DIR]");
      std::exit(0);
    } else
      throw east::InvalidArgument("mlp_fashion_mnist: unknown argument '" + a + "' (see --help)");
  }
  east::detail::require_density(o.density, "mlp_fashion_mnist --density");
  east::detail::require(o.epochs >= 1, "mlp_fashion_mnist", "--epochs ", o.epochs, " (valid: >= 1)");
  for (auto& m : o.methods)
    east::detail::require(m == "dense" || m == "rigl" || m == "set" || m == "static", "mlp_fashion_mnist",
                          "unknown method '", m, "' (valid: dense, rigl, set, static)");
  return o;
}

struct Mlp {
  std::vector<Eigen::MatrixXf> W, gW, mW;  // weights {n_out, n_in}, gradients, momentum
  std::vector<Eigen::VectorXf> b, gb, mb;
  explicit Mlp(unsigned seed) {
    const int sizes[] = {784, 300, 100, 10};
    std::mt19937 rng(seed);
    for (int l = 0; l < 3; ++l) {
      std::normal_distribution<float> nd(0.0f, std::sqrt(2.0f / sizes[l]));  // He init
      Eigen::MatrixXf w(sizes[l + 1], sizes[l]);
      for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = nd(rng);
      W.push_back(w);
      gW.push_back(Eigen::MatrixXf::Zero(w.rows(), w.cols()));
      mW.push_back(Eigen::MatrixXf::Zero(w.rows(), w.cols()));
      b.push_back(Eigen::VectorXf::Zero(sizes[l + 1]));
      gb.push_back(Eigen::VectorXf::Zero(sizes[l + 1]));
      mb.push_back(Eigen::VectorXf::Zero(sizes[l + 1]));
    }
  }
  // Forward + backward on a batch (columns of X); returns the mean cross-entropy loss.
  float step(const Eigen::MatrixXf& X, const std::vector<int>& y) {
    std::vector<Eigen::MatrixXf> a{X};
    for (int l = 0; l < 3; ++l) {
      Eigen::MatrixXf z = (W[l] * a[l]).colwise() + b[l];
      if (l < 2) z = z.cwiseMax(0.0f);
      a.push_back(std::move(z));
    }
    Eigen::MatrixXf p = a[3];
    float loss = 0;
    const float inv_b = 1.0f / static_cast<float>(X.cols());
    for (Eigen::Index j = 0; j < p.cols(); ++j) {
      const float mx = p.col(j).maxCoeff();
      p.col(j) = (p.col(j).array() - mx).exp();
      const float s = p.col(j).sum();
      p.col(j) /= s;
      loss -= std::log(std::max(p(y[j], j), 1e-12f));
      p(y[j], j) -= 1.0f;
    }
    Eigen::MatrixXf delta = p * inv_b;
    for (int l = 2; l >= 0; --l) {
      gW[l].noalias() = delta * a[l].transpose();
      gb[l] = delta.rowwise().sum();
      if (l > 0) {
        Eigen::MatrixXf back = W[l].transpose() * delta;
        delta = back.cwiseProduct((a[l].array() > 0.0f).cast<float>().matrix());
      }
    }
    return loss * inv_b;
  }
  void sgd(float lr, float mom, float wd) {
    for (int l = 0; l < 3; ++l) {
      mW[l] = mom * mW[l] + gW[l] + wd * W[l];
      W[l] -= lr * mW[l];
      mb[l] = mom * mb[l] + gb[l];
      b[l] -= lr * mb[l];
    }
  }
  std::size_t weights() const { return W[0].size() + W[1].size() + W[2].size(); }
  std::size_t nonzeros() const {
    std::size_t n = 0;
    for (auto& w : W) n += static_cast<std::size_t>((w.array() != 0.0f).count());
    return n;
  }
};

float accuracy(Mlp& net, const east::data::ImageSet& s) {
  std::size_t correct = 0;
  const std::size_t chunk = 1000;
  for (std::size_t start = 0; start < s.count; start += chunk) {
    const auto n = std::min(chunk, s.count - start);
    Eigen::Map<const Eigen::MatrixXf> X(s.pixels.data() + start * 784, 784, static_cast<Eigen::Index>(n));
    Eigen::MatrixXf h = X;
    for (int l = 0; l < 3; ++l) {
      h = ((net.W[l] * h).colwise() + net.b[l]).eval();
      if (l < 2) h = h.cwiseMax(0.0f);
    }
    for (std::size_t j = 0; j < n; ++j) {
      Eigen::Index arg;
      h.col(static_cast<Eigen::Index>(j)).maxCoeff(&arg);
      correct += static_cast<std::size_t>(arg) == s.labels[start + j];
    }
  }
  return static_cast<float>(correct) / static_cast<float>(s.count);
}

struct Result {
  std::string method;
  float accuracy;
  std::size_t nonzeros, weights;
  double seconds;
};

// The east part: `make` builds a controller over the registered views, or none for dense.
template <class Controller>
Result train(const std::string& method, const Options& o, const east::data::ImageSet& train_set,
             const east::data::ImageSet& test_set, Mlp& net, Controller* ctl) {
  const std::size_t steps_per_epoch = train_set.count / static_cast<std::size_t>(o.batch);
  const std::size_t total = steps_per_epoch * static_cast<std::size_t>(o.epochs);
  std::vector<std::size_t> order(train_set.count);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(o.seed);
  east::Progress progress(method, total, "steps");
  Eigen::MatrixXf X(784, o.batch);
  std::vector<int> y(static_cast<std::size_t>(o.batch));
  std::int64_t step = 0;
  float loss_avg = 0;
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    std::shuffle(order.begin(), order.end(), rng);
    const float lr = epoch >= o.epochs * 3 / 4 ? o.lr * 0.1f : o.lr;
    for (std::size_t s = 0; s < steps_per_epoch; ++s, ++step) {
      for (int j = 0; j < o.batch; ++j) {
        const auto idx = order[s * static_cast<std::size_t>(o.batch) + static_cast<std::size_t>(j)];
        X.col(j) = Eigen::Map<const Eigen::VectorXf>(train_set.pixels.data() + idx * 784, 784);
        y[static_cast<std::size_t>(j)] = train_set.labels[idx];
      }
      const float loss = net.step(X, y);
      loss_avg = step == 0 ? loss : 0.98f * loss_avg + 0.02f * loss;
      if (ctl) ctl->before_optimizer_step(step);  // masks gradients (kept dense on update steps)
      net.sgd(lr, o.momentum, o.weight_decay);
      if (ctl) ctl->after_optimizer_step(step);  // drop/grow on update steps; re-masks weights + momentum
      char extra[64];
      std::snprintf(extra, sizeof extra, "epoch %d loss %.3f", epoch + 1, loss_avg);
      progress.update(static_cast<std::size_t>(step) + 1, extra);
    }
  }
  return Result{method, accuracy(net, test_set), net.nonzeros(), net.weights(), progress.elapsed()};
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  std::fprintf(stderr, "loading Fashion-MNIST from %s\n", o.data.c_str());
  const auto train_set = east::data::read_idx_images(o.data + "/train-images-idx3-ubyte.gz",
                                                     o.data + "/train-labels-idx1-ubyte.gz");
  const auto test_set = east::data::read_idx_images(o.data + "/t10k-images-idx3-ubyte.gz",
                                                    o.data + "/t10k-labels-idx1-ubyte.gz");
  std::fprintf(stderr, "train %zu, test %zu images; %d epochs, batch %d\n", train_set.count, test_set.count,
               o.epochs, o.batch);

  std::vector<Result> results;
  for (const auto& method : o.methods) {
    Mlp net(o.seed);
    if (method == "dense") {
      results.push_back(
          train<east::Controller<
              east::Method<east::Uniform, east::ConstantDensity, east::ConstantDrop, east::Never>>>(
              method, o, train_set, test_set, net, nullptr));
      continue;
    }
    east::ParameterSet params;
    for (int l = 0; l < 3; ++l) {
      east::add_eigen(params, "fc" + std::to_string(l + 1), net.W[l], net.gW[l]);
      params.add_state("fc" + std::to_string(l + 1), net.mW[l].data());  // momentum is masked too
    }
    const std::int64_t steps = static_cast<std::int64_t>(train_set.count / o.batch) * o.epochs;
    // RigL's recipe: ΔT = 100, cosine drop 0.3 → 0, updates until 75% of training, ERK.
    const east::DstConfig cfg{o.density, 100, steps * 3 / 4, 0.3};
    const east::ControllerOptions copt{o.seed};
    if (method == "rigl") {
      auto ctl = east::make_rigl(params, cfg, copt);
      results.push_back(train(method, o, train_set, test_set, net, &ctl));
    } else if (method == "set") {
      auto ctl = east::make_set(params, cfg, copt);
      results.push_back(train(method, o, train_set, test_set, net, &ctl));
    } else {
      auto ctl = east::make_static(params, o.density, copt);
      results.push_back(train(method, o, train_set, test_set, net, &ctl));
    }
  }
  std::printf("\n%-8s %10s %12s %10s %9s\n", "method", "test acc", "nonzeros", "density", "time");
  for (const auto& r : results)
    std::printf("%-8s %9.2f%% %12zu %9.4f%% %8.1fs\n", r.method.c_str(), 100.0 * r.accuracy, r.nonzeros,
                100.0 * static_cast<double>(r.nonzeros) / static_cast<double>(r.weights), r.seconds);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
