// Sparse weight x dense activation kernels, written once over a SIMD vector of
// VW floats (GCC vector extensions) and compiled once per instruction set:
// spmm.cpp includes this file inside a namespace under `#pragma GCC target`.
//
// Y(t, n) = sum_k W(n, k) * X(t, k) + bias(n), W compressed as CSR (one entry
// per nonzero) or BSR (square BxB blocks, stored row-major [B][B]).
//
// Both kernels read X from a packed panel [K][P] (P tokens per reduction row,
// zero-padded to whole vectors), so every nonzero weight multiplies whole
// vectors of tokens: a broadcast and P/VW fused multiply-adds. This is the
// "sparse weights x dense activations" layout of 1x1 convolutions in NCHW.
// Requires VW to be defined by the includer.

typedef float vf __attribute__((vector_size(VW * 4)));
typedef float vfu __attribute__((vector_size(VW * 4), aligned(4)));

static inline vf vload(const float* p) { return *reinterpret_cast<const vfu*>(p); }
static inline void vstore(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }

// Write R rows x (NV*VW) accumulated tokens to Y, adding the bias; padding tokens are dropped.
template <int R, int NV>
static inline void write_out(const Job& j, vf (&acc)[R][NV], int64_t n0, int64_t v0) {
  float buf[R][NV * VW];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) vstore(&buf[r][v * VW], acc[r][v]);
  const int64_t base = v0 * VW;
  const int64_t m = std::min<int64_t>(NV * VW, j.nt - base);
  for (int64_t t = 0; t < m; ++t) {
    float* yrow = j.y + (j.t0 + base + t) * j.syt + n0 * j.syn;
    for (int r = 0; r < R; ++r) yrow[r * j.syn] = buf[r][t] + (j.bias ? j.bias[n0 + r] : 0.f);
  }
}

// One CSR row over NV vectors of tokens starting at vector v0.
template <int NV>
static inline void csr_chunk(const Job& j, int64_t n, int64_t v0) {
  vf acc[1][NV];
  for (int v = 0; v < NV; ++v) acc[0][v] = vf{};
  const float* panel = j.panel + v0 * VW;
  const int64_t P = j.P;
  const int32_t end = j.crow[n + 1];
  for (int32_t i = j.crow[n]; i < end; ++i) {
    const float* p = panel + static_cast<int64_t>(j.col[i]) * P;
    const float w = j.val[i];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[0][v] += w * vload(p + v * VW);
  }
  write_out<1, NV>(j, acc, n, v0);
}

void csr_rows(const Job& j, int64_t r0, int64_t r1) {
  const int64_t nvec = j.P / VW;
  for (int64_t n = r0; n < r1; ++n) {
    int64_t v0 = 0;
    for (; nvec - v0 >= 8; v0 += 8) csr_chunk<8>(j, n, v0);
    if (nvec - v0 >= 4) { csr_chunk<4>(j, n, v0); v0 += 4; }
    if (nvec - v0 >= 2) { csr_chunk<2>(j, n, v0); v0 += 2; }
    if (nvec - v0 >= 1) { csr_chunk<1>(j, n, v0); }
  }
}

// Rows [roff, roff+R) of block row `br` of a BSR weight with BxB blocks, NV vectors of tokens.
template <int B, int R, int NV>
static inline void bsr_chunk(const Job& j, int64_t br, int roff, int64_t v0) {
  vf acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vf{};
  const float* panel = j.panel + v0 * VW;
  const int64_t P = j.P;
  const int32_t end = j.crow[br + 1];
  for (int32_t i = j.crow[br]; i < end; ++i) {
    const float* wb = j.val + static_cast<int64_t>(i) * B * B + roff * B;
    const float* p = panel + static_cast<int64_t>(j.col[i]) * B * P;
#pragma GCC unroll 16
    for (int c = 0; c < B; ++c) {
      vf x[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) x[v] = vload(p + c * P + v * VW);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const float w = wb[r * B + c];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] += w * x[v];
      }
    }
  }
  write_out<R, NV>(j, acc, br * B + roff, v0);
}

template <int B, int R>
static inline void bsr_block_row(const Job& j, int64_t br, int64_t nvec) {
  for (int roff = 0; roff < B; roff += R) {
    int64_t v0 = 0;
    if (R <= 4) {
      for (; nvec - v0 >= 2; v0 += 2) bsr_chunk<B, R, 2>(j, br, roff, v0);
    }
    for (; v0 < nvec; ++v0) bsr_chunk<B, R, 1>(j, br, roff, v0);
  }
}

void bsr_rows(const Job& j, int64_t br0, int64_t br1) {
  const int64_t nvec = j.P / VW;
  for (int64_t br = br0; br < br1; ++br) {
    switch (j.block) {
      case 2: bsr_block_row<2, 2>(j, br, nvec); break;
      case 4: bsr_block_row<4, 4>(j, br, nvec); break;
      case 8: bsr_block_row<8, 8>(j, br, nvec); break;
      case 16: bsr_block_row<16, 8>(j, br, nvec); break;
      default: break;  // rejected by the caller
    }
  }
}
