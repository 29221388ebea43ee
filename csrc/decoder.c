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

int kv_record_valid_at(const kv_segment *s, uint64_t off, uint64_t expected)
{
    if (off + KV_REC_HEADER_SIZE > s->size)
        return 0;
    const unsigned char *p = s->map + off;
    if (kv_get64(p + 8) != expected)
        return 0;
    uint32_t len = kv_get32(p + 4);
    if ((uint64_t)len > s->size - off - KV_REC_HEADER_SIZE)
        return 0;
    unsigned char salt[8];
    kv_put64(salt, s->salt);
    uint32_t crc = kv_crc32c(0, salt, 8);
    crc = kv_crc32c(crc, p + 4, KV_REC_HEADER_SIZE - 4);
    crc = kv_crc32c(crc, p + KV_REC_HEADER_SIZE, len);
    return crc == kv_get32(p);
}

kv_stop kv_scan_segment(kv_segment *s, uint64_t expected)
{
    uint64_t off = KV_SEG_HEADER_SIZE;
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
        if (!kv_record_valid_at(s, off, expected)) {
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

int kv_wal_read_batch(kv_wal *w, uint64_t start, size_t max_records, char *out, size_t cap,
                      size_t *n_records, size_t *used)
{
    *n_records = 0;
    *used = 0;
    pthread_mutex_lock(&w->mu);
    int rc = KV_OK;
    if (w->closing) {
        rc = -KV_ECLOSED;
        goto done;
    }
    uint64_t last = last_visible(w);
    if (start < w->front || start > last + 1) {
        kv_set_error(&w->last_err, KV_ERANGE, 0, w->dir, -1,
                     "seq %llu is outside the log [%llu, %llu]", (unsigned long long)start,
                     (unsigned long long)w->front, (unsigned long long)last);
        rc = -KV_ERANGE;
        goto done;
    }
    if (start > last || max_records == 0)
        goto done;
    if (!w->failed && w->written_seq < last) {
        /* Records still in the user-space buffer are written (not synced) so that they can be
         * read from the mapping like every other. */
        int e = kv_flush_locked(w, 0, 0, 0);
        if (e) {
            rc = e;
            goto done;
        }
    }
    size_t pos = 0;
    uint64_t seq = start;
    kv_segment *s = segment_of(w, seq);
    while (seq <= last && *n_records < max_records) {
        while (seq >= s->first_seq + s->count)
            s++;
        uint64_t at = s->offs[seq - s->first_seq];
        const unsigned char *rec = s->map + at;
        uint32_t len = kv_get32(rec + 4);
        /* Verified again on every read: the page cache may have re-read a disk that rotted
         * since the log was opened. */
        if (!kv_record_valid_at(s, at, seq)) {
            kv_set_error(&w->last_err, KV_ECORRUPT, 0, s->path, (int64_t)at,
                         "record %llu fails its CRC32C on read", (unsigned long long)seq);
            rc = -KV_ECORRUPT;
            goto done;
        }
        size_t need = 16 + (((size_t)len + 7) & ~(size_t)7);
        if (pos + need > cap) {
            if (*n_records == 0) {
                *used = need;
                rc = -KV_ESPACE;
                goto done;
            }
            break;
        }
        unsigned char *o = (unsigned char *)out + pos;
        kv_put64(o, seq);
        kv_put32(o + 8, len);
        o[12] = rec[16];
        o[13] = o[14] = o[15] = 0;
        memcpy(o + 16, rec + KV_REC_HEADER_SIZE, len);
        memset(o + 16 + len, 0, need - 16 - len);
        pos += need;
        (*n_records)++;
        seq++;
    }
    *used = pos;
done:
    pthread_mutex_unlock(&w->mu);
    return rc;
}
