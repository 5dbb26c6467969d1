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
/* pread all of len bytes: LSVFS_ETRUNCATED on EOF or error. */
int lsvfs_pread_full(int fd, uint8_t *buf, size_t len, uint64_t offset);

#endif
