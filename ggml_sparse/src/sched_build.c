/*
 * sched_build.c - turning a plan over backends into what runs: per split its
 * copies, its node list and barriers (gs_plan_build).
 *
 * The graph's own tensors keep the host's view (sched.c set_host_data), so
 * a device split runs on twins: a shadow of each of its nodes (a copy of the
 * node struct whose data is its place in the device's memory and whose
 * sources are the sources' twins there) and mirrors of what they read (a
 * copy of a source struct whose data points at the source's bytes in the
 * device's memory: the device's own result, a placed leaf, or the split's
 * copy of a host tensor). A host split runs on the graph's nodes, except a
 * node reading a placed leaf, whose shadow reads the split's host copy.
 * Kernels read only data, shapes and strides of a node and its sources, so
 * a twin computes exactly what the node would.
 */
#include "backend_impl.h"

#include <limits.h>
#include <stdlib.h>

typedef struct {
    gs_plan * p;
    gs_tensor * twins;        /* NULL while counting                       */
    int n_twins;
    gs_tensor ** shadow;      /* per node: its twin in the current split   */
} builder;

static uint8_t * block_addr(const gs_plan * p, int block) {
    return p->base_addr[p->blk[block].backend] + p->blk[block].offs;
}

static size_t chain_offset(const gs_tensor * t) {
    size_t off = 0;
    for (; t->view_src; t = t->view_src) off += t->view_offs;
    return off;
}

/* Where base's bytes are in split s's memory. */
static uint8_t * addr_in(const gs_plan * p, int s, const gs_tensor * base) {
    const int B = p->sp[s].backend;
    if (base->op == GS_OP_NONE) {
        if (gs_plan_loc(p, base) == B) return base->data;
    } else {
        const int j = gs_plan_idx(base);
        if (p->home[j] == B) return block_addr(p, p->node_blk[j]);
        if (B == 0 && p->host_copy[j]) return block_addr(p, p->hc_blk[j]);
    }
    const gs_copy_rec * c = gs_plan_find_copy(p, s, base);
    return c ? block_addr(p, c->block) : NULL;
}

static gs_tensor * new_twin(builder * b, gs_tensor * t, void * data) {
    if (!b->twins) {
        b->n_twins++;
        return t;
    }
    gs_tensor * w = &b->twins[b->n_twins++];
    *w = *t;
    w->data = data;
    w->op_params[GS_MAX_OP_PARAMS - 1] = 0;
    return w;
}

/* What split s reads in place of t. */
static gs_tensor * resolve(builder * b, int s, gs_tensor * t) {
    const gs_plan * p = b->p;
    if (t->op != GS_OP_NONE && b->shadow[gs_plan_idx(t)]) return b->shadow[gs_plan_idx(t)];
    const gs_tensor * base = gs_view_base_c(t);
    if (p->sp[s].backend == 0) {
        if (base->op != GS_OP_NONE || !base->backend) return t;      /* host memory */
    } else if (t == base && base->op == GS_OP_NONE && gs_plan_loc(p, base) == p->sp[s].backend) {
        return t;                                                    /* a leaf placed here */
    }
    return new_twin(b, t, addr_in(p, s, base) + chain_offset(t));
}

static bool reads_placed_leaf(const gs_tensor * node) {
    for (int k = 0; k < GS_MAX_SRC; k++) {
        if (!node->src[k]) continue;
        const gs_tensor * base = gs_view_base_c(node->src[k]);
        if (base->op == GS_OP_NONE && base->backend) return true;
    }
    return false;
}

/* Node list of split s (twins where needed); returns its length. With
 * b->twins NULL only counts. */
static int build_split(builder * b, int s, gs_tensor ** run) {
    const gs_plan * p = b->p;
    const int B = p->sp[s].backend;
    int n_run = 0;
    for (int i = p->sp[s].i0; i < p->sp[s].i1; i++) {
        gs_tensor * node = p->g->nodes[i];
        if (!gs_is_computed(node)) continue;
        gs_tensor * r = node;
        if (B != 0 || reads_placed_leaf(node)) {
            void * data = node->data;
            if (B != 0) {
                data = gs_owns_memory(node) ? block_addr(p, p->node_blk[i])
                                            : addr_in(p, s, gs_view_base_c(node)) + chain_offset(node);
            }
            gs_tensor * srcs[GS_MAX_SRC];
            for (int k = 0; k < GS_MAX_SRC; k++) srcs[k] = node->src[k] ? resolve(b, s, node->src[k]) : NULL;
            r = new_twin(b, node, data);
            if (b->twins) memcpy(r->src, srcs, sizeof(srcs));
            b->shadow[i] = r;
        }
        if (run) run[n_run] = r;
        n_run++;
    }
    for (int i = p->sp[s].i0; i < p->sp[s].i1; i++) b->shadow[i] = NULL;
    return n_run;
}

static bool in_memory(const gs_backend * bk, const gs_tensor * t) {
    return bk->iface->contains(bk, t->data, gs_tensor_nbytes(t));
}

/* Every node of a device split writes and reads only that device's memory;
 * no node of a host split touches a device's memory. */
static gs_status check_split(const gs_plan * p, const gs_sched_split * sp) {
    const gs_backend * dev = p->bk[sp->backend];
    for (int k = 0; k < sp->exec.n_nodes; k++) {
        const gs_tensor * node = sp->exec.nodes[k];
        char why[256];
        if (sp->backend != 0 && dev->iface->supports && !dev->iface->supports(dev, node, why, sizeof(why))) {
            return gs_set_error(GS_ERR_UNSUPPORTED, "gs_graph_plan_backends: node '%s' (%s) cannot run on backend "
                                "'%s': %s", node->name, gs_op_str(node->op), dev->iface->name, why);
        }
        for (int m = -1; m < GS_MAX_SRC; m++) {
            const gs_tensor * t = m < 0 ? node : node->src[m];
            if (!t) continue;
            if (!t->data) {
                return gs_set_error(GS_ERR_STATE, "gs_graph_plan_backends: internal error: '%s' (%s, source %d of "
                                    "'%s', %s) has no memory on backend '%s'", t->name, gs_op_str(t->op), m,
                                    node->name, gs_op_str(node->op), p->bk[sp->backend]->iface->name);
            }
            for (int b = 1; b < p->nb; b++) {
                const gs_backend * bk = p->bk[b];
                if (!bk->iface->contains) continue;
                const bool inside = in_memory(bk, t);
                if (inside != (b == sp->backend)) {
                    return gs_set_error(GS_ERR_STATE, "gs_graph_plan_backends: internal error: node '%s' on "
                                        "backend '%s' would touch '%s' %s the memory of backend '%s'", node->name,
                                        p->bk[sp->backend]->iface->name, t->name, inside ? "in" : "outside",
                                        bk->iface->name);
                }
            }
        }
    }
    return GS_OK;
}

/* Carve n bytes (64-byte aligned) from a block being laid out. */
static void * carve(uint8_t * mem, size_t * at, size_t n) {
    void * r = mem ? mem + *at : NULL;
    *at += gs_aligned(n);
    return r;
}

static int n_out_copies(const gs_plan * p, int s) {
    int n = 0;
    for (int j = p->sp[s].i0; j < p->sp[s].i1; j++) n += p->host_copy[j] && p->home[j] == p->sp[s].backend;
    return n;
}

/* Split s's segments: slices of its node list and copies out (both in
 * node order), the copies in with the first; where the host waits. */
static void build_segments(const gs_plan * p, int s, gs_sched_split * sp, gs_sched_seg * segs) {
    const gs_split_exec * e = &sp->exec;
    sp->seg0 = p->seg_first[s];
    sp->n_seg = p->seg_first[s + 1] - sp->seg0;
    int node = 0, out = 0;                   /* positions in e's lists */
    for (int g = sp->seg0; g < sp->seg0 + sp->n_seg; g++) {
        gs_sched_seg * sg = &segs[g];
        sg->split = s;
        sg->exec = *e;
        if (g > sp->seg0) sg->exec.n_in = 0;
        sg->exec.nodes = e->nodes + node;
        sg->exec.sync = e->sync + node;
        sg->exec.out = e->out + out;
        sg->exec.n_nodes = sg->exec.n_out = 0;
        for (int i = sp->i0; i < sp->i1; i++) {
            if (p->seg_of[i] != g) continue;
            sg->exec.n_nodes += gs_is_computed(p->g->nodes[i]);
            sg->exec.n_out += p->host_copy[i];
        }
        node += sg->exec.n_nodes;
        out += sg->exec.n_out;
        sg->job.exec = &sg->exec;
        sg->job.index = g;
        atomic_init(&sg->job.state, GS_JOB_IDLE);
        sg->wait_at = p->n_sp;
        if (p->wait_at[g] < p->n) {          /* the wait node's split and place in its list */
            const int w = p->wait_at[g], r = p->split_of[w];
            sg->wait_at = r;
            for (int i = p->sp[r].i0; i < w; i++) sg->wait_pos += gs_is_computed(p->g->nodes[i]);
        }
    }
}

gs_status gs_plan_build(gs_plan * p, gs_sched ** out) {
    builder b = { .p = p };
    b.shadow = calloc((size_t) (p->n ? p->n : 1), sizeof(gs_tensor *));
    if (!b.shadow) return gs_set_error(GS_ERR_OOM, "gs_graph_plan_backends: out of memory");
    /* count, then lay out one block: sched, splits, copies, lists, twins */
    int n_run = 0, n_copies = p->n_cp;
    for (int s = 0; s < p->n_sp; s++) {
        n_run += build_split(&b, s, NULL);
        n_copies += n_out_copies(p, s);
    }
    uint8_t * mem = NULL;
    size_t size = 0;
    for (int pass = 0; pass < 2; pass++) {
        size_t at = 0;
        gs_sched * sc = carve(mem, &at, sizeof(gs_sched));
        gs_sched_split * splits = carve(mem, &at, (size_t) p->n_sp * sizeof(gs_sched_split));
        gs_sched_seg * segs = carve(mem, &at, (size_t) p->n_seg * sizeof(gs_sched_seg));
        int * inflight = carve(mem, &at, (size_t) p->n_seg * sizeof(int));
        gs_copy * copies = carve(mem, &at, (size_t) n_copies * sizeof(gs_copy));
        gs_tensor ** run = carve(mem, &at, (size_t) n_run * sizeof(gs_tensor *));
        bool * sync = carve(mem, &at, (size_t) n_run * sizeof(bool));
        gs_tensor * twins = carve(mem, &at, (size_t) b.n_twins * sizeof(gs_tensor));
        if (pass == 0) {
            size = at;
            mem = calloc(1, size);
            if (!mem) {
                free(b.shadow);
                return gs_set_error(GS_ERR_OOM, "gs_graph_plan_backends: out of memory");
            }
            continue;
        }
        sc->splits = splits;
        sc->n_splits = p->n_sp;
        sc->segs = segs;
        sc->n_segs = p->n_seg;
        sc->inflight = inflight;
        atomic_init(&sc->fail_at, INT_MAX);
        b.twins = twins;
        b.n_twins = 0;
        int c = 0;
        for (int s = 0; s < p->n_sp; s++) {
            gs_sched_split * sp = &splits[s];
            const int B = p->sp[s].backend;
            sp->backend = B;                 /* the rest is zero (calloc) */
            sp->i0 = p->sp[s].i0;
            sp->i1 = p->sp[s].i1;
            gs_split_exec * e = &sp->exec;
            e->in = copies + c;
            for (int k = p->cp_first[s]; k < p->n_cp && p->cp[k].split == s; k++, c++) {
                const gs_copy_rec * r = &p->cp[k];
                const int from = gs_plan_loc(p, r->base);
                copies[c] = (gs_copy) { block_addr(p, r->block), r->base->data, gs_tensor_nbytes(r->base),
                                        p->bk[r->d2h ? from : B] };
                sp->bytes_in += copies[c].n;
                e->n_in++;
            }
            e->out = copies + c;
            for (int j = sp->i0; j < sp->i1; j++) {
                if (!p->host_copy[j] || p->home[j] != B) continue;
                copies[c] = (gs_copy) { block_addr(p, p->hc_blk[j]), block_addr(p, p->node_blk[j]),
                                        gs_tensor_nbytes(p->g->nodes[j]), p->bk[B] };
                sp->bytes_out += copies[c++].n;
                e->n_out++;
            }
            e->nodes = run;
            e->sync = sync;
            e->n_nodes = build_split(&b, s, run);
            run += e->n_nodes;
            sync += e->n_nodes;
            e->wdata = p->base_addr[B] ? p->base_addr[B] + p->compute[B] : NULL;
            e->wsize = gs_aligned(p->work[B]);
            sc->copy_bytes += sp->bytes_in + sp->bytes_out;
            if (B != 0) build_segments(p, s, sp, segs);
        }
        gs_status st = GS_OK;
        for (int s = 0; s < p->n_sp && !st; s++) {
            gs_sched_split * sp = &splits[s];
            const int B = sp->backend;
            const int nth = B == 0 ? p->n_threads : p->bk[B]->iface->n_threads(p->bk[B]);
            st = gs_plan_barriers(sp->exec.nodes, sp->exec.n_nodes, nth, sp->exec.sync);
            if (!st) st = check_split(p, sp);
        }
        free(b.shadow);
        if (st) {
            free(mem);
            return st;
        }
        *out = sc;
    }
    return GS_OK;
}
