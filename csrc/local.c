/* local.c - LTX files C reads itself (a directory replica): a read that
 * misses the cache is served from them by pread, without entering Python.
 *
 * The slot list has its own mutex, held only to find or open a descriptor;
 * a descriptor is opened on first use and kept until the slot is forgotten
 * or the replica goes. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lsvfs_core.h"
#include "internal.h"

struct local_file {
    uint32_t slot;
    int fd; /* -1 until first read */
    char *path;
};

struct lsvfs_locals {
    pthread_mutex_t mu;
    struct local_file *files; /* guarded by mu */
    size_t n, cap;
    int any; /* atomic: set once, read without the mutex */
    uint64_t reads, bytes; /* atomic */
};

lsvfs_locals *lsvfs_locals_new(void)
{
    lsvfs_locals *l = calloc(1, sizeof *l);
    if (l != NULL && pthread_mutex_init(&l->mu, NULL) != 0) {
        free(l);
        return NULL;
    }
    return l;
}

void lsvfs_locals_free(lsvfs_locals *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++) {
        if (l->files[i].fd >= 0)
            close(l->files[i].fd);
        free(l->files[i].path);
    }
    free(l->files);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

int lsvfs_locals_add(lsvfs_locals *l, uint32_t slot, const char *path)
{
    char *copy = strdup(path);
    if (copy == NULL)
        return LSVFS_ENOMEM;
    pthread_mutex_lock(&l->mu);
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        struct local_file *p = realloc(l->files, cap * sizeof *p);
        if (p == NULL) {
            pthread_mutex_unlock(&l->mu);
            free(copy);
            return LSVFS_ENOMEM;
        }
        l->files = p;
        l->cap = cap;
    }
    l->files[l->n++] = (struct local_file){slot, -1, copy};
    pthread_mutex_unlock(&l->mu);
    __atomic_store_n(&l->any, 1, __ATOMIC_RELEASE);
    return LSVFS_OK;
}

void lsvfs_locals_forget(lsvfs_locals *l, uint32_t slot)
{
    pthread_mutex_lock(&l->mu);
    for (size_t i = 0; i < l->n; i++) {
        if (l->files[i].slot != slot)
            continue;
        if (l->files[i].fd >= 0)
            close(l->files[i].fd);
        free(l->files[i].path);
        l->files[i] = l->files[--l->n];
        break;
    }
    pthread_mutex_unlock(&l->mu);
}

void lsvfs_locals_counts(lsvfs_locals *l, uint64_t *reads, uint64_t *bytes)
{
    *reads = __atomic_load_n(&l->reads, __ATOMIC_RELAXED);
    *bytes = __atomic_load_n(&l->bytes, __ATOMIC_RELAXED);
}

/* The descriptor of a local slot, opened on first use; -1 if not local. */
static int local_fd(lsvfs_locals *l, uint32_t slot)
{
    int fd = -1;
    pthread_mutex_lock(&l->mu);
    for (size_t i = 0; i < l->n; i++) {
        if (l->files[i].slot != slot)
            continue;
        if (l->files[i].fd < 0)
            l->files[i].fd = open(l->files[i].path, O_RDONLY | O_CLOEXEC);
        fd = l->files[i].fd;
        break;
    }
    pthread_mutex_unlock(&l->mu);
    return fd;
}

int lsvfs_locals_read(lsvfs_locals *l, lsvfs_cache *cache, const lsvfs_ptable *t,
                      uint32_t pgno, uint32_t readahead, uint32_t page_size, uint8_t *out)
{
    if (!__atomic_load_n(&l->any, __ATOMIC_ACQUIRE)) /* remote replicas skip the work */
        return LSVFS_ENOTFOUND;
    uint32_t most = readahead > 0 ? readahead : 1;
    lsvfs_index_entry *run = malloc(most * sizeof *run);
    if (run == NULL)
        return LSVFS_ENOMEM;
    uint32_t slot = 0;
    size_t n = lsvfs_ptable_run(t, pgno, most, &slot, run);
    int fd = n > 0 ? local_fd(l, slot) : -1;
    if (fd < 0) {
        free(run);
        return LSVFS_ENOTFOUND;
    }
    uint64_t start = run[0].offset;
    uint64_t len64 = run[n - 1].offset + run[n - 1].size - start;
    uint8_t *buf = len64 <= SIZE_MAX ? malloc((size_t)len64) : NULL;
    int rc = buf == NULL ? LSVFS_ENOMEM : lsvfs_pread_full(fd, buf, (size_t)len64, start);
    if (rc == LSVFS_OK) {
        size_t failed;
        __atomic_fetch_add(&l->reads, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&l->bytes, len64, __ATOMIC_RELAXED);
        rc = lsvfs_cache_fill(cache, slot, buf, (size_t)len64, start, run, n,
                              page_size, out, LSVFS_FILL_ASKED, &failed);
    }
    free(buf);
    free(run);
    return rc;
}
