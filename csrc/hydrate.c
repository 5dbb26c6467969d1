/* hydrate.c - a local file holding the database, filled in the background.
 *
 * Each page written carries a tag: the frame location (file slot, frame
 * offset) its bytes were decoded from. LTX files never change, so a tag
 * names the page's bytes exactly, and a snapshot is served a page from the
 * file only when its own table points at that same frame. When the file
 * moves on past a page that a pinned snapshot still reads, the tags differ
 * and that snapshot's read goes to the cache or storage instead: the file
 * never hands a transaction bytes from another TXID.
 *
 * Readers share a rwlock for the tag check and the pread; writes (and tag
 * changes) hold it alone, so a reader never sees a page half-written. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lsvfs_core.h"
#include "internal.h"

typedef struct {
    uint32_t slot; /* 0: the file does not hold this page */
    uint64_t offset;
    uint64_t sum; /* page checksum without the flag, when slot != 0 or verified */
} tag;

struct lsvfs_hydration {
    pthread_rwlock_t lock;
    int fd;
    uint32_t page_size;
    tag *tags; /* tags[pgno - 1] */
    uint32_t ntags;
    uint32_t held; /* tags with slot != 0 */
};

int lsvfs_hydration_open(const char *path, uint32_t page_size,
                         lsvfs_hydration **out)
{
    *out = NULL;
    if (!lsvfs_valid_page_size(page_size))
        return LSVFS_ERANGE;
    lsvfs_hydration *h = calloc(1, sizeof *h);
    if (h == NULL)
        return LSVFS_ENOMEM;
    h->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (h->fd < 0) {
        free(h);
        return LSVFS_ENOTFOUND;
    }
    if (pthread_rwlock_init(&h->lock, NULL) != 0) {
        close(h->fd);
        free(h);
        return LSVFS_ENOMEM;
    }
    h->page_size = page_size;
    *out = h;
    return LSVFS_OK;
}

void lsvfs_hydration_free(lsvfs_hydration *h)
{
    if (h == NULL)
        return;
    close(h->fd);
    pthread_rwlock_destroy(&h->lock);
    free(h->tags);
    free(h);
}

/* Room for pages 1..n (write lock held). */
static int grow(lsvfs_hydration *h, uint32_t n)
{
    if (n <= h->ntags)
        return LSVFS_OK;
    tag *t = realloc(h->tags, (size_t)n * sizeof *t);
    if (t == NULL)
        return LSVFS_ENOMEM;
    memset(t + h->ntags, 0, (size_t)(n - h->ntags) * sizeof *t);
    h->tags = t;
    h->ntags = n;
    return LSVFS_OK;
}

static uint64_t page_sum(uint32_t pgno, const uint8_t *page, uint32_t page_size)
{
    return lsvfs_page_checksum(pgno, page, page_size) & ~LSVFS_CHECKSUM_FLAG;
}

int lsvfs_hydration_fill(lsvfs_hydration *h, uint32_t slot, const uint8_t *buf,
                         size_t buf_len, uint64_t buf_offset,
                         const lsvfs_index_entry *entries, size_t n,
                         lsvfs_cache *keep, size_t *failed)
{
    *failed = 0;
    if (slot == 0 || buf == NULL || (n != 0 && entries == NULL))
        return LSVFS_ERANGE;
    if (n == 0)
        return LSVFS_OK;
    uint32_t ps = h->page_size;
    uint8_t *pages = malloc((n + 1) * (size_t)ps); /* + room for an old page */
    if (pages == NULL)
        return LSVFS_ENOMEM;
    uint8_t *old = pages + n * (size_t)ps;
    /* Decode everything first: a bad frame writes nothing, and the lock is
     * held only for the writes. */
    uint32_t top = 0;
    for (size_t i = 0; i < n; i++) {
        const lsvfs_index_entry *e = &entries[i];
        *failed = i;
        if (e->pgno == 0 || e->offset < buf_offset ||
            e->offset - buf_offset > buf_len ||
            e->size > buf_len - (e->offset - buf_offset)) {
            free(pages);
            return LSVFS_ERANGE;
        }
        int rc = lsvfs_frame_decode(buf + (e->offset - buf_offset), e->size,
                                    e->pgno, ps, pages + i * (size_t)ps);
        if (rc != LSVFS_OK) {
            free(pages);
            return rc;
        }
        if (e->pgno > top)
            top = e->pgno;
    }
    *failed = n;
    pthread_rwlock_wrlock(&h->lock);
    int rc = grow(h, top);
    for (size_t i = 0; i < n && rc == LSVFS_OK; i++) {
        const lsvfs_index_entry *e = &entries[i];
        const uint8_t *page = pages + i * (size_t)ps;
        tag *t = &h->tags[e->pgno - 1];
        if (t->slot != 0) {
            /* A snapshot still pinned on the old frame finds its bytes in the
             * cache, where it looks next, instead of a round trip. */
            if (keep != NULL && (t->slot != slot || t->offset != e->offset) &&
                lsvfs_pread_full(h->fd, old, ps, (uint64_t)(e->pgno - 1) * ps) == LSVFS_OK)
                lsvfs_cache_put(keep, t->slot, t->offset, old, ps);
            h->held--;
        }
        t->slot = 0; /* untagged until its bytes are all there */
        rc = lsvfs_pwrite_full(h->fd, page, ps, (uint64_t)(e->pgno - 1) * ps);
        if (rc == LSVFS_OK) {
            t->slot = slot;
            t->offset = e->offset;
            t->sum = page_sum(e->pgno, page, ps);
            h->held++;
        }
    }
    pthread_rwlock_unlock(&h->lock);
    free(pages);
    return rc;
}

int lsvfs_hydration_read(lsvfs_hydration *h, uint32_t pgno, uint32_t slot,
                         uint64_t offset, uint8_t *out)
{
    int served = 0;
    pthread_rwlock_rdlock(&h->lock);
    if (pgno != 0 && pgno <= h->ntags && slot != 0) {
        const tag *t = &h->tags[pgno - 1];
        if (t->slot == slot && t->offset == offset) {
            int rc = lsvfs_pread_full(h->fd, out, h->page_size,
                                      (uint64_t)(pgno - 1) * h->page_size);
            served = rc == LSVFS_OK ? 1 : rc;
        }
    }
    pthread_rwlock_unlock(&h->lock);
    return served;
}

size_t lsvfs_hydration_missing(lsvfs_hydration *h, const lsvfs_ptable *t,
                               uint32_t commit, uint32_t *next, uint32_t *out,
                               size_t cap)
{
    size_t n = 0;
    uint32_t p = *next > 0 ? *next : 1;
    pthread_rwlock_rdlock(&h->lock);
    for (; p <= commit && n < cap; p++) {
        lsvfs_location loc;
        if (lsvfs_ptable_get(t, p, &loc) != LSVFS_OK)
            continue; /* the lock page */
        const tag *g = p <= h->ntags ? &h->tags[p - 1] : NULL;
        if (g == NULL || g->slot != loc.slot || g->offset != loc.offset) {
            if (out != NULL)
                out[n] = p;
            n++;
        }
    }
    pthread_rwlock_unlock(&h->lock);
    *next = p;
    return n;
}

int lsvfs_hydration_adopt(lsvfs_hydration *h, const lsvfs_ptable *t,
                          uint32_t commit, const lsvfs_ptable *changed)
{
    pthread_rwlock_wrlock(&h->lock);
    int rc = grow(h, commit);
    for (uint32_t p = 1; p <= commit && rc == LSVFS_OK; p++) {
        lsvfs_location loc, skip;
        if (lsvfs_ptable_get(t, p, &loc) != LSVFS_OK)
            continue;
        if (changed != NULL && lsvfs_ptable_get(changed, p, &skip) == LSVFS_OK)
            continue;
        tag *g = &h->tags[p - 1];
        if (g->slot == 0)
            h->held++;
        g->slot = loc.slot;
        g->offset = loc.offset;
    }
    pthread_rwlock_unlock(&h->lock);
    return rc;
}

void lsvfs_hydration_forget(lsvfs_hydration *h, uint32_t slot)
{
    pthread_rwlock_wrlock(&h->lock);
    for (uint32_t i = 0; i < h->ntags; i++) {
        if (h->tags[i].slot == slot) {
            h->tags[i].slot = 0;
            h->held--;
        }
    }
    pthread_rwlock_unlock(&h->lock);
}

int lsvfs_hydration_reset(lsvfs_hydration *h)
{
    pthread_rwlock_wrlock(&h->lock);
    if (h->ntags > 0) /* tags is NULL until the first page */
        memset(h->tags, 0, (size_t)h->ntags * sizeof *h->tags);
    h->held = 0;
    int rc = ftruncate(h->fd, 0) == 0 ? LSVFS_OK : LSVFS_ESIZE;
    pthread_rwlock_unlock(&h->lock);
    return rc;
}

/* XOR of the checksums of pages 1..commit (lock page excluded), flag set. */
static uint64_t db_checksum(const lsvfs_hydration *h, uint32_t commit)
{
    uint32_t lock = lsvfs_lock_pgno(h->page_size);
    uint64_t x = 0;
    for (uint32_t p = 1; p <= commit && p <= h->ntags; p++)
        if (p != lock)
            x ^= h->tags[p - 1].sum;
    return x | LSVFS_CHECKSUM_FLAG;
}

int lsvfs_hydration_sync(lsvfs_hydration *h, uint32_t commit, uint64_t *checksum)
{
    pthread_rwlock_wrlock(&h->lock);
    for (uint32_t p = commit + 1; p <= h->ntags; p++) {
        if (h->tags[p - 1].slot != 0)
            h->held--;
        h->tags[p - 1].slot = 0;
    }
    int rc = ftruncate(h->fd, (off_t)((uint64_t)commit * h->page_size)) == 0 &&
                     fdatasync(h->fd) == 0
                 ? LSVFS_OK
                 : LSVFS_ESIZE;
    *checksum = db_checksum(h, commit);
    pthread_rwlock_unlock(&h->lock);
    return rc;
}

int lsvfs_hydration_verify(lsvfs_hydration *h, uint32_t commit, uint64_t *checksum)
{
    *checksum = 0;
    uint32_t ps = h->page_size;
    const uint32_t batch = (1u << 20) / ps > 0 ? (1u << 20) / ps : 1;
    uint8_t *buf = malloc((size_t)batch * ps);
    if (buf == NULL)
        return LSVFS_ENOMEM;
    pthread_rwlock_wrlock(&h->lock);
    int rc = grow(h, commit);
    uint32_t lock = lsvfs_lock_pgno(ps);
    for (uint32_t first = 1; first <= commit && rc == LSVFS_OK; first += batch) {
        uint32_t n = commit - first + 1 < batch ? commit - first + 1 : batch;
        rc = lsvfs_pread_full(h->fd, buf, (size_t)n * ps, (uint64_t)(first - 1) * ps);
        for (uint32_t i = 0; i < n && rc == LSVFS_OK; i++)
            h->tags[first - 1 + i].sum =
                first + i == lock ? 0 : page_sum(first + i, buf + (size_t)i * ps, ps);
    }
    if (rc == LSVFS_OK)
        *checksum = db_checksum(h, commit);
    pthread_rwlock_unlock(&h->lock);
    free(buf);
    return rc;
}

uint32_t lsvfs_hydration_pages(lsvfs_hydration *h)
{
    pthread_rwlock_rdlock(&h->lock);
    uint32_t n = h->held;
    pthread_rwlock_unlock(&h->lock);
    return n;
}
