/* The log as a whole: open (with recovery), close, truncation at both ends, and reporting. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "wal_internal.h"

void kv_set_error(kv_error *e, int code, int sys_errno, const char *path, int64_t offset,
                  const char *fmt, ...)
{
    e->code = code;
    e->sys_errno = sys_errno;
    e->offset = offset;
    snprintf(e->path, sizeof e->path, "%s", path ? path : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
}

void kv_add_finding(kv_wal *w, int code, const char *path, int64_t offset, const char *fmt, ...)
{
    if (w->nfindings == w->findings_cap) {
        size_t cap = w->findings_cap ? w->findings_cap * 2 : 8;
        kv_error *p = realloc(w->findings, cap * sizeof *p);
        if (!p)
            return;
        w->findings = p;
        w->findings_cap = cap;
    }
    kv_error *f = &w->findings[w->nfindings++];
    f->code = code;
    f->sys_errno = 0;
    f->offset = offset;
    snprintf(f->path, sizeof f->path, "%s", path ? path : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->msg, sizeof f->msg, fmt, ap);
    va_end(ap);
}

/* In check mode every problem becomes a finding and the scan goes on; otherwise the first one
 * fails the open. Returns 1 when the open must fail. */
#define PROBLEM(w, err, code, path, off, ...)                                                     \
    ((w)->flags & KV_OPEN_CHECK                                                               \
         ? (kv_add_finding((w), (code), (path), (off), __VA_ARGS__), 0)                       \
         : (kv_set_error((err), (code), 0, (path), (off), __VA_ARGS__), 1))

static void describe_bad_record(const kv_segment *s, uint64_t off, uint64_t expected, char *out,
                                size_t n)
{
    if (off + KV_REC_HEADER_SIZE > s->size) {
        snprintf(out, n, "record header runs past the end of the file");
        return;
    }
    const unsigned char *p = s->map + off;
    uint64_t seq = kv_get64(p + 8);
    uint32_t len = kv_get32(p + 4);
    int zero = 1;
    for (unsigned k = 0; k < KV_REC_HEADER_SIZE; k++)
        zero &= p[k] == 0;
    if (zero)
        snprintf(out, n, "record %llu is zeroed", (unsigned long long)expected);
    else if ((uint64_t)len > s->size - off - KV_REC_HEADER_SIZE)
        snprintf(out, n, "record length %u runs past the end of the segment", len);
    else if (seq != expected)
        snprintf(out, n, "record has seq %llu where %llu was expected",
                 (unsigned long long)seq, (unsigned long long)expected);
    else
        snprintf(out, n, "record %llu fails its CRC32C", (unsigned long long)seq);
}

int kv_write_bounds_locked(kv_wal *w, uint32_t flags, uint64_t front, uint64_t cut)
{
    unsigned char buf[KV_BOUNDS_SIZE];
    kv_bounds b = {flags, front, cut, w->newest_seg};
    kv_bounds_encode(buf, &b);
    char *tmp = kv_path_join(w->dir, KV_BOUNDS_TMP_NAME);
    char *path = kv_path_join(w->dir, KV_BOUNDS_NAME);
    int e = 0, fd = -1;
    if (!tmp || !path) {
        e = ENOMEM;
        goto out;
    }
    fd = open(tmp, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) {
        e = errno;
        goto out;
    }
    e = kv_io_pwrite(&w->io, fd, buf, sizeof buf, 0);
    if (!e)
        e = kv_io_fdatasync(&w->io, fd);
    if (!e && rename(tmp, path) < 0)
        e = errno;
    if (!e)
        e = kv_io_fsync_dir(&w->io, w->dirfd);
out:
    if (fd >= 0)
        close(fd);
    free(tmp);
    free(path);
    return e;
}

/* Zeroes segment s from offset `from` up to its last non-zero byte, through its own fd. */
static int zero_tail(kv_wal *w, kv_segment *s, uint64_t from, uint64_t *cut)
{
    int fd = open(s->path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return errno;
    int e = kv_cut_tail(w, s, fd, from, cut);
    close(fd);
    return e;
}

static int ensure_segs_cap(kv_wal *w, size_t n)
{
    if (n <= w->segs_cap)
        return 0;
    kv_segment *p = realloc(w->segs, n * sizeof *p);
    if (!p)
        return ENOMEM;
    w->segs = p;
    w->segs_cap = n;
    return 0;
}

static int cmp_seg(const void *a, const void *b)
{
    const kv_segment *x = a, *y = b;
    return x->id < y->id ? -1 : x->id > y->id;
}

static void remove_segments_locked(kv_wal *w, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++) {
        unlink(w->segs[i].path);
        kv_segment_release(&w->segs[i]);
    }
    memmove(&w->segs[from], &w->segs[to], (w->nsegs - to) * sizeof *w->segs);
    w->nsegs -= to - from;
}

/* Lists the directory; refuses one that holds files a WAL would not have, before anything is
 * written to it. Fills w->segs with named (not yet opened) segments. */
static int list_directory(kv_wal *w, kv_error *err, int *has_bounds)
{
    DIR *d = opendir(w->dir);
    if (!d) {
        kv_set_error(err, KV_EIO, errno, w->dir, -1, "cannot list directory: %s",
                     strerror(errno));
        return 1;
    }
    struct dirent *de;
    int bad = 0;
    while ((de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        uint64_t id, first;
        if (!strcmp(n, ".") || !strcmp(n, "..") || !strcmp(n, KV_LOCK_NAME) ||
            !strcmp(n, KV_PREP_NAME) || !strcmp(n, KV_PREP_TMP_NAME) ||
            !strcmp(n, KV_BOUNDS_TMP_NAME))
            continue;
        if (!strcmp(n, KV_BOUNDS_NAME)) {
            *has_bounds = 1;
            continue;
        }
        if (kv_parse_segment_name(n, &id, &first)) {
            if (ensure_segs_cap(w, w->nsegs + 1)) {
                kv_set_error(err, KV_EIO, ENOMEM, w->dir, -1, "out of memory");
                bad = 1;
                break;
            }
            kv_segment *s = &w->segs[w->nsegs++];
            memset(s, 0, sizeof *s);
            s->id = id;
            s->first_seq = first;
            s->path = kv_path_join(w->dir, n);
            continue;
        }
        kv_set_error(err, KV_ENOTWAL, 0, w->dir, -1,
                     "not a keyval WAL directory: it holds '%s', which a WAL never writes", n);
        bad = 1;
        break;
    }
    closedir(d);
    if (!bad && w->nsegs > 1) /* segs is NULL when there are none: no qsort(NULL, 0) */
        qsort(w->segs, w->nsegs, sizeof *w->segs, cmp_seg);
    return bad;
}

static int lock_directory(kv_wal *w, kv_error *err)
{
    char *path = kv_path_join(w->dir, KV_LOCK_NAME);
    int check = w->flags & KV_OPEN_CHECK;
    w->lockfd = open(path, check ? O_RDONLY | O_CLOEXEC : O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (w->lockfd < 0 && check && errno == ENOENT) {
        free(path);
        return 0; /* never opened for writing: nobody to exclude */
    }
    if (w->lockfd < 0) {
        kv_set_error(err, KV_EIO, errno, path, -1, "cannot open lock file: %s", strerror(errno));
        free(path);
        return 1;
    }
    /* A checker shares the lock with other checkers but never runs beside a writer. */
    if (flock(w->lockfd, (check ? LOCK_SH : LOCK_EX) | LOCK_NB) < 0) {
        int e = errno;
        kv_set_error(err, e == EWOULDBLOCK ? KV_EBUSY : KV_EIO, e, w->dir, -1,
                     e == EWOULDBLOCK ? "the log is open in another process"
                                      : "cannot lock the log: %s",
                     strerror(e));
        free(path);
        return 1;
    }
    free(path);
    return 0;
}

static int read_bounds(kv_wal *w, kv_error *err, kv_bounds *b)
{
    char *path = kv_path_join(w->dir, KV_BOUNDS_NAME);
    unsigned char buf[KV_BOUNDS_SIZE];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int fail = 0;
    if (fd < 0) {
        kv_set_error(err, KV_EIO, errno, path, -1, "cannot open: %s", strerror(errno));
        free(path);
        return 1;
    }
    ssize_t n = pread(fd, buf, sizeof buf, 0);
    close(fd);
    int rc = kv_bounds_decode(buf, n > 0 ? (size_t)n : 0, b);
    if (rc == -3)
        fail = PROBLEM(w, err, KV_EVERSION, path, 8,
                       "bounds file of format version %u; this keyval reads versions 1 to %u",
                       kv_get32(buf + 8), KV_BOUNDS_VERSION);
    else if (rc)
        fail = PROBLEM(w, err, KV_ECORRUPT, path, 0, "bounds file is damaged (%s)",
                       rc == -4 ? "truncated" : rc == -1 ? "bad magic" : "bad CRC");
    if (rc)
        memset(b, 0, sizeof *b);
    free(path);
    return fail;
}

static int open_segment_header(kv_wal *w, kv_segment *s, kv_error *err)
{
    int e = kv_segment_map(s);
    if (e) {
        kv_set_error(err, KV_EIO, e, s->path, -1, "cannot map segment: %s", strerror(e));
        return 1;
    }
    if (s->size < KV_SEG_HEADER_SIZE + KV_REC_HEADER_SIZE || s->size > KV_MAX_SEGMENT_SIZE) {
        s->unusable = 1;
        return PROBLEM(w, err, KV_ECORRUPT, s->path, 0, "segment file is %llu bytes long",
                       (unsigned long long)s->size);
    }
    kv_seg_header h;
    int rc = kv_seg_header_decode(s->map, &h);
    const char *why = NULL;
    if (rc == -3)
        return PROBLEM(w, err, KV_EVERSION, s->path, 8,
                       "segment of format version %u; this keyval reads version %u",
                       kv_get32(s->map + 8), KV_FORMAT_VERSION);
    if (rc == 1)
        why = "segment header is all zeros";
    else if (rc == -1)
        why = "segment header has a bad magic";
    else if (rc == -4)
        why = "segment header has an unknown header size";
    else if (rc == -2)
        why = "segment header fails its CRC32C";
    else if (h.id != s->id || h.first_seq != s->first_seq)
        why = "segment header does not match the file name";
    if (why) {
        s->unusable = 1;
        return PROBLEM(w, err, KV_ECORRUPT, s->path, 0, "%s", why);
    }
    /* A segment is written whole before it gets its name (prepare.c) and never shortened:
     * one shorter than it was made lost its end to something else, records with it. Read as
     * zeros to the end, that loss passed for a clean log, acknowledged records gone. */
    if (s->size < h.created_size) {
        s->unusable = 1;
        return PROBLEM(w, err, KV_ECORRUPT, s->path, (int64_t)s->size,
                       "segment file is %llu bytes, %llu when it was made: cut short",
                       (unsigned long long)s->size, (unsigned long long)h.created_size);
    }
    s->salt = h.salt;
    return 0;
}

/* Whether the record at off (seq) is whole but for a torn rewrite of its flags: its CRC is
 * the one of its bytes with the CONTINUES flag either set or clear, and its flags byte one of
 * those two. kv_clear_continues rewrites the header of the last record truncate_back keeps,
 * and a crash may tear that write between the CRC and the flags. */
static int torn_flags_rewrite(const kv_segment *s, uint64_t off, uint64_t seq)
{
    if (off + KV_REC_HEADER_SIZE > s->size)
        return 0;
    const unsigned char *p = s->map + off;
    uint32_t len = kv_get32(p + 4);
    if (kv_get64(p + 8) != seq || (uint64_t)len > s->size - off - KV_REC_HEADER_SIZE ||
        (p[17] & ~KV_REC_CONTINUES))
        return 0;
    unsigned char hdr[KV_REC_HEADER_SIZE];
    for (unsigned flags = 0; flags <= KV_REC_CONTINUES; flags += KV_REC_CONTINUES) {
        kv_record_header_encode(hdr, s->salt, seq, p[16], flags, kv_get16(p + 18),
                                p + KV_REC_HEADER_SIZE, len);
        if (memcmp(hdr, p, 4) == 0 && memcmp(hdr + 18, p + 18, KV_REC_HEADER_SIZE - 18) == 0)
            return 1;
    }
    return 0;
}

/* Reads every segment, checking that the seqs run on without a gap, and settles the tail of
 * the last one (a torn tail is cut unless in check mode). */
static int recover(kv_wal *w, kv_error *err, const kv_bounds *b)
{
    int check = w->flags & KV_OPEN_CHECK;
    int cut_pending = b->flags & KV_BOUNDS_CUT_PENDING;
    char why[200];
    if (cut_pending) {
        /* Finish an interrupted truncate_back: segments wholly after the cut go first, newest
         * first, without being read (a half-done removal may have left a gap among them).
         * Check mode passes over them the same way: they are what open removes. */
        size_t keep = w->nsegs;
        while (keep > 1 && w->segs[keep - 1].first_seq > b->cut + 1)
            keep--;
        if (!check) {
            for (size_t i = w->nsegs; i > keep; i--)
                unlink(w->segs[i - 1].path);
            /* Their removal is durable before the tail of the segment that keeps the cut is
             * zeroed below, as in truncate_back: else a power loss can bring them back
             * behind a gap that zeroing made (open copes, but it is a state no truncate_back
             * leaves, and one check mode took for damage). */
            int e = keep < w->nsegs ? kv_io_fsync_dir(&w->io, w->dirfd) : 0;
            if (e) {
                kv_set_error(err, KV_EIO, e, w->dir, -1, "cannot finish truncate_back: %s",
                             strerror(e));
                return 1;
            }
        }
        for (size_t i = keep; i < w->nsegs; i++)
            kv_segment_release(&w->segs[i]);
        w->nsegs = keep;
        if (check)
            kv_add_finding(w, KV_ETORN, w->dir, -1,
                           "a truncate_back to seq %llu was interrupted; opening the log "
                           "finishes it",
                           (unsigned long long)b->cut);
    }
    /* Segments wholly below the front were being removed by truncate_front; a crash can leave
     * any of them behind, in any pattern, so they are dropped unread. */
    size_t skip = 0;
    while (skip + 1 < w->nsegs && w->segs[skip + 1].first_seq <= b->front)
        skip++;
    if (skip) {
        if (!check) {
            remove_segments_locked(w, 0, skip);
        } else {
            for (size_t i = 0; i < skip; i++)
                kv_segment_release(&w->segs[i]);
            memmove(w->segs, w->segs + skip, (w->nsegs - skip) * sizeof *w->segs);
            w->nsegs -= skip;
        }
    }

    uint64_t expected = w->nsegs ? w->segs[0].first_seq : 0;
    for (size_t i = 0; i < w->nsegs; i++) {
        kv_segment *s = &w->segs[i];
        int last = i + 1 == w->nsegs;
        if (i > 0 && s->id != w->segs[i - 1].id + 1 &&
            PROBLEM(w, err, KV_ECORRUPT, s->path, -1, "segment %llu is missing before it",
                    (unsigned long long)(w->segs[i - 1].id + 1)))
            return 1;
        if (open_segment_header(w, s, err)) {
            if (!check)
                return 1;
        }
        if (s->unusable) { /* check mode: carry on from the next one's first seq */
            s->end = 0;
            expected = last ? expected : w->segs[i + 1].first_seq;
            continue;
        }
        if (s->first_seq != expected &&
            PROBLEM(w, err, KV_ECORRUPT, s->path, 0,
                    "segment starts at seq %llu but the log before it ends at seq %llu",
                    (unsigned long long)s->first_seq, (unsigned long long)(expected - 1)))
            return 1;
        expected = s->first_seq;
        kv_stop stop = kv_scan_segment(s, expected);
        expected = s->first_seq + s->count;
        if (cut_pending && !check && last && expected > b->cut + 1) {
            /* The cut point lies in this segment: forget what follows it; zeroed below. */
            s->count = b->cut + 1 - s->first_seq;
            s->end = s->count ? s->offs[s->count - 1] +
                                    kv_record_size(kv_get32(s->map + s->offs[s->count - 1] + 4))
                              : KV_SEG_HEADER_SIZE;
            expected = b->cut + 1;
            stop = KV_STOP_BAD;
        }
        if (!last) {
            /* Zeros end a segment that was full, after its last record only: a valid record
             * further on means records were zeroed here (found here, not as a gap at the
             * start of the next segment). */
            uint64_t later;
            if (stop == KV_STOP_ZERO && kv_find_later_record(s, s->end, expected - 1, &later) >= 0)
                stop = KV_STOP_BAD;
            if (stop == KV_STOP_BAD) {
                describe_bad_record(s, s->end, expected, why, sizeof why);
                if (PROBLEM(w, err, KV_ECORRUPT, s->path, (int64_t)s->end, "%s", why))
                    return 1;
                /* Check mode: name every bad record, resynchronising on the next valid one. */
                for (;;) {
                    uint64_t seq;
                    int64_t at = kv_find_later_record(s, s->end + KV_REC_ALIGN, expected - 1, &seq);
                    if (at < 0)
                        break;
                    uint64_t off = (uint64_t)at;
                    for (expected = seq; kv_record_valid_at(s, off, expected); expected++)
                        off += kv_record_size(kv_get32(s->map + off + 4));
                    s->end = off;
                    if (off + KV_REC_HEADER_SIZE > s->size)
                        break;
                    int zero = 1;
                    for (unsigned k = 0; k < KV_REC_HEADER_SIZE; k++)
                        zero &= s->map[off + k] == 0;
                    if (zero)
                        break;
                    describe_bad_record(s, off, expected, why, sizeof why);
                    kv_add_finding(w, KV_ECORRUPT, s->path, (int64_t)off, "%s", why);
                }
            }
            continue;
        }
        /* The last segment: after its last valid record it must be zero. */
        uint64_t nz = s->size;
        while (nz > s->end && s->map[nz - 1] == 0)
            nz--;
        if (cut_pending && !check && expected == b->cut &&
            torn_flags_rewrite(s, s->end, expected)) {
            /* The last record the cut keeps, its header torn while truncate_back rewrote its
             * flags: whole otherwise, so it is kept (kv_clear_continues rewrites it below). */
            if (kv_segment_push_offset(s, (uint32_t)s->end) != 0) {
                kv_set_error(err, KV_EIO, ENOMEM, s->path, -1, "out of memory");
                return 1;
            }
            s->end += kv_record_size(kv_get32(s->map + s->end + 4));
            expected++;
        }
        uint64_t later;
        int64_t at = nz > s->end ? kv_find_later_record(s, s->end, expected - 1, &later) : -1;
        /* An interrupted truncate_back leaves bytes of the records after its cut, which is
         * no sign of damage; a bad record at or before the cut is, as anywhere else. */
        int torn_write = 0;
        if (at >= 0 && !(cut_pending && !check && expected > b->cut)) {
            uint64_t synced_seq = 0, synced_off = 0;
            torn_write = kv_torn_write(s, s->end, expected, &synced_seq, &synced_off);
            if (torn_write < 0) { /* name the record that proves the bad one was synced */
                later = synced_seq;
                at = (int64_t)synced_off;
            }
            if (torn_write != 1) {
                describe_bad_record(s, s->end, expected, why, sizeof why);
                if (PROBLEM(w, err, KV_ECORRUPT, s->path, (int64_t)s->end,
                            "%s, yet a valid record (seq %llu) follows at offset %lld%s: this "
                            "is corruption, not a torn write",
                            why, (unsigned long long)later, (long long)at,
                            torn_write < 0 ? " in a later write" : ""))
                    return 1;
                break;
            }
        }
        /* A batch whose last record never made it is cut with the torn bytes after it. */
        uint64_t unfinished = 0;
        if (cut_pending && !check) {
            int e = kv_clear_continues(w, s, s->count, -1);
            if (e) {
                kv_set_error(err, KV_EIO, e, s->path, -1, "cannot finish truncate_back: %s",
                             strerror(e));
                return 1;
            }
        } else {
            size_t k = s->count;
            while (k > 0 && (s->map[s->offs[k - 1] + 17] & KV_REC_CONTINUES))
                k--;
            unfinished = s->count - k;
            if (unfinished) {
                s->count = k;
                s->end = s->offs[k];
                expected -= unfinished;
            }
        }
        if (nz <= s->end)
            break;
        if (check) {
            kv_add_finding(w, KV_ETORN, s->path, (int64_t)s->end,
                           "torn tail: %llu bytes after the last valid record (seq %llu)%s%s; "
                           "opening the log cuts them",
                           (unsigned long long)(nz - s->end), (unsigned long long)(expected - 1),
                           unfinished ? ", an append_many batch that never finished" : "",
                           torn_write ? ", unsynced writes of which a power loss kept later "
                                        "blocks and lost an earlier one"
                                      : "");
            w->torn_offset = (int64_t)s->end;
            w->torn_bytes = nz - s->end;
            break;
        }
        uint64_t cut = 0;
        int e = zero_tail(w, s, s->end, &cut);
        if (e) {
            kv_set_error(err, KV_EIO, e, s->path, (int64_t)s->end, "cannot cut the torn tail: %s",
                         strerror(e));
            return 1;
        }
        if (!cut_pending) {
            w->torn_offset = (int64_t)s->end;
            w->torn_bytes = cut;
        }
    }
    w->next_seq = expected ? expected : 1;
    return 0;
}

static void *ticker_main(void *arg)
{
    kv_wal *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->closing) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double t = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 + w->sync_interval;
        ts.tv_sec = (time_t)t;
        ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
        while (!w->closing && pthread_cond_timedwait(&w->tick_cv, &w->mu, &ts) != ETIMEDOUT)
            ;
        if (w->closing || w->failed)
            continue;
        if (w->durable_seq < w->next_seq - 1) {
            /* A failure makes the log fail-stop, and no caller hears of it from here: the
             * next call does, or close() (see fail_told). */
            int told = w->fail_told;
            kv_flush_locked(w, 1, w->next_seq - 1, 0);
            w->fail_told = told;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void release_all(kv_wal *w)
{
    for (size_t i = 0; i < w->nsegs; i++)
        kv_segment_release(&w->segs[i]);
    free(w->segs);
    w->segs = NULL;
    w->nsegs = w->segs_cap = 0;
    if (w->cur_fd >= 0)
        close(w->cur_fd);
    if (w->dirfd >= 0)
        close(w->dirfd);
    if (w->lockfd >= 0)
        close(w->lockfd); /* releases the flock */
    w->cur_fd = w->dirfd = w->lockfd = -1;
    kv_direct_free(w);
    free(w->buf);
    free(w->spare);
    w->buf = w->spare = NULL;
}

void kv_wal_free(kv_wal *w)
{
    if (!w)
        return;
    kv_error ignored;
    kv_wal_close(w, &ignored);
    release_all(w);
    free(w->findings);
    free(w->dir);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    pthread_cond_destroy(&w->tick_cv);
    pthread_cond_destroy(&w->join_cv);
    free(w);
}

kv_wal *kv_wal_open(const char *dir, const kv_options *opt, kv_error *err)
{
    memset(err, 0, sizeof *err);
    err->offset = -1;
    if (opt->segment_size < KV_MIN_SEGMENT_SIZE || opt->segment_size > KV_MAX_SEGMENT_SIZE ||
        opt->segment_size % KV_REC_ALIGN) {
        kv_set_error(err, KV_EINVAL, 0, dir, -1,
                     "segment_size must be a multiple of 8 between %u and %u bytes",
                     KV_MIN_SEGMENT_SIZE, KV_MAX_SEGMENT_SIZE);
        return NULL;
    }
    if (opt->sync_mode < KV_SYNC_NONE || opt->sync_mode > KV_SYNC_INTERVAL ||
        (opt->sync_mode == KV_SYNC_INTERVAL && !(opt->sync_interval > 0))) {
        kv_set_error(err, KV_EINVAL, 0, dir, -1, "bad sync mode or interval");
        return NULL;
    }
    int check = opt->flags & KV_OPEN_CHECK;
    struct stat st;
    if (stat(dir, &st) < 0) {
        if (errno != ENOENT || check) {
            kv_set_error(err, KV_EIO, errno, dir, -1, "%s", strerror(errno));
            return NULL;
        }
        if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
            kv_set_error(err, KV_EIO, errno, dir, -1, "cannot create directory: %s",
                         strerror(errno));
            return NULL;
        }
        /* Make the new directory's own name durable. */
        char *parent = strdup(dir);
        char *slash = parent ? strrchr(parent, '/') : NULL;
        const char *pd = slash ? (slash == parent ? "/" : (*slash = 0, parent)) : ".";
        int pfd = open(pd, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (pfd >= 0) {
            fsync(pfd);
            close(pfd);
        }
        free(parent);
    } else if (!S_ISDIR(st.st_mode)) {
        kv_set_error(err, KV_EIO, ENOTDIR, dir, -1, "not a directory");
        return NULL;
    }

    kv_wal *w = calloc(1, sizeof *w);
    if (!w) {
        kv_set_error(err, KV_EIO, ENOMEM, dir, -1, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    pthread_cond_init(&w->tick_cv, NULL);
    pthread_condattr_t mono; /* the group-commit wait is timed on the monotonic clock */
    pthread_condattr_init(&mono);
    pthread_condattr_setclock(&mono, CLOCK_MONOTONIC);
    pthread_cond_init(&w->join_cv, &mono);
    pthread_condattr_destroy(&mono);
    w->dir = strdup(dir);
    w->dirfd = w->lockfd = w->cur_fd = -1;
    kv_direct_init(w);
    w->flags = opt->flags;
    w->sync_mode = opt->sync_mode;
    w->sync_interval = opt->sync_interval;
    w->segment_size = opt->segment_size;
    w->buf_cap = opt->buffer_size ? opt->buffer_size : (1u << 20);
    w->buf = malloc(w->buf_cap);
    w->spare = malloc(w->buf_cap);
    w->torn_offset = -1;
    w->front = 1;
    if (!w->dir || !w->buf || !w->spare) {
        kv_set_error(err, KV_EIO, ENOMEM, dir, -1, "out of memory");
        goto fail;
    }
    int has_bounds = 0;
    if (list_directory(w, err, &has_bounds))
        goto fail;
    w->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (w->dirfd < 0) {
        kv_set_error(err, KV_EIO, errno, dir, -1, "cannot open directory: %s", strerror(errno));
        goto fail;
    }
    if (lock_directory(w, err))
        goto fail;
    if (!check) {
        /* Leftovers of a crash while a file was being created. */
        char *p = kv_path_join(dir, KV_PREP_TMP_NAME);
        unlink(p);
        free(p);
        p = kv_path_join(dir, KV_BOUNDS_TMP_NAME);
        unlink(p);
        free(p);
    }
    kv_bounds b = {0, 0, 0, 0};
    if (has_bounds && read_bounds(w, err, &b))
        goto fail;
    if (recover(w, err, &b))
        goto fail;
    /* Segments deleted from either end (see format.h): a crash never removes these. */
    uint64_t newest = w->nsegs ? w->segs[w->nsegs - 1].id : 0;
    if (b.newest > newest &&
        PROBLEM(w, err, KV_ECORRUPT, w->dir, -1,
                "segment %llu is missing: the bounds file says segments up to %llu were made, "
                "but the newest here is %llu (deleted?)",
                (unsigned long long)(newest + 1), (unsigned long long)b.newest,
                (unsigned long long)newest))
        goto fail;
    if (has_bounds && w->nsegs && b.front >= 1 && w->segs[0].first_seq > b.front &&
        PROBLEM(w, err, KV_ECORRUPT, w->segs[0].path, 0,
                "records %llu to %llu are missing: the bounds file says the log starts at seq "
                "%llu, but its first segment starts at seq %llu (an earlier one deleted?)",
                (unsigned long long)b.front, (unsigned long long)(w->segs[0].first_seq - 1),
                (unsigned long long)b.front, (unsigned long long)w->segs[0].first_seq))
        goto fail;
    w->newest_seg = newest;

    if (w->nsegs == 0) {
        w->next_seq = b.front > 1 ? b.front : 1;
        if (check)
            w->front = w->next_seq;
    }
    if (b.front > w->next_seq &&
        PROBLEM(w, err, KV_ECORRUPT, w->dir, -1,
                "the bounds file says the log starts at seq %llu but it ends at seq %llu",
                (unsigned long long)b.front, (unsigned long long)(w->next_seq - 1)))
        goto fail;
    w->front = w->nsegs ? w->segs[0].first_seq : w->next_seq;
    if (b.front > w->front)
        w->front = b.front <= w->next_seq ? b.front : w->next_seq;
    w->written_seq = w->durable_seq = w->next_seq - 1;

    if (!check) {
        /* Also gives a log of an older keyval (no bounds file, or no `newest` in it) the
         * bounds that show a deleted segment, and catches up after a crash that came between
         * naming a new segment and recording it. An empty log gets them with its first
         * segment, below. */
        if ((b.flags & KV_BOUNDS_CUT_PENDING) || (w->nsegs && b.newest != newest)) {
            int e = kv_write_bounds_locked(w, 0, w->front, 0);
            if (e) {
                kv_set_error(err, KV_EIO, e, dir, -1, "cannot write the bounds file: %s",
                             strerror(e));
                goto fail;
            }
        }
        char *prep = kv_path_join(dir, KV_PREP_NAME);
        struct stat ps;
        if (prep && stat(prep, &ps) == 0 && (uint64_t)ps.st_size == w->segment_size)
            w->prep_state = KV_PREP_READY; /* written by an earlier run: use it */
        else if (prep)
            unlink(prep);
        free(prep);
        if (w->nsegs == 0) {
            pthread_mutex_lock(&w->mu);
            int e = kv_prepare_wait_locked(w);
            if (!e)
                e = kv_activate_prepared_locked(w, 1, w->next_seq);
            pthread_mutex_unlock(&w->mu);
            if (e) {
                kv_set_error(err, KV_EIO, e, dir, -1, "cannot create the first segment: %s",
                             strerror(e));
                goto fail;
            }
        } else {
            kv_segment *s = &w->segs[w->nsegs - 1];
            w->cur_fd = open(s->path, O_RDWR | O_CLOEXEC);
            if (w->cur_fd < 0) {
                kv_set_error(err, KV_EIO, errno, s->path, -1, "cannot open for writing: %s",
                             strerror(errno));
                goto fail;
            }
            /* The records are counted durable from here on (durable_seq above), so that
             * sync() and close() have nothing to do for them: make them so. A process that
             * crashed may have left written but unsynced records in the page cache, and
             * recovery may have unlinked files; both would be lost with the power. */
            int e = kv_io_fdatasync(&w->io, w->cur_fd);
            if (!e)
                e = kv_io_fsync_dir(&w->io, w->dirfd);
            if (e) {
                kv_set_error(err, KV_EIO, e, s->path, -1,
                             "cannot make the recovered log durable: %s", strerror(e));
                goto fail;
            }
            pthread_mutex_lock(&w->mu);
            kv_prepare_start_locked(w);
            pthread_mutex_unlock(&w->mu);
        }
        w->buf_off = w->segs[w->nsegs - 1].end;
        if (w->sync_mode == KV_SYNC_INTERVAL) {
            if (pthread_create(&w->ticker, NULL, ticker_main, w) != 0) {
                kv_set_error(err, KV_EIO, errno, dir, -1, "cannot start the sync thread");
                goto fail;
            }
            w->ticker_live = 1;
        }
    }
    return w;
fail:
    pthread_mutex_lock(&w->mu);
    w->closing = 1;
    pthread_mutex_unlock(&w->mu);
    kv_prepare_join(w);
    kv_wal_free(w);
    return NULL;
}

int kv_enter_locked(kv_wal *w)
{
    if (w->stopping || w->closing)
        return -KV_ECLOSED;
    w->active++;
    return 0;
}

int kv_lock_enter(kv_wal *w)
{
    pthread_mutex_lock(&w->mu);
    int rc = kv_enter_locked(w);
    if (rc)
        pthread_mutex_unlock(&w->mu);
    return rc;
}

void kv_leave_locked(kv_wal *w)
{
    if (--w->active == 0 && w->stopping)
        pthread_cond_broadcast(&w->cv);
}

int kv_wal_close(kv_wal *w, kv_error *err)
{
    memset(err, 0, sizeof *err);
    pthread_mutex_lock(&w->mu);
    if (w->closing || w->stopping) {
        /* Another thread is closing: this close, too, returns once the records are durable
         * (or with that close's error), not before. */
        while (!w->closing)
            pthread_cond_wait(&w->cv, &w->mu);
        int rc = w->close_rc;
        if (rc)
            *err = w->close_err;
        pthread_mutex_unlock(&w->mu);
        return rc;
    }
    /* Calls already inside finish (an append acknowledged by them is in the final flush);
     * later ones are refused. */
    w->stopping = 1;
    while (w->active > 0)
        pthread_cond_wait(&w->cv, &w->mu);
    int rc = 0;
    if (!w->failed && !(w->flags & KV_OPEN_CHECK)) {
        while (!rc && (w->buf_len > 0 || w->io_busy || w->durable_seq < w->next_seq - 1))
            rc = kv_flush_locked(w, 1, w->next_seq - 1, 0);
        if (rc)
            *err = w->last_err;
    } else if (w->failed && !w->fail_told && w->durable_seq + 1 < w->next_seq) {
        /* Appends returned before their records were durable (sync "interval") and the log
         * failed in the background before it could make them so, with no call to say it:
         * they are lost with a crash, and close is the caller's last chance to hear it. */
        kv_set_error(err, KV_EFAILED, w->fail_err.sys_errno, w->fail_err.path, -1,
                     "records %llu to %llu were appended but never made durable: %s",
                     (unsigned long long)w->durable_seq + 1,
                     (unsigned long long)w->next_seq - 1, w->fail_err.msg);
        rc = -KV_EFAILED;
    }
    while (w->io_busy)
        pthread_cond_wait(&w->cv, &w->mu);
    w->close_rc = rc;
    w->close_err = *err;
    w->closing = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_cond_broadcast(&w->tick_cv);
    pthread_cond_broadcast(&w->join_cv);
    pthread_mutex_unlock(&w->mu);
    if (w->ticker_live)
        pthread_join(w->ticker, NULL);
    w->ticker_live = 0;
    kv_prepare_join(w);
    pthread_mutex_lock(&w->mu);
    release_all(w);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

uint64_t kv_wal_first_seq(kv_wal *w)
{
    pthread_mutex_lock(&w->mu);
    uint64_t last = w->failed ? w->durable_seq : w->next_seq - 1;
    uint64_t v = last >= w->front ? w->front : 0;
    pthread_mutex_unlock(&w->mu);
    return v;
}

uint64_t kv_wal_last_seq(kv_wal *w)
{
    pthread_mutex_lock(&w->mu);
    uint64_t last = w->failed ? w->durable_seq : w->next_seq - 1;
    uint64_t v = last >= w->front ? last : 0;
    pthread_mutex_unlock(&w->mu);
    return v;
}

uint64_t kv_wal_next_seq(kv_wal *w)
{
    pthread_mutex_lock(&w->mu);
    uint64_t v = w->next_seq;
    pthread_mutex_unlock(&w->mu);
    return v;
}

static int mutable_locked(kv_wal *w)
{
    if (w->closing)
        return -KV_ECLOSED;
    if (w->flags & KV_OPEN_CHECK) {
        kv_set_error(&w->last_err, KV_EINVAL, 0, w->dir, -1, "the log was opened for checking");
        return -KV_EINVAL;
    }
    if (w->failed) {
        w->last_err = w->fail_err;
        w->fail_told = 1;
        return -KV_EFAILED;
    }
    return 0;
}

int kv_wal_truncate_front(kv_wal *w, uint64_t seq)
{
    int rc = kv_lock_enter(w);
    if (rc)
        return rc;
    for (;;) {
        rc = mutable_locked(w);
        if (rc || seq <= w->front)
            goto done;
        if (seq > w->next_seq) {
            kv_set_error(&w->last_err, KV_ERANGE, 0, w->dir, -1,
                         "truncate_front(%llu) is past the end of the log (next seq %llu)",
                         (unsigned long long)seq, (unsigned long long)w->next_seq);
            rc = -KV_ERANGE;
            goto done;
        }
        /* The records before the new front are durable before it is: were the front on disk
         * past the last record that survives a crash, the log would not open (sync="none" or
         * "interval" leave records unsynced; "always" has none). The flush frees the mutex,
         * so everything above is checked again after it. */
        if (w->durable_seq + 1 >= seq)
            break;
        rc = kv_flush_locked(w, 1, seq - 1, 0);
        if (rc)
            goto done;
    }
    /* The new front is durable before any segment goes: open drops segments below it. */
    int e = kv_write_bounds_locked(w, 0, seq, 0);
    if (e) {
        kv_fail_locked(w, e, w->dir, "writing the bounds file");
        rc = -KV_EFAILED;
        w->last_err = w->fail_err;
        goto done;
    }
    w->front = seq;
    size_t drop = 0;
    while (drop + 1 < w->nsegs && w->segs[drop + 1].first_seq <= seq)
        drop++;
    if (drop) {
        remove_segments_locked(w, 0, drop);
        e = kv_io_fsync_dir(&w->io, w->dirfd);
        if (e) {
            kv_fail_locked(w, e, w->dir, "fsync of the directory");
            w->last_err = w->fail_err;
            rc = -KV_EFAILED;
        }
    }
done:
    kv_leave_locked(w);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int kv_wal_truncate_back(kv_wal *w, uint64_t seq)
{
    int rc = kv_lock_enter(w);
    if (rc)
        return rc;
    /* No append is inside while the tail is cut: one waiting for its record to be durable
     * would wait for a record that no longer is, and then take a later one's seq for its own.
     * New appends wait at the door meanwhile (enter_append_locked). */
    w->cutting++;
    while (w->appenders > 0)
        pthread_cond_wait(&w->cv, &w->mu);
    /* Everything appended is written first, so that nothing buffered lands after the cut.
     * A flush frees the mutex: another truncation may move the bounds meanwhile, so they are
     * checked again after each one (cutting with bounds checked before it read outside a
     * segment's offsets, zeroed a segment header, or left the front past the end). */
    for (;;) {
        rc = mutable_locked(w);
        if (rc || seq + 1 >= w->next_seq)
            goto done;
        if (seq + 1 < w->front) {
            kv_set_error(&w->last_err, KV_ERANGE, 0, w->dir, -1,
                         "truncate_back(%llu) is before the start of the log (first seq %llu)",
                         (unsigned long long)seq, (unsigned long long)w->front);
            rc = -KV_ERANGE;
            goto done;
        }
        if (!(w->buf_len > 0 || w->io_busy || w->written_seq < w->next_seq - 1))
            break; /* from here on the mutex is held until the cut is done */
        rc = kv_flush_locked(w, 0, 0, 0);
        if (rc)
            goto done;
    }
    /* The segment that keeps the cut; those after it go. The bounds say so before they do. */
    size_t k = w->nsegs - 1;
    while (k > 0 && w->segs[k].first_seq > seq + 1)
        k--;
    w->newest_seg = w->segs[k].id;
    int e = kv_write_bounds_locked(w, KV_BOUNDS_CUT_PENDING, w->front, seq);
    const char *what = "writing the bounds file";
    if (e)
        goto fail;
    /* Segments after the cut go newest first, then the tail of the one that keeps the cut is
     * zeroed; a crash in between is finished by the next open, from the bounds file. */
    kv_direct_reset(w); /* the tail is rewritten below, maybe in another segment */
    if (k + 1 < w->nsegs) {
        remove_segments_locked(w, k + 1, w->nsegs);
        what = "fsync of the directory";
        if ((e = kv_io_fsync_dir(&w->io, w->dirfd)))
            goto fail;
        close(w->cur_fd);
        w->cur_fd = open(w->segs[k].path, O_RDWR | O_CLOEXEC);
        what = "reopening a segment";
        if (w->cur_fd < 0 && (e = errno))
            goto fail;
    }
    kv_segment *s = &w->segs[k];
    uint64_t keep = seq + 1 - s->first_seq, from = s->offs[keep], cut = 0;
    what = "zeroing the truncated tail";
    if ((e = kv_cut_tail(w, s, w->cur_fd, from, &cut)))
        goto fail;
    what = "ending the batch at the cut";
    if ((e = kv_clear_continues(w, s, keep, w->cur_fd)))
        goto fail;
    s->count = keep;
    s->end = from;
    w->buf_off = from;
    w->next_seq = seq + 1;
    w->written_seq = w->durable_seq = seq;
    w->buf_records = 0; /* the cut synced everything before it: the next write starts afresh */
    what = "writing the bounds file";
    if ((e = kv_write_bounds_locked(w, 0, w->front, 0)))
        goto fail;
    goto done;
fail:
    kv_fail_locked(w, e, w->dir, what);
    w->last_err = w->fail_err;
    rc = -KV_EFAILED;
done:
    if (--w->cutting == 0)
        pthread_cond_broadcast(&w->cv); /* the appenders waiting at the door */
    kv_leave_locked(w);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

void kv_wal_last_error(kv_wal *w, kv_error *err)
{
    pthread_mutex_lock(&w->mu);
    *err = w->last_err;
    pthread_mutex_unlock(&w->mu);
}

void kv_wal_stats(kv_wal *w, kv_stats *st)
{
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&w->mu);
    st->segments = w->nsegs;
    uint64_t last = w->failed ? w->durable_seq : w->next_seq - 1;
    st->first_seq = last >= w->front ? w->front : 0;
    st->last_seq = last >= w->front ? last : 0;
    st->next_seq = w->next_seq;
    st->durable_seq = w->durable_seq;
    for (size_t i = 0; i < w->nsegs; i++)
        st->bytes += w->segs[i].end > KV_SEG_HEADER_SIZE ? w->segs[i].end - KV_SEG_HEADER_SIZE : 0;
    st->writes = __atomic_load_n(&w->io.writes, __ATOMIC_RELAXED);
    st->fsyncs = __atomic_load_n(&w->io.fsyncs, __ATOMIC_RELAXED);
    st->bytes_written = __atomic_load_n(&w->io.bytes_written, __ATOMIC_RELAXED);
    st->direct_writes = __atomic_load_n(&w->direct_writes, __ATOMIC_RELAXED);
    st->torn_bytes = w->torn_bytes;
    st->torn_offset = w->torn_offset;
    st->prepared = w->prep_state == KV_PREP_READY;
    st->failed = w->failed;
    pthread_mutex_unlock(&w->mu);
}

size_t kv_wal_segment_count(kv_wal *w)
{
    pthread_mutex_lock(&w->mu);
    size_t n = w->nsegs;
    pthread_mutex_unlock(&w->mu);
    return n;
}

int kv_wal_segment_info(kv_wal *w, size_t i, kv_segment_info *info)
{
    pthread_mutex_lock(&w->mu);
    int rc = 0;
    if (i >= w->nsegs) {
        rc = -KV_ERANGE;
    } else {
        kv_segment *s = &w->segs[i];
        info->id = s->id;
        info->first_seq = s->first_seq;
        info->count = s->count;
        info->bytes = s->end;
        info->file_size = s->size;
        snprintf(info->path, sizeof info->path, "%s", s->path);
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

size_t kv_wal_finding_count(kv_wal *w) { return w->nfindings; }

int kv_wal_finding(kv_wal *w, size_t i, kv_error *out)
{
    if (i >= w->nfindings)
        return -KV_ERANGE;
    *out = w->findings[i];
    return 0;
}

int kv_wal_inject_fault(kv_wal *w, int op, int err_no, uint64_t after, uint64_t times)
{
    __atomic_store_n(&w->io.err_no, err_no, __ATOMIC_RELEASE);
    __atomic_store_n(&w->io.times, times, __ATOMIC_RELEASE);
    __atomic_store_n(&w->io.after, after, __ATOMIC_RELEASE);
    __atomic_store_n(&w->io.op, op, __ATOMIC_RELEASE);
    return 0;
}
