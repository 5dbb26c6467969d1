/* internal.h - what the C files share with each other and not with Python. */
#ifndef LSVFS_INTERNAL_H
#define LSVFS_INTERNAL_H

#include "lsvfs_core.h"

/* Big-endian integers as LTX stores them. */
static inline uint32_t lsvfs_load_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           (uint32_t)p[3];
}

static inline uint64_t lsvfs_load_be64(const uint8_t *p)
{
    return (uint64_t)lsvfs_load_be32(p) << 32 | lsvfs_load_be32(p + 4);
}

void lsvfs_replica_retain(lsvfs_replica *r);
void lsvfs_replica_release(lsvfs_replica *r);
uint32_t lsvfs_replica_readahead(const lsvfs_replica *r);
const lsvfs_ptable *lsvfs_snapshot_table(const lsvfs_snapshot *s);
const lsvfs_snapshot_info *lsvfs_snapshot_info_of(const lsvfs_snapshot *s);
/* The replica's hydration file, NULL if none (set once, read without locks). */
lsvfs_hydration *lsvfs_replica_hydration(lsvfs_replica *r);
/* Its shared pages, NULL if none (set once, read without locks). */
lsvfs_shared_pages *lsvfs_replica_shared_pages(lsvfs_replica *r);

/* io.c: pread all of len bytes (LSVFS_ETRUNCATED on EOF or error); pwrite
 * all of them (LSVFS_ESIZE on error). */
int lsvfs_pread_full(int fd, uint8_t *buf, size_t len, uint64_t offset);
int lsvfs_pwrite_full(int fd, const uint8_t *buf, size_t len, uint64_t offset);

/* local.c: the LTX files of one replica that C preads itself, by slot.
 * lsvfs_locals_read is lsvfs_replica_read_local's contract (lsvfs_core.h). */
typedef struct lsvfs_locals lsvfs_locals;
lsvfs_locals *lsvfs_locals_new(void);
void lsvfs_locals_free(lsvfs_locals *l);
int lsvfs_locals_add(lsvfs_locals *l, uint32_t slot, const char *path);
void lsvfs_locals_forget(lsvfs_locals *l, uint32_t slot);
void lsvfs_locals_counts(lsvfs_locals *l, uint64_t *reads, uint64_t *bytes);
int lsvfs_locals_read(lsvfs_locals *l, lsvfs_cache *cache, const lsvfs_ptable *t,
                      uint32_t pgno, uint32_t readahead, uint32_t page_size, uint8_t *out);

/* extension.c: 1 if `name` is one of our PRAGMAs (any case), from the name table. */
int lsvfs_is_pragma(const char *name);

/* vfs.c: the file behind an sqlite3_file if it is one of ours, else NULL.
 * extension.c: the auto-extension adding the SQL functions. (SQLite's types
 * by their struct tags, so only the files that talk to SQLite include it.) */
struct sqlite3;
struct sqlite3_file;
struct sqlite3_api_routines;
lsvfs_file *lsvfs_file_of(struct sqlite3_file *p);
int lsvfs_sql_functions_init(struct sqlite3 *db, char **err,
                             const struct sqlite3_api_routines *api);

#endif
