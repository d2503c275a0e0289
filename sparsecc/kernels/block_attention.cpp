// sparsecc block-sparse attention: exact softmax attention over the kept key
// blocks of each query block, registered as the torch operator
//
//   sparsecc::block_attention(q[B,H,Sq,D], k[B,Hk,Sk,D], v[B,Hk,Sk,Dv], attn_mask?, is_causal,
//                             scale, block, kept[B,H,nQ,nK] bool) -> [B,H,Sq,Dv]
//
// Query rows are cut into blocks of `block` rows, keys into blocks of `block`
// columns (the last ones may be shorter); kept[b,h,qb,kb] says whether query
// block qb reads key block kb. Skipped blocks cost nothing: neither their
// scores nor their exponentials nor their values are computed. Over the kept
// blocks the softmax is exact (online softmax in fp32, as in flash attention):
// with every block kept the result is dense attention.
//
// attn_mask is additive (float) or boolean (true = attend), broadcastable to
// [B,H,Sq,Sk]; is_causal lets row i see columns j <= i (top-left, as torch's
// SDPA). Heads share keys when Hk < H (grouped-query attention): head h reads
// key head h / (H / Hk). A row that sees no column among its kept blocks gets 0.

#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace sparsecc {
namespace attn {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Problem {
  int64_t B, H, Hk, Sq, Sk, D, Dv, block, nq, nk;
  const float *q, *k, *v;
  int64_t qs[3], ks[3], vs[3];  // strides of batch, head, row (the last dim is contiguous)
  const float* mask;            // null without a mask
  int64_t ms[4];                // mask strides (0 on broadcast dims)
  bool causal;
  float scale;
  const bool* kept;  // [B, H, nq, nk], contiguous
  float* out;        // [B, H, Sq, Dv], contiguous
};

// Per-thread scratch. K is packed transposed, one [D, block] panel per key block, the first time a
// query block of the head reads it; the panels serve every later query block of that key head.
struct Scratch {
  std::vector<float> qs, kt, s, o, m, l;
  std::vector<char> packed;  // per key block: panel filled for key head (b, kh) == head
  int64_t head = -1;
  Scratch(const Problem& p) {
    qs.resize(p.block * p.D);
    kt.resize(p.nk * p.D * p.block);
    s.resize(p.block * p.block);
    o.resize(p.block * p.Dv);
    m.resize(p.block);
    l.resize(p.block);
    packed.resize(p.nk);
  }
};

// ---- AVX2 + FMA ------------------------------------------------------------

#define AVX2 __attribute__((target("avx2,fma")))

// e^x for x <= 0 (Cephes' polynomial after range reduction); below -87.3 it is 0, so -inf gives 0.
AVX2 static inline __m256 exp_avx2(__m256 x) {
  const __m256 tiny = _mm256_set1_ps(-87.3f);
  const __m256 keep = _mm256_cmp_ps(x, tiny, _CMP_GE_OQ);
  x = _mm256_max_ps(x, tiny);
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(n)), keep);
}

AVX2 static inline float hmax(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

AVX2 static inline float hsum(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

// The tiles keep their accumulators in named variables: GCC spills an array of __m256 to the stack
// on every iteration. Rows beyond R and the second column vector beyond W compile away.
#define ACC_DECL(init)                                                                       \
  __m256 c00 = init(0, 0), c01 = init(0, 1), c10 = init(1, 0), c11 = init(1, 1), c20 = init(2, 0), \
         c21 = init(2, 1), c30 = init(3, 0), c31 = init(3, 1), c40 = init(4, 0), c41 = init(4, 1), \
         c50 = init(5, 0), c51 = init(5, 1);
#define ACC_ROW(r, A)                                                         \
  if constexpr (R > r) {                                                      \
    const __m256 a = _mm256_broadcast_ss(A);                                  \
    c##r##0 = _mm256_fmadd_ps(a, b0, c##r##0);                                \
    if constexpr (W > 1) c##r##1 = _mm256_fmadd_ps(a, b1, c##r##1);           \
  }
#define ACC_STORE(r, P)                                                       \
  if constexpr (R > r) {                                                      \
    _mm256_storeu_ps(P, c##r##0);                                             \
    if constexpr (W > 1) _mm256_storeu_ps(P + 8, c##r##1);                    \
  }

// S[R rows, W*8 cols at j0] = Qs[R, D] . Kt[D, j0:], Kt packed with row length ldk.
template <int R, int W>
AVX2 static inline void qk_tile(const float* qs, int64_t D, const float* kt, int64_t ldk, float* s, int64_t j0) {
#define ZERO(r, w) _mm256_setzero_ps()
  ACC_DECL(ZERO)
#undef ZERO
  for (int64_t d = 0; d < D; ++d) {
    const __m256 b0 = _mm256_loadu_ps(kt + d * ldk + j0);
    const __m256 b1 = W > 1 ? _mm256_loadu_ps(kt + d * ldk + j0 + 8) : b0;
    ACC_ROW(0, qs + d) ACC_ROW(1, qs + D + d) ACC_ROW(2, qs + 2 * D + d)
    ACC_ROW(3, qs + 3 * D + d) ACC_ROW(4, qs + 4 * D + d) ACC_ROW(5, qs + 5 * D + d)
  }
  ACC_STORE(0, s + j0) ACC_STORE(1, s + ldk + j0) ACC_STORE(2, s + 2 * ldk + j0)
  ACC_STORE(3, s + 3 * ldk + j0) ACC_STORE(4, s + 4 * ldk + j0) ACC_STORE(5, s + 5 * ldk + j0)
}

// O[R rows, W*8 cols at c0] += P[R, cols] . V[cols, c0:], V rows `vstride` apart.
template <int R, int W>
AVX2 static inline void pv_tile(const float* p, int64_t ldp, const float* v, int64_t vstride, int64_t cols, float* o,
                                int64_t Dv, int64_t c0) {
#define LOAD(r, w) (R > r && W > w ? _mm256_loadu_ps(o + r * Dv + c0 + 8 * w) : _mm256_setzero_ps())
  ACC_DECL(LOAD)
#undef LOAD
  for (int64_t j = 0; j < cols; ++j) {
    const __m256 b0 = _mm256_loadu_ps(v + j * vstride + c0);
    const __m256 b1 = W > 1 ? _mm256_loadu_ps(v + j * vstride + c0 + 8) : b0;
    ACC_ROW(0, p + j) ACC_ROW(1, p + ldp + j) ACC_ROW(2, p + 2 * ldp + j)
    ACC_ROW(3, p + 3 * ldp + j) ACC_ROW(4, p + 4 * ldp + j) ACC_ROW(5, p + 5 * ldp + j)
  }
  ACC_STORE(0, o + c0) ACC_STORE(1, o + Dv + c0) ACC_STORE(2, o + 2 * Dv + c0)
  ACC_STORE(3, o + 3 * Dv + c0) ACC_STORE(4, o + 4 * Dv + c0) ACC_STORE(5, o + 5 * Dv + c0)
}

template <int R>
AVX2 static void qk_rows(const float* qs, int64_t D, const float* kt, int64_t ldk, float* s) {
  int64_t j = 0;
  for (; j + 16 <= ldk; j += 16) qk_tile<R, 2>(qs, D, kt, ldk, s, j);
  if (j < ldk) qk_tile<R, 1>(qs, D, kt, ldk, s, j);  // ldk is a multiple of 8
}

template <int R>
AVX2 static void pv_rows(const float* p, int64_t ldp, const float* v, int64_t vstride, int64_t cols, float* o,
                         int64_t Dv) {
  int64_t c = 0;
  for (; c + 16 <= Dv; c += 16) pv_tile<R, 2>(p, ldp, v, vstride, cols, o, Dv, c);
  for (; c + 8 <= Dv; c += 8) pv_tile<R, 1>(p, ldp, v, vstride, cols, o, Dv, c);
  for (; c < Dv; ++c)  // a head size that is not a multiple of 8
    for (int r = 0; r < R; ++r) {
      float acc = o[r * Dv + c];
      for (int64_t j = 0; j < cols; ++j) acc = std::fma(p[r * ldp + j], v[j * vstride + c], acc);
      o[r * Dv + c] = acc;
    }
}

// Rows in groups of 6 (12 accumulators + 2 loads + 1 broadcast fill the 16 registers), then the rest.
#define BY_ROWS(fn, rows, step, ...)                              \
  for (int64_t i = 0; i < rows;) {                                \
    const int64_t left = rows - i;                                \
    switch (left >= 6 ? 6 : left) {                               \
      case 6: fn<6>(__VA_ARGS__); i += 6; break;                  \
      case 5: fn<5>(__VA_ARGS__); i += 5; break;                  \
      case 4: fn<4>(__VA_ARGS__); i += 4; break;                  \
      case 3: fn<3>(__VA_ARGS__); i += 3; break;                  \
      case 2: fn<2>(__VA_ARGS__); i += 2; break;                  \
      default: fn<1>(__VA_ARGS__); i += 1; break;                 \
    }                                                             \
  }

AVX2 static void scores_avx2(const float* qs, const float* kt, int64_t rows, int64_t D, int64_t ldk, float* s) {
  BY_ROWS(qk_rows, rows, 6, qs + i * D, D, kt, ldk, s + i * ldk)
}

AVX2 static void values_avx2(const float* p, int64_t ldp, int64_t rows, const float* v, int64_t vstride, int64_t cols,
                             float* o, int64_t Dv) {
  BY_ROWS(pv_rows, rows, 6, p + i * ldp, ldp, v, vstride, cols, o + i * Dv, Dv)
}

// One row of scores -> probabilities in place; returns (row max, row sum). `n` is a multiple of 8.
AVX2 static void softmax_row_avx2(float* s, int64_t n, float m_old, float* m_new, float* sum) {
  __m256 mx = _mm256_set1_ps(kNegInf);
  for (int64_t j = 0; j < n; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(s + j));
  const float m = std::max(m_old, hmax(mx));
  *m_new = m;
  if (m == kNegInf) {  // nothing visible yet: probabilities 0
    std::fill(s, s + n, 0.0f);
    *sum = 0.0f;
    return;
  }
  const __m256 mv = _mm256_set1_ps(m);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; j += 8) {
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv));
    _mm256_storeu_ps(s + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  *sum = hsum(acc);
}

AVX2 static void add_row_avx2(float* s, const float* m, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(s + j, _mm256_add_ps(_mm256_loadu_ps(s + j), _mm256_loadu_ps(m + j)));
  for (; j < n; ++j) s[j] += m[j];
}

AVX2 static void scale_row_avx2(float* o, int64_t n, float a) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_loadu_ps(o + j), av));
  for (; j < n; ++j) o[j] *= a;
}

// ---- portable --------------------------------------------------------------

static void scores_portable(const float* qs, const float* kt, int64_t rows, int64_t D, int64_t ldk, float* s) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < ldk; ++j) {
      float acc = 0.0f;
      for (int64_t d = 0; d < D; ++d) acc = std::fma(qs[i * D + d], kt[d * ldk + j], acc);
      s[i * ldk + j] = acc;
    }
}

static void values_portable(const float* p, int64_t ldp, int64_t rows, const float* v, int64_t vstride, int64_t cols,
                            float* o, int64_t Dv) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const float a = p[i * ldp + j];
      if (a == 0.0f) continue;
      for (int64_t c = 0; c < Dv; ++c) o[i * Dv + c] = std::fma(a, v[j * vstride + c], o[i * Dv + c]);
    }
}

static void add_row_portable(float* s, const float* m, int64_t n) {
  for (int64_t j = 0; j < n; ++j) s[j] += m[j];
}

static void scale_row_portable(float* o, int64_t n, float a) {
  for (int64_t j = 0; j < n; ++j) o[j] *= a;
}

static void softmax_row_portable(float* s, int64_t n, float m_old, float* m_new, float* sum) {
  float m = m_old;
  for (int64_t j = 0; j < n; ++j) m = std::max(m, s[j]);
  *m_new = m;
  float acc = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    s[j] = m == kNegInf ? 0.0f : std::exp(s[j] - m);
    acc += s[j];
  }
  *sum = acc;
}

// ---- driver ----------------------------------------------------------------

static bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}

static bool use_avx2 = true;  // switched off by block_attention_isa("portable") for tests

// Query block qb of head h of batch b, over its kept key blocks.
static void query_block(const Problem& p, Scratch& w, int64_t b, int64_t h, int64_t qb, bool avx2) {
  const int64_t q0 = qb * p.block, rows = std::min(p.block, p.Sq - q0), D = p.D, Dv = p.Dv, ldk = p.block;
  const int64_t kh = h / (p.H / p.Hk);
  if (w.head != b * p.Hk + kh) {
    w.head = b * p.Hk + kh;
    std::fill(w.packed.begin(), w.packed.end(), 0);
  }
  const float* qrow = p.q + b * p.qs[0] + h * p.qs[1] + q0 * p.qs[2];
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t d = 0; d < D; ++d) w.qs[i * D + d] = qrow[i * p.qs[2] + d] * p.scale;
  std::fill(w.o.begin(), w.o.begin() + rows * Dv, 0.0f);
  std::fill(w.m.begin(), w.m.end(), kNegInf);
  std::fill(w.l.begin(), w.l.end(), 0.0f);
  const bool* kept = p.kept + ((b * p.H + h) * p.nq + qb) * p.nk;
  const bool unit_mask = p.mask != nullptr && p.ms[3] == 1;
  for (int64_t kb = 0; kb < p.nk; ++kb) {
    if (!kept[kb]) continue;
    const int64_t c0 = kb * p.block, cols = std::min(p.block, p.Sk - c0);
    if (p.causal && c0 > q0 + rows - 1) continue;  // every column is after every row
    float* kt = w.kt.data() + kb * D * ldk;
    if (!w.packed[kb]) {  // zero-padded past the last key
      const float* krow = p.k + b * p.ks[0] + kh * p.ks[1] + c0 * p.ks[2];
      for (int64_t j = 0; j < ldk; ++j)
        for (int64_t d = 0; d < D; ++d) kt[d * ldk + j] = j < cols ? krow[j * p.ks[2] + d] : 0.0f;
      w.packed[kb] = 1;
    }
    float* s = w.s.data();
    if (avx2) scores_avx2(w.qs.data(), kt, rows, D, ldk, s);
    else scores_portable(w.qs.data(), kt, rows, D, ldk, s);
    for (int64_t i = 0; i < rows; ++i) {
      float* si = s + i * ldk;
      if (p.mask != nullptr) {
        const float* mi = p.mask + b * p.ms[0] + h * p.ms[1] + (q0 + i) * p.ms[2] + c0 * p.ms[3];
        if (unit_mask && avx2) add_row_avx2(si, mi, cols);
        else if (unit_mask) add_row_portable(si, mi, cols);
        else
          for (int64_t j = 0; j < cols; ++j) si[j] += mi[j * p.ms[3]];
      }
      const int64_t visible = p.causal ? std::min(cols, std::max<int64_t>(0, q0 + i - c0 + 1)) : cols;
      for (int64_t j = visible; j < ldk; ++j) si[j] = kNegInf;
      float m_new, sum;
      if (avx2) softmax_row_avx2(si, ldk, w.m[i], &m_new, &sum);
      else softmax_row_portable(si, ldk, w.m[i], &m_new, &sum);
      if (m_new == kNegInf) continue;
      const float alpha = w.m[i] == kNegInf ? 0.0f : std::exp(w.m[i] - m_new);
      if (alpha != 1.0f) {
        if (avx2) scale_row_avx2(w.o.data() + i * Dv, Dv, alpha);
        else scale_row_portable(w.o.data() + i * Dv, Dv, alpha);
      }
      w.l[i] = w.l[i] * alpha + sum;
      w.m[i] = m_new;
    }
    const float* vrow = p.v + b * p.vs[0] + kh * p.vs[1] + c0 * p.vs[2];
    if (avx2) values_avx2(s, ldk, rows, vrow, p.vs[2], cols, w.o.data(), Dv);
    else values_portable(s, ldk, rows, vrow, p.vs[2], cols, w.o.data(), Dv);
  }
  float* out = p.out + ((b * p.H + h) * p.Sq + q0) * Dv;
  for (int64_t i = 0; i < rows; ++i) {
    const float inv = w.l[i] > 0.0f ? 1.0f / w.l[i] : 0.0f;
    std::copy(w.o.begin() + i * Dv, w.o.begin() + (i + 1) * Dv, out + i * Dv);
    if (avx2) scale_row_avx2(out + i * Dv, Dv, inv);
    else scale_row_portable(out + i * Dv, Dv, inv);
  }
}

static at::Tensor last_dim_contiguous(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

at::Tensor block_attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                           const c10::optional<at::Tensor>& attn_mask, bool is_causal, double scale, int64_t block,
                           const at::Tensor& kept_in) {
  TORCH_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4,
              "block_attention: q, k, v must be [batch, heads, tokens, head_dim]");
  TORCH_CHECK(q_in.scalar_type() == at::kFloat && k_in.scalar_type() == at::kFloat &&
                  v_in.scalar_type() == at::kFloat,
              "block_attention: float32 q, k, v expected");
  TORCH_CHECK(block >= 8 && block <= 512 && block % 8 == 0,
              "block_attention: block must be a multiple of 8 in [8, 512], got ", block);
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in), v = last_dim_contiguous(v_in);
  Problem p{};
  p.B = q.size(0), p.H = q.size(1), p.Sq = q.size(2), p.D = q.size(3);
  p.Hk = k.size(1), p.Sk = k.size(2), p.Dv = v.size(3), p.block = block;
  TORCH_CHECK(k.size(0) == p.B && v.size(0) == p.B && k.size(3) == p.D && v.size(1) == p.Hk && v.size(2) == p.Sk,
              "block_attention: shapes do not match: q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes());
  TORCH_CHECK(p.Hk > 0 && p.H % p.Hk == 0, "block_attention: ", p.H, " query heads do not share ", p.Hk, " key heads");
  p.nq = (p.Sq + block - 1) / block, p.nk = (p.Sk + block - 1) / block;
  TORCH_CHECK(kept_in.scalar_type() == at::kBool && kept_in.dim() == 4 && kept_in.size(0) == p.B &&
                  kept_in.size(1) == p.H && kept_in.size(2) == p.nq && kept_in.size(3) == p.nk,
              "block_attention: kept must be bool [", p.B, ", ", p.H, ", ", p.nq, ", ", p.nk, "], got ",
              kept_in.scalar_type(), " ", kept_in.sizes());
  const at::Tensor kept = kept_in.contiguous();
  at::Tensor mask;
  if (attn_mask.has_value() && attn_mask->defined()) {
    mask = *attn_mask;
    TORCH_CHECK(mask.dim() <= 4, "block_attention: attn_mask has ", mask.dim(), " dims, at most 4 are supported");
    if (mask.scalar_type() == at::kBool)
      mask = at::where(mask, at::zeros({}, q.options()), at::full({}, kNegInf, q.options()));
    TORCH_CHECK(mask.scalar_type() == at::kFloat, "block_attention: attn_mask must be float32 or bool, got ",
                mask.scalar_type());
    while (mask.dim() < 4) mask = mask.unsqueeze(0);
    if (mask.size(3) != p.Sk) mask = mask.expand({mask.size(0), mask.size(1), mask.size(2), p.Sk});
    mask = last_dim_contiguous(mask).expand({p.B, p.H, p.Sq, p.Sk});  // fails unless broadcastable
    p.mask = mask.data_ptr<float>();
    for (int i = 0; i < 4; ++i) p.ms[i] = mask.stride(i);
  }
  p.q = q.data_ptr<float>(), p.k = k.data_ptr<float>(), p.v = v.data_ptr<float>();
  for (int i = 0; i < 3; ++i) p.qs[i] = q.stride(i), p.ks[i] = k.stride(i), p.vs[i] = v.stride(i);
  p.causal = is_causal, p.scale = static_cast<float>(scale), p.kept = kept.data_ptr<bool>();
  at::Tensor out = at::empty({p.B, p.H, p.Sq, p.Dv}, q.options());
  p.out = out.data_ptr<float>();
  const bool avx2 = use_avx2 && has_avx2();
  at::parallel_for(0, p.B * p.H * p.nq, 1, [&](int64_t t0, int64_t t1) {
    Scratch w(p);
    for (int64_t t = t0; t < t1; ++t) query_block(p, w, t / (p.H * p.nq), (t / p.nq) % p.H, t % p.nq, avx2);
  });
  return out;
}

std::string block_attention_isa(const std::string& request) {
  if (request == "portable") use_avx2 = false;
  else if (request == "avx2") use_avx2 = true;
  else TORCH_CHECK(request.empty(), "block_attention_isa: unknown request '", request, "' (avx2, portable or '')");
  return use_avx2 && has_avx2() ? "avx2" : "portable";
}

}  // namespace attn
}  // namespace sparsecc

TORCH_LIBRARY_FRAGMENT(sparsecc, m) {
  m.def("block_attention(Tensor q, Tensor k, Tensor v, Tensor? attn_mask, bool is_causal, float scale, int block, "
        "Tensor kept) -> Tensor");
  m.def("block_attention_isa(str request) -> str", &sparsecc::attn::block_attention_isa);
}

TORCH_LIBRARY_IMPL(sparsecc, CPU, m) { m.impl("block_attention", &sparsecc::attn::block_attention); }
