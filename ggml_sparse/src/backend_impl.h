/*
 * backend_impl.h - the backend table and the scheduler's internals (not
 * public; the API is include/gs_backend.h).
 *
 * A backend implements gs_backend_iface. The scheduler (sched*.c) hands a
 * device one gs_job per split: copies into its memory, the split's nodes
 * (gs_tensor structs whose data and sources all lie in its memory) and
 * copies back to the host. The stand-in (backend_standin.c) runs a job on
 * its worker thread with the CPU kernels; a CUDA backend would run the same
 * job with its copies and kernels (gs_cuda_*) on a stream.
 */
#ifndef GS_BACKEND_IMPL_H
#define GS_BACKEND_IMPL_H

#include "gs_internal.h"

#define GS_MAX_BACKENDS 8
#define GS_JOB_MSG 512

/* One transfer of a split: n bytes from src to dst. `dev` is the device that
 * does it (the split's own device, or for a host split the device the source
 * lives on). */
typedef struct {
    void * dst;
    const void * src;
    size_t n;
    gs_backend * dev;
} gs_copy;

/* What a backend runs for one split. */
typedef struct {
    int n_in;                 /* copies made before the nodes              */
    gs_copy * in;
    int n_nodes;              /* computed nodes, in order                  */
    gs_tensor ** nodes;
    bool * sync;              /* sync[k]: barrier before nodes[k]          */
    uint8_t * wdata;          /* scratch in the backend's memory           */
    size_t wsize;
    int n_out;                /* copies to the host after the nodes        */
    gs_copy * out;
} gs_split_exec;

/* Work queued on a device (a segment of a split, see gs_sched_seg). The
 * backend fills status, msg and the times; `state` goes idle -> queued ->
 * done. Jobs of one graph run share fail_at (NULL for none): the smallest
 * index of a job that failed, or INT_MAX. A backend skips (status
 * GS_ERR_STATE, nothing run or copied) a job whose index is above it, and
 * lowers it when a job fails: what a failed job would have produced is
 * never used. */
enum { GS_JOB_IDLE = 0, GS_JOB_QUEUED = 1, GS_JOB_DONE = 2 };
typedef struct gs_job {
    const gs_split_exec * exec;
    bool async;               /* errors go to gs_backend_synchronize       */
    int index;                /* its place among the graph's jobs          */
    atomic_int * fail_at;
    atomic_int state;
    gs_status status;
    char msg[GS_JOB_MSG];
    int64_t start_ns, end_ns;
    struct gs_job * next;     /* the backend's queue                       */
} gs_job;

typedef struct {
    const char * name;
    bool is_host;
    gs_status (*alloc)(gs_backend * b, size_t n, void ** out);
    gs_status (*release)(gs_backend * b, void * p);
    /* Blocking, counted copies host -> b (set) and b -> host (get), after
     * b's queued work. */
    gs_status (*set)(gs_backend * b, void * dst, const void * src, size_t n);
    gs_status (*get)(gs_backend * b, void * dst, const void * src, size_t n);
    /* Whether [p, p + n) lies in b's memory (plan-time checks); NULL: unknown. */
    bool (*contains)(const gs_backend * b, const void * p, size_t n);
    /* Threads its kernels use (sizes scratch and plans barriers). */
    int (*n_threads)(const gs_backend * b);
    /* Queue a job and return; wait for one job (its status, message set on
     * the calling thread); wait for all (first async error). */
    gs_status (*submit)(gs_backend * b, gs_job * job);
    gs_status (*wait)(gs_backend * b, gs_job * job);
    gs_status (*synchronize)(gs_backend * b);
    /* Wait until the queue is empty; errors stay for synchronize. */
    void (*drain)(gs_backend * b);
    void (*stats)(const gs_backend * b, gs_backend_stats * out);
    void (*free)(gs_backend * b);
    /* Whether b can run `node` (a node of a device split, its data and
     * sources in b's memory); false with the reason in why. Asked at
     * planning time (sched_build.c), so a graph with a node b cannot run
     * fails at gs_graph_plan_backends. NULL: every node. */
    bool (*supports)(const gs_backend * b, const gs_tensor * node, char * why, size_t why_size);
} gs_backend_iface;

/* Implementations put this first in their own struct. */
struct gs_backend {
    const gs_backend_iface * iface;
};

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t gs_now_ns(void);

/* ---- shared with graph.c ---------------------------------------------- */
/* Run nodes[0..n) (barriers where sync[k]) on n_threads threads of tp with
 * scratch wdata/wsize. On a kernel error: its status, *err_k the index of
 * the failing node, the kernel's message in msg. */
gs_status gs_run_nodes(gs_threadpool * tp, int n_threads, gs_tensor * const * nodes, const bool * sync,
                       int n, uint8_t * wdata, size_t wsize, int * err_k, char * msg, size_t msg_size);
/* Barriers for nodes[0..n) as gs_graph_plan places them (sync[k] before
 * node k) for n_threads threads. */
gs_status gs_plan_barriers(gs_tensor * const * nodes, int n, int n_threads, bool * sync);

/* First-fit planning of one buffer (graph.c): blocks are offsets into a
 * virtual buffer that grows to `end`. free_blocks has room for every block
 * the plan can hold free at once (one per allocation, plus one). */
typedef struct { size_t offs, size; } gs_block;
typedef struct {
    gs_block * free_blocks;
    int n_free;
    size_t end;
} gs_allocator;
size_t gs_alloc_block(gs_allocator * a, size_t size);
void gs_free_block(gs_allocator * a, size_t offs, size_t size);

/* A device's arena (backend_arena.c): first-fit blocks of a fixed range of
 * `size` bytes, by offset, in multiples of GS_ALIGN; bookkeeping only (host
 * or device memory alike). Callers serialise the calls. A failed alloc is
 * GS_ERR_OOM naming backend `name` with the free bytes; releasing an offset
 * that is no block is GS_ERR_INVALID_ARG (p is the address the caller gave). */
typedef struct {
    size_t size;
    gs_block * free_list;     /* free ranges, sorted by offset             */
    int n_free, cap_free;
    gs_block * used;          /* allocated blocks, sorted by offset        */
    int n_used, cap_used;
    size_t used_bytes, peak_bytes;
} gs_arena;
bool gs_arena_init(gs_arena * a, size_t size);      /* false: out of memory */
void gs_arena_destroy(gs_arena * a);
gs_status gs_arena_alloc(gs_arena * a, const char * name, size_t n, size_t * offs);
gs_status gs_arena_release(gs_arena * a, const char * name, size_t offs, const void * p);

/* ---- the scheduler (sched*.c) ------------------------------------------ */
typedef struct {
    int backend;              /* index into the plan's backends            */
    int i0, i1;               /* its nodes: [i0, i1) of the graph's        */
    size_t bytes_in, bytes_out;
    int64_t start_ns, end_ns; /* host splits: the last run's interval      */
    gs_split_exec exec;       /* all of it (a device runs it by segments)  */
    int seg0, n_seg;          /* device splits: its segments               */
} gs_sched_split;

/* A device split runs as one or more jobs, its segments: consecutive runs
 * of its nodes, cut after each node whose result a later host node or
 * another device reads, so that the result is copied out - and the host
 * may go on with what needs it - as soon as it is computed. The first
 * segment makes the split's copies in; each copies out its own results. */
typedef struct {
    int split;
    gs_split_exec exec;
    gs_job job;
    int wait_at, wait_pos;    /* the host waits for it in split wait_at
                                 before running its node wait_pos (0:
                                 before its copies too); wait_at n_splits:
                                 at the end                                */
} gs_sched_seg;

/* A graph's plan over backends: one heap block owned by the graph's
 * context, holding this struct, the splits, their copies and node lists,
 * and the shadow tensors device splits run on. */
typedef struct gs_sched {
    int n_backends;
    gs_backend * backends[GS_MAX_BACKENDS];   /* [0]: the CPU              */
    void * dev_buf[GS_MAX_BACKENDS];          /* each device's block       */
    size_t compute_bytes[GS_MAX_BACKENDS];    /* intermediates and copies  */
    size_t work_bytes[GS_MAX_BACKENDS];       /* scratch                   */
    int n_threads;
    int n_splits;
    gs_sched_split * splits;
    int n_segs;
    gs_sched_seg * segs;                      /* device splits' segments   */
    int * inflight;                           /* room for n_segs indices   */
    atomic_int fail_at;                       /* the jobs' gs_job.fail_at  */
    size_t copy_bytes;
} gs_sched;

/* Planning state shared by sched.c (assignment, copies, memory) and
 * sched_build.c (the splits' node lists). Per node i of the graph: home[i]
 * (backend index where it runs, or for views where their memory lives),
 * split_of[i], and for results: node_blk[i] (its block), host_copy[i] (a
 * device result the host needs) and hc_blk[i] (that copy's block). */
#define GS_SCHED_NEVER 0x7fffffff
typedef struct {
    const gs_tensor * base;   /* the tensor copied (a leaf or a result)    */
    int split;
    int block;
    int last_reader;          /* node index                                */
    bool d2h;                 /* a placed leaf into a host split           */
} gs_copy_rec;

typedef struct {
    int backend;
    size_t size;
    int t_alloc, t_free;      /* event times (3 per node); t_free NEVER    */
    size_t offs;
} gs_plan_block;

typedef struct {
    gs_graph * g;
    gs_backend * const * bk;
    int nb, n, n_threads;
    int * home, * split_of, * node_blk, * hc_blk, * t_free, * hc_free;
    int n_seg;                /* segments (sched.c find_segments): ...     */
    int * seg_first;          /*   split s: [seg_first[s], seg_first[s + 1]) */
    int * seg_of;             /*   per node: its segment (-1 on the host)  */
    bool * cut_after;         /*   per node: read by the host or a device  */
    int * wait_at;            /*   per segment: the graph index of the node
                                   before which the host waits for it
                                   (sched.c find_waits; n: the end)        */
    bool * host_copy;
    gs_sched_split * sp;
    int n_sp;
    gs_copy_rec * cp;
    int n_cp, cap_cp;
    int * cp_first;           /* split s: cp[cp_first[s] .. cp_first[s + 1]) */
    gs_plan_block * blk;
    int n_blk;
    uint8_t * base_addr[GS_MAX_BACKENDS];
    size_t compute[GS_MAX_BACKENDS], work[GS_MAX_BACKENDS];
} gs_plan;

/* The graph index of a node while planning (kept in its last op param). */
static inline int gs_plan_idx(const gs_tensor * t) { return t->op_params[GS_MAX_OP_PARAMS - 1]; }
static inline bool gs_is_computed(const gs_tensor * t) { return t->op != GS_OP_NONE && t->op != GS_OP_VIEW; }
static inline bool gs_owns_memory(const gs_tensor * t) { return t->op != GS_OP_NONE && !t->view_src; }
static inline size_t gs_aligned(size_t n) { return (n + GS_ALIGN - 1) / GS_ALIGN * GS_ALIGN; }
static inline const gs_tensor * gs_view_base_c(const gs_tensor * t) {
    while (t->view_src) t = t->view_src;
    return t;
}
/* Backend index where t's memory lives (its view base's). */
int gs_plan_loc(const gs_plan * p, const gs_tensor * t);
/* Split s's copy of base, NULL when it has none. */
gs_copy_rec * gs_plan_find_copy(const gs_plan * p, int s, const gs_tensor * base);
/* Build the plan's gs_sched (node lists, shadows, copies, barriers) in one
 * heap block; checks that every split touches only its backend's memory. */
gs_status gs_plan_build(gs_plan * p, gs_sched ** out);
/* Run a graph planned by gs_graph_plan_backends. */
gs_status gs_sched_compute(gs_graph * g, gs_threadpool * tp);
/* Wait for g's queued job, give back its device blocks and free its plan. */
void gs_sched_drop(gs_graph * g);
/* The same for a plan alone: the destructor its context calls. */
void gs_sched_destroy(void * sc);
/* Queue g (one split, on b) as an async job on b. */
gs_status gs_sched_submit(gs_graph * g, gs_backend * b);

#endif /* GS_BACKEND_IMPL_H */
