// Triangular (FInC) convolution solves, one kernel launch per call.
//
// Solves x_p = rhs_p - sum_{taps != centre} M[o, c, a, b] * x[c, nbr(p, a, b)] for every pixel p of every
// (image, group), where rhs = D^-1 y and M = D^-1 W were folded on the host (kernels_cuda/reference.py,
// fold_centre): after folding, all output channels of a pixel are independent, so no substitution over
// channels is left. The wavefront: pixels on one anti-diagonal depend only on earlier diagonals.
//
// Mapping: one thread block per (image, group). The block walks the H + W - 1 anti-diagonals in order
// with __syncthreads() between them; inside a diagonal, threads cover (pixel, output channel) pairs.
// The folded kernel M of the block's group sits in shared memory when it fits (else it is read from
// global memory through L1). `reverse` runs the same recurrence in the frame flipped in H and W, which
// is how the transposed solve (A^T, last diagonal first) is done without copying flipped tensors.
//
// Binding: extern "C" launchers on raw pointers and a cudaStream_t, loaded with ctypes
// (kernels_cuda/cuda_backend.py). No torch headers are needed.

#include <cuda_runtime.h>

#include <cstdint>

namespace {

constexpr int kMaxKernel = 11;
constexpr int kThreads = 256;
constexpr size_t kMaxStaticShared = 48 * 1024;

template <typename T, bool kSharedWeights>
__global__ void __launch_bounds__(kThreads)
    tl_solve_kernel(const T* __restrict__ rhs, const T* __restrict__ folded, T* x, int groups, int cg, int h,
                    int w, int k, int reverse) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  const int block = blockIdx.x;  // image * groups + group
  const int group = block % groups;
  const int64_t plane = static_cast<int64_t>(h) * w;
  const int kk = k * k;
  const int64_t weight_size = static_cast<int64_t>(cg) * cg * kk;
  const T* r = rhs + static_cast<int64_t>(block) * cg * plane;
  T* out = x + static_cast<int64_t>(block) * cg * plane;
  const T* weights = folded + static_cast<int64_t>(group) * weight_size;
  if (kSharedWeights) {
    T* cached = reinterpret_cast<T*>(shared_raw);
    for (int64_t t = threadIdx.x; t < weight_size; t += blockDim.x) cached[t] = weights[t];
    __syncthreads();
    weights = cached;
  }
  for (int d = 0; d < h + w - 1; ++d) {
    const int i0 = d - w + 1 > 0 ? d - w + 1 : 0;
    const int i1 = d < h - 1 ? d : h - 1;
    const int work = (i1 - i0 + 1) * cg;
    for (int t = threadIdx.x; t < work; t += blockDim.x) {
      const int o = t % cg;
      const int vi = i0 + t / cg;  // pixel in the top-left frame
      const int vj = d - vi;
      const T* wo = weights + static_cast<int64_t>(o) * cg * kk;
      T acc = 0;
      for (int a = 0; a < k; ++a) {
        const int si = vi - (k - 1) + a;
        if (si < 0) continue;
        const int mi = reverse ? h - 1 - si : si;
        for (int b = 0; b < k; ++b) {
          const int sj = vj - (k - 1) + b;
          if (sj < 0 || (a == k - 1 && b == k - 1)) continue;  // zero padding; the centre was folded
          const int64_t pixel = static_cast<int64_t>(mi) * w + (reverse ? w - 1 - sj : sj);
          const T* wc = wo + a * k + b;
          for (int c = 0; c < cg; ++c) acc += wc[c * kk] * out[c * plane + pixel];
        }
      }
      const int64_t here =
          static_cast<int64_t>(reverse ? h - 1 - vi : vi) * w + (reverse ? w - 1 - vj : vj);
      out[o * plane + here] = r[o * plane + here] - acc;
    }
    __syncthreads();
  }
}

template <typename T>
int launch(const T* rhs, const T* folded, T* x, int batch, int groups, int cg, int h, int w, int k, int reverse,
           cudaStream_t stream) {
  if (batch < 0 || groups < 1 || cg < 1 || h < 0 || w < 0 || k < 1 || k > kMaxKernel) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (batch == 0 || h == 0 || w == 0) return static_cast<int>(cudaSuccess);
  const int64_t blocks = static_cast<int64_t>(batch) * groups;
  if (blocks > 2147483647LL) return static_cast<int>(cudaErrorInvalidConfiguration);
  const size_t weight_bytes = static_cast<size_t>(cg) * cg * k * k * sizeof(T);
  if (weight_bytes <= kMaxStaticShared) {
    tl_solve_kernel<T, true><<<static_cast<unsigned>(blocks), kThreads, weight_bytes, stream>>>(
        rhs, folded, x, groups, cg, h, w, k, reverse);
  } else {
    tl_solve_kernel<T, false><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(rhs, folded, x, groups, cg, h,
                                                                                        w, k, reverse);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

extern "C" {

// x = wavefront solve of the folded system; all tensors contiguous NCHW (rhs, x) and (G, Cg, Cg, k, k).
int flows_tl_solve_f32(const float* rhs, const float* folded, float* x, int batch, int groups, int cg, int h, int w,
                       int k, int reverse, cudaStream_t stream) {
  return launch<float>(rhs, folded, x, batch, groups, cg, h, w, k, reverse, stream);
}

int flows_tl_solve_f64(const double* rhs, const double* folded, double* x, int batch, int groups, int cg, int h,
                       int w, int k, int reverse, cudaStream_t stream) {
  return launch<double>(rhs, folded, x, batch, groups, cg, h, w, k, reverse, stream);
}

const char* flows_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

int flows_abi_version() { return 1; }

}  // extern "C"
