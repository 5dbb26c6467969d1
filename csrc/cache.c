/* cache.c - decoded pages keyed by frame location, bounded by bytes.
 *
 * Shards, each a mutex, a chained hash table and an LRU list, with an equal
 * share of the byte budget. A hit copies the page out under the shard's
 * mutex, so eviction can never free bytes a reader is copying; with up to
 * 16 shards, readers of different pages rarely meet on one mutex. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "lsvfs_core.h"

#define MAX_SHARDS 16
#define MIN_SHARD_BYTES (4u << 20)

typedef struct entry {
    struct entry *next; /* hash chain */
    struct entry *newer, *older;
    uint64_t offset;
    uint32_t slot;
    uint32_t len;
    uint8_t data[];
} entry;

typedef struct {
    pthread_mutex_t mu;
    entry **buckets;
    size_t nbuckets; /* power of two */
    entry *newest, *oldest;
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

void lsvfs_cache_free(lsvfs_cache *c)
{
    if (c == NULL)
        return;
    for (unsigned i = 0; i < c->nshards; i++) {
        shard *s = &c->shards[i];
        entry *e = s->newest;
        while (e != NULL) {
            entry *next = e->older;
            free(e);
            e = next;
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
        if (s->newest != e) {
            lru_unlink(s, e);
            lru_push(s, e);
        }
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

static void evict_oldest(shard *s)
{
    entry *e = s->oldest;
    uint64_t h = mix(e->slot, e->offset);
    entry **p = find(s, h, e->slot, e->offset);
    *p = e->next;
    lru_unlink(s, e);
    s->bytes -= e->len;
    s->entries--;
    s->evictions++;
    free(e);
}

/* An entry for (slot, offset) with room for len bytes, or NULL when the
 * page could never be kept (larger than its shard's budget) or memory ran
 * out (*nomem set). Filled outside any lock, then handed to insert(). */
static entry *entry_new(lsvfs_cache *c, uint32_t slot, uint64_t offset,
                        size_t len, int *nomem)
{
    *nomem = 0;
    if (len > shard_of(c, mix(slot, offset))->budget || len > UINT32_MAX)
        return NULL;
    entry *n = malloc(sizeof *n + len);
    if (n == NULL) {
        *nomem = 1;
        return NULL;
    }
    n->slot = slot;
    n->offset = offset;
    n->len = (uint32_t)len;
    return n;
}

/* Insert a filled entry; a racing insert of the same key (same bytes:
 * frames never change) wins and this one is freed. */
static void insert(lsvfs_cache *c, entry *n)
{
    uint64_t h = mix(n->slot, n->offset);
    shard *s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    entry **p = find(s, h, n->slot, n->offset);
    if (*p != NULL) {
        pthread_mutex_unlock(&s->mu);
        free(n);
        return;
    }
    while (s->bytes + n->len > s->budget && s->oldest != NULL)
        evict_oldest(s);
    p = find(s, h, n->slot, n->offset); /* eviction may have changed the chain */
    n->next = *p;
    *p = n;
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
    int nomem;
    entry *n = entry_new(c, slot, offset, len, &nomem);
    if (n == NULL)
        return nomem ? LSVFS_ENOMEM : LSVFS_OK;
    memcpy(n->data, page, len);
    insert(c, n);
    return LSVFS_OK;
}

int lsvfs_cache_fill(lsvfs_cache *c, uint32_t slot, const uint8_t *buf,
                     size_t buf_len, uint64_t buf_offset,
                     const lsvfs_index_entry *entries, size_t n,
                     uint32_t page_size, uint8_t *first, size_t *failed)
{
    *failed = 0;
    if (buf == NULL || (n != 0 && (entries == NULL || first == NULL)))
        return LSVFS_ERANGE;
    for (size_t i = 0; i < n; i++) {
        const lsvfs_index_entry *e = &entries[i];
        *failed = i;
        if (i > 0 && lsvfs_cache_contains(c, slot, e->offset))
            continue;
        if (e->offset < buf_offset || e->offset - buf_offset > buf_len ||
            e->size > buf_len - (e->offset - buf_offset))
            return LSVFS_ERANGE;
        const uint8_t *frame = buf + (e->offset - buf_offset);
        int nomem;
        entry *ent = entry_new(c, slot, e->offset, page_size, &nomem);
        if (nomem)
            return LSVFS_ENOMEM;
        /* A page too big to keep is still decoded when it is the one asked for. */
        uint8_t *dst = ent != NULL ? ent->data : (i == 0 ? first : NULL);
        if (dst == NULL)
            continue;
        int rc = lsvfs_frame_decode(frame, e->size, e->pgno, page_size, dst);
        if (rc != LSVFS_OK) {
            free(ent);
            return rc;
        }
        if (i == 0 && dst != first)
            memcpy(first, dst, page_size);
        if (ent != NULL)
            insert(c, ent);
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
        entry *e = s->newest;
        while (e != NULL) {
            entry *next = e->older;
            free(e);
            e = next;
        }
        memset(s->buckets, 0, s->nbuckets * sizeof *s->buckets);
        s->newest = s->oldest = NULL;
        s->bytes = s->entries = 0;
        pthread_mutex_unlock(&s->mu);
    }
}
