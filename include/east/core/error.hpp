#pragma once
// east's exceptions. Bad configuration or input throws InvalidArgument whose message names the
// function, the offending value and the valid range; corrupt files throw CorruptCheckpoint.
#include <sstream>
#include <stdexcept>
#include <string>

namespace east {

/// Bad configuration or input: the message says which function, which value and what is valid.
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// A checkpoint that is truncated, has a bad checksum, an unknown version or does not fit.
class CorruptCheckpoint : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream os;
  os.precision(17);
  (os << ... << parts);
  return os.str();
}

/// Throws InvalidArgument("where: " + parts...) when `ok` is false.
template <class... Parts>
void require(bool ok, const char* where, const Parts&... parts) {
  if (!ok) throw InvalidArgument(concat(where, ": ", parts...));
}

/// Densities live in (0, 1].
inline void require_density(double d, const char* where, const char* what = "density") {
  require(d > 0.0 && d <= 1.0, where, what, " ", d, " is outside (0, 1]");
}

}  // namespace detail
}  // namespace east
