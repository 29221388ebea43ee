/* The on-disk format of keyval's write-ahead log. This file is its only definition.
 *
 * A log is a directory:
 *
 *   LOCK                                  flock(2)ed by the process that has the log open
 *   <segment id:016x>-<first seq:016x>.wal  segments, ids consecutive, seqs contiguous
 *   bounds                                the logical front, and a pending back-truncation
 *   next.prep                             a pre-written segment waiting to be used (optional)
 *   *.tmp                                 files being created; removed on open
 *
 * Segment: a file of exactly segment_size bytes, written full of zeros ahead of use, so that
 * appending never changes the file size and fdatasync has no metadata to flush. It starts with
 * a 64-byte header; records follow back to back; after the last record the file is zero.
 *
 *   off  size  segment header (all integers little-endian)
 *     0     8  magic "KVWALSEG"
 *     8     4  format version (1)
 *    12     4  header size (64); records start here
 *    16     8  segment id
 *    24     8  seq of the first record
 *    32     8  salt: random per segment, seeds every record CRC of this segment
 *    40     8  segment size when created
 *    48    12  reserved, zero
 *    60     4  CRC32C of bytes 0..59
 *
 *   off  size  record, 8-byte aligned; zero padding up to the next multiple of 8
 *     0     4  CRC32C of (salt, bytes 4..19, payload)
 *     4     4  payload length
 *     8     8  seq
 *    16     1  type (0..255, the caller's)
 *    17     1  flags: bit 0 = another record of the same append_many batch follows
 *    18     2  write index: how many records were appended between the last fdatasync
 *              that returned before this record's write to the file and this record (0 = the
 *              first written since; saturates at 65535; never more than the truth; 0 in logs
 *              written before the field existed, which recovery then reads as one write per
 *              record)
 *    20   len  payload
 *
 * A record is valid when its CRC matches, its seq is the one expected next, and it lies inside
 * the file. The CRC covers the header as well as the payload (a flipped length or seq is
 * caught), and the per-segment salt keeps a record copied from another segment from passing.
 *
 * Recovery (on open): records are read in order; a segment ends at the first all-zero record
 * header, or at the end of the file. The next segment must start with the seq that follows.
 * In the last segment, non-zero bytes after the last valid record are a torn tail (a write cut
 * short by a crash, never acknowledged) and are zeroed, unless a valid record with a later seq
 * lies among them. One such case is still a torn tail: the writes since the last fdatasync
 * (one buffer, or several: appends that fill the buffer, a batch bigger than it, sync
 * "interval" or "none") span several blocks of the file, and a power loss before the next
 * fdatasync returned may keep a later block and lose an earlier one, which reads as the zeros
 * the segment was filled with. So when the file is zero from the first bad record up to the
 * next 512-byte boundary at least, and every valid record after it was written before the
 * fdatasync that would have made the bad one durable (its seq minus its write index is at
 * most the bad record's seq), those writes' tail is cut. Anything else (a bad record followed by one written after the fdatasync that
 * covered it, a gap between segments, a bad header) is corruption, reported with the file and
 * offset and never skipped: such a record proves the bad one was written whole and synced, so
 * cutting there would drop acknowledged records. What no format can tell from a torn write:
 * the last writes of a log, synced, of which the disk later lost a block; they are cut as
 * torn, where SQLite, PostgreSQL and etcd cut everything after any bad record.
 * A batch is all or nothing: if the last valid record still says that another of its batch
 * follows, the batch never finished and is cut like a torn write (a batch that fits in a
 * segment is never split across two).
 *
 *   off  size  bounds file (replaced atomically: write bounds.tmp, fsync, rename, fsync dir)
 *     0     8  magic "KVWALBND"
 *     8     4  bounds format version (2; version 1, without `newest`, is still read)
 *    12     4  flags: bit 0 = a back-truncation is in progress
 *    16     8  front: records with seq < front are forgotten (truncate_front)
 *    24     8  cut: with flag bit 0, records with seq > cut are void (truncate_back)
 *    32     8  newest: the id of the newest segment known to exist (0: unknown)
 *    40     4  CRC32C of bytes 0..39 (version 1: of bytes 0..31, at offset 32; 36 bytes)
 *
 * truncate_back first records its intent here, then removes later segments (newest first),
 * zeroes the tail of the segment that keeps the cut, and clears the flag; a crash anywhere in
 * between is finished on the next open, so a truncated record never comes back.
 *
 * The bounds file is what shows a segment deleted from either end of the log, which no
 * segment can: each new segment is named (and the directory synced) before `newest` says it
 * exists, so segments up to `newest` must all be there, and the first must start no later
 * than `front`. A log opened for writing gets a bounds file if it has none (an older keyval's).
 */
#ifndef KEYVAL_FORMAT_H
#define KEYVAL_FORMAT_H

#include <stdint.h>
#include <string.h>

#define KV_SEG_MAGIC "KVWALSEG"
#define KV_BOUNDS_MAGIC "KVWALBND"
#define KV_FORMAT_VERSION 1u
#define KV_SEG_HEADER_SIZE 64u
#define KV_REC_HEADER_SIZE 20u
#define KV_REC_ALIGN 8u
#define KV_REC_CONTINUES 1u
#define KV_REC_WRITE_INDEX_MAX 0xFFFFu
#define KV_TORN_SECTOR 512u /* the smallest unit a power loss keeps or loses */
#define KV_BOUNDS_SIZE 44u
#define KV_BOUNDS_V1_SIZE 36u
#define KV_BOUNDS_VERSION 2u
#define KV_BOUNDS_CUT_PENDING 1u

#define KV_SEG_SUFFIX ".wal"
#define KV_PREP_NAME "next.prep"
#define KV_PREP_TMP_NAME "next.tmp"
#define KV_BOUNDS_NAME "bounds"
#define KV_BOUNDS_TMP_NAME "bounds.tmp"
#define KV_LOCK_NAME "LOCK"

#define KV_MIN_SEGMENT_SIZE 512u
#define KV_MAX_SEGMENT_SIZE (1u << 30)

static inline uint32_t kv_get32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline uint64_t kv_get64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static inline uint32_t kv_get16(const unsigned char *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}
static inline void kv_put32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void kv_put64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

/* Bytes a record of `len` payload bytes takes on disk, padding included. */
static inline uint64_t kv_record_size(uint64_t len)
{
    return (KV_REC_HEADER_SIZE + len + KV_REC_ALIGN - 1) & ~(uint64_t)(KV_REC_ALIGN - 1);
}

typedef struct {
    uint32_t version;
    uint32_t header_size;
    uint64_t id;
    uint64_t first_seq;
    uint64_t salt;
    uint64_t created_size;
} kv_seg_header;

typedef struct {
    uint32_t flags;
    uint64_t front;
    uint64_t cut;
    uint64_t newest;
} kv_bounds;

/* Header encode/decode and record framing (segment.c). */
void kv_seg_header_encode(unsigned char out[KV_SEG_HEADER_SIZE], const kv_seg_header *h);
/* 0 ok; 1 all zero (never written); -1 bad magic; -2 bad CRC; -3 unknown version;
 * -4 bad header size. */
int kv_seg_header_decode(const unsigned char *in, kv_seg_header *h);
void kv_record_header_encode(unsigned char out[KV_REC_HEADER_SIZE], uint64_t salt, uint64_t seq,
                             unsigned type, unsigned flags, unsigned write_index,
                             const void *payload, uint32_t len);
void kv_bounds_encode(unsigned char out[KV_BOUNDS_SIZE], const kv_bounds *b);
/* `in` holds the file's first `n` bytes. 0 ok; -1 bad magic; -2 bad CRC; -3 unknown version;
 * -4 too short for its version. */
int kv_bounds_decode(const unsigned char *in, size_t n, kv_bounds *b);

#endif
