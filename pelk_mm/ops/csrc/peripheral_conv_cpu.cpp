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

template <typename T>
constexpr int kBlock = 64 / sizeof(T);  // elements per inner chunk: two AVX2 registers

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

// dst[b, h, j] = sum_{v = lo_b}^{hi_b} src[h, j + v] (zero outside [0, W)); dst rows are Wp long, tail zeroed.
template <typename T>
void row_box(const T* src, int64_t H, int64_t W, int64_t Wp, const Cells& cw, T* xrow, int64_t pl, T* dst) {
  constexpr int JB = kBlock<T>;
  const int64_t G = cw.size();
  for (int64_t h = 0; h < H; ++h) {
    std::memcpy(xrow + pl, src + h * W, sizeof(T) * W);
    for (int64_t b = 0; b < G; ++b) {
      T* out = dst + (b * H + h) * Wp;
      for (int64_t j0 = 0; j0 < Wp; j0 += JB) {
        T acc[JB] = {0};
        for (int64_t v = cw.lo[b]; v <= cw.hi[b]; ++v) {
          const T* s = xrow + pl + j0 + v;
#pragma omp simd
          for (int jj = 0; jj < JB; ++jj) acc[jj] += s[jj];
        }
        std::memcpy(out + j0, acc, sizeof(acc));
      }
      std::fill(out + W, out + Wp, T(0));
    }
  }
}

// dst[a, :] = sum_b w[a, b] src[b, :] over L (a multiple of kBlock) elements; register-blocked 4 rows of a.
template <typename T>
void contract(const T* w, int64_t Ga, int64_t Gb, const T* src, int64_t L, T* dst) {
  constexpr int JB = kBlock<T>;
  for (int64_t t0 = 0; t0 < L; t0 += JB) {
    int64_t a = 0;
    for (; a + 4 <= Ga; a += 4) {
      T acc0[JB] = {0}, acc1[JB] = {0}, acc2[JB] = {0}, acc3[JB] = {0};
      for (int64_t b = 0; b < Gb; ++b) {
        const T* r = src + b * L + t0;
        const T w0 = w[a * Gb + b], w1 = w[(a + 1) * Gb + b], w2 = w[(a + 2) * Gb + b], w3 = w[(a + 3) * Gb + b];
#pragma omp simd
        for (int jj = 0; jj < JB; ++jj) {
          acc0[jj] += w0 * r[jj];
          acc1[jj] += w1 * r[jj];
          acc2[jj] += w2 * r[jj];
          acc3[jj] += w3 * r[jj];
        }
      }
      std::memcpy(dst + a * L + t0, acc0, sizeof(acc0));
      std::memcpy(dst + (a + 1) * L + t0, acc1, sizeof(acc1));
      std::memcpy(dst + (a + 2) * L + t0, acc2, sizeof(acc2));
      std::memcpy(dst + (a + 3) * L + t0, acc3, sizeof(acc3));
    }
    for (; a < Ga; ++a) {
      T acc[JB] = {0};
      for (int64_t b = 0; b < Gb; ++b) {
        const T* r = src + b * L + t0;
        const T wa = w[a * Gb + b];
#pragma omp simd
        for (int jj = 0; jj < JB; ++jj) acc[jj] += wa * r[jj];
      }
      std::memcpy(dst + a * L + t0, acc, sizeof(acc));
    }
  }
}

// dst[i, :] = sum_c sum_{r = i + lo_c}^{i + hi_c} src[c, r, :] over cells c (rows r in [0, H)); rows are Wp long.
template <typename T>
void col_box(const T* src, int64_t H, int64_t Wp, const int64_t* lo, const int64_t* hi, int64_t G, int64_t sign,
             T* dst) {
  constexpr int JB = kBlock<T>;
  for (int64_t i = 0; i < H; ++i) {
    for (int64_t j0 = 0; j0 < Wp; j0 += JB) {
      T acc[JB] = {0};
      for (int64_t c = 0; c < G; ++c) {
        // sign = +1: rows i + [lo, hi]; sign = -1: rows i - [lo, hi] (the transposed box)
        const int64_t a0 = sign > 0 ? i + lo[c] : i - hi[c], a1 = sign > 0 ? i + hi[c] : i - lo[c];
        const int64_t r0 = std::max<int64_t>(0, a0), r1 = std::min<int64_t>(H - 1, a1);
        const T* s = src + c * H * Wp + j0;
        for (int64_t r = r0; r <= r1; ++r) {
#pragma omp simd
          for (int jj = 0; jj < JB; ++jj) acc[jj] += s[r * Wp + jj];
        }
      }
      std::memcpy(dst + i * Wp + j0, acc, sizeof(acc));
    }
  }
}

// out[a, b] += sum_t V[a, t] R[b, t] over L (multiple of kBlock) elements, float lanes flushed to double.
template <typename T>
void gram(const T* V, int64_t Ga, const T* R, int64_t Gb, int64_t L, double* out) {
  constexpr int JB = kBlock<T>;
  constexpr int64_t kFlush = 16;  // chunks summed in T before flushing to double
  auto flush = [&](const T* acc, int64_t idx) {
    double s = 0;
    for (int jj = 0; jj < JB; ++jj) s += acc[jj];
    out[idx] += s;
  };
  int64_t a = 0;
  for (; a < Ga; a += 4) {
    const int64_t na = std::min<int64_t>(4, Ga - a);
    for (int64_t b = 0; b < Gb; ++b) {
      const T* r = R + b * L;
      T acc[4][JB] = {};
      int64_t n = 0;
      for (int64_t t0 = 0; t0 < L; t0 += JB) {
        for (int64_t k = 0; k < na; ++k) {
          const T* v = V + (a + k) * L + t0;
#pragma omp simd
          for (int jj = 0; jj < JB; ++jj) acc[k][jj] += v[jj] * r[t0 + jj];
        }
        if (++n == kFlush || t0 + JB >= L) {
          for (int64_t k = 0; k < na; ++k) {
            flush(acc[k], (a + k) * Gb + b);
            std::fill(acc[k], acc[k] + JB, T(0));
          }
          n = 0;
        }
      }
    }
  }
}

// Thread-private scratch, allocated through ATen's CPU allocator (so torch.profiler memory stats include it).
template <typename T>
struct PlaneBuffers {
  at::Tensor storage;
  T *xrow, *R, *Tm, *acc;
  PlaneBuffers(int64_t H, int64_t Wp, int64_t pl, int64_t pr, int64_t Gb, int64_t Ga) {
    const int64_t nrow = pl + Wp + pr, nR = Gb * H * Wp, nT = Ga * H * Wp, nacc = H * Wp;
    storage = at::zeros({nrow + nR + nT + nacc}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
    xrow = storage.data_ptr<T>();
    R = xrow + nrow;
    Tm = R + nR;
    acc = Tm + nT;
  }
};

template <typename T>
void forward_impl(const T* x, const T* w, T* y, int64_t N, int64_t C, int64_t H, int64_t W, const Cells& ch,
                  const Cells& cw) {
  const int64_t Ga = ch.size(), Gb = cw.size(), Wp = round_up(W, kBlock<T>);
  const int64_t pl = std::max<int64_t>(0, -cw.min_lo()), pr = std::max<int64_t>(0, cw.max_hi()) + (Wp - W);
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    PlaneBuffers<T> buf(H, Wp, pl, pr, Gb, Ga);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % C;
      row_box(x + p * H * W, H, W, Wp, cw, buf.xrow, pl, buf.R);
      contract(w + c * Ga * Gb, Ga, Gb, buf.R, H * Wp, buf.Tm);
      col_box(buf.Tm, H, Wp, ch.lo.data(), ch.hi.data(), Ga, 1, buf.acc);
      T* out = y + p * H * W;
      for (int64_t i = 0; i < H; ++i) std::memcpy(out + i * W, buf.acc + i * Wp, sizeof(T) * W);
    }
  });
}

template <typename T>
void grad_weight_impl(const T* x, const T* gy, double* gw_planes, int64_t N, int64_t C, int64_t H, int64_t W,
                      const Cells& ch, const Cells& cw) {
  const int64_t Ga = ch.size(), Gb = cw.size(), Wp = round_up(W, kBlock<T>);
  const int64_t pl = std::max<int64_t>(0, -cw.min_lo()), pr = std::max<int64_t>(0, cw.max_hi()) + (Wp - W);
  at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
    PlaneBuffers<T> buf(H, Wp, pl, pr, Gb, Ga);
    for (int64_t p = begin; p < end; ++p) {
      row_box(x + p * H * W, H, W, Wp, cw, buf.xrow, pl, buf.R);
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
