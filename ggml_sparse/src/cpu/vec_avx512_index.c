/*
 * vec_avx512_index.c - AVX-512 scan for the active-neuron index
 * (gs_index_scan_fn): 16 floats per compare; the ids of the lanes that pass
 * are compressed into the list in one store. The tail uses a masked load.
 */
#include "sparse.h"

#include <immintrin.h>

int64_t gs_index_scan_avx512(const float * s, int64_t n, float thr, bool magnitude, int32_t base, int32_t * ids) {
    const __m512 vt = _mm512_set1_ps(thr);
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int64_t c = 0;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 live = n - i >= 16 ? (__mmask16) 0xFFFF : (__mmask16) ((1u << (n - i)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(live, s + i);
        if (magnitude) v = _mm512_abs_ps(v);
        /* ordered compare: NaN lanes fail */
        const __mmask16 k = _mm512_mask_cmp_ps_mask(live, v, vt, _CMP_GE_OQ);
        if (ids) {
            const __m512i id = _mm512_add_epi32(iota, _mm512_set1_epi32(base + (int32_t) i));
            _mm512_mask_compressstoreu_epi32(ids + c, k, id);
        }
        c += __builtin_popcount((unsigned) k);
    }
    return c;
}
