/* vfs.c - the `litestream` sqlite3_vfs: main databases served from replicas.
 *
 * The hot path is C only: lock and unlock pin and drop a snapshot, file
 * size reads it, and a read that finds its page in the cache copies it out.
 * Python is entered to open a main database, on a cache miss, for the
 * litestream_* PRAGMAs and at close; no lock of ours is held across those
 * calls. Everything that is not a main database (temp databases, statement
 * journals, ...) is that SQLite's default VFS's business. */
#define _GNU_SOURCE
#include <sqlite3.h>
#include <sqlite3ext.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lsvfs_core.h"
#include "internal.h"

typedef struct {
    sqlite3_vfs *(*vfs_find)(const char *);
    int (*vfs_register)(sqlite3_vfs *, int);
    const char *(*uri_key)(const char *, int);
    const char *(*uri_parameter)(const char *, const char *);
    char *(*mprintf)(const char *, ...);
    void (*free)(void *);
    int (*auto_extension)(void (*)(void));
} sqlite_fns;

struct lsvfs_vfs {
    sqlite3_vfs base;
    sqlite_fns fns;
    sqlite3_vfs *deflt;
    void *ctx;
    char name[64];
};

struct lsvfs_file {
    sqlite3_file base;
    lsvfs_vfs *vfs;
    lsvfs_replica *rep;
    void *handle;
    lsvfs_snapshot *chosen; /* set by a PRAGMA; NULL: the newest */
    lsvfs_snapshot *pinned; /* from SHARED to NONE */
    uint64_t floor;          /* read-your-writes: no TXID below it (0: none) */
    uint32_t floor_lineage;  /* ... of this lineage */
    int lock;
    uint32_t next_pgno, run; /* read-ahead: the sequential run so far */
    uint8_t *scratch;        /* one page, for reads of part of a page */
    size_t scratch_len;
    uint8_t *page1;          /* page 1 as served for snapshot page1_id */
    uint64_t page1_id;       /* (read every transaction: kept off the shared cache) */
    char *result;            /* PRAGMA result waiting for SQLite */
    char error[512];
};

static int python_gone;

void lsvfs_python_gone(void)
{
    __atomic_store_n(&python_gone, 1, __ATOMIC_RELEASE);
}

static int in_python(void)
{
    return !__atomic_load_n(&python_gone, __ATOMIC_ACQUIRE);
}

/* ---- file state shared with Python ------------------------------------ */

void lsvfs_file_attach(lsvfs_file *f, lsvfs_replica *r, void *handle)
{
    lsvfs_replica_retain(r);
    lsvfs_replica_release(f->rep);
    f->rep = r;
    f->handle = handle;
}

void lsvfs_file_choose(lsvfs_file *f, lsvfs_snapshot *s)
{
    lsvfs_snapshot *old = f->chosen;
    f->chosen = s;
    lsvfs_snapshot_release(old);
}

void lsvfs_file_set_floor(lsvfs_file *f, uint64_t txid, uint32_t lineage)
{
    f->floor = txid;
    f->floor_lineage = lineage;
}

/* The snapshot a read would use now, with a reference for the caller. */
static lsvfs_snapshot *file_snapshot(lsvfs_file *f)
{
    lsvfs_snapshot *s = f->pinned != NULL ? f->pinned : f->chosen;
    if (s != NULL) {
        lsvfs_snapshot_retain(s);
        return s;
    }
    return f->rep != NULL ? lsvfs_replica_current(f->rep) : NULL;
}

int lsvfs_file_snapshot_info(lsvfs_file *f, lsvfs_snapshot_info *out)
{
    lsvfs_snapshot *s = file_snapshot(f);
    if (s == NULL)
        return LSVFS_ENOTFOUND;
    lsvfs_snapshot_get_info(s, out);
    lsvfs_snapshot_release(s);
    return LSVFS_OK;
}

int lsvfs_file_pinned_info(lsvfs_file *f, lsvfs_snapshot_info *out)
{
    if (f->pinned == NULL)
        return LSVFS_ENOTFOUND;
    lsvfs_snapshot_get_info(f->pinned, out);
    return LSVFS_OK;
}

int lsvfs_file_set_result(lsvfs_file *f, const char *text)
{
    free(f->result);
    f->result = NULL;
    if (text == NULL)
        return LSVFS_OK;
    f->result = strdup(text);
    return f->result != NULL ? LSVFS_OK : LSVFS_ENOMEM;
}

void lsvfs_file_set_error(lsvfs_file *f, const char *text)
{
    snprintf(f->error, sizeof f->error, "%s", text != NULL ? text : "");
}

const char *lsvfs_file_error(lsvfs_file *f)
{
    return f->error;
}

/* ---- reads -------------------------------------------------------------- */

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Page 1 as served: a rollback-journal database (SQLite never looks for
 * -wal or -shm) whose change counter is the TXID (mixed with the lineage,
 * since a replaced replica reaches the same TXIDs with other pages), so
 * SQLite keeps its page cache exactly as long as nothing changed, and whose
 * in-header size is the snapshot's. */
static void shim_page1(uint8_t *page, const lsvfs_snapshot_info *info)
{
    uint32_t counter = (uint32_t)info->txid + info->lineage * 0x9E3779B9u;
    page[18] = 1;
    page[19] = 1;
    put_be32(page + 24, counter);
    put_be32(page + 28, info->commit);
    put_be32(page + 92, counter);
}

static int fail(lsvfs_file *f, int rc, const char *fmt, uint32_t pgno,
                uint64_t txid)
{
    snprintf(f->error, sizeof f->error, fmt, (unsigned)pgno,
             (unsigned long long)txid);
    if (f->handle != NULL && in_python())
        lsvfs_py_error(f->handle, rc, f->error);
    return rc;
}

/* Page `pgno` of `s` into out: the hydration file, the shared pages, the
 * cache, the lock page, or Python. */
static int get_page(lsvfs_file *f, lsvfs_snapshot *s, uint32_t pgno,
                    uint32_t readahead, uint8_t *out)
{
    const lsvfs_snapshot_info *info = lsvfs_snapshot_info_of(s);
    lsvfs_location loc;
    if (lsvfs_ptable_get(lsvfs_snapshot_table(s), pgno, &loc) != LSVFS_OK) {
        if (pgno == lsvfs_lock_pgno(info->page_size)) {
            memset(out, 0, info->page_size);
            return SQLITE_OK;
        }
        return fail(f, SQLITE_CORRUPT,
                    "page %u of TXID %016llx is in no LTX file", pgno,
                    info->txid);
    }
    /* A snapshot of a replaced lineage: Python decides what may still be read. */
    int stale = info->lineage != lsvfs_replica_lineage(f->rep);
    lsvfs_hydration *h = lsvfs_replica_hydration(f->rep);
    if (h != NULL && !stale &&
        lsvfs_hydration_read(h, pgno, loc.slot, loc.offset, out) == 1)
        return SQLITE_OK;
    lsvfs_shared_pages *sp = lsvfs_replica_shared_pages(f->rep);
    if (sp != NULL && !stale &&
        lsvfs_shared_pages_read(sp, pgno, loc.slot, info->page_size, out) == 1)
        return SQLITE_OK;
    lsvfs_cache *cache = lsvfs_replica_cache(f->rep);
    if (lsvfs_cache_get(cache, loc.slot, loc.offset, out, info->page_size, 1))
        return SQLITE_OK;
    /* A directory replica's miss is read here, without the GIL; anything
     * unusual (not local, a failed read or frame) goes to Python below. */
    if (!stale && lsvfs_replica_read_local(f->rep, lsvfs_snapshot_table(s), pgno,
                                           readahead, info->page_size, out) == LSVFS_OK) {
        lsvfs_cache_count_miss(cache, loc.slot, loc.offset);
        return SQLITE_OK;
    }
    if (f->handle == NULL || !in_python())
        return fail(f, SQLITE_IOERR_READ,
                    "page %u of TXID %016llx: not cached, and Python is gone",
                    pgno, info->txid);
    return lsvfs_py_fetch(f->handle, f, s, pgno, readahead, out,
                          info->page_size);
}

/* Page 1, shimmed. SQLite reads its header at the start of every
 * transaction, so each file keeps its own copy for the snapshot it last
 * served, and concurrent readers do not all meet on one cache shard. */
static int get_page1(lsvfs_file *f, lsvfs_snapshot *s, uint8_t *out)
{
    const lsvfs_snapshot_info *info = lsvfs_snapshot_info_of(s);
    if (f->page1 != NULL && f->page1_id == info->id &&
        info->lineage == lsvfs_replica_lineage(f->rep)) {
        memcpy(out, f->page1, info->page_size);
        return SQLITE_OK;
    }
    int rc = get_page(f, s, 1, 1, out);
    if (rc != SQLITE_OK)
        return rc;
    shim_page1(out, info);
    uint8_t *copy = realloc(f->page1, info->page_size);
    if (copy != NULL) {
        memcpy(copy, out, info->page_size);
        f->page1 = copy;
        f->page1_id = info->id;
    }
    return SQLITE_OK;
}

static int read_pages(lsvfs_file *f, lsvfs_snapshot *s, uint8_t *buf,
                      int amount, sqlite3_int64 offset)
{
    const lsvfs_snapshot_info *info = lsvfs_snapshot_info_of(s);
    uint64_t ps = info->page_size;
    uint64_t size = (uint64_t)info->commit * ps;
    uint64_t start = (uint64_t)offset;
    uint64_t want_end = start + (uint64_t)amount;
    uint64_t end = want_end < size ? want_end : size;
    if (start >= end) {
        memset(buf, 0, (size_t)amount);
        return SQLITE_IOERR_SHORT_READ;
    }
    uint32_t first = (uint32_t)(start / ps + 1);
    uint32_t last = (uint32_t)((end - 1) / ps + 1);
    /* Sequential access doubles the read-ahead window; a jump resets it. */
    uint32_t most = lsvfs_replica_readahead(f->rep);
    if (first == f->next_pgno)
        f->run = f->run < most / 2 ? f->run * 2 : most;
    else
        f->run = 1;
    f->next_pgno = last + 1;
    uint32_t span = last - first + 1;
    uint32_t ahead = f->run > span ? f->run : span;

    for (uint32_t pgno = first; pgno <= last; pgno++) {
        uint64_t page_start = (uint64_t)(pgno - 1) * ps;
        uint64_t lo = start > page_start ? start : page_start;
        uint64_t hi = end < page_start + ps ? end : page_start + ps;
        uint8_t *dst = buf + (lo - start);
        int whole = lo == page_start && hi == page_start + ps;
        uint8_t *page = dst;
        if (!whole) {
            if (f->scratch_len < ps) {
                uint8_t *p = realloc(f->scratch, ps);
                if (p == NULL)
                    return SQLITE_NOMEM;
                f->scratch = p;
                f->scratch_len = ps;
            }
            page = f->scratch;
        }
        int rc;
        if (pgno == 1)
            rc = get_page1(f, s, page);
        else
            rc = get_page(f, s, pgno, pgno == first ? ahead : 1, page);
        if (rc != SQLITE_OK)
            return rc;
        if (!whole)
            memcpy(dst, page + (lo - page_start), hi - lo);
    }
    if (end < want_end) {
        memset(buf + (end - start), 0, want_end - end);
        return SQLITE_IOERR_SHORT_READ;
    }
    return SQLITE_OK;
}

int lsvfs_file_read(lsvfs_file *f, void *buf, int amount, int64_t offset)
{
    if (amount < 0 || offset < 0 || buf == NULL)
        return SQLITE_IOERR_READ;
    if (amount == 0)
        return SQLITE_OK;
    /* Inside a transaction the pin is ours already: no reference counting
     * on the snapshot every thread shares. */
    if (f->pinned != NULL)
        return read_pages(f, f->pinned, buf, amount, offset);
    lsvfs_snapshot *s = file_snapshot(f);
    if (s == NULL)
        return SQLITE_IOERR_READ;
    int rc = read_pages(f, s, buf, amount, offset);
    lsvfs_snapshot_release(s);
    return rc;
}

/* ---- locks and the rest of the io methods ------------------------------ */

/* Whether `s` may not be read under the file's floor (a pin is never below it). */
static int below_floor(const lsvfs_file *f, lsvfs_snapshot *s)
{
    if (f->floor == 0 || f->chosen != NULL)
        return 0;
    const lsvfs_snapshot_info *info = lsvfs_snapshot_info_of(s);
    return info->txid < f->floor || info->lineage != f->floor_lineage;
}

/* The snapshot a read transaction starts on: the file's, once it is at its
 * floor (Python waits for that, without any lock of ours held). */
static int start_snapshot(lsvfs_file *f, lsvfs_snapshot **out)
{
    lsvfs_snapshot *s = file_snapshot(f);
    if (s != NULL && below_floor(f, s)) {
        lsvfs_snapshot_release(s);
        if (f->handle == NULL || !in_python())
            return SQLITE_BUSY;
        int rc = lsvfs_py_wait(f->handle, f, f->floor, f->floor_lineage);
        if (rc != SQLITE_OK)
            return rc;
        s = file_snapshot(f);
        if (s != NULL && below_floor(f, s)) {
            lsvfs_snapshot_release(s);
            return SQLITE_BUSY;
        }
    }
    if (s == NULL)
        return SQLITE_IOERR_LOCK;
    *out = s;
    return SQLITE_OK;
}

int lsvfs_file_lock(lsvfs_file *f, int level)
{
    if (level >= SQLITE_LOCK_RESERVED)
        return SQLITE_READONLY;
    if (f->lock == SQLITE_LOCK_NONE && level >= SQLITE_LOCK_SHARED) {
        int rc = start_snapshot(f, &f->pinned);
        if (rc != SQLITE_OK)
            return rc;
    }
    if (level > f->lock)
        f->lock = level;
    return SQLITE_OK;
}

int lsvfs_file_unlock(lsvfs_file *f, int level)
{
    if (level == SQLITE_LOCK_NONE) {
        lsvfs_snapshot_release(f->pinned);
        f->pinned = NULL;
    }
    if (level < f->lock)
        f->lock = level;
    return SQLITE_OK;
}

int lsvfs_file_lock_level(lsvfs_file *f)
{
    return f->lock;
}

int lsvfs_file_check_reserved(lsvfs_file *f, int *out)
{
    (void)f;
    *out = 0; /* no writer can exist */
    return SQLITE_OK;
}

int lsvfs_file_size(lsvfs_file *f, int64_t *out)
{
    const lsvfs_snapshot_info *info;
    if (f->pinned != NULL) {
        info = lsvfs_snapshot_info_of(f->pinned);
        *out = (int64_t)info->commit * info->page_size;
        return SQLITE_OK;
    }
    lsvfs_snapshot *s = file_snapshot(f);
    if (s == NULL)
        return SQLITE_IOERR_FSTAT;
    info = lsvfs_snapshot_info_of(s);
    *out = (int64_t)info->commit * info->page_size;
    lsvfs_snapshot_release(s);
    return SQLITE_OK;
}

int lsvfs_file_pragma(lsvfs_file *f, const char *name, const char *value,
                      char **result)
{
    *result = NULL;
    if (name == NULL || !lsvfs_is_pragma(name))
        return SQLITE_NOTFOUND;
    if (f->handle == NULL || !in_python())
        return SQLITE_NOTFOUND;
    lsvfs_file_set_result(f, NULL);
    int rc = lsvfs_py_pragma(f->handle, f, name, value);
    *result = f->result;
    f->result = NULL;
    return rc;
}

void lsvfs_free_result(lsvfs_file *f, char *result)
{
    (void)f;
    free(result);
}

static int file_close(lsvfs_file *f)
{
    if (f->handle != NULL && in_python())
        lsvfs_py_close(f->handle);
    f->handle = NULL;
    lsvfs_snapshot_release(f->pinned);
    lsvfs_snapshot_release(f->chosen);
    f->pinned = f->chosen = NULL;
    lsvfs_replica_release(f->rep);
    f->rep = NULL;
    free(f->scratch);
    free(f->result);
    free(f->page1);
    f->scratch = NULL;
    f->result = NULL;
    f->page1 = NULL;
    f->base.pMethods = NULL;
    return SQLITE_OK;
}

static lsvfs_file *F(sqlite3_file *p)
{
    return (lsvfs_file *)p;
}

static int io_close(sqlite3_file *p)
{
    return file_close(F(p));
}

static int io_read(sqlite3_file *p, void *buf, int amount, sqlite3_int64 off)
{
    return lsvfs_file_read(F(p), buf, amount, off);
}

static int io_write(sqlite3_file *p, const void *buf, int amount,
                    sqlite3_int64 off)
{
    (void)p, (void)buf, (void)amount, (void)off;
    return SQLITE_READONLY;
}

static int io_truncate(sqlite3_file *p, sqlite3_int64 size)
{
    (void)p, (void)size;
    return SQLITE_READONLY;
}

static int io_sync(sqlite3_file *p, int flags)
{
    (void)p, (void)flags;
    return SQLITE_OK;
}

static int io_size(sqlite3_file *p, sqlite3_int64 *out)
{
    int64_t size = 0;
    int rc = lsvfs_file_size(F(p), &size);
    *out = size;
    return rc;
}

static int io_lock(sqlite3_file *p, int level)
{
    return lsvfs_file_lock(F(p), level);
}

static int io_unlock(sqlite3_file *p, int level)
{
    return lsvfs_file_unlock(F(p), level);
}

static int io_check_reserved(sqlite3_file *p, int *out)
{
    return lsvfs_file_check_reserved(F(p), out);
}

static int io_file_control(sqlite3_file *p, int op, void *arg)
{
    lsvfs_file *f = F(p);
    if (op == SQLITE_FCNTL_HAS_MOVED) {
        *(int *)arg = 0;
        return SQLITE_OK;
    }
    if (op != SQLITE_FCNTL_PRAGMA)
        return SQLITE_NOTFOUND;
    char **args = arg;
    char *result = NULL;
    int rc = lsvfs_file_pragma(f, args[1], args[2], &result);
    if (result != NULL) {
        args[0] = f->vfs->fns.mprintf("%s", result);
        free(result);
        if (args[0] == NULL && rc == SQLITE_OK)
            rc = SQLITE_NOMEM;
    }
    return rc;
}

static int io_sector_size(sqlite3_file *p)
{
    (void)p;
    return 4096;
}

static int io_device_characteristics(sqlite3_file *p)
{
    (void)p;
    return 0;
}

static const sqlite3_io_methods io_methods = {
    .iVersion = 1,
    .xClose = io_close,
    .xRead = io_read,
    .xWrite = io_write,
    .xTruncate = io_truncate,
    .xSync = io_sync,
    .xFileSize = io_size,
    .xLock = io_lock,
    .xUnlock = io_unlock,
    .xCheckReservedLock = io_check_reserved,
    .xFileControl = io_file_control,
    .xSectorSize = io_sector_size,
    .xDeviceCharacteristics = io_device_characteristics,
};

lsvfs_file *lsvfs_file_of(struct sqlite3_file *p)
{
    return p != NULL && p->pMethods == &io_methods ? F(p) : NULL;
}

/* ---- opening ------------------------------------------------------------ */

static int open_main(lsvfs_vfs *v, lsvfs_file *f, const char *params,
                     size_t params_len)
{
    memset(f, 0, sizeof *f);
    f->vfs = v;
    f->run = 1;
    if (!in_python())
        return SQLITE_CANTOPEN;
    int rc = lsvfs_py_open(v->ctx, params, params_len, f);
    if (rc == SQLITE_OK && f->rep == NULL)
        rc = SQLITE_CANTOPEN;
    if (rc != SQLITE_OK) {
        file_close(f);
        return rc;
    }
    f->base.pMethods = &io_methods;
    return SQLITE_OK;
}

int lsvfs_file_open(lsvfs_vfs *v, const char *params, size_t params_len,
                    lsvfs_file **out)
{
    *out = NULL;
    lsvfs_file *f = malloc(sizeof *f);
    if (f == NULL)
        return SQLITE_NOMEM;
    int rc = open_main(v, f, params, params_len);
    if (rc != SQLITE_OK) {
        free(f);
        return rc;
    }
    *out = f;
    return SQLITE_OK;
}

int lsvfs_file_close(lsvfs_file *f)
{
    int rc = file_close(f);
    free(f);
    return rc;
}

/* URI parameters as "key\0value\0...\0" (an empty key ends them). */
static char *uri_params(const lsvfs_vfs *v, const char *name, size_t *len)
{
    size_t cap = 1;
    for (int i = 0;; i++) {
        const char *k = v->fns.uri_key(name, i);
        if (k == NULL)
            break;
        const char *val = v->fns.uri_parameter(name, k);
        cap += strlen(k) + 1 + (val ? strlen(val) : 0) + 1;
    }
    char *buf = malloc(cap), *p = buf;
    if (buf == NULL)
        return NULL;
    for (int i = 0;; i++) {
        const char *k = v->fns.uri_key(name, i);
        if (k == NULL)
            break;
        const char *val = v->fns.uri_parameter(name, k);
        size_t kl = strlen(k) + 1, vl = (val ? strlen(val) : 0) + 1;
        memcpy(p, k, kl);
        memcpy(p + kl, val ? val : "", vl);
        p += kl + vl;
    }
    *p++ = '\0';
    *len = (size_t)(p - buf);
    return buf;
}

#define TEMP_FLAGS \
    (SQLITE_OPEN_TEMP_DB | SQLITE_OPEN_TEMP_JOURNAL | SQLITE_OPEN_SUBJOURNAL | \
     SQLITE_OPEN_TRANSIENT_DB)

static int vfs_open(sqlite3_vfs *pv, sqlite3_filename name, sqlite3_file *pf,
                    int flags, int *out_flags)
{
    lsvfs_vfs *v = pv->pAppData;
    if (flags & SQLITE_OPEN_MAIN_DB) {
        pf->pMethods = NULL;
        if (name == NULL)
            return SQLITE_CANTOPEN;
        size_t len = 0;
        char *params = uri_params(v, name, &len);
        if (params == NULL)
            return SQLITE_NOMEM;
        int rc = open_main(v, F(pf), params, len);
        free(params);
        if (rc == SQLITE_OK && out_flags != NULL)
            *out_flags = (flags & ~(SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)) |
                         SQLITE_OPEN_READONLY;
        return rc;
    }
    if (flags & TEMP_FLAGS)
        return v->deflt->xOpen(v->deflt, name, pf, flags, out_flags);
    /* Journals, WALs: a replica never has one and never gets one. */
    pf->pMethods = NULL;
    return SQLITE_CANTOPEN;
}

static int vfs_delete(sqlite3_vfs *pv, const char *name, int sync_dir)
{
    (void)pv, (void)name, (void)sync_dir;
    return SQLITE_OK; /* we never create a file that SQLite deletes by name */
}

static int vfs_access(sqlite3_vfs *pv, const char *name, int flags, int *out)
{
    /* "Is this directory writable" (temp_store_directory) is a question
     * about the real file system; whether a journal or WAL exists beside a
     * replica is not: none ever does, whatever lies in the working directory. */
    if (flags == SQLITE_ACCESS_READWRITE) {
        sqlite3_vfs *d = ((lsvfs_vfs *)pv->pAppData)->deflt;
        return d->xAccess(d, name, flags, out);
    }
    *out = 0;
    return SQLITE_OK;
}

static int vfs_full_pathname(sqlite3_vfs *pv, const char *name, int n,
                             char *out)
{
    (void)pv;
    if (n <= 0)
        return SQLITE_CANTOPEN;
    size_t len = strlen(name);
    if (len >= (size_t)n)
        return SQLITE_CANTOPEN;
    memcpy(out, name, len + 1);
    return SQLITE_OK;
}

static sqlite3_vfs *D(sqlite3_vfs *pv)
{
    return ((lsvfs_vfs *)pv->pAppData)->deflt;
}

static void *vfs_dlopen(sqlite3_vfs *pv, const char *path)
{
    return D(pv)->xDlOpen(D(pv), path);
}

static void vfs_dlerror(sqlite3_vfs *pv, int n, char *out)
{
    D(pv)->xDlError(D(pv), n, out);
}

static void (*vfs_dlsym(sqlite3_vfs *pv, void *h, const char *sym))(void)
{
    return D(pv)->xDlSym(D(pv), h, sym);
}

static void vfs_dlclose(sqlite3_vfs *pv, void *h)
{
    D(pv)->xDlClose(D(pv), h);
}

static int vfs_randomness(sqlite3_vfs *pv, int n, char *out)
{
    return D(pv)->xRandomness(D(pv), n, out);
}

static int vfs_sleep(sqlite3_vfs *pv, int us)
{
    return D(pv)->xSleep(D(pv), us);
}

static int vfs_current_time(sqlite3_vfs *pv, double *out)
{
    return D(pv)->xCurrentTime(D(pv), out);
}

static int vfs_last_error(sqlite3_vfs *pv, int n, char *out)
{
    return D(pv)->xGetLastError ? D(pv)->xGetLastError(D(pv), n, out) : 0;
}

static int vfs_current_time64(sqlite3_vfs *pv, sqlite3_int64 *out)
{
    sqlite3_vfs *d = D(pv);
    if (d->iVersion >= 2 && d->xCurrentTimeInt64 != NULL)
        return d->xCurrentTimeInt64(d, out);
    double t = 0;
    int rc = d->xCurrentTime(d, &t);
    *out = (sqlite3_int64)(t * 86400000.0);
    return rc;
}

/* ---- registration ------------------------------------------------------- */

lsvfs_vfs *lsvfs_vfs_register(const char *name, void *const fns[], void *ctx,
                              char *err, size_t errcap)
{
    for (int i = 0; i < LSVFS_FN_COUNT; i++) {
        if (fns[i] == NULL) {
            snprintf(err, errcap, "SQLite function %d missing", i);
            return NULL;
        }
    }
    if (name == NULL || strlen(name) >= sizeof ((lsvfs_vfs *)0)->name) {
        snprintf(err, errcap, "VFS name missing or too long");
        return NULL;
    }
    lsvfs_vfs *v = calloc(1, sizeof *v);
    if (v == NULL) {
        snprintf(err, errcap, "out of memory");
        return NULL;
    }
    v->fns.vfs_find = (sqlite3_vfs * (*)(const char *)) fns[LSVFS_FN_VFS_FIND];
    v->fns.vfs_register = (int (*)(sqlite3_vfs *, int))fns[LSVFS_FN_VFS_REGISTER];
    v->fns.uri_key = (const char *(*)(const char *, int))fns[LSVFS_FN_URI_KEY];
    v->fns.uri_parameter =
        (const char *(*)(const char *, const char *))fns[LSVFS_FN_URI_PARAMETER];
    v->fns.mprintf = (char *(*)(const char *, ...))fns[LSVFS_FN_MPRINTF];
    v->fns.free = (void (*)(void *))fns[LSVFS_FN_FREE];
    v->fns.auto_extension = (int (*)(void (*)(void)))fns[LSVFS_FN_AUTO_EXTENSION];
    v->deflt = v->fns.vfs_find(NULL);
    if (v->deflt == NULL) {
        snprintf(err, errcap, "this SQLite has no default VFS");
        free(v);
        return NULL;
    }
    if (v->fns.vfs_find(name) != NULL) {
        snprintf(err, errcap, "a VFS named %s is already registered", name);
        free(v);
        return NULL;
    }
    strcpy(v->name, name);
    v->ctx = ctx;
    sqlite3_vfs *b = &v->base;
    b->iVersion = 2;
    b->szOsFile = v->deflt->szOsFile > (int)sizeof(lsvfs_file)
                      ? v->deflt->szOsFile
                      : (int)sizeof(lsvfs_file);
    b->mxPathname = v->deflt->mxPathname > 512 ? v->deflt->mxPathname : 512;
    b->zName = v->name;
    b->pAppData = v;
    b->xOpen = vfs_open;
    b->xDelete = vfs_delete;
    b->xAccess = vfs_access;
    b->xFullPathname = vfs_full_pathname;
    b->xDlOpen = vfs_dlopen;
    b->xDlError = vfs_dlerror;
    b->xDlSym = vfs_dlsym;
    b->xDlClose = vfs_dlclose;
    b->xRandomness = vfs_randomness;
    b->xSleep = vfs_sleep;
    b->xCurrentTime = vfs_current_time;
    b->xGetLastError = vfs_last_error;
    b->xCurrentTimeInt64 = vfs_current_time64;
    int rc = v->fns.vfs_register(b, 0);
    if (rc != SQLITE_OK) {
        snprintf(err, errcap, "sqlite3_vfs_register failed (%d)", rc);
        free(v);
        return NULL;
    }
    /* Adding the same entry point twice is a no-op in SQLite. */
    rc = v->fns.auto_extension((void (*)(void))lsvfs_sql_functions_init);
    if (rc != SQLITE_OK) {
        snprintf(err, errcap, "sqlite3_auto_extension failed (%d)", rc);
        return NULL; /* the VFS stays registered: SQLite cannot take it back safely */
    }
    return v;
}
