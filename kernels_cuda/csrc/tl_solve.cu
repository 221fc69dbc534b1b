// Triangular (FInC) convolution solves on the GPU: one kernel launch per call.
//
// The work of every item lives in tl_solve_core.cuh, which the host driver (host_driver.cpp) also runs on
// the CPU in CI; this file only schedules it: one thread block per (image, group) strides its threads over
// the items of each phase (stage, H + W - 1 anti-diagonals, store) with __syncthreads() between phases.
// The block's zero-padded plane lives channels-last in shared memory (raised past 48 KiB with
// cudaFuncSetAttribute) when it fits, else in a global workspace slice; the group's folded weights
// ([tap][c_in][c_out]) follow it in shared memory when there is room, else they are read through L1.
//
// Binding: extern "C" functions on raw pointers and a cudaStream_t, loaded with ctypes
// (kernels_cuda/cuda_backend.py). No torch headers are needed. Sizes arrive as int64 and are validated.

#include <cuda_runtime.h>

#include <cstdint>

#include "tl_solve_core.cuh"

namespace {

using flows::Geometry;
using flows::Plan;

constexpr int kMaxThreads = 256;
constexpr int64_t kDefaultSharedLimit = 48 * 1024;

template <typename T, int K, int CG>
__global__ void __launch_bounds__(kMaxThreads)
    tl_solve_kernel(const T* __restrict__ y, const T* __restrict__ folded, T* __restrict__ out, T* workspace,
                    Geometry g, Plan plan) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  T* fast = reinterpret_cast<T*>(shared_raw);
  const int64_t block = blockIdx.x;  // image * groups + group: its channels are contiguous in NCHW
  const int group = static_cast<int>(block % g.groups);
  const int64_t offset = block * g.cg * static_cast<int64_t>(g.h) * g.w;
  const T* global_weights = folded + group * flows::weight_elems(g);
  T* buf = plan.plane_fast ? fast : workspace + block * flows::plane_elems(g);
  const T* weights = global_weights;
  if (plan.weights_fast) {
    T* copy = fast + (plan.plane_fast ? flows::plane_elems(g) : 0);
    for (int t = threadIdx.x; t < flows::weight_items(g); t += blockDim.x) {
      flows::weight_item(t, global_weights, copy);
    }
    weights = copy;
  }
  // The stage phase reads the centre slot from global memory: the copy above is not complete yet.
  for (int t = threadIdx.x; t < flows::stage_items(g); t += blockDim.x) {
    flows::stage_item(g, t, y + offset, global_weights, buf);
  }
  __syncthreads();
  for (int d = 0; d < flows::num_diagonals(g); ++d) {
    const int items = flows::diagonal_items(g, d);
    for (int t = threadIdx.x; t < items; t += blockDim.x) flows::diagonal_item<T, K, CG>(g, d, t, weights, buf);
    __syncthreads();
  }
  for (int t = threadIdx.x; t < flows::store_items(g); t += blockDim.x) flows::store_item(g, t, buf, out + offset);
}

int threads_for(const Geometry& g) {
  const int widest = (g.h < g.w ? g.h : g.w) * g.cg;  // items on the longest diagonal
  const int rounded = (widest + 31) / 32 * 32;
  return rounded < 32 ? 32 : (rounded > kMaxThreads ? kMaxThreads : rounded);
}

int64_t fast_limit_or_device(int64_t fast_limit) {
  if (fast_limit >= 0) return fast_limit;
  int device = 0;
  int optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    return kDefaultSharedLimit;
  }
  return optin;
}

template <typename T, int K, int CG>
struct Launch {
  static int run(const T* y, const T* folded, T* out, T* workspace, int64_t batch, Geometry g, Plan plan,
                 cudaStream_t stream) {
    auto kernel = tl_solve_kernel<T, K, CG>;
    if (plan.fast_bytes > kDefaultSharedLimit) {
      const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   static_cast<int>(plan.fast_bytes));
      if (err != cudaSuccess) return static_cast<int>(err);
    }
    const unsigned blocks = static_cast<unsigned>(batch * g.groups);
    kernel<<<blocks, threads_for(g), static_cast<size_t>(plan.fast_bytes), stream>>>(y, folded, out, workspace, g,
                                                                                      plan);
    return static_cast<int>(cudaGetLastError());
  }
};

template <typename T>
int solve(const T* y, const T* folded, T* out, T* workspace, int64_t batch, int64_t groups, int64_t cg, int64_t h,
          int64_t w, int64_t k, int64_t reverse, int64_t fast_limit, cudaStream_t stream) {
  if (groups > flows::kMaxIndex || cg > flows::kMaxIndex || h > flows::kMaxIndex || w > flows::kMaxIndex ||
      k > flows::kMaxIndex) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const Geometry g = flows::make_geometry(static_cast<int>(groups), static_cast<int>(cg), static_cast<int>(h),
                                          static_cast<int>(w), static_cast<int>(k), reverse ? 1 : 0);
  if (!flows::geometry_ok(g, batch)) return static_cast<int>(cudaErrorInvalidValue);
  if (batch == 0 || h == 0 || w == 0) return static_cast<int>(cudaSuccess);
  const Plan plan = flows::make_plan(g, sizeof(T), fast_limit_or_device(fast_limit));
  if (!plan.plane_fast && workspace == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  return flows::dispatch_specialised<T, Launch>(g.k, g.cg, y, folded, out, workspace, batch, g, plan, stream);
}

}  // namespace

extern "C" {

// out = A^-1 y (reverse = 0) or the transposed solve (reverse = 1), from folded weights
// (groups, k*k, cg, cg) as kernels_cuda/folding.py lays them out; y, out contiguous NCHW. `workspace` holds
// batch * groups planes when flows_tl_workspace_elems says so (else may be null). fast_limit < 0: the
// device's opt-in shared memory per block.
int flows_tl_solve_f32(const float* y, const float* folded, float* out, float* workspace, int64_t batch,
                       int64_t groups, int64_t cg, int64_t h, int64_t w, int64_t k, int64_t reverse,
                       int64_t fast_limit, cudaStream_t stream) {
  return solve<float>(y, folded, out, workspace, batch, groups, cg, h, w, k, reverse, fast_limit, stream);
}

int flows_tl_solve_f64(const double* y, const double* folded, double* out, double* workspace, int64_t batch,
                       int64_t groups, int64_t cg, int64_t h, int64_t w, int64_t k, int64_t reverse,
                       int64_t fast_limit, cudaStream_t stream) {
  return solve<double>(y, folded, out, workspace, batch, groups, cg, h, w, k, reverse, fast_limit, stream);
}

// Elements of the global workspace a call needs (0 when the plane fits in shared memory).
int64_t flows_tl_workspace_elems(int64_t batch, int64_t groups, int64_t cg, int64_t h, int64_t w, int64_t k,
                                 int64_t elem_bytes, int64_t fast_limit) {
  const Geometry g = flows::make_geometry(static_cast<int>(groups), static_cast<int>(cg), static_cast<int>(h),
                                          static_cast<int>(w), static_cast<int>(k), 0);
  const Plan plan = flows::make_plan(g, elem_bytes, fast_limit_or_device(fast_limit));
  return plan.plane_fast ? 0 : batch * groups * flows::plane_elems(g);
}

const char* flows_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

int flows_abi_version() { return 2; }

}  // extern "C"
