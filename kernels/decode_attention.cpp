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
// AVX-512F intrinsics for hd a multiple of 16 (attend_vector), plain loops otherwise (`omp simd` lets their dot
// products vectorise without -ffast-math); no torch headers (built by kernels/cpp_build.py, loaded with ctypes).
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include <vector>

namespace {

constexpr int64_t AHEAD = 1024;  // prefetch distance in floats (4 KiB) along a cached K or V block: 86 vs 107 µs a
                                // call without (smollm2, 8 rows, 161 columns, the caches of 30 layers, 2 threads)

// x̃ = x·cos + rotate_half(x)·sin over hd values (hd even) [A2]
inline void rope(const float* __restrict x, const float* __restrict c, const float* __restrict s, int64_t hd,
                 float* __restrict out) {
  const int64_t half = hd / 2;
  for (int64_t i = 0; i < half; ++i) out[i] = x[i] * c[i] - x[i + half] * s[i];
  for (int64_t i = half; i < hd; ++i) out[i] = x[i] * c[i] + x[i - half] * s[i];
}

// e^x for 16 lanes, x ≤ 0 (a score minus its row's largest), [A4]: x = n·ln2 + r with n = round(x·log2 e) and
// |r| ≤ ln2/2 (ln2 in two parts, so r is exact to fp32), e^r by its Taylor polynomial to r⁷/7! (truncation
// below 1e-8 relative), then ·2ⁿ by scalef, which rounds into the subnormals and to 0 like expf. x below −104
// (e^x < 2^−150, 0 in fp32) is clamped there, so −∞ gives 0 too.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln2's first 16 bits: n·them exact
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);      // the rest of ln2
  __m512 p = _mm512_set1_ps(1.f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// The g query heads qr [g, hd] of one key/value head against its cache Kj, Vj [S, hd] up to column col (hd a
// multiple of 16): out [g, hd] (rows ld_out apart). Scratch: score [g, col + 1], acc [g, hd], total [g].
void attend_vector(const float* __restrict qr, const float* __restrict Kj, const float* __restrict Vj,
                   const int64_t* __restrict m, int64_t g, int64_t hd, int64_t col, float scale,
                   float* __restrict score, float* __restrict acc, float* __restrict total,
                   float* __restrict out, int64_t ld_out) {
  const int64_t nv = hd / 16, width = col + 1;
  for (int64_t p = 0; p < width; ++p) {  // scores; a masked column's is −∞
    const bool on = m[p] || p == col;  // a row always attends its own new position
    const float* kp = Kj + p * hd;
    for (int64_t v = 0; v < nv; ++v)  // [A3]: the cache streams from memory
      _mm_prefetch(reinterpret_cast<const char*>(kp + AHEAD + 16 * v), _MM_HINT_T0);
    for (int64_t r = 0; r < g; ++r) {
      if (!on) {
        score[r * width + p] = -INFINITY;
        continue;
      }
      __m512 dot = _mm512_mul_ps(_mm512_loadu_ps(qr + r * hd), _mm512_loadu_ps(kp));
      for (int64_t v = 1; v < nv; ++v)
        dot = _mm512_fmadd_ps(_mm512_loadu_ps(qr + r * hd + 16 * v), _mm512_loadu_ps(kp + 16 * v), dot);
      score[r * width + p] = _mm512_reduce_add_ps(dot) * scale;
    }
  }
  for (int64_t r = 0; r < g; ++r) {  // e_p = exp(s_p − max s) in place; masked columns stay exactly 0 [A4]
    float* e = score + r * width;
    __m512 top = _mm512_set1_ps(-INFINITY);
    for (int64_t p = 0; p < width; p += 16) {
      const __mmask16 in = width - p >= 16 ? 0xFFFF : (__mmask16)((1u << (width - p)) - 1);
      top = _mm512_max_ps(top, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), in, e + p));
    }
    const __m512 max = _mm512_set1_ps(_mm512_reduce_max_ps(top));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t p = 0; p < width; p += 16) {
      const __mmask16 in = width - p >= 16 ? 0xFFFF : (__mmask16)((1u << (width - p)) - 1);
      const __m512 s = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), in, e + p);
      const __mmask16 live = _mm512_cmp_ps_mask(s, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
      const __m512 x = _mm512_maskz_mov_ps(live, exp_nonpositive(_mm512_sub_ps(s, max)));
      sum = _mm512_add_ps(sum, x);
      _mm512_mask_storeu_ps(e + p, in, x);
    }
    total[r] = _mm512_reduce_add_ps(sum);
    for (int64_t i = 0; i < hd; ++i) acc[r * hd + i] = 0.f;
  }
  for (int64_t p = 0; p < width; ++p) {  // Σ_p e_p·V[p], each row of V read once for the g heads
    if (!m[p] && p != col) continue;
    const float* vp = Vj + p * hd;
    for (int64_t v = 0; v < nv; ++v) _mm_prefetch(reinterpret_cast<const char*>(vp + AHEAD + 16 * v), _MM_HINT_T0);
    for (int64_t v = 0; v < nv; ++v) {
      const __m512 vv = _mm512_loadu_ps(vp + 16 * v);
      for (int64_t r = 0; r < g; ++r) {
        float* a = acc + r * hd + 16 * v;
        _mm512_storeu_ps(a, _mm512_fmadd_ps(_mm512_set1_ps(score[r * width + p]), vv, _mm512_loadu_ps(a)));
      }
    }
  }
  for (int64_t r = 0; r < g; ++r) {
    const __m512 sum = _mm512_set1_ps(total[r]);
    for (int64_t v = 0; v < nv; ++v)
      _mm512_storeu_ps(out + r * ld_out + 16 * v, _mm512_div_ps(_mm512_loadu_ps(acc + r * hd + 16 * v), sum));
  }
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
    if (hd % 16 == 0) {  // AVX-512 all through, the exponential too
      attend_vector(qr, Kj, Vj, m, g, hd, col, scale, score, acc, sum.data(), out + (n * H + j * g) * hd, hd);
      continue;
    }
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
