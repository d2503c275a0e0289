// The fp32 sparse kernels of spmm_body.h compiled once per instruction set,
// the choice among them, and the tiled driver that packs activations into
// panels. Free of torch on purpose: the torch operators (spmm.cpp) and the
// ONNX Runtime custom-op library (ort_sparse_matmul.cpp) both include it, so
// the two run the same code. The includer supplies the parallel loop.
//
// Targets: on x86-64 (and i386) AVX-512, AVX2+FMA and portable code, picked
// at run time with __builtin_cpu_supports; on AArch64 NEON (AdvSIMD, part of
// the base ISA, so always there) and portable; elsewhere portable only.

#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

namespace sparsecc {

struct Job {
  const float* panel;  // packed activations [K][P]
  int64_t P;           // tokens per panel row, a multiple of the vector width
  float* y;            // Y(t, n) at y[t * syt + n * syn]
  int64_t syt, syn;
  int64_t t0, nt;      // first token of this tile, tokens in it
  const int32_t* crow;
  const int32_t* col;
  const float* val;
  const float* bias;   // may be null
  int64_t block;       // 1 for CSR
};

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")
namespace avx512 {
#define VW 16
#include "spmm_body.h"
#undef VW
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#define VW 8
#include "spmm_body.h"
#undef VW
}  // namespace avx2
#pragma GCC pop_options
#endif  // x86

namespace portable {
#define VW 4
#include "spmm_body.h"
#undef VW
}  // namespace portable

#if defined(__aarch64__)
// NEON: a 128-bit q register holds 4 floats, so VW = 4 maps each vf onto
// exactly one register and each `acc += w * x` onto one fmla (by element).
// NEON has no wider instruction: VW = 8 would only make GCC split every
// vector into two q registers, the same fmla count per token at best, while
// padding to 8 tokens instead of 4 (1 token would compute 8 lanes, not 4; 17
// tokens 24, not 20) and doubling the registers each accumulator holds. The
// independent fmla chains that hide the latency come from the NV vectors per
// chunk (csr_chunk<8>: 8 accumulators), not from a wider vf.
// The code is the same source as `portable` (which on AArch64 is NEON code
// as well, since AdvSIMD is baseline); the entry names the hardware path and
// is where a hand-written NEON variant would go.
namespace neon {
#define VW 4
#include "spmm_body.h"
#undef VW
}  // namespace neon
#endif  // __aarch64__

using RowsFn = void (*)(const Job&, int64_t, int64_t);
struct Isa {
  const char* name;
  int64_t vw;
  RowsFn csr;
  RowsFn bsr;
};

// Widest first: best_isa() takes the first one the CPU has. "portable" is always last.
static const Isa kIsas[] = {
#if defined(__x86_64__) || defined(__i386__)
    {"avx512", 16, avx512::csr_rows, avx512::bsr_rows},
    {"avx2", 8, avx2::csr_rows, avx2::bsr_rows},
#endif
#if defined(__aarch64__)
    {"neon", 4, neon::csr_rows, neon::bsr_rows},
#endif
    {"portable", 4, portable::csr_rows, portable::bsr_rows},
};
static constexpr int kNumIsas = static_cast<int>(sizeof(kIsas) / sizeof(kIsas[0]));

static inline bool cpu_has(const std::string& name) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (name == "avx512") return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
#if defined(__aarch64__)
  if (name == "neon") return true;  // AdvSIMD is part of the AArch64 base ISA
#endif
  return name == "portable";
}

static inline const Isa* best_isa() {
  // SPARSECC_ISA=avx2|portable (neon|portable on AArch64) forces a narrower path (tests of the fallbacks).
  const char* forced = std::getenv("SPARSECC_ISA");
  for (const Isa& isa : kIsas) {
    if (forced && *forced && std::string(forced) != isa.name) continue;
    if (cpu_has(isa.name)) return &isa;
  }
  return &kIsas[kNumIsas - 1];  // portable
}

// Tokens per panel: wide tiles amortise each weight over more tokens, but the
// panel [K][P] must stay in the L2 cache, which CSR reads at random rows.
static inline int64_t tile_tokens(int64_t K, int64_t vw) {
  if (const char* env = std::getenv("SPARSECC_TILE")) {
    int64_t t = std::atoll(env);
    if (t > 0) return std::max<int64_t>(vw, (t + vw - 1) / vw * vw);
  }
  int64_t t = 64;
  while (t > vw && K * t * 4 > (256 << 10)) t /= 2;
  return std::max<int64_t>(t, vw);
}

// Tokens per panel for T tokens: floats needed for the panel are K times this.
static inline int64_t panel_tokens(int64_t K, int64_t T, const Isa& isa) {
  return std::min(tile_tokens(K, isa.vw), (T + isa.vw - 1) / isa.vw * isa.vw);
}

// Y(t, n) = sum_k W(n, k) X(t, k) + bias(n), X(t, k) at x[t * sxt + k * sxk].
// `panel` holds K * panel_tokens(K, T, isa) floats; par(begin, end, grain, fn)
// calls fn(b, e) over sub-ranges of [begin, end), in parallel or not.
template <class ParallelFor>
static void spmm_tiles(const float* x, int64_t sxt, int64_t sxk, float* y, int64_t syt, int64_t syn, int64_t T,
                       int64_t K, int64_t N, const int32_t* crow, const int32_t* col, const float* val,
                       const float* bias, int64_t block, const Isa& isa, float* panel, ParallelFor&& par) {
  const int64_t TT = panel_tokens(K, T, isa);
  const int64_t rows = block == 1 ? N : N / block;
  for (int64_t t0 = 0; t0 < T; t0 += TT) {
    const int64_t nt = std::min(TT, T - t0);
    const int64_t P = (nt + isa.vw - 1) / isa.vw * isa.vw;
    par(0, K, 256, [&](int64_t k0, int64_t k1) {
      if (sxk == 1) {  // rows of X are contiguous: read along k
        for (int64_t t = 0; t < nt; ++t) {
          const float* xr = x + (t0 + t) * sxt;
          for (int64_t k = k0; k < k1; ++k) panel[k * P + t] = xr[k];
        }
      } else {
        for (int64_t k = k0; k < k1; ++k)
          for (int64_t t = 0; t < nt; ++t) panel[k * P + t] = x[(t0 + t) * sxt + k * sxk];
      }
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t t = nt; t < P; ++t) panel[k * P + t] = 0.f;
    });
    const Job job{panel, P, y, syt, syn, t0, nt, crow, col, val, bias, block};
    par(0, rows, 1, [&](int64_t r0, int64_t r1) { (block == 1 ? isa.csr : isa.bsr)(job, r0, r1); });
  }
}

}  // namespace sparsecc
