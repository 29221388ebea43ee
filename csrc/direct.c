/* Writes that are synced at once go through O_DIRECT, a whole 4 KiB block at a time.
 *
 * Why: a durable append is a write and a device cache flush. Through the page cache the write
 * is a dirty page that fdatasync has to find, submit and wait for; with O_DIRECT the write is
 * on the device when pwrite returns and fdatasync has only the flush left. Measured here on
 * pre-written segments, 100-byte records, write + fdatasync alternating with the same on a
 * direct descriptor in blocks of 500: median 150 -> 136 us, 156 -> 149, 131 -> 121, 154 -> 138
 * (8% less on average). Writes of at most two blocks go this way: a lone appender's record,
 * and a group commit of small records, ~1 KB for 8 threads, a quarter of which cross a block
 * boundary. Taking those too (the rule was one block) made 8 threads' group-commit cycle in
 * C 24-29k -> 27-35k records/s (6 alternating pairs, every one faster; the write + fdatasync
 * of a cycle 204-268 -> 147-215 us), and the 3-node cluster with 64 clients 3,192 -> 3,430,
 * 4,027 -> 4,820, 4,767 -> 5,183 puts/s (three ABBA blocks). Larger writes (big batches)
 * measured faster too in a loop (10 KB: 135 -> 119 us), but all of them direct made the
 * cluster with 64 clients slower (-9%, 6 of 8 paired runs; cause not found): they stay
 * buffered, as do writes that are not synced at once (sync="none", batches before sync()),
 * for which the page cache is the point.
 *
 * O_DIRECT wants the file offset, the length and the memory aligned, so each write covers the
 * blocks from the one holding its first byte to the one holding its last: the bytes before it
 * in the first block come from `tail`, a copy of the last partly written block, and the rest
 * of the last block is zeros (the segment is zero after its last record; see prepare.c). That
 * rewrites bytes already durable, as writing back a page cache page does. A write that would
 * pass the end of the pre-written file, a file system without O_DIRECT (tmpfs) or an offset
 * it refuses (EINVAL) falls back to the buffered write.
 *
 * Every function here runs in the thread that owns the I/O (io_busy set, see encoder.c) or,
 * for kv_direct_reset, under the mutex with no I/O in flight: the state needs no lock. */
#define _GNU_SOURCE /* O_DIRECT */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wal_internal.h"

enum { KV_DIO_UNTRIED = 0, KV_DIO_OPEN = 1, KV_DIO_OFF = 2 };
#define KV_DIO_BLOCK 4096u
#define KV_DIO_MAX_BLOCKS 2u /* the most a direct write covers (see above) */
#define KV_NO_BLOCK UINT64_MAX

void kv_direct_init(kv_wal *w)
{
    w->dio_fd = -1;
    w->dio_state = KV_DIO_UNTRIED;
    w->dio_buf = w->dio_tail = NULL;
    w->dio_cap = 0;
    w->dio_tail_block = KV_NO_BLOCK;
}

void kv_direct_reset(kv_wal *w)
{
    if (w->dio_fd >= 0)
        close(w->dio_fd);
    w->dio_fd = -1;
    if (w->dio_state == KV_DIO_OPEN)
        w->dio_state = KV_DIO_UNTRIED;
    w->dio_tail_block = KV_NO_BLOCK;
}

void kv_direct_forget_tail(kv_wal *w) { w->dio_tail_block = KV_NO_BLOCK; }

void kv_direct_free(kv_wal *w)
{
    kv_direct_reset(w);
    free(w->dio_buf);
    free(w->dio_tail);
    w->dio_buf = w->dio_tail = NULL;
    w->dio_cap = 0;
}

/* Turns the direct path off for good (this file system or this offset is refused). */
static int give_up(kv_wal *w)
{
    kv_direct_reset(w);
    w->dio_state = KV_DIO_OFF;
    return KV_DIRECT_NO;
}

int kv_direct_write(kv_wal *w, int fd, const char *path, const unsigned char *data, size_t len,
                    uint64_t off, uint64_t file_size)
{
    if (w->dio_state == KV_DIO_OFF || len == 0)
        return KV_DIRECT_NO;
    uint64_t first = off / KV_DIO_BLOCK, end = off + len;
    uint64_t last = (end + KV_DIO_BLOCK - 1) / KV_DIO_BLOCK; /* one past the last block */
    size_t head = (size_t)(off - first * KV_DIO_BLOCK);
    size_t total = (size_t)((last - first) * KV_DIO_BLOCK);
    if (last - first > KV_DIO_MAX_BLOCKS || last * KV_DIO_BLOCK > file_size)
        return KV_DIRECT_NO; /* too many blocks (see above), or past the pre-written file */
    if (w->dio_state == KV_DIO_UNTRIED) {
        w->dio_fd = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC);
        if (w->dio_fd < 0)
            return give_up(w);
        w->dio_state = KV_DIO_OPEN;
    }
    if (w->dio_tail == NULL && posix_memalign((void **)&w->dio_tail, KV_DIO_BLOCK, KV_DIO_BLOCK))
        return KV_DIRECT_NO; /* no memory: the buffered write needs none */
    if (total > w->dio_cap) {
        void *p;
        if (posix_memalign(&p, KV_DIO_BLOCK, total))
            return KV_DIRECT_NO;
        free(w->dio_buf);
        w->dio_buf = p;
        w->dio_cap = total;
    }
    if (head > 0 && w->dio_tail_block != first) {
        /* The block's earlier bytes, through the page cache (kept valid by buffered writes;
         * after direct ones this copy is kept instead). */
        ssize_t r;
        do
            r = pread(fd, w->dio_tail, KV_DIO_BLOCK, (off_t)(first * KV_DIO_BLOCK));
        while (r < 0 && errno == EINTR);
        if (r != (ssize_t)KV_DIO_BLOCK)
            return KV_DIRECT_NO;
        w->dio_tail_block = first;
    }
    unsigned char *out = w->dio_buf;
    memcpy(out, w->dio_tail, head);
    memcpy(out + head, data, len);
    memset(out + head + len, 0, total - head - len);
    int e = kv_io_pwrite(&w->io, w->dio_fd, out, total, first * KV_DIO_BLOCK);
    if (e == EINVAL)
        return give_up(w); /* alignment this file system does not take */
    if (e) {
        w->dio_tail_block = KV_NO_BLOCK;
        return e;
    }
    if (end % KV_DIO_BLOCK) {
        memcpy(w->dio_tail, out + total - KV_DIO_BLOCK, KV_DIO_BLOCK);
        w->dio_tail_block = last - 1;
    } else {
        w->dio_tail_block = KV_NO_BLOCK; /* the next write starts a fresh block */
    }
    __atomic_add_fetch(&w->direct_writes, 1, __ATOMIC_RELAXED);
    return 0;
}
