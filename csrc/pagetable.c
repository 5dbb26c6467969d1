/* pagetable.c - dense pgno -> frame location map with copy-on-write chunks.
 *
 * Entry for pgno p lives in chunk (p-1) / CHUNK_ENTRIES at (p-1) % CHUNK_ENTRIES.
 * A NULL chunk pointer means "no entry for any page of that chunk".
 * Chunks carry an atomic reference count: a clone copies only the chunk
 * directory, and a write to a chunk with more than one reference first
 * replaces it by a private copy. A chunk referenced once belongs to exactly
 * one table, so that table may write it in place. */
#include <stdlib.h>
#include <string.h>

#include "lsvfs_core.h"

#define CHUNK_SHIFT 10
#define CHUNK_ENTRIES (1u << CHUNK_SHIFT)
#define CHUNK_MASK (CHUNK_ENTRIES - 1)

typedef struct {
    unsigned refs;  /* atomic: tables pointing at this chunk */
    uint32_t count; /* entries with slot != 0 */
    lsvfs_location e[CHUNK_ENTRIES];
} chunk;

struct lsvfs_ptable {
    chunk **dir;
    size_t dir_len; /* chunk slots in use (may hold NULLs) */
    size_t dir_cap;
    uint32_t max_pgno;
    uint32_t count;
};

static void chunk_ref(chunk *c)
{
    __atomic_fetch_add(&c->refs, 1, __ATOMIC_RELAXED);
}

static void chunk_unref(chunk *c)
{
    if (c != NULL && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free(c);
}

static int chunk_shared(const chunk *c)
{
    /* acquire pairs with the release in another table's unref, so its
     * last reads of this chunk happen before our in-place writes */
    return __atomic_load_n(&c->refs, __ATOMIC_ACQUIRE) != 1;
}

lsvfs_ptable *lsvfs_ptable_new(void)
{
    return calloc(1, sizeof(lsvfs_ptable));
}

lsvfs_ptable *lsvfs_ptable_clone(const lsvfs_ptable *t)
{
    if (t == NULL)
        return NULL;
    lsvfs_ptable *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    if (t->dir_len) {
        c->dir = malloc(t->dir_len * sizeof *c->dir);
        if (c->dir == NULL) {
            free(c);
            return NULL;
        }
        memcpy(c->dir, t->dir, t->dir_len * sizeof *c->dir);
        for (size_t i = 0; i < t->dir_len; i++)
            if (c->dir[i] != NULL)
                chunk_ref(c->dir[i]);
    }
    c->dir_len = c->dir_cap = t->dir_len;
    c->max_pgno = t->max_pgno;
    c->count = t->count;
    return c;
}

void lsvfs_ptable_free(lsvfs_ptable *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->dir_len; i++)
        chunk_unref(t->dir[i]);
    free(t->dir);
    free(t);
}

/* Make sure dir has a slot for chunk index ci. */
static int dir_reserve(lsvfs_ptable *t, size_t ci)
{
    if (ci < t->dir_len)
        return LSVFS_OK;
    if (ci >= t->dir_cap) {
        size_t cap = t->dir_cap ? t->dir_cap : 16;
        while (cap <= ci)
            cap *= 2;
        chunk **d = realloc(t->dir, cap * sizeof *d);
        if (d == NULL)
            return LSVFS_ENOMEM;
        t->dir = d;
        t->dir_cap = cap;
    }
    for (size_t i = t->dir_len; i <= ci; i++)
        t->dir[i] = NULL;
    t->dir_len = ci + 1;
    return LSVFS_OK;
}

/* Chunk ci, private to t and allocated, ready for writing. */
static chunk *chunk_writable(lsvfs_ptable *t, size_t ci)
{
    chunk *c = t->dir[ci];
    if (c != NULL && !chunk_shared(c))
        return c;
    chunk *n = malloc(sizeof *n);
    if (n == NULL)
        return NULL;
    n->refs = 1;
    if (c != NULL) {
        n->count = c->count;
        memcpy(n->e, c->e, sizeof n->e);
        chunk_unref(c);
    } else {
        n->count = 0;
        memset(n->e, 0, sizeof n->e);
    }
    t->dir[ci] = n;
    return n;
}

int lsvfs_ptable_apply(lsvfs_ptable *t, uint32_t slot,
                       const lsvfs_index_entry *entries, size_t n)
{
    if (t == NULL || slot == 0 || (n != 0 && entries == NULL))
        return LSVFS_ERANGE;
    uint32_t top = 0;
    for (size_t i = 0; i < n; i++) {
        if (entries[i].pgno == 0)
            return LSVFS_ERANGE;
        if (entries[i].pgno > top)
            top = entries[i].pgno;
    }
    if (n == 0)
        return LSVFS_OK;
    int rc = dir_reserve(t, (size_t)((top - 1) >> CHUNK_SHIFT));
    if (rc)
        return rc;
    size_t cur_ci = (size_t)-1;
    chunk *c = NULL;
    for (size_t i = 0; i < n; i++) {
        uint32_t idx = entries[i].pgno - 1;
        size_t ci = idx >> CHUNK_SHIFT;
        if (ci != cur_ci) {
            c = chunk_writable(t, ci);
            if (c == NULL)
                return LSVFS_ENOMEM;
            cur_ci = ci;
        }
        lsvfs_location *l = &c->e[idx & CHUNK_MASK];
        if (l->slot == 0) {
            c->count++;
            t->count++;
        }
        l->slot = slot;
        l->size = entries[i].size;
        l->offset = entries[i].offset;
    }
    if (top > t->max_pgno)
        t->max_pgno = top;
    return LSVFS_OK;
}

int lsvfs_ptable_truncate(lsvfs_ptable *t, uint32_t commit)
{
    if (t == NULL)
        return LSVFS_ERANGE;
    /* chunks wholly past commit go; the one holding commit is trimmed */
    size_t keep = commit == 0 ? 0 : (size_t)((commit - 1) >> CHUNK_SHIFT) + 1;
    for (size_t i = keep; i < t->dir_len; i++) {
        if (t->dir[i] != NULL) {
            t->count -= t->dir[i]->count;
            chunk_unref(t->dir[i]);
            t->dir[i] = NULL;
        }
    }
    if (keep < t->dir_len)
        t->dir_len = keep;
    if (keep > 0 && keep <= t->dir_len && t->dir[keep - 1] != NULL) {
        size_t ci = keep - 1;
        uint32_t from = (commit - 1) & CHUNK_MASK; /* last kept index */
        chunk *c = t->dir[ci];
        int dirty = 0;
        for (uint32_t k = from + 1; k < CHUNK_ENTRIES; k++)
            if (c->e[k].slot != 0) {
                dirty = 1;
                break;
            }
        if (dirty) {
            c = chunk_writable(t, ci);
            if (c == NULL)
                return LSVFS_ENOMEM;
            for (uint32_t k = from + 1; k < CHUNK_ENTRIES; k++) {
                if (c->e[k].slot != 0) {
                    c->count--;
                    t->count--;
                }
                memset(&c->e[k], 0, sizeof c->e[k]);
            }
            if (c->count == 0) {
                chunk_unref(c);
                t->dir[ci] = NULL;
            }
        }
    }
    t->max_pgno = commit;
    return LSVFS_OK;
}

static void lookup(const lsvfs_ptable *t, uint32_t pgno, lsvfs_location *out)
{
    size_t idx = (size_t)pgno - 1;
    size_t ci = idx >> CHUNK_SHIFT;
    const chunk *c;
    if (pgno == 0 || pgno > t->max_pgno || ci >= t->dir_len ||
        (c = t->dir[ci]) == NULL) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = c->e[idx & CHUNK_MASK];
}

int lsvfs_ptable_get(const lsvfs_ptable *t, uint32_t pgno,
                     lsvfs_location *out)
{
    if (t == NULL || out == NULL || pgno == 0)
        return LSVFS_ERANGE;
    lookup(t, pgno, out);
    return out->slot ? LSVFS_OK : LSVFS_ENOTFOUND;
}

int lsvfs_ptable_get_range(const lsvfs_ptable *t, uint32_t first, size_t n,
                           lsvfs_location *out)
{
    if (t == NULL || first == 0 || (n != 0 && out == NULL))
        return LSVFS_ERANGE;
    if ((uint64_t)n > (uint64_t)UINT32_MAX - (first - 1))
        return LSVFS_ERANGE;
    for (size_t i = 0; i < n; i++)
        lookup(t, (uint32_t)(first + i), &out[i]);
    return LSVFS_OK;
}

size_t lsvfs_ptable_run(const lsvfs_ptable *t, uint32_t pgno, uint32_t max,
                        uint32_t *slot, lsvfs_index_entry *out)
{
    if (t == NULL || slot == NULL || out == NULL || pgno == 0 || max == 0)
        return 0;
    lsvfs_location loc;
    lookup(t, pgno, &loc);
    if (loc.slot == 0)
        return 0;
    *slot = loc.slot;
    size_t n = 0;
    for (;;) {
        out[n].pgno = pgno;
        out[n].offset = loc.offset;
        out[n].size = loc.size;
        n++;
        if (n == max || pgno == UINT32_MAX)
            break;
        uint64_t end = loc.offset + loc.size;
        lookup(t, ++pgno, &loc);
        if (loc.slot != *slot || loc.offset != end)
            break;
    }
    return n;
}

uint32_t lsvfs_ptable_max_pgno(const lsvfs_ptable *t)
{
    return t ? t->max_pgno : 0;
}

uint32_t lsvfs_ptable_count(const lsvfs_ptable *t)
{
    return t ? t->count : 0;
}

size_t lsvfs_ptable_memory(const lsvfs_ptable *t)
{
    if (t == NULL)
        return 0;
    size_t bytes = sizeof *t + t->dir_cap * sizeof *t->dir;
    for (size_t i = 0; i < t->dir_len; i++)
        if (t->dir[i] != NULL)
            bytes += sizeof(chunk);
    return bytes;
}

size_t lsvfs_ptable_unique_memory(const lsvfs_ptable *t)
{
    if (t == NULL)
        return 0;
    size_t bytes = 0;
    for (size_t i = 0; i < t->dir_len; i++)
        if (t->dir[i] != NULL && !chunk_shared(t->dir[i]))
            bytes += sizeof(chunk);
    return bytes;
}
