// Compact layers (east/sparse/compact_layer.hpp) driven by the controller: training on compact
// weights equals masked dense training bit for bit when both use the same sums, through mask
// updates, micro-batches and checkpoints; bad input is rejected.
#include <east/east.hpp>
#include <east/sparse/compact_layer.hpp>

#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

namespace {

using east::sparse::CompactConv2d;
using east::sparse::CompactLinear;
using east::sparse::Layout;

std::vector<float> randn(std::size_t n, unsigned seed, float sd = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// Plain dense references, summing in the order the compact kernels do (terms of inactive
// weights are exact zeros, which change no sum).
void dense_forward(const std::vector<float>& W, const float* x, std::size_t batch, std::size_t in,
                   std::size_t out, float* y) {
  for (std::size_t n = 0; n < batch; ++n)
    for (std::size_t o = 0; o < out; ++o) {
      float acc = 0.0f;
      for (std::size_t i = 0; i < in; ++i) acc += W[o * in + i] * x[n * in + i];
      y[n * out + o] = acc;
    }
}
void dense_grad_input(const std::vector<float>& W, const float* dy, std::size_t batch, std::size_t in,
                      std::size_t out, float* dx) {
  for (std::size_t n = 0; n < batch; ++n)
    for (std::size_t i = 0; i < in; ++i) {
      float acc = 0.0f;
      for (std::size_t o = 0; o < out; ++o) acc += W[o * in + i] * dy[n * out + o];
      dx[n * in + i] = acc;
    }
}

// A 2-layer MLP (in → hidden → classes, ReLU, mean squared error against one-hot targets),
// trained either on dense masked tensors or on compact layers.
struct Mlp {
  static constexpr std::size_t in = 24, hidden = 20, classes = 6, batch = 8;
  std::vector<float> W1, W2, G1, G2, M1, M2;
  Mlp() : W1(randn(hidden * in, 1, 0.3f)), W2(randn(classes * hidden, 2, 0.3f)) {
    G1.assign(W1.size(), 0.0f), G2.assign(W2.size(), 0.0f);
    M1.assign(W1.size(), 0.0f), M2.assign(W2.size(), 0.0f);
  }
  east::ParameterSet params(bool dense_state) {
    east::ParameterSet p;
    p.add("fc1", W1.data(), {static_cast<std::int64_t>(hidden), static_cast<std::int64_t>(in)}, G1.data());
    p.add("fc2", W2.data(), {static_cast<std::int64_t>(classes), static_cast<std::int64_t>(hidden)}, G2.data());
    if (dense_state) p.add_state("fc1", M1.data()), p.add_state("fc2", M2.data());
    return p;
  }
};

struct Batch {
  std::vector<float> x;
  std::vector<int> y;
};
Batch make_batch(unsigned seed) {
  Batch b{randn(Mlp::batch * Mlp::in, 100 + seed), std::vector<int>(Mlp::batch)};
  for (std::size_t n = 0; n < Mlp::batch; ++n) b.y[n] = static_cast<int>((seed * 7 + n) % Mlp::classes);
  return b;
}
// d(MSE)/d(output), and the ReLU's backward.
std::vector<float> output_grad(const std::vector<float>& out, const Batch& b) {
  std::vector<float> d(out.size());
  for (std::size_t n = 0; n < Mlp::batch; ++n)
    for (std::size_t c = 0; c < Mlp::classes; ++c)
      d[n * Mlp::classes + c] = 2.0f * (out[n * Mlp::classes + c] - (b.y[n] == static_cast<int>(c) ? 1.0f : 0.0f)) /
                                static_cast<float>(Mlp::batch);
  return d;
}

constexpr east::kernels::SgdParams kSgd{0.01f, 0.9f, 0.0f, 1e-3f, true};

// One masked dense step (backward into G1/G2, dense RigL gradients), then the controller.
template <class Ctl>
void dense_step(Mlp& m, Ctl& ctl, std::int64_t step, const std::vector<Batch>& micro) {
  std::fill(m.G1.begin(), m.G1.end(), 0.0f);
  std::fill(m.G2.begin(), m.G2.end(), 0.0f);
  for (const auto& b : micro) {
    std::vector<float> h(Mlp::batch * Mlp::hidden), out(Mlp::batch * Mlp::classes);
    dense_forward(m.W1, b.x.data(), Mlp::batch, Mlp::in, Mlp::hidden, h.data());
    for (auto& v : h) v = std::max(v, 0.0f);
    dense_forward(m.W2, h.data(), Mlp::batch, Mlp::hidden, Mlp::classes, out.data());
    const auto dout = output_grad(out, b);
    std::vector<float> dh(h.size()), g1(m.G1.size()), g2(m.G2.size());
    east::sparse::linear_grad_weight_rows(h.data(), dout.data(), Mlp::batch, Mlp::hidden, Mlp::classes, 0,
                                          Mlp::classes, g2.data());
    dense_grad_input(m.W2, dout.data(), Mlp::batch, Mlp::hidden, Mlp::classes, dh.data());
    for (std::size_t i = 0; i < dh.size(); ++i) dh[i] = h[i] > 0.0f ? dh[i] : 0.0f;
    east::sparse::linear_grad_weight_rows(b.x.data(), dh.data(), Mlp::batch, Mlp::in, Mlp::hidden, 0, Mlp::hidden,
                                          g1.data());
    for (std::size_t i = 0; i < g1.size(); ++i) m.G1[i] += g1[i];
    for (std::size_t i = 0; i < g2.size(); ++i) m.G2[i] += g2[i];
  }
  ctl.before_optimizer_step(step);
  east::sparse::sgd_step(m.W1.data(), m.G1.data(), m.M1.data(), m.W1.size(), kSgd);
  east::sparse::sgd_step(m.W2.data(), m.G2.data(), m.M2.data(), m.W2.size(), kSgd);
  ctl.after_optimizer_step(step);
}

template <class Ctl>
void compact_step(CompactLinear& fc1, CompactLinear& fc2, Ctl& ctl, std::int64_t step,
                  const std::vector<Batch>& micro) {
  for (std::size_t k = 0; k < micro.size(); ++k) {
    const auto& b = micro[k];
    std::vector<float> h(Mlp::batch * Mlp::hidden), out(Mlp::batch * Mlp::classes);
    fc1.forward(b.x.data(), Mlp::batch, h.data());
    for (auto& v : h) v = std::max(v, 0.0f);
    fc2.forward(h.data(), Mlp::batch, out.data());
    const auto dout = output_grad(out, b);
    std::vector<float> dh(h.size());
    fc2.backward(h.data(), dout.data(), Mlp::batch, dh.data(), k > 0);
    for (std::size_t i = 0; i < dh.size(); ++i) dh[i] = h[i] > 0.0f ? dh[i] : 0.0f;
    fc1.backward(b.x.data(), dh.data(), Mlp::batch, nullptr, k > 0);
  }
  ctl.before_optimizer_step(step);
  fc1.sgd_step(kSgd);
  fc2.sgd_step(kSgd);
  ctl.after_optimizer_step(step);
}

}  // namespace

TEST_CASE("compact linear layers train exactly like masked dense ones through RigL updates", "[compact]") {
  for (const std::size_t micro : {std::size_t{1}, std::size_t{2}}) {
    CAPTURE(micro);
    Mlp dense, compact;
    const east::DstConfig cfg{0.15, 3, 40, 0.4};
    auto ctl_d = east::make_rigl(dense.params(true), cfg, {7});
    auto pc = compact.params(false);
    CompactLinear fc1(pc, "fc1"), fc2(pc, "fc2");
    auto ctl_c = east::make_rigl(pc, cfg, {7});
    REQUIRE(ctl_c.digest() == ctl_d.digest());
    REQUIRE(fc1.detached());
    REQUIRE(fc1.nnz() == ctl_c.mask("fc1").count());
    std::uint64_t updates = 0;
    for (std::int64_t step = 0; step < 30; ++step) {
      std::vector<Batch> b;
      for (std::size_t k = 0; k < micro; ++k) b.push_back(make_batch(static_cast<unsigned>(step * 2 + k)));
      dense_step(dense, ctl_d, step, b);
      compact_step(fc1, fc2, ctl_c, step, b);
      REQUIRE(ctl_c.digest() == ctl_d.digest());
      updates += ctl_c.is_update_step(step);
    }
    CHECK(ctl_c.updates() == updates);
    CHECK(updates >= 8);
    ctl_c.sync_dense_views();
    CHECK(compact.W1 == dense.W1);
    CHECK(compact.W2 == dense.W2);
    // Momentum of the compact layer equals the masked dense buffer at the active positions.
    std::vector<float> m1(dense.M1.size(), 0.0f);
    fc1.weight().scatter_array(fc1.state(0).data(), m1.data());
    CHECK(m1 == dense.M1);
    CHECK(fc1.nnz() + fc2.nnz() == ctl_c.nonzeros());
  }
}

TEST_CASE("compact conv layers train exactly like masked dense ones", "[compact]") {
  // conv 2→4 (3×3, stride 1, pad 1) on 5×5 images, then a linear layer over the 4·5·5 features.
  const std::size_t B = 3, C = 2, K = 4, H = 5, F = K * H * H, O = 3;
  std::vector<float> Wc_d = randn(K * C * 9, 11, 0.4f), Wf_d = randn(O * F, 12, 0.1f);
  std::vector<float> Wc_c = Wc_d, Wf_c = Wf_d, Gc(Wc_d.size()), Gf(Wf_d.size()), Mc(Wc_d.size()), Mf(Wf_d.size());
  east::ParameterSet pd, pc;
  pd.add("conv", Wc_d.data(), {4, 2, 3, 3}, Gc.data());
  pd.add("fc", Wf_d.data(), {3, 100}, Gf.data());
  pd.add_state("conv", Mc.data());
  pd.add_state("fc", Mf.data());
  pc.add("conv", Wc_c.data(), {4, 2, 3, 3});
  pc.add("fc", Wf_c.data(), {3, 100});
  CompactConv2d conv(pc, "conv", 1, 1);
  CompactLinear fc(pc, "fc");
  const east::DstConfig cfg{0.3, 2, 20, 0.5};
  auto ctl_d = east::make_rigl(pd, cfg, {3});
  auto ctl_c = east::make_rigl(pc, cfg, {3});
  const auto g = conv.geometry(B, H, H);
  for (std::int64_t step = 0; step < 16; ++step) {
    const auto x = randn(B * C * H * H, 500 + static_cast<unsigned>(step));
    const auto target = randn(B * O, 900 + static_cast<unsigned>(step));
    auto run = [&](auto&& conv_fwd, auto&& fc_fwd, auto&& fc_bwd, auto&& conv_bwd) {
      std::vector<float> a(B * F), out(B * O);
      conv_fwd(x.data(), a.data());
      for (auto& v : a) v = std::max(v, 0.0f);
      fc_fwd(a.data(), out.data());
      std::vector<float> dout(out.size()), da(a.size());
      for (std::size_t i = 0; i < out.size(); ++i) dout[i] = out[i] - target[i];
      fc_bwd(a.data(), dout.data(), da.data());
      for (std::size_t i = 0; i < da.size(); ++i) da[i] = a[i] > 0.0f ? da[i] : 0.0f;
      conv_bwd(x.data(), da.data());
    };
    // Masked dense: the same kernels over an all-active index of the dense (zero-filled) weight.
    const east::BitMask all_c(Wc_d.size(), true), all_f(Wf_d.size(), true);
    run(
        [&](const float* in, float* out) {
          const auto w = east::sparse::CsrWeight(Wc_d.data(), all_c, K, C * 9, 9);
          east::sparse::conv2d_forward(g, in, w, out);
        },
        [&](const float* in, float* out) { dense_forward(Wf_d, in, B, F, O, out); },
        [&](const float* in, const float* dy, float* dx) {
          dense_grad_input(Wf_d, dy, B, F, O, dx);
          east::sparse::linear_grad_weight_rows(in, dy, B, F, O, 0, O, Gf.data());
        },
        [&](const float* in, const float* dy) {
          const auto w = east::sparse::CsrWeight(Wc_d.data(), all_c, K, C * 9, 9);
          east::sparse::conv2d_grad_weight(g, in, dy, w, Gc.data());
        });
    ctl_d.before_optimizer_step(step);
    east::sparse::sgd_step(Wc_d.data(), Gc.data(), Mc.data(), Wc_d.size(), kSgd);
    east::sparse::sgd_step(Wf_d.data(), Gf.data(), Mf.data(), Wf_d.size(), kSgd);
    ctl_d.after_optimizer_step(step);

    run([&](const float* in, float* out) { conv.forward(in, B, H, H, out); },
        [&](const float* in, float* out) { fc.forward(in, B, out); },
        [&](const float* in, const float* dy, float* dx) { fc.backward(in, dy, B, dx); },
        [&](const float* in, const float* dy) { conv.backward(in, dy, B, H, H, nullptr); });
    ctl_c.before_optimizer_step(step);
    conv.sgd_step(kSgd);
    fc.sgd_step(kSgd);
    ctl_c.after_optimizer_step(step);
    REQUIRE(ctl_c.digest() == ctl_d.digest());
  }
  CHECK(ctl_c.updates() >= 5);
  ctl_c.sync_dense_views();
  CHECK(Wc_c == Wc_d);
  CHECK(Wf_c == Wf_d);
}

TEST_CASE("compact linear kernels give identical results in every layout and path", "[compact]") {
  const std::size_t batch = 13, in = 37, out = 29;
  const auto W = randn(out * in, 5), x = randn(batch * in, 6), dy = randn(batch * out, 7), bias = randn(out, 8);
  bool paths[2] = {false, false};  // batch-major: transposed, direct
  for (const double density : {0.001, 0.01, 0.05, 0.3, 1.0}) {  // very few nonzeros gather directly
    CAPTURE(density);
    east::BitMask mask(out * in);
    std::mt19937 rng(static_cast<unsigned>(density * 1000));
    for (std::size_t i = 0; i < mask.size(); ++i) mask.set(i, std::uniform_real_distribution<double>(0, 1)(rng) < density);
    if (density < 0.005)  // 3 nonzeros: 3 · 16 < 29 + 37, the direct path
      mask = east::BitMask(out * in), mask.set(5), mask.set(400), mask.set(1000);
    std::vector<float> Wm = W;
    mask.apply(Wm.data());
    const east::sparse::CsrWeight wt(W.data(), mask, out, in);
    paths[east::sparse::detail::gather_directly(wt)] = true;
    std::vector<float> y_ref(batch * out), dx_ref(batch * in), gw_ref(out * in);
    dense_forward(Wm, x.data(), batch, in, out, y_ref.data());
    dense_grad_input(Wm, dy.data(), batch, in, out, dx_ref.data());
    east::sparse::linear_grad_weight_rows(x.data(), dy.data(), batch, in, out, 0, out, gw_ref.data());
    // Batch-major.
    std::vector<float> y(batch * out), dx(batch * in), gw(wt.nnz());
    east::sparse::linear_forward(x.data(), batch, wt, y.data());
    east::sparse::linear_grad_input(dy.data(), batch, wt, dx.data());
    east::sparse::linear_grad_weight(x.data(), dy.data(), batch, wt, gw.data());
    CHECK(y == y_ref);
    CHECK(dx == dx_ref);
    std::vector<float> gw_active(wt.nnz());
    wt.gather_array(gw_ref.data(), gw_active.data());
    CHECK(gw == gw_active);
    // Feature-major: transposed inputs, transposed outputs, the same numbers.
    std::vector<float> xt(in * batch), dyt(out * batch), yt(out * batch), dxt(in * batch), gwf(wt.nnz());
    east::sparse::detail::transpose(x.data(), batch, in, xt.data());
    east::sparse::detail::transpose(dy.data(), batch, out, dyt.data());
    east::sparse::linear_forward(xt.data(), batch, wt, yt.data(), nullptr, Layout::feature_major);
    east::sparse::linear_grad_input(dyt.data(), batch, wt, dxt.data(), Layout::feature_major);
    east::sparse::linear_grad_weight(xt.data(), dyt.data(), batch, wt, gwf.data(), Layout::feature_major);
    std::vector<float> back(batch * out);
    east::sparse::detail::transpose(yt.data(), out, batch, back.data());
    CHECK(back == y_ref);
    back.resize(batch * in);
    east::sparse::detail::transpose(dxt.data(), in, batch, back.data());
    CHECK(back == dx_ref);
    CHECK(gwf == gw_active);
    // Bias.
    std::vector<float> yb(batch * out);
    east::sparse::linear_forward(x.data(), batch, wt, yb.data(), bias.data());
    for (std::size_t n = 0; n < batch; ++n)
      for (std::size_t o = 0; o < out; ++o) {
        float acc = bias[o];
        for (std::size_t i = 0; i < in; ++i) acc += Wm[o * in + i] * x[n * in + i];
        REQUIRE(yb[n * out + o] == acc);
      }
  }
  CHECK(paths[0]);
  CHECK(paths[1]);
}

TEST_CASE("a feature-major compact MLP equals the batch-major one", "[compact]") {
  Mlp a, b;
  const east::DstConfig cfg{0.2, 4, 30, 0.3};
  auto pa = a.params(false), pb = b.params(false);
  CompactLinear a1(pa, "fc1"), a2(pa, "fc2");
  CompactLinear b1(pb, "fc1", Layout::feature_major), b2(pb, "fc2", Layout::feature_major);
  auto ca = east::make_rigl(pa, cfg, {1});
  auto cb = east::make_rigl(pb, cfg, {1});
  for (std::int64_t step = 0; step < 12; ++step) {
    const auto batch = make_batch(static_cast<unsigned>(step));
    compact_step(a1, a2, ca, step, {batch});
    // The same step with every activation transposed.
    std::vector<float> xt(Mlp::in * Mlp::batch), h(Mlp::hidden * Mlp::batch), out(Mlp::classes * Mlp::batch);
    east::sparse::detail::transpose(batch.x.data(), Mlp::batch, Mlp::in, xt.data());
    b1.forward(xt.data(), Mlp::batch, h.data());
    for (auto& v : h) v = std::max(v, 0.0f);
    b2.forward(h.data(), Mlp::batch, out.data());
    std::vector<float> out_bm(out.size());
    east::sparse::detail::transpose(out.data(), Mlp::classes, Mlp::batch, out_bm.data());
    const auto d_bm = output_grad(out_bm, batch);
    std::vector<float> dout(d_bm.size()), dh(h.size());
    east::sparse::detail::transpose(d_bm.data(), Mlp::batch, Mlp::classes, dout.data());
    b2.backward(h.data(), dout.data(), Mlp::batch, dh.data());
    for (std::size_t i = 0; i < dh.size(); ++i) dh[i] = h[i] > 0.0f ? dh[i] : 0.0f;
    b1.backward(xt.data(), dh.data(), Mlp::batch, nullptr);
    cb.before_optimizer_step(step);
    b1.sgd_step(kSgd);
    b2.sgd_step(kSgd);
    cb.after_optimizer_step(step);
    REQUIRE(ca.digest() == cb.digest());
  }
  ca.sync_dense_views();
  cb.sync_dense_views();
  CHECK(a.W1 == b.W1);
  CHECK(a.W2 == b.W2);
}

TEST_CASE("compact layers survive a checkpoint round trip bit for bit", "[compact]") {
  const east::DstConfig cfg{0.2, 3, 30, 0.3};
  Mlp ref;
  auto pr = ref.params(false);
  CompactLinear r1(pr, "fc1"), r2(pr, "fc2");
  auto cr = east::make_rigl(pr, cfg, {4});
  for (std::int64_t s = 0; s < 20; ++s) compact_step(r1, r2, cr, s, {make_batch(static_cast<unsigned>(s))});

  Mlp first;
  auto p1 = first.params(false);
  CompactLinear f1(p1, "fc1"), f2(p1, "fc2");
  auto c1 = east::make_rigl(p1, cfg, {4});
  for (std::int64_t s = 0; s < 8; ++s) compact_step(f1, f2, c1, s, {make_batch(static_cast<unsigned>(s))});
  c1.sync_dense_views();
  const auto state = c1.state();
  const std::vector<float> W1 = first.W1, W2 = first.W2;
  const std::string s1 = f1.save_state(), s2 = f2.save_state();

  Mlp second;  // a fresh process: other initial weights, masks from the checkpoint
  for (auto& v : second.W1) v *= 3.0f;
  auto p2 = second.params(false);
  CompactLinear g1(p2, "fc1"), g2(p2, "fc2");
  auto c2 = east::make_rigl(p2, cfg, {4});
  CHECK_THROWS_AS(g1.load_state(s1), east::InvalidArgument);  // saved under another mask
  c2.restore(state);
  second.W1 = W1, second.W2 = W2;  // load the weights into the dense views …
  c2.refresh_from_dense();          // … and rebuild the compact layers from them
  g1.load_state(s1);
  g2.load_state(s2);
  for (std::int64_t s = 8; s < 20; ++s) compact_step(g1, g2, c2, s, {make_batch(static_cast<unsigned>(s))});
  CHECK(c2.digest() == cr.digest());
  c2.sync_dense_views();
  cr.sync_dense_views();
  CHECK(second.W1 == ref.W1);
  CHECK(second.W2 == ref.W2);
}

TEST_CASE("compact layers reject bad input with clear errors", "[compact]") {
  std::vector<float> w(12, 1.0f), c(2 * 3 * 3 * 3, 1.0f), v(5, 1.0f);
  east::ParameterSet p;
  p.add("fc", w.data(), {3, 4});
  p.add("conv", c.data(), {2, 3, 3, 3});
  p.add("vec", v.data(), {5});
  CHECK_THROWS_WITH(CompactLinear(p, "nope"), Catch::Contains("unknown layer name 'nope'"));
  CHECK_THROWS_WITH(CompactLinear(p, "conv"), Catch::Contains("valid: 2"));
  CHECK_THROWS_WITH(CompactConv2d(p, "fc"), Catch::Contains("valid: 4"));
  CHECK(p.at("conv").storage == nullptr);  // a rejected layer is left as it was
  CHECK_THROWS_WITH(CompactLinear(p, "vec"), Catch::Contains("dimensions"));
  CHECK_THROWS_WITH(CompactConv2d(p, "conv", 0, 1), Catch::Contains("stride 0x0"));
  p.at("fc").column_major = true;
  CHECK_THROWS_WITH(CompactLinear(p, "fc"), Catch::Contains("column-major"));
  p.at("fc").column_major = false;
  CompactLinear fc(p, "fc");
  CHECK_THROWS_WITH(CompactLinear(p, "fc"), Catch::Contains("already has a storage"));
  std::vector<float> x(4), y(3);
  CHECK_THROWS_WITH(fc.forward(x.data(), 1, y.data()), Catch::Contains("no mask yet"));
  // SNFS observes every layer's dense gradient every step: not on compact storage.
  CHECK_THROWS_WITH(east::make_snfs(p, east::DstConfig{0.5, 2, 10}), Catch::Contains("observes the dense"));
}

TEST_CASE("RigL's dense gradient on compact layers needs the step's backward", "[compact]") {
  Mlp m;
  auto p = m.params(false);
  CompactLinear fc1(p, "fc1"), fc2(p, "fc2");
  auto ctl = east::make_rigl(p, east::DstConfig{0.2, 1, 10, 0.3}, {1});  // every step from step 1 updates
  compact_step(fc1, fc2, ctl, 0, {make_batch(0)});
  ctl.before_optimizer_step(1);
  const auto digest = ctl.digest();
  CHECK_THROWS_WITH(ctl.after_optimizer_step(1), Catch::Contains("ran no backward"));
  CHECK(ctl.digest() == digest);  // nothing changed
}

TEST_CASE("SET on compact layers keeps nothing for a dense gradient", "[compact]") {
  Mlp m;
  auto p = m.params(false);
  CompactLinear fc1(p, "fc1"), fc2(p, "fc2");
  auto ctl = east::make_set(p, east::DstConfig{0.2, 2, 20, 0.3}, {1});
  for (std::int64_t s = 0; s < 6; ++s) {
    if (ctl.is_update_step(s)) CHECK_FALSE(fc1.capturing());
    compact_step(fc1, fc2, ctl, s, {make_batch(static_cast<unsigned>(s))});
  }
  CHECK(ctl.updates() == 2);
  CHECK(fc1.nnz() == ctl.mask("fc1").count());
}

TEST_CASE("fan-in scaling rescales each unit's surviving weights by sqrt(fan_in / active)", "[init]") {
  // Hand-worked: a 2×4 layer of ones; row 0 keeps 1 of 4 weights (×2), row 1 keeps 4 (×1).
  std::vector<float> w(8, 1.0f);
  east::ParameterSet p;
  p.add("l", w.data(), {2, 4});
  east::BitMask mask(8);
  mask.set(2);
  for (std::size_t i = 4; i < 8; ++i) mask.set(i);
  mask.apply(w.data());
  east::scale_to_active_fan_in(p[0], mask);
  CHECK(w == std::vector<float>{0, 0, 2, 0, 1, 1, 1, 1});
  // Column-major storage (Eigen's default): unit r is elements r, r + rows, …
  std::vector<float> cm(8, 1.0f);
  east::ParameterSet q;
  q.add("l", cm.data(), {2, 4}).column_major = true;
  east::BitMask m2(8);
  m2.set(0), m2.set(2);  // row 0 keeps columns 0 and 1 (elements 0, 2): × sqrt(2)
  m2.set(1);             // row 1 keeps column 0 (element 1): × 2
  m2.apply(cm.data());
  east::scale_to_active_fan_in(q[0], m2);
  CHECK(cm[0] == Approx(std::sqrt(2.0f)));
  CHECK(cm[2] == Approx(std::sqrt(2.0f)));
  CHECK(cm[1] == 2.0f);
  CHECK(cm[3] == 0.0f);
}

TEST_CASE("the controller scales initial weights by active fan-in unless told not to", "[init]") {
  std::vector<float> a(64 * 32, 1.0f), b(64 * 32, 1.0f);
  east::ParameterSet pa, pb;
  pa.add("l", a.data(), {64, 32});
  pb.add("l", b.data(), {64, 32});
  east::ControllerOptions none;
  none.init = east::InitScaling::none;
  auto ca = east::make_static(pa, 0.25);
  auto cb = east::make_static(pb, 0.25, none);
  REQUIRE(ca.mask("l") == cb.mask("l"));
  for (std::size_t r = 0; r < 64; ++r) {
    std::size_t active = 0;
    for (std::size_t c = 0; c < 32; ++c) active += ca.mask("l").test(r * 32 + c);
    for (std::size_t c = 0; c < 32; ++c) {
      const std::size_t i = r * 32 + c;
      if (!ca.mask("l").test(i)) continue;
      REQUIRE(b[i] == 1.0f);
      REQUIRE(a[i] == Approx(std::sqrt(32.0 / static_cast<double>(active))));
    }
  }
}
