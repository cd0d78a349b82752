/*
 * ops_copy.c - copies with type conversion and row gather/scatter.
 *
 * Every conversion goes through F32: a source row (or a run of elements)
 * is decoded into a small float buffer with the type's to_float, and the
 * buffer is encoded into the destination with the destination type's
 * reference quantizer (from_float_ref; for F32/F16/BF16 a plain
 * conversion). Rows longer than CHUNK elements are converted CHUNK elements
 * at a time: CHUNK is a multiple of every block size (32 and 256) and the
 * reference quantizers encode each block on its own, so the bytes equal those
 * of quantizing the whole row at once.
 */
#include "../gs_internal.h"

#include <inttypes.h>

#define CHUNK 4096

/* Decode n elements of a F32/F16/BF16 tensor starting at byte address p,
 * stride `stride` bytes. */
static void load_strided(gs_type type, const uint8_t * p, size_t stride, float * out, int64_t n) {
    switch (type) {
        case GS_TYPE_F32:
            for (int64_t i = 0; i < n; i++) memcpy(&out[i], p + i * stride, sizeof(float));
            break;
        case GS_TYPE_F16:
            for (int64_t i = 0; i < n; i++) {
                gs_half h;
                memcpy(&h, p + i * stride, sizeof(h));
                out[i] = GS_H2F(h);
            }
            break;
        default: /* BF16 (callers only pass plain float types) */
            for (int64_t i = 0; i < n; i++) {
                gs_bf16 h;
                memcpy(&h, p + i * stride, sizeof(h));
                out[i] = gs_bf16_to_float(h);
            }
            break;
    }
}

/* Decode elements [j0, j0 + n) of the row at `row` (type t, element stride
 * nb0 bytes). Quantized rows are contiguous in blocks (checked by the op
 * constructors) and j0, n are multiples of the block size. */
static void load_row_part(const gs_tensor * t, const uint8_t * row, int64_t j0, int64_t n, float * out) {
    const gs_type_traits * tt = gs_get_type_traits(t->type);
    if (t->nb[0] == tt->type_size) {
        gs_cpu_funcs(t->type)->to_float(row + (size_t) (j0 / tt->blck_size) * tt->type_size, out, n);
    } else {
        load_strided(t->type, row + (size_t) j0 * t->nb[0], t->nb[0], out, n);
    }
}

/* Encode n floats into a contiguous row of type `type` at element j0. */
static void store_row_part(gs_type type, uint8_t * row, int64_t j0, int64_t n, const float * in) {
    const gs_type_traits * tt = gs_get_type_traits(type);
    tt->from_float_ref(in, row + (size_t) (j0 / tt->blck_size) * tt->type_size, n);
}

static inline const uint8_t * row_addr(const gs_tensor * t, int64_t r) {
    const int64_t i1 = r % t->ne[1], i2 = (r / t->ne[1]) % t->ne[2], i3 = r / (t->ne[1] * t->ne[2]);
    return (const uint8_t *) t->data + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3];
}

/* Decode n elements of a (F32/F16/BF16, any layout) that start at flat
 * element index e in a's logical order (i0 fastest). */
static void load_flat(const gs_tensor * a, int64_t e, int64_t n, float * out) {
    int64_t i0 = e % a->ne[0];
    int64_t r = e / a->ne[0];
    while (n > 0) {
        const int64_t take = a->ne[0] - i0 < n ? a->ne[0] - i0 : n;
        load_strided(a->type, row_addr(a, r) + (size_t) i0 * a->nb[0], a->nb[0], out, take);
        out += take;
        n -= take;
        i0 = 0;
        r++;
    }
}

/* dst (contiguous, any storable type) = a (any layout) converted, element
 * by element in logical order; shapes may differ when counts agree. */
void gs_cpu_op_cpy(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const int64_t ne0 = dst->ne[0];
    const size_t dst_row = gs_type_row_size(dst->type, ne0);
    const bool same_rows = a->ne[0] == ne0;
    const bool raw_copy = same_rows && a->type == dst->type &&
                          a->nb[0] == gs_get_type_traits(a->type)->type_size;
    float buf[CHUNK];

    int64_t r0, r1;
    gs_split_rows(gs_nrows(dst), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        uint8_t * out = (uint8_t *) dst->data + (size_t) r * dst_row;
        if (raw_copy) {
            memcpy(out, row_addr(a, r), dst_row);
            continue;
        }
        for (int64_t j0 = 0; j0 < ne0; j0 += CHUNK) {
            const int64_t n = ne0 - j0 < CHUNK ? ne0 - j0 : CHUNK;
            if (same_rows) load_row_part(a, row_addr(a, r), j0, n, buf);
            else load_flat(a, r * ne0 + j0, n, buf);
            store_row_part(dst->type, out, j0, n, buf);
        }
    }
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

/* F32 -> F16 with the F16C instruction (round to nearest even, as
 * gs_float_to_half); NaN inputs go through gs_float_to_half, whose NaN
 * encoding differs from the instruction's. */
__attribute__((target("avx2,f16c")))
static void row_to_half_f16c(const float * x, void * y, int64_t n) {
    gs_half * out = y;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        _mm_storeu_si128((__m128i *) (out + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q))) {
            for (int64_t j = i; j < i + 8; j++) out[j] = gs_float_to_half(x[j]);
        }
    }
    for (; i < n; i++) out[i] = gs_float_to_half(x[i]);
}
#endif

/* The fastest exact F32 -> F16 row conversion this CPU has. */
static gs_from_float_fn half_row_converter(void) {
#if defined(__x86_64__) || defined(__i386__)
    gs_cpu_info info;
    gs_cpu_get_info(&info);
    if (info.f16c && info.avx2 && info.level >= GS_IMPL_AVX2) return row_to_half_f16c;
#endif
    return gs_get_type_traits(GS_TYPE_F16)->from_float_ref;
}

/* True (and reports once) when some index of the I32 tensor idx lies
 * outside 0..limit-1. Every thread checks all indices, so all threads agree
 * on the outcome without a barrier. */
static bool bad_index(const gs_compute_params * p, const char * op, const gs_tensor * idx, int64_t limit,
                      const gs_tensor * table) {
    const int32_t * ix = (const int32_t *) idx->data;
    const int64_t n = gs_nelements(idx);
    for (int64_t i = 0; i < n; i++) {
        if (ix[i] < 0 || ix[i] >= limit) {
            if (p->ith == 0) {
                gs_compute_fail(p, GS_ERR_RUNTIME, "%s: index %" PRId32 " at position %" PRId64
                                " of '%s' is out of range 0..%" PRId64 " (rows of '%s')",
                                op, ix[i], i, idx->name, limit - 1, table->name);
            }
            return true;
        }
    }
    return false;
}

/* dst rows idx[i] (in every (i2, i3) plane) = src row i of that plane,
 * converted from F32 to dst's type. Nothing is written when an index is
 * out of range. Indices should be distinct (duplicates race across
 * threads). */
void gs_cpu_op_set_rows(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * src = dst->src[0];
    const gs_tensor * idx = dst->src[1];
    if (bad_index(p, "set_rows", idx, dst->ne[1], dst->src[2])) return;
    const int32_t * ix = (const int32_t *) idx->data;
    const gs_type_traits * tt = gs_get_type_traits(dst->type);
    const bool contiguous_rows = dst->nb[0] == tt->type_size;
    const gs_from_float_fn to_row = dst->type == GS_TYPE_F16 ? half_row_converter() : tt->from_float_ref;
    const int64_t ne0 = src->ne[0], k = src->ne[1];

    int64_t r0, r1;
    gs_split_rows(gs_nrows(src), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const int64_t i2 = (r / k) % src->ne[2], i3 = r / (k * src->ne[2]);
        const float * x = (const float *) row_addr(src, r);
        uint8_t * out = (uint8_t *) dst->data + ix[r] * dst->nb[1] + i2 * dst->nb[2] + i3 * dst->nb[3];
        if (contiguous_rows) {
            to_row(x, out, ne0);
            continue;
        }
        /* strided F32/F16/BF16 destination: element by element */
        for (int64_t i = 0; i < ne0; i++) tt->from_float_ref(&x[i], out + i * dst->nb[0], 1);
    }
}

/* out row i = a row idx[i], decoded to F32. a is 2-D. */
void gs_cpu_op_get_rows(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const gs_tensor * idx = dst->src[1];
    if (bad_index(p, "get_rows", idx, a->ne[1], a)) return;
    const int32_t * ix = (const int32_t *) idx->data;
    const int64_t ne0 = a->ne[0];

    int64_t r0, r1;
    gs_split_rows(gs_nrows(dst), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t * row = (const uint8_t *) a->data + ix[r] * a->nb[1];
        load_row_part(a, row, 0, ne0, (float *) ((uint8_t *) dst->data + r * dst->nb[1]));
    }
}
