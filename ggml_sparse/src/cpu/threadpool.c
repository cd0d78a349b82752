/*
 * threadpool.c - a persistent pool of worker threads and the in-compute
 * barrier.
 *
 * gs_threadpool_run(n, fn) wakes the workers, runs fn(arg, 0, n) on the
 * calling thread and fn(arg, i, n) on workers i < n (workers i >= n skip the
 * job), and returns when all are done.
 * Workers spin briefly for the next job (decode calls come back to back),
 * then sleep on a condition variable so an idle pool costs no CPU.
 */
#include "../gs_internal.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define gs_cpu_relax() _mm_pause()
#else
#define gs_cpu_relax() ((void) 0)
#endif

#define SPIN_BEFORE_SLEEP 200000   /* pause iterations (~ a few ms)        */
#define SPIN_BEFORE_YIELD 2000     /* in barriers: then sched_yield()       */

struct gs_threadpool {
    int n_threads;
    pthread_t * threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int generation;         /* bumped for every job                 */
    atomic_int n_running;          /* workers still inside the current job */
    atomic_bool stop;
    gs_pool_fn fn;
    void * arg;
    int n_active;                  /* threads taking part in the job       */
};

typedef struct {
    gs_threadpool * tp;
    int ith;
} worker_arg;

static void * worker_main(void * p) {
    worker_arg * wa = p;
    gs_threadpool * tp = wa->tp;
    const int ith = wa->ith;
    free(wa);
    int seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&tp->generation, memory_order_acquire) == seen &&
               !atomic_load_explicit(&tp->stop, memory_order_acquire)) {
            if (++spins < SPIN_BEFORE_SLEEP) {
                gs_cpu_relax();
                continue;
            }
            pthread_mutex_lock(&tp->mu);
            while (atomic_load(&tp->generation) == seen && !atomic_load(&tp->stop)) {
                pthread_cond_wait(&tp->cv, &tp->mu);
            }
            pthread_mutex_unlock(&tp->mu);
        }
        if (atomic_load(&tp->stop)) break;
        seen = atomic_load(&tp->generation);
        if (ith < tp->n_active) tp->fn(tp->arg, ith, tp->n_active);
        atomic_fetch_sub_explicit(&tp->n_running, 1, memory_order_release);
    }
    return NULL;
}

gs_status gs_threadpool_new(int n_threads, gs_threadpool ** out) {
    GS_CHECK_ARG(out, "gs_threadpool_new: NULL output");
    GS_CHECK_ARG(n_threads >= 1 && n_threads <= 512, "n_threads must be in 1..512, got %d", n_threads);
    gs_init();
    *out = NULL;
    gs_threadpool * tp = calloc(1, sizeof(*tp));
    if (!tp) return gs_set_error(GS_ERR_OOM, "gs_threadpool_new: out of memory");
    tp->n_threads = n_threads;
    pthread_mutex_init(&tp->mu, NULL);
    pthread_cond_init(&tp->cv, NULL);
    tp->threads = calloc((size_t) n_threads, sizeof(pthread_t));
    if (!tp->threads) {
        free(tp);
        return gs_set_error(GS_ERR_OOM, "gs_threadpool_new: out of memory");
    }
    for (int i = 1; i < n_threads; i++) {
        /* fill the argument before the thread starts reading it */
        worker_arg * wa = malloc(sizeof(*wa));
        if (wa) {
            wa->tp = tp;
            wa->ith = i;
        }
        int rc = wa ? pthread_create(&tp->threads[i], NULL, worker_main, wa) : -1;
        if (rc != 0) {
            free(wa);
            tp->n_threads = i;  /* only join the ones that started */
            gs_threadpool_free(tp);
            return gs_set_error(GS_ERR_OOM, "gs_threadpool_new: cannot start thread %d", i);
        }
    }
    *out = tp;
    return GS_OK;
}

void gs_threadpool_free(gs_threadpool * tp) {
    if (!tp) return;
    pthread_mutex_lock(&tp->mu);
    atomic_store(&tp->stop, true);
    pthread_cond_broadcast(&tp->cv);
    pthread_mutex_unlock(&tp->mu);
    for (int i = 1; i < tp->n_threads; i++) pthread_join(tp->threads[i], NULL);
    pthread_mutex_destroy(&tp->mu);
    pthread_cond_destroy(&tp->cv);
    free(tp->threads);
    free(tp);
}

int gs_threadpool_n_threads(const gs_threadpool * tp) {
    return tp ? tp->n_threads : 0;
}

void gs_threadpool_run(gs_threadpool * tp, int n, gs_pool_fn fn, void * arg) {
    if (n > tp->n_threads) n = tp->n_threads;
    if (n <= 1) {
        fn(arg, 0, 1);
        return;
    }
    tp->fn = fn;
    tp->arg = arg;
    tp->n_active = n;
    atomic_store(&tp->n_running, tp->n_threads - 1);
    pthread_mutex_lock(&tp->mu);
    atomic_fetch_add_explicit(&tp->generation, 1, memory_order_release);
    pthread_cond_broadcast(&tp->cv);
    pthread_mutex_unlock(&tp->mu);
    fn(arg, 0, n);
    int spins = 0;
    while (atomic_load_explicit(&tp->n_running, memory_order_acquire) > 0) {
        if (++spins < SPIN_BEFORE_YIELD) gs_cpu_relax();
        else sched_yield();
    }
}

/* ---- barrier used by kernels -------------------------------------------- */
void gs_barrier(const gs_compute_params * p) {
    if (p->nth == 1) return;
    gs_compute_state * s = p->state;
    const int passed = atomic_load_explicit(&s->n_passed, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&s->n_arrived, 1, memory_order_acq_rel) == p->nth - 1) {
        atomic_store_explicit(&s->n_arrived, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->n_passed, 1, memory_order_release);
        return;
    }
    int spins = 0;
    while (atomic_load_explicit(&s->n_passed, memory_order_acquire) == passed) {
        if (++spins < SPIN_BEFORE_YIELD) gs_cpu_relax();
        else sched_yield();
    }
}
