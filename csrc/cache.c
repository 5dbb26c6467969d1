/* cache.c - decoded pages keyed by frame location, bounded by bytes.
 *
 * Shards, each a mutex, a chained hash table and a recency list, with an
 * equal share of the byte budget. A hit copies the page out under the
 * shard's mutex, so eviction can never free bytes a reader is copying; with
 * up to 16 shards, readers of different pages rarely meet on one mutex.
 *
 * Scan resistance. Eviction takes the cold end of the list. A page a reader
 * asked for one at a time goes to the hot end (plain LRU: a point lookup's
 * pages stay while they are used). A sequential reader's pages are used
 * once and then no more, so they must not push out the pages that are used
 * again: the page a sequential miss asked for goes to the cold end, marked
 * ONCE; the pages read ahead of it go to the hot end, marked AHEAD, so they
 * stay until the reader gets to them; a hit on an AHEAD page marks it ONCE
 * and moves it to the cold end; a hit on a ONCE page (its second use) makes
 * it an ordinary page at the hot end. So a scan larger than the cache
 * evicts the pages it has just read (the last one first) and at most about
 * one read-ahead run of the others: the pages it keeps from one scan hit on
 * the next, and a working set used meanwhile stays cached.
 *
 * Memory. Entries (key, links, state) are small structs carved from
 * per-shard blocks, apart from the page bytes, so hash chains and the list
 * are walked without touching page memory. Page bytes are cut from slabs
 * (for the first page size the shard sees; another size gets its own
 * malloc): a miss in a full shard takes over the coldest entry's buffer, a
 * buffer freed otherwise is kept for the next page, and clear() and free()
 * hand back a few slabs, not one free() per page (per-page frees showed up
 * in a cold scan's close(): bench/README.md). A shard of 4 MiB or more maps
 * 2 MiB slabs asking for huge pages: filling 64 MiB then takes 32 page
 * faults, not 16384 (the faults of fresh 4 KiB pages cost a cold scan more
 * than its decoding). Pages being filled count against the budget like cached ones,
 * so the slabs hold at most the budget rounded up to a page, plus a page
 * per allocation that could not take over an evicted one. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <stdlib.h>
#include <string.h>

#include "lsvfs_core.h"

#define MAX_SHARDS 16
#define MIN_SHARD_BYTES (4u << 20)
#define BLOCK_ENTRIES 128
#define HUGE_SLAB ((size_t)2 << 20)
/* Under AddressSanitizer each slab is one malloc'd page, so every page
 * buffer has its own redzones (the slab code still runs). */
#if defined(__SANITIZE_ADDRESS__)
#define MAP_SLABS 0
#else
#define MAP_SLABS 1
#endif

enum { E_NORMAL, E_AHEAD, E_ONCE };

typedef struct entry {
    struct entry *next; /* hash chain; the free list */
    struct entry *newer, *older;
    uint8_t *data;
    uint64_t offset;
    uint32_t slot;
    uint32_t len;
    uint16_t state;
    uint16_t own; /* data is its own malloc, not a slab's */
} entry;

typedef struct block {
    struct block *next;
    entry entries[BLOCK_ENTRIES];
} block;

typedef struct slab {
    struct slab *next;
    uint8_t *mem;
    size_t bytes;
    int mapped; /* mmap'd, else malloc'd */
} slab;

typedef struct {
    pthread_mutex_t mu;
    entry **buckets;
    size_t nbuckets; /* power of two */
    entry *newest, *oldest;
    entry *free_entries; /* unused structs, chained by next */
    block *blocks;
    slab *slabs;
    uint8_t *spare;   /* unused slab buffers, chained through their first bytes */
    uint8_t *bump;    /* the newest slab's room not yet cut */
    size_t bump_left; /* pages of it */
    size_t slab_bytes; /* of every slab together */
    uint32_t slab_len; /* page size the slabs are cut for; 0 before any */
    size_t inflight, inflight_bytes; /* entries reserved, not yet inserted or discarded */
    size_t bytes, budget, entries;
    uint64_t hits, misses, evictions;
} shard;

struct lsvfs_cache {
    size_t max_bytes;
    unsigned nshards; /* power of two */
    shard shards[MAX_SHARDS];
};

static uint64_t mix(uint32_t slot, uint64_t offset)
{
    uint64_t x = offset ^ ((uint64_t)slot << 40) ^ slot;
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

lsvfs_cache *lsvfs_cache_new(size_t max_bytes)
{
    lsvfs_cache *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    unsigned n = 1;
    while (n < MAX_SHARDS && max_bytes / (2u * n) >= MIN_SHARD_BYTES)
        n *= 2;
    c->max_bytes = max_bytes;
    c->nshards = n;
    for (unsigned i = 0; i < n; i++) {
        shard *s = &c->shards[i];
        s->budget = max_bytes / n;
        s->nbuckets = 64;
        s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
        if (s->buckets == NULL || pthread_mutex_init(&s->mu, NULL) != 0) {
            free(s->buckets);
            while (i-- > 0) {
                pthread_mutex_destroy(&c->shards[i].mu);
                free(c->shards[i].buckets);
            }
            free(c);
            return NULL;
        }
    }
    return c;
}

static void release_entry(shard *s, entry *e);

/* Drop every page and put every entry back on the free list; the slabs go
 * too unless an entry reserved from them is being filled. */
static void drop_all(shard *s)
{
    int keep_slabs = s->inflight > 0;
    entry *e = s->newest;
    while (e != NULL) {
        entry *older = e->older;
        if (!keep_slabs && !e->own)
            e->data = NULL; /* its slab goes below: no need to touch the page */
        release_entry(s, e);
        e = older;
    }
    s->newest = s->oldest = NULL;
    s->bytes = s->entries = 0;
    if (keep_slabs)
        return;
    slab *b = s->slabs;
    while (b != NULL) {
        slab *next = b->next;
        if (b->mapped)
            munmap(b->mem, b->bytes);
        else
            free(b->mem);
        free(b);
        b = next;
    }
    s->slabs = NULL;
    s->spare = s->bump = NULL;
    s->bump_left = 0;
    s->slab_bytes = 0;
    s->slab_len = 0;
}

void lsvfs_cache_free(lsvfs_cache *c)
{
    if (c == NULL)
        return;
    for (unsigned i = 0; i < c->nshards; i++) {
        shard *s = &c->shards[i];
        drop_all(s);
        block *b = s->blocks;
        while (b != NULL) {
            block *next = b->next;
            free(b);
            b = next;
        }
        free(s->buckets);
        pthread_mutex_destroy(&s->mu);
    }
    free(c);
}

static shard *shard_of(lsvfs_cache *c, uint64_t h)
{
    return &c->shards[(h >> 56) & (c->nshards - 1)];
}

static entry **find(shard *s, uint64_t h, uint32_t slot, uint64_t offset)
{
    entry **p = &s->buckets[h & (s->nbuckets - 1)];
    while (*p != NULL && ((*p)->slot != slot || (*p)->offset != offset))
        p = &(*p)->next;
    return p;
}

static void lru_unlink(shard *s, entry *e)
{
    if (e->newer != NULL)
        e->newer->older = e->older;
    else
        s->newest = e->older;
    if (e->older != NULL)
        e->older->newer = e->newer;
    else
        s->oldest = e->newer;
}

/* At the hot end. */
static void lru_push(shard *s, entry *e)
{
    e->newer = NULL;
    e->older = s->newest;
    if (s->newest != NULL)
        s->newest->newer = e;
    s->newest = e;
    if (s->oldest == NULL)
        s->oldest = e;
}

/* At the cold end: the next page evicted. */
static void lru_push_cold(shard *s, entry *e)
{
    e->older = NULL;
    e->newer = s->oldest;
    if (s->oldest != NULL)
        s->oldest->older = e;
    s->oldest = e;
    if (s->newest == NULL)
        s->newest = e;
}

/* A hit on e: its place and state after this use (see the top). */
static void touch(shard *s, entry *e)
{
    if (e->state == E_AHEAD) {
        e->state = E_ONCE;
        if (s->oldest != e) {
            lru_unlink(s, e);
            lru_push_cold(s, e);
        }
        return;
    }
    e->state = E_NORMAL;
    if (s->newest != e) {
        lru_unlink(s, e);
        lru_push(s, e);
    }
}

int lsvfs_cache_get(lsvfs_cache *c, uint32_t slot, uint64_t offset,
                    uint8_t *out, size_t len, int count)
{
    uint64_t h = mix(slot, offset);
    shard *s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    entry *e = *find(s, h, slot, offset);
    int hit = e != NULL && e->len == len;
    if (hit) {
        memcpy(out, e->data, len);
        touch(s, e);
    }
    if (count && hit)
        s->hits++;
    pthread_mutex_unlock(&s->mu);
    return hit;
}

void lsvfs_cache_count_miss(lsvfs_cache *c, uint32_t slot, uint64_t offset)
{
    shard *s = shard_of(c, mix(slot, offset));
    pthread_mutex_lock(&s->mu);
    s->misses++;
    pthread_mutex_unlock(&s->mu);
}

int lsvfs_cache_contains(lsvfs_cache *c, uint32_t slot, uint64_t offset)
{
    uint64_t h = mix(slot, offset);
    shard *s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    int found = *find(s, h, slot, offset) != NULL;
    pthread_mutex_unlock(&s->mu);
    return found;
}

static void grow(shard *s)
{
    size_t n = s->nbuckets * 2;
    entry **b = calloc(n, sizeof *b);
    if (b == NULL)
        return; /* longer chains, still correct */
    for (entry *e = s->newest; e != NULL; e = e->older) {
        entry **head = &b[mix(e->slot, e->offset) & (n - 1)];
        e->next = *head;
        *head = e;
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
}

/* Take the coldest entry out of the table and the list (its bytes too). */
static entry *unlink_oldest(shard *s)
{
    entry *e = s->oldest;
    entry **p = find(s, mix(e->slot, e->offset), e->slot, e->offset);
    *p = e->next;
    lru_unlink(s, e);
    s->bytes -= e->len;
    s->entries--;
    s->evictions++;
    return e;
}

/* Back to the shard: the struct to the free list, the bytes to the spare
 * buffers (or free() if they are their own). */
static void release_entry(shard *s, entry *e)
{
    if (e->data != NULL) {
        if (e->own) {
            free(e->data);
        } else {
            memcpy(e->data, &s->spare, sizeof s->spare);
            s->spare = e->data;
        }
    }
    e->data = NULL;
    e->next = s->free_entries;
    s->free_entries = e;
}

/* 2 MiB of memory aligned to 2 MiB, huge pages asked for; NULL if not. */
static uint8_t *map_huge(void)
{
    size_t span = 2 * HUGE_SLAB;
    uint8_t *p = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    size_t head = (HUGE_SLAB - (uintptr_t)p % HUGE_SLAB) % HUGE_SLAB;
    if (head > 0)
        munmap(p, head);
    if (span - head > HUGE_SLAB)
        munmap(p + head + HUGE_SLAB, span - head - HUGE_SLAB);
#ifdef MADV_HUGEPAGE
    madvise(p + head, HUGE_SLAB, MADV_HUGEPAGE); /* advice: fine if refused */
#endif
    return p + head;
}

/* A new slab for pages of s->slab_len bytes: 2 MiB mapped while the whole
 * of one stays within the shard's budget, else as many pages as the budget
 * has left (up to 64, one at least), malloc'd. */
static int new_slab(shard *s)
{
    size_t len = s->slab_len;
    slab *b = malloc(sizeof *b);
    if (b == NULL)
        return 0;
    size_t left = s->budget > s->slab_bytes ? s->budget - s->slab_bytes : 0;
    b->mapped = MAP_SLABS && left >= HUGE_SLAB && len <= HUGE_SLAB;
    b->mem = b->mapped ? map_huge() : NULL;
    if (b->mem != NULL) {
        b->bytes = HUGE_SLAB;
    } else {
        size_t pages = left / len;
        b->mapped = 0;
        b->bytes = (MAP_SLABS && pages > 1 ? (pages > 64 ? 64 : pages) : 1) * len;
        b->mem = malloc(b->bytes);
        if (b->mem == NULL) {
            free(b);
            return 0;
        }
    }
    b->next = s->slabs;
    s->slabs = b;
    s->slab_bytes += b->bytes;
    s->bump = b->mem;
    s->bump_left = b->bytes / len;
    return 1;
}

/* Page bytes for an entry of len bytes: a spare buffer, the newest slab's
 * room, a new slab, or (another size than the slabs', or too small to
 * chain as a spare) a malloc of its own. */
static int page_bytes(shard *s, entry *e, size_t len)
{
    if (s->slab_len == 0 && len >= sizeof s->spare)
        s->slab_len = (uint32_t)len;
    if (s->slab_len == 0 || len != s->slab_len) {
        e->data = malloc(len > 0 ? len : 1);
        e->own = 1;
        return e->data != NULL;
    }
    e->own = 0;
    if (s->spare != NULL) {
        e->data = s->spare;
        memcpy(&s->spare, e->data, sizeof s->spare);
        return 1;
    }
    if (s->bump_left == 0 && !new_slab(s))
        return 0;
    e->data = s->bump;
    s->bump_left--;
    s->bump = s->bump_left > 0 ? s->bump + len : NULL;
    return 1;
}

static entry *alloc_struct(shard *s)
{
    if (s->free_entries == NULL) {
        block *b = malloc(sizeof *b);
        if (b == NULL)
            return NULL;
        b->next = s->blocks;
        s->blocks = b;
        for (size_t i = 0; i < BLOCK_ENTRIES; i++) {
            b->entries[i].data = NULL;
            b->entries[i].next = s->free_entries;
            s->free_entries = &b->entries[i];
        }
    }
    entry *e = s->free_entries;
    s->free_entries = e->next;
    return e;
}

/* An entry for (slot, offset) with room for len bytes, taken out of the
 * shard, to be filled outside any lock and handed to insert() (or to
 * discard()). The coldest entry's bytes are reused when the shard is full
 * and they have the size wanted. NULL when the page could never be kept
 * (larger than its shard's budget) or memory ran out (*nomem set). Called
 * with the shard's mutex held. */
static entry *reserve(shard *s, uint32_t slot, uint64_t offset, size_t len,
                      int *nomem)
{
    *nomem = 0;
    if (len > s->budget || len > UINT32_MAX)
        return NULL;
    entry *e;
    if (s->bytes + s->inflight_bytes + len > s->budget && s->oldest != NULL &&
        s->oldest->len == len) {
        e = unlink_oldest(s);
    } else {
        e = alloc_struct(s);
        if (e == NULL) {
            *nomem = 1;
            return NULL;
        }
        e->data = NULL;
        if (!page_bytes(s, e, len)) {
            release_entry(s, e);
            *nomem = 1;
            return NULL;
        }
    }
    e->slot = slot;
    e->offset = offset;
    e->len = (uint32_t)len;
    s->inflight++;
    s->inflight_bytes += len;
    return e;
}

static void discard(lsvfs_cache *c, entry *e, uint64_t h)
{
    shard *s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    s->inflight--;
    s->inflight_bytes -= e->len;
    release_entry(s, e);
    pthread_mutex_unlock(&s->mu);
}

/* Insert a filled entry with a state; a racing insert of the same key (same
 * bytes: frames never change) wins and this one is dropped. */
static void insert(lsvfs_cache *c, entry *n, uint64_t h, uint32_t state)
{
    shard *s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    s->inflight--;
    s->inflight_bytes -= n->len;
    entry **p = find(s, h, n->slot, n->offset);
    if (*p != NULL) {
        release_entry(s, n);
        pthread_mutex_unlock(&s->mu);
        return;
    }
    while (s->bytes + n->len > s->budget && s->oldest != NULL)
        release_entry(s, unlink_oldest(s));
    p = find(s, h, n->slot, n->offset); /* eviction may have changed the chain */
    n->next = *p;
    *p = n;
    n->state = state;
    if (state == E_ONCE)
        lru_push_cold(s, n);
    else
        lru_push(s, n);
    s->bytes += n->len;
    s->entries++;
    if (s->entries > s->nbuckets)
        grow(s);
    pthread_mutex_unlock(&s->mu);
}

int lsvfs_cache_put(lsvfs_cache *c, uint32_t slot, uint64_t offset,
                    const uint8_t *page, size_t len)
{
    uint64_t h = mix(slot, offset);
    shard *s = shard_of(c, h);
    int nomem;
    pthread_mutex_lock(&s->mu);
    entry *n = reserve(s, slot, offset, len, &nomem);
    pthread_mutex_unlock(&s->mu);
    if (n == NULL)
        return nomem ? LSVFS_ENOMEM : LSVFS_OK;
    memcpy(n->data, page, len);
    insert(c, n, h, E_NORMAL);
    return LSVFS_OK;
}

int lsvfs_cache_fill(lsvfs_cache *c, uint32_t slot, const uint8_t *buf,
                     size_t buf_len, uint64_t buf_offset,
                     const lsvfs_index_entry *entries, size_t n,
                     uint32_t page_size, uint8_t *first, int asked,
                     size_t *failed)
{
    *failed = 0;
    if (buf == NULL || (n != 0 && (entries == NULL || first == NULL)))
        return LSVFS_ERANGE;
    for (size_t i = 0; i < n; i++) {
        const lsvfs_index_entry *e = &entries[i];
        *failed = i;
        if (e->offset < buf_offset || e->offset - buf_offset > buf_len ||
            e->size > buf_len - (e->offset - buf_offset))
            return LSVFS_ERANGE;
        const uint8_t *frame = buf + (e->offset - buf_offset);
        uint64_t h = mix(slot, e->offset);
        shard *s = shard_of(c, h);
        int nomem = 0;
        entry *ent = NULL;
        int skip = 0;
        pthread_mutex_lock(&s->mu);
        entry *have = *find(s, h, slot, e->offset);
        if (have != NULL && (i > 0 || have->len == page_size)) {
            skip = 1; /* cached already: not decoded again */
            if (i == 0) { /* cached meanwhile by another reader */
                memcpy(first, have->data, page_size);
                touch(s, have);
            }
        } else if (have == NULL) {
            ent = reserve(s, slot, e->offset, page_size, &nomem);
        }
        pthread_mutex_unlock(&s->mu);
        if (skip)
            continue;
        if (nomem)
            return LSVFS_ENOMEM;
        /* A page too big to keep is still decoded when it is the one asked for. */
        uint8_t *dst = ent != NULL ? ent->data : (i == 0 ? first : NULL);
        if (dst == NULL)
            continue;
        int rc = lsvfs_frame_decode(frame, e->size, e->pgno, page_size, dst);
        if (rc != LSVFS_OK) {
            if (ent != NULL)
                discard(c, ent, h);
            return rc;
        }
        if (i == 0 && dst != first)
            memcpy(first, dst, page_size);
        if (ent != NULL) {
            /* A sequential reader's page is used now and maybe never again;
             * the ones read ahead of it wait for it at the hot end. */
            uint32_t state = E_NORMAL;
            if (!asked || i > 0)
                state = E_AHEAD;
            else if (n > 1)
                state = E_ONCE;
            insert(c, ent, h, state);
        }
    }
    return LSVFS_OK;
}

void lsvfs_cache_get_stats(lsvfs_cache *c, lsvfs_cache_stats *out)
{
    memset(out, 0, sizeof *out);
    out->max_bytes = c->max_bytes;
    for (unsigned i = 0; i < c->nshards; i++) {
        shard *s = &c->shards[i];
        pthread_mutex_lock(&s->mu);
        out->hits += s->hits;
        out->misses += s->misses;
        out->evictions += s->evictions;
        out->bytes += s->bytes;
        out->entries += s->entries;
        pthread_mutex_unlock(&s->mu);
    }
}

void lsvfs_cache_clear(lsvfs_cache *c)
{
    for (unsigned i = 0; i < c->nshards; i++) {
        shard *s = &c->shards[i];
        pthread_mutex_lock(&s->mu);
        drop_all(s);
        memset(s->buckets, 0, s->nbuckets * sizeof *s->buckets);
        pthread_mutex_unlock(&s->mu);
    }
}
