/* frame.c - decode LTX page frames: one, a run of adjacent ones, or a
 * whole file with its checksum.
 *
 * Frame: pgno u32 BE, flags u16 BE; flags 1 = u32 BE compressed size then
 * an LZ4 block; flags 0 = legacy LZ4-frame payload (not decoded here). */
#include <string.h>

#include "lsvfs_core.h"

#define LTX_HEADER_SIZE 100u
#define LTX_PAGE_HEADER_SIZE 6u
#define LTX_FRAME_PREFIX 10u /* page header + compressed size */
#define LTX_TRAILER_SIZE 16u
#define LTX_FLAG_NO_CHECKSUM 0x2u
#define FRAME_FLAG_LZ4_BLOCK 0x1u

static uint32_t load_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           (uint32_t)p[3];
}

static uint64_t load_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static int valid_page_size(uint32_t page_size)
{
    return page_size >= 512 && page_size <= 65536 &&
           (page_size & (page_size - 1)) == 0;
}

int lsvfs_frame_decode(const uint8_t *frame, size_t frame_len,
                       uint32_t expected_pgno, uint32_t page_size,
                       uint8_t *out)
{
    if (!valid_page_size(page_size) || expected_pgno == 0 || out == NULL ||
        (frame == NULL && frame_len != 0))
        return LSVFS_ERANGE;
    if (frame_len < LTX_PAGE_HEADER_SIZE)
        return LSVFS_ETRUNCATED;
    if (load_be32(frame) != expected_pgno)
        return LSVFS_EPGNO;
    unsigned flags = (unsigned)frame[4] << 8 | frame[5];
    if (flags == 0)
        return LSVFS_ELEGACY;
    if (flags != FRAME_FLAG_LZ4_BLOCK)
        return LSVFS_EFLAGS;
    if (frame_len < LTX_FRAME_PREFIX)
        return LSVFS_ETRUNCATED;
    if ((uint64_t)load_be32(frame + LTX_PAGE_HEADER_SIZE) !=
        (uint64_t)(frame_len - LTX_FRAME_PREFIX))
        return LSVFS_ESIZE;
    return lsvfs_lz4_decode_exact(frame + LTX_FRAME_PREFIX,
                                  frame_len - LTX_FRAME_PREFIX, out,
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
    if (!valid_page_size(page_size) || (n != 0 && (entries == NULL ||
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
    if (file_checksum == NULL || !valid_page_size(page_size) ||
        (file == NULL && file_len != 0) || (n != 0 && entries == NULL))
        return LSVFS_ERANGE;
    if (n != 0 && (out == NULL || (out_pages != 1 && out_pages < n)))
        return LSVFS_ERANGE;

    /* ---- header ---- */
    if (file_len < LTX_HEADER_SIZE)
        return LSVFS_ETRUNCATED;
    if (memcmp(file, "LTX1", 4) != 0)
        return LSVFS_ECORRUPT;
    if ((load_be32(file + 4) & ~LTX_FLAG_NO_CHECKSUM) != 0)
        return LSVFS_EFLAGS;
    if (load_be32(file + 8) != page_size)
        return LSVFS_ESIZE;
    uint64_t crc = lsvfs_crc64_update(0, file, LTX_HEADER_SIZE);

    /* ---- page block: exactly the listed frames, back to back ---- */
    size_t pos = LTX_HEADER_SIZE;
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
        crc = lsvfs_crc64_update(crc, file + pos, LTX_FRAME_PREFIX);
        crc = lsvfs_crc64_update(crc, page, page_size);
        pos += e->size;
    }
    *failed = n;

    /* ---- zero page header, then the index up to the trailer ---- */
    const size_t tail = 8 + LTX_TRAILER_SIZE; /* index length + trailer */
    if (file_len - pos < LTX_PAGE_HEADER_SIZE + 1 + tail)
        return LSVFS_ETRUNCATED;
    for (size_t k = 0; k < LTX_PAGE_HEADER_SIZE; k++)
        if (file[pos + k] != 0)
            return LSVFS_ECORRUPT;
    size_t index_start = pos + LTX_PAGE_HEADER_SIZE;
    uint64_t index_len = load_be64(file + file_len - tail);
    if (index_len != (uint64_t)(file_len - tail - index_start))
        return LSVFS_ECORRUPT;
    /* zero header, index, its length and the post-apply checksum */
    crc = lsvfs_crc64_update(crc, file + pos, file_len - 8 - pos);
    *file_checksum = crc | LSVFS_CHECKSUM_FLAG;
    return LSVFS_OK;
}
