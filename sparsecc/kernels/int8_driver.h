// The int8 driver: activation quantization into panels, the tiling over
// tokens, the few-token VNNI path and the sdot path, around the per-ISA
// kernels of int8_isa.h. Free of torch, as spmm_isa.h's spmm_tiles is for
// fp32: the torch operator (int8_spmm.cpp) and the ONNX Runtime custom-op
// library (ort_sparse_matmul.cpp) both call int8_tiles, so the two run the
// same code and round the same way. The caller supplies the parallel loop
// par(begin, end, grain, fn) and the scratch (int8_scratch gives its size).
//
// ISA names: "avx512" (VNNI), "avx2", "portable" on x86-64; "neon" (sdot),
// "portable" on AArch64; "portable" elsewhere.

#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "int8_isa.h"

namespace sparsecc {
namespace int8k {

// The int8 ISA that goes with the fp32 kernels' ISA, narrowed to what this CPU has.
static inline std::string narrow_isa(std::string isa) {
#if SPARSECC_INT8_X86
  if (isa == "avx512" && !cpu_has("avx512")) isa = "avx2";
  if (isa == "avx2" && !cpu_has("avx2")) isa = "portable";
  if (isa != "avx512" && isa != "avx2") isa = "portable";
#elif SPARSECC_INT8_AARCH64
  isa = isa == "neon" && cpu_has("neon") ? "neon" : "portable";
#else
  isa = "portable";
#endif
  return isa;
}

#if SPARSECC_INT8_X86
constexpr int64_t kFewTokens = 8;  // up to here, VNNI on 8x8 / 16x16 blocks vectorizes over the block
#endif

// What one call needs: the panel (or, on the few-token path, the quantized rows) in bytes and the
// per-token scales in floats, for T tokens of K columns and blocks of br rows on `isa`.
struct Int8Scratch {
  int64_t panel_bytes;
  int64_t scales;
};

static inline bool few_tokens(int64_t T, int64_t br, const std::string& isa) {
#if SPARSECC_INT8_X86
  return isa == "avx512" && T <= kFewTokens && (br == 8 || br == 16);
#else
  (void)T, (void)br, (void)isa;
  return false;
#endif
}

// Tokens per panel and bytes per panel entry of `isa`: VNNI and sdot read 1 byte, the int16 paths 2.
static inline void panel_geometry(int64_t T, int64_t K, const std::string& isa, int64_t* vw, int64_t* bytes,
                                  int64_t* tt) {
  const bool one_byte = isa == "avx512" || isa == "neon";
  *vw = isa == "avx512" ? 16 : isa == "neon" ? 4 : 8;
  *bytes = one_byte ? 1 : 2;
  *tt = std::min(tile_tokens(K, *vw, *bytes), (T + *vw - 1) / *vw * *vw);
}

static inline Int8Scratch int8_scratch(int64_t T, int64_t K, int64_t br, const std::string& isa) {
  if (few_tokens(T, br, isa)) return {T * K, 0};
  int64_t vw, bytes, tt;
  panel_geometry(T, K, isa, &vw, &bytes, &tt);
  return {K * tt * bytes, tt};
}

// Quantize tokens [t0, t0 + nt) into an int16-pair or shifted-u8 panel; padding tokens read as zero.
template <class ParallelFor>
static void pack(const float* x, int64_t K, int64_t t0, int64_t nt, int64_t P, float act_scale, QuantFn quant,
                 float* sx, uint8_t* p8, int16_t* p16, ParallelFor& par) {
  par(0, nt, 16, [&](int64_t a, int64_t b) {
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
// 1..8 tokens on 8x8 / 16x16 blocks (vnni::few): `rows` holds T * K bytes.
template <class ParallelFor>
static void run_few(const float* x, float* y, int64_t T, int64_t K, int64_t N, const QJob& base, float act_scale,
                    uint8_t* rows, ParallelFor& par) {
  std::vector<int8_t> row(K);
  alignas(64) float scales[16];
  for (int64_t t = 0; t < 16; ++t) scales[t] = 1.f;
  for (int64_t t = 0; t < T; ++t) {
    scales[t] = vnni::quantize_row(x + t * K, K, act_scale, row.data());
    for (int64_t k = 0; k < K; ++k) rows[t * K + k] = static_cast<uint8_t>(row[k]) ^ 0x80;
  }
  QJob j = base;
  j.panel8 = rows;  // marks the activations as shifted by +128
  j.rows8 = rows;
  j.K = K;
  j.sx = scales;
  j.y = y;
  j.t0 = 0;
  j.nt = T;
  par(0, N / base.br, 1, [&](int64_t b0, int64_t b1) { vnni::few(j, b0, b1); });
}
#endif  // SPARSECC_INT8_X86

#if SPARSECC_INT8_AARCH64
// sdot: 4 tokens per vector, signed activations [K/4][P][4] (1 byte each).
template <class ParallelFor>
static void run_neon(const float* x, float* y, int64_t T, int64_t K, int64_t N, const QJob& base, float act_scale,
                     int64_t TT, int8_t* p, float* sx, ParallelFor& par) {
  const int64_t vw = 4;
  const int64_t blocks = N / base.br;
  for (int64_t t0 = 0; t0 < T; t0 += TT) {
    const int64_t nt = std::min(TT, T - t0);
    const int64_t P = (nt + vw - 1) / vw * vw;
    par(0, nt, 16, [&](int64_t a, int64_t b) {
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
    par(0, blocks, 1, [&](int64_t b0, int64_t b1) { neon::rows(j, b0, b1); });
  }
}
#endif

// Y[T, N] = dequant(int8(X[T, K]) . W^T) + bias for the weight and bias in `base` (its panel, token and
// output fields are set here). `isa` is a name narrow_isa or the caller checked this CPU can run;
// `panel` and `scales` hold int8_scratch(T, K, base.br, isa) bytes and floats.
template <class ParallelFor>
static void int8_tiles(const float* x, float* y, int64_t T, int64_t K, int64_t N, const QJob& base, float act_scale,
                       const std::string& isa, uint8_t* panel, float* scales, ParallelFor&& par) {
  if (T <= 0 || N <= 0) return;
#if SPARSECC_INT8_X86
  if (few_tokens(T, base.br, isa)) return run_few(x, y, T, K, N, base, act_scale, panel, par);
  const bool use_vnni = isa == "avx512";
  const RowsFn fn = use_vnni ? vnni::rows : isa == "avx2" ? avx2::rows : portable::rows;
  const QuantFn quant = use_vnni ? vnni::quantize_row : isa == "avx2" ? avx2::quantize_row : portable::quantize_row;
#else
#if SPARSECC_INT8_AARCH64
  if (isa == "neon") {
    int64_t nvw, nbytes, ntt;
    panel_geometry(T, K, isa, &nvw, &nbytes, &ntt);
    return run_neon(x, y, T, K, N, base, act_scale, ntt, reinterpret_cast<int8_t*>(panel), scales, par);
  }
#endif
  (void)isa;  // "portable"
  const bool use_vnni = false;
  const RowsFn fn = portable::rows;
  const QuantFn quant = portable::quantize_row;
#endif
  int64_t vw, bytes, TT;
  panel_geometry(T, K, use_vnni ? "avx512" : "portable", &vw, &bytes, &TT);
  const int64_t blocks = N / base.br;
  uint8_t* p8 = use_vnni ? panel : nullptr;
  int16_t* p16 = use_vnni ? nullptr : reinterpret_cast<int16_t*>(panel);
  for (int64_t t0 = 0; t0 < T; t0 += TT) {
    const int64_t nt = std::min(TT, T - t0);
    const int64_t P = (nt + vw - 1) / vw * vw;
    QJob j = base;
    j.panel8 = p8;
    j.panel16 = p16;
    j.P = P;
    j.sx = scales;
    j.y = y;
    j.t0 = t0;
    j.nt = nt;
    pack(x, K, t0, nt, P, act_scale, quant, scales, p8, p16, par);
    par(0, blocks, 1, [&](int64_t b0, int64_t b1) { fn(j, b0, b1); });
  }
}

}  // namespace int8k
}  // namespace sparsecc
