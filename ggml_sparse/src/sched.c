/*
 * sched.c - planning a graph over several backends (gs_graph_plan_backends):
 * which backend runs each node, the splits, the copies at their boundaries,
 * and the memory of each backend.
 *
 * Memory: every block of the plan - a result, a copy into a split, a host
 * copy of a device result - has an allocation time and a release time on
 * one clock of three ticks per node (3i: a split starting at node i makes
 * its copies; 3i + 1: node i's result; 3i + 2: blocks last read by node i
 * are released). The events are replayed in time order through the
 * first-fit allocator of gs_graph_plan, one per backend, allocations before
 * releases at the same tick.
 *
 * Concurrency (sched_run.c): a device split is queued on its device and the
 * host goes on with the following splits; it waits for the split only at
 * the split's wait point, the first later node (or split) that needs it
 * finished (find_waits), or at the end. A device runs its splits one at a time in
 * order, so its own memory is reused as if sequentially. Host memory a
 * device split touches - the host tensors it copies in, the host copies of
 * its results it writes - is held on the clock from the split's start to
 * its wait point (hold_for_devices), so no host split running meanwhile is
 * given any of it.
 */
#include "backend_impl.h"

#include <stdio.h>
#include <stdlib.h>

/* ---- where tensors live ------------------------------------------------- */
static int leaf_backend(const gs_plan * p, const gs_tensor * leaf) {
    if (!leaf->backend) return 0;
    for (int b = 1; b < p->nb; b++) if (p->bk[b] == leaf->backend) return b;
    return -1;
}

int gs_plan_loc(const gs_plan * p, const gs_tensor * t) {
    const gs_tensor * base = gs_view_base_c(t);
    return base->op != GS_OP_NONE ? p->home[gs_plan_idx(base)] : leaf_backend(p, base);
}

/* Sources that hold an op's weights (or caches): the node runs where they
 * live when they are leaves. */
static int weight_srcs(const gs_tensor * node, int w[2]) {
    switch (node->op) {
        case GS_OP_MUL_MAT:
        case GS_OP_GET_ROWS:
        case GS_OP_MUL_MAT_SPARSE:
        case GS_OP_AXPY_SPARSE:
        case GS_OP_SPARSE_FFN_BUNDLE:
        case GS_OP_MUL_MAT_ID:
            w[0] = 0;
            return 1;
        case GS_OP_ATTENTION:
            w[0] = 1;
            w[1] = 2;
            return 2;
        case GS_OP_SPARSE_FFN_UP_DOWN:
            w[0] = 0;
            w[1] = 1;
            return 2;
        case GS_OP_SPARSE_INDEX_REMAP:     /* where its map lives */
            w[0] = 1;
            return 1;
        default:
            return 0;
    }
}

static bool is_placed_leaf(const gs_tensor * t) {
    const gs_tensor * base = gs_view_base_c(t);
    return base->op == GS_OP_NONE && base->backend;
}

/* home[i] for every node (gs_backend.h has the rules); *reads_placed: some
 * computed node reads a placed leaf. */
static gs_status assign(gs_plan * p, bool * reads_placed) {
    *reads_placed = false;
    for (int i = 0; i < p->n; i++) {
        gs_tensor * node = p->g->nodes[i];
        for (int s = 0; s < GS_MAX_SRC; s++) {
            const gs_tensor * src = node->src[s];
            if (!src) continue;
            const gs_tensor * base = gs_view_base_c(src);
            if (base->op != GS_OP_NONE) continue;
            if (!base->data) {
                return gs_set_error(GS_ERR_STATE, "tensor '%s' (input of '%s') has no data", base->name, node->name);
            }
            if (leaf_backend(p, base) < 0) {
                return gs_set_error(GS_ERR_INVALID_ARG, "gs_graph_plan_backends: tensor '%s' (input of '%s') lives "
                                    "on backend '%s', which is not in the list", base->name, node->name,
                                    gs_backend_name(base->backend));
            }
            if (base->backend && gs_is_computed(node)) *reads_placed = true;
        }
        if (node->view_src) {          /* views, and writes into a tensor */
            p->home[i] = gs_plan_loc(p, node);
            continue;
        }
        int h = -1, w[2];
        const int nw = weight_srcs(node, w);
        for (int k = 0; k < nw && h < 0; k++) {
            const gs_tensor * src = node->src[w[k]];
            if (src && gs_view_base_c(src)->op == GS_OP_NONE) h = gs_plan_loc(p, src);
        }
        for (int s = 0; s < GS_MAX_SRC && h < 0; s++) {
            if (node->src[s] && is_placed_leaf(node->src[s])) h = gs_plan_loc(p, node->src[s]);
        }
        /* where its computed sources run, a device before the CPU (ggml's
         * scheduler also prefers devices there): a residual add of an
         * offloaded layer stays on the device although the residual stream
         * began on the CPU */
        int first = -1;
        for (int s = 0; s < GS_MAX_SRC && h < 0; s++) {
            if (!node->src[s] || node->src[s]->op == GS_OP_NONE) continue;
            const int hs = p->home[gs_plan_idx(node->src[s])];
            if (first < 0) first = hs;
            if (hs != 0) h = hs;
        }
        if (h < 0) h = first;
        p->home[i] = h < 0 ? 0 : h;
    }
    return GS_OK;
}

/* Maximal runs of computed nodes on one backend; the views around them
 * join a neighbour so the ranges cover every node. */
static void make_splits(gs_plan * p) {
    p->n_sp = 0;
    for (int i = 0; i < p->n; i++) {
        if (!gs_is_computed(p->g->nodes[i])) continue;
        if (p->n_sp == 0 || p->sp[p->n_sp - 1].backend != p->home[i]) {
            p->sp[p->n_sp++] = (gs_sched_split) { .backend = p->home[i], .i0 = i, .i1 = i + 1 };
        } else {
            p->sp[p->n_sp - 1].i1 = i + 1;
        }
    }
    if (!p->n_sp) return;
    p->sp[0].i0 = 0;
    for (int s = 1; s < p->n_sp; s++) p->sp[s - 1].i1 = p->sp[s].i0;
    p->sp[p->n_sp - 1].i1 = p->n;
    for (int s = 0; s < p->n_sp; s++) {
        for (int i = p->sp[s].i0; i < p->sp[s].i1; i++) p->split_of[i] = s;
    }
}

/* ---- copies ------------------------------------------------------------- */
gs_copy_rec * gs_plan_find_copy(const gs_plan * p, int s, const gs_tensor * base) {
    const int end = s + 1 < p->n_sp && p->cp_first[s + 1] >= 0 ? p->cp_first[s + 1] : p->n_cp;
    for (int c = p->cp_first[s]; c < end; c++) if (p->cp[c].base == base) return &p->cp[c];
    return NULL;
}

static gs_status add_copy(gs_plan * p, int s, const gs_tensor * base, bool d2h, int reader) {
    gs_copy_rec * c = gs_plan_find_copy(p, s, base);
    if (!c) {
        if (p->n_cp == p->cap_cp) {
            int cap = p->cap_cp ? 2 * p->cap_cp : 64;
            gs_copy_rec * grown = realloc(p->cp, (size_t) cap * sizeof(*grown));
            if (!grown) return gs_set_error(GS_ERR_OOM, "gs_graph_plan_backends: out of memory");
            p->cp = grown;
            p->cap_cp = cap;
        }
        c = &p->cp[p->n_cp++];
        *c = (gs_copy_rec) { .base = base, .split = s, .block = -1, .last_reader = reader, .d2h = d2h };
    }
    if (reader > c->last_reader) c->last_reader = reader;
    return GS_OK;
}

static void note_read(int * t_free, int t) {
    if (*t_free != GS_SCHED_NEVER && t > *t_free) *t_free = t;
}

/* The copies each split makes at its start, the device results the host
 * needs, and when each result's memory can go. */
static gs_status find_copies(gs_plan * p) {
    for (int j = 0; j < p->n; j++) {
        p->t_free[j] = 3 * j + 2;
        p->hc_free[j] = -1;
        p->host_copy[j] = false;
        p->cut_after[j] = false;
    }
    for (int s = 0; s < p->n_sp; s++) p->cp_first[s] = -1;
    for (int s = 0; s < p->n_sp; s++) {
        const int B = p->sp[s].backend;
        p->cp_first[s] = p->n_cp;
        for (int i = p->sp[s].i0; i < p->sp[s].i1; i++) {
            const gs_tensor * node = p->g->nodes[i];
            if (!gs_is_computed(node)) continue;
            for (int k = 0; k < GS_MAX_SRC; k++) {
                if (!node->src[k]) continue;
                const gs_tensor * base = gs_view_base_c(node->src[k]);
                const bool leaf = base->op == GS_OP_NONE;
                const int H = gs_plan_loc(p, base);
                const int j = leaf ? -1 : gs_plan_idx(base);
                gs_status st = GS_OK;
                if (H == B) {
                    if (!leaf) note_read(&p->t_free[j], 3 * i + 2);
                } else if (B == 0) {          /* device memory read on the host */
                    if (leaf) {
                        st = add_copy(p, s, base, true, i);
                    } else {
                        p->host_copy[j] = p->cut_after[j] = true;
                        note_read(&p->hc_free[j], 3 * i + 2);
                    }
                } else {                      /* read on a device: copied from the host */
                    if (leaf && H != 0) {
                        return gs_set_error(GS_ERR_UNSUPPORTED, "gs_graph_plan_backends: '%s' reads tensor '%s' "
                                            "placed on another device (backend '%s'); copies between devices are "
                                            "not supported", node->name, base->name, gs_backend_name(base->backend));
                    }
                    if (!leaf && H == 0) note_read(&p->t_free[j], 3 * p->sp[s].i0);
                    if (!leaf && H != 0) {
                        p->host_copy[j] = p->cut_after[j] = true;
                        note_read(&p->hc_free[j], 3 * p->sp[s].i0);
                    }
                    st = add_copy(p, s, base, false, i);
                }
                if (st) return st;
            }
        }
    }
    /* outputs (and results an output views) stay readable on the host */
    for (int i = 0; i < p->n; i++) {
        const gs_tensor * node = p->g->nodes[i];
        const gs_tensor * base = gs_view_base_c(node);
        if (!(node->flags & GS_FLAG_OUTPUT) || base->op == GS_OP_NONE) continue;
        const int j = gs_plan_idx(base);
        if (p->home[j] == 0) {
            p->t_free[j] = GS_SCHED_NEVER;
        } else {
            p->host_copy[j] = true;
            p->hc_free[j] = GS_SCHED_NEVER;
        }
    }
    /* a device result copied out lives to the end of its split */
    for (int j = 0; j < p->n; j++) {
        if (p->host_copy[j]) note_read(&p->t_free[j], 3 * (p->sp[p->split_of[j]].i1 - 1) + 2);
    }
    return GS_OK;
}

/* ---- concurrency -------------------------------------------------------- */
/* The segments of the device splits (backend_impl.h, gs_sched_seg): a cut
 * after each node another backend reads, unless only views follow it. Host
 * splits get one (unused) segment id too, so every split has some. */
static void find_segments(gs_plan * p) {
    int g = 0;
    for (int s = 0; s < p->n_sp; s++) {
        const int B = p->sp[s].backend;
        int last = -1;
        for (int i = p->sp[s].i0; i < p->sp[s].i1; i++) if (gs_is_computed(p->g->nodes[i])) last = i;
        p->seg_first[s] = g++;
        for (int i = p->sp[s].i0; i < p->sp[s].i1; i++) {
            p->seg_of[i] = B == 0 ? -1 : g - 1;
            if (B != 0 && i < last && p->cut_after[i] && gs_is_computed(p->g->nodes[i])) g++;
        }
    }
    p->seg_first[p->n_sp] = g;
    p->n_seg = g;
}

static void wait_before(gs_plan * p, int seg, int node) {
    if (node < p->wait_at[seg]) p->wait_at[seg] = node;
}

/* The wait point of each device segment, as the graph index of the first
 * node the host may not start before it finished: a host node reading one
 * of its results (through its host copy), the start of another device's
 * split reading one, a host node writing into a tensor its split copies in
 * (the first segment makes the copies), the start of a host split copying a
 * leaf placed on its device (that copy drains the device anyway). A later
 * job of the same device needs no wait: a device runs its jobs in order.
 * n: the end of the graph. */
static void find_waits(gs_plan * p) {
    for (int k = 0; k < p->n_seg; k++) p->wait_at[k] = p->n;
    for (int r = 1; r < p->n_sp; r++) {
        const int B = p->sp[r].backend, i0 = p->sp[r].i0;
        for (int i = i0; i < p->sp[r].i1; i++) {
            const gs_tensor * node = p->g->nodes[i];
            if (!gs_is_computed(node)) continue;
            for (int k = 0; k < GS_MAX_SRC; k++) {
                if (!node->src[k]) continue;
                const gs_tensor * base = gs_view_base_c(node->src[k]);
                if (base->op != GS_OP_NONE) {
                    const int j = gs_plan_idx(base);
                    if (p->home[j] != 0 && p->home[j] != B) wait_before(p, p->seg_of[j], B == 0 ? i : i0);
                } else if (B == 0 && base->backend) {
                    const int D = gs_plan_loc(p, base);
                    for (int d = 0; d < r; d++) {
                        if (p->sp[d].backend != D) continue;
                        for (int g = p->seg_first[d]; g < p->seg_first[d + 1]; g++) wait_before(p, g, i0);
                    }
                }
            }
            if (B != 0 || !node->view_src) continue;
            const gs_tensor * dst = gs_view_base_c(node);
            for (int d = 0; d < r; d++) {
                if (p->sp[d].backend != 0 && gs_plan_find_copy(p, d, dst)) wait_before(p, p->seg_first[d], i);
            }
        }
    }
}

/* Host blocks a device segment copies from or into live until the host
 * knows it finished - it waited for that segment or a later one of the
 * split - at tick 3w: nothing is allocated after that tick before the
 * wait. The copies in are the first segment's. */
static void hold_for_devices(gs_plan * p) {
    for (int s = 0; s < p->n_sp; s++) {
        if (p->sp[s].backend == 0) continue;
        const int g0 = p->seg_first[s], g1 = p->seg_first[s + 1];
        for (int g = g1 - 2; g >= g0; g--) {           /* known done: the earliest wait at or after */
            if (p->wait_at[g + 1] < p->wait_at[g]) p->wait_at[g] = p->wait_at[g + 1];
        }
        const int end = s + 1 < p->n_sp ? p->cp_first[s + 1] : p->n_cp;
        for (int c = p->cp_first[s]; c < end; c++) {
            const gs_tensor * base = p->cp[c].base;
            if (base->op == GS_OP_NONE) continue;
            const int j = gs_plan_idx(base);
            note_read(p->home[j] == 0 ? &p->t_free[j] : &p->hc_free[j], 3 * p->wait_at[g0]);
        }
        for (int j = p->sp[s].i0; j < p->sp[s].i1; j++) {
            if (p->host_copy[j] && p->home[j] == p->sp[s].backend) {
                note_read(&p->hc_free[j], 3 * p->wait_at[p->seg_of[j]]);
            }
        }
    }
}

/* ---- memory ------------------------------------------------------------- */
typedef struct {
    int t;
    int is_free;
    int b;
} event;

static int event_cmp(const void * x, const void * y) {
    const event * a = x, * b = y;
    if (a->t != b->t) return a->t < b->t ? -1 : 1;
    if (a->is_free != b->is_free) return a->is_free - b->is_free;
    return a->b - b->b;
}

static int add_block(gs_plan * p, int backend, size_t nbytes, int t_alloc, int t_free) {
    if (t_free < t_alloc) t_free = t_alloc;
    p->blk[p->n_blk] = (gs_plan_block) { backend, gs_aligned(nbytes), t_alloc, t_free, 0 };
    return p->n_blk++;
}

/* Blocks of every result, host copy and split copy, placed per backend. */
static gs_status place_blocks(gs_plan * p) {
    int max_blk = p->n_cp;
    for (int j = 0; j < p->n; j++) max_blk += 2;
    p->blk = malloc((size_t) (max_blk ? max_blk : 1) * sizeof(gs_plan_block));
    event * ev = malloc((size_t) (2 * max_blk + 1) * sizeof(event));
    gs_block * lists = malloc((size_t) p->nb * (size_t) (max_blk + 1) * sizeof(gs_block));
    gs_status st = GS_OK;
    if (!p->blk || !ev || !lists) {
        st = gs_set_error(GS_ERR_OOM, "gs_graph_plan_backends: out of memory");
        goto done;
    }
    for (int j = 0; j < p->n; j++) {
        const gs_tensor * node = p->g->nodes[j];
        p->node_blk[j] = p->hc_blk[j] = -1;
        if (gs_owns_memory(node)) {
            p->node_blk[j] = add_block(p, p->home[j], gs_tensor_nbytes(node), 3 * j + 1, p->t_free[j]);
        }
        if (p->host_copy[j]) {        /* taken before its split starts */
            const int start = p->sp[p->split_of[j]].i0;
            p->hc_blk[j] = add_block(p, 0, gs_tensor_nbytes(node), 3 * start, p->hc_free[j]);
        }
    }
    for (int c = 0; c < p->n_cp; c++) {
        const gs_sched_split * sp = &p->sp[p->cp[c].split];
        p->cp[c].block = add_block(p, sp->backend, gs_tensor_nbytes(p->cp[c].base), 3 * sp->i0,
                                   3 * p->cp[c].last_reader + 2);
    }
    int n_ev = 0;
    for (int b = 0; b < p->n_blk; b++) {
        ev[n_ev++] = (event) { p->blk[b].t_alloc, 0, b };
        if (p->blk[b].t_free != GS_SCHED_NEVER) ev[n_ev++] = (event) { p->blk[b].t_free, 1, b };
    }
    qsort(ev, (size_t) n_ev, sizeof(event), event_cmp);
    gs_allocator a[GS_MAX_BACKENDS];
    for (int b = 0; b < p->nb; b++) a[b] = (gs_allocator) { lists + (size_t) b * (size_t) (max_blk + 1), 0, 0 };
    for (int e = 0; e < n_ev; e++) {
        gs_plan_block * blk = &p->blk[ev[e].b];
        if (!ev[e].is_free) blk->offs = gs_alloc_block(&a[blk->backend], blk->size);
        else gs_free_block(&a[blk->backend], blk->offs, blk->size);
    }
    for (int b = 0; b < p->nb; b++) {
        p->compute[b] = a[b].end;
        p->work[b] = 0;
    }
    for (int i = 0; i < p->n; i++) {
        const gs_tensor * node = p->g->nodes[i];
        if (!gs_is_computed(node)) continue;
        const int B = p->home[i];
        const int nth = B == 0 ? p->n_threads : p->bk[B]->iface->n_threads(p->bk[B]);
        const size_t w = gs_cpu_work_size(node, nth);
        if (w > p->work[B]) p->work[B] = w;
    }
done:
    free(ev);
    free(lists);
    return st;
}

/* One block of each backend's memory for its part of the plan. */
static gs_status alloc_buffers(gs_plan * p, void * dev_buf[GS_MAX_BACKENDS], uint8_t ** host_buf) {
    for (int b = 1; b < p->nb; b++) {
        const size_t total = p->compute[b] + gs_aligned(p->work[b]);
        if (!total) continue;
        gs_status st = p->bk[b]->iface->alloc(p->bk[b], total, &dev_buf[b]);
        if (st) {
            char why[400];
            snprintf(why, sizeof(why), "%s", gs_last_error());
            for (int c = 1; c < b; c++) if (dev_buf[c]) p->bk[c]->iface->release(p->bk[c], dev_buf[c]);
            for (int c = 1; c < b; c++) dev_buf[c] = NULL;
            return gs_set_error(st, "gs_graph_plan_backends: backend '%s' cannot hold the graph's %zu bytes "
                                "(intermediates and copies %zu, scratch %zu): %s", p->bk[b]->iface->name, total,
                                p->compute[b], gs_aligned(p->work[b]), why);
        }
        p->base_addr[b] = dev_buf[b];
    }
    const size_t host_total = p->compute[0] + gs_aligned(p->work[0]);
    *host_buf = NULL;
    if (host_total) {
        *host_buf = aligned_alloc(GS_ALIGN, host_total);
        if (!*host_buf) {
            for (int b = 1; b < p->nb; b++) {
                if (dev_buf[b]) p->bk[b]->iface->release(p->bk[b], dev_buf[b]);
                dev_buf[b] = NULL;
            }
            return gs_set_error(GS_ERR_OOM, "gs_graph_plan_backends: cannot allocate %zu bytes", host_total);
        }
    }
    p->base_addr[0] = *host_buf;
    return GS_OK;
}

/* What the host sees: host results at their blocks, device results at their
 * host copies (NULL without one), views following what they view. */
static void set_host_data(gs_plan * p) {
    for (int i = 0; i < p->n; i++) {
        gs_tensor * node = p->g->nodes[i];
        if (gs_owns_memory(node)) {
            if (p->home[i] == 0) node->data = p->base_addr[0] + p->blk[p->node_blk[i]].offs;
            else node->data = p->host_copy[i] ? p->base_addr[0] + p->blk[p->hc_blk[i]].offs : NULL;
        } else if (node->view_src) {
            node->data = node->view_src->data ? (uint8_t *) node->view_src->data + node->view_offs : NULL;
        }
    }
}

/* ---- the entry point ---------------------------------------------------- */
static gs_status check_list(gs_backend * const * backends, int n_backends) {
    GS_CHECK_ARG(backends, "gs_graph_plan_backends: NULL backend list");
    GS_CHECK_ARG(n_backends >= 1 && n_backends <= GS_MAX_BACKENDS,
                 "gs_graph_plan_backends: %d backends (1..%d)", n_backends, GS_MAX_BACKENDS);
    GS_CHECK_ARG(backends[0] && backends[0]->iface->is_host,
                 "gs_graph_plan_backends: backends[0] must be the CPU");
    for (int b = 1; b < n_backends; b++) {
        GS_CHECK_ARG(backends[b], "gs_graph_plan_backends: backends[%d] is NULL", b);
        GS_CHECK_ARG(!backends[b]->iface->is_host, "gs_graph_plan_backends: backends[%d] ('%s') is a host backend; "
                     "only backends[0] may be", b, backends[b]->iface->name);
        for (int c = 0; c < b; c++) {
            GS_CHECK_ARG(backends[c] != backends[b], "gs_graph_plan_backends: backend %d is listed twice", b);
        }
    }
    return GS_OK;
}

gs_status gs_graph_plan_backends(gs_graph * g, gs_backend * const * backends, int n_backends, int n_threads) {
    GS_CHECK_ARG(g, "gs_graph_plan_backends: NULL graph");
    GS_CHECK_ARG(n_threads >= 1, "gs_graph_plan_backends: n_threads must be >= 1");
    gs_status st = check_list(backends, n_backends);
    if (st) return st;
    gs_sched_drop(g);
    g->planned_threads = 0;
    const int n = g->n_nodes;
    const size_t nn = (size_t) (n ? n : 1);
    gs_plan p = { .g = g, .bk = backends, .nb = n_backends, .n = n, .n_threads = n_threads };
    int * ints = malloc((9 * nn + 1) * sizeof(int));
    p.host_copy = malloc(2 * nn * sizeof(bool));
    p.sp = malloc(nn * sizeof(gs_sched_split));
    p.cp_first = malloc((nn + 1) * sizeof(int));
    void * dev_buf[GS_MAX_BACKENDS] = { 0 };
    uint8_t * host_buf = NULL;
    gs_sched * sc = NULL;
    if (!ints || !p.host_copy || !p.sp || !p.cp_first) {
        st = gs_set_error(GS_ERR_OOM, "gs_graph_plan_backends: out of memory");
        goto done;
    }
    p.home = ints;
    p.split_of = ints + nn;
    p.node_blk = ints + 2 * nn;
    p.hc_blk = ints + 3 * nn;
    p.t_free = ints + 4 * nn;
    p.hc_free = ints + 5 * nn;
    p.wait_at = ints + 6 * nn;
    p.seg_of = ints + 7 * nn;
    p.seg_first = ints + 8 * nn;
    p.cut_after = p.host_copy + nn;
    for (int i = 0; i < n; i++) g->nodes[i]->op_params[GS_MAX_OP_PARAMS - 1] = i;
    bool reads_placed;
    st = assign(&p, &reads_placed);
    if (st) goto done;
    make_splits(&p);
    if (p.n_sp == 0 || (p.n_sp == 1 && p.sp[0].backend == 0 && !reads_placed)) {
        st = gs_graph_plan(g, n_threads);    /* all on the CPU: exactly the CPU plan */
        goto done;
    }
    st = find_copies(&p);
    if (!st) {
        find_segments(&p);
        find_waits(&p);
        hold_for_devices(&p);
        st = place_blocks(&p);
    }
    if (!st) st = alloc_buffers(&p, dev_buf, &host_buf);
    if (st) goto done;
    set_host_data(&p);
    st = gs_plan_build(&p, &sc);
    if (st) goto done;
    for (int b = 0; b < n_backends; b++) {
        sc->backends[b] = backends[b];
        sc->dev_buf[b] = dev_buf[b];
        sc->compute_bytes[b] = p.compute[b];
        sc->work_bytes[b] = gs_aligned(p.work[b]);
    }
    sc->n_backends = n_backends;
    sc->n_threads = n_threads;
    if (gs_context_own_fn(g->ctx, sc, gs_sched_destroy)) {
        st = GS_ERR_OOM;
        goto done;
    }
    if (g->buffer) {
        gs_context_reown(g->ctx, g->buffer, host_buf);
        free(g->buffer);
    } else if (host_buf && gs_context_own(g->ctx, host_buf)) {
        gs_context_disown(g->ctx, sc);
        st = GS_ERR_OOM;
        goto done;
    }
    g->buffer = host_buf;
    g->compute_bytes = sc->compute_bytes[0];
    g->work_bytes = sc->work_bytes[0];
    g->sched = sc;
    g->planned_threads = n_threads;
    sc = NULL;
    host_buf = NULL;
    for (int b = 0; b < GS_MAX_BACKENDS; b++) dev_buf[b] = NULL;
done:
    for (int i = 0; i < n; i++) g->nodes[i]->op_params[GS_MAX_OP_PARAMS - 1] = 0;
    for (int b = 1; b < n_backends; b++) if (dev_buf[b]) backends[b]->iface->release(backends[b], dev_buf[b]);
    free(host_buf);
    free(sc);
    free(ints);
    free(p.host_copy);
    free(p.sp);
    free(p.cp_first);
    free(p.cp);
    free(p.blk);
    return st;
}
