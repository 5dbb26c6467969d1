/* frame.c - decode LTX page frames: one, a run of adjacent ones, or a
 * whole file with its checksum.
 *
 * Frame: pgno u32 BE, flags u16 BE; flags 1 = u32 BE compressed size then
 * an LZ4 block; flags 0 = legacy LZ4-frame payload (not decoded here). */
#include <string.h>

#include "lsvfs_core.h"
#include "internal.h"


int lsvfs_valid_page_size(uint32_t n)
{
    return n >= LSVFS_MIN_PAGE_SIZE && n <= LSVFS_MAX_PAGE_SIZE &&
           (n & (n - 1)) == 0;
}

int lsvfs_frame_decode(const uint8_t *frame, size_t frame_len,
                       uint32_t expected_pgno, uint32_t page_size,
                       uint8_t *out)
{
    if (!lsvfs_valid_page_size(page_size) || expected_pgno == 0 || out == NULL ||
        (frame == NULL && frame_len != 0))
        return LSVFS_ERANGE;
    if (frame_len < LSVFS_LTX_PAGE_HEADER_SIZE)
        return LSVFS_ETRUNCATED;
    if (lsvfs_load_be32(frame) != expected_pgno)
        return LSVFS_EPGNO;
    unsigned flags = (unsigned)frame[4] << 8 | frame[5];
    if (flags == 0)
        return LSVFS_ELEGACY;
    if (flags != LSVFS_LTX_FRAME_FLAG_LZ4_BLOCK)
        return LSVFS_EFLAGS;
    if (frame_len < LSVFS_LTX_FRAME_PREFIX)
        return LSVFS_ETRUNCATED;
    if ((uint64_t)lsvfs_load_be32(frame + LSVFS_LTX_PAGE_HEADER_SIZE) !=
        (uint64_t)(frame_len - LSVFS_LTX_FRAME_PREFIX))
        return LSVFS_ESIZE;
    return lsvfs_lz4_decode_exact(frame + LSVFS_LTX_FRAME_PREFIX,
                                  frame_len - LSVFS_LTX_FRAME_PREFIX, out,
                                  page_size);
}

int lsvfs_frames_decode(const uint8_t *buf, size_t buf_len,
                        uint64_t buf_offset, const lsvfs_index_entry *entries,
                        size_t n, uint32_t page_size, uint8_t *out,
                        size_t *failed)
{
    size_t dummy;
    if (failed == NULL)
        failed = &dummy;
    *failed = 0;
    if (!lsvfs_valid_page_size(page_size) || (n != 0 && (entries == NULL ||
                                                   out == NULL)) ||
        (buf == NULL && buf_len != 0))
        return LSVFS_ERANGE;
    for (size_t i = 0; i < n; i++) {
        const lsvfs_index_entry *e = &entries[i];
        *failed = i;
        if (e->offset < buf_offset)
            return LSVFS_ERANGE;
        uint64_t rel = e->offset - buf_offset;
        if (rel > buf_len || e->size > buf_len - rel)
            return LSVFS_ERANGE;
        int rc = lsvfs_frame_decode(buf + rel, e->size, e->pgno, page_size,
                                    out + i * (size_t)page_size);
        if (rc)
            return rc;
    }
    return LSVFS_OK;
}

int lsvfs_file_decode(const uint8_t *file, size_t file_len,
                      const lsvfs_index_entry *entries, size_t n,
                      uint32_t page_size, uint8_t *out, size_t out_pages,
                      uint64_t *file_checksum, size_t *failed)
{
    size_t dummy;
    if (failed == NULL)
        failed = &dummy;
    *failed = n; /* errors not tied to one entry report n */
    if (file_checksum == NULL || !lsvfs_valid_page_size(page_size) ||
        (file == NULL && file_len != 0) || (n != 0 && entries == NULL))
        return LSVFS_ERANGE;
    if (n != 0 && (out == NULL || (out_pages != 1 && out_pages < n)))
        return LSVFS_ERANGE;

    /* ---- header ---- */
    if (file_len < LSVFS_LTX_HEADER_SIZE)
        return LSVFS_ETRUNCATED;
    if (memcmp(file, "LTX1", 4) != 0)
        return LSVFS_ECORRUPT;
    if ((lsvfs_load_be32(file + 4) & ~(uint32_t)LSVFS_LTX_FLAG_NO_CHECKSUM) != 0)
        return LSVFS_EFLAGS;
    if (lsvfs_load_be32(file + 8) != page_size)
        return LSVFS_ESIZE;
    uint64_t crc = lsvfs_crc64_update(0, file, LSVFS_LTX_HEADER_SIZE);

    /* ---- page block: exactly the listed frames, back to back ---- */
    size_t pos = LSVFS_LTX_HEADER_SIZE;
    for (size_t i = 0; i < n; i++) {
        const lsvfs_index_entry *e = &entries[i];
        *failed = i;
        if (e->offset != (uint64_t)pos)
            return LSVFS_ECORRUPT;
        if (e->size > file_len - pos)
            return LSVFS_ETRUNCATED;
        uint8_t *page = out + (out_pages == 1 ? 0 : i * (size_t)page_size);
        int rc = lsvfs_frame_decode(file + pos, e->size, e->pgno, page_size,
                                    page);
        if (rc)
            return rc;
        crc = lsvfs_crc64_update(crc, file + pos, LSVFS_LTX_FRAME_PREFIX);
        crc = lsvfs_crc64_update(crc, page, page_size);
        pos += e->size;
    }
    *failed = n;

    /* ---- zero page header, then the index up to the trailer ---- */
    const size_t tail = 8 + LSVFS_LTX_TRAILER_SIZE; /* index length + trailer */
    if (file_len - pos < LSVFS_LTX_PAGE_HEADER_SIZE + 1 + tail)
        return LSVFS_ETRUNCATED;
    for (size_t k = 0; k < LSVFS_LTX_PAGE_HEADER_SIZE; k++)
        if (file[pos + k] != 0)
            return LSVFS_ECORRUPT;
    size_t index_start = pos + LSVFS_LTX_PAGE_HEADER_SIZE;
    uint64_t index_len = lsvfs_load_be64(file + file_len - tail);
    if (index_len != (uint64_t)(file_len - tail - index_start))
        return LSVFS_ECORRUPT;
    /* zero header, index, its length and the post-apply checksum */
    crc = lsvfs_crc64_update(crc, file + pos, file_len - 8 - pos);
    *file_checksum = crc | LSVFS_CHECKSUM_FLAG;
    return LSVFS_OK;
}
