/*
 * gs_backend.h - backends and the graph scheduler of ggml_sparse (public).
 *
 * A backend is a place where tensors live and nodes run: the CPU (host
 * memory, the gs_threadpool given to gs_graph_compute) or a device with its
 * own memory. gs_graph_plan_backends splits a built graph into runs of
 * consecutive nodes on one backend (splits), as ggml's backend scheduler
 * does, and gs_graph_compute then runs the splits in order, copying the
 * tensors that cross a boundary; a device split runs while the host goes on
 * with the splits after it (see Concurrency).
 *
 * Assignment (gs_graph_plan_backends):
 *   - Tensors live where they were put: a leaf placed with
 *     gs_tensor_set_backend on its backend, every other leaf in host memory,
 *     a node's result on the backend that runs it, a view with what it views.
 *   - A node that writes into another tensor (gs_set_rows, gs_cpy: the
 *     result views the destination) runs where that tensor lives.
 *   - Otherwise a node runs where its weight lives when its weight is a leaf:
 *     mul_mat's and get_rows' src0, attention's K and V caches, the sparse
 *     ops' weight rows, gs_sparse_index_remap's map, gs_mul_mat_id's experts
 *     (a host weight keeps the node on the CPU).
 *   - Otherwise on the backend of its first source that is a placed leaf (a
 *     norm weight or a bias on the device), else where its computed sources
 *     run - the first of them that runs on a device, else the CPU - (so the
 *     residual adds and norms of offloaded layers stay on the device), else
 *     on the CPU.
 *   - Splits are maximal runs of consecutive computed nodes on one backend
 *     (views run nowhere and join the split they are in).
 *   - Copies, all counted by the device: a split reads a tensor that lives on
 *     another backend through a copy of that tensor (the whole tensor its
 *     view reads, once per tensor per split) made at the split's start; a
 *     device result that a later split of another backend reads, or that is
 *     a graph output, is copied to host memory at the end of its split (a
 *     graph output's gs_tensor_get_data then points at that host copy). A
 *     device result nobody on the host needs has no host data (NULL). A
 *     device split runs as jobs on the device: copies in, nodes, copies
 *     out - one job, or several when a node other than its last has a
 *     result another backend reads: the split is cut after each such node,
 *     so the result is copied out as soon as it is computed (the next job
 *     goes on from there; the copies in are the first job's).
 *   - Intermediates, copies and scratch are planned per backend with the
 *     same first-fit reuse as gs_graph_plan; each device gets one block of
 *     its memory at planning, so a graph that does not fit fails there
 *     (GS_ERR_OOM), never while computing.
 *
 * Concurrency (gs_graph_compute): a device split's jobs are queued on its
 * device and the host goes on at once with the following splits - a host
 * split runs on the caller's pool while the device works. The host waits
 * for a job only where something needs it finished: before the first host
 * node reading one of its results or writing into a tensor its split
 * copies in (the nodes of that host split before it run meanwhile), before
 * a host split copying a leaf placed on its device, before a split of
 * another device reading one of its results; and for all of them before
 * gs_graph_compute returns (one synchronisation per job). A device runs its
 * jobs one after another, in order, so a device split reading an earlier
 * one of the same device needs no wait. The host memory a device split copies from or into is
 * kept from every host split that may run meanwhile (the plan holds it
 * until the wait), so the results are the sequential run's bit for bit.
 * Errors: gs_graph_compute returns the first error in split order (a device
 * kernel's message names the node and the backend), after every queued
 * split has finished; device splits after a failed one are skipped.
 *
 * Lifetimes: a context that holds tensors placed on a device or graphs
 * planned over backends gives their device memory back when it is freed
 * (after waiting for their queued work), so the backends must outlive the
 * contexts that use them: free those contexts (or release the placements
 * and plans) before gs_backend_free.
 *
 * The stand-in device (gs_backend_standin_new) is a device made of the
 * CPU: an arena of host memory that only it touches, its own worker thread
 * with a job queue (work runs concurrently with the CPU's thread pool, as a
 * GPU stream would) and its own thread pool running the CPU kernels, so the
 * results are the CPU's bit for bit. It counts what it copies and tracks its
 * arena, which makes offload testable without a GPU. Users never get it by
 * accident: only gs_backend_standin_new makes one.
 *
 * The block between "cffi-begin" and "cffi-end" is read verbatim by the
 * Python binding's build (cffi), after ggml_sparse.h's.
 */
#ifndef GS_BACKEND_H
#define GS_BACKEND_H

#include "ggml_sparse.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cffi-begin */

/* ---------------------------------------------------------------------------
 * Backends
 * ------------------------------------------------------------------------- */
typedef struct gs_backend gs_backend;

/* Counters of a backend since it was made (all 0 for the CPU). Copies are
 * the counted host <-> device transfers: placing and reading tensors
 * (gs_tensor_set_backend, gs_tensor_read, gs_tensor_write) and the copies a
 * planned graph makes at its split boundaries. */
typedef struct {
    uint64_t h2d_bytes;       /* host -> device                              */
    uint64_t h2d_copies;
    uint64_t d2h_bytes;       /* device -> host                              */
    uint64_t d2h_copies;
    uint64_t splits;          /* jobs run: graph splits (or their parts, see
                                 Copies above) on this device               */
    uint64_t syncs;           /* waits for the device (per job, and
                                 gs_backend_synchronize)                     */
    size_t   arena_bytes;     /* the device's memory                         */
    size_t   arena_used;      /* allocated now                               */
    size_t   arena_peak;      /* most allocated at once                      */
    int64_t  busy_ns;         /* time the worker spent running jobs          */
    int64_t  last_job_start_ns;  /* CLOCK_MONOTONIC of the last job's start, */
    int64_t  last_job_end_ns;    /* and of its end (0 before any job)        */
} gs_backend_stats;

/* The CPU backend: host memory, nodes on the pool given to gs_graph_compute.
 * One immutable object shared by all callers; gs_backend_free ignores it.
 * Thread-safe. */
gs_backend * gs_backend_cpu(void);
/* A stand-in device: an arena of exactly arena_bytes (>= 1, start aligned
 * to 64 bytes; blocks are handed out first-fit in multiples of 64 bytes),
 * a worker thread that runs submitted work in submission order, and a pool
 * of n_threads (1..512, the worker being one) for the kernels.
 * GS_ERR_OOM when the arena or the threads cannot be had. */
gs_status gs_backend_standin_new(size_t arena_bytes, int n_threads, gs_backend ** out);
/* Wait for the backend's queued work, then free it and its memory. Free
 * the contexts holding tensors placed on it or graphs planned with it
 * first (their destruction gives blocks back to it), or release those
 * placements and plans (gs_tensor_release_backend, gs_tensor_set_backend to
 * the host, gs_graph_release_backends). NULL and the CPU backend: no-op. */
void gs_backend_free(gs_backend * b);
/* "cpu" or "standin". */
const char * gs_backend_name(const gs_backend * b);
/* True for backends whose memory is host memory (the CPU). */
bool gs_backend_is_host(const gs_backend * b);

/* A block of nbytes (> 0) of the backend's memory, 64-byte aligned. The
 * host must not read or write it (on a device it is not host memory).
 * GS_ERR_OOM with the request and the free bytes (and the largest free
 * block) when it does not fit. Thread-safe. */
gs_status gs_backend_alloc(gs_backend * b, size_t nbytes, void ** out);
/* Give back a block from gs_backend_alloc of the same backend (the
 * stand-in answers GS_ERR_INVALID_ARG for a pointer that is not one of its
 * blocks; the CPU cannot tell). NULL: no-op. Thread-safe. */
gs_status gs_backend_release(gs_backend * b, void * p);
/* Snapshot of the counters. Thread-safe (counters of a running job may be
 * partly updated). */
gs_status gs_backend_get_stats(const gs_backend * b, gs_backend_stats * out);
/* Wait until every job submitted to b so far has finished. Returns the
 * first error of the jobs started with gs_backend_submit since the last
 * synchronisation (the message names the node), then forgets it. Counts one
 * synchronisation. Thread-safe. */
gs_status gs_backend_synchronize(gs_backend * b);
/* Queue a graph that runs entirely on b (planned with
 * gs_graph_plan_backends, one split, on b) and return at once; b's worker
 * runs it (its input copies, nodes and output copies) while the caller
 * does other work, e.g. computes an independent graph on the CPU pool.
 * Until gs_backend_synchronize returns, the graph's host inputs must not
 * change and its outputs must not be read; the graph must not be computed,
 * submitted again, re-planned or freed. GS_ERR_INVALID_ARG when g does not
 * run entirely on b, GS_ERR_STATE when g is not planned or still queued. */
gs_status gs_backend_submit(gs_backend * b, gs_graph * g);

/* ---------------------------------------------------------------------------
 * Placing tensors
 * ------------------------------------------------------------------------- */
/* Move a leaf tensor with data (a weight, a KV cache) to b: a block of
 * gs_tensor_nbytes(t) bytes of b's memory, the bytes copied there (counted),
 * and from then on t's data is that block and t records b (views of t
 * follow). b NULL or the CPU: move t back to the host memory it had before
 * (its current bytes copied back, counted; that memory must be writable)
 * and release the block. A tensor on another device moves through the host.
 * Errors: GS_ERR_STATE for op results and tensors without data,
 * GS_ERR_OOM (t unchanged) when b's memory cannot hold it. Not thread-safe
 * for t: no graph reading t may run meanwhile. Graphs must be re-planned
 * after a tensor they read moved. While t is placed, gs_tensor_get_data
 * gives the device block (not for the host to read), and gs_tensor_set_data
 * and gs_tensor_repack must not be called on it; gs_graph_plan refuses
 * graphs that read it (GS_ERR_STATE). Freeing t's context gives the block
 * back (after the device's queued work). */
gs_status gs_tensor_set_backend(gs_tensor * t, gs_backend * b);
/* Give a placed tensor's block back without copying anything: t's data is
 * again the host memory it had before placement, holding whatever that
 * memory holds (what changed on the device is lost; read it first with
 * gs_tensor_read if it matters). For weights whose host bytes are a
 * read-only file map, and for caches being freed. No-op for host tensors.
 * Same thread-safety and re-planning rules as gs_tensor_set_backend. */
gs_status gs_tensor_release_backend(gs_tensor * t);
/* The backend t (or the tensor it views) was placed on; NULL for host
 * memory (also for op results, which live where their graph runs them). */
gs_backend * gs_tensor_backend(const gs_tensor * t);
/* Copy n bytes at byte offset of t's data (wherever it lives: a counted
 * device -> host copy for a placed tensor) into dst, or from src into it
 * (host -> device). offset + n <= gs_tensor_nbytes(t); t must have data
 * (GS_ERR_STATE otherwise). The only way the host reads or writes a placed
 * tensor. Waits for the device's queued work first. */
gs_status gs_tensor_read(const gs_tensor * t, size_t offset, void * dst, size_t n);
gs_status gs_tensor_write(gs_tensor * t, size_t offset, const void * src, size_t n);

/* ---------------------------------------------------------------------------
 * Planning a graph over several backends
 * ------------------------------------------------------------------------- */
/* Plan a built graph over backends[0..n_backends-1] (1..8 distinct
 * backends; backends[0] the CPU, the others devices) by the rules at the
 * top of this header; CPU splits run on up to n_threads threads of the
 * pool given to gs_graph_compute, device splits on the device's own
 * threads. Replaces any earlier plan of g (and gives back its device
 * blocks). A graph whose nodes all run on the CPU and read nothing placed
 * is planned exactly as gs_graph_plan does (one split). Errors:
 * GS_ERR_INVALID_ARG for a bad list or a placed tensor whose backend is
 * not in it, GS_ERR_OOM (naming the backend and the bytes) when a
 * backend's memory cannot hold the plan, GS_ERR_UNSUPPORTED for a tensor
 * placed on one device that a split of another device reads. On error g is
 * left unplanned. Not thread-safe for g. */
gs_status gs_graph_plan_backends(gs_graph * g, gs_backend * const * backends, int n_backends,
                                 int n_threads);
/* Give back the device blocks of g's backend plan and leave g unplanned
 * (freeing g's context also gives them back). No-op for other graphs. */
gs_status gs_graph_release_backends(gs_graph * g);

/* Splits of the planned graph (a graph planned with gs_graph_plan: one, on
 * the CPU; 0 when g is not planned or has no computed node). These queries
 * read the plan: safe from any thread while g is not being re-planned. */
int gs_graph_n_splits(const gs_graph * g);
typedef struct {
    gs_backend * backend;     /* where its nodes run                          */
    int first_node;           /* its nodes: gs_graph_node indices             */
    int n_nodes;              /*   first_node .. first_node + n_nodes - 1     */
    int n_copies_in;          /* tensors copied in at its start ...           */
    size_t bytes_in;          /*   ... and their bytes                        */
    int n_copies_out;         /* results copied to the host at its end ...    */
    size_t bytes_out;         /*   ... and their bytes                        */
    int64_t start_ns;         /* CLOCK_MONOTONIC start and end of its last    */
    int64_t end_ns;           /*   run (0 before any; a gs_graph_plan graph:
                                 0): a host split's on the calling thread,
                                 a device split's jobs, first start to last
                                 end (copies included). Read them while g
                                 is not computing.                        */
} gs_split_info;
gs_status gs_graph_split_info(const gs_graph * g, int i, gs_split_info * out);
/* Bytes copied between backends by one gs_graph_compute of g (the sum of
 * every split's bytes_in and bytes_out; 0 for a CPU plan). */
size_t gs_graph_copy_bytes(const gs_graph * g);
/* Bytes g's plan holds in backend b's memory: intermediates and copies
 * (after reuse), and scratch. Both 0 for a backend the plan does not use;
 * for the CPU of a gs_graph_plan graph, gs_graph_mem's numbers. */
gs_status gs_graph_backend_mem(const gs_graph * g, const gs_backend * b, size_t * compute_bytes,
                               size_t * work_bytes);

/* cffi-end */

#ifdef __cplusplus
}
#endif

#endif /* GS_BACKEND_H */
