/*
 * backend_cuda.cu - gs_backend_cuda_new: a CUDA device as a backend of the
 * scheduler (the table of backend_impl.h, as the stand-in implements it).
 *
 * Memory: ONE cudaMalloc of the requested arena, carved first-fit by the
 * devices' shared allocator (backend_arena.c), so a plan never holds more
 * device memory than the budget.
 * Copies: cudaMemcpyAsync on the backend's stream, counted as the stand-in
 * counts them; set/get block until the copy (and the queued work before it)
 * is done. Host memory is not staged through pinned buffers: a job's copies
 * to pageable host memory make submit wait for that job (correct, with less
 * overlap than pinned staging would give).
 * Jobs: submit enqueues the job's input copies, one kernel launch per node
 * (gs_cuda_launch_node) and the output copies, then a host function marks
 * the job done and an event is recorded; wait synchronises on that event.
 * Launch errors, ops without a kernel and non-contiguous tensors become the
 * job's status with the node's name; nodes the kernels cannot run are also
 * refused at planning time (cuda_supports). Index inputs are not checked
 * on the device: the kernels must not read out of bounds on a bad index,
 * but the CPU's GS_ERR_RUNTIME for one is not raised here.
 */
#include <stdio.h>

#include <mutex>
#include <new>
#include <vector>

#include "common.cuh"

extern "C" {
#include "../backend_impl.h"
}

#define MAX_SRC 4

namespace {

struct cuda_backend;

/* A job in flight: its event, and what the host function needs. */
struct pending {
    cuda_backend * b;
    gs_job * job;
    cudaEvent_t ev;
};

struct cuda_backend {
    gs_backend base;               /* first: a gs_backend * is a cuda_backend * */
    int device;
    cudaStream_t stream;
    uint8_t * arena;
    size_t size;
    std::mutex mem_mu;
    gs_arena mem;
    std::mutex mu;                 /* the stream's order: submits and copies */
    std::vector<pending *> inflight;
    gs_status async_status;
    char async_msg[GS_JOB_MSG];
    std::atomic<uint64_t> h2d_bytes{0}, h2d_copies{0}, d2h_bytes{0}, d2h_copies{0}, splits{0}, syncs{0};
    std::atomic<int64_t> busy_ns{0}, last_start_ns{0}, last_end_ns{0};
};

cuda_backend * as_cuda(const gs_backend * b) { return (cuda_backend *) b; }

/* ---- memory ------------------------------------------------------------- */
gs_status cuda_alloc(gs_backend * bk, size_t n, void ** out) {
    cuda_backend * b = as_cuda(bk);
    size_t offs = 0;
    gs_status st;
    {
        std::lock_guard<std::mutex> lk(b->mem_mu);
        st = gs_arena_alloc(&b->mem, "cuda", n, &offs);
    }
    if (st == GS_OK) *out = b->arena + offs;
    return st;
}

gs_status cuda_release(gs_backend * bk, void * p) {
    cuda_backend * b = as_cuda(bk);
    const uint8_t * q = (const uint8_t *) p;
    const size_t offs = q >= b->arena ? (size_t) (q - b->arena) : SIZE_MAX;
    std::lock_guard<std::mutex> lk(b->mem_mu);
    return gs_arena_release(&b->mem, "cuda", offs, p);
}

bool cuda_contains(const gs_backend * bk, const void * p, size_t n) {
    const cuda_backend * b = as_cuda(bk);
    const uint8_t * q = (const uint8_t *) p;
    return q >= b->arena && q <= b->arena + b->size && n <= (size_t) (b->arena + b->size - q);
}

/* ---- copies ------------------------------------------------------------- */
gs_status blocking_copy(cuda_backend * b, void * dst, const void * src, size_t n, bool to_device) {
    const void * dev = to_device ? dst : src;
    if (!cuda_contains(&b->base, dev, n))
        return gs_set_error(GS_ERR_INVALID_ARG, "backend 'cuda': %zu bytes at %p are not in its memory", n, dev);
    std::lock_guard<std::mutex> lk(b->mu);
    GS_CUDA_TRY(cudaSetDevice(b->device), "cudaSetDevice");
    GS_CUDA_TRY(cudaMemcpyAsync(dst, src, n, to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, b->stream),
                to_device ? "copy to the device" : "copy from the device");
    GS_CUDA_TRY(cudaStreamSynchronize(b->stream), "copy");
    if (to_device) { b->h2d_bytes += n; b->h2d_copies += 1; }
    else { b->d2h_bytes += n; b->d2h_copies += 1; }
    return GS_OK;
}

gs_status cuda_set(gs_backend * b, void * dst, const void * src, size_t n) {
    return blocking_copy(as_cuda(b), dst, src, n, true);
}

gs_status cuda_get(gs_backend * b, void * dst, const void * src, size_t n) {
    return blocking_copy(as_cuda(b), dst, src, n, false);
}

/* ---- nodes -------------------------------------------------------------- */
/* Whether the kernels can read t as it is (NULL: an absent source). */
bool readable(const gs_tensor * t) { return !t || gs_is_contiguous(t); }

bool cuda_supports(const gs_backend * b, const gs_tensor * node, char * why, size_t why_size) {
    if (!gs_cuda_has_kernel(node->op)) {
        snprintf(why, why_size, "op %s has no CUDA kernel", gs_op_str(node->op));
        return false;
    }
    if (node->op == GS_OP_MUL_MAT && node->op_params[0]) {
        snprintf(why, why_size, "a rowwise (batch-invariant) product runs on the CPU");
        return false;
    }
    if (node->op == GS_OP_ATTENTION && (node->op_params[3] || node->op_params[4])) {
        snprintf(why, why_size, "the CUDA attention kernel reads one sequence stream (n_stream = 0) only");
        return false;
    }
    for (int i = MAX_SRC; i < GS_MAX_SRC; i++) {
        if (node->src[i]) {
            snprintf(why, why_size, "the CUDA kernels take at most %d sources", MAX_SRC);
            return false;
        }
    }
    if (!readable(node)) {
        snprintf(why, why_size, "its result is not contiguous (a strided view); the CUDA kernels write contiguous "
                 "tensors only");
        return false;
    }
    for (int i = 0; i < MAX_SRC; i++) {
        if (node->op == GS_OP_CPY && i == 1) continue;    /* the destination: the node itself */
        if (!readable(node->src[i])) {
            const gs_tensor * t = node->src[i];
            snprintf(why, why_size, "source %d '%s' is not contiguous (nb = %zu %zu %zu %zu: a strided or permuted "
                     "view); the CUDA kernels read contiguous tensors only", i, t->name, t->nb[0], t->nb[1],
                     t->nb[2], t->nb[3]);
            return false;
        }
    }
    return true;
}

void to_dt(const gs_tensor * t, gs_dt * d) {
    memset(d, 0, sizeof(*d));
    if (!t) return;
    d->type = t->type;
    memcpy(d->ne, t->ne, sizeof(d->ne));
    d->data = t->data;
}

/* Enqueue node on the stream; on failure the job's message names it. */
gs_status launch(cuda_backend * b, gs_tensor * node, gs_job * job) {
    char why[256];
    gs_status st = GS_OK;
    if (!cuda_supports(&b->base, node, why, sizeof(why))) {
        st = gs_set_error(GS_ERR_UNSUPPORTED, "%s", why);
    } else {
        gs_dt src[MAX_SRC], dst;
        for (int i = 0; i < MAX_SRC; i++) to_dt(node->src[i], &src[i]);
        to_dt(node, &dst);
        st = gs_cuda_launch_node(node, src, &dst, b->stream);
    }
    if (st) {
        snprintf(job->msg, sizeof(job->msg), "node '%s' (%s) on backend 'cuda': %s", node->name,
                 gs_op_str(node->op), gs_last_error());
    }
    return st;
}

/* Lower *fail_at to index. */
void note_failure(atomic_int * fail_at, int index) {
    int cur = atomic_load(fail_at);
    while (index < cur && !atomic_compare_exchange_weak(fail_at, &cur, index)) {}
}

gs_status copy_failed(gs_job * job, cudaError_t err, const char * what) {
    gs_status st = gs_cuda_status(err, what);
    snprintf(job->msg, sizeof(job->msg), "backend 'cuda': %s", gs_last_error());
    return st;
}

/* Enqueue the job's copies in, nodes and copies out (caller holds mu). */
gs_status enqueue(cuda_backend * b, gs_job * job) {
    const gs_split_exec * e = job->exec;
    for (int i = 0; i < e->n_in; i++) {
        cudaError_t err = cudaMemcpyAsync(e->in[i].dst, e->in[i].src, e->in[i].n, cudaMemcpyHostToDevice, b->stream);
        if (err != cudaSuccess) return copy_failed(job, err, "a split's copy to the device");
        b->h2d_bytes += e->in[i].n;
        b->h2d_copies += 1;
    }
    for (int k = 0; k < e->n_nodes; k++) {
        gs_status st = launch(b, e->nodes[k], job);
        if (st) return st;
    }
    for (int i = 0; i < e->n_out; i++) {
        cudaError_t err = cudaMemcpyAsync(e->out[i].dst, e->out[i].src, e->out[i].n, cudaMemcpyDeviceToHost,
                                          b->stream);
        if (err != cudaSuccess) return copy_failed(job, err, "a split's copy to the host");
        b->d2h_bytes += e->out[i].n;
        b->d2h_copies += 1;
    }
    return GS_OK;
}

/* ---- jobs --------------------------------------------------------------- */
void CUDART_CB job_started(void * arg) { ((pending *) arg)->job->start_ns = gs_now_ns(); }

void CUDART_CB job_done(void * arg) {
    pending * p = (pending *) arg;
    gs_job * job = p->job;
    job->end_ns = gs_now_ns();
    p->b->busy_ns += job->end_ns - job->start_ns;
    p->b->last_start_ns = job->start_ns;
    p->b->last_end_ns = job->end_ns;
    p->b->splits += 1;
    atomic_store(&job->state, (int) GS_JOB_DONE);
}

/* A job that ends at submit (skipped, or failed to enqueue): done now. */
void finish_now(cuda_backend * b, gs_job * job, gs_status st) {
    job->status = st;
    job->end_ns = gs_now_ns();
    if (st && job->fail_at) note_failure(job->fail_at, job->index);
    if (st && job->async && !b->async_status) {
        b->async_status = st;
        snprintf(b->async_msg, sizeof(b->async_msg), "%s", job->msg);
    }
    atomic_store(&job->state, (int) GS_JOB_DONE);
}

gs_status cuda_submit(gs_backend * bk, gs_job * job) {
    cuda_backend * b = as_cuda(bk);
    job->next = NULL;
    job->status = GS_OK;
    job->msg[0] = '\0';
    job->start_ns = gs_now_ns();
    atomic_store(&job->state, (int) GS_JOB_QUEUED);
    std::lock_guard<std::mutex> lk(b->mu);
    if (job->fail_at && atomic_load(job->fail_at) < job->index) {
        snprintf(job->msg, sizeof(job->msg), "split %d on backend 'cuda' was skipped: an earlier split of its graph "
                 "failed", job->index);
        finish_now(b, job, GS_ERR_STATE);
        return GS_OK;
    }
    pending * p = new (std::nothrow) pending{b, job, nullptr};
    if (!p) {
        snprintf(job->msg, sizeof(job->msg), "backend 'cuda': out of host memory for a job");
        finish_now(b, job, GS_ERR_OOM);
        return GS_OK;
    }
    cudaError_t err = cudaSetDevice(b->device);
    if (err == cudaSuccess) err = cudaEventCreateWithFlags(&p->ev, cudaEventDisableTiming);
    if (err != cudaSuccess) {
        gs_status st = copy_failed(job, err, "job event");
        delete p;
        finish_now(b, job, st);
        return GS_OK;
    }
    err = cudaLaunchHostFunc(b->stream, job_started, p);
    gs_status st = err == cudaSuccess ? enqueue(b, job) : copy_failed(job, err, "cudaLaunchHostFunc");
    if (st == GS_OK) {
        err = cudaLaunchHostFunc(b->stream, job_done, p);
        if (err == cudaSuccess) err = cudaEventRecord(p->ev, b->stream);
        if (err != cudaSuccess) st = copy_failed(job, err, "job completion");
    }
    if (st) {
        /* let what was enqueued before the failure finish: the job's
         * memory may be reused as soon as it is reported done */
        cudaStreamSynchronize(b->stream);
        cudaEventDestroy(p->ev);
        delete p;
        finish_now(b, job, st);
        return GS_OK;
    }
    b->inflight.push_back(p);
    return GS_OK;
}

/* Take job's record out of the list (NULL when it has none). */
pending * take(cuda_backend * b, const gs_job * job) {
    std::lock_guard<std::mutex> lk(b->mu);
    for (size_t i = 0; i < b->inflight.size(); i++) {
        if (b->inflight[i]->job == job) {
            pending * p = b->inflight[i];
            b->inflight.erase(b->inflight.begin() + (long) i);
            return p;
        }
    }
    return nullptr;
}

/* After its event: the job's status from the device's answer. */
void settle(cuda_backend * b, pending * p, cudaError_t err) {
    gs_job * job = p->job;
    if (err != cudaSuccess && job->status == GS_OK) {
        gs_status st = gs_cuda_status(err, "a job's kernels");
        snprintf(job->msg, sizeof(job->msg), "backend 'cuda': split %d failed on the device: %s", job->index,
                 gs_last_error());
        job->status = st;
        if (job->fail_at) note_failure(job->fail_at, job->index);
        if (job->async && !b->async_status) {
            b->async_status = st;
            snprintf(b->async_msg, sizeof(b->async_msg), "%s", job->msg);
        }
    }
    atomic_store(&job->state, (int) GS_JOB_DONE);     /* also when the host function never ran */
    cudaEventDestroy(p->ev);
    delete p;
}

gs_status cuda_wait(gs_backend * bk, gs_job * job) {
    cuda_backend * b = as_cuda(bk);
    pending * p = take(b, job);
    if (p) {
        cudaSetDevice(b->device);
        cudaError_t err = cudaEventSynchronize(p->ev);
        std::lock_guard<std::mutex> lk(b->mu);
        settle(b, p, err);
    }
    b->syncs += 1;
    if (job->status) return gs_set_error(job->status, "%s", job->msg);
    return GS_OK;
}

void drain_locked(cuda_backend * b) {
    cudaSetDevice(b->device);
    cudaError_t err = cudaStreamSynchronize(b->stream);
    for (pending * p : b->inflight) settle(b, p, err == cudaSuccess ? cudaEventQuery(p->ev) : err);
    b->inflight.clear();
}

void cuda_drain(gs_backend * bk) {
    cuda_backend * b = as_cuda(bk);
    std::lock_guard<std::mutex> lk(b->mu);
    drain_locked(b);
}

gs_status cuda_synchronize(gs_backend * bk) {
    cuda_backend * b = as_cuda(bk);
    char msg[GS_JOB_MSG];
    gs_status st;
    {
        std::lock_guard<std::mutex> lk(b->mu);
        drain_locked(b);
        st = b->async_status;
        snprintf(msg, sizeof(msg), "%s", b->async_msg);
        b->async_status = GS_OK;
        b->async_msg[0] = '\0';
    }
    b->syncs += 1;
    if (st) return gs_set_error(st, "%s", msg);
    return GS_OK;
}

/* ---- the rest of the table ---------------------------------------------- */
int cuda_n_threads(const gs_backend * b) { return 1; }

void cuda_stats(const gs_backend * bk, gs_backend_stats * out) {
    cuda_backend * b = as_cuda(bk);
    memset(out, 0, sizeof(*out));
    out->h2d_bytes = b->h2d_bytes;
    out->h2d_copies = b->h2d_copies;
    out->d2h_bytes = b->d2h_bytes;
    out->d2h_copies = b->d2h_copies;
    out->splits = b->splits;
    out->syncs = b->syncs;
    out->busy_ns = b->busy_ns;
    out->last_job_start_ns = b->last_start_ns;
    out->last_job_end_ns = b->last_end_ns;
    std::lock_guard<std::mutex> lk(b->mem_mu);
    out->arena_bytes = b->size;
    out->arena_used = b->mem.used_bytes;
    out->arena_peak = b->mem.peak_bytes;
}

void cuda_free(gs_backend * bk) {
    cuda_backend * b = as_cuda(bk);
    if (b->stream) {
        std::lock_guard<std::mutex> lk(b->mu);
        drain_locked(b);
    }
    cudaSetDevice(b->device);
    if (b->arena) cudaFree(b->arena);
    if (b->stream) cudaStreamDestroy(b->stream);
    gs_arena_destroy(&b->mem);
    delete b;
}

const gs_backend_iface cuda_iface = {
    /* name */ "cuda", /* is_host */ false, cuda_alloc, cuda_release, cuda_set, cuda_get, cuda_contains,
    cuda_n_threads, cuda_submit, cuda_wait, cuda_synchronize, cuda_drain, cuda_stats, cuda_free, cuda_supports,
};

}  // namespace

extern "C" gs_status gs_backend_cuda_new(int device, size_t arena_bytes, gs_backend ** out) {
    GS_CHECK_ARG(out, "gs_backend_cuda_new: NULL output");
    *out = NULL;
    GS_CHECK_ARG(arena_bytes >= 1 && arena_bytes <= SIZE_MAX / 2, "gs_backend_cuda_new: bad arena size %zu",
                 arena_bytes);
    gs_init();
    gs_status st = gs_cuda_use_device(device);
    if (st != GS_OK) return st;
    cuda_backend * b = new (std::nothrow) cuda_backend();
    if (!b) return gs_set_error(GS_ERR_OOM, "gs_backend_cuda_new: out of host memory");
    b->base.iface = &cuda_iface;
    b->device = device;
    b->size = arena_bytes;
    if (!gs_arena_init(&b->mem, arena_bytes)) {
        cuda_free(&b->base);
        return gs_set_error(GS_ERR_OOM, "gs_backend_cuda_new: out of host memory");
    }
    cudaError_t err = cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking);
    if (err != cudaSuccess) {
        b->stream = nullptr;
        st = gs_cuda_status(err, "cudaStreamCreate");
        cuda_free(&b->base);
        return st;
    }
    /* the budget: one allocation, rounded up to whole GS_ALIGN blocks */
    err = cudaMalloc((void **) &b->arena, (arena_bytes + GS_ALIGN - 1) / GS_ALIGN * GS_ALIGN);
    if (err != cudaSuccess) {
        b->arena = nullptr;
        st = gs_cuda_status(err, "cudaMalloc of the arena");
        cuda_free(&b->base);
        return st;
    }
    *out = &b->base;
    return GS_OK;
}
