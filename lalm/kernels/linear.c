/* lalm's CPU products for decoding: y = x W^T with W stored narrow (int8 codes with one scale
 * per output row, or bf16), read once from memory and widened to float32 in registers.
 *
 * Shapes (all row-major, contiguous): x [M, K] float32, W [N, K], y [M, N] float32.
 *
 * Every output y[i, j] is one dot product computed the same way whatever M, N, the blocking or
 * the thread count: a vector of LANES float32 partial sums over k in order (fused
 * multiply-adds; the last partial chunk zero-padded), then a fixed horizontal sum, then the
 * row's scale. So a row of x gives the same bits alone or among other rows (batched = single),
 * at any thread count. Threads split the output columns (rows of W) only.
 *
 * Vector width by what the compiler targets (-march=native): AVX-512 (16 lanes), AVX2 + FMA
 * (8 lanes), else portable C (8 lanes); the result depends on which (the lane count orders
 * the sums), never on anything else.
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
static inline vec v_i8(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
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
static inline vec v_i8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
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
static inline vec v_i8(const int8_t *p) {
    vec v; for (int i = 0; i < LANES; i++) v.l[i] = (float)p[i]; return v;
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
static inline vec tail_i8(const int8_t *p, int64_t n) {
    int8_t buf[LANES] = {0}; memcpy(buf, p, (size_t)n); return v_i8(buf);
}
static inline vec tail_bf16(const uint16_t *p, int64_t n) {
    uint16_t buf[LANES] = {0}; memcpy(buf, p, (size_t)n * 2); return v_bf16(buf);
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

DEFINE_BLOCK(i8_1x8, int8_t, v_i8, tail_i8, 1, 8)
DEFINE_BLOCK(i8_4x4, int8_t, v_i8, tail_i8, 4, 4)
DEFINE_BLOCK(i8_1x1, int8_t, v_i8, tail_i8, 1, 1)
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

DEFINE_CHUNK(i8_chunk, int8_t, i8_1x8, i8_4x4, i8_1x1)
DEFINE_CHUNK(bf_chunk, uint16_t, bf_1x8, bf_4x4, bf_1x1)

/* y [M, N] = x [M, K] (q [N, K] int8 * scale [N])^T, in float32. */
void lalm_int8_linear(const float *x, const int8_t *q, const float *scale, float *y,
                      int64_t M, int64_t N, int64_t K, int threads) {
    int64_t chunks = (N + CHUNK - 1) / CHUNK;
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t n0 = c * CHUNK, n1 = n0 + CHUNK < N ? n0 + CHUNK : N;
        i8_chunk(x, q, y, M, N, K, n0, n1);
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = n0; j < n1; j++) y[i * N + j] *= scale[j];
    }
}

/* y [M, N] = x [M, K] w [N, K]^T, w in bf16 (as uint16 bits), in float32. */
void lalm_bf16_linear(const float *x, const uint16_t *w, float *y,
                      int64_t M, int64_t N, int64_t K, int threads) {
    int64_t chunks = (N + CHUNK - 1) / CHUNK;
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t n0 = c * CHUNK, n1 = n0 + CHUNK < N ? n0 + CHUNK : N;
        bf_chunk(x, w, y, M, N, K, n0, n1);
    }
}

/* Which vector path this build took ("avx512", "avx2" or "generic"). */
const char *lalm_kernel_isa(void) { return ISA; }
