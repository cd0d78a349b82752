/*
 * vec_avx2.c - AVX2 kernels (compiled with AVX2 target flags, called
 * only when the CPU has them; see dispatch.c).
 */
#include "../gs_internal.h"

const gs_cpu_type_funcs gs_cpu_funcs_avx2[GS_TYPE_COUNT] = { 0 };
