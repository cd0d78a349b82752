/* ops_rope.c - PLACEHOLDER until the kernel lands (fails loudly at run time). */
#include "../gs_internal.h"

void gs_cpu_op_rope(const gs_compute_params * p, gs_tensor * dst) { (void) dst; if (p->ith == 0) gs_compute_fail(p, GS_ERR_UNSUPPORTED, "rope: kernel not written yet"); }
