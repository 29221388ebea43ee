/* keyval's write-ahead log: the public C API (bound to Python by keyval/_wal_build.py).
 *
 * Every function is thread-safe: a kv_wal has one mutex, and I/O runs outside it where that
 * matters (group commit). Functions returning int return 0 or a negative KV_E* code; those
 * returning int64_t return a sequence number (>= 1) or a negative code. After a failure,
 * kv_wal_last_error tells the details (file, offset, errno, message).
 *
 * Durability: with KV_SYNC_ALWAYS, kv_wal_append returns once the record is on stable storage;
 * appenders on several threads share one fdatasync. With KV_SYNC_INTERVAL, a background thread
 * syncs every sync_interval seconds. With KV_SYNC_NONE, records are durable after kv_wal_sync or
 * kv_wal_close. A failed write or fdatasync makes the log fail-stop: every later write returns
 * KV_EFAILED (retrying an fsync after a failure can report success for data that was lost).
 */
#ifndef KEYVAL_WAL_H
#define KEYVAL_WAL_H

#include <stddef.h>
#include <stdint.h>

typedef struct kv_wal kv_wal;

enum {
    KV_OK = 0,
    KV_EIO = 1,       /* an OS call failed: sys_errno says why */
    KV_ECORRUPT = 2,  /* stored bytes are bad: path and offset say where */
    KV_EFAILED = 3,   /* an earlier write/fsync failed; the log is fail-stop (read-only) */
    KV_ECLOSED = 4,   /* the log is closed */
    KV_ETOOBIG = 5,   /* the record cannot fit in one segment */
    KV_EINVAL = 6,    /* a bad argument */
    KV_ERANGE = 7,    /* a sequence number outside the log */
    KV_EBUSY = 8,     /* another process holds the log's lock */
    KV_ENOTWAL = 9,   /* the directory holds files that are not a keyval WAL's */
    KV_EVERSION = 10, /* written by a newer format version */
    KV_ESPACE = 11,   /* the caller's buffer is too small; *used says how much is needed */
    KV_ETORN = 12     /* a finding that opening the log repairs (torn tail, interrupted cut) */
};

enum { KV_SYNC_NONE = 0, KV_SYNC_ALWAYS = 1, KV_SYNC_INTERVAL = 2 };

/* Open flags. KV_OPEN_CHECK: verify only (fsck): write nothing, repair nothing, collect every
 * problem as a finding instead of failing at the first. */
enum { KV_OPEN_CHECK = 1 };

/* Fault injection, for tests: after `after` more successful calls of `op`, the next `times`
 * calls fail with `err_no`. */
enum { KV_FAULT_NONE = 0, KV_FAULT_WRITE = 1, KV_FAULT_FSYNC = 2, KV_FAULT_PREPARE = 3 };

typedef struct {
    int code;
    int sys_errno;
    int64_t offset; /* -1 when not about one place in a file */
    char path[1024];
    char msg[512];
} kv_error;

typedef struct {
    uint64_t segment_size;
    int sync_mode;
    double sync_interval; /* seconds, KV_SYNC_INTERVAL only */
    uint64_t buffer_size;
    int flags;
} kv_options;

typedef struct {
    uint64_t segments;
    uint64_t first_seq, last_seq, next_seq;
    uint64_t durable_seq;
    uint64_t bytes;         /* record bytes in all segments, padding included */
    uint64_t writes, fsyncs, bytes_written;
    uint64_t torn_bytes;    /* bytes cut off as a torn tail when the log was opened */
    int64_t torn_offset;    /* where, in the last segment; -1 if none */
    uint64_t direct_writes; /* writes done through O_DIRECT (direct.c) */
    int prepared;           /* 1 when a pre-written segment is ready for the next rotation */
    int failed;             /* 1 when fail-stop */
} kv_stats;

typedef struct {
    uint64_t id, first_seq, count, bytes, file_size;
    char path[1024];
} kv_segment_info;

kv_wal *kv_wal_open(const char *dir, const kv_options *opt, kv_error *err);
/* Flushes, syncs and releases files, threads and memory; w stays valid (every later call
 * returns KV_ECLOSED) until kv_wal_free, so a thread racing with close never touches freed
 * memory. kv_wal_free closes first if needed. */
int kv_wal_close(kv_wal *w, kv_error *err);
void kv_wal_free(kv_wal *w);

int64_t kv_wal_append(kv_wal *w, unsigned type, const char *data, size_t len);
/* n records, payloads concatenated in data, lengths in lens; each of type `type`, or types[i]
 * when types is not NULL. Returns the first seq. */
int64_t kv_wal_append_batch(kv_wal *w, unsigned type, const uint8_t *types, const char *data,
                            const uint32_t *lens, size_t n);
int kv_wal_sync(kv_wal *w);

uint64_t kv_wal_first_seq(kv_wal *w);
uint64_t kv_wal_last_seq(kv_wal *w);
uint64_t kv_wal_next_seq(kv_wal *w);

/* Copies records start, start+1, ... (at most max_records) into out as
 *   u64 seq | u32 len | u8 type | 3 zero bytes | payload | zero padding to 8
 * and stops before the first that does not fit. *n_records and *used tell what was copied;
 * KV_ESPACE with *used = the size needed when not even the first record fits. */
int kv_wal_read_batch(kv_wal *w, uint64_t start, size_t max_records, char *out, size_t cap,
                      size_t *n_records, size_t *used);

int kv_wal_truncate_front(kv_wal *w, uint64_t seq);
int kv_wal_truncate_back(kv_wal *w, uint64_t seq);

void kv_wal_last_error(kv_wal *w, kv_error *err);
void kv_wal_stats(kv_wal *w, kv_stats *st);
size_t kv_wal_segment_count(kv_wal *w);
int kv_wal_segment_info(kv_wal *w, size_t i, kv_segment_info *info);
/* Problems found by a KV_OPEN_CHECK open (or the torn tail a normal open cut). */
size_t kv_wal_finding_count(kv_wal *w);
int kv_wal_finding(kv_wal *w, size_t i, kv_error *out);

int kv_wal_inject_fault(kv_wal *w, int op, int err_no, uint64_t after, uint64_t times);

#endif
