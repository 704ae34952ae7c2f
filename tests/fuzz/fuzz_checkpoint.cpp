// libFuzzer target for east::load_checkpoint (docs/checkpoints.md, "Fuzzing"). Not run by ctest.
//
// Input: one selector byte, then a checkpoint file. Selector bit 0-1 picks the controller loaded
// into (RigL, SNFS, EAST); bit 2 recomputes the CRC so mutations reach the parser. A rejected
// load must throw an east exception and change nothing; an accepted one must give a state that
// a fresh controller's restore() accepts. libFuzzer's -malloc_limit_mb catches large allocations.
// EAST_FUZZ_WRITE_SEEDS=dir writes one seed per controller into dir and exits.
#include <east/east.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>

#include "../checkpoint_bytes.hpp"
#include "../checkpoint_subjects.hpp"

namespace {

using namespace east;
using namespace east_test;

template <class Make>
struct Subject {
  using Ctl = decltype(std::declval<Make>()(std::declval<ParameterSet>(), 0));
  Make make;
  ToyModel model = ToyModel::small(), check_model = ToyModel::small();
  std::unique_ptr<Ctl> ctl, check;
  ControllerState before;
  std::string seed_file;

  explicit Subject(Make mk) : make(mk) {
    ToyModel src = ToyModel::small();
    Ctl trained = make(mixed_params(src), 1);
    train(src, trained, 0, 17);
    std::stringstream ss;
    save_checkpoint(trained, ss, "user");
    seed_file = ss.str();
    reset();
    check = std::make_unique<Ctl>(make(mixed_params(check_model), 3));
  }
  void reset() {
    model = ToyModel::small();
    ctl = std::make_unique<Ctl>(make(mixed_params(model), 2));
    train(model, *ctl, 0, 6);
    before = ctl->state();
  }
  void run(const std::string& bytes) {
    const auto weights = model.tensors;
    std::stringstream in(bytes);
    try {
      load_checkpoint(*ctl, in);
    } catch (const CorruptCheckpoint&) {
    } catch (const InvalidArgument&) {
    }
    if (east_test::same_state(ctl->state(), before)) {
      for (std::size_t l = 0; l < weights.size(); ++l)
        if (model.tensors[l].w != weights[l].w) std::abort();  // unchanged state, changed weights
      return;
    }
    check->restore(ctl->state());  // throws (and so crashes the fuzzer) if the state is invalid
    reset();
  }
};

template <class Make>
Subject<Make>& subject(Make make) {
  static Subject<Make> s(make);
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("EAST_FUZZ_WRITE_SEEDS")) {
    const std::string seeds[] = {subject(make_rigl_subject).seed_file, subject(make_snfs_subject).seed_file,
                                 subject(make_east_subject).seed_file};
    for (int k = 0; k < 3; ++k) {
      std::ofstream f(std::string(dir) + "/seed" + std::to_string(k), std::ios::binary);
      f << static_cast<char>(k | 4) << seeds[k];
    }
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  if ((data[0] & 4) && bytes.size() >= east_test::ckpt_header_bytes + 4) {
    const auto len = east_test::peek<std::uint64_t>(bytes, 12);
    if (len <= bytes.size() - east_test::ckpt_header_bytes - 4) {
      bytes.resize(east_test::ckpt_header_bytes + len + 4);
      bytes = east_test::with_crc(bytes);
    }
  }
  switch (data[0] & 3) {
    case 0:
      subject(make_rigl_subject).run(bytes);
      break;
    case 1:
      subject(make_snfs_subject).run(bytes);
      break;
    default:
      subject(make_east_subject).run(bytes);
      break;
  }
  return 0;
}
