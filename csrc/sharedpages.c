/* sharedpages.c - one hydration file for every process of a shared_dir.
 *
 * The leader writes pages; every process reads them. A page is tagged with
 * where its bytes came from: (max TXID, key) of the LTX file whose frame was
 * decoded, the key a 64-bit name Python gives the file (its level, TXID
 * range, size, header time and checksums: the bytes of one mirror file, not
 * of a file of another lineage listed under the same name). Files never
 * change, so a tag is a true statement about the bytes beside it for as
 * long as it stands, and a process serves a page only when its own
 * snapshot's frame is in that same file: a pinned, lagging or stale reader
 * reads the mirror instead, never another state's bytes.
 *
 * The tags live in a file every process maps. Each has a sequence number,
 * odd while the page is being written (a seqlock): a reader checks the tag,
 * preads the page and checks the number again, so it never keeps a page
 * written under it. A leader killed mid-write leaves a number odd; the next
 * one clears those tags. Tags are only in memory until the kernel writes
 * them, so the header records the boot they were written in, and a tag file
 * from another boot is cleared before use. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lsvfs_core.h"
#include "internal.h"

#define MAGIC 0x4C53564653504731ULL /* "LSVFSPG1", stored last and atomically */
#define HEADER_BYTES 4096 /* tags start page-aligned */
#define GROW_TAGS 65536u  /* the writer grows the tag file this many at a time */

typedef struct {
    uint64_t magic; /* atomic */
    uint32_t page_size;
    uint32_t reserved;
    uint8_t boot[LSVFS_BOOT_ID_SIZE];
    uint64_t applied_txid; /* atomic: the newest state written whole */
} header;

typedef struct {
    uint64_t seq; /* odd while the page is being written */
    uint64_t txid;
    uint64_t key; /* 0: the file does not hold this page */
} stag;

typedef struct {
    uint32_t slot;
    uint64_t txid;
    uint64_t key;
} version;

struct lsvfs_shared_pages {
    pthread_rwlock_t lock; /* reads share it; remaps and version changes hold it alone */
    int pages_fd, tags_fd;
    int writer;
    uint32_t page_size;
    uint8_t boot[LSVFS_BOOT_ID_SIZE];
    uint8_t *map; /* header + tags, NULL until a valid header is mapped */
    size_t map_len;
    uint32_t ntags;
    version *versions; /* by ascending slot */
    size_t nversions, versions_cap;
};

static header *hdr(const lsvfs_shared_pages *sp)
{
    return (header *)(void *)sp->map;
}

static stag *tags(const lsvfs_shared_pages *sp)
{
    return (stag *)(void *)(sp->map + HEADER_BYTES);
}

int lsvfs_shared_pages_open(const char *pages_path, const char *tags_path,
                            uint32_t page_size, const uint8_t *boot, int writer,
                            lsvfs_shared_pages **out)
{
    *out = NULL;
    if (!lsvfs_valid_page_size(page_size))
        return LSVFS_ERANGE;
    lsvfs_shared_pages *sp = calloc(1, sizeof *sp);
    if (sp == NULL)
        return LSVFS_ENOMEM;
    /* Followers create the files too, so a leader finds them and knows
     * hydration is wanted; only the writer ever writes into them. */
    sp->pages_fd = open(pages_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    sp->tags_fd = open(tags_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (sp->pages_fd < 0 || sp->tags_fd < 0 || pthread_rwlock_init(&sp->lock, NULL) != 0) {
        if (sp->pages_fd >= 0)
            close(sp->pages_fd);
        if (sp->tags_fd >= 0)
            close(sp->tags_fd);
        free(sp);
        return LSVFS_ENOTFOUND;
    }
    sp->page_size = page_size;
    sp->writer = writer != 0;
    memcpy(sp->boot, boot, LSVFS_BOOT_ID_SIZE);
    *out = sp;
    return writer ? lsvfs_shared_pages_refresh(sp) : LSVFS_OK;
}

void lsvfs_shared_pages_free(lsvfs_shared_pages *sp)
{
    if (sp == NULL)
        return;
    if (sp->map != NULL)
        munmap(sp->map, sp->map_len);
    close(sp->pages_fd);
    close(sp->tags_fd);
    pthread_rwlock_destroy(&sp->lock);
    free(sp->versions);
    free(sp);
}

/* The writer: make the header this boot's and this page size's, clearing
 * every tag when it was not, and clear the tags a killed writer left odd. */
static void claim(lsvfs_shared_pages *sp)
{
    header *h = hdr(sp);
    stag *t = tags(sp);
    int fresh = __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != MAGIC ||
                h->page_size != sp->page_size ||
                memcmp(h->boot, sp->boot, sizeof h->boot) != 0;
    for (uint32_t i = 0; i < sp->ntags; i++) {
        uint64_t seq = __atomic_load_n(&t[i].seq, __ATOMIC_RELAXED);
        if (!fresh && (seq & 1) == 0)
            continue;
        if ((seq & 1) == 0)
            __atomic_store_n(&t[i].seq, ++seq, __ATOMIC_SEQ_CST);
        __atomic_store_n(&t[i].txid, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&t[i].key, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&t[i].seq, seq + 1, __ATOMIC_RELEASE);
    }
    if (fresh) {
        __atomic_store_n(&h->magic, 0, __ATOMIC_SEQ_CST); /* not usable while it changes */
        __atomic_store_n(&h->applied_txid, 0, __ATOMIC_RELAXED);
        h->page_size = sp->page_size;
        memcpy(h->boot, sp->boot, sizeof h->boot);
        __atomic_store_n(&h->magic, MAGIC, __ATOMIC_RELEASE);
    }
}

/* Map the tag file as it is now (lock held alone). */
static int remap(lsvfs_shared_pages *sp)
{
    struct stat st;
    if (fstat(sp->tags_fd, &st) != 0)
        return LSVFS_ENOTFOUND;
    uint64_t size = (uint64_t)st.st_size;
    if (sp->writer && size < HEADER_BYTES) {
        if (ftruncate(sp->tags_fd, HEADER_BYTES) != 0)
            return LSVFS_ESIZE;
        size = HEADER_BYTES;
    }
    if (size < HEADER_BYTES || size > SIZE_MAX)
        return LSVFS_ENOTFOUND; /* no writer has set it up yet */
    if (sp->map != NULL && size == sp->map_len)
        return LSVFS_OK;
    int prot = PROT_READ | (sp->writer ? PROT_WRITE : 0);
    void *m = mmap(NULL, (size_t)size, prot, MAP_SHARED, sp->tags_fd, 0);
    if (m == MAP_FAILED)
        return LSVFS_ENOMEM;
    if (sp->map != NULL)
        munmap(sp->map, sp->map_len);
    sp->map = m;
    sp->map_len = (size_t)size;
    uint64_t n = (size - HEADER_BYTES) / sizeof(stag);
    sp->ntags = n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
    return LSVFS_OK;
}

/* A reader serves nothing from a header not yet set up for this boot and
 * page size (a writer clears such tags before it writes). */
static int usable(const lsvfs_shared_pages *sp)
{
    const header *h = hdr(sp);
    return __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) == MAGIC && h->page_size == sp->page_size &&
           memcmp(h->boot, sp->boot, sizeof h->boot) == 0;
}

int lsvfs_shared_pages_refresh(lsvfs_shared_pages *sp)
{
    pthread_rwlock_wrlock(&sp->lock);
    int claimed = sp->map != NULL;
    int rc = remap(sp);
    if (rc == LSVFS_OK && sp->writer && !claimed)
        claim(sp);
    if (rc == LSVFS_OK && !usable(sp)) {
        munmap(sp->map, sp->map_len); /* nothing is read through it */
        sp->map = NULL;
        sp->map_len = 0;
        sp->ntags = 0;
        rc = LSVFS_ENOTFOUND;
    }
    pthread_rwlock_unlock(&sp->lock);
    return rc;
}

/* Room for tags of pages 1..n (writer, lock held alone). */
static int grow(lsvfs_shared_pages *sp, uint32_t n)
{
    if (n <= sp->ntags)
        return LSVFS_OK;
    uint64_t want = ((uint64_t)n + GROW_TAGS - 1) / GROW_TAGS * GROW_TAGS;
    if (ftruncate(sp->tags_fd, (off_t)(HEADER_BYTES + want * sizeof(stag))) != 0)
        return LSVFS_ESIZE;
    return remap(sp);
}

int lsvfs_shared_pages_fill(lsvfs_shared_pages *sp, uint64_t txid, uint64_t key,
                            const uint8_t *buf, size_t buf_len, uint64_t buf_offset,
                            const lsvfs_index_entry *entries, size_t n, size_t *failed)
{
    *failed = 0;
    if (!sp->writer || txid == 0 || key == 0 || buf == NULL || (n != 0 && entries == NULL))
        return LSVFS_ERANGE;
    uint32_t ps = sp->page_size;
    uint8_t *page = malloc(ps);
    if (page == NULL)
        return LSVFS_ENOMEM;
    pthread_rwlock_wrlock(&sp->lock);
    int rc = sp->map == NULL ? LSVFS_ENOTFOUND : LSVFS_OK;
    if (rc == LSVFS_OK && n > 0 && (rc = grow(sp, entries[n - 1].pgno)) != LSVFS_OK) /* pgnos ascend */
        *failed = n; /* the tag file could not grow: not a frame's fault */
    for (size_t i = 0; i < n && rc == LSVFS_OK; i++) {
        const lsvfs_index_entry *e = &entries[i];
        *failed = i;
        if (e->pgno == 0 || e->pgno > sp->ntags || e->offset < buf_offset ||
            e->offset - buf_offset > buf_len ||
            e->size > buf_len - (e->offset - buf_offset)) {
            rc = LSVFS_ERANGE;
            break;
        }
        stag *t = &tags(sp)[e->pgno - 1];
        uint64_t seq = __atomic_load_n(&t->seq, __ATOMIC_RELAXED);
        if (__atomic_load_n(&t->txid, __ATOMIC_RELAXED) == txid &&
            __atomic_load_n(&t->key, __ATOMIC_RELAXED) == key)
            continue; /* already these bytes (a resumed apply) */
        rc = lsvfs_frame_decode(buf + (e->offset - buf_offset), e->size, e->pgno, ps, page);
        if (rc != LSVFS_OK)
            break;
        __atomic_store_n(&t->seq, seq + 1, __ATOMIC_SEQ_CST); /* odd before any byte moves */
        rc = lsvfs_pwrite_full(sp->pages_fd, page, ps, (uint64_t)(e->pgno - 1) * ps);
        int ok = rc == LSVFS_OK;
        __atomic_store_n(&t->txid, ok ? txid : 0, __ATOMIC_RELAXED);
        __atomic_store_n(&t->key, ok ? key : 0, __ATOMIC_RELAXED);
        __atomic_store_n(&t->seq, seq + 2, __ATOMIC_RELEASE);
        if (!ok) {
            *failed = n; /* not a frame's fault: the write failed */
            break;
        }
    }
    if (rc == LSVFS_OK)
        *failed = n;
    pthread_rwlock_unlock(&sp->lock);
    free(page);
    return rc;
}

/* The state a slot's frames hold, or NULL (lock held). */
static const version *find_version(const lsvfs_shared_pages *sp, uint32_t slot)
{
    size_t lo = 0, hi = sp->nversions;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sp->versions[mid].slot < slot)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < sp->nversions && sp->versions[lo].slot == slot ? &sp->versions[lo] : NULL;
}

/* 1 if the file holds page pgno from the file (txid, key) (lock held). */
static int holds(const lsvfs_shared_pages *sp, uint32_t pgno, uint64_t txid,
                 uint64_t key, uint64_t *seq)
{
    if (sp->map == NULL || pgno == 0 || pgno > sp->ntags || key == 0)
        return 0;
    const stag *t = &tags(sp)[pgno - 1];
    *seq = __atomic_load_n(&t->seq, __ATOMIC_ACQUIRE);
    return (*seq & 1) == 0 && __atomic_load_n(&t->txid, __ATOMIC_ACQUIRE) == txid &&
           __atomic_load_n(&t->key, __ATOMIC_ACQUIRE) == key;
}

int lsvfs_shared_pages_read(lsvfs_shared_pages *sp, uint32_t pgno, uint32_t slot,
                            uint32_t page_size, uint8_t *out)
{
    if (page_size != sp->page_size)
        return 0;
    int served = 0;
    pthread_rwlock_rdlock(&sp->lock);
    const version *v = find_version(sp, slot);
    uint64_t seq;
    if (v != NULL && holds(sp, pgno, v->txid, v->key, &seq)) {
        int rc = lsvfs_pread_full(sp->pages_fd, out, page_size, (uint64_t)(pgno - 1) * page_size);
        /* The second look comes after the bytes: the tag's loads are acquires,
         * and nothing moves a load ahead of the pread call's. */
        const stag *t = &tags(sp)[pgno - 1];
        served = rc != LSVFS_OK ? 0 : __atomic_load_n(&t->seq, __ATOMIC_ACQUIRE) == seq;
    }
    pthread_rwlock_unlock(&sp->lock);
    return served;
}

int lsvfs_shared_pages_set_version(lsvfs_shared_pages *sp, uint32_t slot, uint64_t txid,
                                   uint64_t key)
{
    if (slot == 0)
        return LSVFS_ERANGE;
    pthread_rwlock_wrlock(&sp->lock);
    int rc = LSVFS_OK;
    size_t i = 0;
    while (i < sp->nversions && sp->versions[i].slot < slot) /* usually the end: slots ascend */
        i++;
    if (i < sp->nversions && sp->versions[i].slot == slot) {
        sp->versions[i] = (version){slot, txid, key};
    } else {
        if (sp->nversions == sp->versions_cap) {
            size_t cap = sp->versions_cap ? sp->versions_cap * 2 : 64;
            version *p = realloc(sp->versions, cap * sizeof *p);
            if (p == NULL)
                rc = LSVFS_ENOMEM;
            else {
                sp->versions = p;
                sp->versions_cap = cap;
            }
        }
        if (rc == LSVFS_OK) {
            memmove(sp->versions + i + 1, sp->versions + i, (sp->nversions - i) * sizeof *sp->versions);
            sp->versions[i] = (version){slot, txid, key};
            sp->nversions++;
        }
    }
    pthread_rwlock_unlock(&sp->lock);
    return rc;
}

void lsvfs_shared_pages_forget(lsvfs_shared_pages *sp, uint32_t slot)
{
    pthread_rwlock_wrlock(&sp->lock);
    const version *v = find_version(sp, slot);
    if (v != NULL) {
        size_t i = (size_t)(v - sp->versions);
        memmove(sp->versions + i, sp->versions + i + 1,
                (sp->nversions - i - 1) * sizeof *sp->versions);
        sp->nversions--;
    }
    pthread_rwlock_unlock(&sp->lock);
}

size_t lsvfs_shared_pages_missing(lsvfs_shared_pages *sp, const lsvfs_ptable *t,
                                  uint32_t commit, uint32_t *next, uint32_t *out, size_t cap)
{
    size_t n = 0;
    uint32_t p = *next > 0 ? *next : 1;
    pthread_rwlock_rdlock(&sp->lock);
    for (; p <= commit && n < cap; p++) {
        lsvfs_location loc;
        uint64_t seq;
        if (lsvfs_ptable_get(t, p, &loc) != LSVFS_OK)
            continue; /* the lock page */
        const version *v = find_version(sp, loc.slot);
        if (v == NULL || !holds(sp, p, v->txid, v->key, &seq)) {
            if (out != NULL)
                out[n] = p;
            n++;
        }
    }
    pthread_rwlock_unlock(&sp->lock);
    *next = p;
    return n;
}

int lsvfs_shared_pages_applied(lsvfs_shared_pages *sp, uint64_t *txid)
{
    *txid = 0;
    pthread_rwlock_rdlock(&sp->lock);
    int rc = sp->map != NULL && usable(sp) ? LSVFS_OK : LSVFS_ENOTFOUND;
    if (rc == LSVFS_OK)
        *txid = __atomic_load_n(&hdr(sp)->applied_txid, __ATOMIC_ACQUIRE);
    pthread_rwlock_unlock(&sp->lock);
    return rc;
}

int lsvfs_shared_pages_set_applied(lsvfs_shared_pages *sp, uint64_t txid)
{
    pthread_rwlock_rdlock(&sp->lock);
    int rc = sp->writer && sp->map != NULL ? LSVFS_OK : LSVFS_ERANGE;
    if (rc == LSVFS_OK)
        __atomic_store_n(&hdr(sp)->applied_txid, txid, __ATOMIC_RELEASE);
    pthread_rwlock_unlock(&sp->lock);
    return rc;
}
