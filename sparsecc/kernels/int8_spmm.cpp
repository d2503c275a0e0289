// sparsecc int8 CPU kernels: int8 sparse weight (square-block BSR, or 1x4 row
// groups for unstructured sparsity) x int8 activations, int32 accumulation,
// fused dequantize + bias, registered as
//
//   sparsecc::int8_linear(x[..., K] f32, crow, col, values[nb, br, bc] i8, wscale[N] f32, row_sums[N] i32,
//                         bias?, out_features, act_scale, isa) -> [..., N] f32
//
// The activations are quantized inside the op, symmetric int8 per row (token):
// s_x = max|x[t]| / 127 (1 for an all-zero row), or act_scale for every row
// when act_scale > 0 (static); q = clamp(round(x / s_x), -127, 127). Then
// y[t, n] = float(sum_k q_x[t, k] q_w[n, k]) * (s_x[t] * wscale[n]) + bias[n].
//
// isa: "avx512" (AVX-512 VNNI vpdpbusd, u8 x s8: activations shifted by +128,
// 128 * row_sums[n] subtracted), "avx2" (vpmaddwd on int16-widened values: no
// saturation, unlike vpmaddubsw), "portable", or "" for the instruction set
// the fp32 kernels use (sparsecc::kernel_isa), narrowed to what this CPU has.
// On AArch64: "neon" (sdot, needs the dot-product extension; "" gives it when
// the fp32 kernels use neon and the CPU has it) or "portable". The kernels
// themselves are in int8_isa.h (torch-free).

#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "int8_isa.h"  // QJob, the per-ISA kernels of int8_body.h, cpu_has, tile_tokens

namespace sparsecc {

std::string current_isa();  // spmm.cpp

namespace int8k {

// The ISA of one call: the request, else the fp32 kernels' choice narrowed to what the CPU has.
static std::string resolve_isa(const std::string& request) {
  if (!request.empty()) {
#if SPARSECC_INT8_AARCH64
    TORCH_CHECK(request == "neon" || request == "portable",
                "sparsecc::int8_linear: unknown instruction set '", request, "' (neon, portable)");
    TORCH_CHECK(cpu_has(request), "sparsecc::int8_linear: this CPU cannot run '", request,
                "' (needs the dot-product extension, sdot)");
#else
    TORCH_CHECK(request == "avx512" || request == "avx2" || request == "portable",
                "sparsecc::int8_linear: unknown instruction set '", request, "' (avx512, avx2, portable)");
    TORCH_CHECK(cpu_has(request), "sparsecc::int8_linear: this CPU cannot run '", request,
                "'", request == "avx512" ? " (needs AVX-512 VNNI and BW)" : "");
#endif
    return request;
  }
  std::string isa = current_isa();
#if SPARSECC_INT8_X86
  if (isa == "avx512" && !cpu_has("avx512")) isa = "avx2";
  if (isa == "avx2" && !cpu_has("avx2")) isa = "portable";
#elif SPARSECC_INT8_AARCH64
  isa = isa == "neon" && cpu_has("neon") ? "neon" : "portable";
#else
  isa = "portable";
#endif
  return isa;
}

// Quantize tokens [t0, t0 + nt) into the panel; padding tokens read as zero.
static void pack(const float* x, int64_t K, int64_t t0, int64_t nt, int64_t P, float act_scale, QuantFn quant,
                 float* sx, uint8_t* p8, int16_t* p16) {
  at::parallel_for(0, nt, 16, [&](int64_t a, int64_t b) {
    std::vector<int8_t> row(K);
    for (int64_t t = a; t < b; ++t) {
      sx[t] = quant(x + (t0 + t) * K, K, act_scale, row.data());
      if (p8) {  // 4 consecutive k per 32-bit lane, shifted to unsigned: q + 128 == q ^ 0x80 as a byte
        for (int64_t k4 = 0; k4 < K / 4; ++k4) {
          uint8_t* dst = p8 + (k4 * P + t) * 4;
          for (int i = 0; i < 4; ++i) dst[i] = static_cast<uint8_t>(row[4 * k4 + i]) ^ 0x80;
        }
      } else {  // 2 consecutive k per 32-bit lane, int16
        for (int64_t k2 = 0; k2 < K / 2; ++k2) {
          p16[(k2 * P + t) * 2] = row[2 * k2];
          p16[(k2 * P + t) * 2 + 1] = row[2 * k2 + 1];
        }
      }
    }
  });
  for (int64_t t = nt; t < P; ++t) {
    sx[t] = 1.f;
    if (p8) {
      for (int64_t k = 0; k < K; ++k) p8[((k / 4) * P + t) * 4 + k % 4] = 128;
    } else {
      for (int64_t k = 0; k < K; ++k) p16[((k / 2) * P + t) * 2 + k % 2] = 0;
    }
  }
}

#if SPARSECC_INT8_X86
constexpr int64_t kFewTokens = 8;  // up to here, VNNI on 8x8 / 16x16 blocks vectorizes over the block

static void run_few(const float* x, float* y, int64_t T, int64_t K, int64_t N, const QJob& base, float act_scale) {
  std::vector<uint8_t> rows(T * K);
  std::vector<int8_t> row(K);
  alignas(64) float scales[16];
  for (int64_t t = 0; t < 16; ++t) scales[t] = 1.f;
  for (int64_t t = 0; t < T; ++t) {
    scales[t] = vnni::quantize_row(x + t * K, K, act_scale, row.data());
    for (int64_t k = 0; k < K; ++k) rows[t * K + k] = static_cast<uint8_t>(row[k]) ^ 0x80;
  }
  QJob j = base;
  j.panel8 = rows.data();  // marks the activations as shifted by +128
  j.rows8 = rows.data();
  j.K = K;
  j.sx = scales;
  j.y = y;
  j.t0 = 0;
  j.nt = T;
  at::parallel_for(0, N / base.br, 1, [&](int64_t b0, int64_t b1) { vnni::few(j, b0, b1); });
}
#endif  // SPARSECC_INT8_X86

#if SPARSECC_INT8_AARCH64
// sdot: 4 tokens per vector, signed activations [K/4][P][4] (1 byte each).
static void run_neon(const float* x, float* y, int64_t T, int64_t K, int64_t N, const QJob& base, float act_scale) {
  const int64_t vw = 4;
  const int64_t TT = std::min(tile_tokens(K, vw, 1), (T + vw - 1) / vw * vw);
  at::Tensor panel = at::empty({K * TT}, at::kChar);
  at::Tensor scales = at::empty({TT}, at::kFloat);
  const int64_t blocks = N / base.br;
  for (int64_t t0 = 0; t0 < T; t0 += TT) {
    const int64_t nt = std::min(TT, T - t0);
    const int64_t P = (nt + vw - 1) / vw * vw;
    int8_t* p = panel.data_ptr<int8_t>();
    float* sx = scales.data_ptr<float>();
    at::parallel_for(0, nt, 16, [&](int64_t a, int64_t b) {
      std::vector<int8_t> row(K);
      for (int64_t t = a; t < b; ++t) {
        sx[t] = neon::quantize_row(x + (t0 + t) * K, K, act_scale, row.data());
        pack_signed4(row.data(), K, t, P, p);
      }
    });
    for (int64_t t = nt; t < P; ++t) {
      sx[t] = 1.f;
      pack_signed4(nullptr, K, t, P, p);
    }
    QJob j = base;
    j.panel8 = nullptr;
    j.panel16 = nullptr;
    j.panels8 = p;
    j.P = P;
    j.sx = sx;
    j.y = y;
    j.t0 = t0;
    j.nt = nt;
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) { neon::rows(j, b0, b1); });
  }
}
#endif

static void run(const float* x, float* y, int64_t T, int64_t K, int64_t N, const QJob& base, float act_scale,
                const std::string& isa) {
#if SPARSECC_INT8_X86
  const bool use_vnni = isa == "avx512";
  if (use_vnni && T <= kFewTokens && (base.br == 8 || base.br == 16)) return run_few(x, y, T, K, N, base, act_scale);
  const int64_t vw = use_vnni ? 16 : 8;
  const RowsFn fn = use_vnni ? vnni::rows : isa == "avx2" ? avx2::rows : portable::rows;
  const QuantFn quant = use_vnni ? vnni::quantize_row : isa == "avx2" ? avx2::quantize_row : portable::quantize_row;
#else
#if SPARSECC_INT8_AARCH64
  if (isa == "neon") return run_neon(x, y, T, K, N, base, act_scale);
#endif
  (void)isa;  // "portable", from resolve_isa
  const bool use_vnni = false;
  const int64_t vw = 8;
  const RowsFn fn = portable::rows;
  const QuantFn quant = portable::quantize_row;
#endif
  const int64_t TT = std::min(tile_tokens(K, vw, use_vnni ? 1 : 2), (T + vw - 1) / vw * vw);
  at::Tensor panel = at::empty({K * TT * (use_vnni ? 1 : 2)}, at::kByte);
  at::Tensor scales = at::empty({TT}, at::kFloat);
  const int64_t blocks = N / base.br;
  for (int64_t t0 = 0; t0 < T; t0 += TT) {
    const int64_t nt = std::min(TT, T - t0);
    const int64_t P = (nt + vw - 1) / vw * vw;
    QJob j = base;
    j.panel8 = use_vnni ? panel.data_ptr<uint8_t>() : nullptr;
    j.panel16 = use_vnni ? nullptr : reinterpret_cast<const int16_t*>(panel.data_ptr<uint8_t>());
    j.P = P;
    j.sx = scales.data_ptr<float>();
    j.y = y;
    j.t0 = t0;
    j.nt = nt;
    pack(x, K, t0, nt, P, act_scale, quant, scales.data_ptr<float>(), use_vnni ? panel.data_ptr<uint8_t>() : nullptr,
         use_vnni ? nullptr : reinterpret_cast<int16_t*>(panel.data_ptr<uint8_t>()));
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) { fn(j, b0, b1); });
  }
}

static at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                              const at::Tensor& values, const at::Tensor& wscale, const at::Tensor& row_sums,
                              const c10::optional<at::Tensor>& bias, int64_t n_out, double act_scale,
                              const std::string& isa_request) {
  const char* op = "sparsecc::int8_linear";
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() >= 1, op, ": input must be float32 with at least one dim, got ",
              x.scalar_type(), " ", x.sizes());
  const int64_t K = x.size(-1);
  TORCH_CHECK(crow.scalar_type() == at::kInt && col.scalar_type() == at::kInt, op,
              ": crow_indices and col_indices must be int32, got ", crow.scalar_type(), " and ", col.scalar_type());
  TORCH_CHECK(values.scalar_type() == at::kChar && values.dim() == 3, op, ": values must be int8 [nnz_blocks, br, bc], got ",
              values.scalar_type(), " ", values.sizes());
  const int64_t br = values.size(1), bc = values.size(2);
  TORCH_CHECK((br == 1 && bc == 4) || (br == bc && (br == 4 || br == 8 || br == 16)), op, ": blocks ", br, "x", bc,
              " have no kernel (1x4, 4x4, 8x8, 16x16)");
  TORCH_CHECK(n_out % br == 0 && K % bc == 0, op, ": block ", br, "x", bc, " does not divide the weight [", n_out, ", ",
              K, "]");
  TORCH_CHECK(crow.is_contiguous() && col.is_contiguous() && values.is_contiguous() && wscale.is_contiguous() &&
                  row_sums.is_contiguous(), op, ": weight tensors must be contiguous");
  TORCH_CHECK(crow.dim() == 1 && crow.numel() == n_out / br + 1, op, ": crow_indices has ", crow.numel(),
              " entries, expected ", n_out / br + 1);
  TORCH_CHECK(col.numel() == values.size(0), op, ": ", col.numel(), " column indices for ", values.size(0), " blocks");
  TORCH_CHECK(wscale.scalar_type() == at::kFloat && wscale.numel() == n_out, op, ": wscale must be float32 [", n_out,
              "], got ", wscale.scalar_type(), " ", wscale.sizes());
  TORCH_CHECK(row_sums.scalar_type() == at::kInt && row_sums.numel() == n_out, op, ": row_sums must be int32 [", n_out,
              "], got ", row_sums.scalar_type(), " ", row_sums.sizes());
  if (bias.has_value())
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() == n_out, op, ": bias must be float32 [", n_out,
                "], got ", bias->scalar_type(), " ", bias->sizes());
  TORCH_CHECK(std::isfinite(act_scale) && act_scale >= 0, op, ": act_scale must be >= 0 (0: dynamic), got ", act_scale);
  const std::string isa = resolve_isa(isa_request);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n_out;
  at::Tensor x2 = x.reshape({-1, K}).contiguous();
  const int64_t T = x2.size(0);
  at::Tensor y = at::empty({T, n_out}, x.options());
  at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  QJob base{nullptr, nullptr, 0, nullptr, nullptr, n_out, 0, 0, crow.data_ptr<int32_t>(), col.data_ptr<int32_t>(),
            values.data_ptr<int8_t>(), wscale.data_ptr<float>(), row_sums.data_ptr<int32_t>(),
            bias.has_value() ? b.data_ptr<float>() : nullptr, br};
  if (T > 0 && n_out > 0) run(x2.data_ptr<float>(), y.data_ptr<float>(), T, K, n_out, base,
                              static_cast<float>(act_scale), isa);
  return y.reshape(out_shape);
}

static std::string int8_isa(const std::string& request) { return resolve_isa(request); }

}  // namespace int8k
}  // namespace sparsecc

TORCH_LIBRARY_FRAGMENT(sparsecc, m) {
  m.def("int8_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, Tensor wscale, "
        "Tensor row_sums, Tensor? bias, int out_features, float act_scale, str isa) -> Tensor");
  m.def("int8_isa(str request) -> str", &sparsecc::int8k::int8_isa);
}

TORCH_LIBRARY_IMPL(sparsecc, CPU, m) { m.impl("int8_linear", &sparsecc::int8k::int8_linear); }
