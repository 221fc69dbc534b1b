// Native CPU solve of the triangular (FInC) convolution: A^-1 y and A^-T g for CPU tensors (backend "cpu").
//
// One image's solve is a recurrence in raster order: pixel (i, j) needs only pixels above it and to its
// left, so a single pass over the rows solves it (the anti-diagonal wavefront is only needed to spread one
// image over many threads, as the GPU does). Parallelism comes from elsewhere:
//   - SIMD over images: `L` images are solved in lock-step, one per vector lane, in a plane laid out
//     [row][column][channel][lane]; every folded weight loaded is used for L images. With one image (or
//     when few images meet many channels) L = 1 and the compiler vectorises over output channels instead.
//   - threads over (block of L images, channel group) items, claimed from an atomic counter by a small
//     pool of our own and by the calling thread: one parallel region per solve, no barrier inside it, and a
//     thread that the OS has descheduled simply claims fewer items (a late worker finds none left and
//     costs nothing), so a busy core slows a solve by its share of the work instead of stalling it.
// Arithmetic is T's (float32 accumulates in float32, as the reference); weights are folded by the caller
// (kernels_cuda/folding.py): layout [group][tap = a*k + b][c_in][c_out], off-centre taps M = D^-1 W, the
// centre slot (D^-1)^T, so   x_p = D^-1 y_p - sum_{taps != centre} M_tap x_nbr.
// `reverse` solves in the frame flipped in H and W (the transposed solve): only the mapping of virtual
// pixels to memory differs.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX__) || defined(__ARM_NEON)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif

constexpr int64_t kMaxIndex = 2147483647LL;
constexpr int64_t kTiledChannels = 12;  // from this many channels per group, stage and store go by tiles

struct Geometry {
  int64_t batch, groups, cg, h, w, k, reverse;
  int64_t hp() const { return h + k - 1; }
  int64_t wp() const { return w + k - 1; }
  int64_t plane() const { return h * w; }
  int64_t image() const { return groups * cg * h * w; }  // one image's elements in NCHW
};

inline int64_t memory_pixel(const Geometry& g, int64_t vi, int64_t vj) {
  return g.reverse ? (g.h - 1 - vi) * g.w + (g.w - 1 - vj) : vi * g.w + vj;
}

// The widest power of two of elements, at most one full vector, that divides `n` (outputs of one image).
template <typename T, int N>
constexpr int vector_width() {
  for (int w = kVectorBytes / static_cast<int>(sizeof(T)); w > 1; w /= 2) {
    if (N % w == 0) return w;
  }
  return 1;
}

// A vector of one element per lane (GCC/Clang vector extensions: plain SIMD registers, no intrinsics).
template <typename T, int L>
struct Lanes {
  static constexpr bool kVector = L >= 2 && L * sizeof(T) >= 16;
  typedef T Vector __attribute__((vector_size(L * sizeof(T))));
};

template <typename T, int L>
inline typename Lanes<T, L>::Vector load_lanes(const T* p) {
  typename Lanes<T, L>::Vector v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// One pixel's outputs o0 .. o0+OB-1 for all L lanes: acc = (D^-1 y)_p - sum_taps M_tap x_nbr, kept in a
// block of OB accumulators over every tap and input channel. With L a full vector the accumulators are
// OB vector registers and each neighbour vector x[c] loaded once feeds OB fused multiply-adds with
// broadcast weights; with L = 1 (one image) the compiler vectorises the loop over output channels.
template <typename T, int L, int OB, int K>
inline void pixel_outputs(int64_t cg, int64_t k_rt, int64_t o0, const T* __restrict__ weights,
                          const T* __restrict__ plane, int64_t wp, int64_t vi, int64_t vj, T* __restrict__ result) {
  const int64_t k = K > 0 ? K : k_rt;
  const int64_t cell = cg * L;
  const T* here = plane + ((vi + k - 1) * wp + (vj + k - 1)) * cell;  // holds y_p until the pixel is done
  const T* centre = weights + (k * k - 1) * cg * cg + o0;             // (D^-1)^T [c][o]
  if constexpr (Lanes<T, L>::kVector) {
    using V = typename Lanes<T, L>::Vector;
    V acc[OB];
    for (int o = 0; o < OB; ++o) acc[o] = V{} ;
    for (int64_t c = 0; c < cg; ++c) {
      const V x = load_lanes<T, L>(here + c * L);
      for (int o = 0; o < OB; ++o) acc[o] += centre[c * cg + o] * x;
    }
    for (int64_t a = 0; a < k; ++a) {
      for (int64_t b = 0; b < k; ++b) {
        if (a == k - 1 && b == k - 1) continue;
        const T* nbr = plane + ((vi + a) * wp + (vj + b)) * cell;
        const T* m = weights + (a * k + b) * cg * cg + o0;
        for (int64_t c = 0; c < cg; ++c) {
          const V x = load_lanes<T, L>(nbr + c * L);
          for (int o = 0; o < OB; ++o) acc[o] -= m[c * cg + o] * x;
        }
      }
    }
    for (int o = 0; o < OB; ++o) std::memcpy(result + (o0 + o) * L, &acc[o], sizeof(V));
  } else if constexpr (L == 1 && vector_width<T, OB>() * sizeof(T) >= 16) {
    // One image: the OB outputs are NV vectors of VW (a power of two of them, 16 to 64 bytes), each
    // weight row segment one load per vector, each neighbour value one broadcast.
    constexpr int VW = vector_width<T, OB>();
    constexpr int NV = OB / VW;
    typedef T VO __attribute__((vector_size(VW * sizeof(T))));
    auto row = [](const T* p) {
      VO v;
      std::memcpy(&v, p, sizeof(v));
      return v;
    };
    VO acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = VO{};
    for (int64_t c = 0; c < cg; ++c) {
      for (int v = 0; v < NV; ++v) acc[v] += row(centre + c * cg + v * VW) * here[c];
    }
    for (int64_t a = 0; a < k; ++a) {
      for (int64_t b = 0; b < k; ++b) {
        if (a == k - 1 && b == k - 1) continue;
        const T* nbr = plane + ((vi + a) * wp + (vj + b)) * cell;
        const T* m = weights + (a * k + b) * cg * cg + o0;
        for (int64_t c = 0; c < cg; ++c) {
          for (int v = 0; v < NV; ++v) acc[v] -= row(m + c * cg + v * VW) * nbr[c];
        }
      }
    }
    std::memcpy(result + o0, acc, sizeof(acc));
  } else {
    T acc[OB][L];
    for (int o = 0; o < OB; ++o) {
      for (int l = 0; l < L; ++l) acc[o][l] = T(0);
    }
    for (int64_t c = 0; c < cg; ++c) {
      const T* x = here + c * L;
      for (int o = 0; o < OB; ++o) {
        for (int l = 0; l < L; ++l) acc[o][l] += centre[c * cg + o] * x[l];
      }
    }
    for (int64_t a = 0; a < k; ++a) {
      for (int64_t b = 0; b < k; ++b) {
        if (a == k - 1 && b == k - 1) continue;
        const T* nbr = plane + ((vi + a) * wp + (vj + b)) * cell;
        const T* m = weights + (a * k + b) * cg * cg + o0;
        for (int64_t c = 0; c < cg; ++c) {
          const T* x = nbr + c * L;
          for (int o = 0; o < OB; ++o) {
            for (int l = 0; l < L; ++l) acc[o][l] -= m[c * cg + o] * x[l];
          }
        }
      }
    }
    for (int o = 0; o < OB; ++o) {
      for (int l = 0; l < L; ++l) result[(o0 + o) * L + l] = acc[o][l];
    }
  }
}

// Lane l of `dst` <- base[l * stride] for l < nb, zero beyond: one (pixel, channel) of L images.
template <typename T, int L>
inline void gather_lanes(const T* __restrict__ base, int64_t stride, int64_t nb, T* __restrict__ dst) {
  if (nb == L) {
    for (int l = 0; l < L; ++l) dst[l] = base[l * stride];
    return;
  }
  for (int64_t l = 0; l < L; ++l) dst[l] = l < nb ? base[l * stride] : T(0);
}

// base[l * stride] <- src[l] for l < nb.
template <typename T, int L>
inline void scatter_lanes(const T* __restrict__ src, int64_t nb, T* __restrict__ base, int64_t stride) {
  if (nb == L) {
    for (int l = 0; l < L; ++l) base[l * stride] = src[l];
    return;
  }
  for (int64_t l = 0; l < nb; ++l) base[l * stride] = src[l];
}

// With many channels a cell is many cache lines, and moving element by element (above) touches cg * L
// lines per pixel: costlier than the solve itself at cg = 16. Then stage and store move one channel of
// L images between NCHW rows and the cells in chunks of L pixels through an L x L tile in L1, so every
// row is read or written contiguously and every lane vector whole. Chunk pixel t is memory column
// mcol0 + dir * t.
template <typename T, int L>
inline void stage_chunk(const Geometry& g, const T* __restrict__ rows, int64_t nb, int64_t mcol0, int64_t dir,
                        int64_t n, T* __restrict__ cells, int64_t cell) {
  T tile[L][L];
  for (int64_t l = 0; l < L; ++l) {
    const T* row = rows + l * g.image();
    for (int64_t t = 0; t < n; ++t) tile[t][l] = l < nb ? row[mcol0 + dir * t] : T(0);
  }
  for (int64_t t = 0; t < n; ++t) std::memcpy(cells + t * cell, tile[t], sizeof(T) * L);
}

template <typename T, int L>
inline void store_chunk(const Geometry& g, const T* __restrict__ cells, int64_t cell, int64_t nb, int64_t mcol0,
                        int64_t dir, int64_t n, T* __restrict__ rows) {
  T tile[L][L];
  for (int64_t t = 0; t < n; ++t) std::memcpy(tile[t], cells + t * cell, sizeof(T) * L);
  for (int64_t l = 0; l < nb; ++l) {
    T* row = rows + l * g.image();
    for (int64_t t = 0; t < n; ++t) row[mcol0 + dir * t] = tile[t][l];
  }
}

// Solve images [b0, b0 + nb) (nb <= L) of one channel group. `plane` is scratch of hp*wp*cg*L elements,
// `result` of cg*L. CG and K are compile-time specialisations (0: the runtime value), so loops unroll;
// OB output channels are computed per pass over the neighbourhood (a divisor of CG; 1 for runtime CG).
template <typename T, int L, int CG, int K, int OB>
void solve_block(const Geometry& g, const T* __restrict__ y, const T* __restrict__ weights, T* __restrict__ out,
                 int64_t b0, int64_t nb, int64_t group, T* __restrict__ plane, T* __restrict__ result) {
  const int64_t cg = CG > 0 ? CG : g.cg;
  const int64_t k = K > 0 ? K : g.k;
  const int64_t wp = g.wp();
  const int64_t cell = cg * L;
  const int64_t hw = g.plane();
  // Zero padding: the top k-1 rows and the left k-1 columns (the TL convolution reads only up and left).
  std::memset(plane, 0, sizeof(T) * static_cast<size_t>((k - 1) * wp * cell));
  for (int64_t r = k - 1; r < g.hp(); ++r) {
    std::memset(plane + r * wp * cell, 0, sizeof(T) * static_cast<size_t>((k - 1) * cell));
  }
  const bool tiled = cg >= kTiledChannels;
  const int64_t dir = g.reverse ? -1 : 1;
  if (tiled) {  // stage: y into the cells, a chunk of L pixels of one row and channel at a time
    for (int64_t c = 0; c < cg; ++c) {
      const T* channel = y + b0 * g.image() + (group * cg + c) * hw;
      for (int64_t vi = 0; vi < g.h; ++vi) {
        const T* rows = channel + (g.reverse ? g.h - 1 - vi : vi) * g.w;
        for (int64_t vj0 = 0; vj0 < g.w; vj0 += L) {
          const int64_t n = std::min<int64_t>(L, g.w - vj0);
          T* cells = plane + ((vi + k - 1) * wp + (vj0 + k - 1)) * cell + c * L;
          stage_chunk<T, L>(g, rows, nb, g.reverse ? g.w - 1 - vj0 : vj0, dir, n, cells, cell);
        }
      }
    }
  } else {  // stage: pixel by pixel, one (pixel, channel) of the L images at a time
    const T* first = y + b0 * g.image() + group * cg * hw;
    for (int64_t vi = 0; vi < g.h; ++vi) {
      for (int64_t vj = 0; vj < g.w; ++vj) {
        const T* pixel = first + memory_pixel(g, vi, vj);
        T* cell_p = plane + ((vi + k - 1) * wp + (vj + k - 1)) * cell;
        for (int64_t c = 0; c < cg; ++c) gather_lanes<T, L>(pixel + c * hw, g.image(), nb, cell_p + c * L);
      }
    }
  }
  for (int64_t vi = 0; vi < g.h; ++vi) {
    for (int64_t vj = 0; vj < g.w; ++vj) {
      for (int64_t o0 = 0; o0 < cg; o0 += OB) {
        pixel_outputs<T, L, OB, K>(cg, k, o0, weights, plane, wp, vi, vj, result);
      }
      T* here = plane + ((vi + k - 1) * wp + (vj + k - 1)) * cell;
      for (int64_t i = 0; i < cell; ++i) here[i] = result[i];
    }
  }
  if (tiled) {  // store: the cells back to each image's NCHW rows, chunk by chunk
    for (int64_t c = 0; c < cg; ++c) {
      T* channel = out + b0 * g.image() + (group * cg + c) * hw;
      for (int64_t vi = 0; vi < g.h; ++vi) {
        T* rows = channel + (g.reverse ? g.h - 1 - vi : vi) * g.w;
        for (int64_t vj0 = 0; vj0 < g.w; vj0 += L) {
          const int64_t n = std::min<int64_t>(L, g.w - vj0);
          const T* cells = plane + ((vi + k - 1) * wp + (vj0 + k - 1)) * cell + c * L;
          store_chunk<T, L>(g, cells, cell, nb, g.reverse ? g.w - 1 - vj0 : vj0, dir, n, rows);
        }
      }
    }
  } else {  // store: pixel by pixel
    T* first_out = out + b0 * g.image() + group * cg * hw;
    for (int64_t vi = 0; vi < g.h; ++vi) {
      for (int64_t vj = 0; vj < g.w; ++vj) {
        T* pixel = first_out + memory_pixel(g, vi, vj);
        const T* cell_p = plane + ((vi + k - 1) * wp + (vj + k - 1)) * cell;
        for (int64_t c = 0; c < cg; ++c) scatter_lanes<T, L>(cell_p + c * L, nb, pixel + c * hw, g.image());
      }
    }
  }
}

// A fixed set of worker threads; `run(n, threads, work)` calls work(i, slot) for i in [0, n) on the caller
// (slot 0) and up to threads - 1 workers, each claiming the next item. Workers sleep on a condition
// variable between solves (no spinning: a spinning worker steals the core another process, or the
// caller, needs); a worker that wakes after the items are gone does nothing and is not waited for.
class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  void run(int64_t n, int threads, const std::function<void(int64_t, int)>& work) {
    const int helpers = static_cast<int>(std::min<int64_t>(std::max(threads, 1), n)) - 1;
    if (helpers <= 0) {
      for (int64_t i = 0; i < n; ++i) work(i, 0);
      return;
    }
    std::lock_guard<std::mutex> serial(run_mutex_);  // one solve at a time uses the pool
    grow(helpers);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      work_ = &work;
      count_ = n;
      next_.store(0);
      wanted_ = helpers;
      ++generation_;
    }
    wake_.notify_all();
    drain(0);
    std::unique_lock<std::mutex> lock(mutex_);
    wanted_ = 0;  // workers that wake from now on find nothing to do
    done_.wait(lock, [&] { return busy_ == 0; });
    work_ = nullptr;
  }

 private:
  void drain(int slot) {
    for (int64_t i = next_.fetch_add(1); i < count_; i = next_.fetch_add(1)) (*work_)(i, slot);
  }

  void grow(int helpers) {
    while (static_cast<int>(workers_.size()) < helpers) {
      const int slot = static_cast<int>(workers_.size()) + 1;
      workers_.emplace_back([this, slot] { loop(slot); });
    }
  }

  void loop(int slot) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stopping_ || (generation_ != seen && wanted_ >= slot); });
      if (stopping_) return;
      seen = generation_;
      ++busy_;
      lock.unlock();
      drain(slot);
      lock.lock();
      if (--busy_ == 0) done_.notify_all();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mutex_, run_mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t, int)>* work_ = nullptr;
  std::atomic<int64_t> next_{0};
  int64_t count_ = 0;
  uint64_t generation_ = 0;
  int wanted_ = 0;
  int busy_ = 0;
  bool stopping_ = false;
};

Pool& pool() {
  static Pool instance;
  return instance;
}

// Output channels per pass over a neighbourhood: the accumulators of OB channels x L lanes fit in
// registers (about a dozen vectors); a divisor of CG so that no pass is partial.
template <typename T, int L, int CG>
constexpr int output_block() {
  if (CG <= 0) return 1;
  if (L == 1) {  // up to four vectors of outputs, each a power of two of them that divides CG
    constexpr int width = vector_width<T, (CG > 0 ? CG : 1)>();
    for (int vectors = 4; vectors > 1; --vectors) {
      if (CG % (width * vectors) == 0) return width * vectors;
    }
    return width;
  }
  constexpr int budget = 16;  // accumulator vectors
  for (int ob = budget < CG ? budget : CG; ob > 1; --ob) {
    if (CG % ob == 0) return ob;
  }
  return 1;
}

template <typename T, int L, int CG, int K>
void solve_all(const Geometry& g, const T* y, const T* weights, T* out, int threads) {
  const int64_t blocks = (g.batch + L - 1) / L;
  const int64_t cg = CG > 0 ? CG : g.cg;
  const size_t plane_elems = static_cast<size_t>(g.hp() * g.wp() * cg * L);
  auto work = [&](int64_t item, int) {
    // Each thread keeps its scratch between solves: no allocation (nor page faults) per call.
    thread_local std::vector<T> buffer;
    if (buffer.size() < plane_elems + static_cast<size_t>(cg * L)) buffer.resize(plane_elems + cg * L);
    const int64_t block = item / g.groups;
    const int64_t group = item % g.groups;
    const int64_t b0 = block * L;
    const T* w = weights + group * g.k * g.k * cg * cg;
    solve_block<T, L, CG, K, output_block<T, L, CG>()>(g, y, w, out, b0, std::min<int64_t>(L, g.batch - b0),
                                                        group, buffer.data(), buffer.data() + plane_elems);
  };
  pool().run(blocks * g.groups, threads, work);
}

// Lane count: a full vector of images when there are enough of them; half a vector when that is what
// gives every thread an item; one image at a time (vectorised over channels) when a lane block would be
// mostly empty and there are channels to vectorise over.
template <typename T, int CG, int K>
void dispatch_lanes(const Geometry& g, const T* y, const T* w, T* out, int threads) {
  constexpr int kFull = kVectorBytes / static_cast<int>(sizeof(T));
  constexpr int kHalf = kFull / 2 * static_cast<int>(sizeof(T)) >= 16 ? kFull / 2 : kFull;
  const int64_t full_items = (g.batch + kFull - 1) / kFull * g.groups;
  if (g.batch * 2 <= kFull && g.cg >= 8) {
    solve_all<T, 1, CG, K>(g, y, w, out, threads);
  } else if (kHalf < kFull && full_items < threads && g.batch > kHalf) {
    solve_all<T, kHalf, CG, K>(g, y, w, out, threads);
  } else {
    solve_all<T, kFull, CG, K>(g, y, w, out, threads);
  }
}

template <typename T>
void dispatch(const Geometry& g, const T* y, const T* w, T* out, int threads) {
  if (g.k == 3) {
    switch (g.cg) {
      case 1: return dispatch_lanes<T, 1, 3>(g, y, w, out, threads);
      case 2: return dispatch_lanes<T, 2, 3>(g, y, w, out, threads);
      case 4: return dispatch_lanes<T, 4, 3>(g, y, w, out, threads);
      case 8: return dispatch_lanes<T, 8, 3>(g, y, w, out, threads);
      case 12: return dispatch_lanes<T, 12, 3>(g, y, w, out, threads);
      case 16: return dispatch_lanes<T, 16, 3>(g, y, w, out, threads);
      case 24: return dispatch_lanes<T, 24, 3>(g, y, w, out, threads);
      case 48: return dispatch_lanes<T, 48, 3>(g, y, w, out, threads);
      default: break;
    }
  }
  dispatch_lanes<T, 0, 0>(g, y, w, out, threads);
}

template <typename T>
int solve(const T* y, const T* folded, T* out, int64_t batch, int64_t groups, int64_t cg, int64_t h,
          int64_t w, int64_t k, int64_t reverse, int64_t threads) {
  if (batch < 0 || groups < 1 || cg < 1 || h < 1 || w < 1 || k < 1 || threads < 1) return 1;
  if (groups * cg * h * w > kMaxIndex || (h + k - 1) * (w + k - 1) * cg * 64 > kMaxIndex) return 2;
  if (batch == 0) return 0;
  const Geometry g{batch, groups, cg, h, w, k, reverse ? 1 : 0};
  dispatch<T>(g, y, folded, out, static_cast<int>(std::min<int64_t>(threads, 256)));
  return 0;
}

}  // namespace

extern "C" {

int flows_cpu_abi_version() { return 1; }

// Images solved per vector (float32), for reports.
int flows_cpu_lanes_f32() { return kVectorBytes / 4; }

int flows_cpu_solve_f32(const float* y, const float* folded, float* out, int64_t batch, int64_t groups,
                        int64_t cg, int64_t h, int64_t w, int64_t k, int64_t reverse, int64_t threads) {
  return solve<float>(y, folded, out, batch, groups, cg, h, w, k, reverse, threads);
}

int flows_cpu_solve_f64(const double* y, const double* folded, double* out, int64_t batch, int64_t groups,
                        int64_t cg, int64_t h, int64_t w, int64_t k, int64_t reverse, int64_t threads) {
  return solve<double>(y, folded, out, batch, groups, cg, h, w, k, reverse, threads);
}

}  // extern "C"
