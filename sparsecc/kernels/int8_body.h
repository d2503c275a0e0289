// int8 sparse weight x int8 activation kernels, written once and compiled
// once per instruction set: int8_spmm.cpp includes this file inside a
// namespace that defines, before the include,
//
//   VW               int32 lanes per vector (tokens per vector)
//   vi               the int32 accumulator vector type; vi_zero() its zero
//   vx               a group of 4 reduction rows x VW tokens of activations
//   load_x(j, k4, t) the activations of reduction columns 4*k4 .. 4*k4+3 for tokens t .. t+VW-1
//   dot4(acc, x, w)  acc + sum over the 4 columns of x * w (w: 4 int8 weights packed in an int32)
//   vi_store(p, a)   store VW int32
//   NV8              token vectors per chunk for 8 output rows (what the registers hold)
//
// Y(t, n) = sum_k W(n, k) X(t, k) over the stored blocks (br x bc, bc a
// multiple of 4), accumulated exactly in int32, then dequantized by
// write_out with floating-point contraction off, so every ISA rounds
// y = float(acc) * (s_x * s_w) + b the same way (a multiply, then an add).

typedef float vfo __attribute__((vector_size(VW * 4)));
typedef int32_t vio __attribute__((vector_size(VW * 4)));
typedef float vfo_u __attribute__((vector_size(VW * 4), aligned(4)));
typedef int32_t vio_u __attribute__((vector_size(VW * 4), aligned(4)));

// Dequantize R rows x WIDTH tokens of int32 sums (buf[r][t]) into Y, rows contiguous per token.
template <int R, int WIDTH>
__attribute__((optimize("fp-contract=off"))) static void write_out(const QJob& j, const int32_t* buf, int64_t n0,
                                                                    int64_t tb) {
  alignas(64) float tmp[R][WIDTH];
  for (int r = 0; r < R; ++r) {
    const int64_t n = n0 + r;
    const int32_t shift = j.panel8 ? 128 * j.row_sums[n] : 0;
    const float ws = j.wscale[n];
    const float b = j.bias ? j.bias[n] : 0.f;
    for (int v = 0; v < WIDTH / VW; ++v) {
      const vio acc = *reinterpret_cast<const vio_u*>(buf + r * WIDTH + v * VW) - shift;
      const vfo s = *reinterpret_cast<const vfo_u*>(j.sx + tb + v * VW) * ws;
      const vfo y = __builtin_convertvector(acc, vfo) * s;
      *reinterpret_cast<vfo_u*>(&tmp[r][v * VW]) = y + b;
    }
  }
  const int64_t m = std::min<int64_t>(WIDTH, j.nt - tb);
  for (int64_t t = 0; t < m; ++t) {
    float* yrow = j.y + (j.t0 + tb + t) * j.ldy + n0;
    for (int r = 0; r < R; ++r) yrow[r] = tmp[r][t];
  }
}

template <int BR, int BC, int R, int NV>
static inline void chunk(const QJob& j, int64_t brow, int roff, int64_t v0) {
  vi acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vi_zero();
  const int32_t end = j.crow[brow + 1];
  for (int32_t i = j.crow[brow]; i < end; ++i) {
    const int8_t* wb = j.val + static_cast<int64_t>(i) * BR * BC + roff * BC;
    const int64_t k4 = static_cast<int64_t>(j.col[i]) * (BC / 4);
#pragma GCC unroll 4
    for (int g = 0; g < BC / 4; ++g) {
      vx x[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) x[v] = load_x(j, k4 + g, (v0 + v) * VW);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        int32_t w;
        std::memcpy(&w, wb + r * BC + g * 4, 4);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = dot4(acc[r][v], x[v], w);
      }
    }
  }
  alignas(64) int32_t buf[R * NV * VW];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) vi_store(buf + r * NV * VW + v * VW, acc[r][v]);
  write_out<R, NV * VW>(j, buf, brow * BR + roff, v0 * VW);
}

template <int BR, int BC, int R, int NV>
static inline void block_row(const QJob& j, int64_t brow, int64_t nvec) {
  for (int roff = 0; roff < BR; roff += R) {
    int64_t v0 = 0;
    for (; nvec - v0 >= NV; v0 += NV) chunk<BR, BC, R, NV>(j, brow, roff, v0);
    for (; v0 < nvec; ++v0) chunk<BR, BC, R, 1>(j, brow, roff, v0);
  }
}

void rows(const QJob& j, int64_t b0, int64_t b1) {
  const int64_t nvec = j.P / VW;
  for (int64_t b = b0; b < b1; ++b) {
    switch (j.br) {
      case 1: block_row<1, 4, 1, 4>(j, b, nvec); break;
      case 4: block_row<4, 4, 4, 2>(j, b, nvec); break;
      case 8: block_row<8, 8, 8, NV8>(j, b, nvec); break;
      case 16: block_row<16, 16, 8, NV8>(j, b, nvec); break;
      default: break;  // rejected by the caller
    }
  }
}

// Quantize one row of activations to int8 (symmetric, scale amax / 127, or
// act_scale when > 0); compiled per ISA so the division and rounding
// vectorize. Returns the scale. Rounding is to nearest even, as torch.round.
float quantize_row(const float* xr, int64_t K, float act_scale, int8_t* out) {
  float s = act_scale;
  if (s <= 0.f) {
    float amax = 0.f;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(xr[k]));
    s = amax > 0.f ? amax / 127.f : 1.f;
  }
  for (int64_t k = 0; k < K; ++k)
    out[k] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, std::nearbyint(xr[k] / s))));
  return s;
}
