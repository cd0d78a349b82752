/* ops_softmax.c - PLACEHOLDER until the kernel lands (fails loudly at run time). */
#include "../gs_internal.h"

void gs_cpu_op_soft_max(const gs_compute_params * p, gs_tensor * dst) { (void) dst; if (p->ith == 0) gs_compute_fail(p, GS_ERR_UNSUPPORTED, "soft_max: kernel not written yet"); }
