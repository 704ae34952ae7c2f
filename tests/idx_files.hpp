#pragma once
// Small IDX (MNIST-format) files written by tests: a learnable toy problem for the trainer.
#include <zlib.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace east_test {

inline void put_be32(std::vector<std::uint8_t>& b, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<std::uint8_t>(v >> s));
}

inline void write_file(const std::string& path, const std::vector<std::uint8_t>& bytes, bool gzip) {
  if (gzip) {
    gzFile f = gzopen(path.c_str(), "wb");
    gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
    gzclose(f);
  } else {
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
}

// A learnable toy problem in IDX format: class k has a bright square at a class-specific place.
inline void write_idx_dataset(const std::string& dir, int n_train, int n_test, int side, bool gzip) {
  for (int split = 0; split < 2; ++split) {
    const int n = split == 0 ? n_train : n_test;
    std::vector<std::uint8_t> img, lab;
    put_be32(img, 0x803), put_be32(img, static_cast<std::uint32_t>(n)),
        put_be32(img, static_cast<std::uint32_t>(side)), put_be32(img, static_cast<std::uint32_t>(side));
    put_be32(lab, 0x801), put_be32(lab, static_cast<std::uint32_t>(n));
    for (int i = 0; i < n; ++i) {
      const int k = (i * 7 + split) % 10;
      lab.push_back(static_cast<std::uint8_t>(k));
      for (int y = 0; y < side; ++y)
        for (int x = 0; x < side; ++x) {
          const bool on = (y / 3 == k / 4) && (x / 3 == k % 4);
          img.push_back(static_cast<std::uint8_t>(on ? 220 : (i * 31 + y * 7 + x * 13) % 40));
        }
    }
    const std::string pre = split == 0 ? "train" : "t10k";
    const std::string ext = gzip ? ".gz" : "";
    write_file(dir + "/" + pre + "-images-idx3-ubyte" + ext, img, gzip);
    write_file(dir + "/" + pre + "-labels-idx1-ubyte" + ext, lab, gzip);
  }
}

}  // namespace east_test
