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

/* Marks a function Python implements (cffi extern "Python+C"). */
#ifndef LSVFS_PYTHON
#define LSVFS_PYTHON extern
#endif

/* ---- the LTX format (version 3) ---------------------------------------- */
/* The one home of these facts: C uses them, Python reads them through the
 * cdef (lsvfs.core). */
#define LSVFS_LTX_HEADER_SIZE 100
#define LSVFS_LTX_TRAILER_SIZE 16
#define LSVFS_LTX_PAGE_HEADER_SIZE 6   /* pgno u32 + flags u16 */
#define LSVFS_LTX_FRAME_PREFIX 10      /* page header + u32 compressed size */
#define LSVFS_LTX_FLAG_NO_CHECKSUM 2   /* the only valid header flag */
#define LSVFS_LTX_FRAME_FLAG_LZ4_BLOCK 1
#define LSVFS_MIN_PAGE_SIZE 512
#define LSVFS_MAX_PAGE_SIZE 65536

/* 1 if n is a page size SQLite and LTX allow: a power of two, 512..65536. */
int lsvfs_valid_page_size(uint32_t n);

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
/* The run a miss on `pgno` reads in one request: its frame, then the frames
 * of up to max - 1 following pages lying right after it in the same file
 * (cached or not: one ranged read is cheaper than a cut). Entries go to
 * out (room for max), the file to *slot; returns the count, 0 if pgno has
 * no frame. */
size_t lsvfs_ptable_run(const lsvfs_ptable *t, uint32_t pgno, uint32_t max,
                        uint32_t *slot, lsvfs_index_entry *out);
uint32_t lsvfs_ptable_max_pgno(const lsvfs_ptable *t);
/* Number of pgnos with an entry. */
uint32_t lsvfs_ptable_count(const lsvfs_ptable *t);
/* Bytes this table references (directory + chunks, shared or not). */
size_t lsvfs_ptable_memory(const lsvfs_ptable *t);
/* Bytes held by chunks only this table references. */
size_t lsvfs_ptable_unique_memory(const lsvfs_ptable *t);

/* ---- page cache ------------------------------------------------------ */
/* Decoded pages keyed by frame location (file slot, frame offset): LTX
 * files never change, so an entry is valid forever and is only ever
 * evicted, never invalidated. Bounded by bytes; sharded by key so many
 * readers copy pages out at once. Every function is thread-safe. */
typedef struct lsvfs_cache lsvfs_cache;

typedef struct {
    uint64_t hits;
    uint64_t misses;
    uint64_t evictions;
    uint64_t bytes;   /* page bytes held now */
    uint64_t entries; /* pages held now */
    uint64_t max_bytes;
} lsvfs_cache_stats;

lsvfs_cache *lsvfs_cache_new(size_t max_bytes);
void lsvfs_cache_free(lsvfs_cache *c);
/* Copy the page at (slot, offset) into out if it is held with exactly len
 * bytes: 1 on a hit, 0 on a miss. `count` adds a hit to the stats; a miss
 * is counted by whoever then loads the page (lsvfs_cache_count_miss), so a
 * page many readers wait for is one miss. */
int lsvfs_cache_get(lsvfs_cache *c, uint32_t slot, uint64_t offset,
                    uint8_t *out, size_t len, int count);
int lsvfs_cache_contains(lsvfs_cache *c, uint32_t slot, uint64_t offset);
/* Insert (or keep) a page, evicting from the cold end to stay within
 * budget; a page larger than a shard's budget is not kept. A page put
 * (like a page asked for alone) goes to the hot end: plain LRU. */
int lsvfs_cache_put(lsvfs_cache *c, uint32_t slot, uint64_t offset,
                    const uint8_t *page, size_t len);
void lsvfs_cache_count_miss(lsvfs_cache *c, uint32_t slot, uint64_t offset);
/* A miss's read, decoded straight into the cache: `buf` holds the file
 * bytes [buf_offset, buf_offset + buf_len) of slot `slot`, `entries` the
 * run's frames (lsvfs_ptable_run). The first page is always decoded (or
 * copied from the cache) to `first` (page_size bytes); a page already
 * cached is not decoded again. `asked` is 1 when a reader asked for the
 * first page now (then a run of more than one page is a sequential read:
 * that page is kept at the cold end, the others until they are read), 0
 * when nobody did yet (read-ahead, prefetch): see cache.c on scans. On
 * error `*failed` is the failing entry's index; the pages before it stay
 * cached (they passed their checks). */
#define LSVFS_FILL_AHEAD 0
#define LSVFS_FILL_ASKED 1
int lsvfs_cache_fill(lsvfs_cache *c, uint32_t slot, const uint8_t *buf,
                     size_t buf_len, uint64_t buf_offset,
                     const lsvfs_index_entry *entries, size_t n,
                     uint32_t page_size, uint8_t *first, int asked,
                     size_t *failed);
void lsvfs_cache_get_stats(lsvfs_cache *c, lsvfs_cache_stats *out);
/* Drop every page (stats other than bytes and entries stay). */
void lsvfs_cache_clear(lsvfs_cache *c);

/* ---- replicas and snapshots ------------------------------------------ */
/* A replica is the C half of one Python Replica: the newest snapshot and
 * the page cache, shared by every connection. A snapshot is the database
 * at one TXID: immutable, reference counted, with its own page table.
 * Python creates a snapshot holding one reference and hands that reference
 * on (publish, lsvfs_file_choose); when the last reference goes, the
 * snapshot's id is queued for lsvfs_replica_drain_freed, so Python can let
 * go of what it kept for that snapshot without ever being called back. */
typedef struct lsvfs_replica lsvfs_replica;
typedef struct lsvfs_snapshot lsvfs_snapshot;

typedef struct {
    uint64_t id; /* Python's name for the snapshot */
    uint64_t txid;
    int64_t timestamp_ms;
    uint32_t commit; /* database size in pages */
    uint32_t page_size;
    uint32_t lineage; /* the replica's lineage the TXID belongs to */
} lsvfs_snapshot_info;

/* One reference, the owner's; readahead = most pages asked per miss. */
lsvfs_replica *lsvfs_replica_new(size_t cache_bytes, uint32_t readahead);
/* The owner lets go: no newest snapshot any more (open files keep theirs);
 * the memory goes with the last file and snapshot. */
void lsvfs_replica_close(lsvfs_replica *r);
lsvfs_cache *lsvfs_replica_cache(lsvfs_replica *r);
/* A snapshot over a private clone of `table`, holding one reference. */
lsvfs_snapshot *lsvfs_snapshot_new(lsvfs_replica *r, const lsvfs_ptable *table,
                                   const lsvfs_snapshot_info *info);
void lsvfs_snapshot_retain(lsvfs_snapshot *s);
void lsvfs_snapshot_release(lsvfs_snapshot *s);
void lsvfs_snapshot_get_info(const lsvfs_snapshot *s, lsvfs_snapshot_info *out);
/* Make `s` the newest snapshot, taking over the caller's reference. */
void lsvfs_replica_publish(lsvfs_replica *r, lsvfs_snapshot *s);
/* The newest snapshot with a reference for the caller (NULL before any). */
lsvfs_snapshot *lsvfs_replica_current(lsvfs_replica *r);
/* Files of a directory replica that C may read itself on a miss, without
 * Python: slot -> path. A slot is forgotten only when no snapshot can
 * point into it any more, so no read is in flight on its descriptor. */
int lsvfs_replica_set_local(lsvfs_replica *r, uint32_t slot, const char *path);
void lsvfs_replica_forget_local(lsvfs_replica *r, uint32_t slot);
/* The replica was replaced by another lineage (numbered from 0, as Python
 * numbers them): from now on a snapshot of an earlier lineage is served
 * only from the cache or by Python, never by its file's copy of page 1,
 * the hydration file or a local path (which may hold the new lineage). */
void lsvfs_replica_new_lineage(lsvfs_replica *r);
uint32_t lsvfs_replica_lineage(lsvfs_replica *r);
/* Reads C made itself, and their bytes. */
void lsvfs_replica_local_reads(lsvfs_replica *r, uint64_t *reads, uint64_t *bytes);
/* A miss served in C from a local file: the run of `pgno` (as
 * lsvfs_ptable_run) read and decoded into the cache, page `pgno` to out.
 * LSVFS_ENOTFOUND when the file is not local or cannot be opened, another
 * error when the read or a frame fails: either way the caller asks Python,
 * which retries, rebuilds, and reports. */
int lsvfs_replica_read_local(lsvfs_replica *r, const lsvfs_ptable *t,
                             uint32_t pgno, uint32_t readahead,
                             uint32_t page_size, uint8_t *out);
/* Ids of snapshots freed since the last call (at most cap; the rest stay). */
size_t lsvfs_replica_drain_freed(lsvfs_replica *r, uint64_t *ids, size_t cap);
/* Snapshots alive now (tests: nothing leaks). */
size_t lsvfs_replica_live_snapshots(lsvfs_replica *r);

/* ---- hydration ------------------------------------------------------- */
/* A local file holding the database, filled in the background. Each page
 * written is tagged with the frame location (slot, offset) it was decoded
 * from, and a snapshot is served a page from the file only when its own
 * table points at that same frame: a pinned snapshot the file has moved
 * past reads those pages from the cache or storage instead. Thread-safe:
 * reads share a lock, writes hold it alone. */
typedef struct lsvfs_hydration lsvfs_hydration;
/* Open (creating, mode 0600) `path` for pages of `page_size` bytes; the
 * tags start empty whatever the file holds. */
int lsvfs_hydration_open(const char *path, uint32_t page_size,
                         lsvfs_hydration **out);
/* Only for a hydration never attached to a replica (which frees its own). */
void lsvfs_hydration_free(lsvfs_hydration *h);
/* Decode the frames `entries` from `buf` (file bytes [buf_offset,
 * buf_offset + buf_len) of slot `slot`) and write each page at its place,
 * tagged (slot, frame offset). The bytes a page held from another frame go
 * to `keep` (may be NULL) under that frame's location, so a snapshot still
 * pinned on it is served from the cache. A bad frame writes nothing;
 * `*failed` is its index. */
int lsvfs_hydration_fill(lsvfs_hydration *h, uint32_t slot, const uint8_t *buf,
                         size_t buf_len, uint64_t buf_offset,
                         const lsvfs_index_entry *entries, size_t n,
                         lsvfs_cache *keep, size_t *failed);
/* Page `pgno` into out (page_size bytes) if the file holds it from frame
 * (slot, offset): 1 if served, 0 if not, negative if the read failed. */
int lsvfs_hydration_read(lsvfs_hydration *h, uint32_t pgno, uint32_t slot,
                         uint64_t offset, uint8_t *out);
/* Pages of `t` among *next..commit that the file does not hold from t's
 * frames (the lock page excluded): at most cap pgnos to out (out may be
 * NULL to count them), the count returned, *next moved past the last page
 * looked at. */
size_t lsvfs_hydration_missing(lsvfs_hydration *h, const lsvfs_ptable *t,
                               uint32_t commit, uint32_t *next, uint32_t *out,
                               size_t cap);
/* The file already holds pages 1..commit as `t` describes them, except the
 * pages `changed` (may be NULL) has entries for: tag them (a restart's
 * resume, after lsvfs_hydration_verify). */
int lsvfs_hydration_adopt(lsvfs_hydration *h, const lsvfs_ptable *t,
                          uint32_t commit, const lsvfs_ptable *changed);
/* Drop the tags into `slot`: its file is gone and the number may be reused. */
void lsvfs_hydration_forget(lsvfs_hydration *h, uint32_t slot);
/* Empty the file and every tag (a rebuild from scratch). */
int lsvfs_hydration_reset(lsvfs_hydration *h);
/* The file is complete at `commit` pages: cut it there, flush it to disk,
 * and give the database checksum of pages 1..commit in LTX post-apply form
 * (XOR of page checksums, flag set). */
int lsvfs_hydration_sync(lsvfs_hydration *h, uint32_t commit,
                         uint64_t *checksum);
/* Read pages 1..commit back from the file and give their database
 * checksum (as lsvfs_hydration_sync): how a restart checks what it found.
 * LSVFS_ETRUNCATED if the file is shorter. */
int lsvfs_hydration_verify(lsvfs_hydration *h, uint32_t commit,
                           uint64_t *checksum);
/* Pages tagged now. */
uint32_t lsvfs_hydration_pages(lsvfs_hydration *h);
/* Serve `r`'s reads from `h` too, from now on; `r` owns `h` from here and
 * frees it with itself. Once per replica: LSVFS_ERANGE if it has one. */
int lsvfs_replica_set_hydration(lsvfs_replica *r, lsvfs_hydration *h);
/* ---- shared pages (hydration for a shared_dir) ------------------------ */
/* One hydration file for every process of a shared directory: the leader
 * writes pages, every process reads them. Each page is tagged with the file
 * its frame was decoded from, as (max TXID, key): the key is a nonzero
 * 64-bit name the caller gives the file's bytes. A process tells each
 * slot's (txid, key) with lsvfs_shared_pages_set_version and is served a
 * page only when the tag is its frame's file. Tags are in a mapped file
 * under a per-page seqlock; the header names the boot they were written in
 * (a tag file from before a reboot is cleared: its pages may not have
 * reached the disk). */
#define LSVFS_BOOT_ID_SIZE 16
typedef struct lsvfs_shared_pages lsvfs_shared_pages;
/* Open (creating, mode 0600) the page and tag files. A writer (the leader;
 * one process at a time) sets up the header and clears what is not of this
 * boot or was left half-written; a reader serves nothing until
 * lsvfs_shared_pages_refresh finds a header a writer set up. */
int lsvfs_shared_pages_open(const char *pages_path, const char *tags_path,
                            uint32_t page_size, const uint8_t *boot, int writer,
                            lsvfs_shared_pages **out);
/* Only for shared pages never attached to a replica (which frees its own). */
void lsvfs_shared_pages_free(lsvfs_shared_pages *sp);
/* Map the tag file as it is now (it grows as the writer writes larger
 * pages): LSVFS_ENOTFOUND while no writer set it up for this boot. */
int lsvfs_shared_pages_refresh(lsvfs_shared_pages *sp);
/* The writer: decode the frames `entries` from `buf` (file bytes
 * [buf_offset, buf_offset + buf_len)) of the file (txid, key), and write
 * each page tagged so (a page already tagged so is skipped). On error
 * `*failed` is the failing entry's index (n when a write failed:
 * LSVFS_ESIZE); the pages before it stand. */
int lsvfs_shared_pages_fill(lsvfs_shared_pages *sp, uint64_t txid, uint64_t key,
                            const uint8_t *buf, size_t buf_len, uint64_t buf_offset,
                            const lsvfs_index_entry *entries, size_t n, size_t *failed);
/* Page `pgno` (page_size bytes) into out if the file holds it from the
 * file of `slot`: 1 if served, 0 if not. */
int lsvfs_shared_pages_read(lsvfs_shared_pages *sp, uint32_t pgno, uint32_t slot,
                            uint32_t page_size, uint8_t *out);
/* The file of `slot` is (txid, key); key 0: never served from the file. */
int lsvfs_shared_pages_set_version(lsvfs_shared_pages *sp, uint32_t slot, uint64_t txid,
                                   uint64_t key);
void lsvfs_shared_pages_forget(lsvfs_shared_pages *sp, uint32_t slot);
/* Pages of `t` among *next..commit the file does not hold as `t` reads them
 * (the lock page excluded): as lsvfs_hydration_missing. */
size_t lsvfs_shared_pages_missing(lsvfs_shared_pages *sp, const lsvfs_ptable *t,
                                  uint32_t commit, uint32_t *next, uint32_t *out, size_t cap);
/* The TXID the writer last held whole, as it recorded it (0 before any);
 * LSVFS_ENOTFOUND while the tag file is not set up. */
int lsvfs_shared_pages_applied(lsvfs_shared_pages *sp, uint64_t *txid);
int lsvfs_shared_pages_set_applied(lsvfs_shared_pages *sp, uint64_t txid);
/* Serve `r`'s reads from `sp` too (before its cache); `r` owns `sp` from
 * here. Once per replica: LSVFS_ERANGE if it has one. */
int lsvfs_replica_set_shared_pages(lsvfs_replica *r, lsvfs_shared_pages *sp);
/* ---- the VFS ---------------------------------------------------------- */
/* A `sqlite3_vfs` whose main databases are replicas; every other file
 * (temp databases, statement journals, ...) goes to that SQLite's default
 * VFS. One registration per SQLite library: the functions it calls are the
 * ones of that library (an extension's api routines, or a shared library's
 * symbols), never whichever `sqlite3_*` the linker found. */
typedef struct lsvfs_vfs lsvfs_vfs;
typedef struct lsvfs_file lsvfs_file;

/* SQLite functions a registration calls, in this order in `fns`. */
#define LSVFS_FN_VFS_FIND 0
#define LSVFS_FN_VFS_REGISTER 1
#define LSVFS_FN_URI_KEY 2
#define LSVFS_FN_URI_PARAMETER 3
#define LSVFS_FN_MPRINTF 4
#define LSVFS_FN_FREE 5
#define LSVFS_FN_AUTO_EXTENSION 6
#define LSVFS_FN_COUNT 7

/* Fill fns from the api routines handed to this library's extension entry
 * point (sqlite3_lsvfs_init) by its last load: 1 if it was loaded. */
int lsvfs_extension_fns(void *fns[]);
/* Register a VFS named `name` in the SQLite that `fns` belong to, and the
 * Go VFS's SQL functions (LSVFS_SQL_FUNCTION in lsvfs_names) on every
 * connection of that SQLite whose main database is a replica (an auto-extension that leaves
 * other connections alone). `ctx` is handed back to lsvfs_py_open. On
 * failure: NULL, reason in err. */
lsvfs_vfs *lsvfs_vfs_register(const char *name, void *const fns[],
                              void *ctx, char *err, size_t errcap);
/* After this, no callback enters Python (interpreter shutdown): reads that
 * miss the cache fail, closes free only the C side. */
void lsvfs_python_gone(void);

/* Called by Python inside lsvfs_py_open: the file serves `r` (one reference
 * taken), and `handle` is passed to every later callback of this file. */
void lsvfs_file_attach(lsvfs_file *f, lsvfs_replica *r, void *handle);
/* Serve `s` (NULL: the newest) from the next read transaction on; takes
 * over the caller's reference. */
void lsvfs_file_choose(lsvfs_file *f, lsvfs_snapshot *s);
/* A read-your-writes floor: from the next read transaction on, read a
 * snapshot of lineage `lineage` at TXID `txid` or later, asking Python to
 * wait for one (lsvfs_py_wait); txid 0 clears it. A chosen snapshot (a pin)
 * wins over the floor. */
void lsvfs_file_set_floor(lsvfs_file *f, uint64_t txid, uint32_t lineage);
/* What the file would read now: pinned, else chosen, else the newest. */
int lsvfs_file_snapshot_info(lsvfs_file *f, lsvfs_snapshot_info *out);
/* The snapshot pinned from SHARED to NONE: LSVFS_ENOTFOUND when none. */
int lsvfs_file_pinned_info(lsvfs_file *f, lsvfs_snapshot_info *out);
/* The PRAGMA result to hand SQLite (copied); NULL for none. */
int lsvfs_file_set_result(lsvfs_file *f, const char *text);
/* The last error of this file: set by C or by Python callbacks. */
void lsvfs_file_set_error(lsvfs_file *f, const char *text);
const char *lsvfs_file_error(lsvfs_file *f);

/* The replica's PRAGMAs and the Go VFS's SQL functions: the one list of
 * their names. C adds the functions from it; Python checks and answers the
 * PRAGMAs by it, and the shell and the CLI describe them from it. A function
 * answers exactly like its PRAGMA: litestream_txid() is PRAGMA
 * litestream_txid, litestream_set_time(x) is PRAGMA litestream_time = x. */
#define LSVFS_PRAGMA 1          /* read-only: `PRAGMA name` */
#define LSVFS_PRAGMA_SETTABLE 2 /* also `PRAGMA name = value` */
#define LSVFS_SQL_FUNCTION 3
typedef struct {
    const char *name;
    int kind;            /* LSVFS_PRAGMA, LSVFS_PRAGMA_SETTABLE or LSVFS_SQL_FUNCTION */
    int nargs;           /* a function's argument count (0 or 1: the value set) */
    int integer;         /* a function's result is an integer, not text */
    const char *pragma;  /* a function: the PRAGMA it answers as */
    const char *value;   /* a settable PRAGMA: what it takes; else NULL */
    const char *help;    /* what it does, in a few words */
} lsvfs_name;
/* The table and its length (static: never freed). */
size_t lsvfs_names(const lsvfs_name **out);

/* Direct access to a main-database file's methods, bypassing SQLite: the
 * same code SQLite calls (for tests and fuzzing). `params` holds URI
 * key/value pairs as NUL-terminated strings, ending with an empty key.
 * Return codes are SQLite's. */
int lsvfs_file_open(lsvfs_vfs *v, const char *params, size_t params_len,
                    lsvfs_file **out);
/* Close and free a file from lsvfs_file_open. */
int lsvfs_file_close(lsvfs_file *f);
int lsvfs_file_read(lsvfs_file *f, void *buf, int amount, int64_t offset);
int lsvfs_file_lock(lsvfs_file *f, int level);
int lsvfs_file_unlock(lsvfs_file *f, int level);
int lsvfs_file_lock_level(lsvfs_file *f);
int lsvfs_file_check_reserved(lsvfs_file *f, int *out);
int lsvfs_file_size(lsvfs_file *f, int64_t *out);
int lsvfs_file_pragma(lsvfs_file *f, const char *name, const char *value,
                      char **result);
void lsvfs_free_result(lsvfs_file *f, char *result);

/* ---- callbacks into Python (cffi extern "Python") ---------------------- */
/* The only places C enters Python; no C lock is held across any of them.
 * Each returns a SQLite result code. */
LSVFS_PYTHON int lsvfs_py_open(void *ctx, const char *params, size_t params_len,
                               lsvfs_file *f);
/* A cache miss: write page `pgno` of `s` (len bytes) into out, and cache
 * it and up to readahead - 1 following pages. */
LSVFS_PYTHON int lsvfs_py_fetch(void *handle, lsvfs_file *f, lsvfs_snapshot *s,
                                uint32_t pgno, uint32_t readahead, uint8_t *out,
                                uint32_t len);
/* A litestream_* PRAGMA: result through lsvfs_file_set_result. */
LSVFS_PYTHON int lsvfs_py_pragma(void *handle, lsvfs_file *f, const char *name,
                                 const char *value);
/* A read transaction would start below the file's floor: wait for the
 * replica to reach it. SQLITE_OK to look again; else the code the lock
 * fails with (the reason set with lsvfs_file_set_error). */
LSVFS_PYTHON int lsvfs_py_wait(void *handle, lsvfs_file *f, uint64_t txid,
                               uint32_t lineage);
/* An error found in C (a page in no file): log it. */
LSVFS_PYTHON void lsvfs_py_error(void *handle, int rc, const char *message);
LSVFS_PYTHON void lsvfs_py_close(void *handle);

#endif
