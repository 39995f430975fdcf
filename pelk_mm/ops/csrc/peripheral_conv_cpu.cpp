// Structure-aware CPU kernels for the depthwise peripheral convolution (pelk_mm.ops).
//
// The dense K x K kernel of one channel is W[u, v] = w[a(u), b(v)] with k' x k' block-shared weights w, so
//   y[i, j] = sum_a sum_b w[a, b] * sum_{u in cell a} sum_{v in cell b} x[i + u, j + v]   (zero outside the map)
// where cell a spans the tap offsets [lo_h[a], hi_h[a]] (relative to the kernel centre) and cell b spans
// [lo_w[b], hi_w[b]]. Per plane (n, c) we compute
//   1. R[b, h, :] = row box sums of x over the offsets of W-cell b           (K adds / pixel)
//   2. T[a, h, :] = sum_b w[a, b] R[b, h, :]                                  (k'_h * k'_w FMAs / pixel)
//   3. y[i, :]    = sum_a sum_{u in cell a} T[a, i + u, :]                    (K adds / pixel)
// i.e. O(K + k'^2) work per pixel instead of O(K^2). All loops vectorise over the (padded) row.
// Backward: grad_x is the same operator with the flipped weights and mirrored cells (done by the caller);
//   grad_w[a, b] = sum_{h, j} V[a, h, j] R[b, h, j] with V[a, r, :] = sum_{u in cell a} gy[r - u, :].
// Everything runs per plane in thread-private, cache-sized buffers (at::parallel_for over N * C planes).
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

// Doubling ("sparse table") box sums along a padded row: lvl[k][j] = sum_{v < 2^k} row[j + v]. A cell of width s
// starting at offset lo is the sum of popcount(s) shifted levels, so a whole grid costs ~log2(max s) + sum popcount
// adds per pixel instead of K. Only short exact sums (no prefix differences), so rounding is like direct summation.
template <typename T>
struct RowLevels {
  int64_t nlev = 1, len = 0;
  T* data = nullptr;  // nlev rows of len; row 0 is the padded input row
  T* level(int64_t k) const { return data + k * len; }
};

template <typename T>
void build_levels(RowLevels<T>& lv, int64_t valid) {
  constexpr int VN = kVN<T>;
  for (int64_t k = 1; k < lv.nlev; ++k) {
    const int64_t shift = int64_t(1) << (k - 1);
    const T* prev = lv.level(k - 1);
    T* cur = lv.level(k);
    const int64_t n = valid - (int64_t(1) << k) + 1;  // positions whose window stays inside the row
    int64_t j = 0;
    for (; j + VN <= n; j += VN) vstore(cur + j, vload(prev + j) + vload(prev + j + shift));
    for (; j < n; ++j) cur[j] = prev[j] + prev[j + shift];
  }
}

// One row: dst[b * S + j] = sum_{v = lo_b}^{hi_b} row[j + v] (zero outside [0, W)) for j < Wp, tail zeroed;
// S = stride between cells. lv.level(0) holds pl zeros, then the row slot, then zeros (sized by PlaneBuffers).
template <typename T>
void row_box_row(const T* row, int64_t W, int64_t Wp, const Cells& cw, RowLevels<T>& lv, int64_t pl, T* dst,
                 int64_t S) {
  constexpr int VN = kVN<T>;
  std::memcpy(lv.level(0) + pl, row, sizeof(T) * W);
  build_levels(lv, lv.len);
  for (int64_t b = 0; b < cw.size(); ++b) {
    T* out = dst + b * S;
    int64_t lev[64], off[64], nt = 0, o = cw.lo[b];  // terms (level, offset), largest level first
    const int64_t width = cw.hi[b] - cw.lo[b] + 1;
    for (int64_t k = lv.nlev - 1; k >= 0; --k) {
      const int64_t step = int64_t(1) << k;
      for (int64_t left = width - (o - cw.lo[b]); left >= step; left -= step) {
        lev[nt] = k;
        off[nt++] = pl + o;
        o += step;
      }
    }
    for (int64_t j0 = 0; j0 < Wp; j0 += VN) {
      V<T> acc = {};
      for (int64_t t = 0; t < nt; ++t) acc += vload(lv.level(lev[t]) + off[t] + j0);
      vstore(out + j0, acc);
    }
    std::fill(out + W, out + Wp, T(0));
  }
}

// Whole plane: dst[b, h, :] = row box sums of src[h, :] (layout [cell][row][Wp]).
template <typename T>
void row_box(const T* src, int64_t H, int64_t W, int64_t Wp, const Cells& cw, RowLevels<T>& lv, int64_t pl,
             T* dst) {
  for (int64_t h = 0; h < H; ++h) row_box_row(src + h * W, W, Wp, cw, lv, pl, dst + h * Wp, H * Wp);
}

// dst[a * D + t] = sum_b w[a, b] src[b * S + t] for t < L (a multiple of the vector width); S, D = strides between
// cells. Blocks of NA rows of w x 2 vectors of t live in registers (2 * NA accumulators).
template <typename T, int NA>
inline void contract_block(const T* w, int64_t Gb, const T* src, int64_t S, int64_t t0, T* dst, int64_t D) {
  constexpr int VN = kVN<T>;
  V<T> c0[NA], c1[NA];
  for (int k = 0; k < NA; ++k) c0[k] = c1[k] = V<T>{};
  for (int64_t b = 0; b < Gb; ++b) {
    const V<T> r0 = vload(src + b * S + t0), r1 = vload(src + b * S + t0 + VN);
    for (int k = 0; k < NA; ++k) {
      const T wk = w[k * Gb + b];
      c0[k] += wk * r0;
      c1[k] += wk * r1;
    }
  }
  for (int k = 0; k < NA; ++k) {
    vstore(dst + k * D + t0, c0[k]);
    vstore(dst + k * D + t0 + VN, c1[k]);
  }
}

template <typename T>
void contract(const T* w, int64_t Ga, int64_t Gb, const T* src, int64_t L, int64_t S, T* dst, int64_t D) {
  constexpr int VN = kVN<T>;
  int64_t t0 = 0;
  for (; t0 + 2 * VN <= L; t0 += 2 * VN) {
    int64_t a = 0;
    for (; a + 6 <= Ga; a += 6) contract_block<T, 6>(w + a * Gb, Gb, src, S, t0, dst + a * D, D);
    switch (Ga - a) {
      case 5: contract_block<T, 5>(w + a * Gb, Gb, src, S, t0, dst + a * D, D); break;
      case 4: contract_block<T, 4>(w + a * Gb, Gb, src, S, t0, dst + a * D, D); break;
      case 3: contract_block<T, 3>(w + a * Gb, Gb, src, S, t0, dst + a * D, D); break;
      case 2: contract_block<T, 2>(w + a * Gb, Gb, src, S, t0, dst + a * D, D); break;
      case 1: contract_block<T, 1>(w + a * Gb, Gb, src, S, t0, dst + a * D, D); break;
      default: break;
    }
  }
  for (; t0 < L; t0 += VN) {
    for (int64_t a = 0; a < Ga; ++a) {
      V<T> c0 = {};
      for (int64_t b = 0; b < Gb; ++b) c0 += w[a * Gb + b] * vload(src + b * S + t0);
      vstore(dst + a * D + t0, c0);
    }
  }
}

// dst[i, :] = sum_c sum_{r = i + lo_c}^{i + hi_c} src[c, r, :] over cells c (rows r in [0, H)); rows are Wp long.
// sign = -1 uses the transposed box: rows i - [lo_c, hi_c].
template <typename T>
void col_box(const T* src, int64_t H, int64_t Wp, const int64_t* lo, const int64_t* hi, int64_t G, int64_t sign,
             T* dst) {
  constexpr int VN = kVN<T>;
  for (int64_t i = 0; i < H; ++i) {
    int64_t j0 = 0;
    for (; j0 + 4 * VN <= Wp; j0 += 4 * VN) {
      V<T> a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int64_t c = 0; c < G; ++c) {
        const int64_t e0 = sign > 0 ? i + lo[c] : i - hi[c], e1 = sign > 0 ? i + hi[c] : i - lo[c];
        const int64_t r0 = std::max<int64_t>(0, e0), r1 = std::min<int64_t>(H - 1, e1);
        const T* s = src + c * H * Wp + j0;
        for (int64_t r = r0; r <= r1; ++r) {
          a0 += vload(s + r * Wp);
          a1 += vload(s + r * Wp + VN);
          a2 += vload(s + r * Wp + 2 * VN);
          a3 += vload(s + r * Wp + 3 * VN);
        }
      }
      vstore(dst + i * Wp + j0, a0);
      vstore(dst + i * Wp + j0 + VN, a1);
      vstore(dst + i * Wp + j0 + 2 * VN, a2);
      vstore(dst + i * Wp + j0 + 3 * VN, a3);
    }
    for (; j0 < Wp; j0 += VN) {
      V<T> a0 = {};
      for (int64_t c = 0; c < G; ++c) {
        const int64_t e0 = sign > 0 ? i + lo[c] : i - hi[c], e1 = sign > 0 ? i + hi[c] : i - lo[c];
        const int64_t r0 = std::max<int64_t>(0, e0), r1 = std::min<int64_t>(H - 1, e1);
        for (int64_t r = r0; r <= r1; ++r) a0 += vload(src + c * H * Wp + r * Wp + j0);
      }
      vstore(dst + i * Wp + j0, a0);
    }
  }
}

template <typename T>
inline double hsum(V<T> v) {
  double s = 0;
  for (int k = 0; k < kVN<T>; ++k) s += v[k];
  return s;
}

// out[a, b] += sum_t V[a, t] R[b, t] over L (multiple of the vector width) elements: blocks of NA rows of V x 2 rows
// of R in registers (2 * NA accumulators), partial sums flushed to double every kFlush vectors.
template <typename T, int NA>
inline void gram_block(const T* const* v, const T* r0, const T* r1, int64_t L, double (*s)[2]) {
  constexpr int VN = kVN<T>;
  constexpr int64_t kFlush = 32;
  for (int64_t t0 = 0; t0 < L; t0 += kFlush * VN) {
    const int64_t t1 = std::min<int64_t>(L, t0 + kFlush * VN);
    V<T> c0[NA], c1[NA];
    for (int k = 0; k < NA; ++k) c0[k] = c1[k] = V<T>{};
    for (int64_t t = t0; t < t1; t += VN) {
      const V<T> x0 = vload(r0 + t), x1 = vload(r1 + t);
      for (int k = 0; k < NA; ++k) {
        const V<T> y = vload(v[k] + t);
        c0[k] += y * x0;
        c1[k] += y * x1;
      }
    }
    for (int k = 0; k < NA; ++k) {
      s[k][0] += hsum<T>(c0[k]);
      s[k][1] += hsum<T>(c1[k]);
    }
  }
}

template <typename T>
void gram(const T* Vm, int64_t Ga, const T* R, int64_t Gb, int64_t L, double* out) {
  constexpr int NA = 6;
  for (int64_t a = 0; a < Ga; a += NA) {
    const int64_t na = std::min<int64_t>(NA, Ga - a);
    const T* v[NA];
    for (int64_t k = 0; k < NA; ++k) v[k] = Vm + std::min<int64_t>(a + k, Ga - 1) * L;
    for (int64_t b = 0; b < Gb; b += 2) {
      const int64_t nb = std::min<int64_t>(2, Gb - b);
      const T* r0 = R + b * L;
      const T* r1 = R + std::min<int64_t>(b + 1, Gb - 1) * L;  // short block: duplicate, not stored
      double s[NA][2] = {};
      switch (na) {
        case 6: gram_block<T, 6>(v, r0, r1, L, s); break;
        case 5: gram_block<T, 5>(v, r0, r1, L, s); break;
        case 4: gram_block<T, 4>(v, r0, r1, L, s); break;
        case 3: gram_block<T, 3>(v, r0, r1, L, s); break;
        case 2: gram_block<T, 2>(v, r0, r1, L, s); break;
        default: gram_block<T, 1>(v, r0, r1, L, s); break;
      }
      for (int64_t k = 0; k < na; ++k)
        for (int64_t m = 0; m < nb; ++m) out[(a + k) * Gb + b + m] += s[k][m];
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
    const int64_t Gb = cw.size(), nR = Gb * H * Wp, nT = Ga * H * Wp, nacc = H * Wp;
    storage = at::zeros({lv.nlev * lv.len + nR + nT + nacc},
                        at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
    lv.data = storage.data_ptr<T>();
    R = lv.data + lv.nlev * lv.len;
    Tm = R + nR;
    acc = Tm + nT;
  }
};

template <typename T>
void forward_impl(const T* x, const T* w, T* y, int64_t N, int64_t C, int64_t H, int64_t W, const Cells& ch,
                  const Cells& cw) {
  const int64_t Ga = ch.size(), Gb = cw.size(), Wp = round_up(W, kVN<T>);
  const int64_t pl = std::max<int64_t>(0, -cw.min_lo()), pr = std::max<int64_t>(0, cw.max_hi()) + (Wp - W);
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    PlaneBuffers<T> buf(H, Wp, pl, pr, cw, Ga);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % C;
      for (int64_t h = 0; h < H; ++h) {  // row by row: the row's box sums (k' x Wp) stay in L1
        row_box_row(x + (p * H + h) * W, W, Wp, cw, buf.lv, pl, buf.R, Wp);
        contract(w + c * Ga * Gb, Ga, Gb, buf.R, Wp, Wp, buf.Tm + h * Wp, H * Wp);
      }
      col_box(buf.Tm, H, Wp, ch.lo.data(), ch.hi.data(), Ga, 1, buf.acc);
      T* out = y + p * H * W;
      for (int64_t i = 0; i < H; ++i) std::memcpy(out + i * W, buf.acc + i * Wp, sizeof(T) * W);
    }
  });
}

template <typename T>
void grad_weight_impl(const T* x, const T* gy, double* gw_planes, int64_t N, int64_t C, int64_t H, int64_t W,
                      const Cells& ch, const Cells& cw) {
  const int64_t Ga = ch.size(), Gb = cw.size(), Wp = round_up(W, kVN<T>);
  const int64_t pl = std::max<int64_t>(0, -cw.min_lo()), pr = std::max<int64_t>(0, cw.max_hi()) + (Wp - W);
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    PlaneBuffers<T> buf(H, Wp, pl, pr, cw, Ga);
    for (int64_t p = begin; p < end; ++p) {
      row_box(x + p * H * W, H, W, Wp, cw, buf.lv, pl, buf.R);
      // gy rows padded to Wp with zeros, then V[a, r, :] = sum_{u in cell a} gy[r - u, :]
      const T* g = gy + p * H * W;
      for (int64_t i = 0; i < H; ++i) {
        T* dst = buf.acc + i * Wp;
        std::memcpy(dst, g + i * W, sizeof(T) * W);
        std::fill(dst + W, dst + Wp, T(0));
      }
      for (int64_t a = 0; a < Ga; ++a)
        col_box(buf.acc, H, Wp, ch.lo.data() + a, ch.hi.data() + a, 1, -1, buf.Tm + a * H * Wp);
      double* out = gw_planes + p * Ga * Gb;
      std::fill(out, out + Ga * Gb, 0.0);
      gram(buf.Tm, Ga, buf.R, Gb, H * Wp, out);
    }
  });
}

void check_x(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 4, name, " must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", x.scalar_type());
}

}  // namespace

// y = peripheral conv of x (N, C, H, W) with block weights w (C, Gh, Gw) over the given cells.
torch::Tensor forward(torch::Tensor x, torch::Tensor w, std::vector<int64_t> lo_h, std::vector<int64_t> hi_h,
                      std::vector<int64_t> lo_w, std::vector<int64_t> hi_w) {
  check_x(x, "x");
  const Cells ch = make_cells(lo_h, hi_h, "H"), cw = make_cells(lo_w, hi_w, "W");
  x = x.contiguous();
  w = w.to(x.scalar_type()).contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(w.dim() == 3 && w.size(0) == C && w.size(1) == ch.size() && w.size(2) == cw.size(), "w must be (C, Gh, "
              "Gw) = (", C, ", ", ch.size(), ", ", cw.size(), "), got ", w.sizes());
  auto y = torch::empty_like(x);
  if (x.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pelk_periconv_forward", [&] {
    forward_impl<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), N, C, H, W, ch,
                           cw);
  });
  return y;
}

// grad of sum(gy * y) w.r.t. the block weights: (C, Gh, Gw), accumulated in float64.
torch::Tensor grad_weight(torch::Tensor x, torch::Tensor gy, std::vector<int64_t> lo_h, std::vector<int64_t> hi_h,
                          std::vector<int64_t> lo_w, std::vector<int64_t> hi_w) {
  check_x(x, "x");
  check_x(gy, "grad_output");
  TORCH_CHECK(x.sizes() == gy.sizes(), "x and grad_output shapes differ: ", x.sizes(), " vs ", gy.sizes());
  const Cells ch = make_cells(lo_h, hi_h, "H"), cw = make_cells(lo_w, hi_w, "W");
  x = x.contiguous();
  gy = gy.to(x.scalar_type()).contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto planes = torch::zeros({N, C, ch.size(), cw.size()}, x.options().dtype(at::kDouble));
  if (x.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pelk_periconv_grad_weight", [&] {
      grad_weight_impl<scalar_t>(x.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(), planes.data_ptr<double>(), N, C, H,
                                 W, ch, cw);
    });
  }
  return planes.sum(0).to(x.scalar_type());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "peripheral conv forward (CPU, structure-aware)");
  m.def("grad_weight", &grad_weight, "peripheral conv grad wrt block weights (CPU, structure-aware)");
}
