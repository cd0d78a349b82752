/*
 * unary.cuh - the activation functions of gs_unary_op on the device.
 */
#ifndef GS_CUDA_UNARY_CUH
#define GS_CUDA_UNARY_CUH

#include "common.cuh"

/* f(x) for gs_unary_op (GELU: the tanh approximation, as ggml_gelu). */
__device__ __forceinline__ float gs_unary_f(int op, float x) {
    switch (op) {
        case GS_UNARY_RELU: return x > 0.0f ? x : 0.0f;
        case GS_UNARY_SILU: return x / (1.0f + expf(-x));
        case GS_UNARY_GELU: {
            const float c = 0.7978845608028654f;   /* sqrt(2 / pi) */
            return 0.5f * x * (1.0f + tanhf(c * x * (1.0f + 0.044715f * x * x)));
        }
        default: { const float r = x > 0.0f ? x : 0.0f; return r * r; }   /* SQR_RELU */
    }
}

#endif /* GS_CUDA_UNARY_CUH */
