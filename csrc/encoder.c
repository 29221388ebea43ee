/* The write path: framing records into a user-space buffer, writing and syncing it with group
 * commit, and rotating to the next segment.
 *
 * Group commit: an appender that needs its record durable either finds an fdatasync already
 * running (it waits, and returns if that covered its record) or becomes the leader: it takes
 * the whole buffer (swapping in the spare one, so other threads keep appending meanwhile),
 * writes and syncs it outside the mutex, and wakes everyone. One fdatasync thus covers every
 * record appended before it started. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "wal_internal.h"

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The leader of a group commit waits here, with io_busy set, for the appenders it expects:
 * as many records pending as there were appenders in the last cycle, or one fsync's time.
 * Without this, followers woken by the last fsync come back after the next one has started
 * (waking threads is slower than an fsync on a fast disk) and batches stay at one or two.
 * The appender that completes the group does not wake the leader: it takes over the I/O
 * itself (see joined_locked), which saves the leader's wake-up (~12 us measured) per cycle.
 * Returns 1 when that happened: the leader is then an ordinary waiter. */
static int gather_followers_locked(kv_wal *w, int expected)
{
    uint64_t wait = w->last_sync_ns < 1000000u ? w->last_sync_ns : 1000000u;
    if (expected <= 1 || wait == 0)
        return 0;
    uint64_t deadline = now_ns() + wait;
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline / 1000000000u);
    ts.tv_nsec = (long)(deadline % 1000000000u);
    /* On this stack: a flag in w could be reset by a later gather before this leader wakes
     * to read it, and two threads would then write the buffer at once. */
    int taken = 0;
    w->leader_taken = &taken;
    w->gather_target = (uint64_t)expected;
    w->leader_waiting = 1;
    while (!taken && w->next_seq - 1 - w->durable_seq < (uint64_t)expected && !w->closing &&
           pthread_cond_timedwait(&w->join_cv, &w->mu, &ts) == 0)
        ;
    if (taken)
        return 1;
    w->leader_waiting = 0;
    w->leader_taken = NULL;
    return 0;
}

void kv_fail_locked(kv_wal *w, int sys_errno, const char *path, const char *what)
{
    if (!w->failed) {
        w->failed = 1;
        w->fail_told = 1; /* the call that failed returns the error (but see ticker_main) */
        kv_set_error(&w->fail_err, KV_EFAILED, sys_errno, path, -1,
                     "%s failed (%s); the log is read-only until it is reopened", what,
                     strerror(sys_errno));
    }
    pthread_cond_broadcast(&w->cv);
    pthread_cond_broadcast(&w->join_cv); /* a leader whose I/O was taken over waits there */
}

/* A group-commit leader does not wake the appenders its fsync covered while it holds the
 * mutex: on two CPUs the woken threads preempt it and queue on the mutex it holds, a convoy
 * that cost ~30 us per cycle (measured) before the first of them could append again. It sets
 * wake_pending instead, and unlock_and_wake broadcasts after unlocking. */
static void wake_now_locked(kv_wal *w)
{
    if (w->wake_pending) {
        w->wake_pending = 0;
        pthread_cond_broadcast(&w->cv);
        pthread_cond_broadcast(&w->join_cv);
    }
}

static void unlock_and_wake(kv_wal *w)
{
    int wake = w->wake_pending;
    w->wake_pending = 0;
    pthread_mutex_unlock(&w->mu);
    if (wake) {
        pthread_cond_broadcast(&w->cv);
        /* A leader whose I/O an appender took over still waits on join_cv. */
        pthread_cond_broadcast(&w->join_cv);
    }
}

static int failed_locked(kv_wal *w)
{
    w->last_err = w->fail_err;
    w->fail_told = 1;
    return -KV_EFAILED;
}

int kv_flush_locked(kv_wal *w, int sync, uint64_t target, int group)
{
    /* KV_GROUP_OWNER: joined_locked handed this appender the gathering leader's io_busy. */
    int owner = group == KV_GROUP_OWNER;
    for (;;) {
        if (owner && w->failed) {
            w->io_busy = 0;
            pthread_cond_broadcast(&w->cv);
        }
        if (w->failed)
            return failed_locked(w);
        if (owner)
            goto write;
        /* A truncate_back (while the mutex was free) may have cut records up to target: none
         * of an appender's (it waits for the appenders), but sync() may have been waiting for
         * them. What is left is what there is to make durable. */
        if (sync && target >= w->next_seq)
            target = w->next_seq - 1;
        /* Checked before waiting for the leader: an appender whose record a finished fsync
         * covered returns at once, even while the next leader is busy (or gathering). */
        if (sync && w->durable_seq >= target)
            return 0;
        wake_now_locked(w); /* before any wait below: the waiters must not wait on us */
        if (w->io_busy) {
            pthread_cond_wait(&w->cv, &w->mu);
            continue;
        }
        if (!sync && w->buf_len == 0)
            return 0;
        if (w->closing)
            return -KV_ECLOSED;

        w->io_busy = 1;
        if (group && sync && w->sync_mode == KV_SYNC_ALWAYS) {
            int expected = w->peak_appenders;
            w->peak_appenders = w->appenders;
            if (gather_followers_locked(w, expected))
                continue; /* an appender took the I/O over: wait for it like the others */
            if (w->failed) { /* e.g. truncate_front's bounds write failed while we waited */
                w->io_busy = 0;
                pthread_cond_broadcast(&w->cv);
                return failed_locked(w);
            }
        }
    write:
        owner = 0;
        unsigned char *data = w->buf;
        size_t len = w->buf_len;
        uint64_t off = w->buf_off;
        uint64_t upto = w->next_seq - 1;
        int fd = w->cur_fd;
        const char *path = w->segs[w->nsegs - 1].path;
        uint64_t file_size = w->segs[w->nsegs - 1].size;
        w->buf = w->spare;
        w->spare = NULL;
        w->buf_len = 0;
        /* The next records' writes start after this fdatasync returns: they count from 0.
         * After a write that is not synced they go on counting, so that every write since
         * the last fdatasync (all of which a power loss may tear together) reads as one. */
        if (sync)
            w->buf_records = 0;
        w->buf_off = off + len;
        pthread_mutex_unlock(&w->mu);

        uint64_t started = now_ns();
        /* Synced at once: straight to the device (direct.c); else into the page cache. */
        int e = len && sync ? kv_direct_write(w, fd, path, data, len, off, file_size) : 0;
        if (len && (!sync || e == KV_DIRECT_NO)) {
            e = kv_io_pwrite(&w->io, fd, data, len, off);
            kv_direct_forget_tail(w);
        }
        const char *what = "write";
        if (!e && sync) {
            e = kv_io_fdatasync(&w->io, fd);
            what = "fdatasync";
        }

        pthread_mutex_lock(&w->mu);
        if (sync)
            w->last_sync_ns = now_ns() - started;
        w->spare = data;
        w->io_busy = 0;
        if (e) {
            kv_fail_locked(w, e, path, what);
            return failed_locked(w);
        }
        w->written_seq = upto;
        if (sync && w->durable_seq < upto)
            w->durable_seq = upto;
        if (group)
            w->wake_pending = 1; /* woken by unlock_and_wake, once the mutex is free */
        else
            pthread_cond_broadcast(&w->cv);
        if (!sync)
            return 0;
    }
}

/* Makes everything in the current segment durable and moves to the prepared next one, unless
 * another thread did so meanwhile and a record of `need` bytes now fits. Returns 0 to make the
 * caller look again (it calls back when the record still does not fit). */
static int rotate_locked(kv_wal *w, uint64_t need)
{
    /* The old segment is synced before the new one is named, so a crash never leaves a later
     * segment after an earlier one whose tail was lost. */
    while (w->buf_len > 0 || w->durable_seq < w->next_seq - 1 || w->io_busy) {
        int e = kv_flush_locked(w, 1, w->next_seq - 1, 0);
        if (e)
            return e;
        kv_segment *s = &w->segs[w->nsegs - 1];
        if (s->end + need <= s->size)
            return 0;
    }
    if (w->prep_state != KV_PREP_READY) {
        /* Waiting releases the mutex: another thread may append, start an I/O on the current
         * segment (its descriptor must stay open), rotate or close meanwhile. Look again. */
        int e = kv_prepare_wait_locked(w);
        if (e && !w->closing && !w->failed) {
            /* Not fail-stop: nothing was written to the log, it stays usable (e.g. ENOSPC
             * while creating the next segment: free some space and append again). */
            kv_set_error(&w->last_err, KV_EIO, e, w->dir, -1,
                         "cannot create the next segment: %s", strerror(e));
            return -KV_EIO;
        }
        return 0;
    }
    /* The mutex has been held since the checks above: nothing is buffered or in flight. */
    kv_segment *s = &w->segs[w->nsegs - 1];
    int e = kv_activate_prepared_locked(w, s->id + 1, w->next_seq);
    if (e) {
        if (w->failed)
            return failed_locked(w);
        kv_set_error(&w->last_err, KV_EIO, e, w->dir, -1, "cannot create the next segment: %s",
                     strerror(e));
        return -KV_EIO;
    }
    w->buf_off = KV_SEG_HEADER_SIZE;
    return 0;
}

/* A record too big for the buffer is written straight from the caller's memory. */
static int64_t append_direct_locked(kv_wal *w, unsigned type, unsigned flags, const char *data,
                                    uint32_t len, uint64_t rs)
{
    kv_segment *s = &w->segs[w->nsegs - 1];
    uint64_t seq = w->next_seq, off = s->end;
    unsigned char hdr[KV_REC_HEADER_SIZE];
    if (kv_segment_push_offset(s, (uint32_t)off) != 0) {
        kv_set_error(&w->last_err, KV_EIO, ENOMEM, s->path, -1, "out of memory");
        return -KV_EIO;
    }
    /* Its own write, after the buffer's (see append_locked), which was not synced: it counts
     * on from the buffer's records. Only once nothing can fail before the write: an index
     * counted for a record that never came would claim a synced record as unsynced. */
    kv_record_header_encode(hdr, s->salt, seq, type, flags, w->buf_records++, data, len);
    w->next_seq++;
    s->end += rs;
    w->buf_off = s->end;
    w->io_busy = 1;
    int fd = w->cur_fd;
    const char *path = s->path; /* s itself may move: truncate_front shifts the array */
    pthread_mutex_unlock(&w->mu);
    /* Padding is left as it is: the file is zero there already. */
    int e = kv_io_pwritev2(&w->io, fd, hdr, sizeof hdr, data, len, off);
    kv_direct_forget_tail(w);
    pthread_mutex_lock(&w->mu);
    w->io_busy = 0;
    pthread_cond_broadcast(&w->cv);
    if (e) {
        kv_fail_locked(w, e, path, "write");
        return failed_locked(w);
    }
    w->written_seq = seq;
    return (int64_t)seq;
}

/* Appends one record (not synced). Returns its seq or a negative code. `batch_owner`: the
 * caller is placing a batch (w->batching), so it must not wait for one to finish. */
static int64_t append_locked(kv_wal *w, unsigned type, unsigned flags, int batch_owner,
                             const char *data, size_t len)
{
    if (len > UINT32_MAX || kv_record_size(len) > w->segment_size - KV_SEG_HEADER_SIZE) {
        kv_set_error(&w->last_err, KV_ETOOBIG, 0, w->dir, -1,
                     "a record of %zu bytes does not fit in a segment of %llu bytes (at most "
                     "%llu payload bytes)",
                     len, (unsigned long long)w->segment_size,
                     (unsigned long long)(w->segment_size - KV_SEG_HEADER_SIZE -
                                          KV_REC_HEADER_SIZE));
        return -KV_ETOOBIG;
    }
    uint64_t rs = kv_record_size(len);
    for (;;) {
        if (w->closing)
            return -KV_ECLOSED;
        if (w->failed)
            return failed_locked(w);
        if (w->batching && !batch_owner) { /* the mutex was released while we flushed */
            pthread_cond_wait(&w->cv, &w->mu);
            continue;
        }
        kv_segment *s = &w->segs[w->nsegs - 1];
        if (s->end + rs > s->size) {
            int e = rotate_locked(w, rs);
            if (e)
                return e;
            continue;
        }
        if (rs > w->buf_cap) {
            if (w->buf_len > 0 || w->io_busy) {
                int e = kv_flush_locked(w, 0, 0, 0);
                if (e)
                    return e;
                continue;
            }
            return append_direct_locked(w, type, flags, data, (uint32_t)len, rs);
        }
        if (w->buf_len + rs > w->buf_cap) {
            int e = kv_flush_locked(w, 0, 0, 0);
            if (e)
                return e;
            continue;
        }
        if (kv_segment_push_offset(s, (uint32_t)s->end) != 0) {
            kv_set_error(&w->last_err, KV_EIO, ENOMEM, s->path, -1, "out of memory");
            return -KV_EIO;
        }
        uint64_t seq = w->next_seq++;
        unsigned char *p = w->buf + w->buf_len;
        /* Recovery tells the torn tail of the writes since the last fdatasync from
         * corruption by this index (see format.h). */
        kv_record_header_encode(p, s->salt, seq, type, flags, w->buf_records++, data,
                                (uint32_t)len);
        memcpy(p + KV_REC_HEADER_SIZE, data, len);
        memset(p + KV_REC_HEADER_SIZE + len, 0, rs - KV_REC_HEADER_SIZE - len);
        w->buf_len += rs;
        s->end += rs;
        return (int64_t)seq;
    }
}

static int writable_locked(kv_wal *w)
{
    if (w->closing)
        return -KV_ECLOSED;
    if (w->flags & KV_OPEN_CHECK) {
        kv_set_error(&w->last_err, KV_EINVAL, 0, w->dir, -1, "the log was opened for checking");
        return -KV_EINVAL;
    }
    if (w->failed)
        return failed_locked(w);
    return 0;
}

/* Waits while another thread places a batch (its records must get consecutive seqs, and it
 * may release the mutex while it flushes) or cuts the log's tail, then counts this thread as
 * an appender. */
static void enter_append_locked(kv_wal *w)
{
    while (w->batching || w->cutting)
        pthread_cond_wait(&w->cv, &w->mu);
    if (++w->appenders > w->peak_appenders)
        w->peak_appenders = w->appenders;
}

static void leave_append_locked(kv_wal *w)
{
    if (--w->appenders == 0 && w->cutting)
        pthread_cond_broadcast(&w->cv); /* kv_wal_truncate_back waits for this */
}

/* A durable append has placed its record: the leader may be waiting for it. Only the record
 * that completes the expected group ends the wait, and it does so by taking the I/O over (the
 * leader is asleep; this thread is running): returns KV_GROUP_OWNER for kv_flush_locked then,
 * else 1. A wake-up per arrival would make the leader compete for the CPU with the very
 * appenders it is waiting for. */
static int joined_locked(kv_wal *w)
{
    if (w->leader_waiting && w->next_seq - 1 - w->durable_seq >= w->gather_target) {
        w->leader_waiting = 0;
        *w->leader_taken = 1;
        w->leader_taken = NULL;
        return KV_GROUP_OWNER;
    }
    return 1;
}

int64_t kv_wal_append(kv_wal *w, unsigned type, const char *data, size_t len)
{
    if (type > 255)
        return -KV_EINVAL;
    int64_t seq = kv_lock_enter(w);
    if (seq)
        return seq;
    enter_append_locked(w);
    seq = writable_locked(w);
    if (seq == 0)
        seq = append_locked(w, type, 0, 0, data, len);
    if (seq > 0 && w->sync_mode == KV_SYNC_ALWAYS) {
        int e = kv_flush_locked(w, 1, (uint64_t)seq, joined_locked(w));
        if (e)
            seq = e;
    }
    leave_append_locked(w);
    kv_leave_locked(w);
    unlock_and_wake(w);
    return seq;
}

int64_t kv_wal_append_batch(kv_wal *w, unsigned type, const uint8_t *types, const char *data,
                            const uint32_t *lens, size_t n)
{
    if (type > 255 || n == 0)
        return -KV_EINVAL;
    int64_t first = kv_lock_enter(w), last = 0;
    if (first)
        return first;
    enter_append_locked(w);
    first = writable_locked(w);
    int owner = 0;
    if (first == 0) {
        /* Check every length first: a batch is refused whole, never appended in part. */
        for (size_t i = 0; i < n; i++)
            if (kv_record_size(lens[i]) > w->segment_size - KV_SEG_HEADER_SIZE) {
                kv_set_error(&w->last_err, KV_ETOOBIG, 0, w->dir, -1,
                             "record %zu of the batch (%u bytes) does not fit in a segment of "
                             "%llu bytes",
                             i, lens[i], (unsigned long long)w->segment_size);
                first = -KV_ETOOBIG;
                break;
            }
    }
    if (first == 0) {
        /* One batch at a time: its records get consecutive seqs even though placing them may
         * release the mutex (to flush or rotate). */
        while (w->batching)
            pthread_cond_wait(&w->cv, &w->mu);
        w->batching = owner = 1;
        /* A batch that fits in one segment goes into one: start a new one now if needed, so
         * that recovery can treat the batch as a unit. */
        uint64_t total = 0;
        for (size_t i = 0; i < n; i++)
            total += kv_record_size(lens[i]);
        while (total <= w->segment_size - KV_SEG_HEADER_SIZE && !w->failed && !w->closing) {
            kv_segment *s = &w->segs[w->nsegs - 1];
            if (s->end + total <= s->size)
                break;
            int e = rotate_locked(w, total);
            if (e) {
                first = e;
                break;
            }
        }
    }
    if (first == 0) {
        first = (int64_t)w->next_seq;
        size_t off = 0;
        for (size_t i = 0; i < n && last >= 0; i++) {
            unsigned flags = i + 1 < n ? KV_REC_CONTINUES : 0;
            last = append_locked(w, types ? types[i] : type, flags, 1, data + off, lens[i]);
            off += lens[i];
            if (last < 0 && i > 0 && !w->failed)
                /* Part of the batch is in the log and the rest could not follow (no room for a
                 * new segment): stop writing rather than leave a half batch looking whole. */
                kv_fail_locked(w, w->last_err.sys_errno, w->dir, "appending a batch");
        }
        if (last < 0)
            first = last;
    }
    if (owner) {
        w->batching = 0;
        pthread_cond_broadcast(&w->cv);
    }
    if (first > 0 && w->sync_mode == KV_SYNC_ALWAYS) {
        int e = kv_flush_locked(w, 1, (uint64_t)last, joined_locked(w));
        if (e)
            first = e;
    }
    leave_append_locked(w);
    kv_leave_locked(w);
    unlock_and_wake(w);
    return first;
}

int kv_wal_sync(kv_wal *w)
{
    pthread_mutex_lock(&w->mu);
    int e = kv_enter_locked(w);
    if (!e) {
        e = writable_locked(w);
        if (!e)
            e = kv_flush_locked(w, 1, w->next_seq - 1, 0);
        kv_leave_locked(w);
    }
    pthread_mutex_unlock(&w->mu);
    return e;
}
