#pragma once
// The channel-level connectivity graph (east/masks/connectivity.hpp) of a torch_adapter::ResNet:
// stem → blocks (each branch's convolutions in order, the shortcut as an identity or a 1×1
// projection into the same sum) → global average pool → classifier. A shared block's
// convolutions are uses of the stored tensors they borrow, under those tensors' names.
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>

#include "../../core/error.hpp"
#include "../../masks/connectivity.hpp"
#include "registration.hpp"
#include "resnet.hpp"

namespace east {
namespace torch_adapter {

/// The graph of `model`, with layers named as make_parameter_set(model) names them.
inline std::shared_ptr<ConnectivityGraph> resnet_connectivity(ResNetImpl& model) {
  constexpr const char* where = "east::torch_adapter::resnet_connectivity()";
  std::map<const void*, std::string> names;
  for (const auto& r : prunable_parameters(model)) names[r.weight.unsafeGetTensorImpl()] = r.name;
  const auto name_of = [&](const torch::Tensor& w, const std::string& what) {
    const auto it = names.find(w.unsafeGetTensorImpl());
    east::detail::require(it != names.end(), where, what, "'s weight is not a registered parameter");
    return it->second;
  };
  auto g = std::make_shared<ConnectivityGraph>();
  const auto& o = model.options();
  const auto input = g->add_input("input", static_cast<std::size_t>(o.in_channels));
  auto x = g->add_node("conv1", static_cast<std::size_t>(model.stem_conv->weight.size(0)));
  g->add_layer(name_of(model.stem_conv->weight, "conv1"), input, x);
  for (std::size_t s = 0; s < model.stages.size(); ++s) {
    std::size_t b = 0;
    for (const auto& child : model.stages[s]->children()) {
      auto* block = child->as<ResidualBlockImpl>();
      east::detail::require(block != nullptr, where, "stage ", s + 1,
                            " holds a module that is no ResidualBlock");
      const std::string prefix = "layer" + std::to_string(s + 1) + "." + std::to_string(b++);
      // The block's convolutions conv1, conv2[, conv3], in order: owned or borrowed.
      std::vector<std::pair<std::string, torch::Tensor>> convs;
      for (const auto& item : block->named_children()) {
        if (item.key().rfind("conv", 0) != 0) continue;
        if (auto* c = item.value()->as<torch::nn::Conv2dImpl>())
          convs.emplace_back(prefix + "." + item.key(), c->weight);
        else if (auto* sc = item.value()->as<SharedConv2dImpl>())
          convs.emplace_back(prefix + "." + item.key(), sc->borrowed_weights().at(0));
      }
      east::detail::require(!convs.empty(), where, "block ", prefix, " has no convolution");
      const auto out_ch = static_cast<std::size_t>(convs.back().second.size(0));
      const auto y = g->add_node(prefix, out_ch);
      auto h = x;
      for (std::size_t i = 0; i < convs.size(); ++i) {
        const auto next = i + 1 < convs.size()
                              ? g->add_node(convs[i].first, static_cast<std::size_t>(convs[i].second.size(0)))
                              : y;
        g->add_layer(name_of(convs[i].second, convs[i].first), h, next);
        h = next;
      }
      if (block->shortcut)
        g->add_layer(name_of(block->shortcut->weight, prefix + ".shortcut"), x, y);
      else
        g->add_identity(x, y);
      x = y;
    }
  }
  // Global average pooling keeps channels; the classifier reads them.
  const auto logits = g->add_node("logits", static_cast<std::size_t>(o.num_classes));
  g->add_layer(name_of(model.fc->weight, "fc"), x, logits);
  g->set_output(logits);
  return g;
}

}  // namespace torch_adapter
}  // namespace east
