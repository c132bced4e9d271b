// Weight-only quantized linear layers for a frozen base under LoRA: quantize, dequantize, and a
// torch::autograd::Function whose forward runs libtorch's weight-only kernels and whose backward
// gives the input gradient, grad_x = grad_y @ dequant(W), dequantizing only this one layer.
// Only the quantized tensors are saved for backward: no full-precision copy of the base lives
// between forward and backward.
//
// Formats (the weight is [N, K] = [out, in]):
// - int8: q int8 [N, K], symmetric per output channel, scales f32 [N] = max|w_n| / 127,
//   w ~ q * scale (the operands of at::_weight_int8pack_mm).
// - int4: q uint8 [N, K/2], two 4-bit values per byte, the even k in the high nibble (the input
//   of CUDA's at::_convert_weight_to_int4pack); group-wise asymmetric over `group` consecutive
//   k: scale = (max - min) / 15, q = round((w - min) / scale) in [0, 15], and
//   w ~ (q - 8) * scale + zero with zero = min + 8 * scale; scales and zeros f32 [K/group, N, 2]
//   (the layout of at::_weight_int4pack_mm's qScaleAndZeros).
//
// Every function returns NULL on success or a malloc'd error message (free with
// lps_free_error). C++ exceptions never cross into Rust. New tensors are returned as
// heap-allocated at::Tensor handles, which tch's Tensor::from_ptr takes over.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "guard.h"

namespace {

using loraplus_shim::guarded;

constexpr int kInt8 = 1;
constexpr int kInt4 = 2;

void check_scheme(int scheme, int64_t group) {
  TORCH_CHECK(scheme == kInt8 || scheme == kInt4, "unknown quantization scheme id ", scheme);
  TORCH_CHECK(scheme != kInt4 || (group > 0 && group % 2 == 0),
              "int4 needs an even group size, found ", group);
}

// K, the weight's in_features: int4 packs two values per byte.
int64_t in_features(const at::Tensor& q, int scheme) {
  return scheme == kInt8 ? q.size(1) : q.size(1) * 2;
}

// The full-precision [N, K] weight of one layer, in `dtype`. This runs for every quantized
// linear in every forward and backward, and is memory-bound: in-place vectorised passes over
// one fresh f32 tensor (ATen's mixed-dtype arithmetic takes a slower, casting loop; measured on
// the CPU for [11008, 4096]: int8 0.24 s against 0.35 s, int4 0.44 s against 0.72 s for a
// gather + addcmul).
at::Tensor dequantize(const at::Tensor& q, const at::Tensor& s, int scheme, int64_t group,
                      at::ScalarType dtype) {
  check_scheme(scheme, group);
  if (scheme == kInt8) {
    return q.to(at::kFloat).mul_(s.to(at::kFloat).unsqueeze(1)).to(dtype);
  }
  const int64_t n = q.size(0);
  const int64_t k = in_features(q, scheme);
  TORCH_CHECK(k % group == 0, "int4: in_features ", k, " is not a multiple of the group size ",
              group);
  // The even k sits in the high nibble: [N, K/2, 2] -> [N, K/g, g].
  at::Tensor v = at::stack({at::bitwise_right_shift(q, 4), at::bitwise_and(q, 15)}, 2)
                     .view({n, k / group, group})
                     .to(at::kFloat);
  at::Tensor scale = s.select(2, 0).t().to(at::kFloat).contiguous().unsqueeze(2);  // [N, K/g, 1]
  at::Tensor zero = s.select(2, 1).t().to(at::kFloat).contiguous().unsqueeze(2);
  // (v - 8) * scale + zero = v * scale + (zero - 8 * scale)
  return v.mul_(scale).add_(zero - 8.0 * scale).view({n, k}).to(dtype);
}

// Weight rows dequantized at a time. On the CPU, for an input short enough, 128: there the
// whole layer's dequantized copy (written to memory, then read back by the product) costs more
// than the product, whereas a block of 128 weight rows stays in the cache between its
// dequantization and its product. Measured with libtorch 2.11 on 2 idle cores, an [11008, 4096]
// int8 weight, whole layer against blocks: 256 input rows 135 -> 102 ms forward, 135 -> 99 ms
// backward; 512 rows 210 -> 197 / 201 -> 167; 1024 rows 362 -> 404 / 356 -> 300; 2048 rows
// 628 -> 799 / 605 -> 607. Hence blocks up to 512 input rows forward, 1024 backward. Otherwise
// (longer inputs, CUDA) one block: the whole layer.
constexpr int64_t kBlockRows = 128;
constexpr int64_t kBlockedMaxRowsForward = 512;
constexpr int64_t kBlockedMaxRowsBackward = 1024;

int64_t block_rows(const at::Tensor& input2d, int64_t blocked_max_rows, int64_t n) {
  return !input2d.is_cuda() && input2d.size(0) <= blocked_max_rows ? kBlockRows : n;
}

// Weight rows [r0, r0 + len) of one layer, dequantized: int8 scales are [N], int4's [K/g, N, 2].
at::Tensor dequantize_rows(const at::Tensor& q, const at::Tensor& s, int scheme, int64_t group,
                           int64_t r0, int64_t len, at::ScalarType dtype) {
  const at::Tensor rows = scheme == kInt8 ? s.narrow(0, r0, len) : s.narrow(1, r0, len);
  return dequantize(q.narrow(0, r0, len), rows, scheme, group, dtype);
}

// y = x @ dequant(W)^T over x's leading dimensions, without autograd. (The CPU's int4 kernel
// packs differently per ISA, AVX512, AVX2 or neither, so int4 on the CPU always dequantizes.)
at::Tensor forward_kernel(const at::Tensor& x, const at::Tensor& q, const at::Tensor& s,
                          int scheme, int64_t group) {
  check_scheme(scheme, group);
  std::vector<int64_t> shape = x.sizes().vec();
  TORCH_CHECK(!shape.empty(), "quantized linear: the input has no dimension");
  const int64_t k = shape.back();
  at::Tensor x2 = x.reshape({-1, k}).contiguous();
  const int64_t width = in_features(q, scheme);
  TORCH_CHECK(width == k, "quantized linear: input width ", k, ", weight in_features ", width);
  // libtorch's weight-only kernels are built for decoding (a few rows: memory-bound); a
  // training batch runs far faster as a BLAS product on this one layer, dequantized (measured
  // on the CPU: _weight_int8pack_mm is 15-40x slower than dequantize + sgemm at 1024 rows).
  const int64_t rows = x2.size(0);
  at::Tensor y;
  if (scheme == kInt8 && rows <= (x.is_cuda() ? 16 : 1)) {
    y = at::_weight_int8pack_mm(x2, q, s.to(x.scalar_type()));
  } else if (scheme == kInt4 && x.is_cuda() && x.scalar_type() == at::kBFloat16 && rows <= 16 &&
             q.size(0) % 8 == 0) {
    const int64_t tiles = k % 128 == 0 ? 8 : (k % 64 == 0 ? 4 : 2);
    at::Tensor packed = at::_convert_weight_to_int4pack(q.contiguous(), tiles);
    y = at::_weight_int4pack_mm(x2, packed, group, s.to(at::kBFloat16).contiguous());
  } else {
    const int64_t n = q.size(0);
    const int64_t block = block_rows(x2, kBlockedMaxRowsForward, n);
    y = at::empty({rows, n}, x2.options());
    for (int64_t r0 = 0; r0 < n; r0 += block) {
      const int64_t len = std::min(block, n - r0);
      at::Tensor w = dequantize_rows(q, s, scheme, group, r0, len, x.scalar_type());
      at::Tensor out = y.narrow(1, r0, len);
      at::mm_out(out, x2, w.t());
    }
  }
  shape.back() = y.size(1);
  return y.view(shape);
}

struct QuantLinear : public torch::autograd::Function<QuantLinear> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& q, const at::Tensor& s, int64_t scheme,
                            int64_t group) {
    ctx->save_for_backward({q, s});
    ctx->saved_data["scheme"] = scheme;
    ctx->saved_data["group"] = group;
    return forward_kernel(x, q, s, static_cast<int>(scheme), group);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    at::Tensor grad_x;
    if (ctx->needs_input_grad(0)) {
      auto saved = ctx->get_saved_variables();
      const auto scheme = static_cast<int>(ctx->saved_data["scheme"].toInt());
      const int64_t group = ctx->saved_data["group"].toInt();
      const at::Tensor& g = grads[0];
      const at::Tensor& q = saved[0];
      const at::Tensor& s = saved[1];
      const int64_t n = q.size(0);
      at::Tensor g2 = g.reshape({-1, n});
      const int64_t block = block_rows(g2, kBlockedMaxRowsBackward, n);
      // grad_x = sum over row blocks of g[:, block] @ dequant(W[block]).
      const int64_t k = in_features(q, scheme);
      at::Tensor gx;
      for (int64_t r0 = 0; r0 < n; r0 += block) {
        const int64_t len = std::min(block, n - r0);
        at::Tensor w = dequantize_rows(q, s, scheme, group, r0, len, g.scalar_type());
        if (r0 == 0) {
          gx = at::mm(g2.narrow(1, r0, len), w);
        } else {
          gx.addmm_(g2.narrow(1, r0, len), w);
        }
      }
      if (!gx.defined()) {  // a layer without outputs
        gx = at::zeros({g2.size(0), k}, g2.options());
      }
      std::vector<int64_t> shape = g.sizes().vec();
      shape.back() = k;
      grad_x = gx.view(shape);
    }
    return {grad_x, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

void lps_free_error(char* msg) { std::free(msg); }

// Rows quantized at a time: every temporary of one chunk holds at most this many f32 elements
// (16 MiB), so quantizing a layer while the base loads adds a few chunks to the peak memory, not
// several copies of the layer (measured before chunking on a Llama-7B MLP weight, [11008, 4096]
// f32: four 172 MiB temporaries alive at once). Both formats are row-local (per output channel,
// or per group of one row), so chunking gives the same bytes as the whole.
constexpr int64_t kChunkElements = int64_t(1) << 22;

char* lps_quantize(const at::Tensor* w, int scheme, int64_t group, at::Tensor** q_out,
                   at::Tensor** s_out) {
  return guarded([&] {
    check_scheme(scheme, group);
    TORCH_CHECK(w->dim() == 2, "quantize: expected an [out, in] weight, found ", w->sizes());
    at::NoGradGuard no_grad;
    const at::Tensor src = w->detach();
    const int64_t n = src.size(0);
    const int64_t k = src.size(1);
    TORCH_CHECK(scheme != kInt4 || k % group == 0, "int4: in_features ", k,
                " is not a multiple of the group size ", group);
    const auto dev = src.device();
    const int64_t rows = std::max<int64_t>(1, kChunkElements / std::max<int64_t>(k, 1));
    at::Tensor q;
    at::Tensor s;
    if (scheme == kInt8) {
      q = at::empty({n, k}, at::TensorOptions().dtype(at::kChar).device(dev));
      s = at::empty({n}, at::TensorOptions().dtype(at::kFloat).device(dev));
      for (int64_t r0 = 0; r0 < n; r0 += rows) {
        const int64_t len = std::min(rows, n - r0);
        at::Tensor wf = src.narrow(0, r0, len).to(at::kFloat);
        at::Tensor sc = wf.abs().amax({1}).div_(127.0);
        at::Tensor safe = at::where(sc > 0, sc, at::ones_like(sc));
        at::Tensor t = wf.div(safe.unsqueeze(1));
        t.round_().clamp_(-127, 127);
        q.narrow(0, r0, len).copy_(t);
        s.narrow(0, r0, len).copy_(sc);
      }
    } else {
      const int64_t groups = k / group;
      q = at::empty({n, k / 2}, at::TensorOptions().dtype(at::kByte).device(dev));
      at::Tensor sz = at::empty({n, groups, 2}, at::TensorOptions().dtype(at::kFloat).device(dev));
      for (int64_t r0 = 0; r0 < n; r0 += rows) {
        const int64_t len = std::min(rows, n - r0);
        at::Tensor g = src.narrow(0, r0, len).to(at::kFloat).contiguous().view({len, groups, group});
        at::Tensor mn = std::get<0>(g.min(2, /*keepdim=*/true));
        at::Tensor mx = std::get<0>(g.max(2, /*keepdim=*/true));
        at::Tensor scale = ((mx - mn) / 15.0).clamp_min(1e-6);
        at::Tensor t = g - mn;
        t.div_(scale).round_().clamp_(0, 15);
        at::Tensor v = t.to(at::kByte).view({len, k / 2, 2});
        q.narrow(0, r0, len)
            .copy_(at::bitwise_or(at::bitwise_left_shift(v.select(2, 0), 4), v.select(2, 1)));
        at::Tensor zero = mn + 8.0 * scale;
        sz.narrow(0, r0, len).copy_(at::cat({scale, zero}, 2));
      }
      // [N, K/g, 2] -> [K/g, N, 2]
      s = sz.transpose(0, 1).contiguous();
    }
    *q_out = new at::Tensor(std::move(q));
    *s_out = new at::Tensor(std::move(s));
  });
}

char* lps_dequantize(const at::Tensor* q, const at::Tensor* s, int scheme, int64_t group,
                     at::Tensor** out) {
  return guarded([&] {
    at::NoGradGuard no_grad;
    *out = new at::Tensor(dequantize(*q, *s, scheme, group, at::kFloat));
  });
}

char* lps_quant_linear(const at::Tensor* x, const at::Tensor* q, const at::Tensor* s, int scheme,
                       int64_t group, at::Tensor** out) {
  return guarded([&] {
    check_scheme(scheme, group);
    *out = new at::Tensor(QuantLinear::apply(*x, *q, *s, static_cast<int64_t>(scheme), group));
  });
}

}  // extern "C"
