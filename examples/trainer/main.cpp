// east-trainer: the reference trainer (see docs/trainer.md).
//   east-trainer --method east --sparsity 0.999 --epochs 4 --out out/east
//   east-trainer --bench-dyrelu      times DyReLU-B: torch ops vs east's kernels
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <map>

#include "trainer.hpp"

namespace {

using east_trainer::Config;

const char* usage = R"(usage: east-trainer [options]
  --method M            dense | static | set | rigl | east | east-no-dyrelu | east-no-sharing | east-no-cyclic  [east]
  --sparsity S          target sparsity in [0, 1), e.g. 0.999 (dense ignores it)                             [0.999]
  --dataset D           fashion-mnist | mnist | cifar10 | cifar100                                            [fashion-mnist]
  --data-dir DIR        where the data files are   [/usr/share/datasets/fashion-mnist, data/<dataset> for CIFAR]
  --depth N             ResNet depth 18 | 34 | 50                                                              [34]
  --width W             width multiplier of 64/128/256/512                                                     [0.25]
  --epochs N            [4]     --batch N  [128]     --lr X  [0.1]     --momentum X  [0.9]
  --weight-decay X      [5e-4]  --no-nesterov        --clip X  gradient-norm clip, 0 = off  [1.0]
  --train-subset N      use N images of the train file (0 = all); --val-fraction of them held out          [0]
  --val-fraction X      [0.1]   --test-subset N  test images evaluated (0 = all)  [0]   --no-augment
  --seed N              model init, masks, data order, augmentation                                        [0]
  --data-seed N         train subset and validation split                                                  [0]
  --threads N           torch/OpenMP threads                                                               [2]
  --updates N           mask updates per run                                                               [20]
  --update-end X        fraction of training after which masks stay fixed                                  [0.75]
  --drop-fraction X     cosine drop fraction start [0.5]   --drop-floor X  its end [0.005]
  --cyclic-fraction X   EAST: cycles cover this fraction of training [0.4]   --cycles N [2]   --cyclic-multiplier X [3]
  --dyrelu-start X      EAST: DyReLU beta ramps 1 -> 0 from this fraction [0.25] ... --dyrelu-end X  to this one [0.5]
  --freeze-hypernet     freeze the DyReLU hyper-network once the ramp starts (no gradients, no optimizer steps)
  --dyrelu-impl I       torch | kernels (east's framework-free kernels)                                     [kernels]
  --dyrelu-init I       default (torch's Linear init) | relu (last layer zeroed: starts as exactly ReLU)    [default]
  --dyrelu-ramp R       linear | cosine: shape of the beta ramp                                              [linear]
  --dyrelu-mode M       ramp-only (as ES2's code: plain ReLU while beta = 1, DyReLU only in the ramp)
                        | full (DyReLU-B from the first step, EAST-SPEC section 2)  [ramp-only]
  --hyper-lr X          learning-rate multiplier of the DyReLU hyper-networks                                [1]
  --hyper-wd X          weight decay of the DyReLU hyper-networks                                [= --weight-decay]
  --dyrelu on|off, --sharing on|off, --cyclic on|off
                        switch one of EAST's tricks regardless of --method (e.g. rigl with DyReLU)
  --connect             repair the initial masks so every layer lies on an input-to-output path
                        (same per-layer counts; docs/masks.md); a missing path is reported either way
  --connect-all         stronger: move every weight that lies on no input-to-output path onto one
  --kernels K           convolutions: auto (east's sparse kernels below the measured crossover density,
                        libtorch above) | sparse (always east's) | dense (always libtorch, masked)       [auto]
  --out DIR             write result.json, result.csv and checkpoint.east (every epoch) there
  --resume              continue from DIR/checkpoint.east when it exists (same settings required)
  --stop-after-epochs N stop after N epochs of this process (to test resuming)
  --log-every N         steps between progress lines (0 = ~10 per epoch)   --quiet
data parallelism (docs/distributed.md; --batch stays the global batch):
  --world-size N        ranks                                                           [$WORLD_SIZE, else 1]
  --rank R              this process, in [0, N)                                         [$RANK, else 0]
  --dist-init URL       tcp://HOST:PORT (rank 0 serves the store) | file:///PATH
                        [$EAST_DIST_INIT, else tcp://$MASTER_ADDR:$MASTER_PORT]
  --dist-timeout S      seconds a rank waits for its peers before failing                  [300]
  --dist-reduce R       ring (Gloo's all-reduce) | rank-order (bit-equal to one process for any N)  [ring]
  --accumulate K        micro-batches per optimizer step on each rank                        [1]
  --bench-dyrelu        time DyReLU-B forward+backward, torch ops vs kernels, and exit
  --help
)";

void mkdir_p(const std::string& dir) {
  std::string cur;
  for (std::size_t i = 0; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      if (!cur.empty() && ::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST)
        throw east::InvalidArgument("east-trainer: --out: cannot create '" + cur +
                                    "': " + std::strerror(errno));
    }
    if (i < dir.size()) cur += dir[i];
  }
}

template <class T>
T parse_number(const std::string& flag, const std::string& v) {
  try {
    std::size_t used = 0;
    T out;
    if constexpr (std::is_floating_point_v<T>)
      out = static_cast<T>(std::stod(v, &used));
    else if constexpr (std::is_unsigned_v<T>) {
      if (!v.empty() && v[0] == '-') throw std::invalid_argument("negative");
      out = static_cast<T>(std::stoull(v, &used));
    } else
      out = static_cast<T>(std::stoll(v, &used));
    if (used != v.size()) throw std::invalid_argument("trailing characters");
    return out;
  } catch (const std::exception&) {
    throw east::InvalidArgument("east-trainer: " + flag + " '" + v + "' is not a valid number");
  }
}

int parse_switch(const std::string& flag, const std::string& v) {
  if (v == "on") return 1;
  if (v == "off") return 0;
  throw east::InvalidArgument("east-trainer: " + flag + " '" + v + "' (valid: on, off)");
}

void bench_dyrelu(int threads) {
  namespace ta = east::torch_adapter;
  torch::set_num_threads(threads);
  torch::manual_seed(0);
  struct Shape {
    int64_t B, C, H;
  };
  std::cout << "DyReLU-B forward+backward, median of 15 (after 3 warm-up), " << threads
            << " thread(s), beta 1\n";
  std::cout << "shape (BxCxHxW)        torch ops ms   kernels ms   torch/kernels\n";
  for (Shape s :
       {Shape{128, 16, 28}, Shape{128, 32, 14}, Shape{128, 64, 7}, Shape{128, 128, 4}, Shape{64, 64, 32}}) {
    ta::DyReLUB m(s.C);
    auto x = torch::randn({s.B, s.C, s.H, s.H}).requires_grad_(true);
    auto g = torch::randn({s.B, s.C, s.H, s.H});
    double med[2];
    for (int k = 0; k < 2; ++k) {
      m->set_backend(k == 0 ? ta::DyReLUBackend::torch_ops : ta::DyReLUBackend::kernels);
      std::vector<double> t;
      for (int i = 0; i < 18; ++i) {
        const auto a = std::chrono::steady_clock::now();
        auto y = m->forward(x);
        y.backward(g);
        const double ms =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count();
        if (i >= 3) t.push_back(ms);
        x.mutable_grad().zero_();
        m->zero_grad();
      }
      std::sort(t.begin(), t.end());
      med[k] = t[t.size() / 2];
    }
    std::cout << std::setw(4) << s.B << "x" << std::setw(3) << s.C << "x" << s.H << "x" << s.H
              << std::string(10, ' ') << std::fixed << std::setprecision(2) << std::setw(9) << med[0]
              << std::setw(13) << med[1] << std::setw(14) << med[0] / med[1] << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  try {
    std::string cmd = "east-trainer";
    for (int i = 1; i < argc; ++i) cmd += std::string(" ") + argv[i];
    c.command_line = cmd;
    bool bench = false;
    std::map<std::string, std::function<void(const std::string&)>> with_value = {
        {"--method", [&](const std::string& v) { c.method = v; }},
        {"--sparsity", [&](const std::string& v) { c.sparsity = parse_number<double>("--sparsity", v); }},
        {"--dataset", [&](const std::string& v) { c.dataset = v; }},
        {"--data-dir", [&](const std::string& v) { c.data_dir = v; }},
        {"--depth", [&](const std::string& v) { c.depth = parse_number<int>("--depth", v); }},
        {"--width", [&](const std::string& v) { c.width = parse_number<double>("--width", v); }},
        {"--epochs", [&](const std::string& v) { c.epochs = parse_number<int>("--epochs", v); }},
        {"--batch", [&](const std::string& v) { c.batch = parse_number<int64_t>("--batch", v); }},
        {"--lr", [&](const std::string& v) { c.lr = parse_number<double>("--lr", v); }},
        {"--momentum", [&](const std::string& v) { c.momentum = parse_number<double>("--momentum", v); }},
        {"--weight-decay",
         [&](const std::string& v) { c.weight_decay = parse_number<double>("--weight-decay", v); }},
        {"--clip", [&](const std::string& v) { c.clip = parse_number<double>("--clip", v); }},
        {"--train-subset",
         [&](const std::string& v) { c.train_subset = parse_number<int64_t>("--train-subset", v); }},
        {"--test-subset",
         [&](const std::string& v) { c.test_subset = parse_number<int64_t>("--test-subset", v); }},
        {"--val-fraction",
         [&](const std::string& v) { c.val_fraction = parse_number<double>("--val-fraction", v); }},
        {"--seed", [&](const std::string& v) { c.seed = parse_number<std::uint64_t>("--seed", v); }},
        {"--data-seed",
         [&](const std::string& v) { c.data_seed = parse_number<std::uint64_t>("--data-seed", v); }},
        {"--threads", [&](const std::string& v) { c.threads = parse_number<int>("--threads", v); }},
        {"--updates", [&](const std::string& v) { c.updates = parse_number<int>("--updates", v); }},
        {"--update-end",
         [&](const std::string& v) { c.update_end = parse_number<double>("--update-end", v); }},
        {"--drop-fraction",
         [&](const std::string& v) { c.drop_fraction = parse_number<double>("--drop-fraction", v); }},
        {"--drop-floor",
         [&](const std::string& v) { c.drop_floor = parse_number<double>("--drop-floor", v); }},
        {"--cyclic-fraction",
         [&](const std::string& v) { c.cyclic_fraction = parse_number<double>("--cyclic-fraction", v); }},
        {"--cycles", [&](const std::string& v) { c.cycles = parse_number<int>("--cycles", v); }},
        {"--cyclic-multiplier",
         [&](const std::string& v) { c.cyclic_multiplier = parse_number<double>("--cyclic-multiplier", v); }},
        {"--dyrelu-start",
         [&](const std::string& v) { c.dyrelu_start = parse_number<double>("--dyrelu-start", v); }},
        {"--dyrelu-end",
         [&](const std::string& v) { c.dyrelu_end = parse_number<double>("--dyrelu-end", v); }},
        {"--dyrelu-impl", [&](const std::string& v) { c.dyrelu_impl = v; }},
        {"--dyrelu-init", [&](const std::string& v) { c.dyrelu_init = v; }},
        {"--dyrelu-ramp", [&](const std::string& v) { c.dyrelu_ramp = v; }},
        {"--dyrelu-mode", [&](const std::string& v) { c.dyrelu_mode = v; }},
        {"--hyper-lr", [&](const std::string& v) { c.hyper_lr = parse_number<double>("--hyper-lr", v); }},
        {"--hyper-wd", [&](const std::string& v) { c.hyper_wd = parse_number<double>("--hyper-wd", v); }},
        {"--dyrelu", [&](const std::string& v) { c.dyrelu_on = parse_switch("--dyrelu", v); }},
        {"--sharing", [&](const std::string& v) { c.sharing_on = parse_switch("--sharing", v); }},
        {"--cyclic", [&](const std::string& v) { c.cyclic_on = parse_switch("--cyclic", v); }},
        {"--kernels", [&](const std::string& v) { c.kernels = v; }},
        {"--out", [&](const std::string& v) { c.out_dir = v; }},
        {"--stop-after-epochs",
         [&](const std::string& v) { c.stop_after_epochs = parse_number<int>("--stop-after-epochs", v); }},
        {"--log-every", [&](const std::string& v) { c.log_every = parse_number<int64_t>("--log-every", v); }},
        {"--world-size", [&](const std::string& v) { c.world_size = parse_number<int>("--world-size", v); }},
        {"--rank", [&](const std::string& v) { c.rank = parse_number<int>("--rank", v); }},
        {"--dist-init", [&](const std::string& v) { c.dist_init = v; }},
        {"--dist-timeout",
         [&](const std::string& v) { c.dist_timeout = parse_number<double>("--dist-timeout", v); }},
        {"--dist-reduce", [&](const std::string& v) { c.dist_reduce = v; }},
        {"--accumulate", [&](const std::string& v) { c.accumulate = parse_number<int>("--accumulate", v); }},
    };
    std::map<std::string, std::function<void()>> flags = {
        {"--no-nesterov", [&] { c.nesterov = false; }},
        {"--no-augment", [&] { c.augment = false; }},
        {"--freeze-hypernet", [&] { c.freeze_hypernet = true; }},
        {"--connect", [&] { c.connect = true; }},
        {"--connect-all", [&] { c.connect_all = true; }},
        {"--resume", [&] { c.resume = true; }},
        {"--quiet", [&] { c.quiet = true; }},
        {"--bench-dyrelu", [&] { bench = true; }},
    };
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i], v;
      bool has_eq = false;
      if (const auto eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos)
        v = a.substr(eq + 1), a = a.substr(0, eq), has_eq = true;
      if (a == "--help" || a == "-h") {
        std::cout << usage;
        return 0;
      }
      if (auto f = flags.find(a); f != flags.end() && !has_eq) {
        f->second();
      } else if (auto w = with_value.find(a); w != with_value.end()) {
        if (!has_eq) {
          if (i + 1 >= argc)
            throw east::InvalidArgument("east-trainer: " + a + " needs a value (see --help)");
          v = argv[++i];
        }
        w->second(v);
      } else {
        throw east::InvalidArgument("east-trainer: unknown argument '" + a + "' (see --help)");
      }
    }
    if (bench) {
      bench_dyrelu(c.threads);
      return 0;
    }
    if (!c.out_dir.empty()) mkdir_p(c.out_dir);
    const auto r = east_trainer::run(c);
    if (!r.finished) {
      std::cerr << "stopped after --stop-after-epochs " << c.stop_after_epochs
                << "; continue with --resume\n";
      return 3;
    }
    if (r.config.rank == 0)
      east_trainer::print_summary(r, std::cout);
    else
      std::cout << "east-trainer rank " << r.config.rank << " of " << r.world_size << " done: mask digest "
                << east_trainer::hex_digest(r.mask_digest) << "\n";
    return 0;
  } catch (const east_trainer::DataError& e) {
    std::cerr << "east-trainer: data error: " << e.what() << "\n";
    return 2;
  } catch (const east::InvalidArgument& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const east::distributed::CommunicationError& e) {
    std::cerr << "east-trainer: " << e.what() << "\n";
    return 4;
  } catch (const east::distributed::RankDisagreement& e) {
    std::cerr << "east-trainer: " << e.what() << "\n";
    return 5;
  } catch (const east::CorruptCheckpoint& e) {
    std::cerr << "east-trainer: corrupt checkpoint: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "east-trainer: " << e.what() << "\n";
    return 1;
  }
}
