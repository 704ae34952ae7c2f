// A framework-free example: a 784-1024-1024-10 MLP written with Eigen, trained on Fashion-MNIST
// (Debian's dataset-fashion-mnist package) with SGD + momentum, dense or sparse through east.
// The same loop runs on two kinds of kernels (docs/compact-layers.md has the recipe as a diff):
//   --kernels dense   masked dense: Eigen GEMMs over the full matrices, the controller masks them
//   --kernels sparse  compact layers (east::sparse::CompactLinear): cost ∝ nonzeros; each line
//                     that differs sits next to the masked line it replaces (`if (compact)`)
//
//   mlp_fashion_mnist [--method dense|static|set|rigl[,...]] [--sparsity 0.99] [--epochs 1]
//                     [--kernels dense|sparse|both] [--threads 1] [--batch 128] [--lr 0.05]
//                     [--seed 1] [--train-limit N] [--test-limit N]
//                     [--data /usr/share/datasets/fashion-mnist]
#include <Eigen/Core>
#include <east/adapters/eigen.hpp>
#include <east/data/idx.hpp>
#include <east/east.hpp>
#include <east/progress.hpp>
#include <east/sparse/compact_layer.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <cstdio>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

// Weights {out, in} and activations {features, batch}, both row-major: what the compact layers
// read (feature-major activations need no transposes); Eigen's GEMMs take either storage.
using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using east::sparse::CompactLinear;

struct Options {
  std::vector<std::string> methods{"rigl"};
  std::vector<std::string> kernels{"sparse"};
  double sparsity = 0.99;
  int epochs = 1, threads = 1, batch = 128;
  unsigned seed = 1;
  // Learning rate and weight decay: negative = the method's default (dense 0.05 and 5e-4, sparse
  // 0.2 and 0: docs/compact-layers.md "Initialisation and learning rate" has the measurements).
  float lr = -1, weight_decay = -1, momentum = 0.9f, lr_decay = 0.1f;
  float lr_for(const std::string& method) const { return lr >= 0 ? lr : method == "dense" ? 0.05f : 0.2f; }
  float wd_for(const std::string& method) const {
    return weight_decay >= 0 ? weight_decay : method == "dense" ? 5e-4f : 0.0f;
  }
  std::size_t train_limit = 0, test_limit = 0;  // 0: all images
  std::string distribution = "erk", init = "fan-in";
  std::int64_t update_interval = 100;
  double drop_fraction = 0.3;
  std::string data = "/usr/share/datasets/fashion-mnist";
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string m; std::getline(ss, m, ',');) out.push_back(m);
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw east::InvalidArgument("mlp_fashion_mnist: " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--method" || a == "--methods")
      o.methods = split(next());
    else if (a == "--kernels") {
      const std::string k = next();
      o.kernels = k == "both" ? std::vector<std::string>{"dense", "sparse"} : split(k);
    } else if (a == "--sparsity")
      o.sparsity = std::stod(next());
    else if (a == "--density")
      o.sparsity = 1.0 - std::stod(next());
    else if (a == "--epochs")
      o.epochs = std::stoi(next());
    else if (a == "--threads")
      o.threads = std::stoi(next());
    else if (a == "--batch")
      o.batch = std::stoi(next());
    else if (a == "--lr")
      o.lr = std::stof(next());
    else if (a == "--lr-decay")
      o.lr_decay = std::stof(next());
    else if (a == "--weight-decay")
      o.weight_decay = std::stof(next());
    else if (a == "--seed")
      o.seed = static_cast<unsigned>(std::stoul(next()));
    else if (a == "--train-limit")
      o.train_limit = std::stoul(next());
    else if (a == "--test-limit")
      o.test_limit = std::stoul(next());
    else if (a == "--data")
      o.data = next();
    else if (a == "--distribution")
      o.distribution = next();
    else if (a == "--init")
      o.init = next();
    else if (a == "--update-interval")
      o.update_interval = std::stoll(next());
    else if (a == "--drop-fraction")
      o.drop_fraction = std::stod(next());
    else if (a == "--help" || a == "-h") {
      std::puts(
          "usage: mlp_fashion_mnist [--method dense|static|set|rigl[,...]] [--sparsity S] [--epochs E]\n"
          "                         [--kernels dense|sparse|both] [--threads N] [--batch B] [--lr LR]\n"
          "                         [--seed S] [--train-limit N] [--test-limit N] [--data DIR]\n"
          "                         [--distribution erk|uniform] [--init fan-in|none] [--update-interval T]\n"
          "                         [--drop-fraction F] [--lr-decay F] [--weight-decay WD]");
      std::exit(0);
    } else
      throw east::InvalidArgument("mlp_fashion_mnist: unknown argument '" + a + "' (see --help)");
  }
  const char* where = "mlp_fashion_mnist";
  east::detail::require(o.sparsity >= 0.0 && o.sparsity < 1.0, where, "--sparsity ", o.sparsity,
                        " (valid: [0, 1))");
  east::detail::require(o.epochs >= 1, where, "--epochs ", o.epochs, " (valid: >= 1)");
  east::detail::require(o.threads >= 1, where, "--threads ", o.threads, " (valid: >= 1)");
  east::detail::require(o.batch >= 1, where, "--batch ", o.batch, " (valid: >= 1)");
  for (auto& m : o.methods)
    east::detail::require(m == "dense" || m == "rigl" || m == "set" || m == "static", where,
                          "unknown method '", m, "' (valid: dense, rigl, set, static)");
  east::detail::require(o.distribution == "erk" || o.distribution == "uniform", where, "--distribution '",
                        o.distribution, "' (valid: erk, uniform)");
  east::detail::require(o.init == "fan-in" || o.init == "none", where, "--init '", o.init,
                        "' (valid: fan-in, none)");
  for (auto& k : o.kernels)
    east::detail::require(k == "dense" || k == "sparse", where, "unknown kernels '", k,
                          "' (valid: dense, sparse, both)");
  return o;
}

struct Mlp {
  static constexpr int kSizes[] = {784, 1024, 1024, 10};
  std::vector<Matrix> W, gW, mW;  // weights {out, in}; gradient and momentum (masked dense only)
  std::vector<Eigen::VectorXf> b, gb, mb;
  std::vector<std::unique_ptr<CompactLinear>> fc;  // the compact layers (--kernels sparse)
  std::vector<Matrix> A;                           // activations {features, batch}; A[0] = input

  Mlp(unsigned seed, int batch, bool compact) {
    std::mt19937 rng(seed);
    for (int l = 0; l < 3; ++l) {
      const int in = kSizes[l], out = kSizes[l + 1];
      // He init (std √(2 / fan-in)); the controller rescales the survivors to their fan-in.
      std::normal_distribution<float> nd(0.0f, std::sqrt(2.0f / static_cast<float>(in)));
      W.emplace_back(out, in);
      for (Eigen::Index i = 0; i < W[l].size(); ++i) W[l].data()[i] = nd(rng);
      if (!compact) gW.push_back(Matrix::Zero(out, in)), mW.push_back(Matrix::Zero(out, in));
      b.push_back(Eigen::VectorXf::Zero(out));
      gb.push_back(Eigen::VectorXf::Zero(out));
      mb.push_back(Eigen::VectorXf::Zero(out));
    }
    resize_batch(batch);
  }
  void resize_batch(int batch) {
    A.clear();
    for (int s : kSizes) A.emplace_back(s, batch);
  }

  // Forward over the batch in A[0]; logits in A[3].
  void forward() {
    const auto batch = static_cast<std::size_t>(A[0].cols());
    for (int l = 0; l < 3; ++l) {
      if (!fc.empty()) {
        fc[l]->forward(A[l].data(), batch, A[l + 1].data(), b[l].data());  // compact
      } else {
        A[l + 1].noalias() = W[l] * A[l];  // masked dense
        A[l + 1].colwise() += b[l];
      }
      if (l < 2) A[l + 1] = A[l + 1].cwiseMax(0.0f);
    }
  }

  // Forward + backward on the batch in A[0]; returns the mean cross-entropy loss.
  float forward_backward(const std::vector<int>& y) {
    forward();
    const Eigen::Index batch = A[0].cols();
    Matrix delta = A[3];  // softmax - one-hot, / batch
    float loss = 0;
    for (Eigen::Index j = 0; j < batch; ++j) {
      auto p = delta.col(j);
      p = (p.array() - p.maxCoeff()).exp();
      p /= p.sum();
      loss -= std::log(std::max(p(y[j]), 1e-12f));
      p(y[j]) -= 1.0f;
    }
    delta /= static_cast<float>(batch);
    for (int l = 2; l >= 0; --l) {
      gb[l] = delta.rowwise().sum();
      Matrix back(l > 0 ? A[l].rows() : 0, batch);
      if (!fc.empty()) {
        fc[l]->backward(A[l].data(), delta.data(), static_cast<std::size_t>(batch),
                        l > 0 ? back.data() : nullptr);
      } else {
        gW[l].noalias() = delta * A[l].transpose();  // dense: RigL reads it at mask updates
        if (l > 0) back.noalias() = W[l].transpose() * delta;
      }
      if (l > 0) delta = back.cwiseProduct((A[l].array() > 0.0f).cast<float>().matrix());
    }
    return loss / static_cast<float>(batch);
  }

  // SGD with momentum and weight decay (PyTorch's semantics).
  void sgd(float lr, float mom, float wd) {
    for (int l = 0; l < 3; ++l) {
      if (!fc.empty()) {
        fc[l]->sgd_step({lr, mom, 0.0f, wd, false});  // compact
      } else {
        mW[l] = mom * mW[l] + gW[l] + wd * W[l];
        W[l] -= lr * mW[l];
      }
      mb[l] = mom * mb[l] + gb[l];
      b[l] -= lr * mb[l];
    }
  }

  std::size_t weights() const { return W[0].size() + W[1].size() + W[2].size(); }
  std::size_t nonzeros() const {  // from the dense views: call sync_dense_views() first
    std::size_t n = 0;
    for (auto& w : W) n += static_cast<std::size_t>((w.array() != 0.0f).count());
    return n;
  }
};

// Copies images order[first, first + n) into the columns of X (pixel-major: one row per pixel)
// and their labels into y. Rows are written contiguously; each image's 16-pixel cache line is
// read 16 times while it stays in L1 (column by column would write with a stride of n floats).
void load_batch(const east::data::ImageSet& s, const std::vector<std::size_t>& order, std::size_t first,
                Matrix& X, std::vector<int>& y) {
  const auto n = static_cast<std::size_t>(X.cols());
  std::vector<const float*> img(n);
  y.resize(n);
  for (std::size_t j = 0; j < n; ++j) {
    img[j] = s.pixels.data() + order[first + j] * 784;
    y[j] = s.labels[order[first + j]];
  }
  for (Eigen::Index p = 0; p < 784; ++p) {
    float* row = X.row(p).data();
    for (std::size_t j = 0; j < n; ++j) row[j] = img[j][p];
  }
}

// Test accuracy over all images, in chunks of 1000 (changes the network's batch size).
float accuracy(Mlp& net, const east::data::ImageSet& s) {
  std::vector<std::size_t> order(s.count);
  std::iota(order.begin(), order.end(), 0);
  std::size_t correct = 0;
  std::vector<int> y;
  for (std::size_t start = 0; start < s.count; start += 1000) {
    const std::size_t n = std::min<std::size_t>(1000, s.count - start);
    net.resize_batch(static_cast<int>(n));
    load_batch(s, order, start, net.A[0], y);
    net.forward();
    for (std::size_t j = 0; j < n; ++j) {
      Eigen::Index arg;
      net.A[3].col(static_cast<Eigen::Index>(j)).maxCoeff(&arg);
      correct += arg == y[j];
    }
  }
  return s.count ? static_cast<float>(correct) / static_cast<float>(s.count) : 0.0f;
}

struct Result {
  std::string method, kernels;
  float accuracy;
  std::size_t nonzeros, weights;
  double seconds_per_epoch, cpu_seconds_per_epoch;  // wall; CPU time of the process
};

struct EpochTime {
  double wall = 0, cpu = 0;
};

// The training loop; `ctl` is null for the dense baseline. Returns the mean time per epoch
// (training steps only).
template <class Controller>
EpochTime train(const std::string& label, const Options& o, const east::data::ImageSet& train_set, Mlp& net,
                Controller* ctl, float lr0, float wd) {
  const std::size_t B = static_cast<std::size_t>(o.batch), steps_per_epoch = train_set.count / B;
  const std::size_t total = steps_per_epoch * static_cast<std::size_t>(o.epochs);
  std::vector<std::size_t> order(train_set.count);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(o.seed);
  east::Progress progress(label, total, "steps");
  std::vector<int> y;
  std::int64_t step = 0;
  float loss_avg = 0;
  EpochTime t;
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    std::shuffle(order.begin(), order.end(), rng);
    const auto t0 = std::chrono::steady_clock::now();
    const std::clock_t c0 = std::clock();
    for (std::size_t s = 0; s < steps_per_epoch; ++s, ++step) {
      const float lr = static_cast<std::size_t>(step) >= total * 3 / 4 ? lr0 * o.lr_decay : lr0;  // last 25%
      load_batch(train_set, order, s * B, net.A[0], y);
      const float loss = net.forward_backward(y);
      loss_avg = step == 0 ? loss : 0.98f * loss_avg + 0.02f * loss;
      if (ctl) ctl->before_optimizer_step(step);  // masks dense gradients (kept dense on update steps)
      net.sgd(lr, o.momentum, wd);
      if (ctl) ctl->after_optimizer_step(step);  // drop/grow on update steps; masks weights + momentum
      char extra[64];
      std::snprintf(extra, sizeof extra, "epoch %d loss %.3f", epoch + 1, loss_avg);
      progress.update(static_cast<std::size_t>(step) + 1, extra);
    }
    t.wall += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / o.epochs;
    t.cpu += static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC / o.epochs;
  }
  return t;
}

Result run(const std::string& method, const std::string& kernels, const Options& o,
           const east::data::ImageSet& train_set, const east::data::ImageSet& test_set) {
  const bool compact = kernels == "sparse" && method != "dense";
  Mlp net(o.seed, o.batch, compact);
  const std::string label = method + "/" + (method == "dense" ? "eigen" : kernels);
  EpochTime spe;
  const float lr0 = o.lr_for(method), wd = o.wd_for(method);
  std::fprintf(stderr, "%s: lr %g, weight decay %g\n", label.c_str(), lr0, wd);
  if (method == "dense") {
    spe = train<east::Controller<
        east::Method<east::Uniform, east::ConstantDensity, east::ConstantDrop, east::Never>>>(
        label, o, train_set, net, nullptr, lr0, wd);
  } else {
    east::ParameterSet params;
    for (int l = 0; l < 3; ++l) {
      const std::string name = "fc" + std::to_string(l + 1);
      if (compact) {  // the compact layer holds the gradient and momentum of its nonzeros
        east::add_eigen(params, name, net.W[l]);
        net.fc.push_back(std::make_unique<CompactLinear>(params, name, east::sparse::Layout::feature_major));
      } else {
        east::add_eigen(params, name, net.W[l], net.gW[l]);
        params.add_state(name, net.mW[l].data());  // momentum is masked too
      }
    }
    const std::int64_t steps =
        static_cast<std::int64_t>(train_set.count / static_cast<std::size_t>(o.batch)) * o.epochs;
    // RigL's recipe: ΔT = 100, cosine drop 0.3 → 0, updates until 75% of training, ERK.
    const east::DstConfig cfg{1.0 - o.sparsity, o.update_interval, steps * 3 / 4, o.drop_fraction};
    east::ControllerOptions copt{o.seed};
    if (o.init == "none") copt.init = east::InitScaling::none;  // default: fan-in scaling
    auto go = [&](auto ctl) {
      spe = train(label, o, train_set, net, &ctl, lr0, wd);
      ctl.sync_dense_views();  // compact layers: bring the dense weights up to date
    };
    auto with = [&](auto dist) {
      if (method == "rigl")
        go(east::make_rigl(params, cfg, copt, dist));
      else if (method == "set")
        go(east::make_set(params, cfg, copt, dist));
      else
        go(east::make_static(params, 1.0 - o.sparsity, copt, dist));
    };
    if (o.distribution == "erk")
      with(east::ErdosRenyiKernel{});
    else
      with(east::Uniform{});
  }
  return Result{method,
                method == "dense" ? "eigen" : kernels,
                accuracy(net, test_set),
                net.nonzeros(),
                net.weights(),
                spe.wall,
                spe.cpu};
}

east::data::ImageSet limit(east::data::ImageSet s, std::size_t n) {
  if (n == 0 || n >= s.count) return s;
  s.count = n;
  s.pixels.resize(n * s.rows * s.cols);
  s.labels.resize(n);
  return s;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  east::kernels::set_threads(o.threads);  // east's kernels (OpenMP; 1 thread without it)
  Eigen::setNbThreads(o.threads);         // Eigen's GEMMs (OpenMP when built with -fopenmp)
  std::fprintf(stderr, "loading Fashion-MNIST from %s\n", o.data.c_str());
  const auto train_set = limit(east::data::read_idx_images(o.data + "/train-images-idx3-ubyte.gz",
                                                           o.data + "/train-labels-idx1-ubyte.gz"),
                               o.train_limit);
  const auto test_set = limit(east::data::read_idx_images(o.data + "/t10k-images-idx3-ubyte.gz",
                                                          o.data + "/t10k-labels-idx1-ubyte.gz"),
                              o.test_limit);
  east::detail::require(train_set.rows * train_set.cols == 784 && test_set.rows * test_set.cols == 784,
                        "mlp_fashion_mnist", "images of ", train_set.rows, "x", train_set.cols,
                        " (valid: 28x28)");
  east::detail::require(train_set.count >= static_cast<std::size_t>(o.batch), "mlp_fashion_mnist",
                        "--train-limit ", train_set.count, " (valid: >= --batch ", o.batch, ")");
  std::fprintf(stderr, "train %zu, test %zu images; %d epoch(s), batch %d, %d thread(s), sparsity %g\n",
               train_set.count, test_set.count, o.epochs, o.batch, o.threads, o.sparsity);

  std::vector<Result> results;
  for (const auto& method : o.methods)
    for (const auto& kernels : o.kernels) {
      if (method == "dense" && kernels != o.kernels.front()) continue;  // one dense run (Eigen)
      results.push_back(run(method, kernels, o, train_set, test_set));
      const auto& r = results.back();
      std::printf("%s/%s: test accuracy %.2f%%, nonzeros %zu of %zu, %.2f s per epoch (CPU %.2f s)\n",
                  r.method.c_str(), r.kernels.c_str(), 100.0 * r.accuracy, r.nonzeros, r.weights,
                  r.seconds_per_epoch, r.cpu_seconds_per_epoch);
      std::fflush(stdout);
    }
  std::printf("\n%-8s %-8s %10s %10s %10s %9s %9s\n", "method", "kernels", "test acc", "nonzeros", "density",
              "s/epoch", "CPU s");
  for (const auto& r : results)
    std::printf("%-8s %-8s %9.2f%% %10zu %9.3f%% %9.2f %9.2f\n", r.method.c_str(), r.kernels.c_str(),
                100.0 * r.accuracy, r.nonzeros,
                100.0 * static_cast<double>(r.nonzeros) / static_cast<double>(r.weights), r.seconds_per_epoch,
                r.cpu_seconds_per_epoch);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
