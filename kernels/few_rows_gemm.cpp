// y = x·Wᵀ for a few rows of x, fp32, AVX-512: the CPU side of kernels/few_rows.py (read [R1]–[R5] there).
//
//   few_rows_mm(x, M, K, w, N, y, threads):  x [M, K], w [N, K], y [M, N], all row-major and contiguous,
//   y[m, n] = Σ_k x[m, k]·w[n, k].
//
// Plain C++ and the AVX-512F intrinsics; no torch headers (built by kernels/few_rows.py with the system's
// C++ compiler in about a second, loaded with ctypes).
#include <immintrin.h>
#include <stdint.h>

namespace {

constexpr int R = 3;          // output rows of w per block: R·MB = 24 accumulators, 3 weight vectors, 1 x vector
constexpr int MB = 8;         // rows of x per pass over a block (a block stays in L1 for the next MB rows)
constexpr int64_t X_TILE = 1 << 17;  // floats of x (512 KiB) per pass over all of w: they stay in L2 ([R2])
constexpr int AHEAD = 2048;   // prefetch distance in floats (8 KiB) along w: the hardware prefetcher alone
                              // left the LM head's stream at 15 GB/s here, with it 32 GB/s ([R3])

// y[m, r] (m < rows, r < RR) = Σ_k x[m, k]·w[r, k]: RR consecutive rows of w against `rows` rows of x.
// Each (r, m) pair sums in 16 lanes, 16 columns of k at a time; the lanes are added at the end.
template <int RR, int ROWS>
inline void block(const float* __restrict x, const float* __restrict w, int64_t K, float* __restrict y,
                  int64_t ldy) {
  __m512 acc[RR][ROWS];
  for (int r = 0; r < RR; ++r)
    for (int m = 0; m < ROWS; ++m) acc[r][m] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 wv[RR];
    for (int r = 0; r < RR; ++r) {
      wv[r] = _mm512_loadu_ps(w + r * K + k);
      _mm_prefetch((const char*)(w + r * K + k + AHEAD), _MM_HINT_T0);  // beyond w's end: a no-op, no fault
    }
    for (int m = 0; m < ROWS; ++m) {
      __m512 xv = _mm512_loadu_ps(x + m * K + k);
      asm("" : "+v"(xv));  // keeps xv in a register: one load for its RR multiply-adds, not one each
      for (int r = 0; r < RR; ++r) acc[r][m] = _mm512_fmadd_ps(wv[r], xv, acc[r][m]);
    }
  }
  if (k < K) {  // the last K mod 16 columns, the other lanes loaded as 0
    const __mmask16 tail = (__mmask16)((1u << (K - k)) - 1);
    __m512 wv[RR];
    for (int r = 0; r < RR; ++r) wv[r] = _mm512_maskz_loadu_ps(tail, w + r * K + k);
    for (int m = 0; m < ROWS; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(tail, x + m * K + k);
      for (int r = 0; r < RR; ++r) acc[r][m] = _mm512_fmadd_ps(wv[r], xv, acc[r][m]);
    }
  }
  for (int m = 0; m < ROWS; ++m)
    for (int r = 0; r < RR; ++r) y[m * ldy + r] = _mm512_reduce_add_ps(acc[r][m]);
}

template <int RR>
void rows_of_x(int rows, const float* x, const float* w, int64_t K, float* y, int64_t ldy) {
  switch (rows) {  // a compile-time row count, so that every accumulator lives in a register
    case 8: block<RR, 8>(x, w, K, y, ldy); break;
    case 7: block<RR, 7>(x, w, K, y, ldy); break;
    case 6: block<RR, 6>(x, w, K, y, ldy); break;
    case 5: block<RR, 5>(x, w, K, y, ldy); break;
    case 4: block<RR, 4>(x, w, K, y, ldy); break;
    case 3: block<RR, 3>(x, w, K, y, ldy); break;
    case 2: block<RR, 2>(x, w, K, y, ldy); break;
    default: block<RR, 1>(x, w, K, y, ldy); break;
  }
}

}  // namespace

extern "C" void few_rows_mm(const float* x, int64_t M, int64_t K, const float* w, int64_t N, float* y,
                            int threads) {
  const int64_t blocks = (N + R - 1) / R;
  const int64_t MT = (K == 0 || K * MB > X_TILE) ? MB : X_TILE / K / MB * MB;  // rows per pass: a multiple of MB
  for (int64_t m0 = 0; m0 < M; m0 += MT) {  // many rows (a prefill): w is read once per MT rows
    const int64_t m1 = M - m0 < MT ? M : m0 + MT;
    // [R4] each thread a contiguous range of w's rows: one stream of weights per core, read once for all rows
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n = b * R;
      for (int64_t m = m0; m < m1; m += MB) {
        const int rows = (int)(m1 - m < MB ? m1 - m : MB);
        if (n + R <= N) {
          rows_of_x<R>(rows, x + m * K, w + n * K, K, y + m * N + n, N);
        } else {
          for (int64_t i = n; i < N; ++i) rows_of_x<1>(rows, x + m * K, w + i * K, K, y + m * N + i, N);
        }
      }
    }
  }
}
