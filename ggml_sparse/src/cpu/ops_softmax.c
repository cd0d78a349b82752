/*
 * ops_softmax.c - softmax over rows with an optional additive mask.
 *
 * a    F32 {ne0, ne1, ne2, ne3}, any strides.
 * mask NULL or F32 {ne0, >= ne1} (any strides): row i1 of the mask is added
 *      to row i1 of every (i2, i3) plane of a; -INFINITY hides a slot.
 * op_params[0]: scale (float bits).
 * dst  F32, a's shape, contiguous:
 *      dst row = softmax(a row * scale + mask row), computed stably by
 *      subtracting the row maximum. A row whose every slot is -INFINITY
 *      (fully masked) becomes all zeros rather than NaN.
 * Threads split rows.
 */
#include "../gs_internal.h"

#include <math.h>

void gs_cpu_op_soft_max(const gs_compute_params * p, gs_tensor * dst) {
    const gs_tensor * a = dst->src[0];
    const gs_tensor * mask = dst->src[1];
    float scale;
    memcpy(&scale, &dst->op_params[0], sizeof(float));
    const int64_t ne0 = a->ne[0], ne1 = a->ne[1], ne2 = a->ne[2];
    const size_t sa = a->nb[0] / sizeof(float);
    const size_t sm = mask ? mask->nb[0] / sizeof(float) : 0;

    int64_t r0, r1;
    gs_split_rows(gs_nrows(a), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        const int64_t i1 = r % ne1, i2 = (r / ne1) % ne2, i3 = r / (ne1 * ne2);
        const float * x = (const float *) ((const uint8_t *) a->data + i1 * a->nb[1] + i2 * a->nb[2] +
                                           i3 * a->nb[3]);
        float * z = (float *) ((uint8_t *) dst->data + i1 * dst->nb[1] + i2 * dst->nb[2] + i3 * dst->nb[3]);

        float max = -INFINITY;
        if (mask) {
            const float * m = (const float *) ((const uint8_t *) mask->data + i1 * mask->nb[1]);
            for (int64_t i = 0; i < ne0; i++) z[i] = x[i * sa] * scale + m[i * sm];
        } else {
            for (int64_t i = 0; i < ne0; i++) z[i] = x[i * sa] * scale;
        }
        for (int64_t i = 0; i < ne0; i++) max = z[i] > max ? z[i] : max;
        if (max == -INFINITY) {
            memset(z, 0, (size_t) ne0 * sizeof(float));
            continue;
        }
        double sum = 0.0;
        for (int64_t i = 0; i < ne0; i++) {
            z[i] = expf(z[i] - max);
            sum += z[i];
        }
        const float inv = (float) (1.0 / sum);
        for (int64_t i = 0; i < ne0; i++) z[i] *= inv;
    }
}
