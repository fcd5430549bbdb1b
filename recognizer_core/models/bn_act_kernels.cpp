// Fused training-mode BatchNorm (+ residual) (+ ReLU) over channels-last activations, for CPU training.
// Loaded by cpu_kernels.py (torch.utils.cpp_extension, compiled once per machine, with gcn_kernels.cpp) and used through
// bn_act.py; the ops are torch.ops.recognizer.bn_*.
//
// Why: on a CPU the eager STGCN++ step spends about a third of its time in memory-bound BatchNorm / ReLU /
// residual-add passes and the copies around the mstcn branches. Eager PyTorch runs each as its own pass over a tensor larger
// than the caches. Here one forward is two passes (statistics; normalise + add + ReLU) and one backward two passes
// (masked sums; input gradient), and the activations may arrive and leave as several channel blocks (the mstcn
// branches), so no concatenation or split is ever materialised.
//
// Layout: every tensor is a row-major (rows, channels) matrix: an (n, c, t, v) channels_last tensor is one, with
// rows = n*t*v. The channel axis may be split into blocks differently on the input side (`xs`) and the output side
// (`outs`, `grads`). A split of several blocks is gathered into (or scattered from) a small per-thread buffer, a
// block of rows at a time, so the hot loops always run over whole rows: looping over each ~21-channel piece instead
// left a scalar tail per piece and made the mstcn heads' backward 2x slower than the same data in one block.
//
// Numerics: sums are accumulated in the compute type over 16 rows, then in double per fixed row chunk, and the chunks
// are added in order, so the result does not depend on thread timing (the same thread count gives the same bits).
//
// Types: float32 and float64 compute in their own type. bfloat16 activations (CPU bf16 autocast, where the convs
// and GEMMs output bf16) are read into float32, computed in float32 with float32 scale / shift / gradient
// coefficients, and rounded to the nearest even bf16 when stored, as PyTorch's own bf16 kernels do: half the bytes
// of float32 through these memory-bound passes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// One build runs on any x86-64 (a prebuilt image may move between hosts): the hot loops are compiled for AVX-512,
// AVX2 and the baseline, picked at load time.
#define RECOGNIZER_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RECOGNIZER_CLONES
#endif

namespace {

// Element type T of the activations, compute type of T (the type of scale, shift and the gradient coefficients).
template <typename T> struct Compute { using type = T; };
template <> struct Compute<at::BFloat16> { using type = float; };
template <typename T> using compute_t = typename Compute<T>::type;

// Loads and stores between T and its compute type. bf16 <-> float written on the bits (plain integer shifts and
// selects), so GCC vectorises them; the store rounds to nearest even and keeps NaN a NaN, as c10::BFloat16 does.
template <typename T> inline __attribute__((always_inline)) compute_t<T> ld(T v) { return v; }
template <typename T> inline __attribute__((always_inline)) T st(compute_t<T> v) { return v; }
template <> inline __attribute__((always_inline)) float ld<at::BFloat16>(at::BFloat16 v) {
  uint32_t bits = uint32_t(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
template <> inline __attribute__((always_inline)) at::BFloat16 st<at::BFloat16>(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  uint16_t rounded = uint16_t((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
  at::BFloat16 out;
  out.x = f != f ? uint16_t(0x7FC0) : rounded;
  return out;
}

std::vector<int64_t> widths(const std::vector<at::Tensor>& ts, int64_t rows, const char* what,
                            c10::optional<at::ScalarType> dtype = c10::nullopt) {
  std::vector<int64_t> w;
  for (const auto& t : ts) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.is_contiguous() && t.device().is_cpu(),
                what, ": expected contiguous CPU (rows, channels) blocks with ", rows, " rows, got ", t.sizes());
    TORCH_CHECK(!dtype || t.scalar_type() == *dtype, what, ": expected ", *dtype, ", got ", t.scalar_type());
    w.push_back(t.size(1));
  }
  return w;
}

// Row chunks: a fixed split (not one per thread) so that the order of the double sums is fixed.
int64_t chunk_rows(int64_t rows) {
  int64_t per = (rows + 4 * at::get_num_threads() - 1) / (4 * at::get_num_threads());
  return std::max<int64_t>(per, 64);
}

constexpr int64_t BLOCK_ROWS = 64;  // rows per hot-loop call; a gathered block of rows stays in L1/L2

// One channel split of a (rows, channels) matrix: its blocks' pointers and widths.
template <typename T>
struct Split {
  std::vector<T*> ptr;
  std::vector<int64_t> width;
  int64_t channels = 0;
  explicit Split(const std::vector<at::Tensor>& ts) {
    for (const auto& t : ts) ptr.push_back(const_cast<T*>(t.data_ptr<T>())), width.push_back(t.size(1));
    for (auto w : width) channels += w;
  }
  bool single() const { return ptr.size() == 1; }
  // rows [r, r + k) as a contiguous (k, channels) matrix: the tensor itself, or gathered into buf
  const T* rows(int64_t r, int64_t k, T* buf) const {
    if (single()) return ptr[0] + r * channels;
    for (int64_t i = 0; i < k; ++i) {
      T* dst = buf + i * channels;
      for (size_t b = 0; b < ptr.size(); ++b, dst += width[b - 1])
        std::memcpy(dst, ptr[b] + (r + i) * width[b], width[b] * sizeof(T));
    }
    return buf;
  }
  // where to write rows [r, r + k): the tensor itself, or buf (then scatter())
  T* out_rows(int64_t r, T* buf) const { return single() ? ptr[0] + r * channels : buf; }
  void scatter(int64_t r, int64_t k, const T* buf) const {
    if (single()) return;
    for (int64_t i = 0; i < k; ++i) {
      const T* src = buf + i * channels;
      for (size_t b = 0; b < ptr.size(); ++b, src += width[b - 1])
        std::memcpy(ptr[b] + (r + i) * width[b], src, width[b] * sizeof(T));
    }
  }
};

// Calls body(first_row, rows) over [r0, r1) in blocks of BLOCK_ROWS.
template <typename F>
inline void blocks(int64_t r0, int64_t r1, F body) {
  for (int64_t r = r0; r < r1; r += BLOCK_ROWS) body(r, std::min(BLOCK_ROWS, r1 - r));
}

// ---- the hot loops: a block of whole rows (pointers at its first row, row strides) ----
// __restrict__: no two of these pointers overlap, so GCC vectorises the channel loop without run-time overlap checks.
// MASK: 0 none, 1 y > 0, 2 x*scale + shift > 0 recomputed. T: the activations' type, C: compute_t<T>.

template <typename C, int MASK>
inline __attribute__((always_inline)) C masked(C dy, C x, C y, C scale, C shift) {
  if (MASK == 1) return y > C(0) ? dy : C(0);
  if (MASK == 2) return (x * scale + shift) > C(0) ? dy : C(0);
  return dy;
}

// The sums run in the compute type over SUB_ROWS rows at a time (a partial per channel, in a local array GCC keeps
// vectorised), and each partial is added to the double sums. Converting every element to double and updating the
// double sums row by row made these passes compute-bound: bn_stats read 10 GB/s, now 26 (a 111 MB tensor, 1 thread,
// the AMD host).
constexpr int64_t SUB_ROWS = 16;
constexpr int64_t TILE = 256;  // channels per partial buffer

template <typename T, typename C = compute_t<T>>
inline __attribute__((always_inline)) void stats_rows(const T* __restrict__ x, int64_t xs, int64_t rows, int64_t n,
                                                       double* __restrict__ s, double* __restrict__ ss) {
  C ps[TILE], pss[TILE];
  for (int64_t c0 = 0; c0 < n; c0 += TILE) {
    const int64_t w = std::min(TILE, n - c0);
    for (int64_t r0 = 0; r0 < rows; r0 += SUB_ROWS) {
      const T* __restrict__ xr = x + r0 * xs + c0;
      for (int64_t c = 0; c < w; ++c) ps[c] = C(0), pss[c] = C(0);
      for (int64_t r = r0; r < std::min(rows, r0 + SUB_ROWS); ++r, xr += xs)
        for (int64_t c = 0; c < w; ++c) {
          C v = ld<T>(xr[c]);
          ps[c] += v;
          pss[c] += v * v;
        }
      for (int64_t c = 0; c < w; ++c) s[c0 + c] += double(ps[c]), ss[c0 + c] += double(pss[c]);
    }
  }
}

template <typename T, bool RES, bool RELU, typename C = compute_t<T>>
inline __attribute__((always_inline)) void apply_rows(const T* __restrict__ x, int64_t xs, const T* __restrict__ res,
                                                       int64_t rs, const C* __restrict__ scale,
                                                       const C* __restrict__ shift, int64_t rows, int64_t n,
                                                       T* __restrict__ y, int64_t ys) {
  for (int64_t r = 0; r < rows; ++r, x += xs, res += RES ? rs : 0, y += ys)
    for (int64_t c = 0; c < n; ++c) {
      C v = ld<T>(x[c]) * scale[c] + shift[c];
      if (RES) v += ld<T>(res[c]);
      y[c] = st<T>((RELU && v < C(0)) ? C(0) : v);  // NaN stays NaN, as torch.relu
    }
}

// g = dy masked by the ReLU; sums of g and g*x (in SUB_ROWS partials, as stats_rows); g written to gres when the
// residual needs its gradient.
template <typename T, int MASK, bool GRES, typename C = compute_t<T>>
inline __attribute__((always_inline)) void reduce_rows(const T* __restrict__ dy, int64_t dys, const T* __restrict__ x,
                                                        int64_t xs, const T* __restrict__ y, int64_t ys,
                                                        const C* __restrict__ scale, const C* __restrict__ shift,
                                                        int64_t rows, int64_t n, double* __restrict__ sg,
                                                        double* __restrict__ sgx, T* __restrict__ gres, int64_t gs) {
  C pg[TILE], pgx[TILE];
  for (int64_t c0 = 0; c0 < n; c0 += TILE) {
    const int64_t w = std::min(TILE, n - c0);
    for (int64_t r0 = 0; r0 < rows; r0 += SUB_ROWS) {
      const T* __restrict__ dyr = dy + r0 * dys + c0;
      const T* __restrict__ xr = x + r0 * xs + c0;
      const T* __restrict__ yr = MASK == 1 ? y + r0 * ys + c0 : nullptr;
      T* __restrict__ gr = GRES ? gres + r0 * gs + c0 : nullptr;
      const C* __restrict__ sc = scale + c0;
      const C* __restrict__ sh = shift + c0;
      for (int64_t c = 0; c < w; ++c) pg[c] = C(0), pgx[c] = C(0);
      for (int64_t r = r0; r < std::min(rows, r0 + SUB_ROWS);
           ++r, dyr += dys, xr += xs, yr += MASK == 1 ? ys : 0, gr += GRES ? gs : 0)
        for (int64_t c = 0; c < w; ++c) {
          C xv = ld<T>(xr[c]);
          C g = masked<C, MASK>(ld<T>(dyr[c]), xv, MASK == 1 ? ld<T>(yr[c]) : C(0), sc[c], sh[c]);
          pg[c] += g;
          pgx[c] += g * xv;
          if (GRES) gr[c] = st<T>(g);
        }
      for (int64_t c = 0; c < w; ++c) sg[c0 + c] += double(pg[c]), sgx[c0 + c] += double(pgx[c]);
    }
  }
}

template <typename T, int MASK, typename C = compute_t<T>>
inline __attribute__((always_inline)) void grad_rows(const T* __restrict__ dy, int64_t dys, const T* __restrict__ x,
                                                      int64_t xs, const T* __restrict__ y, int64_t ys,
                                                      const C* __restrict__ scale, const C* __restrict__ shift,
                                                      const C* __restrict__ k1, const C* __restrict__ k2,
                                                      const C* __restrict__ k3, int64_t rows, int64_t n,
                                                      T* __restrict__ dx, int64_t dxs) {
  for (int64_t r = 0; r < rows; ++r, dy += dys, x += xs, y += MASK == 1 ? ys : 0, dx += dxs)
    for (int64_t c = 0; c < n; ++c) {
      C xv = ld<T>(x[c]);
      C g = masked<C, MASK>(ld<T>(dy[c]), xv, MASK == 1 ? ld<T>(y[c]) : C(0), scale[c], shift[c]);
      dx[c] = st<T>(k1[c] * g + k2[c] * xv + k3[c]);
    }
}

// Non-template entry points, so that target_clones can compile each for several instruction sets; overloaded on T
// (C: its compute type).
#define RECOGNIZER_INSTANCES(T, C)                                                                                 \
  RECOGNIZER_CLONES void stats_block(const T* x, int64_t xs, int64_t rows, int64_t n, double* s, double* ss) {     \
    stats_rows<T>(x, xs, rows, n, s, ss);                                                                          \
  }                                                                                                                \
  RECOGNIZER_CLONES void apply_block(const T* x, int64_t xs, const T* r, int64_t rs, const C* sc, const C* sh,     \
                                     bool relu, int64_t rows, int64_t n, T* y, int64_t ys) {                       \
    if (relu && r) apply_rows<T, true, true>(x, xs, r, rs, sc, sh, rows, n, y, ys);                                \
    else if (relu) apply_rows<T, false, true>(x, xs, r, rs, sc, sh, rows, n, y, ys);                               \
    else if (r) apply_rows<T, true, false>(x, xs, r, rs, sc, sh, rows, n, y, ys);                                  \
    else apply_rows<T, false, false>(x, xs, r, rs, sc, sh, rows, n, y, ys);                                        \
  }                                                                                                                \
  RECOGNIZER_CLONES void reduce_block(const T* dy, int64_t dys, const T* x, int64_t xs, const T* y, int64_t ys,    \
                                      const C* sc, const C* sh, int m, int64_t rows, int64_t n, double* sg,        \
                                      double* sgx, T* gr, int64_t gs) {                                            \
    if (gr && m == 0) reduce_rows<T, 0, true>(dy, dys, x, xs, y, ys, sc, sh, rows, n, sg, sgx, gr, gs);            \
    else if (gr && m == 1) reduce_rows<T, 1, true>(dy, dys, x, xs, y, ys, sc, sh, rows, n, sg, sgx, gr, gs);       \
    else if (gr) reduce_rows<T, 2, true>(dy, dys, x, xs, y, ys, sc, sh, rows, n, sg, sgx, gr, gs);                 \
    else if (m == 0) reduce_rows<T, 0, false>(dy, dys, x, xs, y, ys, sc, sh, rows, n, sg, sgx, gr, gs);            \
    else if (m == 1) reduce_rows<T, 1, false>(dy, dys, x, xs, y, ys, sc, sh, rows, n, sg, sgx, gr, gs);            \
    else reduce_rows<T, 2, false>(dy, dys, x, xs, y, ys, sc, sh, rows, n, sg, sgx, gr, gs);                        \
  }                                                                                                                \
  RECOGNIZER_CLONES void grad_block(const T* dy, int64_t dys, const T* x, int64_t xs, const T* y, int64_t ys,      \
                                    const C* sc, const C* sh, int m, const C* k1, const C* k2, const C* k3,        \
                                    int64_t rows, int64_t n, T* dx, int64_t dxs) {                                 \
    if (m == 0) grad_rows<T, 0>(dy, dys, x, xs, y, ys, sc, sh, k1, k2, k3, rows, n, dx, dxs);                      \
    else if (m == 1) grad_rows<T, 1>(dy, dys, x, xs, y, ys, sc, sh, k1, k2, k3, rows, n, dx, dxs);                 \
    else grad_rows<T, 2>(dy, dys, x, xs, y, ys, sc, sh, k1, k2, k3, rows, n, dx, dxs);                             \
  }
RECOGNIZER_INSTANCES(float, float)
RECOGNIZER_INSTANCES(double, double)
RECOGNIZER_INSTANCES(at::BFloat16, float)

// Per-chunk double partial sums, added in chunk order.
template <typename F>
std::vector<double> chunked_sums(int64_t rows, int64_t channels, F body) {
  const int64_t per = chunk_rows(rows), chunks = (rows + per - 1) / per;
  const int64_t stride = (2 * channels + 7) / 8 * 8;  // each chunk's sums on their own cache lines
  std::vector<double> part(chunks * stride, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) body(k * per, std::min(rows, (k + 1) * per), part.data() + k * stride);
  });
  std::vector<double> total(2 * channels, 0.0);
  for (int64_t k = 0; k < chunks; ++k)
    for (int64_t c = 0; c < 2 * channels; ++c) total[c] += part[k * stride + c];
  return total;
}

// ---- ops ----

// Biased variance and mean per channel of the channel-concatenation of xs.
std::tuple<at::Tensor, at::Tensor> bn_stats(std::vector<at::Tensor> xs) {
  TORCH_CHECK(!xs.empty(), "bn_stats: no input");
  const int64_t rows = xs[0].size(0);
  widths(xs, rows, "bn_stats", xs[0].scalar_type());
  std::vector<double> sums;
  int64_t channels = 0;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, xs[0].scalar_type(), "bn_stats", [&] {
    Split<scalar_t> X(xs);
    channels = X.channels;
    sums = chunked_sums(rows, channels, [&](int64_t r0, int64_t r1, double* acc) {
      std::vector<scalar_t> xbuf(X.single() ? 0 : BLOCK_ROWS * channels);
      blocks(r0, r1, [&](int64_t r, int64_t k) {
        stats_block(X.rows(r, k, xbuf.data()), channels, k, channels, acc, acc + channels);
      });
    });
  });
  std::vector<double> mean(channels), var(channels);
  for (int64_t c = 0; c < channels; ++c) {
    mean[c] = sums[c] / rows;
    var[c] = std::max(0.0, sums[channels + c] / rows - mean[c] * mean[c]);
  }
  return {at::tensor(mean, at::kDouble), at::tensor(var, at::kDouble)};
}

// outs = act(x * scale + shift (+ residual)), written as blocks of out_widths channels.
std::vector<at::Tensor> bn_apply(std::vector<at::Tensor> xs, at::Tensor scale, at::Tensor shift,
                                 c10::optional<at::Tensor> residual, bool relu, std::vector<int64_t> out_widths) {
  const int64_t rows = xs[0].size(0);
  auto wx = widths(xs, rows, "bn_apply", xs[0].scalar_type());
  int64_t channels = 0, out_channels = 0;
  for (auto w : wx) channels += w;
  for (auto w : out_widths) out_channels += w;
  TORCH_CHECK(out_channels == channels, "bn_apply: output blocks cover ", out_channels, " of ", channels, " channels");
  TORCH_CHECK(scale.numel() == channels && shift.numel() == channels && scale.is_contiguous() && shift.is_contiguous(),
              "bn_apply: scale/shift must have one value per channel");
  const bool has_res = residual.has_value() && residual->defined();
  if (has_res) widths({*residual}, rows, "bn_apply residual", xs[0].scalar_type());
  std::vector<at::Tensor> outs;
  for (auto w : out_widths) outs.push_back(at::empty({rows, w}, xs[0].options()));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, xs[0].scalar_type(), "bn_apply", [&] {
    using C = compute_t<scalar_t>;
    Split<scalar_t> X(xs), Y(outs);
    const C *sc = scale.data_ptr<C>(), *sh = shift.data_ptr<C>();
    const scalar_t* res = has_res ? residual->data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
      std::vector<scalar_t> xbuf(X.single() ? 0 : BLOCK_ROWS * channels), ybuf(Y.single() ? 0 : BLOCK_ROWS * channels);
      blocks(r0, r1, [&](int64_t r, int64_t k) {
        scalar_t* y = Y.out_rows(r, ybuf.data());
        apply_block(X.rows(r, k, xbuf.data()), channels, res ? res + r * channels : nullptr, channels, sc, sh, relu, k,
                    channels, y, channels);
        Y.scatter(r, k, y);
      });
    });
  });
  return outs;
}

// Backward of bn_apply after bn_stats. grads are split as the outputs were, xs as the inputs. The ReLU mask comes
// from y (the single output, when there was a residual) or is recomputed from x. Returns the input gradients (split
// as xs), the BatchNorm weight and bias gradients, and the residual's gradient (undefined unless asked for).
std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor, at::Tensor> bn_backward(
    std::vector<at::Tensor> grads, std::vector<at::Tensor> xs, c10::optional<at::Tensor> y, at::Tensor mean,
    at::Tensor invstd, at::Tensor weight, at::Tensor scale, at::Tensor shift, bool relu, bool residual_grad) {
  const int64_t rows = xs[0].size(0);
  auto wx = widths(xs, rows, "bn_backward x", xs[0].scalar_type());
  widths(grads, rows, "bn_backward grad", xs[0].scalar_type());
  int64_t channels = 0;
  for (auto w : wx) channels += w;
  const bool has_y = y.has_value() && y->defined();
  if (has_y) widths({*y}, rows, "bn_backward y", xs[0].scalar_type());
  const int mask_mode = !relu ? 0 : (has_y ? 1 : 2);
  TORCH_CHECK(!(relu && residual_grad && !has_y), "bn_backward: a residual's ReLU mask needs the output");
  at::Tensor gres = residual_grad ? at::empty({rows, channels}, xs[0].options()) : at::Tensor();
  std::vector<at::Tensor> dxs;
  for (auto w : wx) dxs.push_back(at::empty({rows, w}, xs[0].options()));
  at::Tensor dweight, dbias;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, xs[0].scalar_type(), "bn_backward", [&] {
    using C = compute_t<scalar_t>;
    Split<scalar_t> X(xs), G(grads), DX(dxs);
    const C *sc = scale.data_ptr<C>(), *sh = shift.data_ptr<C>();
    const scalar_t* yp = has_y ? y->data_ptr<scalar_t>() : nullptr;
    scalar_t* gr = residual_grad ? gres.data_ptr<scalar_t>() : nullptr;
    const int64_t xn = X.single() ? 0 : BLOCK_ROWS * channels, gn = G.single() ? 0 : BLOCK_ROWS * channels;
    auto sums = chunked_sums(rows, channels, [&](int64_t r0, int64_t r1, double* acc) {
      std::vector<scalar_t> xbuf(xn), gbuf(gn);
      blocks(r0, r1, [&](int64_t r, int64_t k) {
        reduce_block(G.rows(r, k, gbuf.data()), channels, X.rows(r, k, xbuf.data()), channels,
                     yp ? yp + r * channels : nullptr, channels, sc, sh, mask_mode, k, channels, acc, acc + channels,
                     gr ? gr + r * channels : nullptr, channels);
      });
    });
    // dx = w*invstd*(g - mean(g) - xhat*mean(g*xhat)) = k1*g + k2*x + k3, with sum(g*xhat) from sum(g*x).
    auto m = mean.accessor<double, 1>(), is = invstd.accessor<double, 1>();
    auto wd = weight.to(at::kDouble).contiguous();
    auto w = wd.accessor<double, 1>();
    std::vector<double> k1(channels), k2(channels), k3(channels), dw(channels), db(channels);
    for (int64_t c = 0; c < channels; ++c) {
      double sg = sums[c], sgxhat = is[c] * (sums[channels + c] - m[c] * sg);
      dw[c] = sgxhat, db[c] = sg;
      k1[c] = w[c] * is[c];
      k2[c] = -w[c] * is[c] * is[c] * sgxhat / rows;
      k3[c] = -k1[c] * sg / rows - k2[c] * m[c];
    }
    auto typed = [&](const std::vector<double>& v) { return at::tensor(v, at::kDouble).to(scale.scalar_type()); };
    at::Tensor t1 = typed(k1), t2 = typed(k2), t3 = typed(k3);
    const C *p1 = t1.data_ptr<C>(), *p2 = t2.data_ptr<C>(), *p3 = t3.data_ptr<C>();
    // With the residual's gradient written, it is the masked gradient: read it instead of dy and y.
    at::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
      std::vector<scalar_t> xbuf(xn), gbuf(gr ? 0 : gn), dxbuf(xn);
      blocks(r0, r1, [&](int64_t r, int64_t k) {
        const scalar_t* dy = gr ? gr + r * channels : G.rows(r, k, gbuf.data());
        scalar_t* dx = DX.out_rows(r, dxbuf.data());
        grad_block(dy, channels, X.rows(r, k, xbuf.data()), channels, yp ? yp + r * channels : nullptr, channels, sc,
                   sh, gr ? 0 : mask_mode, p1, p2, p3, k, channels, dx, channels);
        DX.scatter(r, k, dx);
      });
    });
    dweight = at::tensor(dw, at::kDouble).to(weight.scalar_type());
    dbias = at::tensor(db, at::kDouble).to(weight.scalar_type());
  });
  return {dxs, dweight, dbias, gres};
}

}  // namespace

TORCH_LIBRARY(recognizer, m) {
  m.def("bn_stats(Tensor[] xs) -> (Tensor, Tensor)", &bn_stats);
  m.def("bn_apply(Tensor[] xs, Tensor scale, Tensor shift, Tensor? residual, bool relu, int[] out_widths) -> Tensor[]",
        &bn_apply);
  m.def("bn_backward(Tensor[] grads, Tensor[] xs, Tensor? y, Tensor mean, Tensor invstd, Tensor weight, Tensor scale, "
        "Tensor shift, bool relu, bool residual_grad) -> (Tensor[], Tensor, Tensor, Tensor)",
        &bn_backward);
}
