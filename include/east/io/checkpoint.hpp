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
#include <zlib.h>

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

inline std::uint32_t crc32_of(const char* p, std::size_t n) {
  uLong c = crc32(0L, Z_NULL, 0);
  while (n > 0) {  // zlib takes uInt lengths
    const auto chunk = static_cast<uInt>(std::min<std::size_t>(n, 1u << 30));
    c = crc32(c, reinterpret_cast<const Bytef*>(p), chunk);
    p += chunk;
    n -= chunk;
  }
  return static_cast<std::uint32_t>(c);
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
/// truncation) or InvalidArgument (a well-formed checkpoint of another model); in both cases
/// `ctl`, its masks and the model's weights are left exactly as they were. Returns the user data.
template <class M>
std::string load_checkpoint(Controller<M>& ctl, std::istream& in) {
  char magic[8];
  std::uint32_t version = 0;
  std::uint64_t len = 0;
  if (!in.read(magic, 8) || std::memcmp(magic, "EASTCKPT", 8) != 0)
    throw CorruptCheckpoint(
        "east::load_checkpoint(): not an east checkpoint (bad magic; expected \"EASTCKPT\")");
  if (!in.read(reinterpret_cast<char*>(&version), 4))
    throw CorruptCheckpoint("east::load_checkpoint(): truncated header");
  if (version != checkpoint_version)
    throw CorruptCheckpoint(
        detail::concat("east::load_checkpoint(): version ", version, " (valid: ", checkpoint_version, ")"));
  if (!in.read(reinterpret_cast<char*>(&len), 8))
    throw CorruptCheckpoint("east::load_checkpoint(): truncated header");
  if (len > (std::uint64_t{1} << 40))
    throw CorruptCheckpoint(
        detail::concat("east::load_checkpoint(): payload length ", len, " is implausible"));
  std::vector<char> payload;
  try {
    payload.resize(static_cast<std::size_t>(len));
  } catch (const std::bad_alloc&) {
    throw CorruptCheckpoint(
        detail::concat("east::load_checkpoint(): payload length ", len, " is implausible"));
  }
  std::uint32_t crc = 0;
  if (!in.read(payload.data(), static_cast<std::streamsize>(len)) ||
      !in.read(reinterpret_cast<char*>(&crc), 4))
    throw CorruptCheckpoint(detail::concat("east::load_checkpoint(): truncated: expected ", len,
                                           " payload bytes and a checksum"));
  const auto actual = detail::crc32_of(payload.data(), payload.size());
  if (actual != crc)
    throw CorruptCheckpoint(detail::concat("east::load_checkpoint(): checksum mismatch (stored ", crc,
                                           ", computed ", actual, ")"));

  detail::Reader r(payload.data(), payload.size());
  ControllerState s;
  s.seed = r.get<std::uint64_t>("seed");
  s.last_update_step = r.get<std::int64_t>("last update step");
  s.updates = r.get<std::uint64_t>("update count");
  s.density = r.get<double>("density");
  const auto layers = r.get<std::uint64_t>("layer count");
  if (layers > r.left())
    throw CorruptCheckpoint(
        detail::concat("east::load_checkpoint(): layer count ", layers, " is implausible"));
  for (std::uint64_t l = 0; l < layers; ++l) {
    const auto name_len = r.get<std::uint32_t>("name length");
    if (name_len > r.left()) throw CorruptCheckpoint("east::load_checkpoint(): truncated layer name");
    std::string name(name_len, '\0');
    r.get_bytes(name.data(), name_len, "layer name");
    const auto size = r.get<std::uint64_t>("layer size");
    const auto uses = r.get<std::uint64_t>("layer uses");
    const auto role = r.get<std::uint8_t>("layer role");
    const auto words = r.get<std::uint64_t>("mask words");
    if (words != kernels::words_for(size) || words * 16 > r.left())
      throw CorruptCheckpoint(detail::concat("east::load_checkpoint(): layer '", name, "' has ", words,
                                             " mask words for size ", size));
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
  if (policies > r.left())
    throw CorruptCheckpoint(
        detail::concat("east::load_checkpoint(): policy count ", policies, " is implausible"));
  for (std::uint64_t p = 0; p < policies; ++p) {
    const auto len = r.get<std::uint64_t>("policy state length");
    if (len > r.left()) throw CorruptCheckpoint("east::load_checkpoint(): truncated policy state");
    std::string blob(len, '\0');
    r.get_bytes(blob.data(), len, "policy state");
    s.policy_states.push_back(std::move(blob));
  }
  const auto user_len = r.get<std::uint64_t>("user data length");
  if (user_len != r.left())
    throw CorruptCheckpoint("east::load_checkpoint(): user data length does not match the payload");
  std::string user(user_len, '\0');
  r.get_bytes(user.data(), user_len, "user data");
  ctl.restore(s);  // validates against the model before changing anything
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
