/* internal.h - what the C files share with each other and not with Python. */
#ifndef LSVFS_INTERNAL_H
#define LSVFS_INTERNAL_H

#include "lsvfs_core.h"

void lsvfs_replica_retain(lsvfs_replica *r);
void lsvfs_replica_release(lsvfs_replica *r);
uint32_t lsvfs_replica_readahead(const lsvfs_replica *r);
const lsvfs_ptable *lsvfs_snapshot_table(const lsvfs_snapshot *s);
const lsvfs_snapshot_info *lsvfs_snapshot_info_of(const lsvfs_snapshot *s);

#endif
