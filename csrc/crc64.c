/* crc64.c - CRC-64/ISO as computed by Go's hash/crc64 with crc64.ISO:
 * reflected polynomial 0xD800000000000000, inverted before and after.
 * Slicing-by-8: eight 256-entry tables let the inner loop fold eight input
 * bytes per step instead of one. */
#include <string.h>

#include "lsvfs_core.h"

#define ISO_POLY_REFLECTED 0xD800000000000000ULL

static uint64_t crc_tab[8][256];

/* Filled once when the shared object is loaded, before any call can run,
 * so readers never race with the initialisation. */
__attribute__((constructor)) static void crc64_init(void)
{
    for (unsigned i = 0; i < 256; i++) {
        uint64_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ ISO_POLY_REFLECTED : c >> 1;
        crc_tab[0][i] = c;
    }
    for (unsigned i = 0; i < 256; i++) {
        uint64_t c = crc_tab[0][i];
        for (int t = 1; t < 8; t++) {
            c = (c >> 8) ^ crc_tab[0][c & 0xff];
            crc_tab[t][i] = c;
        }
    }
}

/* Little-endian 64-bit load; compilers turn this into one mov. */
static inline uint64_t load_le64(const uint8_t *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 |
           (uint64_t)p[3] << 24 | (uint64_t)p[4] << 32 |
           (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
           (uint64_t)p[7] << 56;
}

uint64_t lsvfs_crc64_update(uint64_t crc, const uint8_t *buf, size_t len)
{
    crc = ~crc;
    if (buf == NULL)
        return ~crc;
    while (len >= 8) {
        crc ^= load_le64(buf);
        crc = crc_tab[7][crc & 0xff] ^ crc_tab[6][(crc >> 8) & 0xff] ^
              crc_tab[5][(crc >> 16) & 0xff] ^
              crc_tab[4][(crc >> 24) & 0xff] ^
              crc_tab[3][(crc >> 32) & 0xff] ^
              crc_tab[2][(crc >> 40) & 0xff] ^
              crc_tab[1][(crc >> 48) & 0xff] ^ crc_tab[0][crc >> 56];
        buf += 8;
        len -= 8;
    }
    while (len--) {
        crc = crc_tab[0][(crc ^ *buf++) & 0xff] ^ (crc >> 8);
    }
    return ~crc;
}

uint64_t lsvfs_page_checksum(uint32_t pgno, const uint8_t *page,
                             size_t page_size)
{
    uint8_t be[4] = {(uint8_t)(pgno >> 24), (uint8_t)(pgno >> 16),
                     (uint8_t)(pgno >> 8), (uint8_t)pgno};
    uint64_t crc = lsvfs_crc64_update(0, be, sizeof be);
    crc = lsvfs_crc64_update(crc, page, page_size);
    return crc | LSVFS_CHECKSUM_FLAG;
}

uint32_t lsvfs_lock_pgno(uint32_t page_size)
{
    if (page_size == 0)
        return 0;
    return 0x40000000u / page_size + 1;
}

uint64_t lsvfs_pages_checksum_xor(uint32_t first_pgno, const uint8_t *pages,
                                  size_t count, uint32_t page_size)
{
    uint32_t lock = lsvfs_lock_pgno(page_size);
    uint64_t acc = 0;
    for (size_t i = 0; i < count; i++) {
        uint64_t pg = (uint64_t)first_pgno + i;
        if (pg > UINT32_MAX)
            break; /* no such page numbers exist */
        if (pg == lock)
            continue;
        /* bit 63 is forced on at the very end, so leave it out here */
        acc ^= lsvfs_page_checksum((uint32_t)pg, pages + i * (size_t)page_size,
                                   page_size) &
               ~LSVFS_CHECKSUM_FLAG;
    }
    return acc;
}
