// The reference trainer: data loaders on files written here, corrupt files, bad arguments, and
// resume == uninterrupted on a tiny model.
#include "../examples/trainer/trainer.hpp"
// glog (through c10) defines CHECK; Catch2 must own it.
#undef CHECK
#include "idx_files.hpp"
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace et = east_trainer;
namespace ta = east::torch_adapter;
using namespace east_test;

namespace {

std::string temp_dir(const std::string& name) {
  const std::string d = "east_test_torch_trainer_" + name;
  std::system(("rm -rf " + d + " && mkdir -p " + d).c_str());
  return d;
}

et::Config tiny(const std::string& data, const std::string& method) {
  et::Config c;
  c.dataset = "fashion-mnist";
  c.data_dir = data;
  c.method = method;
  c.sparsity = 0.9;
  c.depth = 34;
  c.width = 0.0625;
  c.epochs = 3;
  c.batch = 16;
  c.lr = 0.05;
  c.threads = 1;
  c.updates = 4;
  c.quiet = true;
  return c;
}

}  // namespace

TEST_CASE("IDX loader reads gzip and plain files written here", "[torch][data]") {
  for (bool gz : {true, false}) {
    const auto d = temp_dir(gz ? "idx_gz" : "idx_plain");
    write_idx_dataset(d, 30, 10, 12, gz);
    const auto ds = et::load_fashion_mnist(d);
    CHECK(ds.train.images.sizes() == torch::IntArrayRef({30, 1, 12, 12}));
    CHECK(ds.test.size() == 10);
    CHECK(ds.train.labels[1].item<int64_t>() == 7);
    CHECK(ds.train.images[0][0][0][0].item<int>() == 220);  // class 0: square at the origin
  }
}

TEST_CASE("corrupt or missing IDX files are rejected with clear errors", "[torch][data]") {
  const auto d = temp_dir("idx_bad");
  CHECK_THROWS_WITH(et::load_fashion_mnist(d), Catch::Contains("missing data file"));
  write_idx_dataset(d, 20, 10, 8, true);
  std::vector<std::uint8_t> b;
  put_be32(b, 0x803), put_be32(b, 20), put_be32(b, 8), put_be32(b, 8);
  b.resize(16 + 100);  // truncated pixels
  write_file(d + "/train-images-idx3-ubyte.gz", b, true);
  CHECK_THROWS_WITH(et::load_fashion_mnist(d), Catch::Contains("corrupt") && Catch::Contains("pixel bytes"));
  b[3] = 0x01;  // wrong magic
  write_file(d + "/train-images-idx3-ubyte.gz", b, true);
  CHECK_THROWS_WITH(et::load_fashion_mnist(d), Catch::Contains("not an IDX image file"));
  write_idx_dataset(d, 20, 10, 8, true);
  std::vector<std::uint8_t> lab;
  put_be32(lab, 0x801), put_be32(lab, 20);
  for (int i = 0; i < 20; ++i) lab.push_back(i == 5 ? 12 : 1);  // label out of range
  write_file(d + "/train-labels-idx1-ubyte.gz", lab, true);
  CHECK_THROWS_WITH(et::load_fashion_mnist(d), Catch::Contains("label 12"));
  // Garbage that claims to be gzip: a damaged stream.
  write_idx_dataset(d, 20, 10, 8, true);
  {
    std::fstream f(d + "/t10k-images-idx3-ubyte.gz", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(20);
    const char junk[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    f.write(junk, 16);
  }
  CHECK_THROWS_AS(et::load_fashion_mnist(d), et::DataError);
}

TEST_CASE("CIFAR-10 and CIFAR-100 binary loaders", "[torch][data]") {
  const auto d = temp_dir("cifar");
  auto records = [](int n, int label_bytes, int classes) {
    std::vector<std::uint8_t> b;
    for (int i = 0; i < n; ++i) {
      for (int l = 0; l < label_bytes; ++l) b.push_back(static_cast<std::uint8_t>((i + l) % classes));
      for (int p = 0; p < 3072; ++p) b.push_back(static_cast<std::uint8_t>((i + p) % 251));
    }
    return b;
  };
  for (int i = 1; i <= 5; ++i)
    write_file(d + "/data_batch_" + std::to_string(i) + ".bin", records(4, 1, 10), false);
  write_file(d + "/test_batch.bin", records(3, 1, 10), false);
  const auto c10 = et::load_cifar10(d);
  CHECK(c10.train.images.sizes() == torch::IntArrayRef({20, 3, 32, 32}));
  CHECK(c10.train.labels[3].item<int64_t>() == 3);
  CHECK(c10.train.images[1][0][0][1].item<int>() == 2);
  write_file(d + "/train.bin", records(6, 2, 100), false);
  write_file(d + "/test.bin", records(2, 2, 100), false);
  const auto c100 = et::load_cifar100(d);
  CHECK(c100.classes == 100);
  CHECK(c100.train.labels[2].item<int64_t>() == 3);  // the fine label (second byte)
  auto bad = records(2, 1, 10);
  bad.pop_back();
  write_file(d + "/test_batch.bin", bad, false);
  CHECK_THROWS_WITH(et::load_cifar10(d), Catch::Contains("whole number"));
  auto badlab = records(2, 1, 10);
  badlab[0] = 10;
  write_file(d + "/test_batch.bin", badlab, false);
  CHECK_THROWS_WITH(et::load_cifar10(d), Catch::Contains("label 10"));
}

TEST_CASE("bad arguments get clear errors", "[torch]") {
  et::Config c;
  c.method = "magic";
  CHECK_THROWS_WITH(et::validate(c), Catch::Contains("--method magic"));
  c = et::Config{};
  c.sparsity = 1.0;
  CHECK_THROWS_WITH(et::validate(c), Catch::Contains("--sparsity"));
  c = et::Config{};
  c.depth = 20;
  CHECK_THROWS_WITH(et::validate(c), Catch::Contains("18, 34, 50"));
  c = et::Config{};
  c.resume = true;
  CHECK_THROWS_WITH(et::validate(c), Catch::Contains("--out"));
  c = et::Config{};
  c.dataset = "imagenet";
  c.data_dir = ".";
  CHECK_THROWS_AS(et::run(c), east::InvalidArgument);
}

TEST_CASE("EAST training: exact budget, and resume equals an uninterrupted run", "[torch][resume]") {
  const auto data = temp_dir("resume_data");
  write_idx_dataset(data, 160, 40, 12, true);
  auto c = tiny(data, "east");
  const auto full = et::run(c);
  REQUIRE(full.finished);
  CHECK(full.nonzeros ==
        static_cast<std::size_t>(std::floor(0.1 * static_cast<double>(full.logical_size) + 1e-9)));
  CHECK(full.mask_updates >= 3);
  CHECK(full.layers.size() == 21);

  const auto out = temp_dir("resume_out");
  auto first = c;
  first.out_dir = out;
  first.stop_after_epochs = 1;
  CHECK_FALSE(et::run(first).finished);
  auto second = c;
  second.out_dir = out;
  second.resume = true;
  second.stop_after_epochs = 1;
  CHECK_FALSE(et::run(second).finished);
  auto third = second;
  third.stop_after_epochs = -1;
  const auto resumed = et::run(third);
  REQUIRE(resumed.finished);
  CHECK(resumed.test_loss == full.test_loss);
  CHECK(resumed.test_accuracy == full.test_accuracy);
  CHECK(resumed.val_history == full.val_history);
  CHECK(resumed.nonzeros == full.nonzeros);
  CHECK(resumed.mask_updates == full.mask_updates);
  std::ifstream json(out + "/result.json");
  CHECK(json.good());

  // A checkpoint of other settings is refused; a corrupt one too.
  auto other = third;
  other.seed = 99;
  CHECK_THROWS_WITH(et::run(other), Catch::Contains("other settings"));
  {
    std::fstream f(out + "/checkpoint.east", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.write("XXXX", 4);
  }
  CHECK_THROWS_AS(et::run(third), east::CorruptCheckpoint);
}

TEST_CASE("every method trains a step and meets its budget", "[torch]") {
  const auto data = temp_dir("methods_data");
  write_idx_dataset(data, 64, 16, 8, false);
  for (const char* m :
       {"dense", "static", "set", "rigl", "east-no-dyrelu", "east-no-sharing", "east-no-cyclic"}) {
    auto c = tiny(data, m);
    c.depth = 18;
    c.epochs = 1;
    c.dyrelu_impl = "torch";
    const auto r = et::run(c);
    INFO(m);
    CHECK(r.finished);
    if (std::string(m) == "dense")
      CHECK(r.density == 1.0);
    else
      CHECK(r.nonzeros ==
            static_cast<std::size_t>(std::floor(0.1 * static_cast<double>(r.logical_size) + 1e-9)));
  }
}

TEST_CASE("DyReLU study options: validation, fingerprint, init, groups and a true freeze", "[torch]") {
  et::Config c;
  c.dyrelu_init = "zero";
  CHECK_THROWS_WITH(et::validate(c), Catch::Contains("--dyrelu-init zero"));
  c = et::Config{};
  c.hyper_lr = -1;
  CHECK_THROWS_WITH(et::validate(c), Catch::Contains("--hyper-lr -1"));
  c = et::Config{};
  c.method = "set";
  c.cyclic_on = 1;
  CHECK_THROWS_WITH(et::validate(c), Catch::Contains("--cyclic on"));
  // Defaults keep the fingerprint of earlier checkpoints; a changed option joins it.
  c = et::Config{};
  const auto fp = et::fingerprint(c);
  CHECK(fp.find("init") == std::string::npos);
  CHECK(fp.find("connect") == std::string::npos);
  c.dyrelu_init = "relu";
  CHECK(et::fingerprint(c) == fp + "|init relu");
  c.dyrelu_init = "default";
  c.method = "rigl";
  c.dyrelu_on = 1;
  CHECK(c.dyrelu());
  CHECK_FALSE(c.share());

  // Zero init, a group with learning-rate 0, and the freeze: hyper-networks do not move.
  ta::ResNetOptions o;
  o.depth = 18;
  o.width = 0.0625;
  o.in_channels = 1;
  o.dyrelu = true;
  o.backend = ta::DyReLUBackend::torch_ops;
  for (int variant = 0; variant < 3; ++variant) {
    ta::ResNet net(o);
    et::Config k;
    k.method = "east";
    k.sparsity = 0.5;
    k.dyrelu_init = variant < 2 ? "relu" : "default";
    if (variant == 0)
      k.hyper_lr = 0, k.dyrelu_mode = "full";
    else if (variant == 1)
      k.freeze_hypernet = true, k.dyrelu_start = 0, k.dyrelu_end = 0.5, k.dyrelu_mode = "full";
    else  // ramp-only (the default) before the ramp: unused, so no weight decay or momentum either
      k.dyrelu_start = 0.5, k.dyrelu_end = 0.8;
    et::init_hypernets(k, *net);
    CHECK((net->stem_act->fc2->weight.abs().max().item<float>() == 0.0f) == (variant < 2));
    std::vector<torch::optim::OptimizerParamGroup> groups;
    const auto scale = et::optimizer_groups(k, *net, groups);
    torch::optim::SGD sgd(groups, torch::optim::SGDOptions(0.1));
    CHECK(sgd.param_groups().size() == (variant == 0 ? 2u : 1u));
    for (std::size_t g = 0; g < scale.size(); ++g)
      static_cast<torch::optim::SGDOptions&>(sgd.param_groups()[g].options()).lr(0.1 * scale[g]);
    ta::SparsifierOptions so;
    so.crossover = {0.0, 0.0};  // dense tensors stay current
    so.log = nullptr;
    ta::Sparsifier sparsity(*net, sgd, et::make_preset(k), 10, so);
    const auto fc1 = net->stem_act->fc1->weight.clone(), conv = net->stem_conv->weight.clone();
    for (std::int64_t step = 0; step < 3; ++step) {
      sgd.zero_grad();
      net->forward(torch::randn({4, 1, 8, 8})).sum().backward();
      sgd.step();
      sparsity.step();
    }
    INFO("variant " << variant);
    CHECK(torch::equal(net->stem_act->fc1->weight, fc1));
    CHECK_FALSE(torch::equal(net->stem_conv->weight, conv));
  }
  // The same ResNet, hyper-network trained: it moves (the checks above can fail).
  {
    ta::ResNet net(o);
    et::Config k;
    k.method = "east";
    k.sparsity = 0.5;
    k.dyrelu_mode = "full";
    std::vector<torch::optim::OptimizerParamGroup> groups;
    et::optimizer_groups(k, *net, groups);
    torch::optim::SGD sgd(groups, torch::optim::SGDOptions(0.1));
    ta::SparsifierOptions so;
    so.crossover = {0.0, 0.0};
    so.log = nullptr;
    ta::Sparsifier sparsity(*net, sgd, et::make_preset(k), 10, so);
    const auto fc1 = net->stem_act->fc1->weight.clone();
    sgd.zero_grad();
    net->forward(torch::randn({4, 1, 8, 8})).sum().backward();
    sgd.step();
    sparsity.step();
    CHECK_FALSE(torch::equal(net->stem_act->fc1->weight, fc1));
  }
}

TEST_CASE("--connect: every layer on a path at the start, exact budget; the check is recorded", "[torch]") {
  const auto data = temp_dir("connect_data");
  write_idx_dataset(data, 64, 16, 8, false);
  auto c = tiny(data, "rigl");
  c.depth = 18;
  c.epochs = 1;
  c.sparsity = 0.999;
  auto plain = et::run(c);
  c.connect = true;
  const auto r = et::run(c);
  CHECK(r.path_initial.connected);
  CHECK(r.path_initial.off_path.empty());
  CHECK(r.nonzeros == plain.nonzeros);
  CHECK(r.nonzeros ==
        static_cast<std::size_t>(std::floor(0.001 * static_cast<double>(r.logical_size) + 1e-9)));
  CHECK(!plain.path_initial.off_path.empty());  // at 0.1% of this tiny net the random mask is cut
}
