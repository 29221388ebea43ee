/* Internals shared by the units of the WAL: io.c (system calls, fault injection), segment.c
 * (files and headers), decoder.c (reading and verifying), repair.c (deciding torn tail versus
 * corruption), encoder.c (buffered append, group commit, rotation), direct.c (synced writes
 * through O_DIRECT), prepare.c (segments written ahead of use) and wal.c (open, close,
 * truncation). */
#ifndef KEYVAL_WAL_INTERNAL_H
#define KEYVAL_WAL_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"
#include "wal.h"

/* ---- io.c ---------------------------------------------------------------------------- */
typedef struct {
    int op;
    int err_no;
    uint64_t after;
    uint64_t times; /* how many calls fail once the countdown is over */
    uint64_t writes, fsyncs, bytes_written; /* counters, updated atomically */
} kv_io;

/* All return 0 or an errno value. */
int kv_io_pwrite(kv_io *io, int fd, const void *buf, size_t len, uint64_t off);
int kv_io_pwritev2(kv_io *io, int fd, const void *a, size_t alen, const void *b, size_t blen,
                   uint64_t off);
int kv_io_fdatasync(kv_io *io, int fd);
int kv_io_fsync_dir(kv_io *io, int dirfd);
int kv_io_prepare_fault(kv_io *io); /* consulted when creating a segment file */

/* ---- segment.c ------------------------------------------------------------------------ */
typedef struct {
    uint64_t id;
    uint64_t first_seq;
    uint64_t salt;
    uint64_t count;        /* valid records */
    uint32_t *offs;        /* offset of each record */
    size_t offs_cap;
    uint64_t end;          /* offset just past the last record */
    uint64_t size;         /* file size = capacity */
    unsigned char *map;    /* read-only mapping of the whole file */
    int unusable;          /* header bad (check mode goes on past it) */
    char *path;
} kv_segment;

char *kv_path_join(const char *dir, const char *name);
char *kv_segment_name(uint64_t id, uint64_t first_seq);
/* 1 and fills id/first_seq when name is a segment file name. */
int kv_parse_segment_name(const char *name, uint64_t *id, uint64_t *first_seq);
uint64_t kv_random_salt(void);
int kv_segment_push_offset(kv_segment *s, uint32_t off);
void kv_segment_release(kv_segment *s);
/* Maps path read-only; 0 or errno. */
int kv_segment_map(kv_segment *s);

/* ---- error helpers (wal.c) --------------------------------------------------------------- */
void kv_set_error(kv_error *e, int code, int sys_errno, const char *path, int64_t offset,
                  const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* ---- the log ------------------------------------------------------------------------------ */
enum { KV_PREP_NONE = 0, KV_PREP_RUNNING = 1, KV_PREP_READY = 2, KV_PREP_FAILED = 3 };

struct kv_wal {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* io_busy cleared, preparation finished, closing */

    char *dir;
    int dirfd;
    int lockfd;
    int flags;
    int sync_mode;
    double sync_interval;
    uint64_t segment_size;

    kv_segment *segs; /* segs[nsegs-1] is the one being written */
    size_t nsegs, segs_cap;
    int cur_fd;       /* write descriptor of the last segment */

    uint64_t front;      /* first_seq: records below are forgotten */
    uint64_t newest_seg; /* what the bounds file says of the newest segment (format.h) */
    uint64_t next_seq;   /* seq the next append gets */
    uint64_t written_seq; /* records <= this are in the file (page cache) */
    uint64_t durable_seq; /* records <= this are on stable storage */

    /* Records appended but not yet written: buf holds the bytes destined for the current
     * segment at offset buf_off. The spare buffer is what the group-commit leader is writing. */
    unsigned char *buf, *spare;
    size_t buf_len, buf_cap;
    unsigned buf_records; /* records appended since the last fdatasync: the next one's index */
    uint64_t buf_off;
    int io_busy;
    int wake_pending; /* a group flush finished: broadcast cv once the mutex is released */
    /* Calls that may release the mutex midway count themselves in `active`; close sets
     * `stopping` (new calls get KV_ECLOSED), waits for active == 0, and only then flushes and
     * frees: a thread inside the log never wakes up to freed segments. */
    int active, stopping;
    int batching; /* a thread is placing an append_many batch: other appenders wait */
    int cutting;  /* truncate_back waits for the appenders inside; new ones wait for it */

    /* Adaptive group commit: a leader that saw several appenders during the last cycle waits
     * (at most one fsync's duration) for that many records before it syncs. */
    int appenders;        /* threads inside kv_wal_append / append_batch */
    int peak_appenders;   /* most seen at once since the current leader started */
    int leader_waiting;
    uint64_t gather_target; /* records pending that end the leader's wait */
    int *leader_taken; /* the waiting leader's flag: set when an appender takes its I/O */
    uint64_t last_sync_ns; /* how long the last write + fdatasync took */
    pthread_cond_t join_cv;

    int failed;        /* fail-stop: KV_EFAILED for every later write */
    kv_error fail_err; /* why */
    int closing;
    int fail_told;        /* a call returned the fail-stop error (else close() does) */
    int close_rc;         /* what kv_wal_close returned: a second close returns it too */
    kv_error close_err;
    kv_error last_err;

    /* The pre-written next segment (prepare.c). */
    int prep_state;
    int prep_errno;
    int prep_thread_live;
    pthread_t prep_thread;

    pthread_t ticker; /* KV_SYNC_INTERVAL */
    pthread_cond_t tick_cv; /* signalled only when closing, so the ticker keeps its period */
    int ticker_live;

    kv_io io;

    /* Synced writes through O_DIRECT (direct.c): the current segment's direct descriptor, its
     * state, an aligned staging buffer, and a copy of the last partly written block. */
    int dio_fd, dio_state;
    unsigned char *dio_buf, *dio_tail;
    size_t dio_cap;
    uint64_t dio_tail_block; /* the block dio_tail copies, or UINT64_MAX */
    uint64_t direct_writes;  /* counter, updated atomically */

    kv_error *findings;
    size_t nfindings, findings_cap;
    uint64_t torn_bytes;
    int64_t torn_offset;
};

/* Replaces the bounds file with {flags, front, cut} and w->newest_seg (format.h): 0 or errno.
 * The caller holds the mutex, and decides what a failure means (fail-stop, usually). */
int kv_write_bounds_locked(kv_wal *w, uint32_t flags, uint64_t front, uint64_t cut);


/* direct.c. kv_direct_write returns 0 (written), an errno value (the write failed: fail-stop,
 * as any write), or KV_DIRECT_NO: nothing was written, write it buffered. The caller owns the
 * I/O (io_busy); kv_direct_reset is called under the mutex with none in flight, whenever the
 * current segment's descriptor changes or its tail is rewritten by other means. */
#define KV_DIRECT_NO (-1)
void kv_direct_init(kv_wal *w);
void kv_direct_reset(kv_wal *w);
void kv_direct_forget_tail(kv_wal *w); /* after a buffered write to the current segment */
void kv_direct_free(kv_wal *w);
int kv_direct_write(kv_wal *w, int fd, const char *path, const unsigned char *data, size_t len,
                    uint64_t off, uint64_t file_size);

/* decoder.c */
typedef enum { KV_STOP_END = 0, KV_STOP_ZERO = 1, KV_STOP_BAD = 2 } kv_stop;
/* Reads the records of s from its header on, expecting `expected` first; fills offs/count/end.
 * Returns how the scan stopped: at the end of the file, at an all-zero header, or at a record
 * that is not valid (at s->end). */
kv_stop kv_scan_segment(kv_segment *s, uint64_t expected);
/* 1 when the record at off is valid for salt and seq `expected`. */
int kv_record_valid_at(const kv_segment *s, uint64_t off, uint64_t expected);

/* repair.c */
/* The offset of the first valid record with seq > after_seq that starts at or after `from`
 * in s, or -1. Used to tell a torn tail (nothing valid follows) from corruption. */
int64_t kv_find_later_record(const kv_segment *s, uint64_t from, uint64_t after_seq,
                             uint64_t *found_seq);
/* Whether the bad bytes at `from`, where seq `expected` belongs, are the tail of the writes
 * since an fdatasync that a power loss tore unevenly (see format.h): 1 when the file is zero
 * from there to the next sector boundary and every valid record after it was written before
 * the fdatasync that would have covered `expected`; -1 when a valid record written after
 * such an fdatasync follows (its seq and offset in *later_seq, *later_off); 0 when the bad
 * bytes are not what a lost block leaves. */
int kv_torn_write(const kv_segment *s, uint64_t from, uint64_t expected, uint64_t *later_seq,
                  uint64_t *later_off);
/* Zeroes s from `from` to the last non-zero byte so that the next append starts clean; 0 or
 * errno. */
int kv_cut_tail(kv_wal *w, kv_segment *s, int fd, uint64_t from, uint64_t *cut_bytes);
/* truncate_back may cut inside a batch: the record it keeps last (the count-th) must then stop
 * saying that more of its batch follows, or the next open would cut it as unfinished. Rewrites
 * its header (through fd, or its own descriptor when fd < 0) and syncs; 0 or errno. */
int kv_clear_continues(kv_wal *w, kv_segment *s, uint64_t count, int fd);

/* encoder.c */
/* Writes the buffer and, with sync, fdatasyncs until every record <= target is durable.
 * `group`: the caller is a durable appender, so the leader may wait for others to join. */
int kv_flush_locked(kv_wal *w, int sync, uint64_t target, int group);
#define KV_GROUP_OWNER 2 /* group value: the caller already owns io_busy (see joined_locked) */
void kv_fail_locked(kv_wal *w, int sys_errno, const char *path, const char *what);

/* wal.c: entering and leaving a call that may release the mutex (see `active`). */
int kv_enter_locked(kv_wal *w);
/* Locks the mutex and enters (kv_enter_locked); on refusal unlocks again and returns the code,
 * so a call starts with `if ((rc = kv_lock_enter(w))) return rc;`. */
int kv_lock_enter(kv_wal *w);
void kv_leave_locked(kv_wal *w);

/* prepare.c */
void kv_prepare_start_locked(kv_wal *w);
/* Waits for / performs the preparation; 0 when next.prep is ready, else errno. */
int kv_prepare_wait_locked(kv_wal *w);
void kv_prepare_join(kv_wal *w);
/* Turns next.prep into segment `id` starting at first_seq and appends it to w->segs. */
int kv_activate_prepared_locked(kv_wal *w, uint64_t id, uint64_t first_seq);

/* wal.c */
void kv_add_finding(kv_wal *w, int code, const char *path, int64_t offset, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#endif
