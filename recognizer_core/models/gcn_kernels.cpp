// UnitGCN's joint aggregation + weight GEMM for CPU training, chunk by chunk and parallel over chunks.
// Loaded by cpu_kernels.py together with bn_act_kernels.cpp; the ops are torch.ops.recognizer.gcn_aggregate(_backward),
// used through gcn_blocks.AggregateLinear (which has the same loop in Python where these cannot be built).
//
// y[r] = (a_rows @ x[r]).view(v, k*c_in) @ w.T + bias for every row r (one frame of one person), where the
// (v*k, c_in) aggregate of a chunk of rows is made, used while it sits in the core's L2 and dropped. Why C++: the
// chunks are small GEMMs (M = a few hundred rows), which MKL splits badly over 2 threads (1.3-1.4x measured); here
// each thread takes whole chunks with single-threaded GEMMs (nested parallelism is off inside at::parallel_for),
// and the Python loop's per-chunk overhead and the separate bias passes (add, then a sum over all rows in backward)
// go away. The products are the same as the Python loop's; the weight, bias and A gradients are summed over fixed
// groups of chunks, then over the groups in order, so the same thread count gives the same bits.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

namespace {

struct Shapes {
  int64_t rows, v, c_in, vk, kc, c_out, chunks;
};

Shapes shapes(const at::Tensor& xt, const at::Tensor& a_rows, const at::Tensor& w, int64_t step) {
  TORCH_CHECK(xt.dim() == 3 && xt.is_contiguous() && xt.device().is_cpu(),
              "gcn_aggregate: xt must be a contiguous CPU (rows, v, c_in) tensor, got ", xt.sizes());
  TORCH_CHECK(a_rows.dim() == 2 && a_rows.size(1) == xt.size(1) && a_rows.size(0) % xt.size(1) == 0,
              "gcn_aggregate: a_rows must be (v*k, v) with v = ", xt.size(1), ", got ", a_rows.sizes());
  const int64_t v = xt.size(1), c_in = xt.size(2), vk = a_rows.size(0), kc = vk / v * c_in;
  TORCH_CHECK(w.dim() == 2 && w.size(1) == kc, "gcn_aggregate: w must be (c_out, ", kc, "), got ", w.sizes());
  TORCH_CHECK(step > 0, "gcn_aggregate: step must be positive");
  return {xt.size(0), v, c_in, vk, kc, w.size(0), (xt.size(0) + step - 1) / step};
}

at::Tensor gcn_aggregate(const at::Tensor& xt_, const at::Tensor& a_rows_, const at::Tensor& w_,
                         const at::Tensor& bias_, int64_t step) {
  const Shapes s = shapes(xt_, a_rows_, w_, step);
  TORCH_CHECK(bias_.dim() == 2 && bias_.size(0) == s.v && bias_.size(1) == s.c_out,
              "gcn_aggregate: bias must be (v, c_out), got ", bias_.sizes());
  // detached: the ops below run on OpenMP threads with default (grad-enabled) thread-local state
  const at::Tensor xt = xt_.detach(), a_rows = a_rows_.detach().contiguous(), wt = w_.detach().t(),
                   bias = bias_.detach();
  at::Tensor y = at::empty({s.rows, s.v, s.c_out}, xt.options());
  at::parallel_for(0, s.chunks, 1, [&](int64_t begin, int64_t end) {
    at::NoGradGuard no_grad;
    for (int64_t ci = begin; ci < end; ++ci) {
      const int64_t r = ci * step, n = std::min(step, s.rows - r);
      at::Tensor xa = at::bmm(a_rows.expand({n, s.vk, s.v}), xt.narrow(0, r, n));  // (n, v*k, c_in) = (n, v, k*c_in)
      at::Tensor y_c = y.narrow(0, r, n);
      at::Tensor y_m = y_c.view({n * s.v, s.c_out});
      at::mm_out(y_m, xa.view({n * s.v, s.kc}), wt);
      y_c.add_(bias);  // while the chunk is in cache
    }
  });
  return y;
}

// -> (gx, ga, gw, gbias); ga is zeros unless need_ga.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gcn_aggregate_backward(
    const at::Tensor& gy_, const at::Tensor& xt_, const at::Tensor& a_rows_, const at::Tensor& w_, int64_t step,
    bool need_ga) {
  const Shapes s = shapes(xt_, a_rows_, w_, step);
  TORCH_CHECK(gy_.dim() == 3 && gy_.size(0) == s.rows && gy_.size(1) == s.v && gy_.size(2) == s.c_out,
              "gcn_aggregate_backward: gy must be (rows, v, c_out), got ", gy_.sizes());
  const at::Tensor gy = gy_.detach().contiguous(), xt = xt_.detach(), a_rows = a_rows_.detach().contiguous(),
                   w = w_.detach();
  const at::Tensor a_t = a_rows.t();
  at::Tensor gx = at::empty_like(xt);
  // The chunks fall into `slots` fixed contiguous groups, one accumulator each (a group's chunks run in order on
  // one thread): the sums' order depends on the thread count only.
  const int64_t slots = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), s.chunks));
  at::Tensor gw_acc = at::zeros({slots, s.c_out, s.kc}, xt.options());
  at::Tensor gb_acc = at::zeros({slots, s.v, s.c_out}, xt.options());
  at::Tensor ga_acc = at::zeros({slots, s.vk, s.v}, xt.options());
  at::parallel_for(0, slots, 1, [&](int64_t slot_begin, int64_t slot_end) {
    at::NoGradGuard no_grad;
    for (int64_t slot = slot_begin; slot < slot_end; ++slot) {
      at::Tensor gw_t = gw_acc[slot], gb_t = gb_acc[slot], ga_t = ga_acc[slot];
      for (int64_t ci = slot * s.chunks / slots; ci < (slot + 1) * s.chunks / slots; ++ci) {
        const int64_t r = ci * step, n = std::min(step, s.rows - r);
        const at::Tensor x_c = xt.narrow(0, r, n), g_c = gy.narrow(0, r, n).view({n * s.v, s.c_out});
        const at::Tensor xa = at::bmm(a_rows.expand({n, s.vk, s.v}), x_c);  // rebuilt: never kept between passes
        gw_t.addmm_(g_c.t(), xa.view({n * s.v, s.kc}));
        gb_t.add_(g_c.view({n, s.v, s.c_out}).sum(0));
        const at::Tensor gxa = at::mm(g_c, w).view({n, s.vk, s.c_in});
        at::Tensor gx_c = gx.narrow(0, r, n);
        at::bmm_out(gx_c, a_t.expand({n, s.v, s.vk}), gxa);
        if (need_ga) ga_t.add_(at::bmm(gxa, x_c.transpose(1, 2)).sum(0));
      }
    }
  });
  return {gx, ga_acc.sum(0), gw_acc.sum(0), gb_acc.sum(0)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(recognizer, m) {
  m.def("gcn_aggregate(Tensor xt, Tensor a_rows, Tensor w, Tensor bias, int step) -> Tensor", &gcn_aggregate);
  m.def("gcn_aggregate_backward(Tensor gy, Tensor xt, Tensor a_rows, Tensor w, int step, bool need_ga) -> "
        "(Tensor, Tensor, Tensor, Tensor)",
        &gcn_aggregate_backward);
}
