// Torch-free self-test of the int8 sparse kernels (sparsecc/kernels/int8_isa.h):
// every instruction set this CPU has (x86: avx512 VNNI, avx2; AArch64: neon sdot;
// portable) runs `rows` over random int8 weights in 1x4, 4x4, 8x8 and 16x16 blocks
// against an exact reference. Built natively and, cross-compiled for AArch64, run
// under qemu by tests/kernels/test_aarch64_qemu.py.
//
// The kernels accumulate in int32 exactly and dequantize as
// y = float(acc) * (s_x * s_w) + b with contraction off, so the reference (int64
// sums, the same three rounded float operations) must be matched bit for bit, as
// tests/kernels/test_int8_kernels.py asks of the torch operator. The activations
// are quantized by the ISA's own quantize_row, checked against the documented
// rule (s = max|x| / 127 or the static scale; round half to even; clamp to 127).
// Each ISA gets its panel layout as int8_spmm.cpp packs it: VNNI u8 (q + 128)
// [K/4][P][4], AVX2/portable int16 [K/2][P][2], sdot int8 [K/4][P][4]
// (pack_signed4, the function int8_spmm.cpp uses). Each case runs a second time
// through the driver (int8_driver.h: int8_tiles, with a serial loop cut into
// grain-sized pieces), the path the torch operator and the ONNX Runtime op take,
// few-token VNNI and sdot included, against the same reference.
//
// --self-check-fail perturbs one output by one ulp after the kernel ran: the run
// must fail naming the case. Exit 0 when all pass.

#include "int8_driver.h"

#include <cstdio>
#include <cstring>
#include <vector>

using namespace sparsecc::int8k;

namespace {

enum class Layout { kU8Shifted, kI16Pairs, kS8 };

struct Isa {
  const char* name;
  RowsFn rows;
  QuantFn quant;
  int64_t vw;
  Layout layout;
};

const Isa kIsas[] = {
#if SPARSECC_INT8_X86
    {"avx512", vnni::rows, vnni::quantize_row, 16, Layout::kU8Shifted},
    {"avx2", avx2::rows, avx2::quantize_row, 8, Layout::kI16Pairs},
#endif
#if SPARSECC_INT8_AARCH64
    {"neon", neon::rows, neon::quantize_row, 4, Layout::kS8},
#endif
    {"portable", portable::rows, portable::quantize_row, 8, Layout::kI16Pairs},
};

struct Rng {  // splitmix64
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (next() >> 11) * (1.0 / 9007199254740992.0); }
};

bool g_perturb = false;
int64_t g_runs = 0;

// the documented quantization of one token
float quantize_ref(const float* x, int64_t K, float act_scale, int8_t* q) {
  float s = act_scale;
  if (s <= 0.f) {
    float amax = 0.f;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(x[k]));
    s = amax > 0.f ? amax / 127.f : 1.f;
  }
  for (int64_t k = 0; k < K; ++k) {
    const float r = std::nearbyint(x[k] / s);
    q[k] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, r)));
  }
  return s;
}

std::string run_case(const Isa& isa, int64_t br, int64_t bc, double density, int empty_every, int64_t T,
                     bool with_bias, float act_scale, uint64_t seed, bool driver) {
  const int64_t N = 48, K = 64;
  Rng rng(seed);
  char name[256];
  std::snprintf(name, sizeof name,
                "isa=%s blocks=%lldx%lld density=%.2f empty_every=%d T=%lld bias=%d act_scale=%g driver=%d", isa.name,
                static_cast<long long>(br), static_cast<long long>(bc), density, empty_every, static_cast<long long>(T),
                with_bias ? 1 : 0, act_scale, driver ? 1 : 0);
  // weight: dense int8 copy, blocks kept at random, int8 values -127..127 (zeros inside kept blocks too)
  std::vector<int8_t> w(N * K, 0);
  std::vector<int32_t> crow{0}, col;
  std::vector<int8_t> val;
  for (int64_t r = 0; r < N / br; ++r) {
    for (int64_t c = 0; c < K / bc; ++c) {
      if (!(rng.uniform() < density) || (empty_every > 0 && r % empty_every == 0)) continue;
      col.push_back(static_cast<int32_t>(c));
      for (int64_t i = 0; i < br; ++i)
        for (int64_t jj = 0; jj < bc; ++jj) {
          const int8_t v = rng.uniform() < 0.15 ? 0 : static_cast<int8_t>(static_cast<int>(rng.next() % 255) - 127);
          w[(r * br + i) * K + c * bc + jj] = v;
          val.push_back(v);
        }
    }
    crow.push_back(static_cast<int32_t>(col.size()));
  }
  std::vector<int32_t> row_sums(N, 0);
  std::vector<float> wscale(N), bias(N);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) row_sums[n] += w[n * K + k];
    wscale[n] = static_cast<float>(0.001 + 0.01 * rng.uniform());
    bias[n] = static_cast<float>(rng.uniform() * 2 - 1);
  }
  // activations: mostly in [-1, 1], some tokens all zero, some with values past a static scale's range
  std::vector<float> x(T * K);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) x[t * K + k] = t % 7 == 5 ? 0.f : static_cast<float>((rng.uniform() * 2 - 1) * (1 + t % 3));

  // reference quantization and output
  std::vector<int8_t> qref(T * K);
  std::vector<float> sref(T);
  for (int64_t t = 0; t < T; ++t) sref[t] = quantize_ref(&x[t * K], K, act_scale, &qref[t * K]);

  const int64_t kGuard = 29;
  const float kSentinel = -7777.5f;
  std::vector<float> y(T * N + kGuard, kSentinel);
  const int64_t vw = isa.vw;
  const int64_t bytes = isa.layout == Layout::kI16Pairs ? 2 : 1;
  const int64_t TT = std::min(tile_tokens(K, vw, bytes), (T + vw - 1) / vw * vw);
  std::vector<uint8_t> p8;
  std::vector<int16_t> p16;
  std::vector<int8_t> s8, q(K);
  std::vector<float> sx(TT);
  char msg[512];
  if (driver) {
    const QJob base{nullptr, nullptr, 0, nullptr, nullptr, N, 0, 0, crow.data(), col.data(), val.data(),
                    wscale.data(), row_sums.data(), with_bias ? bias.data() : nullptr, br};
    const Int8Scratch need = int8_scratch(T, K, br, isa.name);
    std::vector<uint8_t> panel(need.panel_bytes);
    std::vector<float> scales(std::max<int64_t>(need.scales, 1));
    auto par = [](int64_t b, int64_t e, int64_t grain, const auto& fn) {
      for (int64_t lo = b; lo < e; lo += grain) fn(lo, std::min(e, lo + grain));
    };
    int8_tiles(x.data(), y.data(), T, K, N, base, act_scale, isa.name, panel.data(), scales.data(), par);
  }
  for (int64_t t0 = 0; !driver && t0 < T; t0 += TT) {
    const int64_t nt = std::min(TT, T - t0);
    const int64_t P = (nt + vw - 1) / vw * vw;
    p8.assign(K * P, 0);
    p16.assign(K * P, 0);
    s8.assign(K * P, 0);
    for (int64_t t = 0; t < P; ++t) {
      if (t < nt) {
        sx[t] = isa.quant(&x[(t0 + t) * K], K, act_scale, q.data());
        if (sx[t] != sref[t0 + t] || std::memcmp(q.data(), &qref[(t0 + t) * K], K) != 0) {
          std::snprintf(msg, sizeof msg, "token %lld quantized differently from the documented rule",
                        static_cast<long long>(t0 + t));
          return std::string(name) + ": " + msg;
        }
      } else {
        sx[t] = 1.f;
        std::fill(q.begin(), q.end(), 0);
      }
      switch (isa.layout) {
        case Layout::kU8Shifted:
          for (int64_t k = 0; k < K; ++k) p8[((k / 4) * P + t) * 4 + k % 4] = static_cast<uint8_t>(q[k]) ^ 0x80;
          break;
        case Layout::kI16Pairs:
          for (int64_t k = 0; k < K; ++k) p16[((k / 2) * P + t) * 2 + k % 2] = q[k];
          break;
        case Layout::kS8:
#if SPARSECC_INT8_AARCH64
          pack_signed4(t < nt ? q.data() : nullptr, K, t, P, s8.data());
#endif
          break;
      }
    }
    QJob j{isa.layout == Layout::kU8Shifted ? p8.data() : nullptr,
           isa.layout == Layout::kI16Pairs ? p16.data() : nullptr,
           P, sx.data(), y.data(), N, t0, nt, crow.data(), col.data(), val.data(), wscale.data(), row_sums.data(),
           with_bias ? bias.data() : nullptr, br};
    j.panels8 = isa.layout == Layout::kS8 ? s8.data() : nullptr;
    isa.rows(j, 0, N / br);
  }
  ++g_runs;
  if (g_perturb) {
    float& v = y[(T / 2) * N + N / 2];
    v = std::nextafter(v, INFINITY);
    g_perturb = false;
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      int64_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += static_cast<int64_t>(qref[t * K + k]) * w[n * K + k];
      volatile float s = sref[t] * wscale[n];  // volatile: each operation rounded, as with contraction off
      volatile float m = static_cast<float>(acc) * s;
      const float want = with_bias ? m + bias[n] : m + 0.f;
      const float got = y[t * N + n];
      if (std::memcmp(&got, &want, sizeof(float)) != 0) {
        std::snprintf(msg, sizeof msg, "y[t=%lld, n=%lld] = %.9g, exact %.9g (int sum %lld)", static_cast<long long>(t),
                      static_cast<long long>(n), got, want, static_cast<long long>(acc));
        return std::string(name) + ": " + msg;
      }
    }
  for (int64_t i = T * N; i < static_cast<int64_t>(y.size()); ++i)
    if (y[i] != kSentinel) return std::string(name) + ": wrote past the end of y";
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--self-check-fail") == 0) g_perturb = true;
    else {
      std::fprintf(stderr, "usage: %s [--self-check-fail]\n", argv[0]);
      return 2;
    }
  }
  std::string names;
  std::vector<const Isa*> isas;
  for (const Isa& isa : kIsas)
    if (cpu_has(isa.name)) {
      isas.push_back(&isa);
      names += std::string(names.empty() ? "" : ",") + isa.name;
    }
  std::printf("int8 isas tested: %s\n", names.c_str());
  std::fflush(stdout);
  struct Shape {
    int64_t br, bc;
    double density;
    int empty_every;
  };
  const Shape shapes[] = {{1, 4, 0.4, 0}, {1, 4, 0.0, 0}, {4, 4, 0.5, 3}, {4, 4, 1.0, 0},
                          {8, 8, 0.5, 0}, {8, 8, 0.6, 2}, {16, 16, 0.7, 0}, {16, 16, 1.0, 0}};
  const int64_t tokens[] = {1, 3, 8, 17, 64, 130};
  int failures = 0;
  uint64_t seed = 11;
  for (const Isa* isa : isas) {
    int i = 0;
    for (const Shape& s : shapes)
      for (int64_t T : tokens) {
        ++i;
        const bool bias = i % 2 == 0;
        const float act_scale = i % 3 == 0 ? 0.0125f : 0.f;  // static (clamps) or dynamic per token
        for (bool driver : {false, true}) {
          const std::string err = run_case(*isa, s.br, s.bc, s.density, s.empty_every, T, bias, act_scale, seed,
                                           driver);
          if (!err.empty()) {
            std::printf("FAIL %s\n", err.c_str());
            if (++failures >= 10) return 1;
          }
        }
        ++seed;
      }
  }
  std::printf("%s: %lld runs over int8 isas %s, %d failed\n", failures ? "FAILED" : "ok",
              static_cast<long long>(g_runs), names.c_str(), failures);
  return failures ? 1 : 0;
}
