/* pageindex.c - find and decode the LTX page index.
 *
 * Tail of an LTX file: [varint triples][0][u64 BE varint length]
 *                      [u64 post-apply checksum][u64 file checksum].
 * A triple is (pgno, absolute frame offset, frame size incl. header), each
 * an unsigned LEB128 varint as Go's binary.Uvarint reads it. */
#include "lsvfs_core.h"
#include "internal.h"


int lsvfs_index_locate(const uint8_t *tail, size_t tail_len,
                       uint64_t file_size, uint64_t *index_offset,
                       uint64_t *index_len)
{
    if (tail == NULL || index_offset == NULL || index_len == NULL)
        return LSVFS_ERANGE;
    if ((uint64_t)tail_len > file_size)
        return LSVFS_ERANGE;
    if (tail_len < 8 + LSVFS_LTX_TRAILER_SIZE)
        return LSVFS_ETRUNCATED;
    /* smallest file: header, zero page header, a lone 0 varint, length,
     * trailer */
    const uint64_t fixed = LSVFS_LTX_HEADER_SIZE + LSVFS_LTX_PAGE_HEADER_SIZE + 8 +
                           LSVFS_LTX_TRAILER_SIZE;
    if (file_size < fixed + 1)
        return LSVFS_ETRUNCATED;
    uint64_t len = lsvfs_load_be64(tail + tail_len - LSVFS_LTX_TRAILER_SIZE - 8);
    if (len == 0 || len > file_size - fixed)
        return LSVFS_ECORRUPT;
    *index_offset = file_size - LSVFS_LTX_TRAILER_SIZE - 8 - len;
    *index_len = len;
    return LSVFS_OK;
}

/* Go binary.Uvarint rules: at most 10 bytes, the 10th at most 1. */
static int read_uvarint(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
    const uint8_t *p = *pp;
    uint64_t x = 0;
    unsigned shift = 0;
    for (int i = 0; i < 10; i++) {
        if (p >= end)
            return LSVFS_ETRUNCATED;
        uint8_t b = *p++;
        if (b < 0x80) {
            if (i == 9 && b > 1)
                return LSVFS_ECORRUPT; /* overflows 64 bits */
            *v = x | (uint64_t)b << shift;
            *pp = p;
            return LSVFS_OK;
        }
        x |= (uint64_t)(b & 0x7f) << shift;
        shift += 7;
    }
    return LSVFS_ECORRUPT; /* longer than 10 bytes */
}

int lsvfs_index_decode(const uint8_t *buf, size_t len, uint64_t index_offset,
                       lsvfs_index_entry *out, size_t cap, size_t *count)
{
    if (count == NULL || (buf == NULL && len != 0) ||
        (out == NULL && cap != 0))
        return LSVFS_ERANGE;
    *count = 0;
    if (index_offset < LSVFS_LTX_HEADER_SIZE + LSVFS_LTX_PAGE_HEADER_SIZE)
        return LSVFS_ERANGE;
    const uint64_t block_end = index_offset - LSVFS_LTX_PAGE_HEADER_SIZE;
    const uint8_t *p = buf;
    const uint8_t *const end = buf + len;
    uint64_t prev_pgno = 0;
    uint64_t prev_end = LSVFS_LTX_HEADER_SIZE; /* frames start after the header */
    size_t n = 0;

    int rc;
    for (;;) {
        uint64_t pgno, offset, size;
        if ((rc = read_uvarint(&p, end, &pgno)) != 0)
            break;
        if (pgno == 0) {
            /* bytes after the terminator are garbage */
            rc = (p != end) ? LSVFS_ECORRUPT : LSVFS_OK;
            break;
        }
        if ((rc = read_uvarint(&p, end, &offset)) != 0)
            break;
        if ((rc = read_uvarint(&p, end, &size)) != 0)
            break;
        if (pgno > UINT32_MAX) {
            rc = LSVFS_ERANGE;
            break;
        }
        if (pgno <= prev_pgno) {
            rc = LSVFS_EORDER;
            break;
        }
        if (size > UINT32_MAX || size <= LSVFS_LTX_PAGE_HEADER_SIZE) {
            rc = LSVFS_ESIZE;
            break;
        }
        if (offset < prev_end) {
            /* before the page block, or overlapping the previous frame
             * (frames are in pgno order, so offsets must ascend too) */
            rc = offset < LSVFS_LTX_HEADER_SIZE ? LSVFS_ERANGE : LSVFS_ECORRUPT;
            break;
        }
        if (offset > block_end || size > block_end - offset) {
            rc = LSVFS_ERANGE;
            break;
        }
        if (n >= cap) {
            rc = LSVFS_ERANGE;
            break;
        }
        out[n].pgno = (uint32_t)pgno;
        out[n].size = (uint32_t)size;
        out[n].offset = offset;
        n++;
        prev_pgno = pgno;
        prev_end = offset + size;
    }
    /* on error, n is the number of good entries before the bad one */
    *count = n;
    return rc;
}
