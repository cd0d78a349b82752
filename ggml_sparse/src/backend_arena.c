/*
 * backend_arena.c - the first-fit arena allocator of the devices (the
 * stand-in's host arena, the CUDA backend's one cudaMalloc): offsets into a
 * fixed range of `size` bytes, blocks in multiples of GS_ALIGN, the lowest
 * offset that fits. Bookkeeping only: it never touches the memory, so it
 * serves host and device arenas alike. Callers serialise the calls.
 */
#include "backend_impl.h"

#include <stdlib.h>

static bool grow(void ** arr, int * cap, int need, size_t elem) {
    if (need <= *cap) return true;
    int c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void * p = realloc(*arr, (size_t) c * elem);
    if (!p) return false;
    *arr = p;
    *cap = c;
    return true;
}

bool gs_arena_init(gs_arena * a, size_t size) {
    memset(a, 0, sizeof(*a));
    a->size = size;
    if (!grow((void **) &a->free_list, &a->cap_free, 1, sizeof(gs_block))) return false;
    a->free_list[0] = (gs_block) { 0, size };
    a->n_free = 1;
    return true;
}

void gs_arena_destroy(gs_arena * a) {
    free(a->free_list);
    free(a->used);
    memset(a, 0, sizeof(*a));
}

gs_status gs_arena_alloc(gs_arena * a, const char * name, size_t n, size_t * offs_out) {
    const size_t want = (n + GS_ALIGN - 1) / GS_ALIGN * GS_ALIGN;
    int at = -1;
    size_t largest = 0;
    for (int i = 0; i < a->n_free; i++) {
        if (a->free_list[i].size > largest) largest = a->free_list[i].size;
        if (at < 0 && a->free_list[i].size >= want) at = i;
    }
    if (at < 0 || want < n) {
        return gs_set_error(GS_ERR_OOM, "backend '%s': cannot allocate %zu bytes (%zu aligned): %zu of %zu bytes "
                            "free, the largest free block %zu bytes", name, n, want, a->size - a->used_bytes,
                            a->size, largest);
    }
    if (!grow((void **) &a->used, &a->cap_used, a->n_used + 1, sizeof(gs_block))) {
        return gs_set_error(GS_ERR_OOM, "backend '%s': out of host memory for its block table", name);
    }
    const size_t offs = a->free_list[at].offs;
    a->free_list[at].offs += want;
    a->free_list[at].size -= want;
    if (a->free_list[at].size == 0) {
        memmove(&a->free_list[at], &a->free_list[at + 1], (size_t) (a->n_free - at - 1) * sizeof(gs_block));
        a->n_free--;
    }
    int i = a->n_used;
    while (i > 0 && a->used[i - 1].offs > offs) i--;
    memmove(&a->used[i + 1], &a->used[i], (size_t) (a->n_used - i) * sizeof(gs_block));
    a->used[i] = (gs_block) { offs, want };
    a->n_used++;
    a->used_bytes += want;
    if (a->used_bytes > a->peak_bytes) a->peak_bytes = a->used_bytes;
    *offs_out = offs;
    return GS_OK;
}

gs_status gs_arena_release(gs_arena * a, const char * name, size_t offs, const void * p) {
    int lo = 0, hi = a->n_used;      /* binary search for the block at offs */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (a->used[mid].offs < offs) lo = mid + 1;
        else hi = mid;
    }
    if (lo == a->n_used || a->used[lo].offs != offs) {
        return gs_set_error(GS_ERR_INVALID_ARG, "backend '%s': %p is not a block of its memory", name, p);
    }
    if (!grow((void **) &a->free_list, &a->cap_free, a->n_free + 1, sizeof(gs_block))) {
        return gs_set_error(GS_ERR_OOM, "backend '%s': out of host memory for its free list", name);
    }
    const gs_block blk = a->used[lo];
    memmove(&a->used[lo], &a->used[lo + 1], (size_t) (a->n_used - lo - 1) * sizeof(gs_block));
    a->n_used--;
    a->used_bytes -= blk.size;
    gs_allocator al = { a->free_list, a->n_free, a->size };
    gs_free_block(&al, blk.offs, blk.size);   /* sorted insert, merged with neighbours */
    a->n_free = al.n_free;
    return GS_OK;
}
