// sparsecc CPU sparse kernels: sparse weight (CSR or square-block BSR) x dense
// activations, registered as the torch operators
//
//   sparsecc::sparse_linear(x[..., K], crow, col, values, bias?, out_features, kernel) -> [..., N]
//   sparsecc::sparse_conv1x1(x[B, Cin, H, W], crow, col, values, bias?, out_channels, kernel) -> [B, Cout, H, W]
//   sparsecc::kernel_isa(request) -> the instruction set in use (request "" keeps it)
//
// sparse_linear / sparse_conv1x1 take an optional last argument isa ("" = the
// one kernel_isa chose): kernel choice measures each ISA per layer shape.
//
// kernel: "csr" / "bsr" run the kernels below (AVX-512, AVX2+FMA, or portable
// code, chosen at load from the CPU); "torch_csr" / "torch_bsr" run torch's
// own sparse products (MKL), computing (W @ x^T)^T as torch is fastest there.
// Indices are int32; BSR values are [nnz_blocks, B, B] with B in {2, 4, 8, 16}.

#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "spmm_isa.h"  // Job, the per-ISA kernels of spmm_body.h, the tiled driver

namespace sparsecc {

static const Isa* g_isa = best_isa();

std::string current_isa() { return g_isa->name; }  // the int8 kernels follow this choice

// The instruction set of one call: ``request`` ("" = the current choice), checked against the CPU.
static const Isa& call_isa(const std::string& request, const char* op) {
  if (request.empty()) return *g_isa;
  for (const Isa& isa : kIsas)
    if (request == isa.name) {
      TORCH_CHECK(cpu_has(request), op, ": this CPU cannot run '", request, "'");
      return isa;
    }
  TORCH_CHECK(false, op, ": unknown instruction set '", request, "' (avx512, avx2, portable)");
  return *g_isa;  // not reached
}

static std::string kernel_isa(const std::string& request) {
  if (!request.empty()) {
    const Isa* found = nullptr;
    for (const Isa& isa : kIsas)
      if (request == isa.name) found = &isa;
    TORCH_CHECK(found, "sparsecc::kernel_isa: unknown instruction set '", request, "' (avx512, avx2, portable)");
    TORCH_CHECK(cpu_has(request), "sparsecc::kernel_isa: this CPU cannot run '", request, "'");
    g_isa = found;
  }
  return g_isa->name;
}

// Y(t, n) = sum_k W(n, k) X(t, k) + bias(n), X(t, k) at x[t * sxt + k * sxk], over ATen's thread pool.
static void spmm(const float* x, int64_t sxt, int64_t sxk, float* y, int64_t syt, int64_t syn, int64_t T,
                 int64_t K, int64_t N, const int32_t* crow, const int32_t* col, const float* val,
                 const float* bias, int64_t block, const Isa& isa) {
  at::Tensor panel_t = at::empty({K * panel_tokens(K, T, isa)}, at::kFloat);
  auto par = [](int64_t b, int64_t e, int64_t grain, const auto& fn) { at::parallel_for(b, e, grain, fn); };
  spmm_tiles(x, sxt, sxk, y, syt, syn, T, K, N, crow, col, val, bias, block, isa, panel_t.data_ptr<float>(), par);
}

// -- operator front ends -------------------------------------------------------

static int64_t check_weight(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                            const c10::optional<at::Tensor>& bias, int64_t n_out, int64_t k, const char* op) {
  TORCH_CHECK(crow.scalar_type() == at::kInt && col.scalar_type() == at::kInt, op,
              ": crow_indices and col_indices must be int32, got ", crow.scalar_type(), " and ", col.scalar_type());
  TORCH_CHECK(values.scalar_type() == at::kFloat, op, ": values must be float32, got ", values.scalar_type());
  TORCH_CHECK(crow.is_contiguous() && col.is_contiguous() && values.is_contiguous(), op,
              ": compressed weight tensors must be contiguous");
  int64_t block = 1;
  if (values.dim() == 3) {
    block = values.size(1);
    TORCH_CHECK(values.size(2) == block, op, ": BSR blocks must be square, got ", values.sizes());
  } else {
    TORCH_CHECK(values.dim() == 1, op, ": values must be [nnz] (CSR) or [nnz_blocks, B, B] (BSR), got ", values.sizes());
  }
  TORCH_CHECK(n_out % block == 0 && k % block == 0, op, ": block ", block, " does not divide the weight [", n_out,
              ", ", k, "]");
  TORCH_CHECK(crow.dim() == 1 && crow.numel() == n_out / block + 1, op, ": crow_indices has ", crow.numel(),
              " entries, expected ", n_out / block + 1);
  TORCH_CHECK(col.numel() == values.size(0), op, ": ", col.numel(), " column indices for ", values.size(0),
              " stored values");
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->numel() == n_out, op,
                ": bias must be float32 [", n_out, "], got ", bias->scalar_type(), " ", bias->sizes());
  }
  return block;
}

static at::Tensor torch_sparse_weight(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                                      int64_t n_out, int64_t k, int64_t block) {
  if (block == 1) return at::sparse_csr_tensor(crow, col, values, {n_out, k}, values.options().layout(at::kSparseCsr));
  return at::sparse_bsr_tensor(crow, col, values, {n_out, k}, values.options().layout(at::kSparseBsr));
}

static bool own_kernel(const std::string& kernel, int64_t block, const char* op) {
  if (kernel == "csr" || kernel == "bsr") {
    TORCH_CHECK((kernel == "csr") == (block == 1), op, ": kernel '", kernel, "' does not match values of ",
                block == 1 ? "a CSR" : "a BSR", " weight");
    TORCH_CHECK(block == 1 || block == 2 || block == 4 || block == 8 || block == 16, op, ": BSR block ", block,
                " has no kernel (2, 4, 8, 16); use kernel 'torch_bsr'");
    return true;
  }
  TORCH_CHECK(kernel == "torch_csr" || kernel == "torch_bsr", op, ": unknown kernel '", kernel,
              "' (csr, bsr, torch_csr, torch_bsr)");
  return false;
}

static at::Tensor sparse_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                                const at::Tensor& values, const c10::optional<at::Tensor>& bias, int64_t n_out,
                                const std::string& kernel, const std::string& isa_request) {
  const char* op = "sparsecc::sparse_linear";
  const Isa& isa = call_isa(isa_request, op);
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, ": input must be float32, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, op, ": input must have at least one dimension");
  const int64_t K = x.size(-1);
  const int64_t block = check_weight(crow, col, values, bias, n_out, K, op);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n_out;
  at::Tensor x2 = x.reshape({-1, K}).contiguous();
  const int64_t T = x2.size(0);
  if (!own_kernel(kernel, block, op)) {
    at::Tensor w = torch_sparse_weight(crow, col, values, n_out, K, block);
    at::Tensor yt = at::mm(w, x2.t().contiguous());  // [N, T]
    at::Tensor y = yt.t();
    if (bias.has_value()) y = y + *bias;
    return y.contiguous().reshape(out_shape);
  }
  at::Tensor y = at::empty({T, n_out}, x.options());
  if (T > 0)
    spmm(x2.data_ptr<float>(), K, 1, y.data_ptr<float>(), n_out, 1, T, K, n_out, crow.data_ptr<int32_t>(),
         col.data_ptr<int32_t>(), values.data_ptr<float>(), bias.has_value() ? bias->data_ptr<float>() : nullptr,
         block, isa);
  return y.reshape(out_shape);
}

static at::Tensor sparse_conv1x1(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                                 const at::Tensor& values, const c10::optional<at::Tensor>& bias, int64_t n_out,
                                 const std::string& kernel, const std::string& isa_request) {
  const char* op = "sparsecc::sparse_conv1x1";
  const Isa& isa = call_isa(isa_request, op);
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, ": input must be float32, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 4, op, ": input must be [B, C, H, W], got ", x.sizes());
  const int64_t B = x.size(0), K = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t block = check_weight(crow, col, values, bias, n_out, K, op);
  at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({B, n_out, H, W}, x.options());
  if (!own_kernel(kernel, block, op)) {
    at::Tensor w = torch_sparse_weight(crow, col, values, n_out, K, block);
    for (int64_t b = 0; b < B; ++b) {
      at::Tensor yb = at::mm(w, xc[b].reshape({K, HW}));
      if (bias.has_value()) yb = yb + bias->unsqueeze(1);
      y[b].copy_(yb.reshape({n_out, H, W}));
    }
    return y;
  }
  for (int64_t b = 0; b < B && HW > 0; ++b)
    spmm(xc.data_ptr<float>() + b * K * HW, 1, HW, y.data_ptr<float>() + b * n_out * HW, 1, HW, HW, K, n_out,
         crow.data_ptr<int32_t>(), col.data_ptr<int32_t>(), values.data_ptr<float>(),
         bias.has_value() ? bias->data_ptr<float>() : nullptr, block, isa);
  return y;
}

}  // namespace sparsecc

TORCH_LIBRARY(sparsecc, m) {
  m.def("sparse_linear(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, Tensor? bias, "
        "int out_features, str kernel, str isa=\"\") -> Tensor");
  m.def("sparse_conv1x1(Tensor x, Tensor crow_indices, Tensor col_indices, Tensor values, Tensor? bias, "
        "int out_channels, str kernel, str isa=\"\") -> Tensor");
  m.def("kernel_isa(str request) -> str", &sparsecc::kernel_isa);
}

TORCH_LIBRARY_IMPL(sparsecc, CPU, m) {
  m.impl("sparse_linear", &sparsecc::sparse_linear);
  m.impl("sparse_conv1x1", &sparsecc::sparse_conv1x1);
}
