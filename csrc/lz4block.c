/* lz4block.c - strict LZ4 block decoder.
 *
 * A block is a run of sequences: token (literal length high nibble, match
 * length - 4 low nibble; 15 means "more length bytes follow, each added,
 * until one is not 255"), the literals, a 2-byte little-endian offset and
 * the match. The last sequence has literals only and ends the input.
 *
 * Every read is checked against src_len and every write against dst_len.
 * Fast paths copy 16 (literals) or 8 (matches) bytes at a time when both
 * buffers have that much room left, so over-copies stay inside the buffers
 * and are overwritten by later output; anything near the ends takes the
 * exact path. */
#include <string.h>

#include "lsvfs_core.h"

/* Read an extended length (bytes added while they are 255). `limit` caps
 * the sum so it can neither overflow nor exceed what could ever fit. */
static inline int read_ext_len(const uint8_t **ipp, const uint8_t *iend,
                               size_t *len, size_t limit)
{
    const uint8_t *ip = *ipp;
    size_t l = *len;
    uint8_t b;
    do {
        if (ip >= iend)
            return LSVFS_ETRUNCATED;
        b = *ip++;
        l += b;
        if (l > limit)
            return LSVFS_ESIZE;
    } while (b == 255);
    *ipp = ip;
    *len = l;
    return LSVFS_OK;
}

/* The fast path runs while this much input and output remain: then a
 * short sequence (literals < 15, match < 19, offset >= 8) needs no checks
 * beyond the offset: its 16-byte literal copy, 2-byte offset read and
 * 18-byte match copy all stay inside both buffers, and at least one more
 * byte of input follows it, so it cannot be the block's last sequence. */
#define FAST_IN 32
#define FAST_OUT 32

int lsvfs_lz4_decode_exact(const uint8_t *src, size_t src_len, uint8_t *dst,
                           size_t dst_len)
{
    if (src == NULL || dst == NULL)
        return (src_len == 0) ? LSVFS_ETRUNCATED : LSVFS_ERANGE;
    if (src_len == 0)
        return LSVFS_ETRUNCATED;

    const uint8_t *ip = src;
    const uint8_t *const iend = src + src_len;
    uint8_t *op = dst;
    uint8_t *const oend = dst + dst_len;

    for (;;) {
        unsigned token;
        size_t lit, mlen, offset;
        const uint8_t *match;

        /* ---- fast path: short sequences far from both ends ---- */
        if ((size_t)(iend - ip) >= FAST_IN && (size_t)(oend - op) >= FAST_OUT) {
            token = *ip++;
            lit = token >> 4;
            mlen = token & 15;
            if (lit == 15)
                goto literals; /* long literal run: general path */
            memcpy(op, ip, 16);
            op += lit;
            ip += lit;
            offset = (size_t)ip[0] | (size_t)ip[1] << 8;
            ip += 2;
            if (offset == 0 || offset > (size_t)(op - dst))
                return LSVFS_ECORRUPT;
            match = op - offset;
            if (mlen == 15 || offset < 8)
                goto match_length; /* long or overlapping match */
            memcpy(op, match, 8);
            memcpy(op + 8, match + 8, 8);
            memcpy(op + 16, match + 16, 2);
            op += mlen + 4;
            continue;
        }

        /* ---- general path: every step checked ---- */
        if (ip >= iend)
            return LSVFS_ETRUNCATED;
        token = *ip++;
        lit = token >> 4;
        mlen = token & 15;

    literals:
        if (lit == 15) {
            int rc = read_ext_len(&ip, iend, &lit, dst_len);
            if (rc)
                return rc;
        }
        if (lit <= 16 && (size_t)(iend - ip) >= 16 &&
            (size_t)(oend - op) >= 16) {
            memcpy(op, ip, 16); /* short run: one fixed-size copy */
        } else {
            if (lit > (size_t)(iend - ip))
                return LSVFS_ETRUNCATED;
            if (lit > (size_t)(oend - op))
                return LSVFS_ESIZE;
            memcpy(op, ip, lit);
        }
        ip += lit;
        op += lit;

        if (ip == iend) {
            /* A literals-only sequence ends the block. */
            return (op == oend) ? LSVFS_OK : LSVFS_ESIZE;
        }

        if ((size_t)(iend - ip) < 2)
            return LSVFS_ETRUNCATED;
        offset = (size_t)ip[0] | (size_t)ip[1] << 8;
        ip += 2;
        if (offset == 0 || offset > (size_t)(op - dst))
            return LSVFS_ECORRUPT;
        match = op - offset;

    match_length:
        if (mlen == 15) {
            int rc = read_ext_len(&ip, iend, &mlen, dst_len);
            if (rc)
                return rc;
        }
        mlen += 4;
        size_t room = (size_t)(oend - op);
        if (mlen > room)
            return LSVFS_ESIZE;
        if (ip == iend)
            return LSVFS_ECORRUPT; /* block must end with literals */

        if (offset >= 8) {
            if (mlen <= 16 && room >= 16) {
                /* two non-overlapping 8-byte steps (offset >= 8) */
                memcpy(op, match, 8);
                memcpy(op + 8, match + 8, 8);
                op += mlen;
            } else if (room >= mlen + 8) {
                uint8_t *const end = op + mlen;
                do {
                    memcpy(op, match, 8);
                    op += 8;
                    match += 8;
                } while (op < end);
                op = end;
            } else {
                uint8_t *const end = op + mlen;
                while (op < end)
                    *op++ = *match++;
            }
        } else if (offset == 1) {
            memset(op, *match, mlen);
            op += mlen;
        } else {
            /* Short period: write one period by hand until the pattern
             * repeats at a distance >= 8, then copy in 8-byte steps from
             * that distance (the output is periodic with period offset). */
            uint8_t *const end = op + mlen;
            size_t dist = offset;
            while (dist < 8)
                dist += offset;
            uint8_t *const hand_end = (mlen < dist) ? end : op + dist;
            while (op < hand_end)
                *op++ = *match++;
            match = op - dist;
            if ((size_t)(oend - end) >= 8) {
                while (op < end) {
                    memcpy(op, match, 8);
                    op += 8;
                    match += 8;
                }
                op = end;
            } else {
                while (op < end)
                    *op++ = *match++;
            }
        }
    }
}
