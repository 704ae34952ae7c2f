#pragma once
// Reader for IDX files (MNIST / Fashion-MNIST), plain or gzip-compressed. Gzip needs zlib (link
// east::zlib, which defines EAST_HAS_ZLIB; zlib's gz* functions read both forms); without it plain
// files are read and a gzip file is refused with a clear error. Used by the examples; small enough
// to live in the library for users' trainers (docs/data.md).
#if defined(EAST_HAS_ZLIB) && EAST_HAS_ZLIB
#include <zlib.h>
#endif

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "../core/error.hpp"

namespace east::data {

/// An IDX tensor of unsigned bytes: dims outermost first, values row-major.
struct IdxArray {
  std::vector<std::uint32_t> dims;
  std::vector<std::uint8_t> values;
};

namespace idx_detail {
/// A file read through zlib (plain or gzip) when east::zlib is linked, else through stdio.
class IdxFile {
 public:
  explicit IdxFile(const std::string& path) {
#if defined(EAST_HAS_ZLIB) && EAST_HAS_ZLIB
    f_ = gzopen(path.c_str(), "rb");
#else
    f_ = std::fopen(path.c_str(), "rb");
#endif
    ::east::detail::require(f_ != nullptr, "east::data::read_idx()", "cannot open '", path, "'");
  }
  ~IdxFile() {
#if defined(EAST_HAS_ZLIB) && EAST_HAS_ZLIB
    gzclose(f_);
#else
    std::fclose(f_);
#endif
  }
  IdxFile(const IdxFile&) = delete;
  IdxFile& operator=(const IdxFile&) = delete;
  /// Bytes read (fewer at the end of the file).
  std::size_t read(void* out, std::size_t n) {
#if defined(EAST_HAS_ZLIB) && EAST_HAS_ZLIB
    const int r = gzread(f_, out, static_cast<unsigned>(n));
    return r > 0 ? static_cast<std::size_t>(r) : 0;
#else
    return std::fread(out, 1, n, f_);
#endif
  }

 private:
#if defined(EAST_HAS_ZLIB) && EAST_HAS_ZLIB
  gzFile f_ = nullptr;
#else
  std::FILE* f_ = nullptr;
#endif
};
}  // namespace idx_detail

/// Reads an IDX file of unsigned bytes (type 0x08). Throws InvalidArgument naming the file for a
/// missing file, bad magic, unsupported type or truncated data (and, without zlib, for a gzip file).
inline IdxArray read_idx(const std::string& path) {
  constexpr const char* where = "east::data::read_idx()";
  idx_detail::IdxFile f(path);
  auto read_bytes = [](idx_detail::IdxFile& file, void* out, std::size_t n) { return static_cast<int>(file.read(out, n)); };
  unsigned char head[4];
  detail::require(read_bytes(f, head, 4) == 4, where, "'", path, "' is truncated (no header)");
  detail::require(head[0] != 0x1f || head[1] != 0x8b, where, "'", path,
                  "' is gzip-compressed and this build reads plain IDX files only (link east::zlib, or "
                  "gunzip it)");
  detail::require(head[0] == 0 && head[1] == 0, where, "'", path, "' is not an IDX file (bad magic)");
  detail::require(head[2] == 0x08, where, "'", path, "' has element type ", int(head[2]),
                  " (valid: 8, unsigned byte)");
  const int ndim = head[3];
  detail::require(ndim >= 1 && ndim <= 4, where, "'", path, "' has ", ndim, " dimensions (valid: 1..4)");
  IdxArray a;
  std::size_t total = 1;
  for (int d = 0; d < ndim; ++d) {
    unsigned char b[4];
    detail::require(read_bytes(f, b, 4) == 4, where, "'", path, "' is truncated in its dimensions");
    const std::uint32_t v =
        (std::uint32_t(b[0]) << 24) | (std::uint32_t(b[1]) << 16) | (std::uint32_t(b[2]) << 8) | b[3];
    detail::require(v > 0 && v < (1u << 28), where, "'", path, "' has dimension ", v);
    a.dims.push_back(v);
    total *= v;
  }
  a.values.resize(total);
  std::size_t got = 0;
  while (got < total) {
    const int r =
        read_bytes(f, a.values.data() + got, static_cast<unsigned>(std::min<std::size_t>(total - got, 1u << 30)));
    detail::require(r > 0, where, "'", path, "' is truncated: ", got, " of ", total, " values");
    got += static_cast<std::size_t>(r);
  }
  return a;
}

/// Images scaled to [0, 1] (N × rows·cols) and labels, from a pair of IDX files.
struct ImageSet {
  std::size_t count = 0, rows = 0, cols = 0;
  std::vector<float> pixels;
  std::vector<std::uint8_t> labels;
};

inline ImageSet read_idx_images(const std::string& images_path, const std::string& labels_path) {
  const auto img = read_idx(images_path);
  const auto lab = read_idx(labels_path);
  detail::require(img.dims.size() == 3, "east::data::read_idx_images()", "'", images_path, "' has ",
                  img.dims.size(), " dimensions (valid: 3, N × rows × cols)");
  detail::require(lab.dims.size() == 1 && lab.dims[0] == img.dims[0], "east::data::read_idx_images()", "'",
                  labels_path, "' does not hold one label per image of '", images_path, "'");
  ImageSet s;
  s.count = img.dims[0];
  s.rows = img.dims[1];
  s.cols = img.dims[2];
  s.pixels.resize(img.values.size());
  for (std::size_t i = 0; i < img.values.size(); ++i) s.pixels[i] = img.values[i] / 255.0f;
  s.labels = lab.values;
  return s;
}

}  // namespace east::data
