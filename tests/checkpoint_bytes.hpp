#pragma once
// Byte-level helpers for checkpoint tests, written from the format block of docs/checkpoints.md
// (not from io/checkpoint.hpp), so a test that builds a file with them checks the documentation.
#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <streambuf>
#include <string>
#include <vector>

#include <east/east.hpp>

namespace east_test {

constexpr std::size_t ckpt_header_bytes = 20;  // "EASTCKPT", u32 version, u64 payload bytes

template <class T>
void poke(std::string& b, std::size_t off, T v) {
  std::memcpy(&b[off], &v, sizeof(T));
}
template <class T>
T peek(const std::string& b, std::size_t off) {
  T v;
  std::memcpy(&v, &b[off], sizeof(T));
  return v;
}

/// Recomputes the trailing CRC-32 over the payload as the header's length delimits it (after an
/// edit, so the parser itself is reached). The file must still hold header + length + 4 bytes.
inline std::string with_crc(std::string b) {
  const auto len = peek<std::uint64_t>(b, 12);
  const auto crc = static_cast<std::uint32_t>(
      crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(b.data() + ckpt_header_bytes),
            static_cast<uInt>(len)));
  poke(b, ckpt_header_bytes + len, crc);
  return b;
}

/// Writes `s` and `user` in the documented version-1 format.
inline std::string build_checkpoint(const east::ControllerState& s, const std::string& user) {
  std::string p;
  auto put = [&](auto v) { p.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  put(s.seed);
  put(s.last_update_step);
  put(s.updates);
  put(s.density);
  put(static_cast<std::uint64_t>(s.names.size()));
  for (std::size_t l = 0; l < s.names.size(); ++l) {
    put(static_cast<std::uint32_t>(s.names[l].size()));
    p += s.names[l];
    put(s.sizes[l]);
    put(s.uses[l]);
    put(s.roles[l]);
    put(static_cast<std::uint64_t>(s.masks[l].size()));
    for (auto w : s.masks[l]) put(w);
    for (auto w : s.ever_active[l]) put(w);
  }
  put(static_cast<std::uint64_t>(s.policy_states.size()));
  for (const auto& b : s.policy_states) {
    put(static_cast<std::uint64_t>(b.size()));
    p += b;
  }
  put(static_cast<std::uint64_t>(user.size()));
  p += user;
  std::string f = "EASTCKPT";
  const std::uint32_t version = 1;
  const std::uint64_t len = p.size();
  f.append(reinterpret_cast<const char*>(&version), 4);
  f.append(reinterpret_cast<const char*>(&len), 8);
  f += p;
  f.append(4, '\0');
  return with_crc(f);
}

/// Offset and width (4 or 8 bytes) of every length or count field of a well-formed file,
/// including those inside an SNFS (MomentumRegrow) policy blob when `momentum_policy` >= 0.
struct Field {
  std::size_t offset, width;
  const char* what;
};
inline std::vector<Field> length_fields(const std::string& b, int momentum_policy = -1) {
  std::vector<Field> out{{12, 8, "payload bytes"}};
  std::size_t pos = ckpt_header_bytes + 32;
  out.push_back({pos, 8, "layers"});
  const auto layers = peek<std::uint64_t>(b, pos);
  pos += 8;
  for (std::uint64_t l = 0; l < layers; ++l) {
    out.push_back({pos, 4, "name bytes"});
    pos += 4 + peek<std::uint32_t>(b, pos);
    out.push_back({pos, 8, "size"});
    out.push_back({pos + 8, 8, "uses"});
    out.push_back({pos + 16, 1, "role"});
    pos += 17;
    out.push_back({pos, 8, "words"});
    pos += 8 + 16 * peek<std::uint64_t>(b, pos);
  }
  out.push_back({pos, 8, "policies"});
  const auto policies = peek<std::uint64_t>(b, pos);
  pos += 8;
  for (std::uint64_t k = 0; k < policies; ++k) {
    out.push_back({pos, 8, "policy bytes"});
    const auto n = peek<std::uint64_t>(b, pos);
    pos += 8;
    if (static_cast<int>(k) == momentum_policy && n > 0) {
      std::size_t q = pos;
      out.push_back({q, 8, "momentum layers"});
      const auto ml = peek<std::uint64_t>(b, q);
      q += 8;
      for (std::uint64_t l = 0; l < ml; ++l) {
        out.push_back({q, 8, "momentum size"});
        q += 8 + 4 * peek<std::uint64_t>(b, q);
      }
    }
    pos += n;
  }
  out.push_back({pos, 8, "user bytes"});
  return out;
}

/// A read-only stream buffer that cannot tell or seek, like a pipe's.
class PipeBuf : public std::streambuf {
 public:
  explicit PipeBuf(std::string bytes) : bytes_(std::move(bytes)) {
    setg(bytes_.data(), bytes_.data(), bytes_.data() + bytes_.size());
  }

 private:
  std::string bytes_;
};

inline bool same_state(const east::ControllerState& a, const east::ControllerState& b) {
  return a.seed == b.seed && a.last_update_step == b.last_update_step && a.updates == b.updates &&
         std::memcmp(&a.density, &b.density, sizeof(double)) == 0 && a.names == b.names &&
         a.sizes == b.sizes && a.uses == b.uses && a.roles == b.roles && a.policy_states == b.policy_states &&
         a.masks == b.masks && a.ever_active == b.ever_active;
}

}  // namespace east_test
