/*
 * dequant.cuh - device decoding of one weight of any ggml_sparse type.
 *
 * gs_dq<T>(row, i) returns element i of a contiguous row of type T (block
 * layouts of quants.h, bit-compatible with GGUF). Kernels are templated on
 * the type so the switch happens once per launch (GS_CUDA_TYPE_SWITCH).
 * The arithmetic follows ggml's / gguf.quants' order, with the _rn
 * intrinsics so nvcc never fuses a product and a sum into an FMA: a decoded
 * weight is bit-identical to the CPU's reference dequantization.
 */
#ifndef GS_CUDA_DEQUANT_CUH
#define GS_CUDA_DEQUANT_CUH

#include <cuda_fp16.h>

#include "common.cuh"

__device__ __forceinline__ float gs_h2f(gs_half h) { return __half2float(__ushort_as_half(h)); }

/* Nibble j (0..31) of a 32-weight block's qs: low nibbles first. */
__device__ __forceinline__ int gs_nib32(const uint8_t * qs, int j) {
    return j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4);
}

/* 6-bit scale and min of sub-block s (0..7) of a Q4_K/Q5_K block. */
__device__ __forceinline__ void gs_scale_min_k4(int s, const uint8_t * q, int * sc, int * m) {
    if (s < 4) {
        *sc = q[s] & 63;
        *m = q[s + 4] & 63;
    } else {
        *sc = (q[s + 4] & 0xF) | ((q[s - 4] >> 6) << 4);
        *m = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
    }
}

template <int T> __device__ __forceinline__ float gs_dq(const uint8_t * row, int64_t i);

template <> __device__ __forceinline__ float gs_dq<GS_TYPE_F32>(const uint8_t * row, int64_t i) {
    return ((const float *) row)[i];
}
template <> __device__ __forceinline__ float gs_dq<GS_TYPE_F16>(const uint8_t * row, int64_t i) {
    return gs_h2f(((const gs_half *) row)[i]);
}
template <> __device__ __forceinline__ float gs_dq<GS_TYPE_BF16>(const uint8_t * row, int64_t i) {
    return __uint_as_float((uint32_t) ((const gs_bf16 *) row)[i] << 16);
}
template <> __device__ __forceinline__ float gs_dq<GS_TYPE_Q4_0>(const uint8_t * row, int64_t i) {
    const block_q4_0 * b = (const block_q4_0 *) row + i / QK4_0;
    return gs_h2f(b->d) * (float) (gs_nib32(b->qs, (int) (i % QK4_0)) - 8);
}
template <> __device__ __forceinline__ float gs_dq<GS_TYPE_Q4_1>(const uint8_t * row, int64_t i) {
    const block_q4_1 * b = (const block_q4_1 *) row + i / QK4_1;
    return __fadd_rn(__fmul_rn(gs_h2f(b->d), (float) gs_nib32(b->qs, (int) (i % QK4_1))), gs_h2f(b->m));
}
template <> __device__ __forceinline__ float gs_dq<GS_TYPE_Q5_0>(const uint8_t * row, int64_t i) {
    const block_q5_0 * b = (const block_q5_0 *) row + i / QK5_0;
    const int j = (int) (i % QK5_0);
    const uint32_t qh = b->qh[0] | (b->qh[1] << 8) | (b->qh[2] << 16) | ((uint32_t) b->qh[3] << 24);
    const int q = gs_nib32(b->qs, j) | (int) (((qh >> j) & 1) << 4);
    return gs_h2f(b->d) * (float) (q - 16);
}
template <> __device__ __forceinline__ float gs_dq<GS_TYPE_Q5_1>(const uint8_t * row, int64_t i) {
    const block_q5_1 * b = (const block_q5_1 *) row + i / QK5_1;
    const int j = (int) (i % QK5_1);
    const uint32_t qh = b->qh[0] | (b->qh[1] << 8) | (b->qh[2] << 16) | ((uint32_t) b->qh[3] << 24);
    const int q = gs_nib32(b->qs, j) | (int) (((qh >> j) & 1) << 4);
    return __fadd_rn(__fmul_rn(gs_h2f(b->d), (float) q), gs_h2f(b->m));
}
template <> __device__ __forceinline__ float gs_dq<GS_TYPE_Q8_0>(const uint8_t * row, int64_t i) {
    const block_q8_0 * b = (const block_q8_0 *) row + i / QK8_0;
    return gs_h2f(b->d) * (float) b->qs[i % QK8_0];
}
template <> __device__ __forceinline__ float gs_dq<GS_TYPE_Q4_K>(const uint8_t * row, int64_t i) {
    const block_q4_K * b = (const block_q4_K *) row + i / QK_K;
    const int j = (int) (i % QK_K), k = j / 64, l = j % 64;
    int sc, m;
    gs_scale_min_k4(j / 32, b->scales, &sc, &m);
    const int q = l < 32 ? (b->qs[32 * k + l] & 15) : (b->qs[32 * k + l - 32] >> 4);
    return __fsub_rn(__fmul_rn(__fmul_rn(gs_h2f(b->d), (float) sc), (float) q), __fmul_rn(gs_h2f(b->dmin), (float) m));
}
template <> __device__ __forceinline__ float gs_dq<GS_TYPE_Q5_K>(const uint8_t * row, int64_t i) {
    const block_q5_K * b = (const block_q5_K *) row + i / QK_K;
    const int j = (int) (i % QK_K), k = j / 64, l = j % 64;
    int sc, m;
    gs_scale_min_k4(j / 32, b->scales, &sc, &m);
    int q = l < 32 ? (b->qs[32 * k + l] & 15) : (b->qs[32 * k + l - 32] >> 4);
    q |= ((b->qh[l % 32] >> (2 * k + (l >= 32))) & 1) << 4;
    return __fsub_rn(__fmul_rn(__fmul_rn(gs_h2f(b->d), (float) sc), (float) q), __fmul_rn(gs_h2f(b->dmin), (float) m));
}
template <> __device__ __forceinline__ float gs_dq<GS_TYPE_Q6_K>(const uint8_t * row, int64_t i) {
    const block_q6_K * b = (const block_q6_K *) row + i / QK_K;
    const int j = (int) (i % QK_K), h = j / 128, g = (j % 128) / 32, l = j % 32;
    const uint8_t * ql = b->ql + 64 * h;
    const uint8_t * qh = b->qh + 32 * h;
    const int lo = g == 0 ? (ql[l] & 15) : g == 1 ? (ql[l + 32] & 15) : g == 2 ? (ql[l] >> 4) : (ql[l + 32] >> 4);
    const int q = lo | (((qh[l] >> (2 * g)) & 3) << 4);
    return __fmul_rn(__fmul_rn(gs_h2f(b->d), (float) b->scales[j / 16]), (float) (q - 32));
}

/* Run BODY with the compile-time constant TT set to `type` (every weight
 * type); anything else returns GS_ERR_TYPE. */
#define GS_CUDA_TYPE_CASE(TT_, BODY) case TT_: { constexpr int TT = TT_; BODY; } break;
#define GS_CUDA_TYPE_SWITCH(type, BODY)                                                    \
    switch (type) {                                                                        \
        GS_CUDA_TYPE_CASE(GS_TYPE_F32, BODY)                                               \
        GS_CUDA_TYPE_CASE(GS_TYPE_F16, BODY)                                               \
        GS_CUDA_TYPE_CASE(GS_TYPE_BF16, BODY)                                              \
        GS_CUDA_TYPE_CASE(GS_TYPE_Q4_0, BODY)                                              \
        GS_CUDA_TYPE_CASE(GS_TYPE_Q4_1, BODY)                                              \
        GS_CUDA_TYPE_CASE(GS_TYPE_Q5_0, BODY)                                              \
        GS_CUDA_TYPE_CASE(GS_TYPE_Q5_1, BODY)                                              \
        GS_CUDA_TYPE_CASE(GS_TYPE_Q8_0, BODY)                                              \
        GS_CUDA_TYPE_CASE(GS_TYPE_Q4_K, BODY)                                              \
        GS_CUDA_TYPE_CASE(GS_TYPE_Q5_K, BODY)                                              \
        GS_CUDA_TYPE_CASE(GS_TYPE_Q6_K, BODY)                                              \
        default:                                                                           \
            return gs_set_error(GS_ERR_TYPE, "CUDA: type %d is not a supported weight type", \
                                (int) (type));                                             \
    }

/* Sum of v over the 32 lanes of a warp (every lane gets the result). */
__device__ __forceinline__ float gs_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}


#endif /* GS_CUDA_DEQUANT_CUH */
