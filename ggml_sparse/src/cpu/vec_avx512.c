/*
 * vec_avx512.c - AVX512 kernels (compiled with AVX512 target flags, called
 * only when the CPU has them; see dispatch.c).
 */
#include "../gs_internal.h"

const gs_cpu_type_funcs gs_cpu_funcs_avx512[GS_TYPE_COUNT] = { 0 };
