#pragma once
// Exact save/restore of a module's tensors and Sgd's momentum into a byte string, e.g. the user
// data of an east checkpoint (east/io/checkpoint.hpp), so one CRC-checked file holds masks,
// model and optimizer. Tensors are stored by name with dtype, shape and raw bytes.
#include <torch/torch.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../../core/error.hpp"
#include "sgd.hpp"

namespace east {
namespace torch_adapter {

/// Appends named tensors and scalars to a byte string.
class StateWriter {
 public:
  template <class T>
  void put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    bytes_.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void put_string(const std::string& s) {
    put(static_cast<std::uint64_t>(s.size()));
    bytes_.append(s);
  }
  void put_tensor(const std::string& name, const torch::Tensor& t) {
    const torch::Tensor c = t.detach().contiguous().cpu();
    put_string(name);
    put(static_cast<std::int32_t>(c.scalar_type()));
    put(static_cast<std::uint64_t>(c.dim()));
    for (auto d : c.sizes()) put(static_cast<std::int64_t>(d));
    const auto n = static_cast<std::uint64_t>(c.numel() * c.element_size());
    put(n);
    bytes_.append(static_cast<const char*>(c.data_ptr()), n);
  }
  /// Every parameter and buffer of `module` (BatchNorm running statistics included).
  void put_module(torch::nn::Module& module) {
    const auto p = module.named_parameters(true);
    const auto b = module.named_buffers(true);
    put(static_cast<std::uint64_t>(p.size() + b.size()));
    for (const auto& t : p) put_tensor(t.key(), t.value());
    for (const auto& t : b) put_tensor(t.key(), t.value());
  }
  void put_sgd(Sgd& sgd) {
    put(static_cast<std::uint64_t>(sgd.names().size()));
    for (std::size_t i = 0; i < sgd.names().size(); ++i)
      put_tensor(sgd.names()[i], sgd.momentum_buffers()[i]);
  }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

/// Reads what StateWriter wrote, copying tensors *into* existing tensors (pointers east holds
/// stay valid). Throws east::CorruptCheckpoint on truncation or a name/shape/dtype mismatch.
class StateReader {
 public:
  explicit StateReader(const std::string& bytes) : b_(bytes) {}
  template <class T>
  T get(const char* what) {
    T v;
    need(sizeof(T), what);
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string get_string(const char* what) {
    const auto n = get<std::uint64_t>(what);
    need(n, what);
    std::string s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  void get_tensor_into(const std::string& expected_name, torch::Tensor target) {
    const auto name = get_string("tensor name");
    fail_if(name != expected_name, "tensor '", name, "' where '", expected_name, "' was expected");
    const auto type = get<std::int32_t>("dtype");
    fail_if(type != static_cast<std::int32_t>(target.scalar_type()), "tensor '", name, "' has another dtype");
    const auto dims = get<std::uint64_t>("dims");
    fail_if(dims != static_cast<std::uint64_t>(target.dim()), "tensor '", name, "' has ", dims,
            " dims, expected ", target.dim());
    for (std::uint64_t i = 0; i < dims; ++i)
      fail_if(get<std::int64_t>("size") != target.size(static_cast<int64_t>(i)), "tensor '", name,
              "' has another shape than ", target.sizes());
    const auto n = get<std::uint64_t>("byte count");
    fail_if(n != static_cast<std::uint64_t>(target.numel() * target.element_size()), "tensor '", name,
            "' has a wrong byte count");
    need(n, "tensor data");
    torch::NoGradGuard guard;
    fail_if(!target.is_contiguous(), "target of '", name, "' is not contiguous");
    std::memcpy(target.data_ptr(), b_.data() + pos_, n);
    pos_ += n;
  }
  /// A new tensor of whatever dtype and shape was written (no target to match).
  torch::Tensor get_tensor(const std::string& expected_name) {
    const auto name = get_string("tensor name");
    fail_if(name != expected_name, "tensor '", name, "' where '", expected_name, "' was expected");
    const auto type = get<std::int32_t>("dtype");
    fail_if(type != static_cast<std::int32_t>(torch::kFloat) && type != static_cast<std::int32_t>(torch::kDouble) &&
                type != static_cast<std::int32_t>(torch::kLong),
            "tensor '", name, "' has dtype ", type, " (valid: float32, float64, int64)");
    const auto dims = get<std::uint64_t>("dims");
    fail_if(dims > 8, "tensor '", name, "' has ", dims, " dims (valid: <= 8)");
    std::vector<std::int64_t> sizes;
    std::uint64_t numel = 1;
    for (std::uint64_t i = 0; i < dims; ++i) {
      const auto d = get<std::int64_t>("size");
      fail_if(d < 0 || (d > 0 && numel > left() / static_cast<std::uint64_t>(d)), "tensor '", name, "' has size ", d);
      sizes.push_back(d);
      numel *= static_cast<std::uint64_t>(d);
    }
    auto t = torch::empty(sizes, torch::TensorOptions().dtype(static_cast<torch::ScalarType>(type)));
    const auto n = get<std::uint64_t>("byte count");
    fail_if(n != static_cast<std::uint64_t>(t.numel() * t.element_size()), "tensor '", name, "' has a wrong byte count");
    need(n, "tensor data");
    if (n) std::memcpy(t.data_ptr(), b_.data() + pos_, n);
    pos_ += n;
    return t;
  }
  void get_module(torch::nn::Module& module) {
    const auto p = module.named_parameters(true);
    const auto b = module.named_buffers(true);
    const auto n = get<std::uint64_t>("tensor count");
    fail_if(n != p.size() + b.size(), "checkpoint has ", n, " model tensors, the model ",
            p.size() + b.size());
    for (const auto& t : p) get_tensor_into(t.key(), t.value());
    for (const auto& t : b) get_tensor_into(t.key(), t.value());
  }
  void get_sgd(Sgd& sgd) {
    const auto n = get<std::uint64_t>("momentum count");
    fail_if(n != sgd.names().size(), "checkpoint has ", n, " momentum buffers, the optimizer ",
            sgd.names().size());
    for (std::size_t i = 0; i < sgd.names().size(); ++i)
      get_tensor_into(sgd.names()[i], sgd.momentum_buffers()[i]);
  }
  std::size_t left() const { return b_.size() - pos_; }

 private:
  void need(std::uint64_t k, const char* what) {
    if (k > b_.size() - pos_)
      throw CorruptCheckpoint(
          east::detail::concat("east::torch_adapter::StateReader: truncated while reading ", what));
  }
  template <class... P>
  void fail_if(bool bad, const P&... parts) {
    if (bad) throw CorruptCheckpoint(east::detail::concat("east::torch_adapter::StateReader: ", parts...));
  }
  const std::string& b_;
  std::size_t pos_ = 0;
};

}  // namespace torch_adapter
}  // namespace east
