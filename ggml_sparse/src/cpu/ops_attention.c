/* ops_attention.c - PLACEHOLDER until the kernel lands (fails loudly at run time). */
#include "../gs_internal.h"

void gs_cpu_op_attention(const gs_compute_params * p, gs_tensor * dst) { (void) dst; if (p->ith == 0) gs_compute_fail(p, GS_ERR_UNSUPPORTED, "attention: kernel not written yet"); }
size_t gs_cpu_attention_work_size(const gs_tensor * dst, int n_threads) { (void) dst; (void) n_threads; return 0; }
