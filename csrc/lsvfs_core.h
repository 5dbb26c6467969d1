/*
 * lsvfs_core.h - the whole C API the Python side sees (through cffi).
 *
 * Every function that reads caller-supplied bytes takes an explicit length
 * and never reads or writes outside the buffers it is given, whatever the
 * bytes contain. Errors are negative LSVFS_E* codes; lsvfs_strerror() names
 * them. Big-endian on-disk integers are decoded byte by byte.
 */
#ifndef LSVFS_CORE_H
#define LSVFS_CORE_H

#include <stddef.h>
#include <stdint.h>

/* ---- status codes ---------------------------------------------------- */
#define LSVFS_OK 0
#define LSVFS_ETRUNCATED -1 /* input ends before the structure does */
#define LSVFS_ECORRUPT -2   /* malformed bytes (LZ4 stream, varint, ...) */
#define LSVFS_EPGNO -3      /* frame carries another pgno than expected */
#define LSVFS_EFLAGS -4     /* frame flags not valid */
#define LSVFS_ESIZE -5      /* sizes disagree (page size, frame size, ...) */
#define LSVFS_ENOMEM -6     /* allocation failed */
#define LSVFS_ERANGE -7     /* argument out of range (pgno 0, offset, ...) */
#define LSVFS_ENOTFOUND -8  /* page table has no entry for pgno */
#define LSVFS_ELEGACY -9    /* frame uses the legacy LZ4-frame payload */
#define LSVFS_EORDER -10    /* index pgnos not strictly ascending */

const char *lsvfs_strerror(int status);

/* ---- LZ4 block ------------------------------------------------------- */
/* Decode one LZ4 block. Succeeds only if the block decodes to exactly
 * dst_len bytes and consumes exactly src_len bytes. */
int lsvfs_lz4_decode_exact(const uint8_t *src, size_t src_len, uint8_t *dst,
                           size_t dst_len);

/* ---- CRC-64 (ISO polynomial, Go hash/crc64 compatible) --------------- */
#define LSVFS_CHECKSUM_FLAG 0x8000000000000000ULL
/* Go crc64.Update semantics: pass 0 to start, the previous value to go on. */
uint64_t lsvfs_crc64_update(uint64_t crc, const uint8_t *buf, size_t len);
/* CRC-64(pgno as u32 BE || page) with LSVFS_CHECKSUM_FLAG set. */
uint64_t lsvfs_page_checksum(uint32_t pgno, const uint8_t *page,
                             size_t page_size);
/* XOR of page checksums of `count` consecutive pages (pgno first_pgno, ...)
 * in `pages`, skipping the lock page; flag NOT applied so results of
 * several calls can be XORed together. */
uint64_t lsvfs_pages_checksum_xor(uint32_t first_pgno, const uint8_t *pages,
                                  size_t count, uint32_t page_size);
/* pgno of the lock page for a page size (0x40000000 / page_size + 1). */
uint32_t lsvfs_lock_pgno(uint32_t page_size);

/* ---- page index ------------------------------------------------------ */
typedef struct {
    uint32_t pgno;
    uint32_t size;   /* frame size including its header */
    uint64_t offset; /* absolute offset of the frame in the LTX file */
} lsvfs_index_entry;

/* From the last `tail_len` bytes of an LTX file of `file_size` bytes, find
 * the page index: `*index_offset` is where its varints start (absolute),
 * `*index_len` their length including the terminating 0 varint. The caller
 * reads more tail if index_offset < file_size - tail_len. */
int lsvfs_index_locate(const uint8_t *tail, size_t tail_len,
                       uint64_t file_size, uint64_t *index_offset,
                       uint64_t *index_len);

/* Decode exactly `len` bytes of varint triples + terminating 0. Entries
 * must have strictly ascending non-zero pgnos, frames inside the page block
 * [100, index_offset - 6), frames not overlapping, sizes > 6. At most
 * `cap` entries are written; len / 3 + 1 is always enough.
 * `*count` receives the number of entries (on error: the number of good
 * entries before the bad one, i.e. the failing entry's index). */
int lsvfs_index_decode(const uint8_t *buf, size_t len, uint64_t index_offset,
                       lsvfs_index_entry *out, size_t cap, size_t *count);

/* ---- frames ---------------------------------------------------------- */
/* Decode one frame (`frame_len` bytes starting at its 6-byte header) into
 * `out` (page_size bytes). Checks pgno, flags (LZ4 block flag only),
 * stored compressed size == frame_len - 10 and exact decoded size.
 * Returns LSVFS_ELEGACY for a well-formed legacy header (flags 0). */
int lsvfs_frame_decode(const uint8_t *frame, size_t frame_len,
                       uint32_t expected_pgno, uint32_t page_size,
                       uint8_t *out);

/* Decode `n` frames described by `entries` from `buf`, which holds the
 * file bytes [buf_offset, buf_offset + buf_len). Page i goes to
 * out + i * page_size (out holds n * page_size bytes). On error
 * `*failed` is the index of the entry that failed. */
int lsvfs_frames_decode(const uint8_t *buf, size_t buf_len,
                        uint64_t buf_offset, const lsvfs_index_entry *entries,
                        size_t n, uint32_t page_size, uint8_t *out,
                        size_t *failed);

/* Walk a whole LTX file held in memory: the page block from byte 100 must
 * hold exactly the frames listed in `entries` (from the file's own index),
 * in order, each decoding to page_size bytes into out + i * page_size, then
 * the 6-byte zero header ending at the index. Computes the file checksum
 * (flag set) over header, frames (with decompressed pages), zero header,
 * index, its length and the post-apply field. Pages are decoded even when
 * the caller only wants the checksum; `out` may then be a scratch buffer of
 * page_size bytes if `out_pages` is 1 (each page overwrites the last).
 * On error `*failed` is the failing entry's index, or n when the fault is
 * not in a frame (header, zero page header, index length). */
int lsvfs_file_decode(const uint8_t *file, size_t file_len,
                      const lsvfs_index_entry *entries, size_t n,
                      uint32_t page_size, uint8_t *out, size_t out_pages,
                      uint64_t *file_checksum, size_t *failed);

/* ---- page table ------------------------------------------------------ */
/* Dense map pgno -> frame location, in copy-on-write chunks so a clone
 * costs one chunk directory and changes copy only the chunks they touch.
 * Chunks are reference counted atomically: tables sharing chunks may be
 * used and freed from different threads (a single table is not itself
 * safe for concurrent mutation). */
typedef struct lsvfs_ptable lsvfs_ptable;

typedef struct {
    uint32_t slot; /* caller's file number; 0 means "no entry" */
    uint32_t size;
    uint64_t offset;
} lsvfs_location;

lsvfs_ptable *lsvfs_ptable_new(void);
lsvfs_ptable *lsvfs_ptable_clone(const lsvfs_ptable *t);
void lsvfs_ptable_free(lsvfs_ptable *t);
/* Point every entry's pgno at (slot, entry offset, entry size); slot > 0. */
int lsvfs_ptable_apply(lsvfs_ptable *t, uint32_t slot,
                       const lsvfs_index_entry *entries, size_t n);
/* Drop entries past `commit` and set the table's size to commit pages. */
int lsvfs_ptable_truncate(lsvfs_ptable *t, uint32_t commit);
int lsvfs_ptable_get(const lsvfs_ptable *t, uint32_t pgno,
                     lsvfs_location *out);
/* Fill out[i] for pgnos first..first+n-1 (slot 0 where absent). */
int lsvfs_ptable_get_range(const lsvfs_ptable *t, uint32_t first, size_t n,
                           lsvfs_location *out);
uint32_t lsvfs_ptable_max_pgno(const lsvfs_ptable *t);
/* Number of pgnos with an entry. */
uint32_t lsvfs_ptable_count(const lsvfs_ptable *t);
/* Bytes this table references (directory + chunks, shared or not). */
size_t lsvfs_ptable_memory(const lsvfs_ptable *t);
/* Bytes held by chunks only this table references. */
size_t lsvfs_ptable_unique_memory(const lsvfs_ptable *t);

#endif
