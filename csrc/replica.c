/* replica.c - replicas (newest snapshot, page cache, local files, hydration
 * file, shared pages) and their snapshots.
 *
 * A snapshot keeps its replica alive; a replica lives until its owner,
 * every open file and every snapshot have let go. The two live in one file
 * because each holds the other. The replica's mutex only guards the
 * newest-snapshot pointer, the live count and the freed-id queue: it is held
 * for a few instructions and never across a call out of this file. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "lsvfs_core.h"
#include "internal.h"

struct lsvfs_replica {
    unsigned refs; /* atomic */
    pthread_mutex_t mu;
    lsvfs_snapshot *current;
    uint64_t *freed; /* ids of snapshots freed, not yet drained */
    size_t nfreed, freed_cap;
    size_t live; /* snapshots alive (guarded by mu) */
    lsvfs_cache *cache;
    uint32_t readahead;
    lsvfs_locals *locals;
    uint32_t lineage; /* atomic */
    lsvfs_hydration *hydration; /* atomic: set once */
    lsvfs_shared_pages *shared; /* atomic: set once */
};

struct lsvfs_snapshot {
    unsigned refs; /* atomic */
    lsvfs_replica *replica;
    lsvfs_ptable *table;
    lsvfs_snapshot_info info;
};

lsvfs_replica *lsvfs_replica_new(size_t cache_bytes, uint32_t readahead)
{
    lsvfs_replica *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->cache = lsvfs_cache_new(cache_bytes);
    r->locals = lsvfs_locals_new();
    if (r->cache == NULL || r->locals == NULL || pthread_mutex_init(&r->mu, NULL) != 0) {
        lsvfs_cache_free(r->cache);
        lsvfs_locals_free(r->locals);
        free(r);
        return NULL;
    }
    r->refs = 1;
    r->readahead = readahead > 0 ? readahead : 1;
    return r;
}

void lsvfs_replica_retain(lsvfs_replica *r)
{
    __atomic_fetch_add(&r->refs, 1, __ATOMIC_RELAXED);
}

void lsvfs_replica_close(lsvfs_replica *r)
{
    lsvfs_replica_publish(r, NULL);
    lsvfs_replica_release(r);
}

void lsvfs_replica_release(lsvfs_replica *r)
{
    if (r == NULL || __atomic_sub_fetch(&r->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    /* The last reference: no snapshot is left, as each holds one. */
    lsvfs_locals_free(r->locals);
    lsvfs_hydration_free(r->hydration);
    lsvfs_shared_pages_free(r->shared);
    pthread_mutex_destroy(&r->mu);
    lsvfs_cache_free(r->cache);
    free(r->freed);
    free(r);
}

lsvfs_cache *lsvfs_replica_cache(lsvfs_replica *r)
{
    return r->cache;
}

uint32_t lsvfs_replica_readahead(const lsvfs_replica *r)
{
    return r->readahead;
}

int lsvfs_replica_set_hydration(lsvfs_replica *r, lsvfs_hydration *h)
{
    lsvfs_hydration *none = NULL;
    return __atomic_compare_exchange_n(&r->hydration, &none, h, 0, __ATOMIC_RELEASE,
                                       __ATOMIC_RELAXED)
               ? LSVFS_OK
               : LSVFS_ERANGE;
}

lsvfs_hydration *lsvfs_replica_hydration(lsvfs_replica *r)
{
    return __atomic_load_n(&r->hydration, __ATOMIC_ACQUIRE);
}

int lsvfs_replica_set_shared_pages(lsvfs_replica *r, lsvfs_shared_pages *sp)
{
    lsvfs_shared_pages *none = NULL;
    return __atomic_compare_exchange_n(&r->shared, &none, sp, 0, __ATOMIC_RELEASE,
                                       __ATOMIC_RELAXED)
               ? LSVFS_OK
               : LSVFS_ERANGE;
}

lsvfs_shared_pages *lsvfs_replica_shared_pages(lsvfs_replica *r)
{
    return __atomic_load_n(&r->shared, __ATOMIC_ACQUIRE);
}

lsvfs_snapshot *lsvfs_snapshot_new(lsvfs_replica *r, const lsvfs_ptable *table,
                                   const lsvfs_snapshot_info *info)
{
    if (info->page_size == 0)
        return NULL;
    lsvfs_snapshot *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    s->table = lsvfs_ptable_clone(table);
    if (s->table == NULL) {
        free(s);
        return NULL;
    }
    s->refs = 1;
    s->info = *info;
    s->replica = r;
    lsvfs_replica_retain(r);
    pthread_mutex_lock(&r->mu);
    r->live++;
    pthread_mutex_unlock(&r->mu);
    return s;
}

void lsvfs_snapshot_retain(lsvfs_snapshot *s)
{
    __atomic_fetch_add(&s->refs, 1, __ATOMIC_RELAXED);
}

void lsvfs_snapshot_release(lsvfs_snapshot *s)
{
    if (s == NULL || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    lsvfs_replica *r = s->replica;
    pthread_mutex_lock(&r->mu);
    r->live--;
    if (r->nfreed == r->freed_cap) {
        size_t cap = r->freed_cap ? r->freed_cap * 2 : 16;
        uint64_t *p = realloc(r->freed, cap * sizeof *p);
        if (p != NULL) {
            r->freed = p;
            r->freed_cap = cap;
        }
    }
    /* Without room the id is lost: Python then keeps that snapshot's
     * bookkeeping a while longer (until the replica closes), no more. */
    if (r->nfreed < r->freed_cap)
        r->freed[r->nfreed++] = s->info.id;
    pthread_mutex_unlock(&r->mu);
    lsvfs_ptable_free(s->table);
    free(s);
    lsvfs_replica_release(r);
}

void lsvfs_snapshot_get_info(const lsvfs_snapshot *s, lsvfs_snapshot_info *out)
{
    *out = s->info;
}

const lsvfs_ptable *lsvfs_snapshot_table(const lsvfs_snapshot *s)
{
    return s->table;
}

const lsvfs_snapshot_info *lsvfs_snapshot_info_of(const lsvfs_snapshot *s)
{
    return &s->info;
}

void lsvfs_replica_publish(lsvfs_replica *r, lsvfs_snapshot *s)
{
    pthread_mutex_lock(&r->mu);
    lsvfs_snapshot *old = r->current;
    r->current = s;
    pthread_mutex_unlock(&r->mu);
    lsvfs_snapshot_release(old);
}

lsvfs_snapshot *lsvfs_replica_current(lsvfs_replica *r)
{
    pthread_mutex_lock(&r->mu);
    lsvfs_snapshot *s = r->current;
    if (s != NULL)
        lsvfs_snapshot_retain(s);
    pthread_mutex_unlock(&r->mu);
    return s;
}

size_t lsvfs_replica_drain_freed(lsvfs_replica *r, uint64_t *ids, size_t cap)
{
    pthread_mutex_lock(&r->mu);
    size_t n = r->nfreed < cap ? r->nfreed : cap;
    if (n > 0)
        memcpy(ids, r->freed + (r->nfreed - n), n * sizeof *ids);
    r->nfreed -= n;
    pthread_mutex_unlock(&r->mu);
    return n;
}

size_t lsvfs_replica_live_snapshots(lsvfs_replica *r)
{
    pthread_mutex_lock(&r->mu);
    size_t n = r->live;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* ---- files C reads itself (local.c) -------------------------------------- */

int lsvfs_replica_set_local(lsvfs_replica *r, uint32_t slot, const char *path)
{
    return lsvfs_locals_add(r->locals, slot, path);
}

void lsvfs_replica_forget_local(lsvfs_replica *r, uint32_t slot)
{
    lsvfs_locals_forget(r->locals, slot);
}

void lsvfs_replica_new_lineage(lsvfs_replica *r)
{
    __atomic_fetch_add(&r->lineage, 1, __ATOMIC_ACQ_REL);
}

uint32_t lsvfs_replica_lineage(lsvfs_replica *r)
{
    return __atomic_load_n(&r->lineage, __ATOMIC_ACQUIRE);
}

void lsvfs_replica_local_reads(lsvfs_replica *r, uint64_t *reads, uint64_t *bytes)
{
    lsvfs_locals_counts(r->locals, reads, bytes);
}

int lsvfs_replica_read_local(lsvfs_replica *r, const lsvfs_ptable *t,
                             uint32_t pgno, uint32_t readahead,
                             uint32_t page_size, uint8_t *out)
{
    return lsvfs_locals_read(r->locals, r->cache, t, pgno, readahead, page_size, out);
}
