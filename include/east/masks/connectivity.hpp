#pragma once
// Input→output paths through sparse masks, at the level of channels.
//
// At extreme sparsity a random initial mask can leave no path from the input to the output:
// every gradient is then exactly zero and the network sits at chance. A ConnectivityGraph says
// how a network's registered layers connect (layer B reads the channels layer A writes; a
// residual add merges channel sets; a shared tensor is one layer used in several places);
// check_connectivity finds where the signal stops, and connect_masks repairs initial masks so
// every declared layer lies on an input→output path while keeping every layer's exact count.
//
// Channel semantics: channel c of a node carries signal ("is live") when it depends on the
// network's input. A layer's output channel o is live when some active weight (o, i, tap) reads a
// live input channel. Channel-wise operations (BatchNorm, activations, pooling) keep liveness and
// are not declared. A channel that is constant (e.g. BatchNorm's bias on a dead channel) carries
// no signal and no gradient, which is exactly why such a network does not train.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/parameter_set.hpp"
#include "../core/random.hpp"
#include "bit_mask.hpp"

namespace east {

/// A network's channel-level layer graph: nodes are activation tensors (with a channel count),
/// edges are uses of registered layers or identity shortcuts. Several edges writing into one node
/// add up (a residual add). Build it once per model; it holds names, not views.
class ConnectivityGraph {
 public:
  using Node = std::size_t;
  static constexpr Node npos = static_cast<Node>(-1);

  /// One use of a layer (or an identity shortcut when `layer` is empty) from node `from` to `to`.
  struct Edge {
    std::string layer;
    Node from = npos, to = npos;
  };
  struct NodeInfo {
    std::string name;
    std::size_t channels = 0;
    bool input = false;
  };

  /// The network's input: every channel is live.
  Node add_input(std::string name, std::size_t channels) { return add(std::move(name), channels, true); }
  /// An activation tensor: the sum of every edge written into it.
  Node add_node(std::string name, std::size_t channels) { return add(std::move(name), channels, false); }

  /// Layer `layer` (a ParameterSet name; weight shape [out, in, taps…] or [out, in]) reads `from`
  /// and adds its output into `to`. `out` must equal `to`'s channels and `in` a multiple m of
  /// `from`'s (m > 1: a Linear reading flattened C×H×W features, feature j in channel j / m);
  /// checked against the parameter set when the graph is used. A shared tensor is declared once per
  /// use; all its uses share one mask.
  void add_layer(const std::string& layer, Node from, Node to) {
    constexpr const char* where = "east::ConnectivityGraph::add_layer()";
    detail::require(!layer.empty(), where, "layer name is empty (valid: a registered layer's name)");
    check_edge(where, from, to);
    edges_.push_back({layer, from, to});
  }
  /// `from`'s channels pass unchanged into `to` (an identity shortcut); same channel counts.
  void add_identity(Node from, Node to) {
    constexpr const char* where = "east::ConnectivityGraph::add_identity()";
    check_edge(where, from, to);
    detail::require(nodes_[from].channels == nodes_[to].channels, where, "node '", nodes_[from].name,
                    "' has ", nodes_[from].channels, " channels, node '", nodes_[to].name, "' ",
                    nodes_[to].channels, " (valid: equal counts)");
    edges_.push_back({std::string(), from, to});
  }
  /// The node the loss reads (e.g. the logits); a path must reach it.
  void set_output(Node node) {
    detail::require(node < nodes_.size(), "east::ConnectivityGraph::set_output()", "node ", node,
                    " (valid: < ", nodes_.size(), ")");
    output_ = node;
  }

  const std::vector<NodeInfo>& nodes() const { return nodes_; }
  const std::vector<Edge>& edges() const { return edges_; }
  Node output() const { return output_; }

  /// Node indices in a topological order (inputs first). Throws when the edges form a cycle.
  std::vector<Node> topological_order() const {
    std::vector<std::size_t> indeg(nodes_.size(), 0);
    for (const auto& e : edges_) ++indeg[e.to];
    std::vector<Node> order, ready;
    for (Node n = nodes_.size(); n-- > 0;)
      if (indeg[n] == 0) ready.push_back(n);
    while (!ready.empty()) {
      const Node n = ready.back();
      ready.pop_back();
      order.push_back(n);
      for (auto it = edges_.rbegin(); it != edges_.rend(); ++it)
        if (it->from == n && --indeg[it->to] == 0) ready.push_back(it->to);
    }
    detail::require(order.size() == nodes_.size(), "east::ConnectivityGraph", "the edges form a cycle (",
                    nodes_.size() - order.size(), " nodes on or after it; valid: a directed acyclic graph)");
    return order;
  }

 private:
  Node add(std::string name, std::size_t channels, bool input) {
    detail::require(channels >= 1, "east::ConnectivityGraph::add_node()", "node '", name, "' has ", channels,
                    " channels (valid: >= 1)");
    nodes_.push_back({std::move(name), channels, input});
    return nodes_.size() - 1;
  }
  void check_edge(const char* where, Node from, Node to) const {
    detail::require(from < nodes_.size() && to < nodes_.size(), where, "nodes ", from, " -> ", to,
                    " (valid: < ", nodes_.size(), ")");
    detail::require(from != to, where, "edge from node '", nodes_[from].name, "' to itself");
    detail::require(!nodes_[to].input, where, "edge into the input node '", nodes_[to].name, "'");
  }

  std::vector<NodeInfo> nodes_;
  std::vector<Edge> edges_;
  Node output_ = npos;
};

/// What check_connectivity found.
struct ConnectivityReport {
  bool connected = false;  ///< some input→output path exists
  /// When not connected: the first node (topological order) that every input→output route
  /// passes and that carries no signal, and the layers writing into it — where the signal stops.
  std::string cut_node;
  std::vector<std::string> cut_layers;
  /// Declared layer uses none of whose active weights lies on an input→output path (a dead
  /// branch, or everything when not connected); a shared layer appears once per such use.
  std::vector<std::string> off_path;
  /// Active weights of the declared layers, and those on an input→output path in some use.
  std::size_t weights = 0, weights_on_path = 0;

  /// One line for logs: "" when every declared layer lies on a path.
  std::string message() const {
    std::ostringstream o;
    if (!connected) {
      o << "no input-to-output path through the masks";
      if (!cut_node.empty()) {
        o << ": the signal stops at '" << cut_node << "'";
        for (std::size_t i = 0; i < cut_layers.size(); ++i)
          o << (i ? " or '" : " (no active weight of '") << cut_layers[i] << "'";
        if (!cut_layers.empty()) o << " reads a live channel)";
      }
      o << "; every gradient is zero (east::connect_masks / ControllerOptions::connectivity repairs it)";
    } else if (!off_path.empty()) {
      o << off_path.size() << " layer use(s) on no input-to-output path (first: '" << off_path.front()
        << "')";
    }
    return o.str();
  }
};

/// What connect_masks did.
struct ConnectivityRepair {
  std::size_t moved = 0;                ///< weights moved (each: one activated, one deactivated)
  std::vector<std::string> unresolved;  ///< layer uses that could not be put on a path
};

namespace detail {

// A graph resolved against a parameter set: per edge, its layer index and weight geometry.
struct ResolvedEdge {
  std::size_t layer = static_cast<std::size_t>(-1);  // -1: identity
  std::size_t from = 0, to = 0;
  std::size_t out = 0, in = 0, taps = 1,
              per_channel = 1;  // weight [out, in, taps], in = channels·per_channel
  bool identity() const { return layer == static_cast<std::size_t>(-1); }
  std::size_t out_of(std::size_t k) const { return k / (in * taps); }
  std::size_t channel_of(std::size_t k) const { return (k / taps) % in / per_channel; }
};

struct ResolvedGraph {
  std::vector<ResolvedEdge> edges;  // in a topological order (by the from-node's position)
  std::vector<std::size_t> names;   // graph edge index of each resolved edge (for messages)
  std::vector<std::size_t> channels;
  std::vector<char> input;
  std::size_t output = 0;
  std::vector<std::size_t> order;  // nodes, topological
};

inline ResolvedGraph resolve_graph(const ConnectivityGraph& g, const ParameterSet& params,
                                   const std::vector<BitMask>& masks, const char* where) {
  require(g.output() != ConnectivityGraph::npos, where, "the graph has no output node (call set_output)");
  require(masks.size() == params.size(), where, "got ", masks.size(), " masks for ", params.size(),
          " layers");
  ResolvedGraph r;
  r.order = g.topological_order();
  std::vector<std::size_t> pos(g.nodes().size());
  for (std::size_t i = 0; i < r.order.size(); ++i) pos[r.order[i]] = i;
  for (const auto& n : g.nodes()) r.channels.push_back(n.channels), r.input.push_back(n.input ? 1 : 0);
  r.output = g.output();
  std::vector<std::size_t> idx(g.edges().size());
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) {
    return pos[g.edges()[a].from] < pos[g.edges()[b].from];
  });
  for (const std::size_t i : idx) {
    const auto& e = g.edges()[i];
    ResolvedEdge re;
    re.from = e.from;
    re.to = e.to;
    if (!e.layer.empty()) {
      re.layer = params.find(e.layer);
      require(re.layer != ParameterSet::npos, where, "layer '", e.layer, "' of the graph is not registered");
      const auto& v = params[re.layer];
      require(v.shape.size() >= 2, where, "layer '", e.layer, "' has ", v.shape.size(),
              " dimension(s) (valid: [out, in, ...])");
      require(masks[re.layer].size() == v.size(), where, "mask of layer '", e.layer, "' has ",
              masks[re.layer].size(), " positions, the layer ", v.size());
      re.out = static_cast<std::size_t>(v.shape[0]);
      re.in = static_cast<std::size_t>(v.shape[1]);
      re.taps = v.size() / (re.out * re.in);
      const auto cin = r.channels[e.from], cout = r.channels[e.to];
      require(re.out == cout, where, "layer '", e.layer, "' has ", re.out, " outputs but node '",
              g.nodes()[e.to].name, "' has ", cout, " channels (valid: equal)");
      require(re.in % cin == 0, where, "layer '", e.layer, "' has ", re.in, " inputs but node '",
              g.nodes()[e.from].name, "' has ", cin, " channels (valid: a multiple of them)");
      re.per_channel = re.in / cin;
    }
    r.edges.push_back(re);
    r.names.push_back(i);
  }
  return r;
}

// Forward (live) and backward (reaches the output) channel sets of every node.
struct Liveness {
  std::vector<std::vector<char>> fwd, bwd;
};

inline Liveness liveness(const ResolvedGraph& r, const std::vector<BitMask>& masks) {
  Liveness lv;
  const std::size_t N = r.channels.size();
  lv.fwd.resize(N);
  lv.bwd.resize(N);
  for (std::size_t n = 0; n < N; ++n) {
    lv.fwd[n].assign(r.channels[n], r.input[n]);
    lv.bwd[n].assign(r.channels[n], n == r.output ? 1 : 0);
  }
  // Edges are in topological order of their from-node, so every edge into a node is processed
  // before any edge out of it.
  for (const auto& e : r.edges) {
    const auto& in = lv.fwd[e.from];
    auto& out = lv.fwd[e.to];
    if (e.identity()) {
      for (std::size_t c = 0; c < in.size(); ++c) out[c] |= in[c];
      continue;
    }
    masks[e.layer].for_each_active([&](std::size_t k) {
      if (in[e.channel_of(k)]) out[e.out_of(k)] = 1;
    });
  }
  for (auto it = r.edges.rbegin(); it != r.edges.rend(); ++it) {
    const auto& e = *it;
    const auto& out = lv.bwd[e.to];
    auto& in = lv.bwd[e.from];
    if (e.identity()) {
      for (std::size_t c = 0; c < in.size(); ++c) in[c] |= out[c];
      continue;
    }
    masks[e.layer].for_each_active([&](std::size_t k) {
      if (out[e.out_of(k)]) in[e.channel_of(k)] = 1;
    });
  }
  return lv;
}

// Whether position k of edge e's layer lies on an input→output path through that use.
inline bool on_path(const ResolvedEdge& e, const Liveness& lv, std::size_t k) {
  return lv.fwd[e.from][e.channel_of(k)] && lv.bwd[e.to][e.out_of(k)];
}

inline std::vector<std::size_t> set_channels(const std::vector<char>& v) {
  std::vector<std::size_t> out;
  for (std::size_t c = 0; c < v.size(); ++c)
    if (v[c]) out.push_back(c);
  return out;
}

inline std::size_t pick(const std::vector<std::size_t>& v, RandomStream s, std::uint64_t i) {
  const auto j = static_cast<std::size_t>(s.uniform(i) * static_cast<double>(v.size()));
  return v[std::min(j, v.size() - 1)];
}

}  // namespace detail

/// Checks whether `masks` (one per layer of `params`, as Controller::masks()) leave an
/// input→output path through the layers `graph` declares, and which layer uses lie on none.
/// Layers of `params` that the graph does not mention are ignored.
inline ConnectivityReport check_connectivity(const ConnectivityGraph& graph, const ParameterSet& params,
                                             const std::vector<BitMask>& masks) {
  const auto r = detail::resolve_graph(graph, params, masks, "east::check_connectivity()");
  const auto lv = detail::liveness(r, masks);
  ConnectivityReport rep;
  for (char c : lv.fwd[r.output]) rep.connected |= c != 0;
  std::vector<char> counted(params.size(), 0);
  for (std::size_t i = 0; i < r.edges.size(); ++i) {
    const auto& e = r.edges[i];
    if (e.identity()) continue;
    bool path = false;
    masks[e.layer].for_each_active([&](std::size_t k) { path |= detail::on_path(e, lv, k); });
    if (!path) rep.off_path.push_back(graph.edges()[r.names[i]].layer);
    if (counted[e.layer]) continue;
    counted[e.layer] = 1;
    masks[e.layer].for_each_active([&](std::size_t k) {
      ++rep.weights;
      for (std::size_t j = 0; j < r.edges.size(); ++j)
        if (r.edges[j].layer == e.layer && detail::on_path(r.edges[j], lv, k)) {
          ++rep.weights_on_path;
          return;
        }
    });
  }
  if (!rep.connected) {
    // The cut: the first dead node that every route from an input to the output passes (found by
    // removing it and searching the graph's edges), else the first dead node with a live input.
    const auto dead = [&](std::size_t n) {
      return std::none_of(lv.fwd[n].begin(), lv.fwd[n].end(), [](char c) { return c != 0; });
    };
    const auto reaches_without = [&](std::size_t skip) {
      std::vector<char> seen(r.channels.size(), 0);
      for (std::size_t n = 0; n < seen.size(); ++n) seen[n] = r.input[n] && n != skip;
      for (const auto& e : r.edges)  // topological order
        if (seen[e.from] && e.to != skip) seen[e.to] = 1;
      return seen[r.output] != 0;
    };
    std::size_t cut = ConnectivityGraph::npos;
    for (const std::size_t n : r.order)
      if (!r.input[n] && dead(n) && !reaches_without(n)) {
        cut = n;
        break;
      }
    if (cut == ConnectivityGraph::npos)
      for (const auto& e : r.edges)
        if (!dead(e.from) && dead(e.to)) {
          cut = e.to;
          break;
        }
    if (cut != ConnectivityGraph::npos) {
      rep.cut_node = graph.nodes()[cut].name;
      for (std::size_t i = 0; i < r.edges.size(); ++i) {
        const auto& name = graph.edges()[r.names[i]].layer;
        if (r.edges[i].to == cut && !name.empty() &&
            std::find(rep.cut_layers.begin(), rep.cut_layers.end(), name) == rep.cut_layers.end())
          rep.cut_layers.push_back(name);
      }
    }
  }
  return rep;
}

/// Moves weights of `masks` so that every layer use `graph` declares lies on an input→output path,
/// keeping every layer's count (only positions change). Deterministic in `stream`. A forward pass
/// (topological order) first gives every use a weight that reads a live channel; a backward pass
/// then gives every use a weight from a live input channel to a channel that reaches the output.
/// A new weight sits at the centre tap (taps / 2: the centre of an odd square kernel). The weight
/// it replaces is chosen at random among those on no path in any use of the layer, so no existing
/// path is ever cut. Uses it cannot fix (a layer with no weight, or one whose every weight carries
/// another use's path) are listed in `unresolved`. Dense layers (count = size) are left alone.
inline ConnectivityRepair connect_masks(const ConnectivityGraph& graph, const ParameterSet& params,
                                        std::vector<BitMask>& masks, RandomStream stream) {
  constexpr const char* where = "east::connect_masks()";
  const auto r = detail::resolve_graph(graph, params, masks, where);
  ConnectivityRepair rep;
  std::vector<std::vector<std::size_t>> uses(params.size());  // resolved edges of each layer
  for (std::size_t i = 0; i < r.edges.size(); ++i)
    if (!r.edges[i].identity()) uses[r.edges[i].layer].push_back(i);

  // One repair of edge i: put a weight from channel set `ins` to `outs`; returns success.
  auto place = [&](std::size_t i, const detail::Liveness& live, const std::vector<std::size_t>& ins,
                   const std::vector<std::size_t>& outs, bool backward) {
    const auto& e = r.edges[i];
    auto& m = masks[e.layer];
    if (ins.empty() || outs.empty() || m.count() == 0 || m.count() == m.size()) return false;
    const RandomStream s = stream.derive(i).derive(backward ? 2 : 1);
    const std::size_t c = detail::pick(ins, s, 0), o = detail::pick(outs, s, 1);
    const std::size_t sub = static_cast<std::size_t>(s.uniform(2) * static_cast<double>(e.per_channel));
    const std::size_t k =
        (o * e.in + c * e.per_channel + std::min(sub, e.per_channel - 1)) * e.taps + e.taps / 2;
    if (m.test(k)) return false;  // cannot happen for a use that needs repair; be safe
    // The victim: an active weight on no path (backward) / reading no live channel (forward) in
    // any use of this layer; among those, the one with the largest random key.
    std::size_t victim = m.size();
    std::uint32_t best = 0;
    m.for_each_active([&](std::size_t q) {
      for (const std::size_t u : uses[e.layer]) {
        const auto& eu = r.edges[u];
        if (backward ? detail::on_path(eu, live, q) : live.fwd[eu.from][eu.channel_of(q)] != 0) return;
      }
      const auto key = s.derive(3).bits32(q);
      if (victim == m.size() || key > best) victim = q, best = key;
    });
    if (victim == m.size()) return false;
    m.reset(victim);
    m.set(k);
    ++rep.moved;
    return true;
  };

  // Liveness is recomputed only after a move.
  detail::Liveness lv;
  bool stale = true;
  const auto fresh = [&]() -> const detail::Liveness& {
    if (stale) lv = detail::liveness(r, masks), stale = false;
    return lv;
  };
  // Forward: every use reads at least one live channel (so every node downstream is live).
  for (std::size_t i = 0; i < r.edges.size(); ++i) {
    const auto& e = r.edges[i];
    if (e.identity()) continue;
    const auto& cur = fresh();
    bool reads = false;
    masks[e.layer].for_each_active([&](std::size_t k) { reads |= cur.fwd[e.from][e.channel_of(k)] != 0; });
    if (reads) continue;
    std::vector<std::size_t> outs(e.out);
    for (std::size_t o = 0; o < e.out; ++o) outs[o] = o;
    if (place(i, cur, detail::set_channels(cur.fwd[e.from]), outs, false)) stale = true;
  }
  // Backward: every use carries a path. Going from the output back keeps the channels that
  // reach the output non-empty for every use still to come.
  for (std::size_t i = r.edges.size(); i-- > 0;) {
    const auto& e = r.edges[i];
    if (e.identity()) continue;
    const auto& cur = fresh();
    bool path = false;
    masks[e.layer].for_each_active([&](std::size_t k) { path |= detail::on_path(e, cur, k); });
    if (path) continue;
    if (place(i, cur, detail::set_channels(cur.fwd[e.from]), detail::set_channels(cur.bwd[e.to]), true))
      stale = true;
  }
  rep.unresolved = check_connectivity(graph, params, masks).off_path;
  return rep;
}

/// A stronger repair: every active weight that lies on no input→output path is moved onto one,
/// keeping each layer's count. A forward pass (topological order) re-points the input channel of
/// every weight that reads no live channel in any use of its layer to a random live channel (same
/// output channel and tap); a backward pass (from the output back) re-points the output channel of
/// every weight whose output reaches the output in no use to a random channel that does (same input
/// and tap). connect_masks then guarantees every use a path. At extreme sparsity a random mask
/// spends most of its weights on dead ends; this one spends none (where the counts and shared
/// layers allow). Deterministic in `stream`.
inline ConnectivityRepair connect_every_weight(const ConnectivityGraph& graph, const ParameterSet& params,
                                               std::vector<BitMask>& masks, RandomStream stream) {
  constexpr const char* where = "east::connect_every_weight()";
  const auto r = detail::resolve_graph(graph, params, masks, where);
  std::vector<std::vector<std::size_t>> uses(params.size());
  for (std::size_t i = 0; i < r.edges.size(); ++i)
    if (!r.edges[i].identity()) uses[r.edges[i].layer].push_back(i);
  std::size_t moved = 0;
  for (int pass = 0; pass < 2; ++pass) {
    const bool backward = pass == 1;
    for (std::size_t n = 0; n < r.edges.size(); ++n) {
      const std::size_t i = backward ? r.edges.size() - 1 - n : n;
      const auto& e = r.edges[i];
      if (e.identity()) continue;
      auto& m = masks[e.layer];
      if (m.count() == m.size()) continue;
      const auto lv = detail::liveness(r, masks);
      const auto targets = detail::set_channels(backward ? lv.bwd[e.to] : lv.fwd[e.from]);
      if (targets.empty()) continue;
      std::vector<std::size_t> stray;  // weights dead in every use (forward: input; backward: output)
      m.for_each_active([&](std::size_t k) {
        for (const std::size_t u : uses[e.layer]) {
          const auto& eu = r.edges[u];
          if (backward ? lv.bwd[eu.to][eu.out_of(k)] != 0 : lv.fwd[eu.from][eu.channel_of(k)] != 0) return;
        }
        stray.push_back(k);
      });
      const RandomStream s = stream.derive(i).derive(backward ? 4 : 3);
      for (std::size_t j = 0; j < stray.size(); ++j) {
        const std::size_t k = stray[j], tap = k % e.taps, o = e.out_of(k), in_index = (k / e.taps) % e.in;
        for (std::uint64_t attempt = 0; attempt < 8; ++attempt) {  // a free position, else keep it
          const std::size_t t = detail::pick(targets, s, 2 * (8 * j + attempt));
          std::size_t q;
          if (backward) {
            q = (t * e.in + in_index) * e.taps + tap;
          } else {
            const auto sub =
                std::min<std::size_t>(static_cast<std::size_t>(s.uniform(2 * (8 * j + attempt) + 1) *
                                                               static_cast<double>(e.per_channel)),
                                      e.per_channel - 1);
            q = (o * e.in + t * e.per_channel + sub) * e.taps + tap;
          }
          if (m.test(q)) continue;
          m.reset(k);
          m.set(q);
          ++moved;
          break;
        }
      }
    }
  }
  auto rep = connect_masks(graph, params, masks, stream.derive(5));
  rep.moved += moved;
  return rep;
}

}  // namespace east
