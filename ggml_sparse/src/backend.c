/*
 * backend.c - the backend API over the backend table, the CPU backend, and
 * placing tensors on backends (gs_backend.h).
 */
#include "backend_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int64_t gs_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- the CPU backend ---------------------------------------------------- */
static size_t round_up(size_t n) { return (n + GS_ALIGN - 1) / GS_ALIGN * GS_ALIGN; }

static gs_status cpu_alloc(gs_backend * b, size_t n, void ** out) {
    *out = aligned_alloc(GS_ALIGN, round_up(n));
    if (!*out) return gs_set_error(GS_ERR_OOM, "backend 'cpu': cannot allocate %zu bytes", n);
    return GS_OK;
}

static gs_status cpu_release(gs_backend * b, void * p) {
    free(p);
    return GS_OK;
}

static gs_status cpu_copy(gs_backend * b, void * dst, const void * src, size_t n) {
    memcpy(dst, src, n);
    return GS_OK;
}

static int cpu_n_threads(const gs_backend * b) { return 0; }

static gs_status cpu_no_jobs(gs_backend * b, gs_job * job) {
    return gs_set_error(GS_ERR_INVALID_ARG, "backend 'cpu' runs no jobs: its splits run on the caller's pool");
}

static gs_status cpu_synchronize(gs_backend * b) { return GS_OK; }

static void cpu_drain(gs_backend * b) {}

static void cpu_stats(const gs_backend * b, gs_backend_stats * out) { memset(out, 0, sizeof(*out)); }

static void cpu_free(gs_backend * b) {}

static const gs_backend_iface cpu_iface = {
    .name = "cpu", .is_host = true,
    .alloc = cpu_alloc, .release = cpu_release, .set = cpu_copy, .get = cpu_copy,
    .contains = NULL, .n_threads = cpu_n_threads,
    .submit = cpu_no_jobs, .wait = cpu_no_jobs, .synchronize = cpu_synchronize, .drain = cpu_drain,
    .stats = cpu_stats, .free = cpu_free,
};

/* Immutable: never written after initialisation. */
static const gs_backend cpu_backend = { &cpu_iface };

gs_backend * gs_backend_cpu(void) { return (gs_backend *) &cpu_backend; }

/* ---- the API over the table --------------------------------------------- */
void gs_backend_free(gs_backend * b) {
    if (b && b != &cpu_backend) b->iface->free(b);
}

const char * gs_backend_name(const gs_backend * b) { return b ? b->iface->name : "cpu"; }

bool gs_backend_is_host(const gs_backend * b) { return !b || b->iface->is_host; }

gs_status gs_backend_alloc(gs_backend * b, size_t nbytes, void ** out) {
    GS_CHECK_ARG(b && out, "gs_backend_alloc: NULL argument");
    GS_CHECK_ARG(nbytes > 0, "gs_backend_alloc: nbytes must be > 0");
    *out = NULL;
    return b->iface->alloc(b, nbytes, out);
}

gs_status gs_backend_release(gs_backend * b, void * p) {
    GS_CHECK_ARG(b, "gs_backend_release: NULL backend");
    return p ? b->iface->release(b, p) : GS_OK;
}

gs_status gs_backend_get_stats(const gs_backend * b, gs_backend_stats * out) {
    GS_CHECK_ARG(b && out, "gs_backend_get_stats: NULL argument");
    b->iface->stats(b, out);
    return GS_OK;
}

gs_status gs_backend_synchronize(gs_backend * b) {
    GS_CHECK_ARG(b, "gs_backend_synchronize: NULL backend");
    return b->iface->synchronize(b);
}

gs_status gs_backend_submit(gs_backend * b, gs_graph * g) {
    GS_CHECK_ARG(b && g, "gs_backend_submit: NULL argument");
    if (b->iface->is_host) return gs_set_error(GS_ERR_INVALID_ARG, "gs_backend_submit: the CPU runs no jobs; "
                                               "use gs_graph_compute");
    if (!g->planned_threads) return gs_set_error(GS_ERR_STATE, "gs_backend_submit: the graph is not planned");
    return gs_sched_submit(g, b);
}

/* ---- placing tensors ---------------------------------------------------- */
/* A placed tensor is registered with its context (gs_context_own_fn) while
 * it is placed, so freeing the context gives its block back. */
static gs_backend * placed_on(const gs_backend * b) {
    return b && !b->iface->is_host ? (gs_backend *) b : NULL;
}

/* The context's destructor of a placement: after the device's queued work,
 * the block goes back (the tensor struct, in the context's arena, is freed
 * after this). */
static void placement_destroy(void * p) {
    gs_tensor * t = p;
    gs_backend * b = t->backend;
    if (!b) return;
    b->iface->drain(b);
    b->iface->release(b, t->data);
    t->data = t->host_data;
    t->host_data = NULL;
    t->backend = NULL;
}

/* Move a placed tensor back to its host memory. */
static gs_status to_host(gs_tensor * t) {
    gs_backend * b = t->backend;
    gs_status st = b->iface->get(b, t->host_data, t->data, gs_tensor_nbytes(t));
    if (st) return st;
    st = b->iface->release(b, t->data);
    if (st) return st;
    t->data = t->host_data;
    t->host_data = NULL;
    t->backend = NULL;
    return GS_OK;
}

static gs_status move(gs_tensor * t, gs_backend * b) {
    const size_t n = gs_tensor_nbytes(t);
    void * dev = NULL;
    if (b) {
        gs_status st = b->iface->alloc(b, n, &dev);
        if (st) {
            char why[400];
            snprintf(why, sizeof(why), "%s", gs_last_error());
            return gs_set_error(st, "cannot place tensor '%s' (%zu bytes) on backend '%s': %s", t->name, n,
                                b->iface->name, why);
        }
    }
    if (t->backend) {
        gs_status st = to_host(t);
        if (st) {
            if (dev) b->iface->release(b, dev);
            return st;
        }
    }
    if (!b) return GS_OK;
    gs_status st = b->iface->set(b, dev, t->data, n);
    if (st) {
        b->iface->release(b, dev);
        return st;
    }
    t->host_data = t->data;
    t->data = dev;
    t->backend = b;
    return GS_OK;
}

gs_status gs_tensor_set_backend(gs_tensor * t, gs_backend * b) {
    GS_CHECK_ARG(t, "gs_tensor_set_backend: NULL tensor");
    if (t->op != GS_OP_NONE || t->view_src) {
        return gs_set_error(GS_ERR_STATE, "gs_tensor_set_backend: '%s' is an op result or a view; only leaf tensors "
                            "with data are placed", t->name);
    }
    if (!t->data) return gs_set_error(GS_ERR_STATE, "gs_tensor_set_backend: tensor '%s' has no data", t->name);
    b = placed_on(b);
    if (b == t->backend) return GS_OK;
    const bool was_placed = t->backend != NULL;
    if (!was_placed && gs_context_own_fn(t->ctx, t, placement_destroy)) {
        return gs_set_error(GS_ERR_OOM, "cannot place tensor '%s': out of memory", t->name);
    }
    gs_status st = move(t, b);
    if (!t->backend) gs_context_disown(t->ctx, t);
    return st;
}

gs_status gs_tensor_release_backend(gs_tensor * t) {
    GS_CHECK_ARG(t, "gs_tensor_release_backend: NULL tensor");
    if (!t->backend) return GS_OK;
    gs_status st = t->backend->iface->release(t->backend, t->data);
    if (st) return st;
    t->data = t->host_data;
    t->host_data = NULL;
    t->backend = NULL;
    gs_context_disown(t->ctx, t);
    return GS_OK;
}

gs_backend * gs_tensor_backend(const gs_tensor * t) {
    if (!t) return NULL;
    while (t->view_src) t = t->view_src;
    return t->op == GS_OP_NONE ? t->backend : NULL;
}

static gs_status check_range(const gs_tensor * t, size_t offset, size_t n, const char * fn) {
    if (!t->data) return gs_set_error(GS_ERR_STATE, "%s: tensor '%s' has no data", fn, t->name);
    const size_t nbytes = gs_tensor_nbytes(t);
    if (offset > nbytes || n > nbytes - offset) {
        return gs_set_error(GS_ERR_INVALID_ARG, "%s: %zu bytes at offset %zu exceed tensor '%s' (%zu bytes)", fn, n,
                            offset, t->name, nbytes);
    }
    return GS_OK;
}

gs_status gs_tensor_read(const gs_tensor * t, size_t offset, void * dst, size_t n) {
    GS_CHECK_ARG(t && (dst || !n), "gs_tensor_read: NULL argument");
    gs_status st = check_range(t, offset, n, "gs_tensor_read");
    if (st || !n) return st;
    gs_backend * b = gs_tensor_backend(t);
    const uint8_t * src = (const uint8_t *) t->data + offset;
    if (!b) {
        memcpy(dst, src, n);
        return GS_OK;
    }
    return b->iface->get(b, dst, src, n);
}

gs_status gs_tensor_write(gs_tensor * t, size_t offset, const void * src, size_t n) {
    GS_CHECK_ARG(t && (src || !n), "gs_tensor_write: NULL argument");
    gs_status st = check_range(t, offset, n, "gs_tensor_write");
    if (st || !n) return st;
    gs_backend * b = gs_tensor_backend(t);
    uint8_t * dst = (uint8_t *) t->data + offset;
    if (!b) {
        memcpy(dst, src, n);
        return GS_OK;
    }
    return b->iface->set(b, dst, src, n);
}
