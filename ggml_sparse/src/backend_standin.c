/*
 * backend_standin.c - the stand-in device: a device made of the CPU.
 *
 * Memory: one arena of exactly the requested bytes, handed out first-fit
 * (lowest address that fits) in multiples of GS_ALIGN; a request that does
 * not fit fails with the free bytes in the message. The host never touches
 * the arena except through the counted copies (set/get here, and the copies
 * of a job).
 * Work: a worker thread takes jobs from a FIFO queue; a job copies its
 * inputs into the arena, runs its nodes with the CPU kernels on the
 * stand-in's own thread pool (the worker is its thread 0) and copies its
 * results out. Submitting returns at once; waiting is explicit, as with a
 * GPU stream.
 */
#include "backend_impl.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    gs_backend base;               /* first: a gs_backend * is a standin *  */
    /* memory */
    pthread_mutex_t mem_mu;
    uint8_t * arena;
    size_t size;
    gs_arena mem;                  /* its blocks (backend_arena.c)          */
    /* work */
    pthread_mutex_t mu;
    pthread_cond_t cv_work;        /* a job was queued, or stop             */
    pthread_cond_t cv_done;        /* a job finished                        */
    gs_job * head, * tail;
    bool running;                  /* the worker is inside a job            */
    bool stop;
    bool started;
    gs_status async_status;        /* first error of an async job           */
    char async_msg[GS_JOB_MSG];
    pthread_t thread;
    gs_threadpool * pool;
    int n_threads;
    /* counters */
    _Atomic uint64_t h2d_bytes, h2d_copies, d2h_bytes, d2h_copies, splits, syncs;
    _Atomic int64_t busy_ns, last_start_ns, last_end_ns;
} standin;

/* ---- memory ------------------------------------------------------------- */
static gs_status standin_alloc(gs_backend * b, size_t n, void ** out) {
    standin * s = (standin *) b;
    size_t offs = 0;
    pthread_mutex_lock(&s->mem_mu);
    gs_status st = gs_arena_alloc(&s->mem, "standin", n, &offs);
    pthread_mutex_unlock(&s->mem_mu);
    if (st == GS_OK) *out = s->arena + offs;
    return st;
}

static gs_status standin_release(gs_backend * b, void * p) {
    standin * s = (standin *) b;
    const uint8_t * q = p;
    const size_t offs = q >= s->arena ? (size_t) (q - s->arena) : SIZE_MAX;
    pthread_mutex_lock(&s->mem_mu);
    gs_status st = gs_arena_release(&s->mem, "standin", offs, p);
    pthread_mutex_unlock(&s->mem_mu);
    return st;
}

static bool standin_contains(const gs_backend * b, const void * p, size_t n) {
    const standin * s = (const standin *) b;
    const uint8_t * q = p;
    return q >= s->arena && q <= s->arena + s->size && n <= (size_t) (s->arena + s->size - q);
}

/* ---- the queue ---------------------------------------------------------- */
/* Wait until the queue is empty and no job runs (caller holds mu). */
static void drain_locked(standin * s) {
    while (s->head || s->running) pthread_cond_wait(&s->cv_done, &s->mu);
}

static void count_copy(_Atomic uint64_t * bytes, _Atomic uint64_t * copies, size_t n) {
    atomic_fetch_add(bytes, n);
    atomic_fetch_add(copies, 1);
}

static gs_status blocking_copy(standin * s, void * dst, const void * src, size_t n, bool to_device) {
    const void * dev = to_device ? dst : src;
    if (!standin_contains(&s->base, dev, n)) {
        return gs_set_error(GS_ERR_INVALID_ARG, "backend 'standin': %zu bytes at %p are not in its memory", n, dev);
    }
    pthread_mutex_lock(&s->mu);
    drain_locked(s);
    pthread_mutex_unlock(&s->mu);
    memcpy(dst, src, n);
    if (to_device) count_copy(&s->h2d_bytes, &s->h2d_copies, n);
    else count_copy(&s->d2h_bytes, &s->d2h_copies, n);
    return GS_OK;
}

static gs_status standin_set(gs_backend * b, void * dst, const void * src, size_t n) {
    return blocking_copy((standin *) b, dst, src, n, true);
}

static gs_status standin_get(gs_backend * b, void * dst, const void * src, size_t n) {
    return blocking_copy((standin *) b, dst, src, n, false);
}

/* Lower *fail_at to index. */
static void note_failure(atomic_int * fail_at, int index) {
    int cur = atomic_load(fail_at);
    while (index < cur && !atomic_compare_exchange_weak(fail_at, &cur, index)) {}
}

static void run_job(standin * s, gs_job * job) {
    const gs_split_exec * e = job->exec;
    job->start_ns = gs_now_ns();
    if (job->fail_at && atomic_load(job->fail_at) < job->index) {
        job->status = GS_ERR_STATE;
        snprintf(job->msg, sizeof(job->msg), "split %d on backend 'standin' was skipped: an earlier split of its "
                 "graph failed", job->index);
        job->end_ns = job->start_ns;
        return;
    }
    for (int i = 0; i < e->n_in; i++) {
        memcpy(e->in[i].dst, e->in[i].src, e->in[i].n);
        count_copy(&s->h2d_bytes, &s->h2d_copies, e->in[i].n);
    }
    int k = 0;
    char msg[GS_JOB_MSG - 160];    /* room for the node's name in job->msg */
    gs_status st = gs_run_nodes(s->pool, s->n_threads, e->nodes, e->sync, e->n_nodes, e->wdata, e->wsize, &k, msg,
                                sizeof(msg));
    if (st) {
        const gs_tensor * node = e->nodes[k];
        snprintf(job->msg, sizeof(job->msg), "node '%s' (%s) on backend 'standin': %s", node->name,
                 gs_op_str(node->op), msg);
        if (job->fail_at) note_failure(job->fail_at, job->index);
    } else {
        for (int i = 0; i < e->n_out; i++) {
            memcpy(e->out[i].dst, e->out[i].src, e->out[i].n);
            count_copy(&s->d2h_bytes, &s->d2h_copies, e->out[i].n);
        }
    }
    job->status = st;
    job->end_ns = gs_now_ns();
    atomic_fetch_add(&s->busy_ns, job->end_ns - job->start_ns);
    atomic_store(&s->last_start_ns, job->start_ns);
    atomic_store(&s->last_end_ns, job->end_ns);
    atomic_fetch_add(&s->splits, 1);
}

static void * worker_main(void * arg) {
    standin * s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->head && !s->stop) pthread_cond_wait(&s->cv_work, &s->mu);
        if (!s->head) break;                 /* stop, and nothing left */
        gs_job * job = s->head;
        s->head = job->next;
        if (!s->head) s->tail = NULL;
        s->running = true;
        pthread_mutex_unlock(&s->mu);
        run_job(s, job);
        pthread_mutex_lock(&s->mu);
        s->running = false;
        if (job->async && job->status && !s->async_status) {
            s->async_status = job->status;
            snprintf(s->async_msg, sizeof(s->async_msg), "%s", job->msg);
        }
        atomic_store(&job->state, GS_JOB_DONE);
        pthread_cond_broadcast(&s->cv_done);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static gs_status standin_submit(gs_backend * b, gs_job * job) {
    standin * s = (standin *) b;
    job->next = NULL;
    job->status = GS_OK;
    job->msg[0] = '\0';
    pthread_mutex_lock(&s->mu);
    atomic_store(&job->state, GS_JOB_QUEUED);
    if (s->tail) s->tail->next = job;
    else s->head = job;
    s->tail = job;
    pthread_cond_signal(&s->cv_work);
    pthread_mutex_unlock(&s->mu);
    return GS_OK;
}

static gs_status standin_wait(gs_backend * b, gs_job * job) {
    standin * s = (standin *) b;
    pthread_mutex_lock(&s->mu);
    while (atomic_load(&job->state) == GS_JOB_QUEUED) pthread_cond_wait(&s->cv_done, &s->mu);
    pthread_mutex_unlock(&s->mu);
    atomic_fetch_add(&s->syncs, 1);
    if (job->status) return gs_set_error(job->status, "%s", job->msg);
    return GS_OK;
}

static void standin_drain(gs_backend * b) {
    standin * s = (standin *) b;
    pthread_mutex_lock(&s->mu);
    drain_locked(s);
    pthread_mutex_unlock(&s->mu);
}

static gs_status standin_synchronize(gs_backend * b) {
    standin * s = (standin *) b;
    char msg[GS_JOB_MSG];
    pthread_mutex_lock(&s->mu);
    drain_locked(s);
    const gs_status st = s->async_status;
    snprintf(msg, sizeof(msg), "%s", s->async_msg);
    s->async_status = GS_OK;
    s->async_msg[0] = '\0';
    pthread_mutex_unlock(&s->mu);
    atomic_fetch_add(&s->syncs, 1);
    if (st) return gs_set_error(st, "%s", msg);
    return GS_OK;
}

/* ---- the rest of the table ---------------------------------------------- */
static int standin_n_threads(const gs_backend * b) { return ((const standin *) b)->n_threads; }

static void standin_stats(const gs_backend * b, gs_backend_stats * out) {
    standin * s = (standin *) b;
    memset(out, 0, sizeof(*out));
    out->h2d_bytes = atomic_load(&s->h2d_bytes);
    out->h2d_copies = atomic_load(&s->h2d_copies);
    out->d2h_bytes = atomic_load(&s->d2h_bytes);
    out->d2h_copies = atomic_load(&s->d2h_copies);
    out->splits = atomic_load(&s->splits);
    out->syncs = atomic_load(&s->syncs);
    out->busy_ns = atomic_load(&s->busy_ns);
    out->last_job_start_ns = atomic_load(&s->last_start_ns);
    out->last_job_end_ns = atomic_load(&s->last_end_ns);
    pthread_mutex_lock(&s->mem_mu);
    out->arena_bytes = s->size;
    out->arena_used = s->mem.used_bytes;
    out->arena_peak = s->mem.peak_bytes;
    pthread_mutex_unlock(&s->mem_mu);
}

static void standin_free(gs_backend * b) {
    standin * s = (standin *) b;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;                      /* the worker drains the queue first */
        pthread_cond_broadcast(&s->cv_work);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    gs_threadpool_free(s->pool);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->mem_mu);
    pthread_cond_destroy(&s->cv_work);
    pthread_cond_destroy(&s->cv_done);
    gs_arena_destroy(&s->mem);
    free(s->arena);
    free(s);
}

static const gs_backend_iface standin_iface = {
    .name = "standin", .is_host = false,
    .alloc = standin_alloc, .release = standin_release, .set = standin_set, .get = standin_get,
    .contains = standin_contains, .n_threads = standin_n_threads,
    .submit = standin_submit, .wait = standin_wait, .synchronize = standin_synchronize,
    .drain = standin_drain, .stats = standin_stats, .free = standin_free,
};

gs_status gs_backend_standin_new(size_t arena_bytes, int n_threads, gs_backend ** out) {
    GS_CHECK_ARG(out, "gs_backend_standin_new: NULL output");
    *out = NULL;
    GS_CHECK_ARG(arena_bytes >= 1 && arena_bytes <= SIZE_MAX / 2, "gs_backend_standin_new: bad arena size %zu",
                 arena_bytes);
    GS_CHECK_ARG(n_threads >= 1 && n_threads <= 512, "gs_backend_standin_new: n_threads must be in 1..512, got %d",
                 n_threads);
    gs_init();
    standin * s = calloc(1, sizeof(*s));
    if (!s) return gs_set_error(GS_ERR_OOM, "gs_backend_standin_new: out of memory");
    s->base.iface = &standin_iface;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->mem_mu, NULL);
    pthread_cond_init(&s->cv_work, NULL);
    pthread_cond_init(&s->cv_done, NULL);
    s->size = arena_bytes;
    s->n_threads = n_threads;
    /* untouched pages of a large arena cost no memory until used */
    s->arena = aligned_alloc(GS_ALIGN, (arena_bytes + GS_ALIGN - 1) / GS_ALIGN * GS_ALIGN);
    if (!s->arena || !gs_arena_init(&s->mem, arena_bytes)) {
        standin_free(&s->base);
        return gs_set_error(GS_ERR_OOM, "gs_backend_standin_new: cannot allocate an arena of %zu bytes", arena_bytes);
    }
    gs_status st = gs_threadpool_new(n_threads, &s->pool);
    if (st) {
        standin_free(&s->base);
        return st;
    }
    if (pthread_create(&s->thread, NULL, worker_main, s) != 0) {
        standin_free(&s->base);
        return gs_set_error(GS_ERR_OOM, "gs_backend_standin_new: cannot start the worker thread");
    }
    s->started = true;
    *out = &s->base;
    return GS_OK;
}
