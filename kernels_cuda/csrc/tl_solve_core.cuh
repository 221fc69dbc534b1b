// The per-item work of the triangular (FInC) convolution solve, shared by the GPU kernel (tl_solve.cu) and
// the host driver (host_driver.cpp, compiled with g++ and run in CI on every commit). Nothing here knows
// how items are scheduled: the GPU strides threads over them with __syncthreads() between phases, the host
// driver runs them in a shuffled order (or on std::threads with a barrier), so CI checks that the result
// does not depend on the order of items within a phase, which is what the GPU relies on.
//
// One "block" solves one (image, group). Its phases, each a set of independent items:
//   1. stage:   padded plane cell (vi+k-1, vj+k-1, o) <- (D^-1 y)[o] at virtual pixel (vi, vj), zero in the
//               top/left padding; weights optionally copied to fast memory.
//   2. diagonal d = 0 .. h+w-2: item (pixel q of the diagonal, output o):
//               x[p, o] <- buf[p, o] - sum_{taps != centre} sum_c M[tap][c][o] * x[nbr(p, tap), c]
//   3. store:   out[o, memory pixel] <- buf[...]
// The plane is channels-last and zero-padded on the top and left, so a neighbour read never branches.
// `reverse` runs the same recurrence in the frame flipped in H and W (the transposed solve): only the
// stage and store phases map virtual pixels to memory differently.
//
// Folded weights, layout [group][tap = a*k + b][c_in][c_out] (c_out fastest: consecutive threads of a warp
// read consecutive words, no bank conflicts): off-centre taps hold M = D^-1 W; the centre slot holds
// (D^-1)^T, so D^-1 y is applied in the stage phase and the host needs no extra op per call.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define FLOWS_HD __host__ __device__ __forceinline__
#else
#define FLOWS_HD inline
#endif
#ifdef __CUDA_ARCH__
#define FLOWS_UNROLL _Pragma("unroll")
#else
#define FLOWS_UNROLL
#endif

namespace flows {

// Largest plane, weights and grid the kernels index with 32-bit ints inside a block (checked by callers).
constexpr int64_t kMaxIndex = 2147483647LL;

// Everything an item needs to know about the problem; passed by value to the kernel.
struct Geometry {
  int groups;   // G
  int cg;       // channels per group
  int h, w;     // image size
  int k;        // kernel size
  int reverse;  // 1: the transposed solve (flipped frame)
  int hp, wp;   // padded plane: h + k - 1, w + k - 1
};

FLOWS_HD Geometry make_geometry(int groups, int cg, int h, int w, int k, int reverse) {
  return Geometry{groups, cg, h, w, k, reverse, h + k - 1, w + k - 1};
}

FLOWS_HD int64_t plane_elems(const Geometry& g) { return static_cast<int64_t>(g.hp) * g.wp * g.cg; }
FLOWS_HD int64_t weight_elems(const Geometry& g) { return static_cast<int64_t>(g.k) * g.k * g.cg * g.cg; }
FLOWS_HD int num_diagonals(const Geometry& g) { return g.h + g.w - 1; }

// Virtual pixels (i, d - i) of anti-diagonal d, for i in [first, first + count).
struct DiagonalRange {
  int first;
  int count;
};

FLOWS_HD DiagonalRange diagonal_range(const Geometry& g, int d) {
  const int i0 = d - g.w + 1 > 0 ? d - g.w + 1 : 0;
  const int i1 = d < g.h - 1 ? d : g.h - 1;
  return DiagonalRange{i0, i1 - i0 + 1};
}

// Items per phase (the GPU strides blockDim.x threads over them).
FLOWS_HD int stage_items(const Geometry& g) { return g.hp * g.wp * g.cg; }
FLOWS_HD int diagonal_items(const Geometry& g, int d) { return diagonal_range(g, d).count * g.cg; }
FLOWS_HD int store_items(const Geometry& g) { return g.h * g.w * g.cg; }
FLOWS_HD int weight_items(const Geometry& g) { return static_cast<int>(weight_elems(g)); }

// Memory pixel (row-major index into an h x w plane) of virtual pixel (vi, vj).
FLOWS_HD int memory_pixel(const Geometry& g, int vi, int vj) {
  return g.reverse ? (g.h - 1 - vi) * g.w + (g.w - 1 - vj) : vi * g.w + vj;
}

// Phase 0 (optional): copy one folded weight of this block's group into fast memory.
template <typename T>
FLOWS_HD void weight_item(int t, const T* __restrict__ src, T* __restrict__ dst) {
  dst[t] = src[t];
}

// Phase 1: item t = o * (hp*wp) + cell (consecutive items: consecutive cells of one channel, so a warp's
// global reads of y are consecutive in memory within an image row).
template <typename T>
FLOWS_HD void stage_item(const Geometry& g, int t, const T* __restrict__ y, const T* weights, T* buf) {
  const int cells = g.hp * g.wp;
  const int o = t / cells;
  const int cell = t - o * cells;
  const int r = cell / g.wp;
  const int s = cell - r * g.wp;
  const int vi = r - (g.k - 1);
  const int vj = s - (g.k - 1);
  T value = T(0);
  if (vi >= 0 && vj >= 0) {
    const int64_t plane = static_cast<int64_t>(g.h) * g.w;
    const int pixel = memory_pixel(g, vi, vj);
    const T* centre = weights + static_cast<int64_t>(g.k * g.k - 1) * g.cg * g.cg;  // (D^-1)^T [c][o]
    for (int c = 0; c < g.cg; ++c) value += centre[c * g.cg + o] * y[c * plane + pixel];
  }
  buf[static_cast<int64_t>(cell) * g.cg + o] = value;
}

// Phase 2: item t of diagonal d = (pixel q = t / cg of the diagonal, output o = t % cg). K and CG are
// compile-time specialisations (0 = take the runtime value from g) so the common loops unroll.
template <typename T, int K, int CG>
FLOWS_HD void diagonal_item(const Geometry& g, int d, int t, const T* weights, T* buf) {
  const int k = K > 0 ? K : g.k;
  const int cg = CG > 0 ? CG : g.cg;
  const DiagonalRange range = diagonal_range(g, d);
  const int q = t / cg;
  const int o = t - q * cg;
  const int vi = range.first + q;
  const int vj = d - vi;
  // Padded coordinates: tap (a, b) of virtual pixel (vi, vj) reads padded cell (vi + a, vj + b).
  T acc = T(0);
FLOWS_UNROLL
  for (int a = 0; a < k; ++a) {
    FLOWS_UNROLL
    for (int b = 0; b < k; ++b) {
      if (a == k - 1 && b == k - 1) continue;  // the centre was folded into the stage phase
      const T* x_nbr = buf + (static_cast<int64_t>(vi + a) * g.wp + (vj + b)) * cg;
      const T* m = weights + (static_cast<int64_t>(a * k + b) * cg) * cg + o;
      FLOWS_UNROLL
      for (int c = 0; c < cg; ++c) acc += m[c * cg] * x_nbr[c];
    }
  }
  T* here = buf + (static_cast<int64_t>(vi + k - 1) * g.wp + (vj + k - 1)) * cg + o;
  *here = *here - acc;
}

// Phase 3: item t = o * (h*w) + memory pixel (consecutive items: consecutive output addresses).
template <typename T>
FLOWS_HD void store_item(const Geometry& g, int t, const T* buf, T* __restrict__ out) {
  const int plane = g.h * g.w;
  const int o = t / plane;
  const int pixel = t - o * plane;
  int mi = pixel / g.w;
  int mj = pixel - mi * g.w;
  if (g.reverse) {
    mi = g.h - 1 - mi;
    mj = g.w - 1 - mj;
  }
  const int64_t cell = static_cast<int64_t>(mi + g.k - 1) * g.wp + (mj + g.k - 1);
  out[static_cast<int64_t>(o) * plane + pixel] = buf[cell * g.cg + o];
}

// Where a block keeps its plane and weights: fast memory (GPU shared memory) when they fit in
// `fast_limit` bytes (the plane first: it is written as well as read), else a global workspace slice
// (plane) or the folded tensor itself (weights).
struct Plan {
  bool plane_fast;
  bool weights_fast;
  int64_t fast_bytes;  // dynamic shared memory per block
};

FLOWS_HD Plan make_plan(const Geometry& g, int64_t elem_bytes, int64_t fast_limit) {
  const int64_t plane = plane_elems(g) * elem_bytes;
  const int64_t weights = weight_elems(g) * elem_bytes;
  Plan p{false, false, 0};
  if (plane <= fast_limit) {
    p.plane_fast = true;
    p.fast_bytes = plane;
  }
  if (p.fast_bytes + weights <= fast_limit) {
    p.weights_fast = true;
    p.fast_bytes += weights;
  }
  return p;
}

// 1 when the sizes fit the 32-bit in-block indexing (callers validate before launching).
FLOWS_HD int geometry_ok(const Geometry& g, int64_t batch) {
  if (batch < 0 || g.groups < 1 || g.cg < 1 || g.h < 0 || g.w < 0 || g.k < 1) return 0;
  if (plane_elems(g) > kMaxIndex || weight_elems(g) > kMaxIndex) return 0;
  return batch * g.groups <= kMaxIndex ? 1 : 0;
}

// Calls Fn<K, CG>::run(args...) for the specialisations we compile (k = 3 with common group widths, float
// only), else Fn<0, 0> (runtime sizes). The GPU launcher and the host driver share this table, so the CPU
// tests run every specialisation the GPU runs.
template <typename T, template <typename, int, int> class Fn, typename... Args>
int dispatch_specialised(int k, int cg, Args... args) {
  if constexpr (sizeof(T) == 4) {
    if (k == 3) {
      switch (cg) {
        case 4: return Fn<T, 3, 4>::run(args...);
        case 8: return Fn<T, 3, 8>::run(args...);
        case 12: return Fn<T, 3, 12>::run(args...);
        case 16: return Fn<T, 3, 16>::run(args...);
        case 24: return Fn<T, 3, 24>::run(args...);
        case 48: return Fn<T, 3, 48>::run(args...);
        default: break;
      }
    }
  }
  return Fn<T, 0, 0>::run(args...);
}

}  // namespace flows
