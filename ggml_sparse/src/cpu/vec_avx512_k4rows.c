/*
 * vec_avx512_k4rows.c - AVX-512 VNNI Q4_K decode kernels (one Q8_K
 * activation row) over 4 weight rows at a time, bit-identical to the
 * single-row kernels of vec_avx512_k.c: gs_avx512_dot_q4_K (row-major
 * order, for the tile kernel with nc == 1 that mul_mat and mul_mat_id use)
 * and gs_avx512_q4kx8_dot with super-block steps (llama.cpp's repacked
 * GEMV order, repack.h).
 *
 * Only the integer work differs from those kernels, and the float
 * operations of each output are the same ones in the same order:
 *  - the 4 rows' headers and scales come from one 16-byte load per row
 *    (d, dmin, scales) and are unpacked for the 4 rows together (one
 *    128-bit lane per row): 6-bit scales and mins as bytes;
 *  - the 128 bytes of nibbles are two 64-byte loads, whose low and high
 *    nibbles are sub-blocks (0 | 2), (1 | 3), (4 | 6), (5 | 7); the
 *    activation bytes are arranged the same way once per super-block for
 *    the 4 rows (two 32-byte halves per register);
 *  - vpmaddubsw + vpdpwssd by the 16-bit sub-block scale into one 16-dword
 *    accumulator per row. Dword l and l + 8 together hold the same integer
 *    as vec_generic.c's lane l (positions 4l..4l+3 of every sub-block, each
 *    times its scale), which is all that either float order reads;
 *  - the mins term m_j (bsums_2j + bsums_2j+1), paired as in mins_dot, for
 *    the 4 rows with one vpmaddwd (lane 4r + i);
 *  - the activation side (arranged bytes, bsums pairs, d) is prepared once
 *    per call for all its rows, and each row group prefetches the next
 *    group's blocks into L2 (4 rows each read in its own stream).
 */
#include "vec_avx512.h"
#include "repack.h"

#define NR 4

/* The activation side of one super-block, the same for every row: the
 * bytes of sub-blocks (0|2), (1|3), (4|6), (5|7); p_j = bsums_2j +
 * bsums_2j+1 (8 int16, in every 128-bit lane); d. */
typedef struct {
    __m512i ya[4];
    __m512i p;
    float d;
} yblock;

/* Per super-block b of rows x + r bx (r < 4): scb[r] = the 6-bit scales as
 * bytes 8..15 of every 128-bit lane; mins = lane 4r + i as mins_dot (the
 * mins term of sub-blocks 2i, 2i + 1); dd = [d_0, dmin_0, d_1, dmin_1, ...]
 * times d_y (float). */
typedef struct {
    __m512i scb[NR];
    __m512i mins;
    __m256 dd;
} head4;

static inline __attribute__((always_inline)) head4
unpack_head4(const uint8_t * x0, size_t bx, const yblock * t) {
    head4 h;
    __m512i a = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *) x0));
    a = _mm512_inserti32x4(a, _mm_loadu_si128((const __m128i *) (x0 + bx)), 1);
    a = _mm512_inserti32x4(a, _mm_loadu_si128((const __m128i *) (x0 + 2 * bx)), 2);
    a = _mm512_inserti32x4(a, _mm_loadu_si128((const __m128i *) (x0 + 3 * bx)), 3);
    /* lane dwords: [d | dmin << 16, u0, u1, u2] (gs_unpack_scales_k4's u0..u2) */
    const __m512i lo6 = _mm512_set1_epi8(0x3F), lo4 = _mm512_set1_epi8(0x0F), lo2 = _mm512_set1_epi8(0x03);
    const __m512i lo = _mm512_and_si512(a, lo6);                            /* dword 1: sc_lo, 2: m_lo */
    const __m512i u2 = _mm512_shuffle_epi32(a, _MM_SHUFFLE(3, 3, 3, 3));
    const __m512i sh = _mm512_set_epi32(0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0);
    const __m512i top = _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(a, 6), lo2), 4);
    const __m512i hi = _mm512_or_si512(_mm512_and_si512(_mm512_srlv_epi32(u2, sh), lo4), top);   /* sc_hi, m_hi */
    const __m512i sc = _mm512_unpacklo_epi32(lo, hi);   /* bytes 8..15: sc_0..7 */
    const __m512i mm = _mm512_unpackhi_epi32(lo, hi);   /* bytes 0..7: m_0..7 */
    h.scb[0] = _mm512_shuffle_i32x4(sc, sc, 0x00);
    h.scb[1] = _mm512_shuffle_i32x4(sc, sc, 0x55);
    h.scb[2] = _mm512_shuffle_i32x4(sc, sc, 0xAA);
    h.scb[3] = _mm512_shuffle_i32x4(sc, sc, 0xFF);
    /* times the (p_2i, p_2i+1) pairs */
    h.mins = _mm512_madd_epi16(_mm512_unpacklo_epi8(mm, _mm512_setzero_si512()), t->p);
    const __m512i hd = _mm512_permutexvar_epi32(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), a);
    h.dd = _mm256_mul_ps(_mm256_cvtph_ps(_mm512_castsi512_si128(hd)), _mm256_set1_ps(t->d));
    return h;
}

/* acc[r] for super-block b: the 16-dword integer accumulator (header) of
 * row r; ya[4] = the activation bytes of sub-blocks (0|2), (1|3), (4|6), (5|7) */
static inline __attribute__((always_inline)) void
qdot4(__m512i acc[NR], const uint8_t * x0, size_t bx, const __m512i scb[NR], const __m512i ya[4]) {
    const __m512i m0F = _mm512_set1_epi8(0x0F);
    /* int16 lanes 0..15 = scale of the low half's sub-block, 16..31 the high half's */
    const __m512i c02 = _mm512_inserti64x4(_mm512_set1_epi16((short) 0x8008), _mm256_set1_epi16((short) 0x800A), 1);
    const __m512i c13 = _mm512_inserti64x4(_mm512_set1_epi16((short) 0x8009), _mm256_set1_epi16((short) 0x800B), 1);
    const __m512i c46 = _mm512_inserti64x4(_mm512_set1_epi16((short) 0x800C), _mm256_set1_epi16((short) 0x800E), 1);
    const __m512i c57 = _mm512_inserti64x4(_mm512_set1_epi16((short) 0x800D), _mm256_set1_epi16((short) 0x800F), 1);
    for (int r = 0; r < NR; r++) {
        _mm_prefetch((const char *) x0 + (size_t) (r + NR) * bx, _MM_HINT_T1);
        _mm_prefetch((const char *) x0 + (size_t) (r + NR) * bx + 64, _MM_HINT_T1);
        _mm_prefetch((const char *) x0 + (size_t) (r + NR) * bx + 128, _MM_HINT_T1);
        const uint8_t * qs = x0 + (size_t) r * bx + 16;
        const __m512i q0 = _mm512_loadu_si512(qs), q1 = _mm512_loadu_si512(qs + 64);
        const __m512i w0 = _mm512_and_si512(q0, m0F), w1 = _mm512_and_si512(_mm512_srli_epi16(q0, 4), m0F);
        const __m512i w2 = _mm512_and_si512(q1, m0F), w3 = _mm512_and_si512(_mm512_srli_epi16(q1, 4), m0F);
        __m512i a = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_maddubs_epi16(w0, ya[0]),
                                        _mm512_shuffle_epi8(scb[r], c02));
        a = _mm512_dpwssd_epi32(a, _mm512_maddubs_epi16(w1, ya[1]), _mm512_shuffle_epi8(scb[r], c13));
        a = _mm512_dpwssd_epi32(a, _mm512_maddubs_epi16(w2, ya[2]), _mm512_shuffle_epi8(scb[r], c46));
        acc[r] = _mm512_dpwssd_epi32(a, _mm512_maddubs_epi16(w3, ya[3]), _mm512_shuffle_epi8(scb[r], c57));
    }
}

static inline __attribute__((always_inline)) void arrange_y(yblock * t, const block_q8_K * y) {
    for (int h = 0; h < 2; h++) {
        const int8_t * p = y->qs + 128 * h;
        t->ya[2 * h] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *) p)),
                                          _mm256_loadu_si256((const __m256i *) (p + 64)), 1);
        t->ya[2 * h + 1] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *) (p + 32))),
                                              _mm256_loadu_si256((const __m256i *) (p + 96)), 1);
    }
    const __m256i bs = _mm256_loadu_si256((const __m256i *) y->bsums);
    t->p = _mm512_broadcast_i32x4(_mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1)));
    t->d = y->d;
}

/* Up to MAX_PREP super-blocks (K = 32768) are arranged once per call for
 * all rows (on the stack); longer rows arrange them per row group. */
#define MAX_PREP 128

/* lane r = sum of the 16 dwords of a[r] */
static inline __m128i hsum4_epi32(const __m512i a[NR]) {
    const __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
    const __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
    const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
    const __m256i v = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

/* 4 rows of gs_avx512_dot_q4_K */
static inline __attribute__((always_inline)) void
dot_q4_K_4rows(int n, float * s, const uint8_t * x, size_t bx, const block_q8_K * y, const yblock * pre) {
    __m512 facc[2] = { _mm512_setzero_ps(), _mm512_setzero_ps() };   /* rows (0, 1), (2, 3): 8 lanes each */
    __m512 macc = _mm512_setzero_ps();                               /* lane 4r + i */
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i i01 = _mm512_slli_epi32(_mm512_srli_epi32(lane, 3), 1);   /* d of row 0 / 1 */
    const __m512i i23 = _mm512_add_epi32(i01, _mm512_set1_epi32(4));        /* ... 2 / 3 */
    const __m512i im = _mm512_or_si512(_mm512_slli_epi32(_mm512_srli_epi32(lane, 2), 1), _mm512_set1_epi32(1));
    for (int b = 0; b < n / QK_K; b++) {
        const uint8_t * x0 = x + (size_t) b * sizeof(block_q4_K);
        yblock tb;
        if (!pre) arrange_y(&tb, &y[b]);
        const yblock * t = pre ? &pre[b] : &tb;
        const head4 h = unpack_head4(x0, bx, t);
        __m512i acc[NR];
        qdot4(acc, x0, bx, h.scb, t->ya);
        const __m512 dd = _mm512_castps256_ps512(h.dd);
        macc = _mm512_fnmadd_ps(_mm512_permutexvar_ps(im, dd), _mm512_cvtepi32_ps(h.mins), macc);
        for (int p = 0; p < 2; p++) {
            const __m512i a = acc[2 * p], c = acc[2 * p + 1];
            const __m512i l = _mm512_add_epi32(_mm512_shuffle_i64x2(a, c, _MM_SHUFFLE(1, 0, 1, 0)),
                                               _mm512_shuffle_i64x2(a, c, _MM_SHUFFLE(3, 2, 3, 2)));
            facc[p] = _mm512_fmadd_ps(_mm512_permutexvar_ps(p ? i23 : i01, dd), _mm512_cvtepi32_ps(l), facc[p]);
        }
    }
    float fl[2][16], ml[16];
    _mm512_storeu_ps(fl[0], facc[0]);
    _mm512_storeu_ps(fl[1], facc[1]);
    _mm512_storeu_ps(ml, macc);
    for (int r = 0; r < NR; r++) {
        __m128 m = _mm_loadu_ps(&ml[4 * r]);
        m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        const float summs = _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
        s[r] = gs256_hsum(_mm256_loadu_ps(&fl[r / 2][8 * (r % 2)])) + summs;
    }
}

static void dot_q4_K_4rows_pre(int n, float * s, const uint8_t * x, size_t bx, const block_q8_K * y,
                               const yblock * pre) {
    dot_q4_K_4rows(n, s, x, bx, y, pre);
}

static void dot_q4_K_4rows_own(int n, float * s, const uint8_t * x, size_t bx, const block_q8_K * y) {
    dot_q4_K_4rows(n, s, x, bx, y, NULL);
}

/* The rows of one call: groups of NR rows by the 4-row kernel (`pre`: with the activations
 * arranged once for all groups, when there are at least two groups and they fit; `own`:
 * arranging them per group), the last nr % NR rows one by one (`one`). */
typedef void (*rows_pre_fn)(int n, float * s, const uint8_t * x, size_t bx, const block_q8_K * y,
                            const yblock * pre);
typedef void (*rows_own_fn)(int n, float * s, const uint8_t * x, size_t bx, const block_q8_K * y);
typedef void (*row_one_fn)(int n, float * s, const void * vx, const void * vy);

static void drive_rows(int n, float * s, const uint8_t * x, size_t bx, const void * vy, int nr,
                       rows_pre_fn pre_fn, rows_own_fn own_fn, row_one_fn one_fn) {
    const block_q8_K * y = vy;
    const int nb = n / QK_K;
    int r = 0;
    if (nr >= 2 * NR && nb <= MAX_PREP) {
        yblock pre[MAX_PREP];
        for (int b = 0; b < nb; b++) arrange_y(&pre[b], &y[b]);
        for (; r + NR <= nr; r += NR) pre_fn(n, s + r, x + (size_t) r * bx, bx, y, pre);
    }
    for (; r + NR <= nr; r += NR) own_fn(n, s + r, x + (size_t) r * bx, bx, y);
    for (; r < nr; r++) one_fn(n, s + r, x + (size_t) r * bx, vy);
}

void gs_avx512_dot_q4_K_rows(int n, float * s, const void * vx, size_t bx, const void * vy, int nr) {
    drive_rows(n, s, vx, bx, vy, nr, dot_q4_K_4rows_pre, dot_q4_K_4rows_own, gs_avx512_dot_q4_K);
}

/* 4 rows of gs_avx512_q4kx8_dot with super-block steps */
static inline __attribute__((always_inline)) void
q4kx8_4rows(int n, float * s, const uint8_t * x, size_t bx, const block_q8_K * y, const yblock * pre) {
    __m128 acc = _mm_setzero_ps(), accm = _mm_setzero_ps();   /* lane r */
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6), odd = _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7);
    for (int b = 0; b < n / QK_K; b++) {
        const uint8_t * x0 = x + (size_t) b * sizeof(block_q4_K);
        yblock tb;
        if (!pre) arrange_y(&tb, &y[b]);
        const yblock * t = pre ? &pre[b] : &tb;
        const head4 h = unpack_head4(x0, bx, t);
        __m512i a[NR];
        qdot4(a, x0, bx, h.scb, t->ya);
        const __m128i s1 = hsum4_epi32(a);
        /* s2: lane r = sum of lanes 4r..4r+3 of mins */
        const __m512i m2 = _mm512_add_epi32(h.mins, _mm512_shuffle_epi32(h.mins, _MM_SHUFFLE(1, 0, 3, 2)));
        const __m512i u = _mm512_add_epi32(m2, _mm512_shuffle_epi32(m2, _MM_SHUFFLE(2, 3, 0, 1)));
        const __m128i s2 = _mm512_castsi512_si128(
            _mm512_permutexvar_epi32(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), u));
        const __m128 d = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(h.dd, even));
        const __m128 dmin = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(h.dd, odd));
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(s1), d, acc);
        accm = _mm_fmadd_ps(_mm_cvtepi32_ps(s2), dmin, accm);
    }
    _mm_storeu_ps(s, _mm_sub_ps(acc, accm));
}

static void q4kx8_4rows_pre(int n, float * s, const uint8_t * x, size_t bx, const block_q8_K * y,
                            const yblock * pre) {
    q4kx8_4rows(n, s, x, bx, y, pre);
}

static void q4kx8_4rows_own(int n, float * s, const uint8_t * x, size_t bx, const block_q8_K * y) {
    q4kx8_4rows(n, s, x, bx, y, NULL);
}

static void q4kx8_one(int n, float * s, const void * vx, const void * vy) {
    gs_avx512_q4kx8_dot(n, s, vx, vy, 0);
}

void gs_avx512_q4kx8_dot_rows(int n, float * s, const void * vx, size_t bx, const void * vy, int nr) {
    drive_rows(n, s, vx, bx, vy, nr, q4kx8_4rows_pre, q4kx8_4rows_own, q4kx8_one);
}
