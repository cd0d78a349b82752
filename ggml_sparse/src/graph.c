/*
 * graph.c - building, planning (memory assignment) and running graphs.
 *
 * Planning walks the nodes in execution order with a first-fit allocator
 * over one virtual buffer: a node's result gets a block before its inputs'
 * blocks are released, and a block is released after the last node that
 * reads it (directly or through views). Graph outputs are never released.
 * The result is one allocation for all intermediates plus the scratch
 * buffer; nothing is allocated while computing.
 *
 * Threads run the nodes in order and meet at a barrier only where a node
 * needs it: before a node that reads memory an earlier node wrote since the
 * last barrier, or writes memory such a node read or wrote (comparing the
 * byte ranges the planned tensors span, scratch included when threads share
 * it). Independent neighbours (the q, k, v projections of one input, two
 * ropes, two cache writes) then run without waiting for each other.
 *
 * Graphs planned over several backends (gs_graph_plan_backends, sched*.c)
 * reuse the allocator, the barrier planning and the node runner below;
 * gs_graph_compute hands them to the scheduler.
 */
#include "backend_impl.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

gs_status gs_graph_new(gs_context * ctx, int max_nodes, gs_graph ** out) {
    GS_CHECK_ARG(ctx && out, "gs_graph_new: NULL argument");
    GS_CHECK_ARG(max_nodes > 0 && max_nodes < (1 << 24), "gs_graph_new: bad max_nodes %d", max_nodes);
    gs_graph * g = calloc(1, sizeof(*g));
    int cap = 4;
    while (cap < 4 * max_nodes) cap *= 2;
    gs_tensor ** nodes = calloc((size_t) max_nodes, sizeof(gs_tensor *));
    gs_tensor ** visited = calloc((size_t) cap, sizeof(gs_tensor *));
    bool * sync = calloc((size_t) max_nodes, sizeof(bool));
    if (!g || !nodes || !visited || !sync || gs_context_own(ctx, g) || gs_context_own(ctx, nodes) ||
        gs_context_own(ctx, visited) || gs_context_own(ctx, sync)) {
        /* anything registered is freed with ctx; free the rest now */
        return gs_set_error(GS_ERR_OOM, "gs_graph_new: out of memory");
    }
    g->ctx = ctx;
    g->max_nodes = max_nodes;
    g->nodes = nodes;
    g->visited = visited;
    g->visited_cap = cap;
    g->sync = sync;
    *out = g;
    return GS_OK;
}

/* Insert t into the visited set; false when it was already there. */
static bool visit(gs_graph * g, gs_tensor * t) {
    size_t h = ((uintptr_t) t >> 6) * 0x9E3779B97F4A7C15ull;
    size_t mask = (size_t) g->visited_cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        if (g->visited[i] == t) return false;
        if (!g->visited[i]) {
            g->visited[i] = t;
            return true;
        }
    }
}

/* Mark t visited; an error when the visited set is full. */
static gs_status visit_new(gs_graph * g, gs_tensor * t, int * n_seen, bool * is_new) {
    *is_new = visit(g, t);
    if (*is_new && ++*n_seen >= g->visited_cap / 2) {
        return gs_set_error(GS_ERR_OOM, "graph holds more than %d tensors", g->visited_cap / 2);
    }
    return GS_OK;
}

/* Depth-first walk from `root` with an explicit stack (graphs can be far
 * deeper than the C stack allows): every unvisited source, then the viewed
 * tensor, then the op node itself is appended, so nodes come in dependency
 * order. */
typedef struct {
    gs_tensor * t;
    int next;       /* next input to look at: src[0..GS_MAX_SRC-1], then view_src */
} build_frame;

/* Repacked weights (gs_tensor_repack) may only be read as mul_mat's src[0]. */
static gs_status check_repacked_reads(const gs_tensor * t) {
    for (int i = 0; i <= GS_MAX_SRC; i++) {
        const gs_tensor * s = i < GS_MAX_SRC ? t->src[i] : t->view_src;
        if (s && (s->flags & GS_FLAG_REPACKED) && !(t->op == GS_OP_MUL_MAT && i == 0)) {
            return gs_set_error(GS_ERR_TYPE, "tensor '%s' is repacked: only mul_mat may read it, as its "
                                "first operand (node '%s', op %s)", s->name, t->name, gs_op_name(t->op));
        }
    }
    return GS_OK;
}

static gs_status build_from(gs_graph * g, gs_tensor * root, int * n_seen) {
    bool is_new;
    gs_status st = visit_new(g, root, n_seen, &is_new);
    if (st || !is_new) return st;
    int cap = 64, depth = 0;
    build_frame * stack = malloc((size_t) cap * sizeof(*stack));
    if (!stack) return gs_set_error(GS_ERR_OOM, "gs_graph_build: out of memory");
    stack[depth++] = (build_frame) { root, 0 };
    while (depth > 0 && !st) {
        build_frame * f = &stack[depth - 1];
        gs_tensor * child = NULL;
        while (!child && f->next <= GS_MAX_SRC && !st) {
            gs_tensor * c = f->next < GS_MAX_SRC ? f->t->src[f->next] : f->t->view_src;
            f->next++;
            if (c) {
                st = visit_new(g, c, n_seen, &is_new);
                if (is_new) child = c;
            }
        }
        if (st) break;
        if (child) {
            if (depth == cap) {
                build_frame * grown = realloc(stack, (size_t) cap * 2 * sizeof(*stack));
                if (!grown) {
                    st = gs_set_error(GS_ERR_OOM, "gs_graph_build: out of memory");
                    break;
                }
                stack = grown;
                cap *= 2;
            }
            stack[depth++] = (build_frame) { child, 0 };
            continue;
        }
        if (f->t->op != GS_OP_NONE) {
            st = check_repacked_reads(f->t);
            if (st) break;
            if (g->n_nodes >= g->max_nodes) {
                st = gs_set_error(GS_ERR_OOM, "graph is full: more than %d nodes", g->max_nodes);
                break;
            }
            g->nodes[g->n_nodes++] = f->t;
        }
        depth--;
    }
    free(stack);
    return st;
}

gs_status gs_graph_build(gs_graph * g, gs_tensor * t) {
    GS_CHECK_ARG(g && t, "gs_graph_build: NULL argument");
    int n_seen = 0;
    for (int i = 0; i < g->visited_cap; i++) if (g->visited[i]) n_seen++;
    gs_status st = build_from(g, t, &n_seen);
    if (st) return st;
    t->flags |= GS_FLAG_OUTPUT;
    g->planned_threads = 0;
    return GS_OK;
}

int gs_graph_n_nodes(const gs_graph * g) { return g ? g->n_nodes : 0; }

gs_status gs_graph_node(const gs_graph * g, int i, gs_tensor ** out) {
    GS_CHECK_ARG(g && out, "gs_graph_node: NULL argument");
    GS_CHECK_ARG(i >= 0 && i < g->n_nodes, "gs_graph_node: index %d out of range (%d nodes)", i, g->n_nodes);
    *out = g->nodes[i];
    return GS_OK;
}

/* ---- planning ----------------------------------------------------------- */
/* gs_allocator: free_blocks sorted by offset, end the high-water mark. */
size_t gs_alloc_block(gs_allocator * a, size_t size) {
    int best = -1;
    for (int i = 0; i < a->n_free; i++) {
        if (a->free_blocks[i].size >= size && (best < 0 || a->free_blocks[i].size < a->free_blocks[best].size)) best = i;
    }
    if (best >= 0) {
        size_t offs = a->free_blocks[best].offs;
        a->free_blocks[best].offs += size;
        a->free_blocks[best].size -= size;
        if (a->free_blocks[best].size == 0) {
            memmove(&a->free_blocks[best], &a->free_blocks[best + 1], (size_t) (a->n_free - best - 1) * sizeof(gs_block));
            a->n_free--;
        }
        return offs;
    }
    /* grow: extend a free block that ends at the end, else append */
    if (a->n_free > 0 && a->free_blocks[a->n_free - 1].offs + a->free_blocks[a->n_free - 1].size == a->end) {
        size_t offs = a->free_blocks[--a->n_free].offs;
        a->end = offs + size;
        return offs;
    }
    size_t offs = a->end;
    a->end += size;
    return offs;
}

void gs_free_block(gs_allocator * a, size_t offs, size_t size) {
    int i = 0;
    while (i < a->n_free && a->free_blocks[i].offs < offs) i++;
    memmove(&a->free_blocks[i + 1], &a->free_blocks[i], (size_t) (a->n_free - i) * sizeof(gs_block));
    a->free_blocks[i] = (gs_block) { offs, size };
    a->n_free++;
    /* merge with neighbours */
    if (i + 1 < a->n_free && a->free_blocks[i].offs + a->free_blocks[i].size == a->free_blocks[i + 1].offs) {
        a->free_blocks[i].size += a->free_blocks[i + 1].size;
        memmove(&a->free_blocks[i + 1], &a->free_blocks[i + 2], (size_t) (a->n_free - i - 2) * sizeof(gs_block));
        a->n_free--;
    }
    if (i > 0 && a->free_blocks[i - 1].offs + a->free_blocks[i - 1].size == a->free_blocks[i].offs) {
        a->free_blocks[i - 1].size += a->free_blocks[i].size;
        memmove(&a->free_blocks[i], &a->free_blocks[i + 1], (size_t) (a->n_free - i - 1) * sizeof(gs_block));
        a->n_free--;
    }
}

static bool owns_memory(const gs_tensor * t) {
    return t->op != GS_OP_NONE && t->view_src == NULL;
}

static size_t aligned(size_t n) { return (n + GS_ALIGN - 1) / GS_ALIGN * GS_ALIGN; }

/* ---- barriers ----------------------------------------------------------- */
typedef struct { const uint8_t * lo, * hi; } span;

static span tensor_span(const gs_tensor * t) {
    const uint8_t * lo = t->data;
    return (span) { lo, lo + gs_tensor_nbytes(t) };
}

static bool overlaps(span a, span b) {
    return a.lo < b.hi && b.lo < a.hi;
}

enum { SCRATCH_NONE, SCRATCH_OWN, SCRATCH_SHARED };

/* Memory a node touches: what it writes (its result), what it reads (its
 * sources) and how it uses the scratch buffer: not at all, each thread in
 * its own part (gs_thread_scratch), or shared by all threads. */
typedef struct {
    span w, r[GS_MAX_SRC];
    int nr;
    int scratch;
} node_access;

static node_access access_of(const gs_tensor * node, int n_threads) {
    node_access a = { .w = tensor_span(node), .nr = 0, .scratch = SCRATCH_NONE };
    if (gs_cpu_work_size(node, n_threads) > 0) a.scratch = gs_cpu_scratch_private(node) ? SCRATCH_OWN : SCRATCH_SHARED;
    for (int s = 0; s < GS_MAX_SRC; s++) {
        if (node->src[s] && node->src[s]->data) a.r[a.nr++] = tensor_span(node->src[s]);
    }
    return a;
}

/* True when `later` may not start before every thread finished `earlier`. */
static bool conflicts(const node_access * earlier, const node_access * later) {
    if (earlier->scratch && later->scratch &&
        (earlier->scratch == SCRATCH_SHARED || later->scratch == SCRATCH_SHARED)) {
        return true;
    }
    if (overlaps(later->w, earlier->w)) return true;
    for (int j = 0; j < earlier->nr; j++) if (overlaps(later->w, earlier->r[j])) return true;
    for (int i = 0; i < later->nr; i++) if (overlaps(later->r[i], earlier->w)) return true;
    return false;
}

static bool is_computed(const gs_tensor * node) {
    return node->op != GS_OP_NONE && node->op != GS_OP_VIEW;
}

/* Fill sync[0..n) from the planned data pointers of nodes[0..n). `epoch`
 * holds the accesses of the nodes run since the last barrier (room for all
 * nodes). */
static void plan_barriers(gs_tensor * const * nodes, int n, int n_threads, bool * sync, node_access * epoch) {
    int n_epoch = 0;
    for (int i = 0; i < n; i++) {
        sync[i] = false;
        if (!is_computed(nodes[i])) continue;
        const node_access a = access_of(nodes[i], n_threads);
        bool need = false;
        for (int e = 0; e < n_epoch && !need; e++) need = conflicts(&epoch[e], &a);
        if (need) {
            sync[i] = true;
            n_epoch = 0;
        }
        epoch[n_epoch++] = a;
    }
}

gs_status gs_plan_barriers(gs_tensor * const * nodes, int n, int n_threads, bool * sync) {
    node_access * epoch = malloc((size_t) (n ? n : 1) * sizeof(node_access));
    if (!epoch) return gs_set_error(GS_ERR_OOM, "planning barriers: out of memory");
    plan_barriers(nodes, n, n_threads, sync, epoch);
    free(epoch);
    return GS_OK;
}

gs_status gs_graph_plan(gs_graph * g, int n_threads) {
    GS_CHECK_ARG(g, "gs_graph_plan: NULL graph");
    GS_CHECK_ARG(n_threads >= 1, "gs_graph_plan: n_threads must be >= 1");
    if (g->sched) gs_sched_drop(g);   /* a plan over backends gives its blocks back */
    const int n = g->n_nodes;
    /* last_use[i]: index of the last node reading node i's memory */
    int * last_use = malloc((size_t) (n ? n : 1) * sizeof(int));
    size_t * offs = malloc((size_t) (n ? n : 1) * sizeof(size_t));
    gs_block * blocks = malloc((size_t) (n + 1) * sizeof(gs_block));
    node_access * epoch = malloc((size_t) (n ? n : 1) * sizeof(node_access));
    gs_status st = GS_OK;
    if (!last_use || !offs || !blocks || !epoch) {
        st = gs_set_error(GS_ERR_OOM, "gs_graph_plan: out of memory");
        goto done;
    }
    /* node index lookup through the visited set would need a map; tensors
     * are few, so store the index temporarily in op_params' last slot */
    for (int i = 0; i < n; i++) {
        last_use[i] = i;
        g->nodes[i]->op_params[GS_MAX_OP_PARAMS - 1] = i;
    }
    for (int i = 0; i < n; i++) {
        gs_tensor * node = g->nodes[i];
        for (int s = 0; s < GS_MAX_SRC; s++) {
            gs_tensor * src = node->src[s];
            if (!src) continue;
            gs_tensor * base = gs_view_base(src);
            if (base->op == GS_OP_NONE) {
                if (!base->data) {
                    st = gs_set_error(GS_ERR_STATE, "tensor '%s' (input of '%s') has no data", base->name, node->name);
                    goto done;
                }
                if (base->backend) {
                    st = gs_set_error(GS_ERR_STATE, "tensor '%s' (input of '%s') lives on backend '%s': plan "
                                      "the graph with gs_graph_plan_backends", base->name, node->name,
                                      gs_backend_name(base->backend));
                    goto done;
                }
                continue;
            }
            last_use[base->op_params[GS_MAX_OP_PARAMS - 1]] = i;
        }
    }
    /* an output that views an intermediate (a reshape of the logits, say)
     * keeps that intermediate's memory alive too */
    for (int i = 0; i < n; i++) {
        gs_tensor * base = gs_view_base(g->nodes[i]);
        if ((g->nodes[i]->flags & GS_FLAG_OUTPUT) && base != g->nodes[i] && base->op != GS_OP_NONE) {
            last_use[base->op_params[GS_MAX_OP_PARAMS - 1]] = n;
        }
    }
    gs_allocator a = { blocks, 0, 0 };
    size_t work = 0;
    for (int i = 0; i < n; i++) {
        gs_tensor * node = g->nodes[i];
        if (owns_memory(node)) offs[i] = gs_alloc_block(&a, aligned(gs_tensor_nbytes(node)));
        size_t w = gs_cpu_work_size(node, n_threads);
        if (w > work) work = w;
        for (int s = 0; s < GS_MAX_SRC; s++) {
            if (!node->src[s]) continue;
            gs_tensor * base = gs_view_base(node->src[s]);
            if (base->op == GS_OP_NONE || (base->flags & GS_FLAG_OUTPUT)) continue;
            int j = base->op_params[GS_MAX_OP_PARAMS - 1];
            if (last_use[j] == i && owns_memory(base)) {
                gs_free_block(&a, offs[j], aligned(gs_tensor_nbytes(base)));
                last_use[j] = -1; /* released once even if read twice */
            }
        }
    }
    const size_t compute_bytes = a.end;
    const size_t work_bytes = aligned(work);
    uint8_t * buf = NULL;
    if (compute_bytes + work_bytes > 0) {
        buf = aligned_alloc(GS_ALIGN, compute_bytes + work_bytes);
        if (!buf) {
            st = gs_set_error(GS_ERR_OOM, "gs_graph_plan: cannot allocate %zu bytes", compute_bytes + work_bytes);
            goto done;
        }
    }
    if (g->buffer) {
        gs_context_reown(g->ctx, g->buffer, buf);
        free(g->buffer);
    } else if (buf && gs_context_own(g->ctx, buf)) {
        free(buf);
        st = GS_ERR_OOM;
        goto done;
    }
    g->buffer = buf;
    g->compute_bytes = compute_bytes;
    g->work_bytes = work_bytes;
    for (int i = 0; i < n; i++) {
        gs_tensor * node = g->nodes[i];
        if (owns_memory(node)) node->data = buf + offs[i];
        else if (node->view_src) node->data = (uint8_t *) node->view_src->data + node->view_offs;
        node->op_params[GS_MAX_OP_PARAMS - 1] = 0;
    }
    plan_barriers(g->nodes, n, n_threads, g->sync, epoch);
    g->planned_threads = n_threads;
done:
    free(last_use);
    free(offs);
    free(blocks);
    free(epoch);
    return st;
}

gs_status gs_graph_mem(const gs_graph * g, size_t * compute_bytes, size_t * work_bytes) {
    GS_CHECK_ARG(g, "gs_graph_mem: NULL graph");
    if (!g->planned_threads) return gs_set_error(GS_ERR_STATE, "gs_graph_mem: graph is not planned");
    if (compute_bytes) *compute_bytes = g->compute_bytes;
    if (work_bytes) *work_bytes = g->work_bytes;
    return GS_OK;
}

/* ---- running ------------------------------------------------------------ */
typedef struct {
    gs_tensor * const * nodes;
    const bool * sync;
    int n;
    uint8_t * wdata;
    size_t wsize;
    gs_compute_state state;
} compute_job;

void gs_compute_fail(const gs_compute_params * p, gs_status status, const char * fmt, ...) {
    int expected = INT_MAX;
    if (atomic_compare_exchange_strong(&p->state->error_node, &expected, p->node)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->state->error_msg, sizeof(p->state->error_msg), fmt, ap);
        va_end(ap);
        atomic_store(&p->state->error, (int) status);
    }
}

static void compute_worker(void * arg, int ith, int nth) {
    compute_job * job = arg;
    /* locals: the job shares a cache line with the barrier's counters */
    gs_tensor * const * nodes = job->nodes;
    const bool * sync = job->sync;
    const int n = job->n;
    gs_compute_params p = {
        .ith = ith, .nth = nth,
        .wdata = job->wdata, .wsize = job->wsize,
        .state = &job->state,
    };
    for (int i = 0; i < n; i++) {
        gs_tensor * node = nodes[i];
        if (!is_computed(node)) continue;
        if (sync[i]) {
            gs_barrier(&p);
            /* stop where every thread stops: after a barrier that follows the
             * failing node (a fast thread may already fail in a later node) */
            if (atomic_load(&job->state.error_node) < i) break;
        }
        p.node = i;
        gs_cpu_compute_node(&p, node);
    }
}

gs_status gs_run_nodes(gs_threadpool * tp, int n_threads, gs_tensor * const * nodes, const bool * sync,
                       int n, uint8_t * wdata, size_t wsize, int * err_k, char * msg, size_t msg_size) {
    compute_job job = { .nodes = nodes, .sync = sync, .n = n, .wdata = wdata, .wsize = wsize };
    atomic_init(&job.state.error_node, INT_MAX);
    gs_threadpool_run(tp, n_threads, compute_worker, &job);
    int err = atomic_load(&job.state.error);
    if (!err) return GS_OK;
    if (err_k) *err_k = atomic_load(&job.state.error_node);
    if (msg && msg_size) snprintf(msg, msg_size, "%s", job.state.error_msg);
    return (gs_status) err;
}

gs_status gs_graph_compute(gs_graph * g, gs_threadpool * tp) {
    GS_CHECK_ARG(g && tp, "gs_graph_compute: NULL argument");
    if (!g->planned_threads) return gs_set_error(GS_ERR_STATE, "gs_graph_compute: call gs_graph_plan first");
    if (g->sched) return gs_sched_compute(g, tp);
    const int pool = gs_threadpool_n_threads(tp);
    const int n = pool < g->planned_threads ? pool : g->planned_threads;
    compute_job job = {
        .nodes = g->nodes, .sync = g->sync, .n = g->n_nodes,
        .wdata = g->buffer + g->compute_bytes, .wsize = g->work_bytes,
    };
    atomic_init(&job.state.error_node, INT_MAX);
    gs_threadpool_run(tp, n, compute_worker, &job);
    int err = atomic_load(&job.state.error);
    if (err) return gs_set_error((gs_status) err, "%s", job.state.error_msg);
    return GS_OK;
}
