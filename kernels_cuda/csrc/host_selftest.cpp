// Self-test of the threaded host driver, built with -fsanitize=thread by tests/test_kernels_host.py:
// the items of each phase run on std::threads with a barrier between phases, and the result must equal the
// sequential run bit for bit (every item sums in a fixed order, so the schedule cannot change a value).
//   host_selftest THREADS [--no-diagonal-barrier]
// exits 0 when the threaded and sequential results agree; ThreadSanitizer reports races on stderr.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" int flows_host_solve_f32(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                                    int64_t, int64_t, int64_t, int64_t, uint64_t, int64_t, int64_t);
extern "C" int flows_host_solve_f64(const double*, const double*, double*, int64_t, int64_t, int64_t, int64_t,
                                    int64_t, int64_t, int64_t, int64_t, uint64_t, int64_t, int64_t);

namespace {

// Deterministic values in [-scale, scale) (a small LCG; no dependence on the C++ library's distributions).
template <typename T>
std::vector<T> values(size_t n, uint64_t seed, double scale) {
  std::vector<T> out(n);
  uint64_t state = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  for (auto& v : out) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    v = static_cast<T>(scale * (static_cast<double>(state >> 11) / 9007199254740992.0 * 2.0 - 1.0));
  }
  return out;
}

template <typename T, typename Solve>
int check(Solve solve, int64_t batch, int64_t groups, int64_t cg, int64_t h, int64_t w, int64_t k,
          int64_t fast_limit, int64_t threads, int64_t barrier) {
  const size_t n = static_cast<size_t>(batch * groups * cg * h * w);
  const int64_t taps = k * k;
  std::vector<T> y = values<T>(n, 1, 1.0);
  std::vector<T> folded = values<T>(static_cast<size_t>(groups * taps * cg * cg), 2, 0.05);
  for (int64_t g = 0; g < groups; ++g) {  // centre slot (D^-1)^T: identity plus a lower-triangular part
    T* centre = folded.data() + (g * taps + taps - 1) * cg * cg;
    for (int64_t c = 0; c < cg; ++c) {
      for (int64_t o = 0; o < cg; ++o) centre[c * cg + o] = c == o ? T(1) : (c < o ? centre[c * cg + o] : T(0));
    }
  }
  for (int64_t reverse = 0; reverse < 2; ++reverse) {
    std::vector<T> serial(n), threaded(n);
    if (solve(y.data(), folded.data(), serial.data(), batch, groups, cg, h, w, k, reverse, fast_limit, 7, 1, 1) ||
        solve(y.data(), folded.data(), threaded.data(), batch, groups, cg, h, w, k, reverse, fast_limit, 8, threads,
              barrier)) {
      std::fprintf(stderr, "solve refused the sizes\n");
      return 1;
    }
    for (size_t i = 0; i < n; ++i) {
      if (!(std::isfinite(serial[i]) && std::memcmp(&serial[i], &threaded[i], sizeof(T)) == 0)) {
        std::fprintf(stderr, "mismatch at %zu (k=%lld cg=%lld reverse=%lld): %g vs %g\n", i,
                     static_cast<long long>(k), static_cast<long long>(cg), static_cast<long long>(reverse),
                     static_cast<double>(serial[i]), static_cast<double>(threaded[i]));
        return 1;
      }
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t threads = argc > 1 ? std::atoll(argv[1]) : 4;
  const int64_t barrier = argc > 2 && std::strcmp(argv[2], "--no-diagonal-barrier") == 0 ? 0 : 1;
  int failures = 0;
  // float k=3 cg=4: a compiled specialisation; plane and weights in fast memory.
  failures += check<float>(flows_host_solve_f32, 2, 2, 4, 6, 5, 3, 1 << 20, threads, barrier);
  // double, k=2, cg=3: the generic path, plane in the global workspace (no fast memory).
  failures += check<double>(flows_host_solve_f64, 1, 1, 3, 5, 7, 2, 0, threads, barrier);
  std::printf("host selftest: %s (threads=%lld)\n", failures ? "FAILED" : "ok", static_cast<long long>(threads));
  return failures ? 1 : 0;
}
