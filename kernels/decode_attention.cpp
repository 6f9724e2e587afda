// One decoding step's attention for one new position per row, fp32: the CPU side of kernels/decode_attention.py
// (read [A1]–[A4] there).
//
//   decode_attention(q, k, v, cos, sin, K, V, N, H, Hkv, hd, S, col, mask, mask_stride, scale, out, threads)
//     q [N, H, hd], k and v [N, Hkv, hd]: the new position's projections, before RoPE; cos, sin [N, hd];
//     K, V [N, Hkv, S, hd]: the KV cache, written at column col (k after RoPE, v);
//     mask [N, mask_stride] int64, nonzero = attended (column col always is); out [N, H, hd].
//   out[n, h] = Σ_{c ≤ col, mask[n, c]} softmax_c(scale · q̃[n, h]·K[n, j, c]) · V[n, j, c],  j = h / (H / Hkv),
//   x̃ = x·cos + rotate_half(x)·sin, rotate_half(x) = (−x[hd/2:], x[:hd/2]).
//
// Plain C++ (the loops vectorise under -O3 -mavx512f; `omp simd` lets the dot products do so without
// -ffast-math); no torch headers (built by kernels/cpp_build.py, loaded with ctypes).
#include <math.h>
#include <stdint.h>

#include <vector>

namespace {

// x̃ = x·cos + rotate_half(x)·sin over hd values (hd even) [A2]
inline void rope(const float* __restrict x, const float* __restrict c, const float* __restrict s, int64_t hd,
                 float* __restrict out) {
  const int64_t half = hd / 2;
  for (int64_t i = 0; i < half; ++i) out[i] = x[i] * c[i] - x[i + half] * s[i];
  for (int64_t i = half; i < hd; ++i) out[i] = x[i] * c[i] + x[i - half] * s[i];
}

}  // namespace

extern "C" void decode_attention(const float* q, const float* k, const float* v, const float* cos_,
                                 const float* sin_, float* K, float* V, int64_t N, int64_t H, int64_t Hkv,
                                 int64_t hd, int64_t S, int64_t col, const int64_t* mask, int64_t mask_stride,
                                 float scale, float* out, int threads) {
  const int64_t g = H / Hkv;  // query heads per key/value head (GQA)
  // one task per (row, key/value head): its cache column is written, then its g query heads attend [A3]
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < N * Hkv; ++t) {
    const int64_t n = t / Hkv, j = t % Hkv;
    const float* c = cos_ + n * hd;
    const float* s = sin_ + n * hd;
    float* Kj = K + (n * Hkv + j) * S * hd;  // [S, hd]
    float* Vj = V + (n * Hkv + j) * S * hd;
    rope(k + (n * Hkv + j) * hd, c, s, hd, Kj + col * hd);
    for (int64_t i = 0; i < hd; ++i) Vj[col * hd + i] = v[(n * Hkv + j) * hd + i];
    const int64_t* m = mask + n * mask_stride;
    // the g query heads of this key/value head together: each cached row of K and V is read once for all of
    // them [A3]
    std::vector<float> buffer(g * (col + 1) + 2 * g * hd);
    float* __restrict score = buffer.data();      // [g, col + 1]
    float* __restrict qr = score + g * (col + 1);  // [g, hd]: the queries after RoPE
    float* __restrict acc = qr + g * hd;           // [g, hd]: Σ_p e_p·V[p]
    std::vector<float> top(g, -INFINITY), sum(g, 0.f);  // per head: the largest score, subtracted before exp [A4]
    for (int64_t r = 0; r < g; ++r) rope(q + (n * H + j * g + r) * hd, c, s, hd, qr + r * hd);
    for (int64_t p = 0; p <= col; ++p) {
      if (!m[p] && p != col) continue;  // a row always attends its own new position
      const float* __restrict kp = Kj + p * hd;
      for (int64_t r = 0; r < g; ++r) {
        const float* __restrict qh = qr + r * hd;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < hd; ++i) dot += qh[i] * kp[i];
        score[r * (col + 1) + p] = dot * scale;
        top[r] = score[r * (col + 1) + p] > top[r] ? score[r * (col + 1) + p] : top[r];
      }
    }
    for (int64_t i = 0; i < g * hd; ++i) acc[i] = 0.f;
    for (int64_t p = 0; p <= col; ++p) {
      if (!m[p] && p != col) continue;
      const float* __restrict vp = Vj + p * hd;
      for (int64_t r = 0; r < g; ++r) {
        const float e = expf(score[r * (col + 1) + p] - top[r]);
        sum[r] += e;
        float* __restrict a = acc + r * hd;
        for (int64_t i = 0; i < hd; ++i) a[i] += e * vp[i];
      }
    }
    for (int64_t r = 0; r < g; ++r)
      for (int64_t i = 0; i < hd; ++i) out[(n * H + j * g + r) * hd + i] = acc[r * hd + i] / sum[r];
  }
}
