/* lalm's CPU products for decoding: y = x W^T with W stored narrow (int8 codes with one scale
 * per output row, or bf16), read once from memory as it streams through the cores.
 *
 * Shapes (all row-major, contiguous): x [M, K] float32, W [N, K], y [M, N] float32.
 *
 * Every output y[i, j] is computed the same way whatever M, N, the blocking or the thread
 * count, so a row of x gives the same bits alone or among other rows (batched = single), at
 * any thread count. Threads split the output columns (rows of W) only.
 *
 * bf16: W is widened to float32 in registers; a vector of LANES float32 partial sums over k in
 * order (fused multiply-adds; the last partial chunk zero-padded), then a fixed horizontal
 * sum. Vector width by what the compiler targets (-march=native): AVX-512 (16 lanes), AVX2 +
 * FMA (8 lanes), else portable C (8 lanes); the result depends on which (the lane count orders
 * the sums), never on anything else.
 *
 * int8: integer products, exact. Each row of x is rounded once to fixed point, P = rint(x Q /
 * max|x|) with Q = 127 * 254^2 (a 24-bit grid like float32's significand: the rounding error
 * is at most max|x| / 2Q, about float32's rounding of the row's largest element), and P is
 * written as three int8 digits, P = 254^2 d0 + 254 d1 + d2 (each in [-127, 127]). The sums
 * d W over k are exact in integers (u8 x s8 dot products: AVX-512 VNNI, AVX-VNNI, or AVX2 /
 * portable C doing the same integer arithmetic), so T = sum_k P W is exact and equal on every
 * path and in every order: y = scale[j] (max|x| / Q) T, in float64, rounded to float32 once.
 * At batch 1, 64 code bytes take four dot-product instructions (the three digits, and the
 * row of ones for W's row sum, which takes the digits' offset off) where widening them to
 * float32 takes twelve: the int8 product stays bound by memory, not by the core.
 */
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define ISA "avx512"
#define LANES 16
typedef __m512 vec;
static inline vec v_zero(void) { return _mm512_setzero_ps(); }
static inline vec v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline vec v_fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline vec v_bf16(const uint16_t *p) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
static inline float v_sum(vec v) {
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}
static inline void prefetch(const void *p) { _mm_prefetch((const char *)p, _MM_HINT_T0); }
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define ISA "avx2"
#define LANES 8
typedef __m256 vec;
static inline vec v_zero(void) { return _mm256_setzero_ps(); }
static inline vec v_load(const float *p) { return _mm256_loadu_ps(p); }
static inline vec v_fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline vec v_bf16(const uint16_t *p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
static inline float v_sum(vec v) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}
static inline void prefetch(const void *p) { _mm_prefetch((const char *)p, _MM_HINT_T0); }
#else
#include <math.h>
#define ISA "generic"
#define LANES 8
typedef struct { float l[LANES]; } vec;
static inline vec v_zero(void) { vec v; memset(&v, 0, sizeof v); return v; }
static inline vec v_load(const float *p) { vec v; memcpy(v.l, p, sizeof v.l); return v; }
static inline vec v_fma(vec a, vec b, vec c) {
    for (int i = 0; i < LANES; i++) c.l[i] = fmaf(a.l[i], b.l[i], c.l[i]);
    return c;
}
static inline vec v_bf16(const uint16_t *p) {
    vec v;
    for (int i = 0; i < LANES; i++) { uint32_t bits = (uint32_t)p[i] << 16; memcpy(&v.l[i], &bits, 4); }
    return v;
}
static inline float v_sum(vec v) {  /* the pairwise order of the vector paths */
    float s[LANES]; memcpy(s, v.l, sizeof s);
    for (int w = LANES / 2; w >= 1; w /= 2) for (int i = 0; i < w; i++) s[i] += s[i + w];
    return s[0];
}
static inline void prefetch(const void *p) { (void)p; }
#endif

/* The last K % LANES columns, zero-padded to a whole vector (the same for every row). */
static inline vec tail_f32(const float *p, int64_t n) {
    float buf[LANES] = {0}; memcpy(buf, p, (size_t)n * sizeof(float)); return v_load(buf);
}
static inline vec tail_bf16(const uint16_t *p, int64_t n) {
    uint16_t buf[LANES] = {0}; memcpy(buf, p, (size_t)n * 2); return v_bf16(buf);
}

/* Activations and outputs are float32 or bf16 (torch's dtypes, as their bits). */
static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16; float f; memcpy(&f, &bits, 4); return f;
}
static inline uint16_t f32_to_bf16(float f) {  /* to nearest even, NaN to 0x7fc0: as torch */
    uint32_t bits; memcpy(&bits, &f, 4);
    if (f != f) return 0x7fc0;
    return (uint16_t)((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

/* x [n] as float32: x itself, or (bf16) a widened copy in *owned, to free; NULL: no memory. */
static const float *f32_rows(const void *x, int bf16, int64_t n, float **owned) {
    *owned = NULL;
    if (!bf16) return (const float *)x;
    float *wide = malloc((size_t)n * sizeof(float));
    if (!wide) return NULL;
    const uint16_t *h = (const uint16_t *)x;
    for (int64_t i = 0; i < n; i++) wide[i] = bf16_to_f32(h[i]);
    return *owned = wide;
}

/* Columns n0..n1 of y [M, N] in its dtype from the float32 products yf (which is y itself for
 * float32), plus the bias [N] (y's dtype, or NULL), rounded as torch rounds
 * `product.to(dtype) + bias`. */
static void finish(const float *yf, void *y, int bf16, const void *bias, int64_t M,
                   int64_t N, int64_t n0, int64_t n1) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = n0; j < n1; j++) {
            float v = yf[i * N + j];
            if (bf16) {
                uint16_t t = f32_to_bf16(v);
                if (bias)
                    t = f32_to_bf16(bf16_to_f32(t) + bf16_to_f32(((const uint16_t *)bias)[j]));
                ((uint16_t *)y)[i * N + j] = t;
            } else if (bias) {
                ((float *)y)[i * N + j] = v + ((const float *)bias)[j];
            }
        }
}

/* The float32 products' buffer: y itself (float32 output) or a new [M, N] (bf16). */
static float *products_buffer(void *y, int bf16, int64_t M, int64_t N) {
    return bf16 ? malloc((size_t)(M * N) * sizeof(float)) : (float *)y;
}

/* How far ahead (bytes) each weight row's stream is prefetched, once per cache line. A sweep
 * of 0-2048 bytes and the T0/T1/T2/NTA hints (2026-12-02, an AVX-512 Xeon) stayed within the
 * run-to-run noise of about 10 %; 512 with T0 was never the slowest. */
#define AHEAD 512

/* One block: MB rows of x against NB rows of W. ELEM is the weight element type, LOAD/TAIL
 * its widening loads; y gets the raw dot products (scaled by the caller's epilogue). */
#define DEFINE_BLOCK(NAME, ELEM, LOAD, TAIL, MB, NB)                                       \
static void NAME(const float *x, const ELEM *w, float *y, int64_t K, int64_t N) {          \
    vec acc[MB][NB];                                                                       \
    for (int i = 0; i < MB; i++) for (int j = 0; j < NB; j++) acc[i][j] = v_zero();        \
    int64_t k = 0;                                                                         \
    for (; k + LANES <= K; k += LANES) {                                                   \
        vec wv[NB];                                                                        \
        if (k % (64 / sizeof(ELEM)) == 0) /* once per cache line of each row */            \
            for (int j = 0; j < NB; j++) prefetch((const char *)(w + j * K + k) + AHEAD);  \
        for (int j = 0; j < NB; j++) wv[j] = LOAD(w + j * K + k);                          \
        for (int i = 0; i < MB; i++) {                                                     \
            vec xv = v_load(x + i * K + k);                                                \
            for (int j = 0; j < NB; j++) acc[i][j] = v_fma(xv, wv[j], acc[i][j]);          \
        }                                                                                  \
    }                                                                                      \
    if (k < K) {                                                                           \
        vec wv[NB];                                                                        \
        for (int j = 0; j < NB; j++) wv[j] = TAIL(w + j * K + k, K - k);                   \
        for (int i = 0; i < MB; i++) {                                                     \
            vec xv = tail_f32(x + i * K + k, K - k);                                       \
            for (int j = 0; j < NB; j++) acc[i][j] = v_fma(xv, wv[j], acc[i][j]);          \
        }                                                                                  \
    }                                                                                      \
    for (int i = 0; i < MB; i++) for (int j = 0; j < NB; j++) y[i * N + j] = v_sum(acc[i][j]); \
}

DEFINE_BLOCK(bf_1x8, uint16_t, v_bf16, tail_bf16, 1, 8)
DEFINE_BLOCK(bf_4x4, uint16_t, v_bf16, tail_bf16, 4, 4)
DEFINE_BLOCK(bf_1x1, uint16_t, v_bf16, tail_bf16, 1, 1)

/* Rows of W per unit of work shared among threads. */
#define CHUNK 64

/* The dot products of x [M, K] with rows n0..n1 of W, into y [M, N]: 4-row blocks of x where
 * there are 4 rows (prefill), else 8-row blocks of W (decode: more weight streams in flight). */
#define DEFINE_CHUNK(NAME, ELEM, B1x8, B4x4, B1x1)                                         \
static void NAME(const float *x, const ELEM *w, float *y, int64_t M, int64_t N, int64_t K, \
                 int64_t n0, int64_t n1) {                                                 \
    int64_t i = 0;                                                                         \
    for (; i + 4 <= M; i += 4) {                                                           \
        int64_t j = n0;                                                                    \
        for (; j + 4 <= n1; j += 4) B4x4(x + i * K, w + j * K, y + i * N + j, K, N);       \
        for (; j < n1; j++) for (int r = 0; r < 4; r++)                                    \
            B1x1(x + (i + r) * K, w + j * K, y + (i + r) * N + j, K, N);                   \
    }                                                                                      \
    for (; i < M; i++) {                                                                   \
        int64_t j = n0;                                                                    \
        for (; j + 8 <= n1; j += 8) B1x8(x + i * K, w + j * K, y + i * N + j, K, N);       \
        for (; j < n1; j++) B1x1(x + i * K, w + j * K, y + i * N + j, K, N);               \
    }                                                                                      \
}

DEFINE_CHUNK(bf_chunk, uint16_t, bf_1x8, bf_4x4, bf_1x1)

/* y [M, N] = x [M, K] w [N, K]^T + bias, w in bf16 (as uint16 bits); x, y and bias (or NULL)
 * float32, or bf16 where `bf16`. Returns 0, or -1 where a buffer could not be allocated. */
int lalm_bf16_linear(const void *x, const uint16_t *w, const void *bias, void *y, int bf16,
                     int64_t M, int64_t N, int64_t K, int threads) {
    float *owned;
    const float *xf = f32_rows(x, bf16, M * K, &owned);
    float *yf = products_buffer(y, bf16, M, N);
    if (!xf || !yf) { free(owned); if (yf != y) free(yf); return -1; }
    int64_t chunks = (N + CHUNK - 1) / CHUNK;
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t n0 = c * CHUNK, n1 = n0 + CHUNK < N ? n0 + CHUNK : N;
        bf_chunk(xf, w, yf, M, N, K, n0, n1);
        finish(yf, y, bf16, bias, M, N, n0, n1);
    }
    free(owned);
    if (yf != y) free(yf);
    return 0;
}

/* ---- int8 ---- */

#include <math.h>
#include <stdlib.h>

#define DIGIT 254                        /* the digits' base */
#define Q (127 * DIGIT * DIGIT)          /* the fixed-point grid of a row: |P| <= Q */
#define DIGITS 3
#define HALF2 (DIGIT * DIGIT / 2)        /* half the first digit's weight */
#define OFFSET 128                       /* a digit is stored as d + 128, an unsigned byte */
#define ALIGN 64                         /* digit rows are zero-padded to whole 64 bytes */

/* The u8 x s8 dot-product step: acc's lanes += groups of adjacent a * w products (which lanes
 * get which products does not matter: the sums are exact). IB bytes per step. */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define I8_ISA "avx512-vnni"
#define IB 64
#define NB 4                             /* rows of W a block: at most 4 x 4 accumulators */
typedef __m512i ivec;
static inline ivec i_zero(void) { return _mm512_setzero_si512(); }
static inline ivec i_load(const void *p) { return _mm512_loadu_si512(p); }
static inline ivec i_dot(ivec acc, ivec a, ivec w) { return _mm512_dpbusd_epi32(acc, a, w); }
static inline int64_t i_sum(ivec v) {
    __m512i lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
    __m512i hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1));
    return _mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi));
}
#elif defined(__AVX2__)
#define IB 32
#define NB 2
typedef __m256i ivec;
static inline ivec i_zero(void) { return _mm256_setzero_si256(); }
static inline ivec i_load(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
#if defined(__AVXVNNI__)
#define I8_ISA "avx-vnni"
static inline ivec i_dot(ivec acc, ivec a, ivec w) { return _mm256_dpbusd_avx_epi32(acc, a, w); }
#else
#define I8_ISA "avx2"
static inline ivec i_dot(ivec acc, ivec a, ivec w) {  /* widened to int16, pairs summed */
    __m256i a0 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(a));
    __m256i a1 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(a, 1));
    __m256i w0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(w));
    __m256i w1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(w, 1));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(a0, w0));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a1, w1));
}
#endif
static inline int64_t i_sum(ivec v) {
    int32_t l[8]; int64_t s = 0;
    _mm256_storeu_si256((__m256i *)l, v);
    for (int i = 0; i < 8; i++) s += l[i];
    return s;
}
#else
#define I8_ISA "generic"
#define IB 16
#define NB 2
typedef struct { uint8_t b[IB]; int64_t l[IB / 4]; } ivec;  /* loaded bytes; lane sums */
static inline ivec i_zero(void) { ivec v; memset(&v, 0, sizeof v); return v; }
static inline ivec i_load(const void *p) { ivec v; memcpy(v.b, p, IB); return v; }
static inline ivec i_dot(ivec acc, ivec a, ivec w) {
    for (int i = 0; i < IB; i++) acc.l[i / 4] += (int32_t)a.b[i] * (int8_t)w.b[i];
    return acc;
}
static inline int64_t i_sum(ivec v) {
    int64_t s = 0; for (int i = 0; i < IB / 4; i++) s += v.l[i]; return s;
}
#endif

/* The last K % IB codes of a row, zero-padded to a whole vector. */
static inline ivec i_tail(const int8_t *p, int64_t n) {
    int8_t buf[IB] = {0}; memcpy(buf, p, (size_t)n); return i_load(buf);
}

/* One block: R rows of unsigned bytes (kp each, zero-padded: a row of x's digits, the row of
 * ones, or both) against B rows of W: dot[r * B + j] = sum_k a[r][k] w[j][k], exact. */
#define DEFINE_I8_BLOCK(NAME, R, B)                                                        \
static void NAME(const uint8_t *const *a, const int8_t *w, int64_t K, int64_t *dot) {      \
    ivec acc[R][B];                                                                        \
    for (int r = 0; r < R; r++) for (int j = 0; j < B; j++) acc[r][j] = i_zero();          \
    int64_t k = 0;                                                                         \
    for (; k < K; k += IB) {                                                               \
        ivec wv[B];                                                                        \
        if (k + IB <= K) {                                                                 \
            if (k % 64 == 0) for (int j = 0; j < B; j++) prefetch(w + j * K + k + AHEAD);  \
            for (int j = 0; j < B; j++) wv[j] = i_load(w + j * K + k);                     \
        } else {                                                                           \
            for (int j = 0; j < B; j++) wv[j] = i_tail(w + j * K + k, K - k);              \
        }                                                                                  \
        for (int r = 0; r < R; r++) {                                                      \
            ivec av = i_load(a[r] + k);                                                    \
            for (int j = 0; j < B; j++) acc[r][j] = i_dot(acc[r][j], av, wv[j]);           \
        }                                                                                  \
    }                                                                                      \
    for (int r = 0; r < R; r++) for (int j = 0; j < B; j++) dot[r * B + j] = i_sum(acc[r][j]); \
}

/* decode: a row of x's digits and the row of ones (W's row sums) against NB rows of W, or 1 */
DEFINE_I8_BLOCK(i8_decode, DIGITS + 1, NB)
DEFINE_I8_BLOCK(i8_decode1, DIGITS + 1, 1)
/* prefill (several rows of x): W's row sums once, then each row's digits */
DEFINE_I8_BLOCK(i8_sums, 1, NB)
DEFINE_I8_BLOCK(i8_sums1, 1, 1)
DEFINE_I8_BLOCK(i8_prefill, DIGITS, NB)
DEFINE_I8_BLOCK(i8_prefill1, DIGITS, 1)

/* Rows of x as digits: a [M][DIGITS][kp] and the row of ones [kp] (kp = K rounded up to
 * ALIGN bytes, the padding 0); c[i] = max|x_i| / Q (NaN where the row is not finite). */
static void i8_digits(const float *x, int64_t M, int64_t K, int64_t kp, uint8_t *a,
                      uint8_t *ones, double *c) {
    memset(a, 0, (size_t)(M * DIGITS * kp));
    memset(ones, 0, (size_t)kp);
    memset(ones, 1, (size_t)K);
    for (int64_t i = 0; i < M; i++) {
        const float *row = x + i * K;
        /* max|x| on the bits: non-negative floats order as their bit patterns, infinity and
         * NaN above every finite value */
        int32_t top_bits = 0;
        for (int64_t k = 0; k < K; k++) {
            int32_t bits;
            memcpy(&bits, row + k, 4);
            bits &= 0x7fffffff;
            top_bits = bits > top_bits ? bits : top_bits;
        }
        float top;
        memcpy(&top, &top_bits, 4);
        int finite = top_bits < 0x7f800000;
        c[i] = !finite ? NAN : (double)top / Q;
        if (!finite || top == 0) continue;
        double grid = Q / (double)top;
        uint8_t *d = a + i * DIGITS * kp;
        /* balanced digits by floor divisions of shifted, non-negative values */
        for (int64_t k = 0; k < K; k++) {
            int32_t p = (int32_t)nearbyint((double)row[k] * grid);   /* |p| <= Q */
            int32_t d0 = (int32_t)((uint32_t)(p + Q + HALF2) / (DIGIT * DIGIT)) - 127;
            int32_t rem = p - d0 * DIGIT * DIGIT;                     /* in [-32258, 32257] */
            int32_t d1 = (int32_t)((uint32_t)(rem + 127 * DIGIT + 127) / DIGIT) - 127;
            int32_t d2 = rem - d1 * DIGIT;                            /* in [-127, 126] */
            d[k] = (uint8_t)(d0 + OFFSET);
            d[kp + k] = (uint8_t)(d1 + OFFSET);
            d[2 * kp + k] = (uint8_t)(d2 + OFFSET);
        }
    }
}

/* y[i, j] from the digits' sums d[r] = sum_k (digit r + OFFSET) W (r = 0..DIGITS-1, stride
 * `stride`) and W's row sum: each offset taken off, T = sum_k P W exact. */
static inline float i8_output(const int64_t *d, int stride, int64_t sum_w, double c,
                              float scale) {
    int64_t t = 0;
    for (int r = 0; r < DIGITS; r++) t = t * DIGIT + (d[r * stride] - OFFSET * sum_w);
    return (float)((double)scale * c * (double)t);
}

/* Columns n0..n1 of y [M, N] in float32 (a, ones: the digit rows of x and the row of ones,
 * kp bytes each; scale [n1 - n0]: those columns' scales; c: each row's max|x| / Q). */
static void i8_columns(const uint8_t *a, const uint8_t *ones, int64_t kp, const int8_t *q,
                       const float *scale, const double *c, float *y, int64_t M, int64_t N,
                       int64_t K, int64_t n0, int64_t n1) {
    int64_t dot[(DIGITS + 1) * NB];
    const uint8_t *rows[DIGITS + 1];
    if (M == 1) {
        for (int r = 0; r < DIGITS; r++) rows[r] = a + r * kp;
        rows[DIGITS] = ones;
        for (int64_t j = n0; j < n1; ) {
            int b = j + NB <= n1 ? NB : 1;
            (b == NB ? i8_decode : i8_decode1)(rows, q + j * K, K, dot);
            for (int jj = 0; jj < b; jj++)
                y[j + jj] = i8_output(dot + jj, b, dot[DIGITS * b + jj], c[0],
                                      scale[j - n0 + jj]);
            j += b;
        }
        return;
    }
    int64_t sum_w[CHUNK];
    for (int64_t j = n0; j < n1; ) {
        int b = j + NB <= n1 ? NB : 1;
        (b == NB ? i8_sums : i8_sums1)(&ones, q + j * K, K, sum_w + (j - n0));
        j += b;
    }
    for (int64_t i = 0; i < M; i++) {
        for (int r = 0; r < DIGITS; r++) rows[r] = a + (i * DIGITS + r) * kp;
        for (int64_t j = n0; j < n1; ) {
            int b = j + NB <= n1 ? NB : 1;
            (b == NB ? i8_prefill : i8_prefill1)(rows, q + j * K, K, dot);
            for (int jj = 0; jj < b; jj++)
                y[i * N + j + jj] = i8_output(dot + jj, b, sum_w[j - n0 + jj], c[i],
                                              scale[j - n0 + jj]);
            j += b;
        }
    }
}

/* Products of one x with several int8 weights: y_p [M, N_p] = x [M, K] (q_p [N_p, K] int8 *
 * scale_p [N_p])^T + bias_p for p < n (arrays of n; bias_p may be NULL); x, every y_p and bias_p
 * float32, or bf16 where `bf16`; the scales float32, or bf16 where `scale_bf16`. x's digits are
 * made once and the chunks of all n weights share one parallel loop (one pass, one barrier);
 * each y_p is what a product of its own gives, bit for bit. K <= 2^19 (the integer sums' range;
 * the caller checks), n <= 8. Returns 0, or -1 where a buffer could not be allocated. */
int lalm_int8_linear_many(const void *x, int n, const int8_t *const *q,
                          const void *const *scale, int scale_bf16, const void *const *bias,
                          void *const *y, int bf16, int64_t M, const int64_t *N, int64_t K,
                          int threads) {
    enum { MAX_MANY = 8 };
    if (n < 1 || n > MAX_MANY) return -1;
    int64_t kp = (K + ALIGN - 1) / ALIGN * ALIGN;
    int64_t first[MAX_MANY + 1] = {0}, columns = 0;  /* first chunk of each product */
    for (int p = 0; p < n; p++) {
        first[p + 1] = first[p] + (N[p] + CHUNK - 1) / CHUNK;
        columns += N[p];
    }
    float *owned;
    const float *xf = f32_rows(x, bf16, M * K, &owned);
    uint8_t *a = aligned_alloc(ALIGN, (size_t)((M * DIGITS + 1) * kp));
    double *c = malloc((size_t)M * sizeof(double));
    float *wide = bf16 ? malloc((size_t)(M * columns) * sizeof(float)) : NULL;
    int ok = xf && a && c && (wide || !bf16);
    if (ok) {
        float *yf[MAX_MANY];
        for (int64_t p = 0, at = 0; p < n; at += N[p], p++)
            yf[p] = bf16 ? wide + M * at : (float *)y[p];
        uint8_t *ones = a + M * DIGITS * kp;
        i8_digits(xf, M, K, kp, a, ones, c);
        #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
        for (int64_t ch = 0; ch < first[n]; ch++) {
            int p = 0;
            while (ch >= first[p + 1]) p++;
            int64_t n0 = (ch - first[p]) * CHUNK, n1 = n0 + CHUNK < N[p] ? n0 + CHUNK : N[p];
            float s[CHUNK];
            for (int64_t j = n0; j < n1; j++)
                s[j - n0] = scale_bf16 ? bf16_to_f32(((const uint16_t *)scale[p])[j])
                                       : ((const float *)scale[p])[j];
            i8_columns(a, ones, kp, q[p], s, c, yf[p], M, N[p], K, n0, n1);
            finish(yf[p], y[p], bf16, bias[p], M, N[p], n0, n1);
        }
    }
    free(owned); free(a); free(c); free(wide);
    return ok ? 0 : -1;
}

/* One product: y [M, N] = x [M, K] (q [N, K] int8 * scale [N])^T + bias, as
 * lalm_int8_linear_many with n = 1. */
int lalm_int8_linear(const void *x, const int8_t *q, const void *scale, int scale_bf16,
                     const void *bias, void *y, int bf16, int64_t M, int64_t N, int64_t K,
                     int threads) {
    return lalm_int8_linear_many(x, 1, &q, &scale, scale_bf16, &bias, &y, bf16, M, &N, K,
                                 threads);
}

/* Which path this build's int8 product took ("avx512-vnni", "avx-vnni", "avx2", "generic"). */
const char *lalm_int8_isa(void) { return I8_ISA; }

/* Which vector path this build took ("avx512", "avx2" or "generic"). */
const char *lalm_kernel_isa(void) { return ISA; }
