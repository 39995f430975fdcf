// Structure-aware CPU kernels for the depthwise peripheral convolution (pelk_mm.ops).
//
// The dense K x K kernel of one channel is W[u, v] = w[a(u), b(v)] with k' x k' block-shared weights w, so
//   y[i, j] = sum_a sum_b w[a, b] * sum_{u in cell a} sum_{v in cell b} x[i + u, j + v]   (zero outside the map)
// where cell a spans the tap offsets [lo_h[a], hi_h[a]] (relative to the kernel centre) and cell b spans
// [lo_w[b], hi_w[b]]. Per plane (n, c) we compute
//   1. R[b, h, :] = row box sums of x over the offsets of W-cell b   (doubling table: ~log s + popcount s adds)
//   2. T[a, h, :] = sum_b w[a, b] R[b, h, :]                          (k'_h * k'_w FMAs / pixel)
//   3. y[i, :]    = sum_a sum_{u in cell a} T[a, i + u, :]            (K adds / pixel, one tap loop)
// i.e. O(K + k'^2) work per pixel instead of O(K^2). All loops vectorise over the (padded) row.
// Backward, one fused pass per plane (backward_impl) around V[a, r, :] = sum_{u in cell a} gy[r - u, :]:
//   grad_w[a, b] = sum_{h, j} V[a, h, j] R[b, h, j]                   (k'^2 Gram matrix, float64 partial sums)
//   grad_x[h, j] = sum_b sum_{v in cell b} U[b, h, j - v],  U[b] = sum_a w[a, b] V[a]   (the transposed forward)
// Everything runs per plane in thread-private, cache-sized buffers (at::parallel_for over N * C planes); inputs and
// outputs may have any strides (PlaneIn / PlaneOut).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <c10/util/TypeCast.h>
#include <vector>

namespace {

// GCC/Clang vector extensions: one AVX2 register (8 floats / 4 doubles); unaligned loads/stores via aligned(sizeof T).
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32), aligned(4)));
  static constexpr int n = 8;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32), aligned(8)));
  static constexpr int n = 4;
};
template <typename T>
using V = typename Vec<T>::type;
template <typename T>
constexpr int kVN = Vec<T>::n;  // padded row length is a multiple of this

template <typename T>
inline V<T> vload(const T* p) { return *reinterpret_cast<const V<T>*>(p); }
template <typename T>
inline void vstore(T* p, V<T> v) { *reinterpret_cast<V<T>*>(p) = v; }

struct Cells {
  std::vector<int64_t> lo, hi;
  int64_t size() const { return static_cast<int64_t>(lo.size()); }
  int64_t min_lo() const { return *std::min_element(lo.begin(), lo.end()); }
  int64_t max_hi() const { return *std::max_element(hi.begin(), hi.end()); }
};

Cells make_cells(const std::vector<int64_t>& lo, const std::vector<int64_t>& hi, const char* axis) {
  TORCH_CHECK(lo.size() == hi.size() && !lo.empty(), "cells along ", axis, ": lo/hi must be non-empty and of equal "
              "length, got ", lo.size(), " and ", hi.size());
  for (size_t i = 0; i < lo.size(); ++i)
    TORCH_CHECK(lo[i] <= hi[i], "cell ", i, " along ", axis, " is empty: lo=", lo[i], " > hi=", hi[i]);
  return Cells{lo, hi};
}

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Element strides of an (N, C, H, W) tensor: the kernels read and write any layout (NCHW, channels_last, views)
// in place, a row of a plane at a time.
struct Strides {
  int64_t n, c, h, w;
  explicit Strides(const torch::Tensor& t) : n(t.stride(0)), c(t.stride(1)), h(t.stride(2)), w(t.stride(3)) {}
  int64_t plane(int64_t p, int64_t C) const { return (p / C) * n + (p % C) * c; }
};

// Plane access for layouts whose rows are not contiguous (channels_last: a row's elements are C apart). A block of
// up to kChanBlock consecutive channels of one image is transposed into (PlaneIn) or out of (PlaneOut) NCHW planes in
// thread-local scratch, moving each pixel's channels as one contiguous run instead of touching a cache line per
// element. Rows with unit stride (NCHW, channel slices) are used in place. Planes must be visited in increasing order.
constexpr int64_t kChanBlock = 16;

template <typename T>
struct PlaneBlock {
  Strides s;
  int64_t C, HW, W;
  bool direct;
  at::Tensor store;
  T* buf = nullptr;
  int64_t blk0 = -1, nb = 0;
  PlaneBlock(const Strides& s_, int64_t C_, int64_t H, int64_t W_) : s(s_), C(C_), HW(H * W_), W(W_), direct(s_.w == 1) {
    if (!direct) {
      store = at::empty({kChanBlock * HW}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
      buf = store.data_ptr<T>();
    }
  }
  bool begin_block(int64_t p, int64_t end) {  // true if p starts a new block (blk0, nb updated)
    if (p >= blk0 && p < blk0 + nb) return false;
    blk0 = p;
    nb = std::min<int64_t>({kChanBlock, C - p % C, end - p});
    return true;
  }
  // element (k, i) of the block <-> tensor offset, i = h * W + w
  int64_t offset(int64_t k, int64_t i) const {
    const int64_t p = blk0 + k;
    return s.plane(p, C) + (i / W) * s.h + (i % W) * s.w;
  }
};

template <typename T>
struct PlaneIn : PlaneBlock<T> {
  const T* base;
  PlaneIn(const T* base_, const Strides& s_, int64_t C_, int64_t H, int64_t W_)
      : PlaneBlock<T>(s_, C_, H, W_), base(base_) {}
  const T* get(int64_t p, int64_t end, int64_t& sh, int64_t& sw) {
    if (this->direct) {
      sh = this->s.h;
      sw = this->s.w;
      return base + this->s.plane(p, this->C);
    }
    if (this->begin_block(p, end)) {
      const int64_t HW = this->HW, nb = this->nb, sc = this->s.c;
      for (int64_t i = 0; i < HW; ++i) {
        const T* q = base + this->offset(0, i);
        for (int64_t k = 0; k < nb; ++k) this->buf[k * HW + i] = q[k * sc];
      }
    }
    sh = this->W;
    sw = 1;
    return this->buf + (p - this->blk0) * this->HW;
  }
};

template <typename T>
struct PlaneOut : PlaneBlock<T> {
  T* base;
  PlaneOut(T* base_, const Strides& s_, int64_t C_, int64_t H, int64_t W_)
      : PlaneBlock<T>(s_, C_, H, W_), base(base_) {}
  T* get(int64_t p, int64_t end, int64_t& sh, int64_t& sw) {
    if (this->direct) {
      sh = this->s.h;
      sw = this->s.w;
      return base + this->s.plane(p, this->C);
    }
    if (p < this->blk0 || p >= this->blk0 + this->nb) flush();
    this->begin_block(p, end);
    sh = this->W;
    sw = 1;
    return this->buf + (p - this->blk0) * this->HW;
  }
  void flush() {  // write the finished block back
    if (this->direct || this->blk0 < 0) return;
    const int64_t HW = this->HW, nb = this->nb, sc = this->s.c;
    for (int64_t i = 0; i < HW; ++i) {
      T* q = base + this->offset(0, i);
      for (int64_t k = 0; k < nb; ++k) q[k * sc] = this->buf[k * HW + i];
    }
    this->blk0 = -1;
    this->nb = 0;
  }
};

template <typename T>
inline void row_in(T* dst, const T* src, int64_t W, int64_t sw) {
  if (sw == 1) {
    std::memcpy(dst, src, sizeof(T) * W);
  } else {
    for (int64_t j = 0; j < W; ++j) dst[j] = src[j * sw];
  }
}

template <typename T>
inline void row_out(T* dst, const T* src, int64_t W, int64_t sw) {
  if (sw == 1) {
    std::memcpy(dst, src, sizeof(T) * W);
  } else {
    for (int64_t j = 0; j < W; ++j) dst[j * sw] = src[j];
  }
}

// Doubling ("sparse table") box sums along a padded row: lvl[k][j] = sum_{v < 2^k} row[j + v]. A cell of width s
// starting at offset lo is the sum of popcount(s) shifted levels, so a whole grid costs ~log2(max s) + sum popcount
// adds per pixel instead of K. Only short exact sums (no prefix differences), so rounding is like direct summation.
// Rows are processed kRowBlock at a time, level by level: the shifted (misaligned) reloads of a level then come long
// after its stores, instead of stalling on store-to-load forwarding right behind them.
constexpr int64_t kRowBlock = 8;

template <typename T>
struct RowLevels {
  int64_t nlev = 1, len = 0;
  T* data = nullptr;  // kRowBlock slots of nlev rows of len; level 0 of a slot is the zero-padded input row
  T* level(int64_t slot, int64_t k) const { return data + (slot * nlev + k) * len; }
  std::vector<std::vector<std::pair<int64_t, int64_t>>> terms;  // per W-cell: (level, offset into the slot)
};

// Levels of the rows src + r * sh (r < nr <= kRowBlock; W elements sw apart) into slots 0 .. nr.
template <typename T>
void load_rows(const T* src, int64_t sh, int64_t sw, int64_t W, int64_t nr, RowLevels<T>& lv, int64_t pl) {
  constexpr int VN = kVN<T>;
  for (int64_t r = 0; r < nr; ++r) row_in(lv.level(r, 0) + pl, src + r * sh, W, sw);
  for (int64_t k = 1; k < lv.nlev; ++k) {
    const int64_t shift = int64_t(1) << (k - 1);
    const int64_t n = lv.len - (int64_t(1) << k) + 1;  // positions whose window stays inside the slot
    for (int64_t r = 0; r < nr; ++r) {
      const T* prev = lv.level(r, k - 1);
      T* cur = lv.level(r, k);
      int64_t j = 0;
      for (; j + VN <= n; j += VN) vstore(cur + j, vload(prev + j) + vload(prev + j + shift));
      for (; j < n; ++j) cur[j] = prev[j] + prev[j + shift];
    }
  }
}

// dst[b * S + j] = sum_{v = lo_b}^{hi_b} row[j + v] (zero outside [0, W)) for j < Wp (tail zeroed) from a slot.
template <typename T>
void row_cells(const RowLevels<T>& lv, int64_t slot, int64_t W, int64_t Wp, T* dst, int64_t S) {
  constexpr int VN = kVN<T>;
  const int64_t nb = static_cast<int64_t>(lv.terms.size());
  for (int64_t b = 0; b < nb; ++b) {  // term-major: fixed-length inner loops (a short term loop mispredicts)
    const auto& tb = lv.terms[b];
    T* __restrict out = dst + b * S;
    const T* src = lv.level(slot, tb[0].first) + tb[0].second;
    for (int64_t j0 = 0; j0 < Wp; j0 += VN) vstore(out + j0, vload(src + j0));
    for (size_t t = 1; t < tb.size(); ++t) {
      src = lv.level(slot, tb[t].first) + tb[t].second;
      for (int64_t j0 = 0; j0 < Wp; j0 += VN) vstore(out + j0, vload(out + j0) + vload(src + j0));
    }
    std::fill(out + W, out + Wp, T(0));
  }
}

// Whole plane: dst[b, h, :] = row box sums of src[h, :] (layout [cell][row][Wp]).
template <typename T>
void row_box(const T* src, int64_t sh, int64_t sw, int64_t H, int64_t W, int64_t Wp, RowLevels<T>& lv, int64_t pl,
             T* dst) {
  for (int64_t h0 = 0; h0 < H; h0 += kRowBlock) {
    const int64_t nr = std::min<int64_t>(kRowBlock, H - h0);
    load_rows(src + h0 * sh, sh, sw, W, nr, lv, pl);
    for (int64_t r = 0; r < nr; ++r) row_cells(lv, r, W, Wp, dst + (h0 + r) * Wp, H * Wp);
  }
}

// dst[a * D + t] = sum_b w[a, b] src[b * S + t] for t < L (a multiple of the vector width); S, D = strides between
// cells. Blocks of NA rows of w x NV vectors of t live in registers (NA * NV accumulators; AVX-512VL gives 32).
template <typename T, int NA, int NV>
inline void contract_block(const T* w, int64_t Gb, const T* src, int64_t S, int64_t t0, T* dst, int64_t D) {
  constexpr int VN = kVN<T>;
  V<T> c[NA][NV];
  for (int k = 0; k < NA; ++k)
    for (int m = 0; m < NV; ++m) c[k][m] = V<T>{};
  for (int64_t b = 0; b < Gb; ++b) {
    V<T> r[NV];
    for (int m = 0; m < NV; ++m) r[m] = vload(src + b * S + t0 + m * VN);
    for (int k = 0; k < NA; ++k) {
      const T wk = w[k * Gb + b];
      for (int m = 0; m < NV; ++m) c[k][m] += wk * r[m];
    }
  }
  for (int k = 0; k < NA; ++k)
    for (int m = 0; m < NV; ++m) vstore(dst + k * D + t0 + m * VN, c[k][m]);
}

// All rows of w for NV vectors at t0: blocks of 6 rows, then the remainder block.
template <typename T, int NV>
inline void contract_cols(const T* w, int64_t Ga, int64_t Gb, const T* src, int64_t S, int64_t t0, T* dst,
                          int64_t D) {
  int64_t a = 0;
  for (; a + 6 <= Ga; a += 6) contract_block<T, 6, NV>(w + a * Gb, Gb, src, S, t0, dst + a * D, D);
  switch (Ga - a) {
    case 5: contract_block<T, 5, NV>(w + a * Gb, Gb, src, S, t0, dst + a * D, D); break;
    case 4: contract_block<T, 4, NV>(w + a * Gb, Gb, src, S, t0, dst + a * D, D); break;
    case 3: contract_block<T, 3, NV>(w + a * Gb, Gb, src, S, t0, dst + a * D, D); break;
    case 2: contract_block<T, 2, NV>(w + a * Gb, Gb, src, S, t0, dst + a * D, D); break;
    case 1: contract_block<T, 1, NV>(w + a * Gb, Gb, src, S, t0, dst + a * D, D); break;
    default: break;
  }
}

template <typename T>
void contract(const T* w, int64_t Ga, int64_t Gb, const T* src, int64_t L, int64_t S, T* dst, int64_t D) {
  constexpr int VN = kVN<T>;
  int64_t t0 = 0;
  for (; t0 + 3 * VN <= L; t0 += 3 * VN) contract_cols<T, 3>(w, Ga, Gb, src, S, t0, dst, D);
  if (L - t0 == 2 * VN) contract_cols<T, 2>(w, Ga, Gb, src, S, t0, dst, D);
  else if (L - t0 == VN) contract_cols<T, 1>(w, Ga, Gb, src, S, t0, dst, D);
}

// out[m] = sum_{t0 <= t < t1} base[off[t] + m * VN .. + VN) for m < NV, over NC independent partial sums per vector
// (a single chain of ~K dependent adds would be bound by the add latency, not its throughput).
template <typename T, int NV, int NC>
inline void sum_taps(const T* base, const int64_t* off, int64_t t0, int64_t t1, V<T>* out) {
  constexpr int VN = kVN<T>;
  V<T> acc[NC][NV];
  for (int k = 0; k < NC; ++k)
    for (int m = 0; m < NV; ++m) acc[k][m] = V<T>{};
  int64_t t = t0;
  for (; t + NC <= t1; t += NC)
    for (int k = 0; k < NC; ++k)
      for (int m = 0; m < NV; ++m) acc[k][m] += vload(base + off[t + k] + m * VN);
  for (; t < t1; ++t)
    for (int m = 0; m < NV; ++m) acc[0][m] += vload(base + off[t] + m * VN);
  for (int m = 0; m < NV; ++m) {
    V<T> v = acc[0][m];
    for (int k = 1; k < NC; ++k) v += acc[k][m];
    out[m] = v;
  }
}

// Column taps of a set of cells: every offset u of every cell c as (u, c), sorted by u.
struct ColTaps {
  std::vector<int64_t> u, off;  // off = c * H * Wp + u * Wp (elements)
  ColTaps(const Cells& ch, int64_t H, int64_t Wp) {
    std::vector<std::pair<int64_t, int64_t>> taps;
    for (int64_t c = 0; c < ch.size(); ++c)
      for (int64_t v = ch.lo[c]; v <= ch.hi[c]; ++v) taps.emplace_back(v, c);
    std::sort(taps.begin(), taps.end());
    for (const auto& t : taps) {
      u.push_back(t.first);
      off.push_back(t.second * H * Wp + t.first * Wp);
    }
  }
};

// dst[i, :] = sum_c sum_{r = i + lo_c}^{i + hi_c} src[c, r, :] (rows r in [0, H)), as one loop over the taps with
// a fixed trip count per row (a loop per cell of widths 9, 8, 4, ... 1 mispredicts its exits).
template <typename T>
void col_taps(const T* src, int64_t H, int64_t Wp, const ColTaps& taps, T* dst) {
  constexpr int VN = kVN<T>;
  const int64_t* off = taps.off.data();
  for (int64_t i = 0; i < H; ++i) {
    const int64_t t0 = std::lower_bound(taps.u.begin(), taps.u.end(), -i) - taps.u.begin();
    const int64_t t1 = std::upper_bound(taps.u.begin(), taps.u.end(), H - 1 - i) - taps.u.begin();
    const T* base = src + i * Wp;
    T* out = dst + i * Wp;
    int64_t j0 = 0;
    for (; j0 + 4 * VN <= Wp; j0 += 4 * VN) {
      V<T> acc[4];
      sum_taps<T, 4, 2>(base + j0, off, t0, t1, acc);
      for (int m = 0; m < 4; ++m) vstore(out + j0 + m * VN, acc[m]);
    }
    for (; j0 < Wp; j0 += VN) {
      V<T> acc[1];
      sum_taps<T, 1, 4>(base + j0, off, t0, t1, acc);
      vstore(out + j0, acc[0]);
    }
  }
}

template <typename T>
inline double hsum(V<T> v) {
  double s = 0;
  for (int k = 0; k < kVN<T>; ++k) s += v[k];
  return s;
}

// s[k][m] += sum_{t0 <= t < t1} v[k][t] r[m][t]: NA rows of V x NB rows of R in registers (NA * NB accumulators).
template <typename T, int NA, int NB>
inline void gram_block(const T* const* v, const T* const* r, int64_t t0, int64_t t1, double (*s)[4]) {
  constexpr int VN = kVN<T>;
  V<T> c[NA][NB];
  for (int k = 0; k < NA; ++k)
    for (int m = 0; m < NB; ++m) c[k][m] = V<T>{};
  for (int64_t t = t0; t < t1; t += VN) {
    V<T> x[NB];
    for (int m = 0; m < NB; ++m) x[m] = vload(r[m] + t);
    for (int k = 0; k < NA; ++k) {
      const V<T> y = vload(v[k] + t);
      for (int m = 0; m < NB; ++m) c[k][m] += y * x[m];
    }
  }
  for (int k = 0; k < NA; ++k)
    for (int m = 0; m < NB; ++m) s[k][m] += hsum<T>(c[k][m]);
}

template <typename T, int NB>
inline void gram_rows(const T* const* v, int64_t na, const T* const* r, int64_t t0, int64_t t1, double (*s)[4]) {
  switch (na) {
    case 6: gram_block<T, 6, NB>(v, r, t0, t1, s); break;
    case 5: gram_block<T, 5, NB>(v, r, t0, t1, s); break;
    case 4: gram_block<T, 4, NB>(v, r, t0, t1, s); break;
    case 3: gram_block<T, 3, NB>(v, r, t0, t1, s); break;
    case 2: gram_block<T, 2, NB>(v, r, t0, t1, s); break;
    default: gram_block<T, 1, NB>(v, r, t0, t1, s); break;
  }
}

// out[a, b] += sum_t V[a, t] R[b, t] over L (multiple of the vector width) elements. The t axis is walked in chunks
// of kChunk vectors so that the chunk of every row of V and R stays in L1 while all (a, b) blocks use it; each
// chunk's float partial sums are flushed to double.
template <typename T>
void gram(const T* Vm, int64_t Ga, const T* R, int64_t Gb, int64_t L, double* out) {
  constexpr int NA = 6, NB = 4;
  constexpr int64_t kChunk = 32 * kVN<T>;
  for (int64_t t0 = 0; t0 < L; t0 += kChunk) {
    const int64_t t1 = std::min<int64_t>(L, t0 + kChunk);
    for (int64_t a = 0; a < Ga; a += NA) {
      const int64_t na = std::min<int64_t>(NA, Ga - a);
      const T* v[NA];
      for (int64_t k = 0; k < NA; ++k) v[k] = Vm + std::min<int64_t>(a + k, Ga - 1) * L;
      for (int64_t b = 0; b < Gb; b += NB) {
        const int64_t nb = std::min<int64_t>(NB, Gb - b);
        const T* r[NB];
        for (int64_t m = 0; m < NB; ++m) r[m] = R + std::min<int64_t>(b + m, Gb - 1) * L;
        double s[NA][4] = {};
        switch (nb) {
          case 4: gram_rows<T, 4>(v, na, r, t0, t1, s); break;
          case 3: gram_rows<T, 3>(v, na, r, t0, t1, s); break;
          case 2: gram_rows<T, 2>(v, na, r, t0, t1, s); break;
          default: gram_rows<T, 1>(v, na, r, t0, t1, s); break;
        }
        for (int64_t k = 0; k < na; ++k)
          for (int64_t m = 0; m < nb; ++m) out[(a + k) * Gb + b + m] += s[k][m];
      }
    }
  }
}

// Thread-private scratch, allocated through ATen's CPU allocator (so torch.profiler memory stats include it).
template <typename T>
struct PlaneBuffers {
  at::Tensor storage;
  RowLevels<T> lv;
  T *R, *Tm, *acc;
  PlaneBuffers(int64_t H, int64_t Wp, int64_t pl, int64_t pr, const Cells& cw, int64_t Ga) {
    int64_t maxw = 1;
    for (int64_t b = 0; b < cw.size(); ++b) maxw = std::max<int64_t>(maxw, cw.hi[b] - cw.lo[b] + 1);
    while ((int64_t(1) << lv.nlev) <= maxw) ++lv.nlev;  // levels 2^0 .. 2^(nlev-1) <= max width
    lv.len = round_up(pl + Wp + pr, kVN<T>);
    for (int64_t b = 0; b < cw.size(); ++b) {  // each cell as a sum of levels, largest first
      std::vector<std::pair<int64_t, int64_t>> tb;
      int64_t o = cw.lo[b], left = cw.hi[b] - cw.lo[b] + 1;
      for (int64_t k = lv.nlev - 1; k >= 0; --k)
        for (const int64_t step = int64_t(1) << k; left >= step; left -= step, o += step) tb.emplace_back(k, pl + o);
      lv.terms.push_back(tb);
    }
    const int64_t Gb = cw.size(), nR = Gb * H * Wp, nT = Ga * H * Wp, nacc = H * Wp, nlv = kRowBlock * lv.nlev * lv.len;
    storage = at::zeros({nlv + nR + nT + nacc}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
    lv.data = storage.data_ptr<T>();
    R = lv.data + nlv;
    Tm = R + nR;
    acc = Tm + nT;
  }
};

// Transposed column box sums V[a, r, :] = sum_{u in cell a} g[r - u, :] (rows outside [0, H) zero) with doubling
// levels along H: a plane padded with zero rows, L_k[t] = sum_{m < 2^k} L_0[t + m]; each cell's window is the sum
// of popcount(width) shifted levels. Rows are Wp long and contiguous, so every level and term is one flat loop.
template <typename T>
struct ColLevels {
  int64_t nlev = 1, top = 0, rows = 0, Wp = 0;
  std::vector<std::vector<std::pair<int64_t, int64_t>>> terms;  // per H-cell: (level, first padded row - r)
  at::Tensor storage;
  T* data = nullptr;
  ColLevels(const Cells& ch, int64_t H, int64_t Wp_) : Wp(Wp_) {
    int64_t maxw = 1;
    for (int64_t a = 0; a < ch.size(); ++a) maxw = std::max<int64_t>(maxw, ch.hi[a] - ch.lo[a] + 1);
    while ((int64_t(1) << nlev) <= maxw) ++nlev;
    top = std::max<int64_t>(0, ch.max_hi());
    rows = top + H + std::max<int64_t>(0, -ch.min_lo());
    for (int64_t a = 0; a < ch.size(); ++a) {  // window rows [r - hi_a, r - lo_a] = padded [r + top - hi_a, ...]
      std::vector<std::pair<int64_t, int64_t>> ta;
      int64_t o = top - ch.hi[a], left = ch.hi[a] - ch.lo[a] + 1;
      for (int64_t k = nlev - 1; k >= 0; --k)
        for (const int64_t step = int64_t(1) << k; left >= step; left -= step, o += step) ta.emplace_back(k, o);
      terms.push_back(ta);
    }
    storage = at::zeros({nlev * rows * Wp}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
    data = storage.data_ptr<T>();
  }
  T* level(int64_t k) const { return data + k * rows * Wp; }

  // V (Ga planes of H x Wp) from the H x W plane g (rows sh, elements sw apart).
  void box(const T* g, int64_t sh, int64_t sw, int64_t H, int64_t W, T* V) const {
    constexpr int VN = kVN<T>;
    T* l0 = level(0) + top * Wp;
    for (int64_t i = 0; i < H; ++i) row_in(l0 + i * Wp, g + i * sh, W, sw);  // pads stay zero
    for (int64_t k = 1; k < nlev; ++k) {
      const T* prev = level(k - 1);
      T* cur = level(k);
      const int64_t shift = (int64_t(1) << (k - 1)) * Wp, n = (rows - (int64_t(1) << k) + 1) * Wp;
      for (int64_t q = 0; q < n; q += VN) vstore(cur + q, vload(prev + q) + vload(prev + q + shift));
    }
    const int64_t L = H * Wp;
    for (size_t a = 0; a < terms.size(); ++a) {
      T* __restrict dst = V + a * L;
      const auto& ta = terms[a];
      const T* src = level(ta[0].first) + ta[0].second * Wp;
      for (int64_t q = 0; q < L; q += VN) vstore(dst + q, vload(src + q));
      for (size_t t = 1; t < ta.size(); ++t) {
        src = level(ta[t].first) + ta[t].second * Wp;
        for (int64_t q = 0; q < L; q += VN) vstore(dst + q, vload(dst + q) + vload(src + q));
      }
    }
  }
};

template <typename T>
void forward_impl(const T* x, const Strides& xs, const T* w, T* y, const Strides& ys, int64_t N, int64_t C, int64_t H,
                  int64_t W, const Cells& ch, const Cells& cw) {
  const int64_t Ga = ch.size(), Gb = cw.size(), Wp = round_up(W, kVN<T>);
  const int64_t pl = std::max<int64_t>(0, -cw.min_lo()), pr = std::max<int64_t>(0, cw.max_hi()) + (Wp - W);
  const ColTaps taps(ch, H, Wp);
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    PlaneBuffers<T> buf(H, Wp, pl, pr, cw, Ga);
    PlaneIn<T> xin(x, xs, C, H, W);
    PlaneOut<T> yout(y, ys, C, H, W);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % C;
      int64_t sh, sw, oh, ow;
      const T* xp = xin.get(p, end, sh, sw);
      for (int64_t h0 = 0; h0 < H; h0 += kRowBlock) {  // row by row: a row's box sums (k' x Wp) stay in L1
        const int64_t nr = std::min<int64_t>(kRowBlock, H - h0);
        load_rows(xp + h0 * sh, sh, sw, W, nr, buf.lv, pl);
        for (int64_t r = 0; r < nr; ++r) {
          row_cells(buf.lv, r, W, Wp, buf.R, Wp);
          contract(w + c * Ga * Gb, Ga, Gb, buf.R, Wp, Wp, buf.Tm + (h0 + r) * Wp, H * Wp);
        }
      }
      col_taps(buf.Tm, H, Wp, taps, buf.acc);
      T* out = yout.get(p, end, oh, ow);
      for (int64_t i = 0; i < H; ++i) row_out(out + i * oh, buf.acc + i * Wp, W, ow);
    }
    yout.flush();
  });
}

// Row taps of the transposed W cells: every (v, b) of every cell, as offsets into a zero-margined row buffer of U
// (pl_u zeros, Wp values, pr_u zeros per cell b): gx[j] = sum_(v, b) U[b, j - v].
struct RowTaps {
  std::vector<int64_t> off;  // b * len + pl_u - v
  int64_t pl_u = 0, len = 0;
  RowTaps(const Cells& cw, int64_t Wp) {
    pl_u = std::max<int64_t>(0, cw.max_hi());
    len = round_up(pl_u + Wp + std::max<int64_t>(0, -cw.min_lo()), 8);
    for (int64_t b = 0; b < cw.size(); ++b)
      for (int64_t v = cw.lo[b]; v <= cw.hi[b]; ++v) off.push_back(b * len + pl_u - v);
  }
};

// Both gradients of one plane set in one pass, sharing V[a, r, :] = sum_{u in cell a} gy[r - u, :]:
//   grad_w[a, b] = sum_{h, j} V[a, h, j] R[b, h, j]           (R = row box sums of x)
//   grad_x[h, j] = sum_b sum_{v in cell b} U[b, h, j - v]     with U[b, h, :] = sum_a w[a, b] V[a, h, :]
// (the transpose of the forward: column boxes, contraction with w^T, then row boxes). Either output may be skipped.
template <typename T>
void backward_impl(const T* x, const Strides& xs, const T* gy, const Strides& gs, const T* wt, T* gx,
                   const Strides& gxs, double* gw_planes, int64_t N, int64_t C, int64_t H, int64_t W, const Cells& ch,
                   const Cells& cw) {
  constexpr int VN = kVN<T>;
  const int64_t Ga = ch.size(), Gb = cw.size(), Wp = round_up(W, VN);
  const int64_t pl = std::max<int64_t>(0, -cw.min_lo()), pr = std::max<int64_t>(0, cw.max_hi()) + (Wp - W);
  const RowTaps rtaps(cw, Wp);
  const int64_t ntaps = static_cast<int64_t>(rtaps.off.size());
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    PlaneBuffers<T> buf(H, Wp, pl, pr, cw, Ga);
    const ColLevels<T> cl(ch, H, Wp);
    at::Tensor ustore = at::zeros({Gb * rtaps.len}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
    T* U = ustore.data_ptr<T>();
    PlaneIn<T> gin(gy, gs, C, H, W), xin(x, xs, C, H, W);
    PlaneOut<T> gxout(gx, gxs, C, H, W);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % C;
      int64_t sh, sw;
      const T* gp = gin.get(p, end, sh, sw);
      cl.box(gp, sh, sw, H, W, buf.Tm);  // V
      if (gw_planes != nullptr) {
        const T* xp = xin.get(p, end, sh, sw);
        row_box(xp, sh, sw, H, W, Wp, buf.lv, pl, buf.R);
        double* out = gw_planes + p * Ga * Gb;
        std::fill(out, out + Ga * Gb, 0.0);
        gram(buf.Tm, Ga, buf.R, Gb, H * Wp, out);
      }
      if (gx != nullptr) {
        int64_t oh, ow;
        T* out = gxout.get(p, end, oh, ow);
        for (int64_t h = 0; h < H; ++h) {
          contract(wt + c * Ga * Gb, Gb, Ga, buf.Tm + h * Wp, Wp, H * Wp, U + rtaps.pl_u, rtaps.len);
          // U's tail (j >= W) is zero: V of the zero-padded gy; the row (Wp) is assembled in acc, then cropped
          T* row = buf.acc;
          int64_t j0 = 0;
          for (; j0 + 4 * VN <= Wp; j0 += 4 * VN) {
            V<T> acc[4];
            sum_taps<T, 4, 2>(U + j0, rtaps.off.data(), 0, ntaps, acc);
            for (int m = 0; m < 4; ++m) vstore(row + j0 + m * VN, acc[m]);
          }
          for (; j0 < Wp; j0 += VN) {
            V<T> acc[1];
            sum_taps<T, 1, 4>(U + j0, rtaps.off.data(), 0, ntaps, acc);
            vstore(row + j0, acc[0]);
          }
          row_out(out + h * oh, row, W, ow);
        }
      }
    }
    if (gx != nullptr) gxout.flush();
  });
}

void check_x(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 4, name, " must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", x.scalar_type());
}

}  // namespace

// y = peripheral conv of x (N, C, H, W), any memory layout (y has x's), with block weights w (C, Gh, Gw).
torch::Tensor forward(torch::Tensor x, torch::Tensor w, std::vector<int64_t> lo_h, std::vector<int64_t> hi_h,
                      std::vector<int64_t> lo_w, std::vector<int64_t> hi_w) {
  check_x(x, "x");
  const Cells ch = make_cells(lo_h, hi_h, "H"), cw = make_cells(lo_w, hi_w, "W");
  w = w.to(x.scalar_type()).contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(w.dim() == 3 && w.size(0) == C && w.size(1) == ch.size() && w.size(2) == cw.size(), "w must be (C, Gh, "
              "Gw) = (", C, ", ", ch.size(), ", ", cw.size(), "), got ", w.sizes());
  auto y = torch::empty_like(x);
  if (x.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pelk_periconv_forward", [&] {
    forward_impl<scalar_t>(x.data_ptr<scalar_t>(), Strides(x), w.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                           Strides(y), N, C, H, W, ch, cw);
  });
  return y;
}

// (grad_x, grad_w) of y = forward(x, w) for grad_output gy (any layouts; grad_x has x's); a skipped one is returned
// undefined (None). grad_w (C, Gh, Gw) is accumulated in float64.
std::vector<torch::Tensor> backward(torch::Tensor x, torch::Tensor gy, torch::Tensor w, std::vector<int64_t> lo_h,
                                    std::vector<int64_t> hi_h, std::vector<int64_t> lo_w, std::vector<int64_t> hi_w,
                                    bool need_gx, bool need_gw) {
  check_x(x, "x");
  check_x(gy, "grad_output");
  TORCH_CHECK(x.sizes() == gy.sizes(), "x and grad_output shapes differ: ", x.sizes(), " vs ", gy.sizes());
  const Cells ch = make_cells(lo_h, hi_h, "H"), cw = make_cells(lo_w, hi_w, "W");
  gy = gy.to(x.scalar_type());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(w.dim() == 3 && w.size(0) == C && w.size(1) == ch.size() && w.size(2) == cw.size(), "w must be (C, Gh, "
              "Gw) = (", C, ", ", ch.size(), ", ", cw.size(), "), got ", w.sizes());
  auto wt = w.to(x.scalar_type()).transpose(1, 2).contiguous();  // (C, Gw, Gh)
  torch::Tensor gx, planes;
  if (need_gx) gx = torch::empty_like(x);
  if (need_gw) planes = torch::zeros({N, C, ch.size(), cw.size()}, x.options().dtype(at::kDouble));
  if (x.numel() > 0 && (need_gx || need_gw)) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pelk_periconv_backward", [&] {
      const Strides gxs = need_gx ? Strides(gx) : Strides(x);
      backward_impl<scalar_t>(x.data_ptr<scalar_t>(), Strides(x), gy.data_ptr<scalar_t>(), Strides(gy),
                              wt.data_ptr<scalar_t>(), need_gx ? gx.data_ptr<scalar_t>() : nullptr, gxs,
                              need_gw ? planes.data_ptr<double>() : nullptr, N, C, H, W, ch, cw);
    });
  }
  torch::Tensor gw;
  if (need_gw) gw = planes.sum(0).to(x.scalar_type());
  return {gx, gw};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "peripheral conv forward (CPU, structure-aware)");
  m.def("backward", &backward, "peripheral conv (grad_x, grad_w), one fused pass (CPU, structure-aware)");
}
