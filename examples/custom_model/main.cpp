// east-custom-model: your own libtorch model and loop, made sparse with east.
//
// The network is libtorch's classic MNIST example (two convolutions, dropout, two linear layers,
// no BatchNorm) on Fashion-MNIST, trained with torch::optim::SGD in a plain loop. Against the
// dense program the changes are the layer type names (east::nn:: for torch::nn::) and the lines
// marked "east:" below. Every run is compared with the same program trained densely.
//
//   east-custom-model [--method rigl] [--sparsity 0.99] [--epochs 2] [--train-subset 0] [--threads 1]
//                     [--kernels auto|sparse|dense] [--no-fan-in] [--no-dense-baseline] [--seed 0]
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <east/adapters/torch/allocator.hpp>
#include <east/adapters/torch/sparsifier.hpp>
#include <east/data/idx.hpp>
#include <east/platform.hpp>
#include <east/progress.hpp>
#include <iostream>
#include <memory>
#include <string>

#include "net.hpp"

namespace {
using custom_model::Net;


struct Options {
  std::string method = "rigl", kernels = "auto", data = "/usr/share/datasets/fashion-mnist";
  double sparsity = 0.99, lr = 0.01, momentum = 0.5;
  int epochs = 2, threads = 1;
  std::int64_t batch = 64, train_subset = 0, test_subset = 0;
  std::uint64_t seed = 0;
  bool fan_in = true, dense_baseline = true;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw east::InvalidArgument("east-custom-model: " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--method") o.method = next();
    else if (a == "--sparsity") o.sparsity = std::stod(next());
    else if (a == "--epochs") o.epochs = std::stoi(next());
    else if (a == "--train-subset") o.train_subset = std::stoll(next());
    else if (a == "--test-subset") o.test_subset = std::stoll(next());
    else if (a == "--batch") o.batch = std::stoll(next());
    else if (a == "--lr") o.lr = std::stod(next());
    else if (a == "--momentum") o.momentum = std::stod(next());
    else if (a == "--threads") o.threads = std::stoi(next());
    else if (a == "--seed") o.seed = std::stoull(next());
    else if (a == "--kernels") o.kernels = next();
    else if (a == "--data") o.data = next();
    else if (a == "--no-fan-in") o.fan_in = false;
    else if (a == "--no-dense-baseline") o.dense_baseline = false;
    else if (a == "--help" || a == "-h") {
      std::puts(
          "usage: east-custom-model [--method dense|static|set|rigl|east] [--sparsity S] [--epochs N]\n"
          "         [--train-subset N] [--test-subset N] [--batch N] [--lr X] [--momentum X] [--threads N]\n"
          "         [--kernels auto|sparse|dense] [--no-fan-in] [--no-dense-baseline] [--seed N] [--data DIR]");
      std::exit(0);
    } else
      throw east::InvalidArgument("east-custom-model: unknown argument '" + a + "' (see --help)");
  }
  const char* w = "east-custom-model";
  east::detail::require(o.sparsity >= 0 && o.sparsity < 1, w, "--sparsity ", o.sparsity, " (valid: [0, 1))");
  east::detail::require(o.epochs >= 1, w, "--epochs ", o.epochs, " (valid: >= 1)");
  east::detail::require(o.threads >= 1, w, "--threads ", o.threads, " (valid: >= 1)");
  east::detail::require(o.batch >= 1, w, "--batch ", o.batch, " (valid: >= 1)");
  east::detail::require(o.kernels == "auto" || o.kernels == "sparse" || o.kernels == "dense", w, "--kernels ",
                        o.kernels, " (valid: auto, sparse, dense)");
  (void)east::presets::by_name(o.method, 1.0 - o.sparsity);  // rejects unknown methods
  return o;
}

struct Data {
  torch::Tensor x, y;
};
Data load(const std::string& images, const std::string& labels, std::int64_t subset) {
  const auto s = east::data::read_idx_images(images, labels);
  const auto n = subset > 0 ? std::min<std::int64_t>(subset, static_cast<std::int64_t>(s.count))
                            : static_cast<std::int64_t>(s.count);
  auto x = torch::from_blob(const_cast<float*>(s.pixels.data()), {n, 1, 28, 28}).clone();
  auto y = torch::from_blob(const_cast<std::uint8_t*>(s.labels.data()), {n}, torch::kUInt8).to(torch::kInt64);
  return {(x - 0.2860) / 0.3530, y};  // Fashion-MNIST's mean and standard deviation
}

struct Result {
  std::string name;
  double accuracy = 0, seconds_per_epoch = 0;
  std::size_t nonzeros = 0, weights = 0, compact = 0;
};

Result train(const Options& o, const std::string& method, const Data& train_set, const Data& test_set) {
  torch::manual_seed(o.seed);
  Net model;
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(o.lr).momentum(o.momentum));
  const std::int64_t steps_per_epoch = train_set.x.size(0) / o.batch;

  // east: one object, built from the model, the optimizer, the method and the run's length.
  std::unique_ptr<east::torch_adapter::Sparsifier> sparsity;
  if (method != "dense") {
    east::torch_adapter::SparsifierOptions so;
    so.seed = o.seed;
    if (!o.fan_in) so.init = east::InitScaling::none;
    if (o.kernels != "auto") so.crossover = o.kernels == "sparse" ? east::sparse::Crossover{2, 2} : east::sparse::Crossover{0, 0};
    sparsity = std::make_unique<east::torch_adapter::Sparsifier>(
        *model, optimizer, east::presets::by_name(method, 1.0 - o.sparsity), o.epochs * steps_per_epoch, so);
    std::cerr << sparsity->summary();
  }

  east::Progress progress(method, static_cast<std::size_t>(o.epochs * steps_per_epoch), "steps");
  const auto t0 = std::chrono::steady_clock::now();
  std::size_t done = 0;
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    model->train();
    torch::manual_seed(o.seed * 1000 + static_cast<std::uint64_t>(epoch));
    const auto order = torch::randperm(train_set.x.size(0));
    double loss_avg = 0;
    for (std::int64_t b = 0; b < steps_per_epoch; ++b) {
      const auto idx = order.slice(0, b * o.batch, (b + 1) * o.batch);
      optimizer.zero_grad();
      auto loss = torch::nll_loss(model->forward(train_set.x.index_select(0, idx)), train_set.y.index_select(0, idx));
      loss.backward();
      optimizer.step();
      if (sparsity) sparsity->step();  // east: masks, mask updates, compact weights
      loss_avg = b == 0 && epoch == 0 ? loss.item<double>() : 0.98 * loss_avg + 0.02 * loss.item<double>();
      char extra[64];
      std::snprintf(extra, sizeof extra, "epoch %d loss %.3f", epoch + 1, loss_avg);
      progress.update(++done, extra);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  torch::NoGradGuard ng;
  model->eval();
  std::int64_t correct = 0;
  for (std::int64_t i = 0; i < test_set.x.size(0); i += 1000) {
    const auto n = std::min<std::int64_t>(1000, test_set.x.size(0) - i);
    correct += model->forward(test_set.x.slice(0, i, i + n)).argmax(1).eq(test_set.y.slice(0, i, i + n)).sum().item<std::int64_t>();
  }
  Result r;
  r.name = method;
  r.accuracy = 100.0 * static_cast<double>(correct) / static_cast<double>(test_set.x.size(0));
  r.seconds_per_epoch = seconds / o.epochs;
  if (sparsity) {
    sparsity->controller().sync_dense_views();  // compact layers' weights into the dense tensors
    r.compact = sparsity->compact_layers();
  }
  for (const auto& p : model->named_parameters())  // nonzeros counted from the weights themselves
    if (p.key().size() > 7 && p.key().compare(p.key().size() - 7, 7, ".weight") == 0) {
      r.weights += static_cast<std::size_t>(p.value().numel());
      r.nonzeros += static_cast<std::size_t>((p.value() != 0).sum().item<std::int64_t>());
    }
  return r;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  torch::set_num_threads(o.threads);
  east::kernels::set_threads(o.threads);
  east::keep_freed_memory_for_reuse();  // glibc: reuse freed activations instead of page-faulting them
  east::torch_adapter::use_caching_allocator();  // large tensors: page-aligned blocks, reused
  const Data train_set = load(o.data + "/train-images-idx3-ubyte.gz", o.data + "/train-labels-idx1-ubyte.gz", o.train_subset);
  const Data test_set = load(o.data + "/t10k-images-idx3-ubyte.gz", o.data + "/t10k-labels-idx1-ubyte.gz", o.test_subset);
  std::fprintf(stderr, "Fashion-MNIST: %ld train, %ld test images; %d epochs, batch %ld, %d thread(s)\n",
               static_cast<long>(train_set.x.size(0)), static_cast<long>(test_set.x.size(0)), o.epochs,
               static_cast<long>(o.batch), o.threads);
  std::vector<Result> results;
  if (o.dense_baseline && o.method != "dense") results.push_back(train(o, "dense", train_set, test_set));
  results.push_back(train(o, o.method, train_set, test_set));
  std::printf("\n%-8s %9s %11s %12s %9s %8s\n", "method", "test acc", "nonzeros", "of weights", "s/epoch", "compact");
  for (const auto& r : results)
    std::printf("%-8s %8.2f%% %11zu %12zu %9.2f %8zu\n", r.name.c_str(), r.accuracy, r.nonzeros, r.weights,
                r.seconds_per_epoch, r.compact);
  const auto& last = results.back();
  std::printf("test accuracy %.2f%% (%s, sparsity %.4g, %zu nonzeros counted from the weights, %.2f s per epoch",
              last.accuracy, last.name.c_str(), o.sparsity, last.nonzeros, last.seconds_per_epoch);
  if (results.size() > 1) std::printf("; dense: %.2f%%, %.2f s per epoch", results[0].accuracy, results[0].seconds_per_epoch);
  std::printf(")\n");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
