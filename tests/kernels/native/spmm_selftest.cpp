// Torch-free self-test of the fp32 sparse kernels (sparsecc/kernels/spmm_isa.h):
// every instruction set this CPU has (kIsas filtered by cpu_has) runs
// spmm_tiles over random CSR and BSR weights against a float64 reference.
//
// Built natively and, cross-compiled for AArch64, run under qemu by
// tests/kernels/test_aarch64_qemu.py:
//
//   g++ -O2 -std=c++17 -I sparsecc/kernels tests/kernels/native/spmm_selftest.cpp -o spmm_selftest
//   aarch64-linux-gnu-g++ -O2 -static -std=c++17 -I sparsecc/kernels ... && qemu-aarch64 ./spmm_selftest
//
// Checks per case (weight structure x tokens x X/Y layout x bias x values):
// - random values: |y - ref| <= tol * sum_k |w||x| + |bias|) + 1e-6 per output, with
//   tol = max(1e-5, gamma_(n+1)), gamma_m = m u / (1 - m u), u = 2^-24, n the row's
//   nonzeros: the worst-case bound of an fp32 sum of n+1 terms in any order (FMA or not),
//   floored at the 1e-5 the Python tests (tests/kernels/test_sparse_kernels.py) allow;
// - the Python tests' own criterion: max error <= 1e-5 * max |ref| + 1e-6;
// - integer values (|w|, |x|, |bias| <= 8, sums far below 2^24): every fp32 partial
//   sum is exact, so y must equal the reference bit for bit, whatever the order;
// - every output written, and nothing else in Y's buffer (gaps of strided Y, guard
//   words past the end) touched.
//
// Options: --self-check-fail perturbs one output of the first case after the kernel
// ran, so the run must fail (the harness cannot pass vacuously); --quiet prints
// only the summary; --list prints the architecture and ISAs and runs nothing. Exit 0 when all pass, 1 with a line naming the failed case.

#include "spmm_isa.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace sparsecc;

namespace {

struct Rng {  // splitmix64: deterministic on every target
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
  float value(bool integer) {
    if (integer) return static_cast<float>(static_cast<int>(next() % 17) - 8);  // -8..8
    return static_cast<float>(uniform() * 2.0 - 1.0);
  }
};

struct Weight {
  int64_t N, K, block;
  std::vector<float> dense;  // [N][K], the reference's copy
  std::vector<int32_t> crow, col;
  std::vector<float> val;  // CSR: [nnz]; BSR: [nnz_blocks][B][B]
  int64_t max_row_nnz = 0;  // nonzero products in the fullest output row
};

// density: chance a position (CSR) or block (BSR) is kept; empty_every > 0 zeroes every
// empty_every-th output row (block row for BSR) on top.
Weight make_weight(int64_t N, int64_t K, int64_t block, double density, int empty_every, bool integer, Rng& rng) {
  Weight w{N, K, block, std::vector<float>(N * K, 0.f), {}, {}, {}};
  const int64_t R = N / block, C = K / block;
  for (int64_t br = 0; br < R; ++br)
    for (int64_t bc = 0; bc < C; ++bc) {
      const bool keep = rng.uniform() < density && !(empty_every > 0 && br % empty_every == 0);
      if (!keep) continue;
      for (int64_t i = 0; i < block; ++i)
        for (int64_t j = 0; j < block; ++j) {
          float v = rng.value(integer);
          // inside kept BSR blocks some entries are zero too, as after pruning within a block
          if (block > 1 && rng.uniform() < 0.2) v = 0.f;
          if (block == 1 && v == 0.f) v = 1.f;  // a kept CSR entry is a nonzero
          w.dense[(br * block + i) * K + bc * block + j] = v;
        }
    }
  w.crow.push_back(0);
  for (int64_t br = 0; br < R; ++br) {
    for (int64_t bc = 0; bc < C; ++bc) {
      bool any = false;
      for (int64_t i = 0; i < block && !any; ++i)
        for (int64_t j = 0; j < block && !any; ++j) any = w.dense[(br * block + i) * K + bc * block + j] != 0.f;
      if (!any) continue;
      w.col.push_back(static_cast<int32_t>(bc));
      for (int64_t i = 0; i < block; ++i)
        for (int64_t j = 0; j < block; ++j) w.val.push_back(w.dense[(br * block + i) * K + bc * block + j]);
    }
    w.crow.push_back(static_cast<int32_t>(w.col.size()));
  }
  for (int64_t n = 0; n < N; ++n) {
    int64_t c = 0;
    for (int64_t k = 0; k < K; ++k) c += w.dense[n * K + k] != 0.f;
    w.max_row_nnz = std::max(w.max_row_nnz, c);
  }
  return w;
}

// Where X(t, k) and Y(t, n) live: the torch ops use "rows" (linear) and "channels"
// (conv1x1, X [K][T] and Y [N][T]); "padded" and "interleaved" are strides the driver allows.
struct Layout {
  const char* name;
  int64_t sxt, sxk, syt, syn, xsize, ysize;
};

Layout make_layout(int which, int64_t T, int64_t K, int64_t N) {
  switch (which) {
    case 0: return {"rows", K, 1, N, 1, T * K, T * N};
    case 1: return {"padded", K + 5, 1, N + 3, 1, T * (K + 5), T * (N + 3)};
    case 2: return {"channels", 1, T, 1, T, T * K, T * N};
    default: return {"interleaved", 2 * K + 1, 2, 1, T + 2, T * (2 * K + 1), N * (T + 2)};
  }
}

const float kSentinel = -12345.25f;  // in Y's buffer where no output belongs
const int64_t kGuard = 37;           // sentinel words past the end of Y

struct Case {
  const char* kind;  // "csr" or "bsr"
  int64_t block, N, K;
  double density;
  int empty_every;
  const char* label;
};

std::string describe(const Isa& isa, const Case& c, int64_t T, const Layout& lay, bool bias, bool integer,
                     bool chunked) {
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "isa=%s %s block=%lld %s density=%.2f N=%lld K=%lld T=%lld layout=%s bias=%d values=%s par=%s",
                isa.name, c.kind, static_cast<long long>(c.block), c.label, c.density, static_cast<long long>(c.N),
                static_cast<long long>(c.K), static_cast<long long>(T), lay.name, bias ? 1 : 0,
                integer ? "integer" : "random", chunked ? "chunked" : "serial");
  return buf;
}

bool g_perturb = false;  // --self-check-fail: spoil one output of the first case
bool g_quiet = false;
bool g_list = false;
int64_t g_runs = 0;

// Runs one case; returns an empty string on success, else what went wrong.
std::string run_case(const Isa& isa, const Case& c, int64_t T, int lay_id, bool with_bias, bool integer,
                     bool chunked, uint64_t seed) {
  Rng rng(seed);
  const Weight w = make_weight(c.N, c.K, c.block, c.density, c.empty_every, integer, rng);
  const Layout lay = make_layout(lay_id, T, c.K, c.N);
  const std::string name = describe(isa, c, T, lay, with_bias, integer, chunked);

  // X's buffer: unused gaps hold NaN, so reading outside X(t, k) would show in Y.
  std::vector<float> x(lay.xsize + 8, std::nanf(""));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < c.K; ++k) x[t * lay.sxt + k * lay.sxk] = rng.value(integer);
  std::vector<float> bias(c.N);
  for (float& b : bias) b = rng.value(integer);
  std::vector<float> y(lay.ysize + kGuard, kSentinel);
  std::vector<float> panel(c.K * panel_tokens(c.K, T, isa), std::nanf(""));

  // a serial parallel-for: the whole range at once, or pieces of `grain` (at least 3) as threads would get
  auto par = [chunked](int64_t b, int64_t e, int64_t grain, const auto& fn) {
    if (!chunked) {
      if (b < e) fn(b, e);
      return;
    }
    const int64_t step = std::max<int64_t>(grain, 3);
    for (int64_t s = b; s < e; s += step) fn(s, std::min(e, s + step));
  };
  spmm_tiles(x.data(), lay.sxt, lay.sxk, y.data(), lay.syt, lay.syn, T, c.K, c.N, w.crow.data(), w.col.data(),
             w.val.data(), with_bias ? bias.data() : nullptr, c.block, isa, panel.data(), par);
  ++g_runs;
  if (g_perturb && T > 0 && c.N > 0) {  // after the kernel: the check below must catch it
    float& v = y[(T / 2) * lay.syt + (c.N / 2) * lay.syn];
    v = integer ? std::nextafter(v, INFINITY) : v + 1e-3f * (1.f + std::fabs(v));
    g_perturb = false;
  }

  const double u = std::ldexp(1.0, -24);
  const double m = static_cast<double>(w.max_row_nnz + 1) * u;
  const double rel = std::max(1e-5, m / (1.0 - m));
  std::vector<char> is_out(y.size(), 0);
  double max_err = 0.0, max_ref = 0.0;
  char msg[512];
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < c.N; ++n) {
      double ref = with_bias ? bias[n] : 0.0, mag = with_bias ? std::fabs(bias[n]) : 0.0;
      for (int64_t k = 0; k < c.K; ++k) {
        const double p = static_cast<double>(w.dense[n * c.K + k]) * x[t * lay.sxt + k * lay.sxk];
        ref += p;
        mag += std::fabs(p);
      }
      const int64_t at = t * lay.syt + n * lay.syn;
      is_out[at] = 1;
      const float got = y[at];
      const double err = std::fabs(static_cast<double>(got) - ref);
      const double tol = rel * mag + 1e-6;
      if (!std::isfinite(got) || got == kSentinel) {
        std::snprintf(msg, sizeof msg, "y[t=%lld, n=%lld] = %g was not written (or read padding/NaN)",
                      static_cast<long long>(t), static_cast<long long>(n), got);
        return name + ": " + msg;
      }
      if (integer && got != static_cast<float>(ref)) {
        std::snprintf(msg, sizeof msg, "y[t=%lld, n=%lld] = %.9g, exact integer result %.9g (not bit-exact)",
                      static_cast<long long>(t), static_cast<long long>(n), got, ref);
        return name + ": " + msg;
      }
      if (err > tol) {
        std::snprintf(msg, sizeof msg, "y[t=%lld, n=%lld] = %.9g, reference %.9g, |err| %.3g > tol %.3g",
                      static_cast<long long>(t), static_cast<long long>(n), got, ref, err, tol);
        return name + ": " + msg;
      }
      max_err = std::max(max_err, err);
      max_ref = std::max(max_ref, std::fabs(ref));
    }
  if (max_err > 1e-5 * max_ref + 1e-6) {  // the Python tests' criterion
    std::snprintf(msg, sizeof msg, "max |err| %.3g above 1e-5 of the output scale %.3g", max_err, max_ref);
    return name + ": " + msg;
  }
  for (size_t i = 0; i < y.size(); ++i)
    if (!is_out[i] && std::memcmp(&y[i], &kSentinel, sizeof(float)) != 0) {
      std::snprintf(msg, sizeof msg, "wrote y buffer word %zu (%s), which is no output", i,
                    i >= static_cast<size_t>(lay.ysize) ? "past the end" : "a stride gap");
      return name + ": " + msg;
    }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--self-check-fail") g_perturb = true;
    else if (a == "--quiet") g_quiet = true;
    else if (a == "--list") g_list = true;
    else {
      std::fprintf(stderr, "usage: %s [--self-check-fail] [--quiet] [--list]\n", argv[0]);
      return 2;
    }
  }
#if defined(__aarch64__)
  const char* arch = "aarch64";
#elif defined(__x86_64__)
  const char* arch = "x86_64";
#else
  const char* arch = "other";
#endif
  std::vector<const Isa*> isas;
  for (const Isa& isa : kIsas)
    if (cpu_has(isa.name)) isas.push_back(&isa);
  std::string names;
  for (const Isa* isa : isas) names += std::string(names.empty() ? "" : ",") + isa->name;
  std::printf("arch: %s\nbest_isa: %s\nisas tested: %s\n", arch, best_isa()->name, names.c_str());
  std::fflush(stdout);

#if defined(__aarch64__)
  {  // NEON first on ARM unless SPARSECC_ISA asks otherwise
    const char* forced = std::getenv("SPARSECC_ISA");
    const std::string want = forced && *forced ? forced : "neon";
    if (want == "neon" || want == "portable") {
      if (best_isa()->name != want) {
        std::printf("FAIL best_isa() is %s on AArch64, expected %s\n", best_isa()->name, want.c_str());
        return 1;
      }
    }
  }
#endif
  if (g_list) return 0;

  const Case cases[] = {
      {"csr", 1, 48, 96, 1.0, 0, "dense"},
      {"csr", 1, 48, 96, 0.5, 0, "unstructured"},
      {"csr", 1, 48, 96, 0.9, 0, "unstructured"},
      {"csr", 1, 48, 96, 0.03, 0, "unstructured"},
      {"csr", 1, 48, 96, 0.4, 3, "empty-rows"},
      {"csr", 1, 48, 96, 0.0, 0, "all-zero"},
      {"csr", 1, 40, 2048, 0.05, 0, "wide-K"},  // K * 64 tokens * 4 B > 256 KiB: narrower tiles
      {"bsr", 2, 48, 96, 0.5, 0, "blocks"},
      {"bsr", 4, 48, 96, 0.5, 0, "blocks"},
      {"bsr", 4, 48, 96, 1.0, 0, "dense-blocks"},
      {"bsr", 4, 48, 96, 0.0, 0, "all-zero"},
      {"bsr", 8, 48, 96, 0.4, 2, "empty-rows"},
      {"bsr", 8, 48, 96, 0.7, 0, "blocks"},
      {"bsr", 16, 48, 96, 0.5, 0, "blocks"},
      {"bsr", 16, 48, 96, 1.0, 0, "dense-blocks"},
      {"bsr", 16, 32, 2048, 0.05, 0, "wide-K"},
  };
  const int64_t tokens[] = {1, 3, 8, 17, 64, 130};

  int failures = 0;
  uint64_t seed = 1;
  for (const Isa* isa : isas) {
    int case_id = 0;
    for (const Case& c : cases) {
      int i = 0;
      for (int64_t T : tokens) {
        const bool wide = c.K > 1000;
        if (wide && T != 17 && T != 130) continue;  // the float64 reference is the slow part under qemu
        for (int integer = 0; integer < 2; ++integer, ++i) {
          // rotate layout, bias and the parallel-for's chunking over the runs of a case
          const int lay = (i + case_id) % 4;
          const bool bias = (i / 4 + case_id) % 2 == 0;
          const bool chunked = (i + case_id / 2) % 3 == 0;
          const std::string err = run_case(*isa, c, T, lay, bias, integer != 0, chunked, seed++);
          if (!err.empty()) {
            std::printf("FAIL %s\n", err.c_str());
            std::fflush(stdout);
            if (++failures >= 10) {
              std::printf("stopping after %d failures\n", failures);
              return 1;
            }
          }
        }
      }
      ++case_id;
    }
    if (!g_quiet) std::printf("isa %s: done\n", isa->name);
  }
  std::printf("%s: %lld runs over isas %s, %d failed\n", failures ? "FAILED" : "ok", static_cast<long long>(g_runs),
              names.c_str(), failures);
  return failures ? 1 : 0;
}
