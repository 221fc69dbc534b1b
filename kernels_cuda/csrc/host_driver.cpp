// Host driver for the GPU kernel's item functions (tl_solve_core.cuh), compiled with g++ (no GPU, no nvcc).
//
// It schedules the items exactly as tl_solve.cu does, phase by phase, per (image, group) block, but runs each
// phase's items in a random order (seeded), so the CPU tests check that nothing depends on the order of items
// within a phase. Fast memory (the GPU's shared memory) and the global workspace start as NaN, so an item
// that reads what no earlier phase wrote poisons the result. With threads > 1 the items of a phase are
// split over std::threads with a barrier between phases (the ThreadSanitizer build runs this mode).
// Loaded with ctypes as backend "cuda_host" (kernels_cuda/host_backend.py).

#include <algorithm>
#include <barrier>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "tl_solve_core.cuh"

namespace {

using flows::Geometry;
using flows::Plan;

// The phases of one block, in order; each is a list of tagged items in the order this run executes them.
struct Item {
  int kind;  // 0: weight copy, 1: stage, 2: diagonal, 3: store
  int index;
};

std::vector<std::vector<Item>> schedule(const Geometry& g, const Plan& plan, std::mt19937_64& rng) {
  std::vector<std::vector<Item>> phases;
  std::vector<Item> first;
  if (plan.weights_fast) {
    for (int t = 0; t < flows::weight_items(g); ++t) first.push_back({0, t});
  }
  for (int t = 0; t < flows::stage_items(g); ++t) first.push_back({1, t});
  phases.push_back(std::move(first));
  for (int d = 0; d < flows::num_diagonals(g); ++d) {
    std::vector<Item> diagonal;
    for (int t = 0; t < flows::diagonal_items(g, d); ++t) diagonal.push_back({2, t});
    phases.push_back(std::move(diagonal));
  }
  std::vector<Item> last;
  for (int t = 0; t < flows::store_items(g); ++t) last.push_back({3, t});
  phases.push_back(std::move(last));
  for (auto& phase : phases) std::shuffle(phase.begin(), phase.end(), rng);
  return phases;
}

template <typename T, int K, int CG>
struct HostRun {
  static int run(const T* y, const T* folded, T* out, int64_t batch, Geometry g, Plan plan, uint64_t seed,
                 int threads, int diagonal_barrier) {
    const T poison = std::numeric_limits<T>::quiet_NaN();
    const int64_t blocks = batch * g.groups;
    std::vector<T> workspace(plan.plane_fast ? 0 : static_cast<size_t>(blocks * flows::plane_elems(g)), poison);
    std::vector<T> fast(static_cast<size_t>(plan.fast_bytes) / sizeof(T));
    for (int64_t block = 0; block < blocks; ++block) {
      std::fill(fast.begin(), fast.end(), poison);
      std::mt19937_64 rng(seed + static_cast<uint64_t>(block));
      const int group = static_cast<int>(block % g.groups);
      const int64_t offset = block * g.cg * static_cast<int64_t>(g.h) * g.w;
      const T* global_weights = folded + group * flows::weight_elems(g);
      T* buf = plan.plane_fast ? fast.data() : workspace.data() + block * flows::plane_elems(g);
      T* weight_copy = fast.data() + (plan.plane_fast ? flows::plane_elems(g) : 0);
      const T* weights = plan.weights_fast ? weight_copy : global_weights;
      const auto phases = schedule(g, plan, rng);
      auto execute = [&](size_t phase, const Item& item) {
        switch (item.kind) {
          case 0: flows::weight_item(item.index, global_weights, weight_copy); break;
          case 1: flows::stage_item(g, item.index, y + offset, global_weights, buf); break;
          case 2:
            flows::diagonal_item<T, K, CG>(g, static_cast<int>(phase) - 1, item.index, weights, buf);
            break;
          default: flows::store_item(g, item.index, buf, out + offset); break;
        }
      };
      if (threads <= 1) {
        for (size_t p = 0; p < phases.size(); ++p) {
          for (const Item& item : phases[p]) execute(p, item);
        }
        continue;
      }
      // Like a thread block: thread `lane` takes items lane, lane + threads, ...; a barrier ends a phase
      // (between diagonals only when diagonal_barrier is set: the race check turns it off on purpose).
      std::barrier sync(threads);
      std::vector<std::thread> pool;
      for (int lane = 0; lane < threads; ++lane) {
        pool.emplace_back([&, lane] {
          for (size_t p = 0; p < phases.size(); ++p) {
            for (size_t t = lane; t < phases[p].size(); t += threads) execute(p, phases[p][t]);
            const bool between_diagonals = p >= 1 && p + 1 < phases.size() - 1;
            if (diagonal_barrier || !between_diagonals) sync.arrive_and_wait();
          }
        });
      }
      for (auto& thread : pool) thread.join();
    }
    return 0;
  }
};

template <typename T>
int host_solve(const T* y, const T* folded, T* out, int64_t batch, int64_t groups, int64_t cg, int64_t h, int64_t w,
               int64_t k, int64_t reverse, int64_t fast_limit, uint64_t seed, int64_t threads,
               int64_t diagonal_barrier) {
  if (groups > flows::kMaxIndex || cg > flows::kMaxIndex || h > flows::kMaxIndex || w > flows::kMaxIndex ||
      k > flows::kMaxIndex || threads < 0 || threads > 1024) {
    return 1;
  }
  const Geometry g = flows::make_geometry(static_cast<int>(groups), static_cast<int>(cg), static_cast<int>(h),
                                          static_cast<int>(w), static_cast<int>(k), reverse ? 1 : 0);
  if (!flows::geometry_ok(g, batch)) return 1;
  if (batch == 0 || h == 0 || w == 0) return 0;
  const Plan plan = flows::make_plan(g, sizeof(T), fast_limit);
  return flows::dispatch_specialised<T, HostRun>(g.k, g.cg, y, folded, out, batch, g, plan, seed,
                                                 static_cast<int>(threads), static_cast<int>(diagonal_barrier));
}

}  // namespace

extern "C" {

// Same contract as flows_tl_solve_f32/f64 in tl_solve.cu, minus the stream; `fast_limit` is the shared
// memory per block to emulate (decides plane and weight placement exactly as on the GPU). Returns 0, or 1
// for sizes the kernel refuses.
int flows_host_solve_f32(const float* y, const float* folded, float* out, int64_t batch, int64_t groups,
                         int64_t cg, int64_t h, int64_t w, int64_t k, int64_t reverse, int64_t fast_limit,
                         uint64_t seed, int64_t threads, int64_t diagonal_barrier) {
  return host_solve<float>(y, folded, out, batch, groups, cg, h, w, k, reverse, fast_limit, seed, threads,
                           diagonal_barrier);
}

int flows_host_solve_f64(const double* y, const double* folded, double* out, int64_t batch, int64_t groups,
                         int64_t cg, int64_t h, int64_t w, int64_t k, int64_t reverse, int64_t fast_limit,
                         uint64_t seed, int64_t threads, int64_t diagonal_barrier) {
  return host_solve<double>(y, folded, out, batch, groups, cg, h, w, k, reverse, fast_limit, seed, threads,
                            diagonal_barrier);
}

int flows_host_abi_version() { return 2; }

}  // extern "C"
