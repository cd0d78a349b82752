/*
 * context.c - errors, contexts (arenas) and tensor creation/accessors.
 */
#include "gs_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- errors ------------------------------------------------------------ */
static _Thread_local char gs_error_msg[512];

gs_status gs_set_error(gs_status status, const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(gs_error_msg, sizeof(gs_error_msg), fmt, ap);
    va_end(ap);
    return status;
}

const char * gs_last_error(void) {
    return gs_error_msg;
}

/* ---- contexts ---------------------------------------------------------- */
struct gs_context {
    void * raw;           /* calloc'd block holding the arena               */
    uint8_t * mem;        /* arena: raw aligned up to GS_ALIGN, all zero    */
    size_t size;
    size_t used;
    bool no_alloc;
    /* heap blocks and objects freed with it (gs_context_own*, graph.c and
     * the scheduler's plans, backend.c's placements) */
    struct owned_entry { void * p; gs_destroy_fn destroy; } * owned;
    int n_owned, cap_owned;
};

gs_context_params gs_context_default_params(void) {
    gs_context_params p = { .mem_size = 16u << 20, .no_alloc = false };
    return p;
}

gs_status gs_context_new(const gs_context_params * params, gs_context ** out) {
    GS_CHECK_ARG(params && out, "gs_context_new: NULL argument");
    gs_init();
    *out = NULL;
    gs_context * ctx = calloc(1, sizeof(*ctx));
    if (!ctx) return gs_set_error(GS_ERR_OOM, "gs_context_new: out of memory");
    size_t size = (params->mem_size + GS_ALIGN - 1) / GS_ALIGN * GS_ALIGN;
    if (size < GS_ALIGN) size = GS_ALIGN;
    /* calloc: the arena starts zeroed, and large blocks come as fresh pages
     * the OS maps on first write (a KV cache costs memory as it fills) */
    ctx->raw = calloc(1, size + GS_ALIGN);
    if (!ctx->raw) {
        free(ctx);
        return gs_set_error(GS_ERR_OOM, "gs_context_new: cannot allocate %zu bytes", size);
    }
    ctx->mem = (uint8_t *) (((uintptr_t) ctx->raw + GS_ALIGN - 1) / GS_ALIGN * GS_ALIGN);
    ctx->size = size;
    ctx->no_alloc = params->no_alloc;
    *out = ctx;
    return GS_OK;
}

void gs_context_free(gs_context * ctx) {
    if (!ctx) return;
    /* destructors first (newest first): they wait for device work that may
     * still read or write the heap blocks and the arena freed below */
    for (int i = ctx->n_owned - 1; i >= 0; i--) {
        if (ctx->owned[i].destroy && ctx->owned[i].p) ctx->owned[i].destroy(ctx->owned[i].p);
    }
    for (int i = 0; i < ctx->n_owned; i++) if (!ctx->owned[i].destroy) free(ctx->owned[i].p);
    free(ctx->owned);
    free(ctx->raw);
    free(ctx);
}

gs_status gs_context_mem(const gs_context * ctx, size_t * used, size_t * total) {
    GS_CHECK_ARG(ctx, "gs_context_mem: NULL context");
    if (used) *used = ctx->used;
    if (total) *total = ctx->size;
    return GS_OK;
}

void * gs_context_alloc(gs_context * ctx, size_t n) {
    size_t n_al = (n + GS_ALIGN - 1) / GS_ALIGN * GS_ALIGN;
    if (n_al > ctx->size - ctx->used) return NULL;
    void * p = ctx->mem + ctx->used;
    ctx->used += n_al;
    return p;     /* zero: the arena is never handed out twice */
}

/* Ownership (gs_internal.h): destroy NULL means free(). */
gs_status gs_context_own_fn(gs_context * ctx, void * p, gs_destroy_fn destroy) {
    if (ctx->n_owned == ctx->cap_owned) {
        int cap = ctx->cap_owned ? 2 * ctx->cap_owned : 8;
        struct owned_entry * o = realloc(ctx->owned, (size_t) cap * sizeof(*o));
        if (!o) return gs_set_error(GS_ERR_OOM, "out of memory");
        ctx->owned = o;
        ctx->cap_owned = cap;
    }
    ctx->owned[ctx->n_owned++] = (struct owned_entry) { p, destroy };
    return GS_OK;
}

gs_status gs_context_own(gs_context * ctx, void * p) { return gs_context_own_fn(ctx, p, NULL); }

/* The newest entry holding p (-1: none). */
static int find_owned(const gs_context * ctx, const void * p) {
    for (int i = ctx->n_owned - 1; i >= 0; i--) if (ctx->owned[i].p == p) return i;
    return -1;
}

void gs_context_reown(gs_context * ctx, void * old_p, void * new_p) {
    const int i = find_owned(ctx, old_p);
    if (i >= 0) ctx->owned[i].p = new_p;
}

void gs_context_disown(gs_context * ctx, void * p) {
    const int i = find_owned(ctx, p);
    if (i < 0) return;
    memmove(&ctx->owned[i], &ctx->owned[i + 1], (size_t) (ctx->n_owned - i - 1) * sizeof(ctx->owned[0]));
    ctx->n_owned--;
}

/* ---- tensors ----------------------------------------------------------- */
size_t gs_type_row_size(gs_type type, int64_t n) {
    const gs_type_traits * tt = gs_get_type_traits(type);
    return (size_t) (n / tt->blck_size) * tt->type_size;
}

gs_status gs_tensor_alloc_meta(gs_context * ctx, gs_type type, int n_dims,
                               const int64_t * ne, gs_tensor ** out) {
    GS_CHECK_ARG(ctx && out, "NULL context or output pointer");
    GS_CHECK_ARG(n_dims >= 1 && n_dims <= GS_MAX_DIMS, "n_dims %d not in 1..4", n_dims);
    GS_CHECK_ARG(ne != NULL, "NULL shape");
    const gs_type_traits * tt = gs_get_type_traits(type);
    if (!tt) return gs_set_error(GS_ERR_TYPE, "unknown tensor type %d", (int) type);
    for (int i = 0; i < n_dims; i++) {
        if (ne[i] <= 0) return gs_set_error(GS_ERR_SHAPE, "dimension %d has size %lld (must be > 0)",
                                            i, (long long) ne[i]);
    }
    if (ne[0] % tt->blck_size != 0) {
        return gs_set_error(GS_ERR_SHAPE, "ne[0] = %lld is not a multiple of the %s block size %lld",
                            (long long) ne[0], tt->name, (long long) tt->blck_size);
    }
    gs_tensor * t = gs_context_alloc(ctx, sizeof(gs_tensor));
    if (!t) return gs_set_error(GS_ERR_OOM, "context arena exhausted (tensor metadata)");
    t->type = type;
    t->ctx = ctx;
    t->n_dims = n_dims;
    for (int i = 0; i < GS_MAX_DIMS; i++) t->ne[i] = i < n_dims ? ne[i] : 1;
    t->nb[0] = tt->type_size;
    t->nb[1] = gs_type_row_size(type, t->ne[0]);
    for (int i = 2; i < GS_MAX_DIMS; i++) t->nb[i] = t->nb[i - 1] * (size_t) t->ne[i - 1];
    *out = t;
    return GS_OK;
}

gs_status gs_new_tensor(gs_context * ctx, gs_type type, int n_dims,
                        const int64_t * ne, gs_tensor ** out) {
    gs_tensor * t;
    gs_status st = gs_tensor_alloc_meta(ctx, type, n_dims, ne, &t);
    if (st) return st;
    if (!ctx->no_alloc) {
        size_t n = gs_tensor_nbytes(t);
        t->data = gs_context_alloc(ctx, n);
        if (!t->data) {
            return gs_set_error(GS_ERR_OOM, "context arena exhausted: tensor needs %zu bytes, %zu free",
                                n, ctx->size - ctx->used);
        }
        t->flags |= GS_FLAG_ARENA;
    }
    *out = t;
    return GS_OK;
}

gs_status gs_tensor_set_data(gs_tensor * t, void * data) {
    GS_CHECK_ARG(t, "gs_tensor_set_data: NULL tensor");
    if (t->op != GS_OP_NONE) {
        return gs_set_error(GS_ERR_STATE, "tensor '%s' is an op result; only leaf tensors take external data",
                            t->name);
    }
    t->data = data;
    t->flags &= ~(uint32_t) GS_FLAG_ARENA;
    return GS_OK;
}

gs_status gs_tensor_get_data(const gs_tensor * t, void ** out) {
    GS_CHECK_ARG(t && out, "gs_tensor_get_data: NULL argument");
    *out = t->data;
    return GS_OK;
}

gs_status gs_tensor_set_name(gs_tensor * t, const char * name) {
    GS_CHECK_ARG(t && name, "gs_tensor_set_name: NULL argument");
    snprintf(t->name, sizeof(t->name), "%s", name);
    return GS_OK;
}

const char * gs_tensor_name(const gs_tensor * t) { return t ? t->name : ""; }
gs_type gs_tensor_type(const gs_tensor * t) { return t->type; }
int gs_tensor_n_dims(const gs_tensor * t) { return t->n_dims; }

gs_status gs_tensor_shape(const gs_tensor * t, int64_t * ne, size_t * nb) {
    GS_CHECK_ARG(t, "gs_tensor_shape: NULL tensor");
    for (int i = 0; i < GS_MAX_DIMS; i++) {
        if (ne) ne[i] = t->ne[i];
        if (nb) nb[i] = t->nb[i];
    }
    return GS_OK;
}

size_t gs_tensor_nbytes(const gs_tensor * t) {
    const gs_type_traits * tt = gs_get_type_traits(t->type);
    size_t n = gs_type_row_size(t->type, t->ne[0]);
    /* ne0 may be strided for non-quantized types */
    if (tt->blck_size == 1) n = (size_t) (t->ne[0] - 1) * t->nb[0] + tt->type_size;
    for (int i = 1; i < GS_MAX_DIMS; i++) n += (size_t) (t->ne[i] - 1) * t->nb[i];
    return n;
}

bool gs_is_contiguous(const gs_tensor * t) {
    const gs_type_traits * tt = gs_get_type_traits(t->type);
    if (t->nb[0] != tt->type_size) return false;
    if (t->nb[1] != gs_type_row_size(t->type, t->ne[0])) return false;
    for (int i = 2; i < GS_MAX_DIMS; i++) {
        if (t->nb[i] != t->nb[i - 1] * (size_t) t->ne[i - 1]) return false;
    }
    return true;
}

bool gs_tensor_is_contiguous(const gs_tensor * t) { return t && gs_is_contiguous(t); }

bool gs_same_shape(const gs_tensor * a, const gs_tensor * b) {
    for (int i = 0; i < GS_MAX_DIMS; i++) if (a->ne[i] != b->ne[i]) return false;
    return true;
}

gs_tensor * gs_view_base(gs_tensor * t) {
    while (t->view_src) t = t->view_src;
    return t;
}

gs_status gs_tensor_set_output(gs_tensor * t) {
    GS_CHECK_ARG(t, "gs_tensor_set_output: NULL tensor");
    t->flags |= GS_FLAG_OUTPUT;
    return GS_OK;
}
