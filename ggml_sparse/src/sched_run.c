/*
 * sched_run.c - running a graph planned over backends, queueing it on a
 * device, giving its plan back, and the split queries (gs_backend.h).
 *
 * gs_graph_compute walks the splits in order. A device split goes to its
 * device as jobs, its segments (backend_impl.h: copies in, nodes, copies
 * out), and the host goes on at once. A host split makes its copies of
 * placed leaves (counted by their device) and runs its nodes on the
 * caller's pool, waiting for a segment in flight only where that segment's
 * wait point is (sched.c find_waits): before the split, or before the node
 * that needs it - the nodes before run meanwhile. Another device's split
 * waits before it is queued. Every segment still in flight is waited for
 * at the end: one synchronisation per segment, only later than a
 * sequential run's. The first error in split order is the one reported,
 * after every queued job has finished.
 */
#include "backend_impl.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

static bool queued(const gs_sched * sc) {
    for (int g = 0; g < sc->n_segs; g++) {
        if (atomic_load(&sc->segs[g].job.state) == GS_JOB_QUEUED) return true;
    }
    return false;
}

/* The error of the earliest split that failed. */
typedef struct {
    gs_status st;
    int split;
    char msg[GS_JOB_MSG];
} first_error;

static void note_error(first_error * e, gs_status st, int split) {
    if (!st || (e->st && e->split < split)) return;
    e->st = st;
    e->split = split;
    snprintf(e->msg, sizeof(e->msg), "%s", gs_last_error());
}

static void wait_seg(gs_sched * sc, int g, first_error * err) {
    const int s = sc->segs[g].split;
    gs_backend * b = sc->backends[sc->splits[s].backend];
    note_error(err, b->iface->wait(b, &sc->segs[g].job), s);
}

/* Wait for the segments in flight whose wait point is split s at a node
 * position <= pos; keep the others in the list. */
static void wait_due(gs_sched * sc, int * n_inflight, int s, int pos, first_error * err) {
    int kept = 0;
    for (int k = 0; k < *n_inflight; k++) {
        const int g = sc->inflight[k];
        const gs_sched_seg * sd = &sc->segs[g];
        if (sd->wait_at < s || (sd->wait_at == s && sd->wait_pos <= pos)) wait_seg(sc, g, err);
        else sc->inflight[kept++] = g;
    }
    *n_inflight = kept;
}

/* The next node position of split s (after pos) at which a segment in
 * flight is due, or n. */
static int next_due(const gs_sched * sc, int n_inflight, int s, int pos, int n) {
    int next = n;
    for (int k = 0; k < n_inflight; k++) {
        const gs_sched_seg * sd = &sc->segs[sc->inflight[k]];
        if (sd->wait_at == s && sd->wait_pos > pos && sd->wait_pos < next) next = sd->wait_pos;
    }
    return next;
}

/* A host split: its copies of placed leaves, then its nodes on the pool in
 * runs cut where a device split in flight must have finished. */
static void run_host_split(gs_sched * sc, int s, gs_threadpool * tp, int nth, int * n_inflight,
                           first_error * err) {
    gs_sched_split * sp = &sc->splits[s];
    const gs_split_exec * e = &sp->exec;
    sp->start_ns = gs_now_ns();
    for (int c = 0; c < e->n_in && !err->st; c++) {
        note_error(err, e->in[c].dev->iface->get(e->in[c].dev, e->in[c].dst, e->in[c].src, e->in[c].n), s);
    }
    for (int k = 0; k < e->n_nodes && !err->st;) {
        const int cut = next_due(sc, *n_inflight, s, k, e->n_nodes);
        char msg[GS_JOB_MSG];
        gs_status st = gs_run_nodes(tp, nth, e->nodes + k, e->sync + k, cut - k, e->wdata, e->wsize, NULL, msg,
                                    sizeof(msg));
        if (st) {
            gs_set_error(st, "%s", msg);
            note_error(err, st, s);
        }
        if (cut < e->n_nodes && !err->st) wait_due(sc, n_inflight, s, cut, err);
        k = cut;
    }
    sp->end_ns = gs_now_ns();
}

gs_status gs_sched_compute(gs_graph * g, gs_threadpool * tp) {
    gs_sched * sc = g->sched;
    if (queued(sc)) {
        return gs_set_error(GS_ERR_STATE, "gs_graph_compute: the graph is still queued on a device "
                            "(gs_backend_synchronize first)");
    }
    const int pool = gs_threadpool_n_threads(tp);
    const int nth = pool < sc->n_threads ? pool : sc->n_threads;
    atomic_store(&sc->fail_at, INT_MAX);
    first_error err = { .st = GS_OK };
    int n_inflight = 0;
    for (int s = 0; s < sc->n_splits && !err.st; s++) {
        gs_sched_split * sp = &sc->splits[s];
        wait_due(sc, &n_inflight, s, 0, &err);       /* what s needs before it starts */
        if (err.st) break;
        if (sp->backend == 0) {
            run_host_split(sc, s, tp, nth, &n_inflight, &err);
            continue;
        }
        gs_backend * b = sc->backends[sp->backend];
        for (int q = sp->seg0; q < sp->seg0 + sp->n_seg && !err.st; q++) {
            gs_job * job = &sc->segs[q].job;
            job->async = false;
            job->fail_at = &sc->fail_at;
            gs_status st = b->iface->submit(b, job);
            if (st) note_error(&err, st, s);
            else sc->inflight[n_inflight++] = q;
        }
    }
    for (int k = 0; k < n_inflight; k++) wait_seg(sc, sc->inflight[k], &err);
    return err.st ? gs_set_error(err.st, "%s", err.msg) : GS_OK;
}

gs_status gs_sched_submit(gs_graph * g, gs_backend * b) {
    gs_sched * sc = g->sched;
    if (!sc || sc->n_splits != 1 || sc->backends[sc->splits[0].backend] != b) {
        return gs_set_error(GS_ERR_INVALID_ARG, "gs_backend_submit: the graph does not run entirely on backend '%s' "
                            "(%d splits)", b->iface->name, gs_graph_n_splits(g));
    }
    if (queued(sc)) {
        return gs_set_error(GS_ERR_STATE, "gs_backend_submit: the graph is still queued (gs_backend_synchronize "
                            "first)");
    }
    gs_status st = GS_OK;
    for (int q = 0; q < sc->n_segs && !st; q++) {
        gs_job * job = &sc->segs[q].job;
        job->async = true;
        job->fail_at = NULL;
        st = b->iface->submit(b, job);
    }
    return st;
}

void gs_sched_destroy(void * p) {
    gs_sched * sc = p;
    for (int g = 0; g < sc->n_segs; g++) {
        gs_job * job = &sc->segs[g].job;
        if (atomic_load(&job->state) == GS_JOB_QUEUED) {
            gs_backend * b = sc->backends[sc->splits[sc->segs[g].split].backend];
            b->iface->wait(b, job);         /* an async error stays for gs_backend_synchronize */
        }
    }
    for (int b = 1; b < sc->n_backends; b++) {
        if (sc->dev_buf[b]) sc->backends[b]->iface->release(sc->backends[b], sc->dev_buf[b]);
    }
    free(sc);
}

void gs_sched_drop(gs_graph * g) {
    gs_sched * sc = g->sched;
    if (!sc) return;
    gs_context_disown(g->ctx, sc);
    gs_sched_destroy(sc);
    g->sched = NULL;
    g->planned_threads = 0;
}

gs_status gs_graph_release_backends(gs_graph * g) {
    GS_CHECK_ARG(g, "gs_graph_release_backends: NULL graph");
    gs_sched_drop(g);
    return GS_OK;
}

/* ---- queries ------------------------------------------------------------ */
static bool has_computed_node(const gs_graph * g) {
    for (int i = 0; i < g->n_nodes; i++) if (gs_is_computed(g->nodes[i])) return true;
    return false;
}

int gs_graph_n_splits(const gs_graph * g) {
    if (!g || !g->planned_threads) return 0;
    if (g->sched) return g->sched->n_splits;
    return has_computed_node(g) ? 1 : 0;
}

gs_status gs_graph_split_info(const gs_graph * g, int i, gs_split_info * out) {
    GS_CHECK_ARG(g && out, "gs_graph_split_info: NULL argument");
    const int n = gs_graph_n_splits(g);
    GS_CHECK_ARG(i >= 0 && i < n, "gs_graph_split_info: split %d out of range (%d splits)", i, n);
    memset(out, 0, sizeof(*out));
    if (!g->sched) {
        out->backend = gs_backend_cpu();
        out->n_nodes = g->n_nodes;
        return GS_OK;
    }
    const gs_sched_split * sp = &g->sched->splits[i];
    out->backend = g->sched->backends[sp->backend];
    out->first_node = sp->i0;
    out->n_nodes = sp->i1 - sp->i0;
    out->n_copies_in = sp->exec.n_in;
    out->bytes_in = sp->bytes_in;
    out->n_copies_out = sp->exec.n_out;
    out->bytes_out = sp->bytes_out;
    if (sp->backend == 0) {
        out->start_ns = sp->start_ns;
        out->end_ns = sp->end_ns;
    } else {
        const gs_job * first = &g->sched->segs[sp->seg0].job, * last = &g->sched->segs[sp->seg0 + sp->n_seg - 1].job;
        if (atomic_load(&first->state) == GS_JOB_DONE && atomic_load(&last->state) == GS_JOB_DONE) {
            out->start_ns = first->start_ns;
            out->end_ns = last->end_ns;
        }
    }
    return GS_OK;
}

size_t gs_graph_copy_bytes(const gs_graph * g) {
    return g && g->planned_threads && g->sched ? g->sched->copy_bytes : 0;
}

gs_status gs_graph_backend_mem(const gs_graph * g, const gs_backend * b, size_t * compute_bytes,
                               size_t * work_bytes) {
    GS_CHECK_ARG(g && b, "gs_graph_backend_mem: NULL argument");
    if (!g->planned_threads) return gs_set_error(GS_ERR_STATE, "gs_graph_backend_mem: graph is not planned");
    size_t c = 0, w = 0;
    if (g->sched) {
        for (int k = 0; k < g->sched->n_backends; k++) {
            if (g->sched->backends[k] == b) {
                c = g->sched->compute_bytes[k];
                w = g->sched->work_bytes[k];
            }
        }
    } else if (b->iface->is_host) {
        c = g->compute_bytes;
        w = g->work_bytes;
    }
    if (compute_bytes) *compute_bytes = c;
    if (work_bytes) *work_bytes = w;
    return GS_OK;
}
