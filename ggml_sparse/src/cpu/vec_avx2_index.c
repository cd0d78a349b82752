/*
 * vec_avx2_index.c - AVX2 scan for the active-neuron index
 * (gs_index_scan_fn): 8 floats per compare, the ids of the passing lanes
 * taken from the comparison's bit mask lowest first; the tail one by one.
 */
#include "sparse.h"

#include <immintrin.h>
#include <math.h>

int64_t gs_index_scan_avx2(const float * s, int64_t n, float thr, bool magnitude, int32_t base, int32_t * ids) {
    const __m256 vt = _mm256_set1_ps(thr);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    int64_t c = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(s + i);
        if (magnitude) v = _mm256_and_ps(v, abs_mask);
        /* ordered compare: NaN lanes fail */
        unsigned m = (unsigned) _mm256_movemask_ps(_mm256_cmp_ps(v, vt, _CMP_GE_OQ));
        if (!ids) {
            c += __builtin_popcount(m);
            continue;
        }
        while (m) {
            ids[c++] = base + (int32_t) i + __builtin_ctz(m);
            m &= m - 1;
        }
    }
    for (; i < n; i++) {
        const float v = magnitude ? fabsf(s[i]) : s[i];
        if (v >= thr) {
            if (ids) ids[c] = base + (int32_t) i;
            c++;
        }
    }
    return c;
}
