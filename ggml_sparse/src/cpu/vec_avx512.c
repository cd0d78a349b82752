/*
 * vec_avx512.c - the AVX-512 kernel table. Compiled with AVX-512
 * F/BW/VL/VNNI target flags and only called when the CPU has them (see
 * dispatch.c; the BF16 entries also need AVX512_BF16). Kernels live in
 * vec_avx512_{float,quant,q,k,tile,ktile}.c.
 */
#include "vec_avx512.h"

/* from_float of a weight type converts activations to its vec_dot_type;
 * NULL entries fall back to the AVX2 level (F16/BF16 conversions, the F16
 * dot) or the scalar one (the F32 copy). */
const gs_cpu_type_funcs gs_cpu_funcs_avx512[GS_TYPE_COUNT] = {
    [GS_TYPE_F32]  = { NULL, gs_avx512_dot_f32,  NULL, NULL, gs_avx512_gemm_f32 },
    [GS_TYPE_F16]  = { NULL, NULL,               NULL, NULL, gs_avx512_gemm_f16 },
    [GS_TYPE_BF16] = { NULL, gs_avx512_dot_bf16, NULL, NULL, gs_avx512_gemm_bf16 },
    [GS_TYPE_Q4_0] = { gs_avx512_quantize_q8_0, gs_avx512_dot_q4_0, NULL, gs_avx512_tile_q4_0 },
    [GS_TYPE_Q4_1] = { gs_avx512_quantize_q8_1, gs_avx512_dot_q4_1, NULL, gs_avx512_tile_q4_1 },
    [GS_TYPE_Q5_0] = { gs_avx512_quantize_q8_0, gs_avx512_dot_q5_0, NULL, gs_avx512_tile_q5_0 },
    [GS_TYPE_Q5_1] = { gs_avx512_quantize_q8_1, gs_avx512_dot_q5_1, NULL, gs_avx512_tile_q5_1 },
    [GS_TYPE_Q8_0] = { gs_avx512_quantize_q8_0, gs_avx512_dot_q8_0, NULL, gs_avx512_tile_q8_0 },
    [GS_TYPE_Q8_1] = { gs_avx512_quantize_q8_1, NULL, NULL },
    [GS_TYPE_Q4_K] = { gs_avx512_quantize_q8_K, gs_avx512_dot_q4_K, NULL, gs_avx512_tile_q4_K, gs_avx512_gemm_q4_K },
    [GS_TYPE_Q5_K] = { gs_avx512_quantize_q8_K, gs_avx512_dot_q5_K, NULL, gs_avx512_tile_q5_K, gs_avx512_gemm_q5_K },
    [GS_TYPE_Q6_K] = { gs_avx512_quantize_q8_K, gs_avx512_dot_q6_K, NULL, gs_avx512_tile_q6_K, gs_avx512_gemm_q6_K },
    [GS_TYPE_Q8_K] = { gs_avx512_quantize_q8_K, NULL, NULL },
};
