/*
 * quants_k_ref_quantize.c - reference quantizers of weights into the K
 * types Q4_K, Q5_K and Q6_K (block layouts in quants.h).
 *
 * The three share one plan:
 *   1. per sub-block, fit a float scale (and for Q4_K/Q5_K a min) by a
 *      weighted least-squares search over candidate quantization grids;
 *   2. quantize the sub-block scales (and mins) to 6 bits (Q6_K: 8 bits)
 *      against the super-block's f16 `d` (and `dmin`): the largest one
 *      gets the top code or the one below (63/62, Q6_K -128/-127),
 *      whichever reconstructs the block better;
 *   3. re-quantize the weights with the quantized sub-block parameters,
 *      trying the nearest codes of each parameter and keeping the choice
 *      with the least error.
 * Errors are weighted by an importance that grows with |x| (large weights
 * matter most to a matmul), see importance(). Sums run in double so that
 * inputs near FLT_MAX or FLT_MIN neither overflow nor underflow; f16 scales
 * saturate at the largest finite half instead of becoming inf, and a
 * nonzero block never gets a zero scale.
 * A row dequantized from K blocks quantizes back to (nearly always) the
 * same values: step 2's choice of top code and step 3's shifted min
 * candidates are for that. Measured on N(0, 1) rows: all values of rows
 * from llama.cpp's quantizers, over 99% of those from ours.
 */
#include "gs_internal.h"
#include "quants_ref.h"

#include <math.h>

#define HALF_MAX 65504.0f
/* Candidate grids of the sub-block searches: the value range (or, for Q6_K,
 * the largest magnitude) spans nmax + GRID_STEP * k steps, k in
 * -GRID_N .. GRID_N. */
#define GRID_N 8
#define GRID_STEP 0.5f
/* Alternations of least-squares fit and re-quantization per candidate. */
#define FIT_ITERS 2
/* Codes tried for the largest sub-block scale (min): the top
 * SCALE_CODE_TRIES (see step 2 above). */
#define SCALE_CODE_TRIES 2

/* Round v to the nearest integer in [lo, hi]; NaN goes to lo. */
static inline int round_clamp(float v, int lo, int hi) {
    v = v > (float) lo ? v : (float) lo;
    v = v < (float) hi ? v : (float) hi;
    return (int) lrintf(v);
}

/* Store v as an f16 super-block scale and return the stored value: the
 * magnitude saturates at HALF_MAX, and a nonzero v never rounds to zero
 * (the smallest subnormal is kept instead), so tiny blocks stay nonzero. */
static float store_half_scale(float v, gs_half * h) {
    if (v == 0.0f) {
        *h = 0;
        return 0.0f;
    }
    gs_half r = gs_float_to_half(copysignf(fminf(fabsf(v), HALF_MAX), v));
    if ((r & 0x7FFF) == 0) r = (gs_half) ((r & 0x8000) | 1);
    *h = r;
    return gs_half_to_float(r);
}

/* Importance w[i] of each value of a super-block x[0..QK_K) in the
 * least-squares fits: sqrt(x^2 + sigma^2), sigma^2 the block's mean square,
 * so large values count most and small ones still count. */
static void importance(const float * x, double * w) {
    double sum2 = 0.0;
    for (int i = 0; i < QK_K; i++) sum2 += (double) x[i] * x[i];
    const double sigma2 = sum2 / QK_K;
    for (int i = 0; i < QK_K; i++) w[i] = sqrt((double) x[i] * x[i] + sigma2);
}

/* ---- scale + min fits (Q4_K, Q5_K) ---------------------------------------- */
/* q[i] = round((x[i] + min) / scale) in 0..nmax (0 where scale is 0). */
static void quantize_affine(const float * x, int n, int nmax, float scale, float min, uint8_t * q) {
    const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    for (int i = 0; i < n; i++) q[i] = (uint8_t) round_clamp((x[i] + min) * inv, 0, nmax);
}

/* Weighted squared error of x[i] ~= scale * q[i] - min. */
static double affine_error(const float * x, const double * w, const uint8_t * q, int n,
                           float scale, float min) {
    double err = 0.0;
    for (int i = 0; i < n; i++) {
        const double e = (double) scale * q[i] - min - x[i];
        err += w[i] * e * e;
    }
    return err;
}

/* For fixed q, the weighted least-squares scale and min of
 * x[i] ~= scale * q[i] - min with min >= 0 (the format can only subtract).
 * Returns false when q does not determine a positive scale. */
static bool fit_affine(const float * x, const double * w, const uint8_t * q, int n,
                       float * scale, float * min) {
    double sw = 0, sx = 0, sq = 0, sqq = 0, sxq = 0;
    int qlo = q[0], qhi = q[0];
    for (int i = 0; i < n; i++) {
        sw += w[i];
        sx += w[i] * x[i];
        sq += w[i] * q[i];
        sqq += w[i] * q[i] * q[i];
        sxq += w[i] * x[i] * q[i];
        qlo = q[i] < qlo ? q[i] : qlo;
        qhi = q[i] > qhi ? q[i] : qhi;
    }
    if (qhi == qlo) return false;
    const double det = sw * sqq - sq * sq;
    double s = (sw * sxq - sx * sq) / det;
    double off = (sqq * sx - sq * sxq) / det;   /* x ~= s * q + off */
    if (off > 0.0) {
        off = 0.0;
        s = sxq / sqq;
    }
    if (!(s > 0.0)) return false;
    *scale = (float) s;
    *min = (float) -off;
    return true;
}

/* Scale and min (both >= 0) of one sub-block of n <= 32 values for codes
 * 0..nmax: each candidate grid over [min(x, 0), max(x)] is refined by
 * alternating fit and re-quantization; the least weighted error wins. */
static void search_scale_min(const float * x, const double * w, int n, int nmax,
                             float * scale, float * min) {
    float lo = 0.0f, hi = x[0];
    for (int i = 0; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
    }
    *scale = 0.0f;
    *min = -lo;
    if (!(hi > lo)) return;                 /* constant block, exactly -min */
    uint8_t q[32], prev[32];
    double best = INFINITY;
    for (int k = -GRID_N; k <= GRID_N; k++) {
        float s = (hi - lo) / (nmax + GRID_STEP * k), m = -lo;
        for (int it = 0; it <= FIT_ITERS; it++) {
            quantize_affine(x, n, nmax, s, m, q);
            const double err = affine_error(x, w, q, n, s, m);
            if (err < best) {
                best = err;
                *scale = s;
                *min = m;
            }
            /* stop when converged: the fit would give s and m again */
            if (it == FIT_ITERS || (it > 0 && memcmp(q, prev, (size_t) n) == 0)) break;
            memcpy(prev, q, (size_t) n);
            if (!fit_affine(x, w, q, n, &s, &m)) break;
        }
    }
}

/* The codes lo..hi to try for value v on a grid of step d with codes
 * 0..top: the two nearest; only the nearest for the largest value (is_max),
 * which defines the grid (normally that code is `top`). */
static void code_range(float v, float d, int top, bool is_max, int * lo, int * hi) {
    if (d <= 0.0f) {
        *lo = *hi = 0;
    } else if (is_max) {
        *lo = *hi = round_clamp(v / d, 0, top);
    } else {
        *lo = round_clamp(floorf(v / d), 0, top);
        *hi = *lo < top ? *lo + 1 : top;
    }
}

/* Candidate 6-bit codes (at most 6, written to codes[]) for the min mn of a
 * sub-block with scale sc on the grid dmin with codes 0..top: the two
 * nearest codes of mn and of mn -/+ sc (the same sub-block with its weight
 * codes shifted by one); only the nearest code of mn for the largest min,
 * which defines the grid. Returns how many. */
static int min_codes(float mn, float sc, float dmin, int top, bool is_max, int * codes) {
    int n = 0;
    for (int shift = is_max ? 0 : -1; shift <= (is_max ? 0 : 1); shift++) {
        int lo, hi;
        code_range(mn + shift * sc, dmin, top, is_max, &lo, &hi);
        for (int c = lo; c <= hi; c++) {
            bool seen = false;
            for (int i = 0; i < n; i++) seen |= codes[i] == c;
            if (!seen) codes[n++] = c;
        }
    }
    return n;
}

/* Choose the 6-bit codes ls[j], lm[j] of each sub-block's scale and min for
 * super-block scales d and dmin, whose largest scale and min get codes
 * top_s and top_m, and the weight codes q[0..QK_K) in 0..nmax. Returns the
 * total weighted error. */
static double choose_codes_affine(const float * x, const double * w, int nmax, const float * sc,
                                  const float * mn, float d, float dmin, int top_s, int top_m,
                                  uint8_t * ls, uint8_t * lm, uint8_t * q) {
    int jmax_s = 0, jmax_m = 0;
    for (int j = 1; j < 8; j++) {
        if (sc[j] > sc[jmax_s]) jmax_s = j;
        if (mn[j] > mn[jmax_m]) jmax_m = j;
    }
    double total = 0.0;
    for (int j = 0; j < 8; j++) {
        const float * xj = x + 32 * j;
        const double * wj = w + 32 * j;
        int a0, a1, bs[6];
        code_range(sc[j], d, top_s, j == jmax_s, &a0, &a1);
        const int nb = min_codes(mn[j], sc[j], dmin, top_m, j == jmax_m, bs);
        double best = INFINITY;
        for (int a = a0; a <= a1; a++) {
            for (int i = 0; i < nb; i++) {
                uint8_t qj[32];
                quantize_affine(xj, 32, nmax, d * a, dmin * bs[i], qj);
                const double err = affine_error(xj, wj, qj, 32, d * a, dmin * bs[i]);
                if (err < best) {
                    best = err;
                    ls[j] = (uint8_t) a;
                    lm[j] = (uint8_t) bs[i];
                    memcpy(q + 32 * j, qj, 32);
                }
            }
        }
        total += best;
    }
    return total;
}

/* One Q4_K/Q5_K super-block: fills d, dmin, the packed 6-bit scales and
 * mins, and the codes q[0..QK_K) in 0..nmax. */
static void quantize_superblock_affine(const float * x, int nmax, gs_half * d_out, gs_half * dmin_out,
                                       uint8_t * scales, uint8_t * q) {
    double w[QK_K];
    float sc[8], mn[8], max_sc = 0.0f, max_mn = 0.0f;
    importance(x, w);
    for (int j = 0; j < 8; j++) {
        search_scale_min(x + 32 * j, w + 32 * j, 32, nmax, &sc[j], &mn[j]);
        max_sc = fmaxf(max_sc, sc[j]);
        max_mn = fmaxf(max_mn, mn[j]);
    }
    /* The largest scale (min) gets code 63 - ks (63 - km). Codes below 63
     * give up a little range but let a row dequantized from a K block whose
     * largest code was below 63 find its own grid again. */
    uint8_t ls[8], lm[8];
    double best = INFINITY;
    for (int ks = 0; ks < SCALE_CODE_TRIES; ks++) {
        for (int km = 0; km < SCALE_CODE_TRIES; km++) {
            gs_half dh, mh;
            const float d = store_half_scale(max_sc / (float) (63 - ks), &dh);
            const float dmin = store_half_scale(max_mn / (float) (63 - km), &mh);
            uint8_t ls_k[8], lm_k[8], q_k[QK_K];
            const double err = choose_codes_affine(x, w, nmax, sc, mn, d, dmin, 63 - ks, 63 - km,
                                                   ls_k, lm_k, q_k);
            if (err < best) {
                best = err;
                *d_out = dh;
                *dmin_out = mh;
                memcpy(ls, ls_k, 8);
                memcpy(lm, lm_k, 8);
                memcpy(q, q_k, QK_K);
            }
        }
    }
    /* inverse of gs_get_scale_min_k4 */
    for (int j = 0; j < 4; j++) {
        scales[j] = ls[j] | (uint8_t) ((ls[j + 4] >> 4) << 6);
        scales[j + 4] = lm[j] | (uint8_t) ((lm[j + 4] >> 4) << 6);
        scales[j + 8] = (uint8_t) ((ls[j + 4] & 0xF) | ((lm[j + 4] & 0xF) << 4));
    }
}

void gs_quantize_row_q4_K_ref(const float * x, void * vy, int64_t n) {
    block_q4_K * y = vy;
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        uint8_t q[QK_K];
        quantize_superblock_affine(x, 15, &y[b].d, &y[b].dmin, y[b].scales, q);
        for (int k = 0; k < 4; k++) {
            for (int l = 0; l < 32; l++) {
                y[b].qs[32 * k + l] = (uint8_t) (q[64 * k + l] | (q[64 * k + 32 + l] << 4));
            }
        }
    }
}

void gs_quantize_row_q5_K_ref(const float * x, void * vy, int64_t n) {
    block_q5_K * y = vy;
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        uint8_t q[QK_K];
        quantize_superblock_affine(x, 31, &y[b].d, &y[b].dmin, y[b].scales, q);
        memset(y[b].qh, 0, sizeof(y[b].qh));
        for (int k = 0; k < 4; k++) {
            for (int l = 0; l < 32; l++) {
                const uint8_t lo = q[64 * k + l], hi = q[64 * k + 32 + l];
                y[b].qs[32 * k + l] = (uint8_t) ((lo & 0xF) | ((hi & 0xF) << 4));
                y[b].qh[l] |= (uint8_t) (((lo >> 4) << (2 * k)) | ((hi >> 4) << (2 * k + 1)));
            }
        }
    }
}

/* ---- symmetric scale fits (Q6_K) ------------------------------------------ */
/* q[i] = round(x[i] / scale) in -32..31 (0 where scale is 0). */
static void quantize_sym(const float * x, int n, float scale, int8_t * q) {
    const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
    for (int i = 0; i < n; i++) q[i] = (int8_t) round_clamp(x[i] * inv, -32, 31);
}

static double sym_error(const float * x, const double * w, const int8_t * q, int n, float scale) {
    double err = 0.0;
    for (int i = 0; i < n; i++) {
        const double e = (double) scale * q[i] - x[i];
        err += w[i] * e * e;
    }
    return err;
}

/* Scale of one sub-block of n <= 16 values for codes -32..31. The value of
 * largest magnitude goes to the -32 end (the longer side of the range);
 * candidate grids around max|x| / 32 are each refined by the weighted
 * least-squares scale for their codes; the least weighted error wins. */
static float search_scale_sym(const float * x, const double * w, int n) {
    float amax = 0.0f, vmax = 0.0f;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            vmax = x[i];
        }
    }
    if (amax == 0.0f) return 0.0f;
    int8_t q[16];
    double best = INFINITY;
    float best_scale = vmax / -32.0f;
    for (int k = -GRID_N; k <= GRID_N; k++) {
        float s = vmax / -(32.0f + GRID_STEP * k);
        for (int it = 0; it <= FIT_ITERS; it++) {
            quantize_sym(x, n, s, q);
            const double err = sym_error(x, w, q, n, s);
            if (err < best) {
                best = err;
                best_scale = s;
            }
            double sxq = 0.0, sqq = 0.0;
            for (int i = 0; i < n; i++) {
                sxq += w[i] * x[i] * q[i];
                sqq += w[i] * q[i] * q[i];
            }
            if (it == FIT_ITERS || sqq == 0.0) break;
            s = (float) (sxq / sqq);
        }
    }
    return best_scale;
}

/* Choose the int8 codes ls[j] of the 16 sub-block scales sc[j] for the
 * super-block scale d = sc[jmax] / -top (the scale of largest magnitude,
 * sub-block jmax, gets its nearest code, normally -top; the others try
 * their two nearest codes) and the weight codes q[0..QK_K) in -32..31.
 * Returns the total weighted error. */
static double choose_codes_sym(const float * x, const double * w, const float * sc, int jmax,
                               float d, int top, int8_t * ls, int8_t * q) {
    double total = 0.0;
    for (int j = 0; j < 16; j++) {
        int l0 = 0, l1 = 0;
        if (d != 0.0f && j == jmax) {
            l0 = l1 = round_clamp(sc[j] / d, -top, 127);
        } else if (d != 0.0f) {
            l0 = round_clamp(floorf(sc[j] / d), -128, 127);
            l1 = l0 < 127 ? l0 + 1 : l0;
        }
        double best = INFINITY;
        for (int l = l0; l <= l1; l++) {
            int8_t qj[16];
            quantize_sym(x + 16 * j, 16, d * l, qj);
            const double err = sym_error(x + 16 * j, w + 16 * j, qj, 16, d * l);
            if (err < best) {
                best = err;
                ls[j] = (int8_t) l;
                memcpy(q + 16 * j, qj, 16);
            }
        }
        total += best;
    }
    return total;
}

void gs_quantize_row_q6_K_ref(const float * x, void * vy, int64_t n) {
    block_q6_K * y = vy;
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        double w[QK_K];
        float sc[16];
        int jmax = 0;
        importance(x, w);
        for (int j = 0; j < 16; j++) {
            sc[j] = search_scale_sym(x + 16 * j, w + 16 * j, 16);
            if (fabsf(sc[j]) > fabsf(sc[jmax])) jmax = j;
        }
        /* the largest sub-block scale gets code -top, top = 128 or less
         * (see quantize_superblock_affine) */
        int8_t q[QK_K];
        double best = INFINITY;
        for (int k = 0; k < SCALE_CODE_TRIES; k++) {
            gs_half dh;
            const float d = store_half_scale(sc[jmax] / (float) -(128 - k), &dh);
            int8_t ls_k[16], q_k[QK_K];
            const double err = choose_codes_sym(x, w, sc, jmax, d, 128 - k, ls_k, q_k);
            if (err < best) {
                best = err;
                y[b].d = dh;
                memcpy(y[b].scales, ls_k, 16);
                memcpy(q, q_k, QK_K);
            }
        }
        /* pack codes q + 32 (0..63) as the layout in quants.h */
        for (int h = 0; h < 2; h++) {
            const int8_t * qs = q + 128 * h;
            uint8_t * ql = y[b].ql + 64 * h;
            uint8_t * qh = y[b].qh + 32 * h;
            for (int l = 0; l < 32; l++) {
                const uint8_t q0 = (uint8_t) (qs[l] + 32), q1 = (uint8_t) (qs[l + 32] + 32);
                const uint8_t q2 = (uint8_t) (qs[l + 64] + 32), q3 = (uint8_t) (qs[l + 96] + 32);
                ql[l] = (uint8_t) ((q0 & 0xF) | ((q2 & 0xF) << 4));
                ql[l + 32] = (uint8_t) ((q1 & 0xF) | ((q3 & 0xF) << 4));
                qh[l] = (uint8_t) ((q0 >> 4) | ((q1 >> 4) << 2) | ((q2 >> 4) << 4) | ((q3 >> 4) << 6));
            }
        }
    }
}
