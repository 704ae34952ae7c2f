// The IDX loader (east/data/idx.hpp): plain and gzip files, pixel scaling, and every documented
// error (docs/data.md).
#include <east/data/idx.hpp>

#include <catch2/catch.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "idx_files.hpp"

namespace {
std::string temp_dir() {
  char tmpl[] = "/tmp/east_idx_XXXXXX";
  const char* d = mkdtemp(tmpl);
  REQUIRE(d != nullptr);
  return d;
}
void write_bytes(const std::string& path, std::vector<std::uint8_t> bytes, bool gzip = false) {
  east_test::write_file(path, bytes, gzip);
}
std::vector<std::uint8_t> header(std::uint8_t type, std::vector<std::uint32_t> dims) {
  std::vector<std::uint8_t> b{0, 0, type, static_cast<std::uint8_t>(dims.size())};
  for (auto d : dims) east_test::put_be32(b, d);
  return b;
}
}  // namespace

TEST_CASE("IDX images and labels load plain or gzipped, pixels scaled by 1/255", "[data]") {
  const std::string dir = temp_dir();
  for (const bool gzip : {false, true}) {
    CAPTURE(gzip);
    auto img = header(0x08, {3, 2, 2});
    for (std::uint8_t v : {0, 255, 51, 102, 1, 2, 3, 4, 10, 20, 30, 40}) img.push_back(v);
    auto lab = header(0x08, {3});
    for (std::uint8_t v : {7, 0, 9}) lab.push_back(v);
    const std::string ext = gzip ? ".gz" : "";
    write_bytes(dir + "/img" + ext, img, gzip);
    write_bytes(dir + "/lab" + ext, lab, gzip);
    const auto raw = east::data::read_idx(dir + "/img" + ext);
    CHECK(raw.dims == std::vector<std::uint32_t>{3, 2, 2});
    CHECK(raw.values.size() == 12);
    CHECK(raw.values[1] == 255);
    const auto s = east::data::read_idx_images(dir + "/img" + ext, dir + "/lab" + ext);
    CHECK(s.count == 3);
    CHECK(s.rows == 2);
    CHECK(s.cols == 2);
    REQUIRE(s.pixels.size() == 12);
    CHECK(s.pixels[0] == 0.0f);
    CHECK(s.pixels[1] == 1.0f);
    CHECK(s.pixels[2] == 51 / 255.0f);  // image 0, row 1, col 0
    CHECK(s.pixels[8] == 10 / 255.0f);  // image 2 starts at 2 · 2 · 2
    CHECK(s.labels == std::vector<std::uint8_t>{7, 0, 9});
  }
  // The toy data set the trainer tests use reads back with its sizes.
  east_test::write_idx_dataset(dir, 20, 10, 12, true);
  const auto t =
      east::data::read_idx_images(dir + "/train-images-idx3-ubyte.gz", dir + "/train-labels-idx1-ubyte.gz");
  CHECK(t.count == 20);
  CHECK(t.rows * t.cols == 144);
}

TEST_CASE("IDX errors name the function and the file", "[data]") {
  const std::string dir = temp_dir();
  using Catch::Contains;
  CHECK_THROWS_WITH(east::data::read_idx(dir + "/missing"), Contains("read_idx") && Contains("cannot open"));
  write_bytes(dir + "/short", {0, 0});
  CHECK_THROWS_WITH(east::data::read_idx(dir + "/short"), Contains("truncated (no header)"));
  write_bytes(dir + "/magic", {1, 0, 8, 1, 0, 0, 0, 1, 5});
  CHECK_THROWS_WITH(east::data::read_idx(dir + "/magic"), Contains("bad magic") && Contains(dir + "/magic"));
  auto f32 = header(0x0D, {1});
  write_bytes(dir + "/type", f32);
  CHECK_THROWS_WITH(east::data::read_idx(dir + "/type"), Contains("element type 13") && Contains("valid: 8"));
  write_bytes(dir + "/dims", header(0x08, {1, 1, 1, 1, 1}));
  CHECK_THROWS_WITH(east::data::read_idx(dir + "/dims"), Contains("5 dimensions") && Contains("valid: 1..4"));
  write_bytes(dir + "/zero", header(0x08, {0}));
  CHECK_THROWS_WITH(east::data::read_idx(dir + "/zero"), Contains("has dimension 0"));
  auto trunc = header(0x08, {4});
  trunc.push_back(1);
  write_bytes(dir + "/trunc", trunc);
  CHECK_THROWS_WITH(east::data::read_idx(dir + "/trunc"), Contains("truncated: 1 of 4 values"));
  // Images must be 3-D and have one label each.
  auto img = header(0x08, {2, 1, 1});
  img.push_back(1), img.push_back(2);
  write_bytes(dir + "/img", img);
  auto flat = header(0x08, {2});
  flat.push_back(1), flat.push_back(2);
  write_bytes(dir + "/flat", flat);
  auto lab3 = header(0x08, {3});
  lab3.push_back(0), lab3.push_back(1), lab3.push_back(2);
  write_bytes(dir + "/lab3", lab3);
  CHECK_THROWS_WITH(east::data::read_idx_images(dir + "/flat", dir + "/flat"),
                    Contains("read_idx_images") && Contains("valid: 3"));
  CHECK_THROWS_WITH(east::data::read_idx_images(dir + "/img", dir + "/lab3"),
                    Contains("one label per image"));
  CHECK_NOTHROW(east::data::read_idx_images(dir + "/img", dir + "/flat"));
}
