// One main for every test program: seeds and reports the seed so failures can be replayed.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

int main(int argc, char* argv[]) {
  Catch::Session session;
  if (int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  // Tests use their own fixed seeds; Catch's --rng-seed only affects test order here.
  return session.run();
}
