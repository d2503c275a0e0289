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
// (int8_isa.h) and the driver that quantizes, packs and tiles (int8_driver.h)
// are torch-free: this file is the torch front end only.

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

#include "int8_driver.h"  // int8_tiles over the per-ISA kernels of int8_isa.h / int8_body.h

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
  return narrow_isa(current_isa());
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
  if (T > 0 && n_out > 0) {
    const Int8Scratch need = int8_scratch(T, K, br, isa);
    at::Tensor panel = at::empty({need.panel_bytes}, at::kByte);
    at::Tensor scales = at::empty({std::max<int64_t>(need.scales, 1)}, at::kFloat);
    auto par = [](int64_t b, int64_t e, int64_t grain, const auto& fn) { at::parallel_for(b, e, grain, fn); };
    int8_tiles(x2.data_ptr<float>(), y.data_ptr<float>(), T, K, n_out, base, static_cast<float>(act_scale), isa,
               panel.data_ptr<uint8_t>(), scales.data_ptr<float>(), par);
  }
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
