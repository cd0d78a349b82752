/*
 * unary.cuh - the activation functions of gs_unary_op on the device.
 */
#ifndef GS_CUDA_UNARY_CUH
#define GS_CUDA_UNARY_CUH

#include <cuda_fp16.h>

#include "common.cuh"

/* f(x) for gs_unary_op. GELU follows the CPU's (ggml's F16 table, see
 * ggml_sparse.h): 0 at or below -10, x at or above 10, else the formula on
 * x rounded to F16, rounded to F16; the device's tanhf may differ from the
 * host's by an ulp, so rarely a result is the neighbouring F16 value. */
__device__ __forceinline__ float gs_unary_f(int op, float x) {
    switch (op) {
        case GS_UNARY_RELU: return x > 0.0f ? x : 0.0f;
        case GS_UNARY_SILU: return x / (1.0f + expf(-x));
        case GS_UNARY_GELU: {
            if (x <= -10.0f) return 0.0f;
            if (x >= 10.0f) return x;
            const float c = 0.79788456080286535587989211986876f;   /* sqrt(2 / pi) */
            const float h = __half2float(__float2half_rn(x));
            const float y = 0.5f * h * (1.0f + tanhf(c * h * fmaf(0.044715f * h, h, 1.0f)));
            return __half2float(__float2half_rn(y));
        }
        case GS_UNARY_TANH: return tanhf(x);
        case GS_UNARY_SIGMOID: return 1.0f / (1.0f + expf(-x));
        default: { const float r = x > 0.0f ? x : 0.0f; return r * r; }   /* SQR_RELU */
    }
}

#endif /* GS_CUDA_UNARY_CUH */
