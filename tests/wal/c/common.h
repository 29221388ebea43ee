/* What the C race drivers in tests/wal/c/ share: a fresh directory per round, and the check
 * of one acknowledged record after a reopen. */
#ifndef KEYVAL_TESTS_WAL_COMMON_H
#define KEYVAL_TESTS_WAL_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wal.h"

/* Removes dir and everything in it; 0 on success. */
static int remove_dir(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) != 0;
}

/* kv_wal_open, saying why on stderr when it fails. */
static kv_wal *open_log(const char *dir, const kv_options *o, const char *when)
{
    kv_error e;
    kv_wal *w = kv_wal_open(dir, o, &e);
    if (!w)
        fprintf(stderr, "%s failed: %s\n", when, e.msg);
    return w;
}

/* Closes and frees a log opened to be checked. */
static void close_log(kv_wal *r)
{
    kv_error e;
    kv_wal_close(r, &e);
    kv_wal_free(r);
}

/* Whether record seq of r holds len bytes, every one of them fill; says why not on stderr. */
static int record_is(kv_wal *r, uint64_t seq, uint32_t len, unsigned char fill)
{
    static char out[4096];
    size_t n, used;
    int got = kv_wal_read_batch(r, seq, 1, out, sizeof out, &n, &used);
    uint32_t stored = 0;
    if (got == 0 && n == 1)
        memcpy(&stored, out + 8, 4);
    int same = got == 0 && n == 1 && stored == len;
    for (uint32_t k = 0; same && k < len; k++)
        same = (unsigned char)out[16 + k] == fill;
    if (!same)
        fprintf(stderr, "acknowledged seq %llu is missing or not its own after reopen (rc %d)\n",
                (unsigned long long)seq, got);
    return same;
}

#endif
