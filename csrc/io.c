/* io.c - whole reads and writes at an offset, retried across EINTR and short
 * transfers: the one loop every file reader and writer here shares. */
#define _GNU_SOURCE
#include <errno.h>
#include <unistd.h>

#include "lsvfs_core.h"
#include "internal.h"

int lsvfs_pread_full(int fd, uint8_t *buf, size_t len, uint64_t offset)
{
    while (len > 0) {
        ssize_t n = pread(fd, buf, len, (off_t)offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return LSVFS_ETRUNCATED;
        buf += n;
        len -= (size_t)n;
        offset += (uint64_t)n;
    }
    return LSVFS_OK;
}

int lsvfs_pwrite_full(int fd, const uint8_t *buf, size_t len, uint64_t offset)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, len, (off_t)offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return LSVFS_ESIZE;
        buf += n;
        len -= (size_t)n;
        offset += (uint64_t)n;
    }
    return LSVFS_OK;
}
