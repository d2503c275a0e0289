// The int8 sparse kernels of int8_body.h compiled once per instruction set,
// with the job they read (QJob) and the CPU checks. Free of torch, like
// spmm_isa.h, so tests/kernels/native/int8_selftest.cpp runs them without
// torch (on AArch64 under qemu); int8_spmm.cpp holds the torch operator, the
// quantization into panels and the tiling.
//
// x86-64: "avx512" (VNNI, and the few-token path vnni::few), "avx2", "portable".
// AArch64: "neon" (sdot, when the CPU has the dot-product extension), "portable".

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__x86_64__) || defined(__i386__)
#define SPARSECC_INT8_X86 1
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#define SPARSECC_INT8_AARCH64 1
#include <arm_neon.h>
#if defined(__linux__)
#include <sys/auxv.h>
#endif
#endif

namespace sparsecc {
namespace int8k {

#if SPARSECC_INT8_AARCH64
static inline bool has_dotprod() {
#if defined(__linux__)
  return (getauxval(AT_HWCAP) & (1UL << 20)) != 0;  // HWCAP_ASIMDDP
#else
  return false;
#endif
}
#endif

struct QJob {
  const uint8_t* panel8;   // VNNI: [K/4][P][4] u8, x + 128
  const int16_t* panel16;  // AVX2 / portable: [K/2][P][2] int16
  int64_t P;               // tokens per panel row, a multiple of VW
  const float* sx;         // activation scale per token of this tile
  float* y;                // Y(t, n) at y[t * ldy + n]
  int64_t ldy, t0, nt;
  const int32_t* crow;
  const int32_t* col;
  const int8_t* val;
  const float* wscale;
  const int32_t* row_sums;  // subtracted x128 when the panel is shifted (VNNI)
  const float* bias;        // may be null
  int64_t br;
  const uint8_t* rows8 = nullptr;  // few-token path: the tokens' quantized rows [nt][K], u8 (x + 128)
  int64_t K = 0;
  const int8_t* panels8 = nullptr;  // AArch64 sdot: [K/4][P][4] int8, not shifted (panel8 stays null)
};

#if SPARSECC_INT8_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")
namespace vnni {
#define VW 16
#define NV8 2
typedef __m512i vi;
typedef __m512i vx;
static inline vi vi_zero() { return _mm512_setzero_si512(); }
static inline vx load_x(const QJob& j, int64_t k4, int64_t t) {
  return _mm512_loadu_si512(j.panel8 + (k4 * j.P + t) * 4);
}
static inline vi dot4(vi acc, vx x, int32_t w) { return _mm512_dpbusd_epi32(acc, x, _mm512_set1_epi32(w)); }
static inline void vi_store(int32_t* p, vi a) { _mm512_storeu_si512(p, a); }
#include "int8_body.h"

// Few tokens (1..8) on 8x8 / 16x16 blocks: the vector holds the block, not
// tokens. A 64-byte row of B x B int8 weights is one zmm whose 32-bit lanes
// are 4 consecutive k of one row, so one vpdpbusd against the token's B
// activations broadcast does 64 useful products, where the panel path would
// waste 16 - T lanes. Lanes of one row are summed at the end.
template <int B, int NT>
static void few_rows(const QJob& j, int64_t b0, int64_t b1) {
  constexpr int Z = B * B / 64;       // zmm per block
  constexpr int LANES = B / 4;        // lanes per row
  for (int64_t brow = b0; brow < b1; ++brow) {
    __m512i acc[NT][Z];
    for (int t = 0; t < NT; ++t)
      for (int z = 0; z < Z; ++z) acc[t][z] = _mm512_setzero_si512();
    for (int32_t i = j.crow[brow]; i < j.crow[brow + 1]; ++i) {
      const int8_t* wb = j.val + static_cast<int64_t>(i) * B * B;
      const uint8_t* xb = j.rows8 + static_cast<int64_t>(j.col[i]) * B;
      __m512i xv[NT];
      for (int t = 0; t < NT; ++t) {
        if (B == 8) {
          int64_t v;
          std::memcpy(&v, xb + t * j.K, 8);
          xv[t] = _mm512_set1_epi64(v);
        } else {
          xv[t] = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xb + t * j.K)));
        }
      }
#pragma GCC unroll 4
      for (int z = 0; z < Z; ++z) {
        const __m512i w = _mm512_loadu_si512(wb + z * 64);
        for (int t = 0; t < NT; ++t) acc[t][z] = _mm512_dpbusd_epi32(acc[t][z], xv[t], w);
      }
    }
    alignas(64) int32_t lanes[16];
    alignas(64) int32_t buf[B * 16] = {};  // [row][token], the layout write_out reads
    for (int t = 0; t < NT; ++t)
      for (int z = 0; z < Z; ++z) {
        _mm512_store_si512(lanes, acc[t][z]);
        for (int l = 0; l < 16; l += LANES) {
          int32_t sum = 0;
          for (int q = 0; q < LANES; ++q) sum += lanes[l + q];
          buf[(z * (16 / LANES) + l / LANES) * 16 + t] = sum;
        }
      }
    write_out<B, 16>(j, buf, brow * B, 0);
  }
}

template <int B>
static void few_dispatch(const QJob& j, int64_t b0, int64_t b1) {
  switch (j.nt) {
    case 1: few_rows<B, 1>(j, b0, b1); break;
    case 2: few_rows<B, 2>(j, b0, b1); break;
    case 3: few_rows<B, 3>(j, b0, b1); break;
    case 4: few_rows<B, 4>(j, b0, b1); break;
    case 5: few_rows<B, 5>(j, b0, b1); break;
    case 6: few_rows<B, 6>(j, b0, b1); break;
    case 7: few_rows<B, 7>(j, b0, b1); break;
    default: few_rows<B, 8>(j, b0, b1); break;
  }
}

void few(const QJob& j, int64_t b0, int64_t b1) {
  if (j.br == 8) few_dispatch<8>(j, b0, b1);
  else few_dispatch<16>(j, b0, b1);
}
#undef NV8
#undef VW
}  // namespace vnni
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2")
namespace avx2 {
#define VW 8
#define NV8 1
typedef __m256i vi;
struct vx {
  __m256i lo, hi;  // columns (0, 1) and (2, 3) of the group, as int16 pairs per token
};
static inline vi vi_zero() { return _mm256_setzero_si256(); }
static inline vx load_x(const QJob& j, int64_t k4, int64_t t) {
  const int16_t* p = j.panel16 + ((2 * k4) * j.P + t) * 2;
  return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + j.P * 2))};
}
static inline int32_t pair16(int32_t w, int h) {  // two int8 weights -> two int16 in one int32
  const int8_t a = static_cast<int8_t>(w >> (16 * h)), b = static_cast<int8_t>(w >> (16 * h + 8));
  return static_cast<int32_t>(static_cast<uint16_t>(a) | (static_cast<uint32_t>(static_cast<uint16_t>(b)) << 16));
}
static inline vi dot4(vi acc, vx x, int32_t w) {
  acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x.lo, _mm256_set1_epi32(pair16(w, 0))));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(x.hi, _mm256_set1_epi32(pair16(w, 1))));
}
static inline void vi_store(int32_t* p, vi a) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), a); }
#include "int8_body.h"
#undef NV8
#undef VW
}  // namespace avx2
#pragma GCC pop_options
#endif  // SPARSECC_INT8_X86

namespace portable {
#define VW 8
#define NV8 1
struct vi {
  int32_t v[VW];
};
struct vx {
  const int16_t* p0;  // columns (0, 1) of the group for VW tokens, then (2, 3) P * 2 further on
  int64_t stride;
};
static inline vi vi_zero() { return vi{}; }
static inline vx load_x(const QJob& j, int64_t k4, int64_t t) {
  return {j.panel16 + ((2 * k4) * j.P + t) * 2, j.P * 2};
}
static inline vi dot4(vi acc, vx x, int32_t w) {
  int8_t wb[4];
  std::memcpy(wb, &w, 4);
  const int16_t* p1 = x.p0 + x.stride;
  for (int l = 0; l < VW; ++l)
    acc.v[l] += x.p0[2 * l] * wb[0] + x.p0[2 * l + 1] * wb[1] + p1[2 * l] * wb[2] + p1[2 * l + 1] * wb[3];
  return acc;
}
static inline void vi_store(int32_t* p, vi a) { std::memcpy(p, a.v, sizeof(a.v)); }
#include "int8_body.h"
#undef NV8
#undef VW
}  // namespace portable

#if SPARSECC_INT8_AARCH64
// NEON with the dot-product extension (optional in Armv8.2, mandatory from
// Armv8.4): one sdot multiplies 4 signed int8 activations (4 consecutive k of
// a token) by 4 int8 weights and adds them into that token's int32 lane, 4
// tokens per q register. The panel is the VNNI layout [K/4][P][4] but signed
// (QJob::panels8), so nothing is shifted. Compiled for +dotprod under a
// pragma (arch armv8.2-a, as arm_neon.h declares vdotq_s32: a plain "+dotprod"
// on armv8-a cannot inline it); cpu_has("neon") checks HWCAP_ASIMDDP before it runs.
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
namespace neon {
#define VW 4
#define NV8 2
typedef int32x4_t vi;
typedef int8x16_t vx;
static inline vi vi_zero() { return vdupq_n_s32(0); }
static inline vx load_x(const QJob& j, int64_t k4, int64_t t) { return vld1q_s8(j.panels8 + (k4 * j.P + t) * 4); }
static inline vi dot4(vi acc, vx x, int32_t w) { return vdotq_s32(acc, x, vreinterpretq_s8_s32(vdupq_n_s32(w))); }
static inline void vi_store(int32_t* p, vi a) { vst1q_s32(p, a); }
#include "int8_body.h"
#undef NV8
#undef VW
}  // namespace neon
#pragma GCC pop_options
#endif  // SPARSECC_INT8_AARCH64

using RowsFn = void (*)(const QJob&, int64_t, int64_t);

static inline bool cpu_has(const std::string& name) {
#if SPARSECC_INT8_AARCH64
  if (name == "neon") return has_dotprod();
#endif
#if SPARSECC_INT8_X86
  __builtin_cpu_init();
  if (name == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  if (name == "avx2") return __builtin_cpu_supports("avx2");
#endif
  return name == "portable";
}

// Tokens per tile: the int8 panel (1 byte per value with VNNI or sdot, 2 otherwise) stays in L2.
static inline int64_t tile_tokens(int64_t K, int64_t vw, int64_t bytes) {
  int64_t t = 128;
  while (t > vw && K * t * bytes > (256 << 10)) t /= 2;
  return std::max<int64_t>(t, vw);
}

using QuantFn = float (*)(const float*, int64_t, float, int8_t*);

#if SPARSECC_INT8_AARCH64
// Token t of a signed sdot panel [K/4][P][4]: 4 consecutive k per 32-bit lane;
// q == nullptr writes a padding token (zeros).
static inline void pack_signed4(const int8_t* q, int64_t K, int64_t t, int64_t P, int8_t* panel) {
  for (int64_t k4 = 0; k4 < K / 4; ++k4) {
    int8_t* dst = panel + (k4 * P + t) * 4;
    for (int i = 0; i < 4; ++i) dst[i] = q ? q[4 * k4 + i] : 0;
  }
}
#endif

}  // namespace int8k
}  // namespace sparsecc
