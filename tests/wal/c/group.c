/* Group commit at C speed, driven by tests/wal/test_stress_c.py: eight durable appenders (sync
 * "always": leaders gathering followers, followers taking a leader's I/O over, small groups
 * written through O_DIRECT) mixing single records, batches and records bigger than the buffer
 * (written straight from the caller's memory), while another thread moves the front, syncs,
 * reads and asks for stats and segment info, and the main thread closes the log under them all.
 * stress.c and cuts.c run three appenders, none of them durable but in cuts.c's "back" mode.
 * Every acknowledged record at or after the final front must hold its bytes after a reopen.
 *
 *   group DIR ROUNDS      exit 0: all good; 1: a check failed (printed).
 *
 * Built with -fsanitize=thread (and csrc's sources, as the test builds it) it is the load the
 * TSan review of csrc/ ran: no report in 10 rounds. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#define APPENDERS 8
#define MAX_ACKS 400000
#define BIG 5000 /* bytes: more than the 4 KiB buffer, so appended straight */

typedef struct {
    uint64_t seq;
    uint32_t len;
    unsigned char fill;
} ack;

static kv_wal *w;
static atomic_int stop, bad;
static ack acks[APPENDERS][MAX_ACKS];
static size_t nacks[APPENDERS];

static void fail(const char *what, long long v)
{
    fprintf(stderr, "%s: %lld\n", what, v);
    bad = 1;
}

static void *appender(void *arg)
{
    long t = (long)arg;
    static __thread char buf[BIG + 256];
    uint32_t lens[3] = {40, 48, 56};
    unsigned r = (unsigned)t * 7919u + 1;
    for (uint32_t i = 0; !stop && nacks[t] + 3 < MAX_ACKS; i++) {
        r = r * 1103515245u + 12345u;
        unsigned kind = (r >> 16) % 16;
        unsigned char fill = (unsigned char)(i * 7 + t * 31 + 1);
        if (kind == 0) { /* a batch of three, each record filled with its own byte */
            for (uint32_t k = 0, off = 0; k < 3; off += lens[k], k++)
                memset(buf + off, fill + k, lens[k]);
            int64_t first = kv_wal_append_batch(w, 0, NULL, buf, lens, 3);
            if (first == -KV_ECLOSED)
                break;
            if (first < 0) {
                fail("append_batch failed", first);
                break;
            }
            for (uint32_t k = 0; k < 3; k++)
                acks[t][nacks[t]++] = (ack){(uint64_t)first + k, lens[k], fill + k};
            continue;
        }
        uint32_t len = kind == 1 ? BIG + (r >> 20) % 200 : 20 + (r >> 20) % 200;
        memset(buf, fill, len);
        int64_t seq = kv_wal_append(w, 0, buf, len);
        if (seq == -KV_ECLOSED)
            break;
        if (seq < 0) {
            fail("append failed", seq);
            break;
        }
        acks[t][nacks[t]++] = (ack){(uint64_t)seq, len, fill};
    }
    return NULL;
}

/* Everything else a caller may do meanwhile; ERANGE is a read the front overtook. */
static void *other(void *arg)
{
    static char out[1 << 16];
    for (unsigned k = 0; !stop; k++) {
        int rc = 0;
        switch (k % 5) {
        case 0: {
            uint64_t next = kv_wal_next_seq(w);
            if (next > 400)
                rc = kv_wal_truncate_front(w, next - 300);
            break;
        }
        case 1:
            rc = kv_wal_sync(w);
            break;
        case 2: {
            size_t n, used;
            uint64_t first = kv_wal_first_seq(w);
            if (first)
                rc = kv_wal_read_batch(w, first + 100, 64, out, sizeof out, &n, &used);
            break;
        }
        case 3: {
            kv_stats st;
            kv_wal_stats(w, &st);
            break;
        }
        default: {
            kv_segment_info info;
            size_t n = kv_wal_segment_count(w);
            for (size_t i = 0; i < n; i++)
                kv_wal_segment_info(w, i, &info);
        }
        }
        if (rc < 0 && rc != -KV_ECLOSED && rc != -KV_ERANGE) {
            fail("a call beside the appenders failed", rc);
            break;
        }
    }
    return NULL;
}

/* The records are too big for common.h's record_is. */
static int verify(const char *dir, kv_options *o)
{
    static char out[BIG + 1024];
    kv_wal *r = open_log(dir, o, "reopen");
    if (!r)
        return 1;
    uint64_t front = kv_wal_first_seq(r);
    int rc = 0;
    for (int t = 0; t < APPENDERS && !rc; t++)
        for (size_t i = 0; i < nacks[t] && !rc; i++) {
            ack a = acks[t][i];
            if (a.seq < front)
                continue;
            size_t n, used;
            uint32_t stored = 0;
            int got = kv_wal_read_batch(r, a.seq, 1, out, sizeof out, &n, &used);
            if (got == 0 && n == 1)
                memcpy(&stored, out + 8, 4);
            rc = !(got == 0 && n == 1 && stored == a.len);
            for (uint32_t k = 0; !rc && k < a.len; k++)
                rc = (unsigned char)out[16 + k] != a.fill;
            if (rc)
                fprintf(stderr, "acknowledged seq %llu is missing or not its own (rc %d)\n",
                        (unsigned long long)a.seq, got);
        }
    close_log(r);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    const char *dir = argv[1];
    int rounds = atoi(argv[2]);
    for (int round = 0; round < rounds; round++) {
        if (remove_dir(dir))
            return 2;
        kv_options o = {.segment_size = 256u << 10,
                        .sync_mode = KV_SYNC_ALWAYS,
                        .buffer_size = 4096};
        w = open_log(dir, &o, "open");
        if (!w)
            return 1;
        stop = 0;
        memset(nacks, 0, sizeof nacks);
        pthread_t th[APPENDERS + 1];
        for (long t = 0; t < APPENDERS; t++)
            pthread_create(&th[t], NULL, appender, (void *)t);
        pthread_create(&th[APPENDERS], NULL, other, NULL);
        usleep(500000); /* how long the load runs: no check depends on it */
        kv_error e;
        if (kv_wal_close(w, &e) != 0) /* under them all */
            fail("close failed", e.code);
        stop = 1;
        for (int t = 0; t <= APPENDERS; t++)
            pthread_join(th[t], NULL);
        kv_wal_free(w);
        if (bad || verify(dir, &o))
            return 1;
    }
    return 0;
}
