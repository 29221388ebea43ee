/* The write index over-counts after an append too big for the buffer fails with ENOMEM
 * (append_direct_locked increments buf_records before kv_segment_push_offset can fail, and the
 * failure is not fail-stop). Built with -Wl,--wrap=realloc so that one realloc can be made to
 * fail.
 *
 *   index_enomem DIR
 *
 * Records 1..1024 are appended and synced (1024 fills the first offs array), an append too big
 * for the buffer then fails (its realloc fails), record 1025 is appended and synced. Record
 * 1024 was synced before 1025 was written, so its index must be 0. Then record 1024 is zeroed
 * (a disk losing a synced block) and the log reopened: that must be reported as corruption,
 * as it is without the failed append (the control run). exit 0: both report corruption; 1:
 * the run with the failed append opened and cut acknowledged records. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "format.h"

static int fail_realloc;
void *__real_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n)
{
    if (fail_realloc)
        return NULL;
    return __real_realloc(p, n);
}

static char segpath[4200];

static int find_segment(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, ".wal")) {
            snprintf(segpath, sizeof segpath, "%s/%s", dir, e->d_name);
            found = 1;
        }
    if (d)
        closedir(d);
    return found;
}

/* Returns 1 when reopening after zeroing record 1024 reports corruption, 0 when it opens. */
static int run(const char *dir, int enomem, unsigned *index_1025)
{
    remove_dir(dir);
    kv_options o = {.segment_size = 1 << 20, .sync_mode = KV_SYNC_NONE, .buffer_size = 4096};
    kv_wal *w = open_log(dir, &o, "open");
    if (!w)
        exit(2);
    char small[16], s_rec[600], big[8192];
    memset(small, 'a', sizeof small);
    memset(s_rec, 's', sizeof s_rec);
    memset(big, 'b', sizeof big);
    for (int i = 1; i < 1024; i++)
        kv_wal_append(w, 0, small, sizeof small);
    if (kv_wal_append(w, 0, s_rec, sizeof s_rec) != 1024 || kv_wal_sync(w) != 0)
        exit(2); /* record 1024 is acknowledged (durable) */
    if (enomem) {
        fail_realloc = 1;
        int64_t rc = kv_wal_append(w, 0, big, sizeof big);
        fail_realloc = 0;
        if (rc >= 0) {
            fprintf(stderr, "the big append did not fail\n");
            exit(2);
        }
    }
    if (kv_wal_append(w, 0, small, sizeof small) != 1025 || kv_wal_sync(w) != 0)
        exit(2); /* 1025 is written after 1024's fdatasync returned */
    close_log(w);
    if (!find_segment(dir))
        exit(2);
    int fd = open(segpath, O_RDWR);
    static unsigned char seg[1 << 20];
    if (pread(fd, seg, sizeof seg, 0) != (ssize_t)sizeof seg)
        exit(2);
    uint64_t off = KV_SEG_HEADER_SIZE, s_off = 0;
    while (kv_get64(seg + off + 8) != 1025) {
        if (kv_get64(seg + off + 8) == 1024)
            s_off = off;
        off += kv_record_size(kv_get32(seg + off + 4));
    }
    *index_1025 = kv_get16(seg + off + 18);
    /* The disk loses record 1024 (synced): zeros from it up to record 1025. */
    static unsigned char zeros[4096];
    if (pwrite(fd, zeros, off - s_off, (off_t)s_off) != (ssize_t)(off - s_off))
        exit(2);
    close(fd);
    kv_error e;
    kv_wal *r = kv_wal_open(dir, &o, &e);
    if (!r) {
        fprintf(stderr, "%s: reopen refused: %s\n", enomem ? "after ENOMEM" : "control", e.msg);
        return 1;
    }
    fprintf(stderr, "%s: reopen cut records 1024.. : next seq %llu\n",
            enomem ? "after ENOMEM" : "control", (unsigned long long)kv_wal_next_seq(r));
    close_log(r);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    unsigned ia, ib;
    int control = run(argv[1], 0, &ia);
    int after = run(argv[1], 1, &ib);
    fprintf(stderr, "write index of 1025: control %u, after the failed append %u\n", ia, ib);
    return control && after ? 0 : 1;
}
