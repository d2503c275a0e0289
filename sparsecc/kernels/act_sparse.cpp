// sparsecc activation-sparse linear: dense weight x sparse activations, for
// decoding-sized inputs (1-8 tokens), registered as the torch operator
//
//   sparsecc::act_sparse_linear(x[..., K], weight_t[K, N], bias?, threshold) -> [..., N]
//
// Only the inputs with |x| > threshold contribute: for each token the kernel
// lists them, then streams just their weight rows (weight_t is the transposed
// weight, so one input's row is contiguous). At one token a linear is bound by
// reading the weight, so skipping half the inputs skips half the bytes.
// threshold < 0 uses every input (the dense product in the same order);
// threshold 0 skips exact zeros only (ReLU outputs), which changes no bit of
// the result: each output is accumulated over the kept inputs in increasing
// k, bias added last, and a skipped term adds x * w = +-0 to a sum that is
// never -0 (it starts at +0). Weights must be finite for that to hold.

#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace sparsecc {
namespace act {

// y[n0:n1] += sum over active (k, a) of a * wt[k, n0:n1], AVX2 + FMA. Four weight rows per pass,
// streamed front to back; each output's FMAs still chain in increasing k, so the sum's rounding is
// exactly that of one row at a time (the exactness above rests on that order).
__attribute__((target("avx2,fma")))
static void rows_avx2(const float* wt, int64_t N, const int32_t* idx, const float* val, int64_t nact,
                      int64_t n0, int64_t n1, float* y) {
  const int64_t vec_end = n0 + ((n1 - n0) / 8) * 8;
  int64_t j = 0;
  for (; j + 4 <= nact; j += 4) {
    const float* w0 = wt + static_cast<int64_t>(idx[j]) * N;
    const float* w1 = wt + static_cast<int64_t>(idx[j + 1]) * N;
    const float* w2 = wt + static_cast<int64_t>(idx[j + 2]) * N;
    const float* w3 = wt + static_cast<int64_t>(idx[j + 3]) * N;
    const __m256 a0 = _mm256_set1_ps(val[j]), a1 = _mm256_set1_ps(val[j + 1]);
    const __m256 a2 = _mm256_set1_ps(val[j + 2]), a3 = _mm256_set1_ps(val[j + 3]);
    int64_t n = n0;
    for (; n < vec_end; n += 8) {
      __m256 acc = _mm256_loadu_ps(y + n);
      acc = _mm256_fmadd_ps(a0, _mm256_loadu_ps(w0 + n), acc);
      acc = _mm256_fmadd_ps(a1, _mm256_loadu_ps(w1 + n), acc);
      acc = _mm256_fmadd_ps(a2, _mm256_loadu_ps(w2 + n), acc);
      acc = _mm256_fmadd_ps(a3, _mm256_loadu_ps(w3 + n), acc);
      _mm256_storeu_ps(y + n, acc);
    }
    for (; n < n1; ++n)
      y[n] = std::fma(val[j + 3], w3[n], std::fma(val[j + 2], w2[n], std::fma(val[j + 1], w1[n],
                      std::fma(val[j], w0[n], y[n]))));
  }
  for (; j < nact; ++j) {
    const float* w0 = wt + static_cast<int64_t>(idx[j]) * N;
    const __m256 a0 = _mm256_set1_ps(val[j]);
    int64_t n = n0;
    for (; n < vec_end; n += 8) _mm256_storeu_ps(y + n, _mm256_fmadd_ps(a0, _mm256_loadu_ps(w0 + n), _mm256_loadu_ps(y + n)));
    for (; n < n1; ++n) y[n] = std::fma(val[j], w0[n], y[n]);
  }
}

// the same sums, one row at a time, without vector instructions
static void rows_scalar(const float* wt, int64_t N, const int32_t* idx, const float* val, int64_t nact,
                        int64_t n0, int64_t n1, float* y) {
  for (int64_t j = 0; j < nact; ++j) {
    const float* w = wt + static_cast<int64_t>(idx[j]) * N;
    for (int64_t n = n0; n < n1; ++n) y[n] = std::fma(val[j], w[n], y[n]);
  }
}

static bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}

static bool use_avx2 = true;  // switched off by act_sparse_isa("portable") for tests

at::Tensor act_sparse_linear(const at::Tensor& x, const at::Tensor& weight_t, const c10::optional<at::Tensor>& bias,
                             double threshold) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight_t.scalar_type() == at::kFloat,
              "act_sparse_linear: float32 input and weight expected, got ", x.scalar_type(), " and ",
              weight_t.scalar_type());
  TORCH_CHECK(weight_t.dim() == 2, "act_sparse_linear: weight_t must be [K, N], got ", weight_t.sizes());
  const int64_t K = weight_t.size(0), N = weight_t.size(1);
  TORCH_CHECK(x.size(-1) == K, "act_sparse_linear: input has ", x.size(-1), " features, the weight ", K);
  const at::Tensor xc = x.contiguous().reshape({-1, K});
  const at::Tensor wc = weight_t.contiguous();
  const int64_t M = xc.size(0);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  at::Tensor y = at::empty({M, N}, x.options());
  const float* wp = wc.data_ptr<float>();
  const float* bp = nullptr;
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    bc = bias->contiguous();
    TORCH_CHECK(bc.numel() == N, "act_sparse_linear: bias has ", bc.numel(), " values, expected ", N);
    bp = bc.data_ptr<float>();
  }
  const float thr = static_cast<float>(threshold);
  const bool avx2 = use_avx2 && has_avx2();
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = xc.data_ptr<float>() + m * K;
    float* yr = y.data_ptr<float>() + m * N;
    std::vector<int32_t> idx;
    std::vector<float> val;
    idx.reserve(K);
    val.reserve(K);
    for (int64_t k = 0; k < K; ++k) {
      if (threshold < 0 || std::fabs(xr[k]) > thr) {
        idx.push_back(static_cast<int32_t>(k));
        val.push_back(xr[k]);
      }
    }
    const int64_t nact = static_cast<int64_t>(idx.size());
    std::fill(yr, yr + N, 0.0f);
    // threads split the outputs (multiples of 64 floats: whole cache lines per thread)
    at::parallel_for(0, (N + 63) / 64, 4, [&](int64_t c0, int64_t c1) {
      const int64_t n0 = c0 * 64, n1 = std::min(N, c1 * 64);
      if (avx2) rows_avx2(wp, N, idx.data(), val.data(), nact, n0, n1, yr);
      else rows_scalar(wp, N, idx.data(), val.data(), nact, n0, n1, yr);
    });
    if (bp != nullptr)
      for (int64_t n = 0; n < N; ++n) yr[n] += bp[n];
  }
  return y.reshape(out_shape);
}

std::string act_sparse_isa(const std::string& request) {
  if (request == "portable") use_avx2 = false;
  else if (request == "avx2") use_avx2 = true;
  else TORCH_CHECK(request.empty(), "act_sparse_isa: unknown request '", request, "' (avx2, portable or '')");
  return use_avx2 && has_avx2() ? "avx2" : "portable";
}

}  // namespace act
}  // namespace sparsecc

TORCH_LIBRARY_FRAGMENT(sparsecc, m) {
  m.def("act_sparse_linear(Tensor x, Tensor weight_t, Tensor? bias, float threshold) -> Tensor");
  m.def("act_sparse_isa(str request) -> str", &sparsecc::act::act_sparse_isa);
}

TORCH_LIBRARY_IMPL(sparsecc, CPU, m) { m.impl("act_sparse_linear", &sparsecc::act::act_sparse_linear); }
