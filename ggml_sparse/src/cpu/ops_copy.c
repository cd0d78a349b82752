/* ops_copy.c - PLACEHOLDER until the kernel lands (fails loudly at run time). */
#include "../gs_internal.h"

void gs_cpu_op_cpy(const gs_compute_params * p, gs_tensor * dst) { (void) dst; if (p->ith == 0) gs_compute_fail(p, GS_ERR_UNSUPPORTED, "cpy: kernel not written yet"); }
void gs_cpu_op_set_rows(const gs_compute_params * p, gs_tensor * dst) { (void) dst; if (p->ith == 0) gs_compute_fail(p, GS_ERR_UNSUPPORTED, "set_rows: kernel not written yet"); }
void gs_cpu_op_get_rows(const gs_compute_params * p, gs_tensor * dst) { (void) dst; if (p->ith == 0) gs_compute_fail(p, GS_ERR_UNSUPPORTED, "get_rows: kernel not written yet"); }
