// ONNX Runtime custom-op library: the domain `sparsecc` with ops over one compressed weight
//
//   sparsecc.SparseMatMul(X[..., K] f32, crow_indices i32, col_indices i32, values f32, bias? f32[N]) -> Y[..., N]
//     Y = X @ W^T + bias
//   sparsecc.SparseConv1x1(X[B, K, H, W] f32, crow_indices, col_indices, values, bias?) -> Y[B, N, H, W]
//     a 1x1 convolution (stride 1, no padding, one group) on NCHW data: Y[b, :, h, w] = W @ X[b, :, h, w] + bias
//   attributes: out_features (N), in_features (K), block (1 = CSR, else square BSR blocks of 2, 4, 8, 16)
//
// W [N, K] is stored compressed (CSR values [nnz], BSR values [nnz_blocks, B, B]) and multiplied by the
// same kernels as the torch operators (spmm_isa.h / spmm_body.h); the convolution reads each image's
// channels at stride H*W, as sparsecc::sparse_conv1x1 does. Only the ONNX Runtime C API is used (headers
// only; the runtime hands its API table to RegisterCustomOps), so the library links against nothing but
// libc and runs under any ONNX Runtime from 1.21 (C API version 21) on. Bad inputs fail the call with a
// message naming the op and node, never read out of bounds.
//
//   sparsecc.SparseMatMulInt8(X[..., K] f32, crow_indices i32, col_indices i32, values i8 [nnz, br, bc],
//                             scales f32[N], bias? f32[N]) -> Y[..., N] f32
//     attributes out_features, in_features, block (1: 1x4 row groups, else square 4, 8, 16 blocks),
//     act_scale (float, default 0: activations quantized per token at run time; > 0: this static scale)
//
// computes what torch.ops.sparsecc.int8_linear computes, by the same driver (int8_driver.h): values are the
// int8 weight in the layout sparsecc.kernels.compress_int8 packs ([nnz_blocks, br, bc], row-major blocks),
// scales the per-output-channel weight scales. The one derived array, the row sums of the integers that the
// VNNI path subtracts (x128), is made once at kernel creation when crow_indices and values are constant
// initializers (the file stays the program's integers, nothing packed beside them), else on each call.

#define ORT_API_MANUAL_INIT
#include <onnxruntime_c_api.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "int8_driver.h"
#include "spmm_isa.h"

namespace {

using sparsecc::Isa;

const char* kDomain = "sparsecc";
const char* kLibrary = "libsparsecc_ort.so";
const Isa* g_isa = sparsecc::best_isa();
// The int8 op's ISA: the fp32 choice (SPARSECC_ISA included) narrowed to what int8 code this CPU has.
const std::string g_int8_isa = sparsecc::int8k::narrow_isa(g_isa->name);

// The two ops differ only in how X and Y are laid out around the product.
struct SparseOp : OrtCustomOp {
  const char* name;
  bool conv1x1;
  bool int8;  // SparseMatMulInt8: int8 values, per-channel scales, then the bias
};

struct Kernel {
  const OrtApi* api;
  std::string node;  // "sparsecc.SparseMatMul node 'name'" for messages
  int64_t n, k, block;
  bool conv1x1;
  // SparseMatMulInt8 only: blocks br x bc (br = block, bc = 4 for block 1), the static activation scale
  // (0: per token), and the row sums of constant integers with the buffers they were made from.
  bool int8 = false;
  int64_t bc = 0;
  float act_scale = 0.f;
  std::vector<int32_t> row_sums;
  const void* sums_crow = nullptr;
  const void* sums_val = nullptr;
};

OrtStatus* fail(const OrtApi* api, const std::string& where, const std::string& what) {
  return api->CreateStatus(ORT_INVALID_ARGUMENT, (where + ": " + what).c_str());
}

#define SPARSECC_TRY(expr)                  \
  do {                                      \
    if (OrtStatus* _s = (expr)) return _s;  \
  } while (0)

// Shape and element type of one input.
OrtStatus* describe(const OrtApi* api, const OrtValue* v, std::vector<int64_t>& dims, ONNXTensorElementDataType& type) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  SPARSECC_TRY(api->GetTensorTypeAndShape(v, &info));
  size_t n = 0;
  OrtStatus* s = api->GetDimensionsCount(info, &n);
  if (!s) {
    dims.assign(n, 0);
    s = api->GetDimensions(info, dims.data(), n);
  }
  if (!s) s = api->GetTensorElementType(info, &type);
  api->ReleaseTensorTypeAndShapeInfo(info);
  return s;
}

int64_t count(const std::vector<int64_t>& dims) {
  int64_t c = 1;
  for (int64_t d : dims) c *= d;
  return c;
}

const void* data_of(const OrtApi* api, const OrtValue* v, OrtStatus** status) {
  void* p = nullptr;  // the C API has no const getter; inputs are only read
  *status = api->GetTensorMutableData(const_cast<OrtValue*>(v), &p);
  return p;
}

// The compressed weight must index inside [N, K]: checked on every call, O(rows + nnz), small
// against the product's O(nnz * B * B * tokens).
// rows x cols blocks; col == nullptr checks crow_indices alone.
OrtStatus* check_index(const OrtApi* api, const std::string& node, int64_t rows, int64_t cols, const int32_t* crow,
                       int64_t crow_n, const int32_t* col, int64_t nnz) {
  if (crow_n != rows + 1)
    return fail(api, node, "crow_indices has " + std::to_string(crow_n) + " entries, expected " +
                               std::to_string(rows + 1));
  if (crow[0] != 0 || crow[rows] != nnz)
    return fail(api, node, "crow_indices must run from 0 to the " + std::to_string(nnz) + " stored entries");
  for (int64_t r = 0; r < rows; ++r)
    if (crow[r + 1] < crow[r]) return fail(api, node, "crow_indices decrease at row " + std::to_string(r));
  for (int64_t i = 0; col && i < nnz; ++i)
    if (col[i] < 0 || col[i] >= cols)
      return fail(api, node, "col_indices[" + std::to_string(i) + "] = " + std::to_string(col[i]) +
                                 " is outside [0, " + std::to_string(cols) + ")");
  return nullptr;
}

OrtStatus* check_weight(const Kernel& kn, const int32_t* crow, int64_t crow_n, const int32_t* col, int64_t nnz) {
  return check_index(kn.api, kn.node, kn.n / kn.block, kn.k / kn.block, crow, crow_n, col, nnz);
}

// ORT's intra-op pool as the driver's parallel loop: each range [b, e) is cut into grain-sized tasks.
struct ParallelFor {
  const OrtApi* api;
  const OrtKernelContext* ctx;
  template <class Fn>
  void operator()(int64_t b, int64_t e, int64_t grain, const Fn& fn) const {
    struct Task {
      const Fn* fn;
      int64_t b, e, grain;
    } task{&fn, b, e, grain};
    const int64_t tasks = (e - b + grain - 1) / grain;
    auto run = [](void* data, size_t i) {
      const Task* t = static_cast<const Task*>(data);
      const int64_t lo = t->b + static_cast<int64_t>(i) * t->grain;
      (*t->fn)(lo, std::min(t->e, lo + t->grain));
    };
    if (tasks <= 1) {
      if (e > b) fn(b, e);
      return;
    }
    if (OrtStatus* s = api->KernelContext_ParallelFor(ctx, run, static_cast<size_t>(tasks), 0, &task)) {
      api->ReleaseStatus(s);  // no pool: run here
      for (int64_t i = 0; i < tasks; ++i) run(&task, static_cast<size_t>(i));
    }
  }
};

OrtStatus* compute(Kernel& kn, OrtKernelContext* ctx) {
  const OrtApi* api = kn.api;
  size_t n_in = 0;
  SPARSECC_TRY(api->KernelContext_GetInputCount(ctx, &n_in));
  const OrtValue* in[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
  for (size_t i = 0; i < n_in && i < 5; ++i) SPARSECC_TRY(api->KernelContext_GetInput(ctx, i, &in[i]));
  for (int i = 0; i < 4; ++i)
    if (!in[i]) return fail(api, kn.node, "input " + std::to_string(i) + " is missing");
  std::vector<int64_t> xd, cd, id, vd, bd;
  ONNXTensorElementDataType xt, ct, it, vt, bt = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  SPARSECC_TRY(describe(api, in[0], xd, xt));
  SPARSECC_TRY(describe(api, in[1], cd, ct));
  SPARSECC_TRY(describe(api, in[2], id, it));
  SPARSECC_TRY(describe(api, in[3], vd, vt));
  if (in[4]) SPARSECC_TRY(describe(api, in[4], bd, bt));
  const auto F = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, I = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  if (xt != F || vt != F || bt != F || ct != I || it != I)
    return fail(api, kn.node, "X, values and bias must be float32, crow_indices and col_indices int32");
  if (kn.conv1x1 && (xd.size() != 4 || xd[1] != kn.k))
    return fail(api, kn.node, "X must be [B, in_features = " + std::to_string(kn.k) + ", H, W]");
  if (!kn.conv1x1 && (xd.empty() || xd.back() != kn.k))
    return fail(api, kn.node, "X must end in in_features = " + std::to_string(kn.k) + " columns");
  const int64_t nnz = vd.empty() ? 0 : vd[0];
  const bool shape_ok = kn.block == 1 ? vd.size() == 1 : (vd.size() == 3 && vd[1] == kn.block && vd[2] == kn.block);
  if (!shape_ok || count(id) != nnz)
    return fail(api, kn.node, "values must be [nnz] (block 1) or [nnz, B, B] with one col_indices entry each");
  if (in[4] && count(bd) != kn.n) return fail(api, kn.node, "bias must have out_features entries");
  OrtStatus* s = nullptr;
  const float* x = static_cast<const float*>(data_of(api, in[0], &s));
  SPARSECC_TRY(s);
  const int32_t* crow = static_cast<const int32_t*>(data_of(api, in[1], &s));
  SPARSECC_TRY(s);
  const int32_t* col = static_cast<const int32_t*>(data_of(api, in[2], &s));
  SPARSECC_TRY(s);
  const float* val = static_cast<const float*>(data_of(api, in[3], &s));
  SPARSECC_TRY(s);
  const float* bias = nullptr;
  if (in[4]) {
    bias = static_cast<const float*>(data_of(api, in[4], &s));
    SPARSECC_TRY(s);
  }
  SPARSECC_TRY(check_weight(kn, crow, count(cd), col, nnz));

  std::vector<int64_t> yd = xd;
  yd[kn.conv1x1 ? 1 : yd.size() - 1] = kn.n;
  OrtValue* out = nullptr;
  SPARSECC_TRY(api->KernelContext_GetOutput(ctx, 0, yd.data(), yd.size(), &out));
  float* y = nullptr;
  SPARSECC_TRY(api->GetTensorMutableData(out, reinterpret_cast<void**>(&y)));
  // Linear: one product over all rows, channels contiguous. Conv 1x1: one product per image, its H*W
  // pixels the tokens, channels at stride H*W (NCHW), written back in the same layout.
  const int64_t images = kn.conv1x1 ? xd[0] : 1;
  const int64_t T = kn.conv1x1 ? xd[2] * xd[3] : count(xd) / kn.k;
  const int64_t tok_stride = kn.conv1x1 ? 1 : kn.k, x_ch = kn.conv1x1 ? T : 1;
  const int64_t y_tok = kn.conv1x1 ? 1 : kn.n, y_ch = kn.conv1x1 ? T : 1;
  if (T == 0) return nullptr;
  // One panel per calling thread, reused: a fresh one per call would be mapped and faulted in each time.
  thread_local std::vector<float> panel;
  panel.resize(static_cast<size_t>(kn.k * sparsecc::panel_tokens(kn.k, T, *g_isa)));
  for (int64_t b = 0; b < images; ++b)
    sparsecc::spmm_tiles(x + b * kn.k * T, tok_stride, x_ch, y + b * kn.n * T, y_tok, y_ch, T, kn.k, kn.n, crow, col,
                         val, bias, kn.block, *g_isa, panel.data(), ParallelFor{api, ctx});
  return nullptr;
}

// Sum of each output row's stored integers (crow_indices already checked against values).
void sum_rows(const int32_t* crow, const int8_t* val, int64_t rows, int64_t br, int64_t bc, int32_t* out) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < br; ++i) {
      int32_t sum = 0;
      for (int32_t b = crow[r]; b < crow[r + 1]; ++b)
        for (int64_t j = 0; j < bc; ++j) sum += val[(static_cast<int64_t>(b) * br + i) * bc + j];
      out[r * br + i] = sum;
    }
}

OrtStatus* compute_int8(Kernel& kn, OrtKernelContext* ctx) {
  const OrtApi* api = kn.api;
  size_t n_in = 0;
  SPARSECC_TRY(api->KernelContext_GetInputCount(ctx, &n_in));
  const OrtValue* in[6] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  for (size_t i = 0; i < n_in && i < 6; ++i) SPARSECC_TRY(api->KernelContext_GetInput(ctx, i, &in[i]));
  for (int i = 0; i < 5; ++i)
    if (!in[i]) return fail(api, kn.node, "input " + std::to_string(i) + " is missing");
  std::vector<int64_t> d[6];
  ONNXTensorElementDataType t[6];
  t[5] = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  for (int i = 0; i < 6; ++i)
    if (in[i]) SPARSECC_TRY(describe(api, in[i], d[i], t[i]));
  const auto F = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, I = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  if (t[0] != F || t[1] != I || t[2] != I || t[3] != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 || t[4] != F || t[5] != F)
    return fail(api, kn.node, "X, scales and bias must be float32, crow_indices and col_indices int32, values int8");
  if (d[0].empty() || d[0].back() != kn.k)
    return fail(api, kn.node, "X must end in in_features = " + std::to_string(kn.k) + " columns");
  const std::vector<int64_t>& vd = d[3];
  const int64_t nnz = vd.empty() ? 0 : vd[0];
  if (vd.size() != 3 || vd[1] != kn.block || vd[2] != kn.bc || count(d[2]) != nnz)
    return fail(api, kn.node, "values must be [nnz, " + std::to_string(kn.block) + ", " + std::to_string(kn.bc) +
                                  "] with one col_indices entry each");
  if (count(d[4]) != kn.n) return fail(api, kn.node, "scales must have out_features entries");
  if (in[5] && count(d[5]) != kn.n) return fail(api, kn.node, "bias must have out_features entries");
  OrtStatus* s = nullptr;
  const void* p[6] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  for (int i = 0; i < 6; ++i)
    if (in[i]) {
      p[i] = data_of(api, in[i], &s);
      SPARSECC_TRY(s);
    }
  const int32_t* crow = static_cast<const int32_t*>(p[1]);
  const int8_t* val = static_cast<const int8_t*>(p[3]);
  SPARSECC_TRY(check_index(api, kn.node, kn.n / kn.block, kn.k / kn.bc, crow, count(d[1]),
                           static_cast<const int32_t*>(p[2]), nnz));

  std::vector<int64_t> yd = d[0];
  yd.back() = kn.n;
  OrtValue* out = nullptr;
  SPARSECC_TRY(api->KernelContext_GetOutput(ctx, 0, yd.data(), yd.size(), &out));
  float* y = nullptr;
  SPARSECC_TRY(api->GetTensorMutableData(out, reinterpret_cast<void**>(&y)));
  const int64_t T = count(d[0]) / kn.k;
  if (T == 0) return nullptr;
  std::vector<int32_t> fresh;  // the weight is not the constant one the sums were made from: sum it here
  const int32_t* sums = kn.row_sums.data();
  if (kn.row_sums.empty() || kn.sums_crow != p[1] || kn.sums_val != p[3]) {
    fresh.resize(static_cast<size_t>(kn.n));
    sum_rows(crow, val, kn.n / kn.block, kn.block, kn.bc, fresh.data());
    sums = fresh.data();
  }
  const sparsecc::int8k::QJob base{nullptr, nullptr, 0, nullptr, nullptr, kn.n, 0, 0, crow,
                                   static_cast<const int32_t*>(p[2]), val, static_cast<const float*>(p[4]), sums,
                                   static_cast<const float*>(p[5]), kn.block};
  // Scratch per calling thread, reused across calls (as the fp32 panel).
  thread_local std::vector<uint8_t> panel;
  thread_local std::vector<float> scales;
  const sparsecc::int8k::Int8Scratch need = sparsecc::int8k::int8_scratch(T, kn.k, kn.block, g_int8_isa);
  panel.resize(static_cast<size_t>(need.panel_bytes));
  scales.resize(static_cast<size_t>(std::max<int64_t>(need.scales, 1)));
  sparsecc::int8k::int8_tiles(static_cast<const float*>(p[0]), y, T, kn.k, kn.n, base, kn.act_scale, g_int8_isa,
                              panel.data(), scales.data(), ParallelFor{api, ctx});
  return nullptr;
}

// Constant crow_indices and values (initializers): their row sums, made once for every call.
void cache_row_sums(const OrtApi* api, const OrtKernelInfo* info, Kernel& kn) {
  const OrtValue* v[2] = {nullptr, nullptr};
  const size_t idx[2] = {1, 3};
  for (int i = 0; i < 2; ++i) {
    int constant = 0;
    if (OrtStatus* s = api->KernelInfoGetConstantInput_tensor(info, idx[i], &constant, &v[i])) {
      api->ReleaseStatus(s);
      return;
    }
    if (!constant || !v[i]) return;
  }
  std::vector<int64_t> cd, vd;
  ONNXTensorElementDataType ct, vt;
  OrtStatus* s = describe(api, v[0], cd, ct);
  if (!s) s = describe(api, v[1], vd, vt);
  if (s) return api->ReleaseStatus(s);
  if (ct != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 || vt != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 || vd.size() != 3 ||
      vd[1] != kn.block || vd[2] != kn.bc)
    return;  // compute_int8 reports it
  const void* crow = data_of(api, v[0], &s);
  const void* val = s ? nullptr : data_of(api, v[1], &s);
  if (s) return api->ReleaseStatus(s);
  if (OrtStatus* bad = check_index(api, kn.node, kn.n / kn.block, 0, static_cast<const int32_t*>(crow),
                                   count(cd), nullptr, vd[0]))
    return api->ReleaseStatus(bad);  // compute_int8 reports it
  kn.row_sums.resize(static_cast<size_t>(kn.n));
  sum_rows(static_cast<const int32_t*>(crow), static_cast<const int8_t*>(val), kn.n / kn.block, kn.block, kn.bc,
           kn.row_sums.data());
  kn.sums_crow = crow;
  kn.sums_val = val;
}

OrtStatus* create_kernel(const SparseOp& op, const OrtApi* api, const OrtKernelInfo* info, void** out) {
  std::string node = std::string(kDomain) + "." + op.name + " node";
  size_t size = 0;
  if (OrtStatus* s = api->KernelInfo_GetNodeName(info, nullptr, &size)) {
    api->ReleaseStatus(s);
  } else if (size > 1) {
    std::vector<char> name(size);
    if (OrtStatus* s2 = api->KernelInfo_GetNodeName(info, name.data(), &size)) api->ReleaseStatus(s2);
    else node += " '" + std::string(name.data()) + "'";
  }
  int64_t n = 0, k = 0, block = 1;
  SPARSECC_TRY(api->KernelInfoGetAttribute_int64(info, "out_features", &n));
  SPARSECC_TRY(api->KernelInfoGetAttribute_int64(info, "in_features", &k));
  if (OrtStatus* s = api->KernelInfoGetAttribute_int64(info, "block", &block)) {
    api->ReleaseStatus(s);  // absent: CSR
    block = 1;
  }
  if (op.int8) {
    if (block != 1 && block != 4 && block != 8 && block != 16)
      return fail(api, node, "block " + std::to_string(block) + " has no int8 kernel (1 for 1x4 groups, 4, 8, 16)");
    const int64_t bc = block == 1 ? 4 : block;
    float act_scale = 0.f;
    if (OrtStatus* s = api->KernelInfoGetAttribute_float(info, "act_scale", &act_scale)) {
      api->ReleaseStatus(s);  // absent: dynamic, per token
      act_scale = 0.f;
    }
    if (!(act_scale >= 0.f) || act_scale == INFINITY)
      return fail(api, node, "act_scale must be >= 0 (0: dynamic), got " + std::to_string(act_scale));
    if (n <= 0 || k <= 0 || n % block || k % bc)
      return fail(api, node, "block " + std::to_string(block) + "x" + std::to_string(bc) +
                                 " must divide out_features " + std::to_string(n) + " and in_features " +
                                 std::to_string(k));
    Kernel* kn = new Kernel{api, node, n, k, block, false};
    kn->int8 = true;
    kn->bc = bc;
    kn->act_scale = act_scale;
    cache_row_sums(api, info, *kn);
    *out = kn;
    return nullptr;
  }
  if (block != 1 && block != 2 && block != 4 && block != 8 && block != 16)
    return fail(api, node, "block " + std::to_string(block) + " has no kernel (1, 2, 4, 8, 16)");
  if (n <= 0 || k <= 0 || n % block || k % block)
    return fail(api, node, "block " + std::to_string(block) + " must divide out_features " + std::to_string(n) +
                               " and in_features " + std::to_string(k));
  *out = new Kernel{api, node, n, k, block, op.conv1x1};
  return nullptr;
}

SparseOp make_op(const char* name, bool conv1x1, bool int8 = false) {
  SparseOp op;
  std::memset(static_cast<OrtCustomOp*>(&op), 0, sizeof(OrtCustomOp));
  op.name = name;
  op.conv1x1 = conv1x1;
  op.int8 = int8;
  op.version = ORT_API_VERSION;
  op.GetName = [](const OrtCustomOp* self) { return static_cast<const SparseOp*>(self)->name; };
  op.GetExecutionProviderType = [](const OrtCustomOp*) { return "CPUExecutionProvider"; };
  op.GetInputTypeCount = [](const OrtCustomOp* self) -> size_t {
    return static_cast<const SparseOp*>(self)->int8 ? 6 : 5;
  };
  op.GetInputType = [](const OrtCustomOp* self, size_t i) {
    if (static_cast<const SparseOp*>(self)->int8 && i == 3) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
    return i == 1 || i == 2 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  };
  op.GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
  op.GetOutputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
  op.GetInputCharacteristic = [](const OrtCustomOp* self, size_t i) {  // the bias, last, is optional
    return i == (static_cast<const SparseOp*>(self)->int8 ? 5u : 4u) ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  };
  op.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  op.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
  op.CreateKernelV2 = [](const OrtCustomOp* self, const OrtApi* api, const OrtKernelInfo* info, void** kernel) {
    return create_kernel(*static_cast<const SparseOp*>(self), api, info, kernel);
  };
  op.KernelComputeV2 = [](void* kernel, OrtKernelContext* ctx) {
    Kernel& kn = *static_cast<Kernel*>(kernel);
    return kn.int8 ? compute_int8(kn, ctx) : compute(kn, ctx);
  };
  op.KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
  return op;
}

const SparseOp g_ops[] = {make_op("SparseMatMul", false), make_op("SparseConv1x1", true),
                          make_op("SparseMatMulInt8", false, true)};
std::mutex g_mutex;
std::vector<OrtCustomOpDomain*> g_domains;  // each must outlive the sessions that use it: kept until exit

}  // namespace

extern "C" {

__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                  const OrtApiBase* base) {
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {  // an older runtime: its version-1 table can still carry the message
    std::string msg = std::string(kLibrary) + " needs ONNX Runtime 1." + std::to_string(ORT_API_VERSION) +
                      " or newer (C API " + std::to_string(ORT_API_VERSION) + "); this runtime is " +
                      base->GetVersionString();
    return base->GetApi(1)->CreateStatus(ORT_FAIL, msg.c_str());
  }
  OrtCustomOpDomain* domain = nullptr;
  SPARSECC_TRY(api->CreateCustomOpDomain(kDomain, &domain));
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_domains.push_back(domain);
  }
  for (const SparseOp& op : g_ops) SPARSECC_TRY(api->CustomOpDomain_Add(domain, &op));
  return api->AddCustomOpDomain(options, domain);
}

// The instruction set the kernels run with here ("avx512", "avx2", "portable"), for reports.
__attribute__((visibility("default"))) const char* SparseccOrtIsa() { return g_isa->name; }

// The instruction set of SparseMatMulInt8 ("avx512" = VNNI, "avx2", "portable"; "neon" = sdot on AArch64).
__attribute__((visibility("default"))) const char* SparseccOrtInt8Isa() { return g_int8_isa.c_str(); }

}  // extern "C"
