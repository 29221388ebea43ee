/* The read path: verifying records as a segment is scanned, and copying records out. */
#include <string.h>

#include "crc32c.h"
#include "wal_internal.h"

static int all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* The CRC32C state after a segment's salt: where every record's CRC of that segment starts. */
static uint32_t salt_crc(const kv_segment *s)
{
    unsigned char salt[8];
    kv_put64(salt, s->salt);
    return kv_crc32c(0, salt, 8);
}

/* kv_record_valid_at with the segment's salt CRC already known (a scan computes it once). */
static int record_valid(const kv_segment *s, uint64_t off, uint64_t expected, uint32_t crc)
{
    if (off + KV_REC_HEADER_SIZE > s->size)
        return 0;
    const unsigned char *p = s->map + off;
    if (kv_get64(p + 8) != expected)
        return 0;
    uint32_t len = kv_get32(p + 4);
    if ((uint64_t)len > s->size - off - KV_REC_HEADER_SIZE)
        return 0;
    /* Header (after the CRC field) and payload are contiguous: one pass covers both. */
    crc = kv_crc32c(crc, p + 4, KV_REC_HEADER_SIZE - 4 + (size_t)len);
    return crc == kv_get32(p);
}

int kv_record_valid_at(const kv_segment *s, uint64_t off, uint64_t expected)
{
    return record_valid(s, off, expected, salt_crc(s));
}

kv_stop kv_scan_segment(kv_segment *s, uint64_t expected)
{
    uint64_t off = KV_SEG_HEADER_SIZE;
    uint32_t crc0 = salt_crc(s);
    s->count = 0;
    for (;;) {
        if (off + KV_REC_HEADER_SIZE > s->size) {
            s->end = off;
            return KV_STOP_END;
        }
        if (all_zero(s->map + off, KV_REC_HEADER_SIZE)) {
            s->end = off;
            return KV_STOP_ZERO;
        }
        if (!record_valid(s, off, expected, crc0)) {
            s->end = off;
            return KV_STOP_BAD;
        }
        if (kv_segment_push_offset(s, (uint32_t)off) != 0) {
            s->end = off; /* out of memory: treated as a bad record, which fails the open */
            return KV_STOP_BAD;
        }
        off += kv_record_size(kv_get32(s->map + off + 4));
        expected++;
    }
}

static uint64_t last_visible(const kv_wal *w)
{
    /* After a failure only what reached stable storage is shown: the rest may be lost. */
    return w->failed ? w->durable_seq : w->next_seq - 1;
}

/* The segment holding seq (which must be inside the log). */
static kv_segment *segment_of(kv_wal *w, uint64_t seq)
{
    size_t lo = 0, hi = w->nsegs;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (w->segs[mid].first_seq <= seq)
            lo = mid;
        else
            hi = mid;
    }
    return &w->segs[lo];
}

/* Where a read puts the records it copies (the framed layout of kv_wal_read_batch). */
typedef struct {
    char *out;
    size_t cap, pos;
} read_sink;

/* Bytes a record of len payload bytes takes in the framed layout. */
static size_t framed_size(uint32_t len)
{
    return 16 + (((size_t)len + 7) & ~(size_t)7);
}

/* Appends one record to the sink; 0 when it does not fit. */
static int sink_put(read_sink *k, uint64_t seq, const unsigned char *rec, uint32_t len)
{
    size_t need = framed_size(len);
    if (k->pos + need > k->cap)
        return 0;
    unsigned char *o = (unsigned char *)k->out + k->pos;
    kv_put64(o, seq);
    kv_put32(o + 8, len);
    o[12] = rec[16];
    o[13] = o[14] = o[15] = 0;
    memcpy(o + 16, rec + KV_REC_HEADER_SIZE, len);
    memset(o + 16 + len, 0, need - 16 - len);
    k->pos += need;
    return 1;
}

/* Copies records out, each verified as it is copied. A record that does not fit ends the
 * batch; KV_ESPACE with *need when not even the first one fits. */
static int read_records(kv_wal *w, uint64_t start, size_t max_records, read_sink *k,
                        size_t *n_records, size_t *need)
{
    *n_records = 0;
    *need = 0;
    int rc = kv_lock_enter(w);
    if (rc)
        return rc;
    uint64_t last;
    for (int flushed = 0;; flushed = 1) {
        last = last_visible(w);
        if (start < w->front || start > last + 1) {
            kv_set_error(&w->last_err, KV_ERANGE, 0, w->dir, -1,
                         "seq %llu is outside the log [%llu, %llu]", (unsigned long long)start,
                         (unsigned long long)w->front, (unsigned long long)last);
            rc = -KV_ERANGE;
            goto done;
        }
        if (start > last || max_records == 0)
            goto done;
        if (w->failed || w->written_seq >= last)
            break;
        if (flushed) {
            /* Appends came while the mutex was free: what was written is read now. */
            last = w->written_seq;
            if (start > last)
                goto done;
            break;
        }
        /* Records still in the user-space buffer are written (not synced) so that they can be
         * read from the mapping like every other. The flush may free the mutex (to write, or
         * to wait for another thread's I/O), and a truncate_front or truncate_back may run
         * meanwhile: the bounds are checked again after it, never used stale. */
        int e = kv_flush_locked(w, 0, 0, 0);
        if (e) {
            rc = e;
            goto done;
        }
    }
    uint64_t seq = start;
    kv_segment *s = segment_of(w, seq);
    uint32_t crc0 = salt_crc(s);
    while (seq <= last && *n_records < max_records) {
        while (seq >= s->first_seq + s->count) {
            s++;
            crc0 = salt_crc(s);
        }
        uint64_t at = s->offs[seq - s->first_seq];
        const unsigned char *rec = s->map + at;
        uint32_t len = kv_get32(rec + 4);
        /* Verified again on every read: the page cache may have re-read a disk that rotted
         * since the log was opened. */
        if (!record_valid(s, at, seq, crc0)) {
            if (*n_records > 0)
                break; /* the records before it first; the next read reports it */
            kv_set_error(&w->last_err, KV_ECORRUPT, 0, s->path, (int64_t)at,
                         "record %llu fails its CRC32C on read", (unsigned long long)seq);
            rc = -KV_ECORRUPT;
            goto done;
        }
        if (!sink_put(k, seq, rec, len)) {
            if (*n_records == 0) {
                *need = framed_size(len);
                rc = -KV_ESPACE;
            }
            break;
        }
        (*n_records)++;
        seq++;
    }
done:
    kv_leave_locked(w);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int kv_wal_read_batch(kv_wal *w, uint64_t start, size_t max_records, char *out, size_t cap,
                      size_t *n_records, size_t *used)
{
    read_sink k = {.out = out, .cap = cap};
    size_t need;
    int rc = read_records(w, start, max_records, &k, n_records, &need);
    *used = rc == -KV_ESPACE ? need : k.pos;
    return rc;
}
