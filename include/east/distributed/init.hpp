#pragma once
// How ranks find each other: world size, rank, a rendezvous address (tcp://HOST:PORT or
// file:///PATH) and a timeout, given explicitly or read from the environment the way torchrun
// sets it (WORLD_SIZE, RANK, MASTER_ADDR, MASTER_PORT; EAST_DIST_INIT as set by
// scripts/launch-local). Framework-free: engines (adapters/torch/distributed.hpp) take the
// resolved options.
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>

#include "../core/error.hpp"

namespace east {
namespace distributed {

/// A parsed rendezvous address.
struct InitAddress {
  enum class Kind { tcp, file };
  Kind kind = Kind::tcp;
  std::string host;        ///< tcp: host name or address (IPv6 without brackets)
  std::uint16_t port = 0;  ///< tcp: 1..65535
  std::string path;        ///< file: absolute path of the store file (on a file system all ranks share)
};

/// Parses tcp://HOST:PORT (IPv6 as tcp://[ADDR]:PORT) or file:///ABSOLUTE/PATH.
inline InitAddress parse_init_url(const std::string& url) {
  constexpr const char* where = "east::distributed::parse_init_url()";
  const auto bad = [&](const char* why) {
    return InvalidArgument(
        detail::concat(where, ": '", url, "' ", why, " (valid: tcp://HOST:PORT or file:///ABSOLUTE/PATH)"));
  };
  InitAddress a;
  if (url.rfind("file://", 0) == 0) {
    a.kind = InitAddress::Kind::file;
    a.path = url.substr(7);
    if (a.path.empty() || a.path[0] != '/') throw bad("has no absolute path");
    if (a.path.back() == '/') throw bad("names a directory, not a file");
    return a;
  }
  if (url.rfind("tcp://", 0) != 0) throw bad("has an unknown scheme");
  std::string rest = url.substr(6);
  std::string port;
  if (!rest.empty() && rest[0] == '[') {
    const auto close = rest.find(']');
    if (close == std::string::npos) throw bad("has an unclosed '['");
    a.host = rest.substr(1, close - 1);
    if (rest.size() < close + 2 || rest[close + 1] != ':') throw bad("has no :PORT");
    port = rest.substr(close + 2);
  } else {
    const auto colon = rest.rfind(':');
    if (colon == std::string::npos) throw bad("has no :PORT");
    a.host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
    if (a.host.find(':') != std::string::npos) throw bad("has an IPv6 address without [brackets]");
  }
  if (a.host.empty()) throw bad("has no host");
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
    throw bad("has a port that is not a number in 1..65535");
  const long p = std::stol(port);
  if (p < 1 || p > 65535) throw bad("has a port outside 1..65535");
  a.port = static_cast<std::uint16_t>(p);
  return a;
}

/// How one rank joins a group. Unset fields come from the environment (resolve_init_options()).
struct InitOptions {
  int world_size = -1;  ///< -1: $WORLD_SIZE, else 1
  int rank = -1;        ///< -1: $RANK, else 0
  /// tcp://HOST:PORT (rank 0 serves the store on PORT) or file:///PATH (a file every rank can
  /// open; it must not exist from an earlier run). Empty: $EAST_DIST_INIT, else
  /// tcp://$MASTER_ADDR:$MASTER_PORT (torchrun), else (one rank) none is needed.
  std::string init;
  /// How long joining and every collective may wait for peers; a dead or stuck peer makes the
  /// others fail with CommunicationError after at most this long.
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  /// Network interface for the engine's connections ("eth0", "lo"). Empty: $GLOO_SOCKET_IFNAME,
  /// else the address this machine's host name resolves to.
  std::string interface;
};

/// Fills unset fields of `o` from the environment and checks them all; throws InvalidArgument
/// naming the field, its source and the valid range. `getenv` is replaceable for tests.
inline InitOptions resolve_init_options(
    InitOptions o,
    const std::function<const char*(const char*)>& getenv = [](const char* n) { return std::getenv(n); }) {
  constexpr const char* where = "east::distributed::resolve_init_options()";
  const auto env = [&](const char* name) -> std::string {
    const char* v = getenv(name);
    return v ? std::string(v) : std::string();
  };
  const auto integer = [&](const char* name, const std::string& text) {
    detail::require(
        !text.empty() && text.size() <= 9 && text.find_first_not_of("0123456789") == std::string::npos, where,
        "$", name, " is '", text, "' (valid: a non-negative integer)");
    return std::stoi(text);
  };
  if (o.world_size < 0) {
    const auto v = env("WORLD_SIZE");
    o.world_size = v.empty() ? 1 : integer("WORLD_SIZE", v);
  }
  if (o.rank < 0) {
    const auto v = env("RANK");
    o.rank = v.empty() ? 0 : integer("RANK", v);
  }
  detail::require(o.world_size >= 1, where, "world size ", o.world_size, " (valid: >= 1)");
  detail::require(o.rank >= 0 && o.rank < o.world_size, where, "rank ", o.rank, " (valid: [0, ", o.world_size,
                  ") for world size ", o.world_size, ")");
  detail::require(o.timeout.count() > 0, where, "timeout ", o.timeout.count(), " ms (valid: > 0)");
  if (o.init.empty()) o.init = env("EAST_DIST_INIT");
  if (o.init.empty()) {
    const auto addr = env("MASTER_ADDR"), port = env("MASTER_PORT");
    if (!addr.empty() || !port.empty()) {
      detail::require(!addr.empty() && !port.empty(), where, "$MASTER_ADDR '", addr, "' and $MASTER_PORT '",
                      port, "' (valid: both set, as torchrun does, or neither)");
      o.init = (addr.find(':') != std::string::npos ? "tcp://[" + addr + "]:" : "tcp://" + addr + ":") + port;
    }
  }
  detail::require(!o.init.empty() || o.world_size == 1, where, "no rendezvous address for world size ",
                  o.world_size,
                  " (valid: an init address tcp://HOST:PORT or file:///PATH, $EAST_DIST_INIT, or torchrun's "
                  "$MASTER_ADDR and $MASTER_PORT)");
  if (!o.init.empty()) parse_init_url(o.init);  // throws on a bad address
  if (o.interface.empty()) o.interface = env("GLOO_SOCKET_IFNAME");
  return o;
}

}  // namespace distributed
}  // namespace east
