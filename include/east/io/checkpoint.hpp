#pragma once
// Checkpoints of a Controller: masks, ever-active sets, schedule position (last update step,
// update count, current density) and the RNG seed. Randomness is counter-based, so the seed
// and the step are the whole RNG state and a resumed run makes bit-identical decisions.
//
// Format (little-endian), version 1:
//   "EASTCKPT" | u32 version | u64 payload bytes | payload | u32 crc32(payload)
//   payload: u64 seed, i64 last_update_step, u64 updates, f64 density, u64 layers,
//            per layer: u32 name bytes, name, u64 size, u64 uses, u8 role, u64 words, mask words,
//            ever-active words; u64 policies, per policy u64 bytes + its save_state() blob;
//            u64 user bytes, user bytes (opaque data of the caller's, e.g. its optimizer step count)
//   Nothing may follow the checksum. docs/checkpoints.md has the same layout, annotated.
#if defined(EAST_HAS_ZLIB) && EAST_HAS_ZLIB
#include <zlib.h>
#endif

#include <array>
#include <cstdint>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <istream>
#include <ostream>
#include <string>
#include <vector>

#include "../controller/controller.hpp"
#include "../core/error.hpp"

namespace east {

inline constexpr std::uint32_t checkpoint_version = 1;

namespace detail {
class Writer {
 public:
  template <class T>
  void put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const char*>(&v);
    bytes.insert(bytes.end(), p, p + sizeof(T));
  }
  void put_bytes(const void* p, std::size_t n) {
    const auto* c = static_cast<const char*>(p);
    bytes.insert(bytes.end(), c, c + n);
  }
  std::vector<char> bytes;
};

class Reader {
 public:
  Reader(const char* p, std::size_t n) : p_(p), n_(n) {}
  template <class T>
  T get(const char* what) {
    T v;
    need(sizeof(T), what);
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  void get_bytes(void* out, std::size_t n, const char* what) {
    need(n, what);
    if (n == 0) return;  // `out` may be an empty vector's null data(): memcpy must not see it
    std::memcpy(out, p_ + pos_, n);
    pos_ += n;
  }
  std::size_t left() const { return n_ - pos_; }

 private:
  void need(std::size_t k, const char* what) {
    if (k > n_ - pos_)
      throw CorruptCheckpoint(concat("east::load_checkpoint(): truncated while reading ", what, " (needed ",
                                     k, " bytes, ", n_ - pos_, " left)"));
  }
  const char* p_;
  std::size_t n_, pos_ = 0;
};

// Bytes between the read position and the end of `in`, or -1 when the stream cannot tell (pipes).
inline std::int64_t bytes_left(std::istream& in) {
  const std::streampos here = in.tellg();
  if (here == std::streampos(-1)) return -1;
  in.seekg(0, std::ios::end);
  const std::streampos end = in.tellg();
  in.clear();
  in.seekg(here);
  if (!in || end == std::streampos(-1) || end < here) {
    in.clear();
    return -1;
  }
  return static_cast<std::int64_t>(end - here);
}

// Reads n bytes into `out`, growing it only as bytes actually arrive (64 KiB, then doubling), so
// a corrupt length field cannot make the reader allocate much more than the stream holds.
// Returns false, with `out` holding what was read, when the stream ends first.
inline bool read_growing(std::istream& in, std::vector<char>& out, std::uint64_t n) {
  constexpr std::uint64_t first_chunk = std::uint64_t{1} << 16;
  out.clear();
  while (out.size() < n) {
    const std::uint64_t have = out.size();
    const std::uint64_t chunk = std::min(n - have, std::max(first_chunk, have));
    out.resize(static_cast<std::size_t>(have + chunk));
    in.read(out.data() + have, static_cast<std::streamsize>(chunk));
    const auto got = static_cast<std::uint64_t>(in.gcount());
    if (got != chunk) {
      out.resize(static_cast<std::size_t>(have + got));
      return false;
    }
  }
  return true;
}

/// CRC-32 (IEEE 802.3, zlib's) of n bytes without zlib: a byte-at-a-time table, for builds that
/// do not link it (checkpoints are small next to a training step). The same values as zlib's.
inline std::uint32_t crc32_portable(const char* p, std::size_t n) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) c = table[(c ^ static_cast<unsigned char>(p[i])) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

/// CRC-32 of n bytes: zlib's (vectorised) when east::zlib is linked (EAST_HAS_ZLIB), else the
/// portable table.
inline std::uint32_t crc32_of(const char* p, std::size_t n) {
#if defined(EAST_HAS_ZLIB) && EAST_HAS_ZLIB
  uLong c = crc32(0L, Z_NULL, 0);
  while (n > 0) {  // zlib takes uInt lengths
    const auto chunk = static_cast<uInt>(std::min<std::size_t>(n, 1u << 30));
    c = crc32(c, reinterpret_cast<const Bytef*>(p), chunk);
    p += chunk;
    n -= chunk;
  }
  return static_cast<std::uint32_t>(c);
#else
  return crc32_portable(p, n);
#endif
}
}  // namespace detail

/// Writes `ctl`'s state (and optional opaque user data) to `out`.
template <class M>
void save_checkpoint(const Controller<M>& ctl, std::ostream& out, const std::string& user_data = {}) {
  const ControllerState s = ctl.state();
  detail::Writer w;
  w.put(s.seed);
  w.put(s.last_update_step);
  w.put(s.updates);
  w.put(s.density);
  w.put(static_cast<std::uint64_t>(s.names.size()));
  for (std::size_t l = 0; l < s.names.size(); ++l) {
    w.put(static_cast<std::uint32_t>(s.names[l].size()));
    w.put_bytes(s.names[l].data(), s.names[l].size());
    w.put(s.sizes[l]);
    w.put(s.uses[l]);
    w.put(s.roles[l]);
    w.put(static_cast<std::uint64_t>(s.masks[l].size()));
    w.put_bytes(s.masks[l].data(), s.masks[l].size() * 8);
    w.put_bytes(s.ever_active[l].data(), s.ever_active[l].size() * 8);
  }
  w.put(static_cast<std::uint64_t>(s.policy_states.size()));
  for (const auto& p : s.policy_states) {
    w.put(static_cast<std::uint64_t>(p.size()));
    w.put_bytes(p.data(), p.size());
  }
  w.put(static_cast<std::uint64_t>(user_data.size()));
  w.put_bytes(user_data.data(), user_data.size());
  const std::uint32_t crc = detail::crc32_of(w.bytes.data(), w.bytes.size());
  const std::uint64_t len = w.bytes.size();
  out.write("EASTCKPT", 8);
  out.write(reinterpret_cast<const char*>(&checkpoint_version), 4);
  out.write(reinterpret_cast<const char*>(&len), 8);
  out.write(w.bytes.data(), static_cast<std::streamsize>(len));
  out.write(reinterpret_cast<const char*>(&crc), 4);
  detail::require(static_cast<bool>(out), "east::save_checkpoint()",
                  "the output stream failed while writing");
}

/// Reads a checkpoint into `ctl`. Throws CorruptCheckpoint (bad magic, version, checksum,
/// truncation, bytes after the checksum, a field that contradicts the file) or InvalidArgument
/// (a well-formed checkpoint of another model, or a state restore() rejects); in every case `ctl`,
/// its masks and the model's weights are left exactly as they were. Allocates at most about twice
/// the bytes the stream holds, plus 64 KiB, whatever the length fields say. The checkpoint must
/// be the rest of the stream. Returns the user data.
template <class M>
std::string load_checkpoint(Controller<M>& ctl, std::istream& in) {
  using detail::concat;
  constexpr const char* where = "east::load_checkpoint(): ";
  char magic[8];
  std::uint32_t version = 0;
  std::uint64_t len = 0;
  if (!in.read(magic, 8) || std::memcmp(magic, "EASTCKPT", 8) != 0)
    throw CorruptCheckpoint(concat(where, "not an east checkpoint (bad magic; expected \"EASTCKPT\")"));
  if (!in.read(reinterpret_cast<char*>(&version), 4))
    throw CorruptCheckpoint(concat(where, "truncated header"));
  if (version != checkpoint_version)
    throw CorruptCheckpoint(concat(where, "version ", version, " (valid: ", checkpoint_version, ")"));
  if (!in.read(reinterpret_cast<char*>(&len), 8)) throw CorruptCheckpoint(concat(where, "truncated header"));
  // The header is outside the CRC: check its length against what is there before reading.
  if (const std::int64_t left = detail::bytes_left(in); left >= 0) {
    const auto have = static_cast<std::uint64_t>(left);
    if (have < 4 || len > have - 4)
      throw CorruptCheckpoint(concat(where, "truncated: payload length ", len,
                                     " and a 4-byte checksum, but the file holds ", have,
                                     " bytes after the header"));
    if (have - 4 > len)
      throw CorruptCheckpoint(concat(where, have - 4 - len, " bytes after the checksum (payload length ", len,
                                     "; valid: nothing after the checksum)"));
  }
  std::vector<char> payload;
  if (!detail::read_growing(in, payload, len))
    throw CorruptCheckpoint(concat(where, "truncated: payload length ", len, ", but the stream ended after ",
                                   payload.size(), " payload bytes"));
  std::uint32_t crc = 0;
  if (!in.read(reinterpret_cast<char*>(&crc), 4))
    throw CorruptCheckpoint(concat(where, "truncated: the stream ended before the checksum"));
  if (in.peek() != std::char_traits<char>::eof())
    throw CorruptCheckpoint(concat(where, "bytes after the checksum (valid: nothing after the checksum)"));
  const auto actual = detail::crc32_of(payload.data(), payload.size());
  if (actual != crc)
    throw CorruptCheckpoint(concat(where, "checksum mismatch (stored ", crc, ", computed ", actual, ")"));

  // Every count is checked against the bytes left before anything is sized by it.
  detail::Reader r(payload.data(), payload.size());
  ControllerState s;
  s.seed = r.get<std::uint64_t>("seed");
  s.last_update_step = r.get<std::int64_t>("last update step");
  s.updates = r.get<std::uint64_t>("update count");
  s.density = r.get<double>("density");
  const auto layers = r.get<std::uint64_t>("layer count");
  constexpr std::size_t min_layer_bytes = 4 + 8 + 8 + 1 + 8;  // an empty name and no words
  if (layers > r.left() / min_layer_bytes)
    throw CorruptCheckpoint(
        concat(where, "layer count ", layers, " is implausible (", r.left(), " payload bytes left)"));
  for (std::uint64_t l = 0; l < layers; ++l) {
    const auto name_len = r.get<std::uint32_t>("name length");
    if (name_len > r.left())
      throw CorruptCheckpoint(concat(where, "truncated: layer ", l, " name length ", name_len, ", ", r.left(),
                                     " payload bytes left"));
    std::string name(name_len, '\0');
    r.get_bytes(name.data(), name_len, "layer name");
    const auto size = r.get<std::uint64_t>("layer size");
    const auto uses = r.get<std::uint64_t>("layer uses");
    const auto role = r.get<std::uint8_t>("layer role");
    const auto words = r.get<std::uint64_t>("mask words");
    if (uses == 0) throw CorruptCheckpoint(concat(where, "layer '", name, "' has uses 0 (valid: >= 1)"));
    if (role > static_cast<std::uint8_t>(LayerRole::excluded))
      throw CorruptCheckpoint(concat(where, "layer '", name, "' has role ", int(role),
                                     " (valid: 0 sparse, 1 dense, 2 excluded)"));
    const std::uint64_t expected_words = size / 64 + (size % 64 != 0);  // words_for() could wrap
    if (words != expected_words)
      throw CorruptCheckpoint(concat(where, "layer '", name, "' has ", words, " mask words for size ", size,
                                     " (valid: ", expected_words, ")"));
    if (words > r.left() / 16)
      throw CorruptCheckpoint(concat(where, "truncated: layer '", name, "' has ", words, " mask words, ",
                                     r.left(), " payload bytes left"));
    std::vector<std::uint64_t> m(words), e(words);
    r.get_bytes(m.data(), words * 8, "mask");
    r.get_bytes(e.data(), words * 8, "ever-active mask");
    s.names.push_back(std::move(name));
    s.sizes.push_back(size);
    s.uses.push_back(uses);
    s.roles.push_back(role);
    s.masks.push_back(std::move(m));
    s.ever_active.push_back(std::move(e));
  }
  const auto policies = r.get<std::uint64_t>("policy count");
  if (policies > r.left() / 8)
    throw CorruptCheckpoint(
        concat(where, "policy count ", policies, " is implausible (", r.left(), " payload bytes left)"));
  for (std::uint64_t p = 0; p < policies; ++p) {
    const auto blob_len = r.get<std::uint64_t>("policy state length");
    if (blob_len > r.left())
      throw CorruptCheckpoint(concat(where, "truncated: policy ", p, " state length ", blob_len, ", ",
                                     r.left(), " payload bytes left"));
    std::string blob(blob_len, '\0');
    r.get_bytes(blob.data(), blob_len, "policy state");
    s.policy_states.push_back(std::move(blob));
  }
  const auto user_len = r.get<std::uint64_t>("user data length");
  if (user_len != r.left())
    throw CorruptCheckpoint(concat(where, "user data length ", user_len, " does not match the ", r.left(),
                                   " payload bytes left"));
  std::string user(user_len, '\0');
  r.get_bytes(user.data(), user_len, "user data");
  ctl.restore(s);  // validates against the model and itself before changing anything
  return user;
}

template <class M>
void save_checkpoint(const Controller<M>& ctl, const std::string& path, const std::string& user_data = {}) {
  // Write to a temporary and rename, so an interrupted save never leaves a half file behind.
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    detail::require(static_cast<bool>(f), "east::save_checkpoint()", "cannot open '", tmp, "' for writing");
    save_checkpoint(ctl, f, user_data);
  }
  detail::require(std::rename(tmp.c_str(), path.c_str()) == 0, "east::save_checkpoint()", "cannot rename '",
                  tmp, "' to '", path, "'");
}

template <class M>
std::string load_checkpoint(Controller<M>& ctl, const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  detail::require(static_cast<bool>(f), "east::load_checkpoint()", "cannot open '", path, "'");
  return load_checkpoint(ctl, f);
}

}  // namespace east
