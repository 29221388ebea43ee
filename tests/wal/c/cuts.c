/* Truncation racing the other calls of the WAL, driven by tests/wal/test_stress_c.py at C speed
 * (Python's GIL would close the windows these races need):
 *
 *   cuts DIR back ROUNDS    durable appenders while another thread truncate_backs: no append
 *                           may hang, and every acknowledged record that no cut ending after
 *                           its append began removed must hold its bytes after a reopen.
 *   cuts DIR front ROUNDS   a reader while appenders write and another thread truncate_fronts
 *                           (sync "none", so reads flush and free the mutex): every read gives
 *                           whole records or says the seq is gone, never garbage or corruption.
 *   cuts DIR both ROUNDS    two threads truncate_back to the front while another truncate_fronts
 *                           to the end, beside appenders and a reader (sync "none"): a cut may
 *                           find itself out of range (ERANGE), but the log reopens and every
 *                           record in it is whole. truncate_back checked its bounds before the
 *                           flush that frees the mutex and cut with them after it: it read
 *                           outside a segment's offsets, zeroed a segment header, or left a
 *                           log whose bounds file started past its end.
 *
 * exit 0: all good; 1: a check failed (printed); a hang is caught by the caller's timeout. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#define APPENDERS 3
#define MAX_ACKS 200000
#define MAX_CUTS 100000
#define RECORD 64 /* bytes of every record */

typedef struct {
    uint64_t seq, tick; /* tick: taken just before the append was called */
    unsigned char fill;
} ack;

typedef struct {
    uint64_t below, ended; /* records >= below removed; the tick after the call returned */
} cut;

static kv_wal *w;
static atomic_int stop, bad;
static atomic_ullong clock_ticks;
static ack acks[APPENDERS][MAX_ACKS];
static size_t nacks[APPENDERS];
static cut cuts[MAX_CUTS];
static size_t ncuts;

static void fail(const char *what, long long v)
{
    fprintf(stderr, "%s (%lld)\n", what, v);
    bad = 1;
}

static void *appender(void *arg)
{
    long t = (long)arg;
    char buf[RECORD];
    for (uint32_t i = 0; !stop && nacks[t] < MAX_ACKS; i++) {
        unsigned char fill = (unsigned char)(i * 7 + t * 50 + 1);
        memset(buf, fill, sizeof buf);
        /* Ticked before the call: a tick taken after it returned could come after the end of
         * a cut that removed the record (this thread preempted in between), and the record
         * would be wrongly expected. A cut ending before the append began cannot remove it. */
        uint64_t started = ++clock_ticks;
        int64_t seq = kv_wal_append(w, 0, buf, sizeof buf);
        if (seq < 0) {
            fail("append failed", seq);
            break;
        }
        acks[t][nacks[t]++] = (ack){(uint64_t)seq, started, fill};
    }
    return NULL;
}

static void *back_cutter(void *arg)
{
    unsigned r = 1;
    while (!stop && ncuts < MAX_CUTS) {
        r = r * 1103515245u + 12345u;
        uint64_t next = kv_wal_next_seq(w);
        uint64_t to = next > 8 ? next - 1 - (r >> 16) % 6 : 0;
        if (to < 2)
            continue;
        int rc = kv_wal_truncate_back(w, to);
        if (rc < 0) {
            fail("truncate_back failed", rc);
            break;
        }
        cuts[ncuts++] = (cut){to + 1, ++clock_ticks};
        usleep(200);
    }
    return NULL;
}

static void *front_cutter(void *arg)
{
    while (!stop) {
        uint64_t next = kv_wal_next_seq(w);
        if (next > 50) {
            int rc = kv_wal_truncate_front(w, next - 40);
            if (rc < 0) {
                fail("truncate_front failed", rc);
                break;
            }
        }
        usleep(100);
    }
    return NULL;
}

/* "both": cut everything but the first record, or move the front to the last one. */
static void *crossing_cutter(void *arg)
{
    long front = (long)arg;
    while (!stop) {
        int rc = front ? kv_wal_truncate_front(w, kv_wal_next_seq(w) - 1)
                       : kv_wal_truncate_back(w, kv_wal_first_seq(w));
        if (rc < 0 && rc != -KV_ERANGE) {
            fail(front ? "truncate_front failed" : "truncate_back failed", rc);
            break;
        }
    }
    return NULL;
}

static void *reader(void *arg)
{
    static char out[1 << 16];
    while (!stop) {
        uint64_t first = kv_wal_first_seq(w);
        if (first == 0)
            continue;
        size_t n, used;
        int rc = kv_wal_read_batch(w, first, 200, out, sizeof out, &n, &used);
        if (rc == -KV_ERANGE)
            continue; /* the front moved past it: fine */
        if (rc < 0) {
            kv_error e;
            kv_wal_last_error(w, &e);
            fprintf(stderr, "read: %s\n", e.msg);
            fail("read failed", rc);
            break;
        }
        size_t pos = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t len;
            memcpy(&len, out + pos + 8, 4);
            if (len != RECORD) {
                fail("a record of the wrong length was read", len);
                return NULL;
            }
            for (uint32_t k = 1; k < len; k++)
                if (out[pos + 16 + k] != out[pos + 16]) {
                    fail("a record with mixed bytes was read", (long long)i);
                    return NULL;
                }
            pos += 16 + RECORD;
        }
    }
    return NULL;
}

/* "both": the log reopens, and every record in it is whole. */
static int verify_whole(const char *dir, kv_options *o)
{
    kv_wal *r = open_log(dir, o, "reopen");
    if (!r)
        return 1;
    uint64_t first = kv_wal_first_seq(r), last = kv_wal_last_seq(r);
    int rc = 0;
    for (uint64_t seq = first; seq && seq <= last && !rc; seq++) {
        static char out[4096];
        size_t n, used;
        int e = kv_wal_read_batch(r, seq, 1, out, sizeof out, &n, &used);
        uint32_t len;
        memcpy(&len, out + 8, 4);
        if (e < 0 || n != 1 || len != RECORD) {
            fprintf(stderr, "record %llu of %llu..%llu: rc %d, %zu records, length %u\n",
                    (unsigned long long)seq, (unsigned long long)first,
                    (unsigned long long)last, e, n, len);
            rc = 1;
            break;
        }
        for (uint32_t k = 1; k < len && !rc; k++)
            rc = out[16 + k] != out[16];
    }
    close_log(r);
    return rc;
}

/* Every acknowledged record that no cut ending after its append began removed. */
static int verify(const char *dir, kv_options *o)
{
    kv_wal *r = open_log(dir, o, "reopen");
    if (!r)
        return 1;
    int rc = 0;
    for (int t = 0; t < APPENDERS && !rc; t++)
        for (size_t i = 0; i < nacks[t] && !rc; i++) {
            ack a = acks[t][i];
            int removed = 0;
            for (size_t c = ncuts; c-- > 0 && cuts[c].ended > a.tick;)
                removed |= cuts[c].below <= a.seq;
            if (removed)
                continue;
            rc = !record_is(r, a.seq, RECORD, a.fill);
        }
    close_log(r);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    const char *dir = argv[1];
    int back = strcmp(argv[2], "back") == 0, both = strcmp(argv[2], "both") == 0;
    int rounds = atoi(argv[3]);
    for (int round = 0; round < rounds; round++) {
        if (remove_dir(dir))
            return 2;
        kv_options o = {.segment_size = 1u << 20,
                        .sync_mode = back ? KV_SYNC_ALWAYS : KV_SYNC_NONE,
                        .buffer_size = 4096};
        w = open_log(dir, &o, "open");
        if (!w)
            return 1;
        stop = 0;
        ncuts = 0;
        memset(nacks, 0, sizeof nacks);
        pthread_t th[APPENDERS + 4];
        int threads = APPENDERS + 2;
        for (long t = 0; t < APPENDERS; t++)
            pthread_create(&th[t], NULL, appender, (void *)t);
        if (both) {
            for (long t = 0; t < 3; t++) /* two cut the back, one moves the front */
                pthread_create(&th[APPENDERS + t], NULL, crossing_cutter, (void *)(long)(t == 2));
            threads = APPENDERS + 4;
        } else {
            pthread_create(&th[APPENDERS], NULL, back ? back_cutter : front_cutter, NULL);
        }
        pthread_create(&th[threads - 1], NULL, reader, NULL);
        usleep(300000);
        stop = 1;
        for (int t = 0; t < threads; t++)
            pthread_join(th[t], NULL);
        kv_error e;
        if (kv_wal_close(w, &e) != 0)
            fail(e.msg, 0);
        kv_wal_free(w);
        if (bad || (back && verify(dir, &o)) || (both && verify_whole(dir, &o)))
            return 1;
    }
    return 0;
}
