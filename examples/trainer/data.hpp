#pragma once
// Dataset loaders of the reference trainer: Fashion-MNIST / MNIST (IDX, optionally gzip, read
// with zlib) and CIFAR-10 / CIFAR-100 (their binary formats). Every loader checks magic numbers,
// sizes and label ranges and throws DataError naming the file and what is wrong.
#include <sys/stat.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <east/core/error.hpp>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace east_trainer {

/// A missing, unreadable or corrupt data file.
class DataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Images (N × C × H × W, uint8) and labels (N, int64) of one split.
struct Split {
  torch::Tensor images;
  torch::Tensor labels;
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

struct Dataset {
  std::string name;
  Split train, test;
  int64_t classes = 10;
  std::vector<float> mean, stdev;  ///< per channel, of pixel values in [0, 1]
};

inline bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

/// Reads a whole file, transparently gunzipping it (zlib reads plain files as they are).
inline std::vector<std::uint8_t> read_maybe_gzip(const std::string& path) {
  if (!file_exists(path)) throw DataError("cannot open '" + path + "': no such file");
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw DataError("cannot open '" + path + "'");
  std::vector<std::uint8_t> out;
  std::vector<std::uint8_t> buf(1 << 20);
  for (;;) {
    const int n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int err = 0;
      const char* msg = gzerror(f, &err);
      const std::string m = msg ? msg : "unknown error";
      gzclose(f);
      throw DataError("'" + path + "' is corrupt (gzip: " + m + ")");
    }
    if (n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + n);
  }
  const int rc = gzclose(f);
  if (rc != Z_OK) throw DataError("'" + path + "' is corrupt (gzip stream truncated or bad checksum)");
  return out;
}

inline std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

/// IDX images (magic 0x00000803): N × 1 × rows × cols uint8.
inline torch::Tensor load_idx_images(const std::string& path) {
  const auto b = read_maybe_gzip(path);
  if (b.size() < 16)
    throw DataError("'" + path + "' is corrupt: " + std::to_string(b.size()) +
                    " bytes, shorter than an IDX image header (16)");
  if (be32(b.data()) != 0x00000803)
    throw DataError("'" + path + "' is not an IDX image file (magic " + std::to_string(be32(b.data())) +
                    ", expected 2051)");
  const std::uint64_t n = be32(b.data() + 4), r = be32(b.data() + 8), c = be32(b.data() + 12);
  if (n == 0 || r == 0 || c == 0 || r > 4096 || c > 4096)
    throw DataError("'" + path + "' is corrupt: implausible dimensions " + std::to_string(n) + "x" +
                    std::to_string(r) + "x" + std::to_string(c));
  if (b.size() != 16 + n * r * c)
    throw DataError("'" + path + "' is corrupt: " + std::to_string(b.size() - 16) + " pixel bytes for " +
                    std::to_string(n) + " images of " + std::to_string(r) + "x" + std::to_string(c) +
                    " (expected " + std::to_string(n * r * c) + ")");
  auto t = torch::empty({static_cast<int64_t>(n), 1, static_cast<int64_t>(r), static_cast<int64_t>(c)},
                        torch::kUInt8);
  std::memcpy(t.data_ptr<std::uint8_t>(), b.data() + 16, n * r * c);
  return t;
}

/// IDX labels (magic 0x00000801): N int64, each checked < classes.
inline torch::Tensor load_idx_labels(const std::string& path, int64_t classes) {
  const auto b = read_maybe_gzip(path);
  if (b.size() < 8) throw DataError("'" + path + "' is corrupt: shorter than an IDX label header (8 bytes)");
  if (be32(b.data()) != 0x00000801)
    throw DataError("'" + path + "' is not an IDX label file (magic " + std::to_string(be32(b.data())) +
                    ", expected 2049)");
  const std::uint64_t n = be32(b.data() + 4);
  if (b.size() != 8 + n)
    throw DataError("'" + path + "' is corrupt: " + std::to_string(b.size() - 8) +
                    " label bytes, header says " + std::to_string(n));
  auto t = torch::empty({static_cast<int64_t>(n)}, torch::kInt64);
  auto* p = t.data_ptr<int64_t>();
  for (std::uint64_t i = 0; i < n; ++i) {
    if (b[8 + i] >= classes)
      throw DataError("'" + path + "' is corrupt: label " + std::to_string(b[8 + i]) + " at index " +
                      std::to_string(i) + " (valid: 0.." + std::to_string(classes - 1) + ")");
    p[i] = b[8 + i];
  }
  return t;
}

inline Split load_idx_split(const std::string& images, const std::string& labels, int64_t classes) {
  Split s{load_idx_images(images), load_idx_labels(labels, classes)};
  if (s.images.size(0) != s.labels.size(0))
    throw DataError("'" + images + "' has " + std::to_string(s.images.size(0)) + " images but '" + labels +
                    "' has " + std::to_string(s.labels.size(0)) + " labels");
  return s;
}

/// The first existing of `dir/name` and `dir/name.gz`.
inline std::string idx_path(const std::string& dir, const std::string& name) {
  if (file_exists(dir + "/" + name + ".gz")) return dir + "/" + name + ".gz";
  if (file_exists(dir + "/" + name)) return dir + "/" + name;
  throw DataError("missing data file '" + dir + "/" + name +
                  ".gz' (nor without .gz); for Fashion-MNIST install Debian's "
                  "dataset-fashion-mnist or pass --data-dir");
}

/// Fashion-MNIST (or MNIST) from a directory with the four IDX files (gzip or plain).
inline Dataset load_fashion_mnist(const std::string& dir) {
  Dataset d;
  d.name = "fashion-mnist";
  d.classes = 10;
  d.train =
      load_idx_split(idx_path(dir, "train-images-idx3-ubyte"), idx_path(dir, "train-labels-idx1-ubyte"), 10);
  d.test =
      load_idx_split(idx_path(dir, "t10k-images-idx3-ubyte"), idx_path(dir, "t10k-labels-idx1-ubyte"), 10);
  if (d.train.images.size(2) != d.test.images.size(2) || d.train.images.size(3) != d.test.images.size(3))
    throw DataError("Fashion-MNIST train and test images in '" + dir + "' differ in size");
  d.mean = {0.2860f};
  d.stdev = {0.3530f};
  return d;
}

/// CIFAR binary records: `label_bytes` label bytes (the last one is used) + 3072 pixel bytes.
inline Split load_cifar_files(const std::vector<std::string>& files, int label_bytes, int64_t classes) {
  const std::size_t rec = static_cast<std::size_t>(label_bytes) + 3072;
  std::vector<std::vector<std::uint8_t>> contents;
  std::size_t total = 0;
  for (const auto& f : files) {
    auto b = read_maybe_gzip(f);
    if (b.empty() || b.size() % rec != 0)
      throw DataError("'" + f + "' is corrupt: " + std::to_string(b.size()) +
                      " bytes is not a whole number of " + std::to_string(rec) + "-byte CIFAR records");
    total += b.size() / rec;
    contents.push_back(std::move(b));
  }
  auto images = torch::empty({static_cast<int64_t>(total), 3, 32, 32}, torch::kUInt8);
  auto labels = torch::empty({static_cast<int64_t>(total)}, torch::kInt64);
  auto* ip = images.data_ptr<std::uint8_t>();
  auto* lp = labels.data_ptr<int64_t>();
  std::size_t k = 0;
  for (std::size_t fi = 0; fi < contents.size(); ++fi) {
    const auto& b = contents[fi];
    for (std::size_t r = 0; r < b.size() / rec; ++r, ++k) {
      const std::uint8_t* p = b.data() + r * rec;
      const int64_t label = p[label_bytes - 1];
      if (label >= classes)
        throw DataError("'" + files[fi] + "' is corrupt: label " + std::to_string(label) + " in record " +
                        std::to_string(r) + " (valid: 0.." + std::to_string(classes - 1) + ")");
      lp[k] = label;
      std::memcpy(ip + k * 3072, p + label_bytes, 3072);
    }
  }
  return {images, labels};
}

inline std::string find_in(const std::string& dir, const std::string& name) {
  for (const auto& p :
       {dir + "/" + name, dir + "/cifar-10-batches-bin/" + name, dir + "/cifar-100-binary/" + name})
    if (file_exists(p)) return p;
  throw DataError("missing data file '" + dir + "/" + name +
                  "' (CIFAR binary version expected; pass --data-dir)");
}

/// CIFAR-10 binary: data_batch_1..5.bin and test_batch.bin in `dir` (or dir/cifar-10-batches-bin).
inline Dataset load_cifar10(const std::string& dir) {
  Dataset d;
  d.name = "cifar10";
  d.classes = 10;
  std::vector<std::string> train;
  for (int i = 1; i <= 5; ++i) train.push_back(find_in(dir, "data_batch_" + std::to_string(i) + ".bin"));
  d.train = load_cifar_files(train, 1, 10);
  d.test = load_cifar_files({find_in(dir, "test_batch.bin")}, 1, 10);
  d.mean = {0.4914f, 0.4822f, 0.4465f};
  d.stdev = {0.2470f, 0.2435f, 0.2616f};
  return d;
}

/// CIFAR-100 binary: train.bin and test.bin (coarse, fine label bytes; fine labels are used).
inline Dataset load_cifar100(const std::string& dir) {
  Dataset d;
  d.name = "cifar100";
  d.classes = 100;
  d.train = load_cifar_files({find_in(dir, "train.bin")}, 2, 100);
  d.test = load_cifar_files({find_in(dir, "test.bin")}, 2, 100);
  d.mean = {0.5071f, 0.4865f, 0.4409f};
  d.stdev = {0.2673f, 0.2564f, 0.2762f};
  return d;
}

/// Loads `name` ∈ {fashion-mnist, mnist, cifar10, cifar100} from `dir`.
inline Dataset load_dataset(const std::string& name, const std::string& dir) {
  if (name == "fashion-mnist" || name == "mnist") {
    auto d = load_fashion_mnist(dir);
    if (name == "mnist") d.name = "mnist", d.mean = {0.1307f}, d.stdev = {0.3081f};
    return d;
  }
  if (name == "cifar10") return load_cifar10(dir);
  if (name == "cifar100") return load_cifar100(dir);
  throw east::InvalidArgument("--dataset " + name + " (valid: fashion-mnist, mnist, cifar10, cifar100)");
}

}  // namespace east_trainer
