// Reference baseline for benchmarks/solve_gpu.py: the launch pattern of the published FInC Flow code.
// One launch per anti-diagonal *and per output channel*, each followed by cudaDeviceSynchronize(), so a
// solve costs (H + W - 1) * C launches and synchronisations. Forward substitution over channels happens
// across launches (channel o reads channels c < o of the same pixel, solved by earlier launches).
// Groups = 1, top-left orientation, float32. Kept only to measure what our one-launch kernel replaces.

#include <cuda_runtime.h>

namespace {

__global__ void baseline_step(const float* __restrict__ y, const float* __restrict__ weight, float* x, int batch,
                              int c, int h, int w, int k, int d, int o) {
  const int i0 = d - w + 1 > 0 ? d - w + 1 : 0;
  const int i1 = d < h - 1 ? d : h - 1;
  const int n = i1 - i0 + 1;
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= batch * n) return;
  const int b = t / n;
  const int i = i0 + t % n;
  const int j = d - i;
  const long plane = static_cast<long>(h) * w;
  const float* xb = x + static_cast<long>(b) * c * plane;
  float acc = 0.f;
  for (int ci = 0; ci < c; ++ci) {
    for (int a = 0; a < k; ++a) {
      const int si = i - (k - 1) + a;
      if (si < 0) continue;
      for (int bb = 0; bb < k; ++bb) {
        const int sj = j - (k - 1) + bb;
        if (sj < 0) continue;
        const bool centre = a == k - 1 && bb == k - 1;
        if (centre && ci >= o) continue;  // this pixel: only channels already solved
        acc += weight[((static_cast<long>(o) * c + ci) * k + a) * k + bb] * xb[ci * plane + si * w + sj];
      }
    }
  }
  const float diag = weight[((static_cast<long>(o) * c + o) * k + (k - 1)) * k + (k - 1)];
  const long here = static_cast<long>(b) * c * plane + o * plane + static_cast<long>(i) * w + j;
  x[here] = (y[here] - acc) / diag;
}

}  // namespace

extern "C" int flows_baseline_solve_f32(const float* y, const float* weight, float* x, int batch, int c, int h, int w,
                                        int k, cudaStream_t stream) {
  for (int d = 0; d < h + w - 1; ++d) {
    const int i0 = d - w + 1 > 0 ? d - w + 1 : 0;
    const int i1 = d < h - 1 ? d : h - 1;
    const int threads = batch * (i1 - i0 + 1);
    for (int o = 0; o < c; ++o) {
      baseline_step<<<(threads + 255) / 256, 256, 0, stream>>>(y, weight, x, batch, c, h, w, k, d, o);
      const cudaError_t err = cudaDeviceSynchronize();
      if (err != cudaSuccess) return static_cast<int>(err);
    }
  }
  return static_cast<int>(cudaGetLastError());
}
