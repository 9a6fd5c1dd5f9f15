/*
 * Counts the C allocator's allocations of the process it is preloaded into
 * (LD_PRELOAD): every malloc, calloc, realloc and aligned allocation adds one
 * to a counter that mesh_malloc_count() returns. micro-bench's "allocations"
 * mode reads it to count what one chunk through a tunnel stream allocates.
 *
 * The real functions are found with dlsym(RTLD_NEXT); dlsym itself may call
 * calloc before they are known, which a small static arena serves.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

static atomic_ulong allocations;

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);

static _Alignas(16) unsigned char bootstrap[8192];
static size_t bootstrap_used;
static int resolving;

static int from_bootstrap(void *p) {
    return (unsigned char *)p >= bootstrap && (unsigned char *)p < bootstrap + sizeof bootstrap;
}

/* Memory for dlsym while the real functions are being found. */
static void *bootstrap_alloc(size_t size) {
    size_t total = (size + 15) & ~(size_t)15;
    if (bootstrap_used + total > sizeof bootstrap) return NULL;
    void *p = bootstrap + bootstrap_used;
    bootstrap_used += total;
    return p;
}

static void resolve(void) {
    if (real_malloc || resolving) return;
    resolving = 1;
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_free = dlsym(RTLD_NEXT, "free");
    real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = dlsym(RTLD_NEXT, "memalign");
    resolving = 0;
}

unsigned long mesh_malloc_count(void) {
    return atomic_load_explicit(&allocations, memory_order_relaxed);
}

static void counted(void) {
    atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
}

void *malloc(size_t size) {
    resolve();
    if (!real_malloc) return bootstrap_alloc(size);
    counted();
    return real_malloc(size);
}

void *calloc(size_t count, size_t size) {
    resolve();
    if (!real_calloc) return bootstrap_alloc(count * size); /* zeroed: static storage */
    counted();
    return real_calloc(count, size);
}

void *realloc(void *pointer, size_t size) {
    resolve();
    counted();
    if (from_bootstrap(pointer)) {
        void *moved = real_malloc(size);
        if (moved) {
            unsigned char *from = pointer, *to = moved;
            size_t available = (size_t)(bootstrap + sizeof bootstrap - from);
            for (size_t i = 0; i < size && i < available; i++) to[i] = from[i];
        }
        return moved;
    }
    return real_realloc(pointer, size);
}

void free(void *pointer) {
    if (!pointer || from_bootstrap(pointer)) return;
    resolve();
    real_free(pointer);
}

int posix_memalign(void **out, size_t alignment, size_t size) {
    resolve();
    counted();
    return real_posix_memalign(out, alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) {
    resolve();
    counted();
    return real_aligned_alloc(alignment, size);
}

void *memalign(size_t alignment, size_t size) {
    resolve();
    counted();
    return real_memalign(alignment, size);
}
