/* lalm's CPU products for decoding: y = x W^T with W stored narrow (int8 codes with one scale
 * per output row, or bf16), read once from memory as it streams through the cores; a decode
 * step's attention over the KV cache (`lalm_decode_attention`, its comment); the row-wise
 * steps between a layer's products (RMSNorm, RoPE, SwiGLU's silu * up); and a decode step's
 * decoder layers made of them, in one call (`lalm_decode_layers`).
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
 * written in digits: three int8 digits, P = 254^2 d0 + 254 d1 + d2 (each in [-127, 127]), for
 * u8 x s8 dot products (AVX-512 VNNI, AVX-VNNI, portable C), or two int16 digits, P = 4096 d0
 * + d1, for AVX2's s16 x s16 products (`WORDS`). The sums d W over k are exact in integers, so
 * T = sum_k P W is exact and equal on every path and in every order: y = scale[j] (max|x| / Q)
 * T, in float64, rounded to float32 once. At batch 1, 64 code bytes take four dot-product
 * instructions (the three digits, and the row of ones for W's row sum, which takes the digits'
 * offset off) where widening them to float32 takes twelve; on AVX2, 16 codes take a widening
 * and two multiply-adds (one core of an AMD EPYC, Zen 3, runs that at ~23 GB/s of codes from
 * its L2 and reads ~20 GB/s from memory): the int8 product stays bound by memory.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define ISA "avx512"
#define LANES 16
typedef __m512 vec;
static inline vec v_zero(void) { return _mm512_setzero_ps(); }
static inline vec v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline vec v_fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
static inline vec v_fill(float f) { return _mm512_set1_ps(f); }
static inline void v_store(float *p, vec v) { _mm512_storeu_ps(p, v); }
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
static inline vec v_fill(float f) { return _mm256_set1_ps(f); }
static inline void v_store(float *p, vec v) { _mm256_storeu_ps(p, v); }
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
#define ISA "generic"
#define LANES 8
typedef struct { float l[LANES]; } vec;
static inline vec v_zero(void) { vec v; memset(&v, 0, sizeof v); return v; }
static inline vec v_load(const float *p) { vec v; memcpy(v.l, p, sizeof v.l); return v; }
static inline vec v_fma(vec a, vec b, vec c) {
    for (int i = 0; i < LANES; i++) c.l[i] = fmaf(a.l[i], b.l[i], c.l[i]);
    return c;
}
static inline vec v_fill(float f) {
    vec v;
    for (int i = 0; i < LANES; i++) v.l[i] = f;
    return v;
}
static inline void v_store(float *p, vec v) { memcpy(p, v.l, sizeof v.l); }
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

/* What row j of a block of B rows of W (w: the block's first row; rows of `row` bytes) is
 * prefetched when the block reads byte `at` of its rows: `far` bytes further along the row,
 * or, past the row's end, that far into row j of the next block (this block's rows j + 1..
 * are streaming already). A prefetch past W's end is harmless (prefetches never fault). */
static inline const void *ahead(const void *w, int64_t j, int64_t B, int64_t row, int64_t at,
                                int64_t far) {
    at += far;
    return (const char *)w + (at < row ? j * row + at : (B + j) * row + at - row);
}

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
            for (int j = 0; j < NB; j++)                                                   \
                prefetch(ahead(w, j, NB, K * sizeof(ELEM), k * sizeof(ELEM), AHEAD));     \
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

/* Rows of W a thread reads at once in `lalm_f32_linear_kn` (8 was the fastest, or within 5 %,
 * against 4, 12 and 16 in two A/B runs on an AMD EPYC, Zen 3, at two threads; 16 leaves AVX2
 * no register to spare). */
#define KN_ROWS 8

/* y [M, N] = x [M, K] W + bias for a float32 W held [K, N] row-major (a Linear weight [N, K] at
 * strides (1, N): `TextDecoder.use_decode_layout`); x, y and bias (or NULL) float32, or bf16
 * where `bf16`. The columns are split among the threads in one slice each (whole vectors); a
 * thread goes down W's rows KN_ROWS at a time over its slice, so each row streams in one long
 * run a thread. y[i, j] = fma(x[i, K-1], W[K-1, j], ... fma(x[i, 0], W[0, j], 0)), one chain
 * in k order whatever M, the slices or the threads (and on every vector path: the tail is the
 * same chain in scalar fmaf). Returns 0, or -1 where a buffer could not be allocated. */
int lalm_f32_linear_kn(const void *x, const float *w, const void *bias, void *y, int bf16,
                       int64_t M, int64_t N, int64_t K, int threads) {
    float *owned;
    const float *xf = f32_rows(x, bf16, M * K, &owned);
    float *yf = products_buffer(y, bf16, M, N);
    if (!xf || !yf) { free(owned); if (yf != y) free(yf); return -1; }
    int64_t vecs = N / LANES, parts = threads > 1 ? threads : 1;
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t t = 0; t < parts; t++) {
        int64_t n0 = vecs * t / parts * LANES;
        int64_t n1 = t + 1 == parts ? N : vecs * (t + 1) / parts * LANES;
        for (int64_t i = 0; i < M; i++)
            memset(yf + i * N + n0, 0, (size_t)(n1 - n0) * sizeof(float));
        for (int64_t k = 0; k < K; k += KN_ROWS) {
            int64_t rows = K - k < KN_ROWS ? K - k : KN_ROWS;
            const float *wk = w + k * N;
            for (int64_t i = 0; i < M; i++) {
                const float *xi = xf + i * K + k;
                float *yi = yf + i * N;
                int64_t j = n0;
                if (rows == KN_ROWS) {
                    vec xv[KN_ROWS];
                    for (int r = 0; r < KN_ROWS; r++) xv[r] = v_fill(xi[r]);
                    for (; j + LANES <= n1; j += LANES) {
                        vec acc = v_load(yi + j);
                        for (int r = 0; r < KN_ROWS; r++)
                            acc = v_fma(xv[r], v_load(wk + r * N + j), acc);
                        v_store(yi + j, acc);
                    }
                }
                for (; j + LANES <= n1; j += LANES) {
                    vec acc = v_load(yi + j);
                    for (int64_t r = 0; r < rows; r++)
                        acc = v_fma(v_fill(xi[r]), v_load(wk + r * N + j), acc);
                    v_store(yi + j, acc);
                }
                for (; j < n1; j++) {
                    float acc = yi[j];
                    for (int64_t r = 0; r < rows; r++) acc = fmaf(xi[r], wk[r * N + j], acc);
                    yi[j] = acc;
                }
            }
        }
        finish(yf, y, bf16, bias, M, N, n0, n1);
    }
    free(owned);
    if (yf != y) free(yf);
    return 0;
}

/* ---- attention of a decode step ---- */

DEFINE_BLOCK(f32_1x4, float, v_load, tail_f32, 1, 4)
DEFINE_BLOCK(f32_1x1, float, v_load, tail_f32, 1, 1)
DEFINE_BLOCK(bf_1x4, uint16_t, v_bf16, tail_bf16, 1, 4)

/* One new query per row against the row's cached keys and values (a decode step):
 * out [B, H, D] = softmax(scale q k^T over the keys mask allows) v, for q [B, H, D]
 * (contiguous), k and v [B, Hkv, T, D] at strides (sb, sh, D, 1) elements, mask [B, T] bytes
 * (nonzero: attend); head h reads key/value head h / (H / Hkv). q, k, v and out float32, or
 * bf16 where `bf16` (computed in float32, out rounded once). A row's keys are taken in order
 * (scores by the bf16 product's dot, the softmax's sum and the weighted sum of values key by
 * key, masked keys skipped), so its result does not depend on T past its last key, on B or on
 * the threads. A row with no key to attend gets zeros. D % LANES == 0 (the caller checks).
 * Returns 0, or -1 where a buffer could not be allocated. */
int lalm_decode_attention(const void *q, const void *k, const void *v, const uint8_t *mask,
                          void *out, int bf16, int64_t B, int64_t H, int64_t Hkv, int64_t T,
                          int64_t D, int64_t sb, int64_t sh, float scale, int threads) {
    int failed = 0;
    int64_t group = H / Hkv, size = bf16 ? 2 : 4;
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H;
        int64_t at = (b * sb + h / group * sh) * size;  /* this head's window, in bytes */
        const char *keys = (const char *)k + at, *values = (const char *)v + at;
        const uint8_t *allowed = mask + b * T;
        float *qf = malloc((size_t)(D + T) * sizeof(float));
        vec *acc = aligned_alloc(64, (size_t)(D / LANES * sizeof(vec) + 63) / 64 * 64);
        if (!qf || !acc) {
            free(qf); free(acc);
            #pragma omp atomic write
            failed = 1;
            continue;
        }
        float *s = qf + D;
        for (int64_t d = 0; d < D; d++)
            qf[d] = bf16 ? bf16_to_f32(((const uint16_t *)q)[bh * D + d])
                         : ((const float *)q)[bh * D + d];
        int64_t t = 0;
        if (bf16) {
            for (; t + 4 <= T; t += 4) bf_1x4(qf, (const uint16_t *)keys + t * D, s + t, D, 1);
            for (; t < T; t++) bf_1x1(qf, (const uint16_t *)keys + t * D, s + t, D, 1);
        } else {
            for (; t + 4 <= T; t += 4) f32_1x4(qf, (const float *)keys + t * D, s + t, D, 1);
            for (; t < T; t++) f32_1x1(qf, (const float *)keys + t * D, s + t, D, 1);
        }
        float top = -INFINITY;
        for (t = 0; t < T; t++)
            if (allowed[t] && s[t] * scale > top) top = s[t] * scale;
        float total = 0.0f;
        for (int64_t c = 0; c < D / LANES; c++) acc[c] = v_zero();
        for (t = 0; t < T; t++) {
            if (!allowed[t]) continue;
            float p = expf(s[t] * scale - top);
            total += p;
            vec pv = v_fill(p);
            if (bf16) {
                const uint16_t *row = (const uint16_t *)values + t * D;
                for (int64_t c = 0; c < D / LANES; c++)
                    acc[c] = v_fma(pv, v_bf16(row + c * LANES), acc[c]);
            } else {
                const float *row = (const float *)values + t * D;
                for (int64_t c = 0; c < D / LANES; c++)
                    acc[c] = v_fma(pv, v_load(row + c * LANES), acc[c]);
            }
        }
        float *o = (float *)acc;  /* the weighted sums, in place */
        for (int64_t d = 0; d < D; d++) {
            float y = total > 0.0f ? o[d] / total : 0.0f;
            if (bf16) ((uint16_t *)out)[bh * D + d] = f32_to_bf16(y);
            else ((float *)out)[bh * D + d] = y;
        }
        free(qf); free(acc);
    }
    return failed ? -1 : 0;
}

/* ---- the row-wise steps between a layer's products: RMSNorm, RoPE ---- */

/* Elements past which the row-wise steps split their rows among the threads (a prefill's;
 * a decode step's few rows stay on one). */
#define ROWWISE_SPLIT (1 << 16)

/* Element i of a float32 or (bf16) bf16 array, as float32; a float32 rounded to the dtype
 * (torch rounds every bf16 op's float32 result once, to nearest even); a store in the dtype. */
static inline float load_el(const void *p, int bf16, int64_t i) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}
static inline float round_el(float f, int bf16) { return bf16 ? bf16_to_f32(f32_to_bf16(f)) : f; }
static inline void store_el(void *p, int bf16, int64_t i, float f) {
    if (bf16) ((uint16_t *)p)[i] = f32_to_bf16(f);
    else ((float *)p)[i] = f;
}

/* RMSNorm of rows: y [M, D] = w * round(x * rsqrt(mean(x^2) + eps)), x, w and y float32, or
 * bf16 where `bf16` (x widened; the normed row rounded to bf16 before the weight, the product
 * rounded: torch's `weight * normed.to(dtype)`). The mean of the squares in float64, four
 * partial sums over k in a fixed order: a row's bits do not depend on M or the threads (they
 * may differ from torch's float32 mean in the last bit of the scale). Rows split among the
 * threads where there are enough of them (a prefill). */
void lalm_rms_norm(const void *x, const void *w, void *y, int bf16, int64_t M, int64_t D,
                   float eps, int threads) {
    int split = threads > 1 && M * D >= ROWWISE_SPLIT;
    #pragma omp parallel for schedule(static) num_threads(threads) if (split)
    for (int64_t i = 0; i < M; i++) {
        double part[4] = {0.0, 0.0, 0.0, 0.0};
        int64_t k = 0;
        for (; k + 4 <= D; k += 4)
            for (int r = 0; r < 4; r++) {
                double e = load_el(x, bf16, i * D + k + r);
                part[r] += e * e;
            }
        for (; k < D; k++) {
            double e = load_el(x, bf16, i * D + k);
            part[0] += e * e;
        }
        float mean = (float)(((part[0] + part[1]) + (part[2] + part[3])) / (double)D);
        float scale = 1.0f / sqrtf(mean + eps);
        for (k = 0; k < D; k++) {
            float normed = round_el(load_el(x, bf16, i * D + k) * scale, bf16);
            store_el(y, bf16, i * D + k, load_el(w, bf16, k) * normed);
        }
    }
}

/* Rotate-half RoPE: y [B, H, S, D] (contiguous) = x * cos + rot(x) * sin, rot(x) = [-x[D/2:],
 * x[:D/2]] along D, for x [B, H, S, D] at element strides (xb, xh, xs, 1) and cos, sin
 * [B, S, D] at (cb, cs, 1); float32, or bf16 where `bf16`. The two products and their sum are
 * rounded one at a time, as torch's three ops round them (separate statements: no fused
 * multiply-add), so y has `apply_rope`'s bits. Rows (b, h, s) split among the threads where
 * there are enough of them (a prefill). */
static inline void rope_el(const void *x, const void *cos, const void *sin, void *y, int bf16,
                           int64_t at, int64_t table, int64_t out, int64_t d, float turned) {
    float straight = round_el(load_el(x, bf16, at + d) * load_el(cos, bf16, table + d), bf16);
    float across = round_el(turned * load_el(sin, bf16, table + d), bf16);
    store_el(y, bf16, out + d, straight + across);
}

void lalm_rope(const void *x, const void *cos, const void *sin, void *y, int bf16, int64_t B,
               int64_t H, int64_t S, int64_t D, int64_t xb, int64_t xh, int64_t xs,
               int64_t cb, int64_t cs, int threads) {
    int64_t half = D / 2;
    int split = threads > 1 && B * H * S * D >= ROWWISE_SPLIT;
    #pragma omp parallel for schedule(static) num_threads(threads) if (split)
    for (int64_t row = 0; row < B * H * S; row++) {
        int64_t b = row / (H * S), h = row / S % H, s = row % S;
        int64_t at = b * xb + h * xh + s * xs, table = b * cb + s * cs, out = row * D;
        for (int64_t d = 0; d < half; d++)
            rope_el(x, cos, sin, y, bf16, at, table, out, d, -load_el(x, bf16, at + d + half));
        for (int64_t d = half; d < D; d++)
            rope_el(x, cos, sin, y, bf16, at, table, out, d, load_el(x, bf16, at + d - half));
    }
}

/* ---- int8 ---- */

#define Q (127 * 254 * 254)              /* the fixed-point grid of a row: |P| <= Q */
#define ALIGN 64                         /* digit rows are zero-padded to whole 64 digits */

/* How a row's P is held, by path. Bytes (VNNI, portable): three balanced base-254 digits in
 * [-127, 127], each stored as d + OFFSET, an unsigned byte (u8 x s8 products), with a row of
 * ones (ONES) whose products give W's row sums, which take the offsets off. Words (AVX2
 * without VNNI, which has no u8 x s8 dot product that cannot saturate): two balanced base-4096
 * digits as int16, multiplied with W's codes widened to int16 (s16 x s16 pairs summed into
 * int32 lanes, exact): two products per code where bytes need four. The step: acc's lanes +=
 * groups of adjacent a * w products (which lanes get which products does not matter: the sums
 * are exact); IB codes per step; SEG codes at most between the lanes' spills into int64 (the
 * int32 lanes' range). */
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
typedef __m256i ivec;
static inline ivec i_zero(void) { return _mm256_setzero_si256(); }
static inline ivec i_load(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
#if defined(__AVXVNNI__)
#define I8_ISA "avx-vnni"
#define IB 32
#define NB 2
static inline ivec i_dot(ivec acc, ivec a, ivec w) { return _mm256_dpbusd_avx_epi32(acc, a, w); }
#else
#define I8_ISA "avx2"
#define WORDS 1
#define IB 16
#define NB 2
/* 1024 bytes read 5-17 % faster than 512 here (an AMD EPYC, Zen 3, 2 threads and 1: A/B in
 * one run, every real 7B shape; bf16 the other way round, so AHEAD stays 512) */
#define I8_AHEAD 1024
/* 16 codes widened to int16 */
static inline ivec i_load_w(const int8_t *p) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p));
}
static inline ivec i_dot(ivec acc, ivec a, ivec w) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, w));
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

#ifdef WORDS
typedef int16_t digit_t;
#define DIGIT 4096                       /* the digits' base */
#define DIGITS 2
#define OFFSET 0
#define ONES 0
/* a step's lane gets two products of at most 2048 * 128: 2^19, so 2^11 steps stay in int32 */
#define SEG (IB << 11)
#else
typedef uint8_t digit_t;
#define DIGIT 254
#define DIGITS 3
#define OFFSET 128                       /* a digit is stored as d + 128, an unsigned byte */
#define ONES 1
#define SEG INT64_MAX                    /* K <= 2^19 keeps the lanes in int32 (caller checks) */
#define I8_AHEAD AHEAD
static inline ivec i_load_w(const int8_t *p) { return i_load(p); }
#endif
static inline ivec i_load_a(const digit_t *p) { return i_load(p); }

/* The last K % IB codes of a row, zero-padded to a whole step. */
static inline ivec i_tail(const int8_t *p, int64_t n) {
    int8_t buf[IB] = {0}; memcpy(buf, p, (size_t)n); return i_load_w(buf);
}

/* One step of a block at column k: acc[r][j] += a[r][k..k+IB) . w[j][k..k+IB), the codes of
 * row j loaded by LOAD(j). */
#define I8_STEP(R, B, LOAD)                                                                \
    do {                                                                                   \
        ivec wv[B];                                                                        \
        for (int j = 0; j < B; j++) wv[j] = LOAD(j);                                       \
        for (int r = 0; r < R; r++) {                                                      \
            ivec av = i_load_a(ar[r] + k);                                                 \
            for (int j = 0; j < B; j++) acc[r][j] = i_dot(acc[r][j], av, wv[j]);           \
        }                                                                                  \
    } while (0)
#define I8_CODES(j) i_load_w(w + (j) * K + k)
#define I8_TAIL(j) (k + IB <= e ? i_load_w(w + (j) * K + k) : i_tail(w + (j) * K + k, e - k))

/* One block: R rows of digits (kp each, zero-padded: a row of x's digits, the row of ones, or
 * both) against B rows of W: dot[r * B + j] = sum_k a[r][k] w[j][k], exact. A cache line of
 * each row of W a time, its prefetch ahead, then the rest of the row. */
#define DEFINE_I8_BLOCK(NAME, R, B)                                                        \
static void NAME(const digit_t *const *a, const int8_t *w, int64_t K, int64_t *dot) {      \
    const digit_t *ar[R];                                                                  \
    for (int r = 0; r < R; r++) ar[r] = a[r];                                              \
    for (int r = 0; r < R; r++) for (int j = 0; j < B; j++) dot[r * B + j] = 0;            \
    for (int64_t s = 0; s < K; s += SEG) {                                                 \
        int64_t e = K - s > SEG ? s + SEG : K, k = s;                                      \
        ivec acc[R][B];                                                                    \
        for (int r = 0; r < R; r++) for (int j = 0; j < B; j++) acc[r][j] = i_zero();      \
        for (int64_t line = s; line + 64 <= e; line += 64) {                               \
            for (int j = 0; j < B; j++) prefetch(ahead(w, j, B, K, line, I8_AHEAD));       \
            for (k = line; k < line + 64; k += IB) I8_STEP(R, B, I8_CODES);                \
        }                                                                                  \
        for (; k < e; k += IB) I8_STEP(R, B, I8_TAIL);                                     \
        for (int r = 0; r < R; r++) for (int j = 0; j < B; j++)                            \
            dot[r * B + j] += i_sum(acc[r][j]);                                            \
    }                                                                                      \
}

/* decode: a row of x's digits (and the row of ones: W's row sums) against NB rows of W, or 1 */
DEFINE_I8_BLOCK(i8_decode, DIGITS + ONES, NB)
DEFINE_I8_BLOCK(i8_decode1, DIGITS + ONES, 1)
/* prefill (several rows of x): W's row sums once (where ONES), then each row's digits */
DEFINE_I8_BLOCK(i8_sums, 1, NB)
DEFINE_I8_BLOCK(i8_sums1, 1, 1)
DEFINE_I8_BLOCK(i8_prefill, DIGITS, NB)
DEFINE_I8_BLOCK(i8_prefill1, DIGITS, 1)

/* Rows of x as digits: a [M][DIGITS][kp] and (where ONES) the row of ones [kp] (kp = K
 * rounded up to ALIGN digits, the padding 0); c[i] = max|x_i| / Q (NaN where the row is not
 * finite). */
static void i8_digits(const float *x, int64_t M, int64_t K, int64_t kp, digit_t *a,
                      digit_t *ones, double *c) {
    memset(a, 0, (size_t)(M * DIGITS * kp) * sizeof(digit_t));
    for (int64_t k = 0; k < kp * ONES; k++) ones[k] = k < K;
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
        digit_t *d = a + i * DIGITS * kp;
        /* balanced digits, lowest first, each in [-DIGIT / 2, DIGIT / 2); the highest, what
         * is left, is at most 127 in size for bytes and 2000 for words (|P| <= Q) */
        for (int64_t k = 0; k < K; k++) {
            int32_t rest = (int32_t)nearbyint((double)row[k] * grid);   /* |P| <= Q */
            for (int r = DIGITS - 1; r > 0; r--) {
                int32_t low = (rest + DIGIT / 2) % DIGIT;
                low += (low < 0) * DIGIT - DIGIT / 2;
                d[r * kp + k] = (digit_t)(low + OFFSET);
                rest = (rest - low) / DIGIT;
            }
            d[k] = (digit_t)(rest + OFFSET);
        }
    }
}

/* y[i, j] from the digits' sums d[r] = sum_k (digit r + OFFSET) W (r = 0..DIGITS-1, stride
 * `stride`) and W's row sum (0 without ONES): each offset taken off, T = sum_k P W exact. */
static inline float i8_output(const int64_t *d, int stride, int64_t sum_w, double c,
                              float scale) {
    int64_t t = 0;
    for (int r = 0; r < DIGITS; r++) t = t * DIGIT + (d[r * stride] - OFFSET * sum_w);
    return (float)((double)scale * c * (double)t);
}

/* Columns n0..n1 of y [M, N] in float32 (a, ones: the digit rows of x and the row of ones,
 * kp digits each; scale [n1 - n0]: those columns' scales; c: each row's max|x| / Q). */
static void i8_columns(const digit_t *a, const digit_t *ones, int64_t kp, const int8_t *q,
                       const float *scale, const double *c, float *y, int64_t M, int64_t N,
                       int64_t K, int64_t n0, int64_t n1) {
    int64_t dot[(DIGITS + ONES) * NB];
    const digit_t *rows[DIGITS + ONES];
    if (M == 1) {
        for (int r = 0; r < DIGITS; r++) rows[r] = a + r * kp;
        if (ONES) rows[DIGITS] = ones;
        for (int64_t j = n0; j < n1; ) {
            int b = j + NB <= n1 ? NB : 1;
            (b == NB ? i8_decode : i8_decode1)(rows, q + j * K, K, dot);
            for (int jj = 0; jj < b; jj++)
                y[j + jj] = i8_output(dot + jj, b, ONES ? dot[DIGITS * b + jj] : 0, c[0],
                                      scale[j - n0 + jj]);
            j += b;
        }
        return;
    }
    int64_t sum_w[CHUNK] = {0};
    for (int64_t j = n0; j < n1 && ONES; ) {
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
    digit_t *a = aligned_alloc(ALIGN, (size_t)((M * DIGITS + ONES) * kp) * sizeof(digit_t));
    double *c = malloc((size_t)M * sizeof(double));
    float *wide = bf16 ? malloc((size_t)(M * columns) * sizeof(float)) : NULL;
    int ok = xf && a && c && (wide || !bf16);
    if (ok) {
        float *yf[MAX_MANY];
        for (int64_t p = 0, at = 0; p < n; at += N[p], p++)
            yf[p] = bf16 ? wide + M * at : (float *)y[p];
        digit_t *ones = a + M * DIGITS * kp;
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

/* ---- SwiGLU's activation: silu(gate) * up ---- */

/* silu(x) = x / (1 + e^-x), e^-x by n = rint(t log2 e), r = t - n ln 2 (ln 2 in two parts,
 * the first exact in n), Cephes' degree-7 expf polynomial in r, times 2^n built in the
 * exponent's bits; t clamped to [-87, 88] (past 88, e^t is taken as infinite: x / inf = -0,
 * and -inf / inf = NaN as torch). Within a few ulp of the exact silu. Only IEEE adds,
 * multiplies, a divide and integer steps, no contraction (-std=c11), so the vector loops
 * the compiler makes give the bits of the scalar code on every path. */
static inline float silu(float x) {
    float t = -x;
    float c = t == t ? t : 0.0f;  /* NaN: x / (1 + e) is NaN anyway */
    c = c < -87.0f ? -87.0f : c;
    c = c > 88.0f ? 88.0f : c;
    float n = c * 1.44269504088896341f + 12582912.0f;  /* 1.5 * 2^23: rounds to an integer */
    n = n - 12582912.0f;
    float r = c - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r;
    p = p + 1.0f;
    int32_t bits = ((int32_t)n + 127) * (1 << 23);
    float two_n;
    memcpy(&two_n, &bits, 4);
    float e = t > 88.0f ? INFINITY : p * two_n;
    return x / (1.0f + e);
}

/* y [n] = silu(g) * u for float32 arrays; bf16 where `bf16` (silu(g) rounded to bf16, then
 * the product: torch's `F.silu(gate) * up`). Elements split among the threads where there are
 * enough of them; each element is computed alone, so the bits never depend on n or threads. */
void lalm_silu_mul(const void *g, const void *u, void *y, int bf16, int64_t n, int threads) {
    int split = threads > 1 && n >= ROWWISE_SPLIT;
    if (!bf16) {
        const float *gf = g, *uf = u;
        float *yf = y;
        #pragma omp parallel for schedule(static) num_threads(threads) if (split)
        for (int64_t i = 0; i < n; i++) yf[i] = silu(gf[i]) * uf[i];
        return;
    }
    const uint16_t *gh = g, *uh = u;
    uint16_t *yh = y;
    #pragma omp parallel for schedule(static) num_threads(threads) if (split)
    for (int64_t i = 0; i < n; i++) {
        float s = bf16_to_f32(f32_to_bf16(silu(bf16_to_f32(gh[i]))));
        yh[i] = f32_to_bf16(s * bf16_to_f32(uh[i]));
    }
}

/* ---- a decode step's decoder layers in one call ---- */

/* The operands of one layer, `LAYER_OPERANDS` pointers in this order (NULL: absent). */
enum {
    OP_ATTN_NORM, OP_Q, OP_Q_SCALE, OP_Q_BIAS, OP_K, OP_K_SCALE, OP_K_BIAS, OP_V, OP_V_SCALE,
    OP_V_BIAS, OP_Q_NORM, OP_K_NORM, OP_O, OP_O_SCALE, OP_MLP_NORM, OP_GATE, OP_GATE_SCALE,
    OP_UP, OP_UP_SCALE, OP_DOWN, OP_DOWN_SCALE, LAYER_OPERANDS
};

int lalm_layer_operands(void) { return LAYER_OPERANDS; }

/* The layers' weight formats (`lalm_decode_layers`). */
enum { FORMAT_INT8, FORMAT_BF16, FORMAT_F32_KN };

/* y_p [B, N_p] = x [B, K] W_p^T + bias_p for p < n in one weight format: int8 codes with
 * scales (one pass, `lalm_int8_linear_many`), bf16 [N, K] (`lalm_bf16_linear`) or float32
 * [K, N] (`lalm_f32_linear_kn`), one product at a time for the last two as the modules run
 * them. Returns 0, or -1 where a buffer could not be allocated. */
static int layer_products(int format, const void *x, int n, const void *const *w,
                          const void *const *scale, int scale_bf16, const void *const *bias,
                          void *const *y, int bf16, int64_t B, const int64_t *N, int64_t K,
                          int threads) {
    if (format == FORMAT_INT8)
        return lalm_int8_linear_many(x, n, (const int8_t *const *)w, scale, scale_bf16, bias,
                                     y, bf16, B, N, K, threads);
    int failed = 0;
    for (int p = 0; p < n; p++)
        failed |= format == FORMAT_BF16
            ? lalm_bf16_linear(x, w[p], bias[p], y[p], bf16, B, N[p], K, threads)
            : lalm_f32_linear_kn(x, w[p], bias[p], y[p], bf16, B, N[p], K, threads);
    return failed;
}

/* x [B, D] += a layer's two sub-layers, rounded as torch's `x + y` rounds. */
static void add_rows(void *x, const void *y, int bf16, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        store_el(x, bf16, i, load_el(x, bf16, i) + load_el(y, bf16, i));
}

/* L pre-norm decoder layers (`lalm.model.decoder.DecoderLayer`) over one new position per row,
 * in place on x [B, D] (float32, or bf16 where `bf16`; every activation, norm weight, bias and
 * cos/sin table in that dtype). The products' weights are all of one `format`: int8 codes [N,
 * K] with scales [N] (float32, or bf16 where `scale_bf16`), bf16 [N, K], or float32 [K, N] (no
 * scales: NULL). Layer l's operands are ops[l * LAYER_OPERANDS + OP_*]; cos, sin [B, hd] the
 * step's RoPE tables; q_scale [B] float32 logn factors (already rounded to the dtype) or NULL;
 * kc, vc the KV cache's first element of layer 0, row 0 of the window, at element strides
 * (s_layer, s_row, s_head, hd, 1); row b writes its key and value at column cols[b] and attends
 * to the T columns where mask [B, T] is nonzero. Each step is the function the module path
 * calls (rms_norm, the int8 products, rope, decode_attention, silu_mul) on the same operands,
 * so x gets that path's bits (float32 weights: the modules' products are MKL's; these
 * `lalm_f32_linear_kn`). Returns 0, or -1 where a buffer could not be allocated (x then holds a
 * partial result). */
int lalm_decode_layers(void *x, const void *const *ops, int64_t L, const void *cos,
                       const void *sin, const float *q_scale, void *kc, void *vc,
                       int64_t s_layer, int64_t s_row, int64_t s_head, const int64_t *cols,
                       const uint8_t *mask, int64_t T, int bf16, int format, int scale_bf16,
                       int64_t B, int64_t D, int64_t H, int64_t Hkv, int64_t hd, int64_t F,
                       float eps, float scale, int threads) {
    int64_t size = bf16 ? 2 : 4, nq = H * hd, nkv = Hkv * hd;
    int64_t total = B * (2 * D + 3 * nq + 3 * nkv + 3 * F);
    char *buf = malloc((size_t)(total * size));
    if (!buf) return -1;
    char *normed = buf, *q = normed + B * D * size, *k = q + B * nq * size;
    char *v = k + B * nkv * size, *qr = v + B * nkv * size, *kr = qr + B * nq * size;
    char *att = kr + B * nkv * size, *out = att + B * nq * size, *gate = out + B * D * size;
    char *up = gate + B * F * size, *act = up + B * F * size;
    int failed = 0;
    for (int64_t l = 0; l < L && !failed; l++) {
        const void *const *p = ops + l * LAYER_OPERANDS;
        lalm_rms_norm(x, p[OP_ATTN_NORM], normed, bf16, B, D, eps, threads);
        const void *qkv[3] = {p[OP_Q], p[OP_K], p[OP_V]};
        const void *qkv_scale[3] = {p[OP_Q_SCALE], p[OP_K_SCALE], p[OP_V_SCALE]};
        const void *qkv_bias[3] = {p[OP_Q_BIAS], p[OP_K_BIAS], p[OP_V_BIAS]};
        void *qkv_out[3] = {q, k, v};
        int64_t widths[3] = {nq, nkv, nkv};
        failed |= layer_products(format, normed, 3, qkv, qkv_scale, scale_bf16, qkv_bias,
                                 qkv_out, bf16, B, widths, D, threads);
        if (p[OP_Q_NORM]) {
            lalm_rms_norm(q, p[OP_Q_NORM], q, bf16, B * H, hd, eps, threads);
            lalm_rms_norm(k, p[OP_K_NORM], k, bf16, B * Hkv, hd, eps, threads);
        }
        lalm_rope(q, cos, sin, qr, bf16, B, H, 1, hd, nq, hd, nq, hd, hd, threads);
        lalm_rope(k, cos, sin, kr, bf16, B, Hkv, 1, hd, nkv, hd, nkv, hd, hd, threads);
        if (q_scale)
            for (int64_t i = 0; i < B * nq; i++)
                store_el(qr, bf16, i, load_el(qr, bf16, i) * q_scale[i / nq]);
        char *keys = (char *)kc + l * s_layer * size, *values = (char *)vc + l * s_layer * size;
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < Hkv; h++) {
                int64_t at = (b * s_row + h * s_head + cols[b] * hd) * size;
                memcpy(keys + at, kr + (b * Hkv + h) * hd * size, (size_t)(hd * size));
                memcpy(values + at, v + (b * Hkv + h) * hd * size, (size_t)(hd * size));
            }
        failed |= lalm_decode_attention(qr, keys, values, mask, att, bf16, B, H, Hkv, T, hd,
                                        s_row, s_head, scale, threads);
        const void *none = NULL, *o_weight = p[OP_O], *o_scale = p[OP_O_SCALE];
        void *o_out = out;
        failed |= layer_products(format, att, 1, &o_weight, &o_scale, scale_bf16, &none,
                                 &o_out, bf16, B, &D, nq, threads);
        add_rows(x, out, bf16, B * D);
        lalm_rms_norm(x, p[OP_MLP_NORM], normed, bf16, B, D, eps, threads);
        const void *gu[2] = {p[OP_GATE], p[OP_UP]};
        const void *gu_scale[2] = {p[OP_GATE_SCALE], p[OP_UP_SCALE]};
        const void *gu_bias[2] = {NULL, NULL};
        void *gu_out[2] = {gate, up};
        int64_t gu_widths[2] = {F, F};
        failed |= layer_products(format, normed, 2, gu, gu_scale, scale_bf16, gu_bias, gu_out,
                                 bf16, B, gu_widths, D, threads);
        lalm_silu_mul(gate, up, act, bf16, B * F, threads);
        const void *down = p[OP_DOWN], *down_scale = p[OP_DOWN_SCALE];
        failed |= layer_products(format, act, 1, &down, &down_scale, scale_bf16, &none, &o_out,
                                 bf16, B, &D, F, threads);
        add_rows(x, out, bf16, B * D);
    }
    free(buf);
    return failed ? -1 : 0;
}
