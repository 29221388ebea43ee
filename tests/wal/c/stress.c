/* Stress for the WAL's threading, driven by tests/wal/test_stress_c.py: appenders race with
 * rotation (mode "rotate") or with close (mode "close"), at C speed, which Python's GIL would
 * slow too much to open the windows these races need. Every append that returned a seq is then
 * checked after a reopen: present, and with the bytes it was given.
 *
 *   stress DIR rotate|close ROUNDS      exit 0: all good; 1: a check failed (printed). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

#define THREADS 3
#define MAX_ACKS 2000000
/* Bytes a "rotate" round appends at most: ~64 rotations of 1 MiB segments. Bounded by time
 * alone, the rounds wrote 2 GB per run on a fast disk. */
#define ROTATE_BUDGET (64ull << 20)

typedef struct {
    uint64_t seq;
    uint32_t len;
    unsigned char fill;
} ack;

static kv_wal *w;
static atomic_int stop;
static int close_mode;
static ack acks[THREADS][MAX_ACKS];
static size_t nacks[THREADS];
static atomic_int bad;
static atomic_ullong appended;

static void *appender(void *arg)
{
    long t = (long)arg;
    static __thread char buf[2048];
    for (uint32_t i = 0; !stop && nacks[t] < MAX_ACKS; i++) {
        uint32_t len = close_mode ? 100 + 8 * (uint32_t)t : 60 + 300 * (uint32_t)t;
        if (!close_mode && atomic_fetch_add(&appended, len) >= ROTATE_BUDGET)
            break;
        unsigned char fill = (unsigned char)(i * 7 + t);
        memset(buf, fill, len);
        int64_t seq = kv_wal_append(w, 0, buf, len);
        if (seq == -KV_ECLOSED)
            break;
        if (seq < 0) {
            kv_error e;
            kv_wal_last_error(w, &e);
            fprintf(stderr, "append failed: %lld %s\n", (long long)seq, e.msg);
            bad = 1;
            break;
        }
        acks[t][nacks[t]++] = (ack){(uint64_t)seq, len, fill};
    }
    return NULL;
}

static int verify(const char *dir, kv_options *o)
{
    kv_wal *r = open_log(dir, o, "reopen");
    if (!r)
        return 1;
    int rc = 0;
    for (int t = 0; t < THREADS && !rc; t++)
        for (size_t i = 0; i < nacks[t] && !rc; i++)
            rc = !record_is(r, acks[t][i].seq, acks[t][i].len, acks[t][i].fill);
    close_log(r);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    const char *dir = argv[1];
    close_mode = strcmp(argv[2], "close") == 0;
    int rounds = atoi(argv[3]);
    for (int round = 0; round < rounds; round++) {
        if (remove_dir(dir))
            return 2;
        kv_options o = {.segment_size = 1u << 20,
                        .sync_mode = KV_SYNC_NONE,
                        .buffer_size = 4096};
        w = open_log(dir, &o, "open");
        if (!w)
            return 1;
        stop = 0;
        appended = 0;
        memset(nacks, 0, sizeof nacks);
        pthread_t th[THREADS];
        for (long t = 0; t < THREADS; t++)
            pthread_create(&th[t], NULL, appender, (void *)t);
        usleep(close_mode ? 20000 : 300000);
        kv_error e;
        if (close_mode)
            kv_wal_close(w, &e); /* while the appenders run */
        stop = 1;
        for (int t = 0; t < THREADS; t++)
            pthread_join(th[t], NULL);
        close_log(w);
        if (bad || verify(dir, &o))
            return 1;
    }
    return 0;
}
