#include <catch2/catch.hpp>
#include <east/east.hpp>

#include <random>

using east::BitMask;

TEST_CASE("BitMask keeps an exact count through set, reset and fill", "[masks]") {
  BitMask m(130);
  CHECK(m.count() == 0);
  m.set(0);
  m.set(64);
  m.set(129);
  m.set(129);  // idempotent
  CHECK(m.count() == 3);
  m.reset(64);
  m.reset(64);
  CHECK(m.count() == 2);
  CHECK(m.test(0));
  CHECK_FALSE(m.test(64));
  CHECK(m.test(129));
  m.fill(true);
  CHECK(m.count() == 130);
  // Bits beyond size stay zero, so popcount over words equals the count.
  CHECK((m.words()[2] >> 2) == 0);
  m.fill(false);
  CHECK(m.count() == 0);
}

TEST_CASE("BitMask iterates active and inactive positions in order", "[masks]") {
  BitMask m(70);
  for (std::size_t i : {1u, 5u, 63u, 64u, 69u}) m.set(i);
  std::vector<std::size_t> act, inact;
  m.for_each_active([&](std::size_t i) { act.push_back(i); });
  m.for_each_inactive([&](std::size_t i) { inact.push_back(i); });
  CHECK(act == std::vector<std::size_t>{1, 5, 63, 64, 69});
  CHECK(inact.size() == 65);
  CHECK(inact.front() == 0);
  CHECK(inact.back() == 68);
}

TEST_CASE("BitMask applies to weights, gradients and buffers", "[masks]") {
  BitMask m(5);
  m.set(1);
  m.set(3);
  std::vector<float> w{1, 2, 3, 4, 5};
  m.apply(w.data());
  CHECK(w == std::vector<float>{0, 2, 0, 4, 0});
}

TEST_CASE("BitMask converts to and from byte and float masks", "[masks]") {
  std::mt19937 rng(3);
  BitMask m(1000);
  for (std::size_t i = 0; i < 1000; ++i)
    if (rng() % 3 == 0) m.set(i);
  const auto bytes = m.to_bytes();
  const auto floats = m.to_floats();
  CHECK(BitMask::from_bytes(bytes.data(), bytes.size()) == m);
  CHECK(BitMask::from_floats(floats.data(), floats.size()) == m);
  CHECK(BitMask::from_floats(floats.data(), floats.size()).count() == m.count());
  std::vector<float> bad{0.f, std::nanf("")};
  CHECK_THROWS_AS(BitMask::from_floats(bad.data(), 2), east::InvalidArgument);
}

TEST_CASE("BitMask digest changes with any bit and matches for equal masks", "[masks]") {
  BitMask a(300), b(300);
  a.set(7);
  b.set(7);
  CHECK(a.digest() == b.digest());
  b.set(299);
  CHECK(a.digest() != b.digest());
  BitMask c(301);
  c.set(7);
  CHECK(a.digest() != c.digest());  // size is part of the digest
}
