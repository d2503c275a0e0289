// ExecuTorch kernel library: two out-variant operators over one compressed weight
//
//   sparsecc::et_sparse_linear.out(x[..., K] f32, crow_indices i32, col_indices i32, values f32, bias? f32[N],
//                                  int out_features (N), int in_features (K), *, out[..., N]) -> out
//     out = x @ W^T + bias
//   sparsecc::et_sparse_conv1x1.out(x[B, K, H, W] f32, crow_indices, col_indices, values, bias?, int out_channels,
//                                   int in_channels, *, out[B, N, H, W]) -> out
//     a 1x1 convolution (stride 1, no padding, one group) on NCHW data: out[b, :, h, w] = W @ x[b, :, h, w] + bias
//
// W [N, K] is stored compressed: CSR (values [nnz]) or BSR with square B x B blocks, B in {2, 4, 8, 16}
// (values [nnz_blocks, B, B]); the block is read from the values' shape, so the schema carries no strings.
// The product runs the same kernels as the torch operators and the ONNX Runtime ops (spmm_isa.h /
// spmm_body.h). Loading this library registers both kernels in the ExecuTorch runtime it is linked
// against (libexecutorch.so): the Python runtime finds them when the library was loaded first with
// RTLD_GLOBAL. Bad inputs fail the call (the method's execute returns an error) with a logged message
// naming the op, also kept for SparseccEtLastError(); nothing is read out of bounds.

#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/operator_registry.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "spmm_isa.h"

namespace {

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::KernelRuntimeContext;
using executorch::runtime::Span;
using sparsecc::Isa;

const char* kLinear = "sparsecc::et_sparse_linear.out";
const char* kConv = "sparsecc::et_sparse_conv1x1.out";
const Isa* g_isa = sparsecc::best_isa();

// The last failure's message on this thread: the Python runtime only reports an error code.
thread_local std::string g_last_error;

// Fail the call: log the message, keep it, and mark the kernel context failed.
bool fail(KernelRuntimeContext& ctx, const char* op, const char* fmt, ...) {
  char buf[512];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, args);
  va_end(args);
  g_last_error = std::string(op) + ": " + buf;
  ET_LOG(Error, "%s", g_last_error.c_str());
  ctx.fail(Error::InvalidArgument);
  return false;
}

bool is_float(const Tensor& t) { return t.scalar_type() == ScalarType::Float; }

// The compressed weight must index inside [N, K]: checked on every call, O(rows + nnz), small against
// the product's O(nnz * B * B * tokens). Returns the block (1 = CSR), or 0 after failing the call.
int64_t check_weight(KernelRuntimeContext& ctx, const char* op, const Tensor& crow, const Tensor& col,
                     const Tensor& values, const Tensor* bias, int64_t n, int64_t k) {
  if (crow.scalar_type() != ScalarType::Int || col.scalar_type() != ScalarType::Int || !is_float(values))
    return fail(ctx, op, "crow_indices and col_indices must be int32, values float32"), 0;
  if (crow.dim() != 1 || col.dim() != 1)
    return fail(ctx, op, "crow_indices and col_indices must be 1-D"), 0;
  if (!executorch::runtime::tensor_is_default_dim_order(values) ||
      (bias != nullptr && !executorch::runtime::tensor_is_default_dim_order(*bias)))
    return fail(ctx, op, "values and bias must be contiguous (default dim order)"), 0;
  int64_t block = 1;
  if (values.dim() == 3) {
    block = values.size(1);
    if (values.size(2) != block) return fail(ctx, op, "BSR blocks must be square"), 0;
    if (block != 2 && block != 4 && block != 8 && block != 16)
      return fail(ctx, op, "BSR block %lld has no kernel (2, 4, 8, 16)", (long long)block), 0;
  } else if (values.dim() != 1) {
    return fail(ctx, op, "values must be [nnz] (CSR) or [nnz_blocks, B, B] (BSR), got %d-D", (int)values.dim()), 0;
  }
  if (n <= 0 || k <= 0 || n % block || k % block)
    return fail(ctx, op, "block %lld must divide out_features %lld and in_features %lld", (long long)block,
                (long long)n, (long long)k), 0;
  const int64_t rows = n / block, cols = k / block, nnz = values.size(0);
  if (crow.numel() != rows + 1)
    return fail(ctx, op, "crow_indices has %lld entries, expected %lld", (long long)crow.numel(),
                (long long)(rows + 1)), 0;
  if (col.numel() != nnz)
    return fail(ctx, op, "%lld col_indices for %lld stored values", (long long)col.numel(), (long long)nnz), 0;
  if (bias != nullptr && (!is_float(*bias) || bias->numel() != n))
    return fail(ctx, op, "bias must be float32 with out_features = %lld entries", (long long)n), 0;
  const int32_t* c = crow.const_data_ptr<int32_t>();
  const int32_t* ci = col.const_data_ptr<int32_t>();
  if (c[0] != 0 || c[rows] != nnz)
    return fail(ctx, op, "crow_indices must run from 0 to the %lld stored entries", (long long)nnz), 0;
  for (int64_t r = 0; r < rows; ++r)
    if (c[r + 1] < c[r]) return fail(ctx, op, "crow_indices decrease at row %lld", (long long)r), 0;
  for (int64_t i = 0; i < nnz; ++i)
    if (ci[i] < 0 || ci[i] >= cols)
      return fail(ctx, op, "col_indices[%lld] = %d is outside [0, %lld)", (long long)i, ci[i], (long long)cols), 0;
  return block;
}

// ExecuTorch's process-wide thread pool (the one XNNPACK runs on) as the driver's parallel loop.
struct ParallelFor {
  template <class Fn>
  void operator()(int64_t b, int64_t e, int64_t grain, const Fn& fn) const {
    if (e <= b) return;
    if (e - b <= grain) {
      fn(b, e);
      return;
    }
    if (!executorch::extension::parallel_for(b, e, grain, [&](int64_t lo, int64_t hi) { fn(lo, hi); }))
      fn(b, e);  // the pool refused the range: every output must still be written
  }
};

// Both ops: argument checks, resizing `out`, then one product per image (linear: one over all rows).
void run(KernelRuntimeContext& ctx, Span<EValue*> stack, bool conv1x1) {
  const char* op = conv1x1 ? kConv : kLinear;
  // x, crow_indices, col_indices, values, bias?, out_features, in_features, out (and the returned out)
  if (stack.size() < 8) return (void)fail(ctx, op, "expected 8 arguments, got %zu", stack.size());
  for (int i : {0, 1, 2, 3, 7})
    if (!stack[i]->isTensor()) return (void)fail(ctx, op, "argument %d must be a tensor", i);
  if (!stack[5]->isInt() || !stack[6]->isInt()) return (void)fail(ctx, op, "out_features and in_features must be ints");
  if (!stack[4]->isNone() && !stack[4]->isTensor()) return (void)fail(ctx, op, "bias must be a tensor or None");
  const Tensor& x = stack[0]->toTensor();
  const Tensor& crow = stack[1]->toTensor();
  const Tensor& col = stack[2]->toTensor();
  const Tensor& values = stack[3]->toTensor();
  const Tensor* bias = stack[4]->isTensor() ? &stack[4]->toTensor() : nullptr;
  const int64_t n = stack[5]->toInt(), k = stack[6]->toInt();
  Tensor& out = stack[7]->toTensor();

  if (!is_float(x) || !is_float(out)) return (void)fail(ctx, op, "input and out must be float32");
  if (!executorch::runtime::tensor_is_default_dim_order(x) || !executorch::runtime::tensor_is_default_dim_order(out))
    return (void)fail(ctx, op, "input and out must be contiguous (default dim order%s)", conv1x1 ? ", NCHW" : "");
  if (conv1x1 && x.dim() != 4) return (void)fail(ctx, op, "input must be [B, C, H, W], got %d-D", (int)x.dim());
  if (!conv1x1 && x.dim() < 1) return (void)fail(ctx, op, "input must have at least one dimension");
  const int64_t x_k = conv1x1 ? x.size(1) : x.size(x.dim() - 1);
  if (x_k != k)
    return (void)fail(ctx, op, conv1x1 ? "input must be [B, in_channels = %lld, H, W], got %lld channels"
                                       : "input must end in in_features = %lld columns, got %lld",
                      (long long)k, (long long)x_k);
  const int64_t block = check_weight(ctx, op, crow, col, values, bias, n, k);
  if (block == 0) return;
  if (out.dim() != x.dim()) return (void)fail(ctx, op, "out must have %d dimensions", (int)x.dim());

  SizesType sizes[executorch::runtime::kTensorDimensionLimit];
  for (int d = 0; d < x.dim(); ++d) sizes[d] = x.size(d);
  sizes[conv1x1 ? 1 : x.dim() - 1] = static_cast<SizesType>(n);
  if (executorch::runtime::resize_tensor(out, {sizes, static_cast<size_t>(x.dim())}) != Error::Ok)
    return (void)fail(ctx, op, "cannot resize out to the result's shape (more than the planned memory?)");

  // Linear: one product over all rows, channels contiguous. Conv 1x1: one product per image, its H*W
  // pixels the tokens, channels at stride H*W (NCHW), written back in the same layout.
  const int64_t images = conv1x1 ? x.size(0) : 1;
  const int64_t T = conv1x1 ? x.size(2) * x.size(3) : (k ? x.numel() / k : 0);
  if (T == 0 || images == 0) return;
  const int64_t tok_stride = conv1x1 ? 1 : k, x_ch = conv1x1 ? T : 1;
  const int64_t y_tok = conv1x1 ? 1 : n, y_ch = conv1x1 ? T : 1;
  // One panel per calling thread, reused: a fresh one per call would be mapped and faulted in each time.
  thread_local std::vector<float> panel;
  panel.resize(static_cast<size_t>(k * sparsecc::panel_tokens(k, T, *g_isa)));
  const float* xp = x.const_data_ptr<float>();
  float* yp = out.mutable_data_ptr<float>();
  for (int64_t b = 0; b < images; ++b)
    sparsecc::spmm_tiles(xp + b * k * T, tok_stride, x_ch, yp + b * n * T, y_tok, y_ch, T, k, n,
                         crow.const_data_ptr<int32_t>(), col.const_data_ptr<int32_t>(),
                         values.const_data_ptr<float>(), bias ? bias->const_data_ptr<float>() : nullptr, block,
                         *g_isa, panel.data(), ParallelFor{});
}

void linear_out(KernelRuntimeContext& ctx, Span<EValue*> stack) { run(ctx, stack, false); }
void conv1x1_out(KernelRuntimeContext& ctx, Span<EValue*> stack) { run(ctx, stack, true); }

const executorch::runtime::Kernel g_kernels[] = {
    executorch::runtime::Kernel(kLinear, linear_out),
    executorch::runtime::Kernel(kConv, conv1x1_out),
};

bool registered(const char* name) {
  // Walk the registry ourselves: registry_has_op_function logs an error for every name it lacks.
  for (const auto& kn : executorch::runtime::get_registered_kernels())
    if (kn.name_ != nullptr && std::strcmp(kn.name_, name) == 0) return true;
  return false;
}

// Registered once per process at load: a second copy of this library (another path) finds the
// names taken and registers nothing, where registering them again would abort the process.
[[maybe_unused]] const bool g_registered_here = [] {
  if (registered(kLinear) || registered(kConv)) return false;
  return executorch::runtime::register_kernels({g_kernels, 2}) == Error::Ok;
}();

}  // namespace

extern "C" {

// The instruction set the kernels run with here ("avx512", "avx2", "portable"), for reports.
__attribute__((visibility("default"))) const char* SparseccEtIsa() { return g_isa->name; }

// The message of the last failed call on this thread ("" when none), and clearing it.
__attribute__((visibility("default"))) const char* SparseccEtLastError() { return g_last_error.c_str(); }
__attribute__((visibility("default"))) void SparseccEtClearError() { g_last_error.clear(); }

}  // extern "C"
