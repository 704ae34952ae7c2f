#pragma once
// CIFAR-style ResNets (3×3 stem, stride 1, no max-pool; global average pool; Linear without
// bias) with EAST's two architectural tricks as options:
//   * DyReLU-B after the stem's BN, after BN1 (and BN2 in bottlenecks) of every block and after
//     each residual add (EAST-SPEC §2);
//   * residual weight sharing (EAST-SPEC §3): in every stage, blocks 0 and 1 own their
//     convolutions, blocks 2, 3, … reuse block 1's conv tensors (and so their masks), each use
//     scaled by its own learnable scalar initialised U(0, 1); shared blocks keep their own BNs
//     and DyReLUs. Autograd adds all uses' gradients onto the one stored tensor.
// The convolutions are east::nn::Conv2d: libtorch's until a Sparsifier binds them, then on
// compact weights below the crossover density. BatchNorm, the residual add and ReLU run fused
// (east::BatchNormReLU2d: one pass per direction instead of three).
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "../../core/error.hpp"
#include "batchnorm.hpp"
#include "dyrelu.hpp"
#include "layers.hpp"
#include "registration.hpp"

namespace east {
namespace torch_adapter {

/// A 2-D convolution that borrows another convolution's weight tensor (and, once a Sparsifier
/// binds the owner, its compact weights) and scales it by a learnable scalar "scale":
/// y = conv2d(x, scale·W_owner). Registration counts it as one more use of W.
class SharedConv2dImpl : public torch::nn::Module, public SharesWeights {
 public:
  /// @param owner the convolution whose weight is reused  @param init_scale initial scalar
  SharedConv2dImpl(Conv2d owner, double init_scale) : owner_(std::move(owner)) {
    scale = register_parameter("scale", torch::full({1}, init_scale));
  }
  torch::Tensor forward(const torch::Tensor& x, const GradientJoinPtr& join = {}) {
    return owner_->forward_scaled(x, scale, join);
  }
  std::vector<torch::Tensor> borrowed_weights() const override { return {owner_->weight}; }
  torch::Tensor scale;

 private:
  Conv2d owner_;  // not registered here: the owner's block owns it
};
TORCH_MODULE(SharedConv2d);

/// Options of make_resnet / ResNetImpl.
struct ResNetOptions {
  int depth = 34;      ///< 18, 34 (basic blocks) or 50 (bottlenecks)
  double width = 1.0;  ///< multiplier of the stage widths 64, 128, 256, 512
  int64_t in_channels = 3;
  int64_t num_classes = 10;
  bool dyrelu = false;  ///< DyReLU-B instead of ReLU
  bool share = false;   ///< residual weight sharing from block 2 of every stage on
  DyReLUBackend backend = DyReLUBackend::torch_ops;
  uint64_t seed = 0;  ///< initialisation of the sharing scalars (torch's RNG does the rest)
};

namespace detail {
inline Conv2d conv(int64_t in, int64_t out, int64_t k, int64_t stride) {
  return Conv2d(torch::nn::Conv2dOptions(in, out, k).stride(stride).padding(k / 2).bias(false));
}
/// BatchNorm, with the ReLU that follows it fused unless the activation is DyReLU.
inline BatchNormReLU2d bn(int64_t channels, bool relu) {
  return BatchNormReLU2d(torch::nn::BatchNorm2dOptions(channels), relu);
}
}  // namespace detail

/// One residual block (basic: two 3×3 convs; bottleneck: 1×1, 3×3, 1×1 with expansion 4), owning
/// its convolutions or borrowing those of `source` (a block of the same shape).
class ResidualBlockImpl : public torch::nn::Module {
 public:
  ResidualBlockImpl(int64_t in, int64_t planes, int64_t stride, bool bottleneck, bool dyrelu,
                    DyReLUBackend backend, ResidualBlockImpl* source = nullptr, std::vector<double> scales = {})
      : bottleneck_(bottleneck) {
    const int64_t out = bottleneck ? planes * 4 : planes;
    std::vector<std::pair<int64_t, int64_t>> io;  // (in, out) per conv, kernel sizes below
    std::vector<int64_t> ks, strides;
    if (bottleneck) {
      io = {{in, planes}, {planes, planes}, {planes, out}};
      ks = {1, 3, 1};
      strides = {1, stride, 1};
    } else {
      io = {{in, planes}, {planes, out}};
      ks = {3, 3};
      strides = {stride, 1};
    }
    for (std::size_t i = 0; i < io.size(); ++i) {
      const std::string n = "conv" + std::to_string(i + 1);
      if (source) {
        east::detail::require(source->own_.size() == io.size(), "east::torch_adapter::ResidualBlock()",
                              "source block has ", source->own_.size(), " convolutions, expected ",
                              io.size());
        shared_.push_back(register_module(n, SharedConv2d(source->own_[i], scales.at(i))));
      } else {
        own_.push_back(register_module(n, detail::conv(io[i].first, io[i].second, ks[i], strides[i])));
      }
      bns_.push_back(register_module("bn" + std::to_string(i + 1), detail::bn(io[i].second, !dyrelu)));
    }
    // Activations: after bn1 (and bn2 of a bottleneck) and after the residual add.
    const std::size_t inner = io.size() - 1;
    for (std::size_t i = 0; i <= inner; ++i) {
      const int64_t ch = i < inner ? io[i].second : out;
      const std::string n = i < inner ? "act" + std::to_string(i + 1) : "act_out";
      if (dyrelu)
        acts_.push_back(register_module(n, DyReLUB(ch, 4, backend)));
      else
        acts_.emplace_back(nullptr);
    }
    if (stride != 1 || in != out) {
      east::detail::require(source == nullptr, "east::torch_adapter::ResidualBlock()",
                            "a shared block cannot have a projection shortcut");
      shortcut = register_module("shortcut", detail::conv(in, out, 1, stride));
      shortcut_bn = register_module("shortcut_bn", detail::bn(out, false));
    }
  }

  torch::Tensor forward(const torch::Tensor& x) {
    // x's two gradients (through conv1, and through the shortcut: the last BN's residual or the
    // projection) are summed in a compact convolution's input-gradient pass (GradientJoin).
    const auto join = c10::make_intrusive<GradientJoin>();
    torch::Tensor h = x;
    const std::size_t n = bns_.size();
    for (std::size_t i = 0; i + 1 < n; ++i) h = act(i, bns_[i](conv(i, h, i == 0 ? join : GradientJoinPtr())));
    // The last BN adds the shortcut (and applies the ReLU) in the same pass.
    const torch::Tensor shortcut_out = shortcut ? shortcut_bn(shortcut->forward_joined(x, join)) : x;
    return act(n - 1, bns_[n - 1](conv(n - 1, h, GradientJoinPtr()), shortcut_out, shortcut ? GradientJoinPtr() : join));
  }

  bool is_shared() const { return own_.empty(); }
  Conv2d shortcut{nullptr};
  BatchNormReLU2d shortcut_bn{nullptr};

 private:
  torch::Tensor conv(std::size_t i, const torch::Tensor& h, const GradientJoinPtr& join) {
    return own_.empty() ? shared_[i]->forward(h, join) : own_[i]->forward_joined(h, join);
  }
  // DyReLU where the model has it; the ReLU is fused into the BN otherwise.
  torch::Tensor act(std::size_t i, const torch::Tensor& h) { return acts_[i] ? acts_[i](h) : h; }
  bool bottleneck_;
  std::vector<Conv2d> own_;
  std::vector<SharedConv2d> shared_;
  std::vector<BatchNormReLU2d> bns_;
  std::vector<DyReLUB> acts_;
};
TORCH_MODULE(ResidualBlock);

/// CIFAR-style ResNet-18/34/50 with optional DyReLU-B and residual weight sharing.
class ResNetImpl : public torch::nn::Module {
 public:
  explicit ResNetImpl(const ResNetOptions& o) : options_(o) {
    constexpr const char* where = "east::torch_adapter::ResNet()";
    std::vector<int> blocks;
    bool bottleneck = false;
    if (o.depth == 18)
      blocks = {2, 2, 2, 2};
    else if (o.depth == 34)
      blocks = {3, 4, 6, 3};
    else if (o.depth == 50)
      blocks = {3, 4, 6, 3}, bottleneck = true;
    else
      east::detail::require(false, where, "depth ", o.depth, " (valid: 18, 34, 50)");
    east::detail::require(o.width > 0 && o.width <= 16, where, "width ", o.width, " (valid: (0, 16])");
    east::detail::require(o.in_channels >= 1, where, "in_channels ", o.in_channels, " (valid: >= 1)");
    east::detail::require(o.num_classes >= 2, where, "num_classes ", o.num_classes, " (valid: >= 2)");
    auto w = [&](int64_t c) { return std::max<int64_t>(1, static_cast<int64_t>(std::lround(c * o.width))); };
    const int64_t stem = w(64);
    stem_conv = register_module("conv1", detail::conv(o.in_channels, stem, 3, 1));
    stem_bn = register_module("bn1", detail::bn(stem, !o.dyrelu));
    if (o.dyrelu) stem_act = register_module("act1", DyReLUB(stem, 4, o.backend));
    const RandomStream scales = make_stream(o.seed).derive(0x5CA1E);
    int64_t in = stem;
    std::uint64_t scale_index = 0;
    for (int s = 0; s < 4; ++s) {
      const int64_t planes = w(64 << s);
      torch::nn::Sequential stage;
      ResidualBlockImpl* source = nullptr;
      for (int b = 0; b < blocks[s]; ++b) {
        const int64_t stride = (b == 0 && s > 0) ? 2 : 1;
        ResidualBlock block{nullptr};
        if (o.share && b >= 2) {
          std::vector<double> sc;
          for (int i = 0; i < (bottleneck ? 3 : 2); ++i) sc.push_back(scales.uniform(scale_index++));
          block = ResidualBlock(in, planes, stride, bottleneck, o.dyrelu, o.backend, source, sc);
        } else {
          block = ResidualBlock(in, planes, stride, bottleneck, o.dyrelu, o.backend);
        }
        if (b == 1) source = block.get();
        in = bottleneck ? planes * 4 : planes;
        stage->push_back(block);
      }
      stages.push_back(register_module("layer" + std::to_string(s + 1), stage));
    }
    fc = register_module("fc", Linear(torch::nn::LinearOptions(in, o.num_classes).bias(false)));
  }

  torch::Tensor forward(torch::Tensor x) {
    x = stem_bn(stem_conv(x));
    if (stem_act) x = stem_act(x);
    for (auto& s : stages) x = s->forward(x);
    x = torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
    return fc(x);
  }

  const ResNetOptions& options() const { return options_; }

  Conv2d stem_conv{nullptr};
  BatchNormReLU2d stem_bn{nullptr};
  DyReLUB stem_act{nullptr};
  std::vector<torch::nn::Sequential> stages;
  Linear fc{nullptr};

 private:
  ResNetOptions options_;
};
TORCH_MODULE(ResNet);

}  // namespace torch_adapter
}  // namespace east
