/* System calls on the write path, behind one seam so that tests can make any of them fail
 * (kv_wal_inject_fault) and so that every write and fsync is counted. */
#include <errno.h>
#include <sys/uio.h>
#include <unistd.h>

#include "wal_internal.h"

/* Decrements the countdown of an armed fault on `op`; returns the errno to fail with, or 0. */
static int fault_fires(kv_io *io, int op)
{
    if (__atomic_load_n(&io->op, __ATOMIC_ACQUIRE) != op)
        return 0;
    uint64_t left = __atomic_load_n(&io->after, __ATOMIC_ACQUIRE);
    while (left > 0) {
        if (__atomic_compare_exchange_n(&io->after, &left, left - 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return 0;
    }
    uint64_t times = __atomic_load_n(&io->times, __ATOMIC_ACQUIRE);
    while (times > 0) {
        if (__atomic_compare_exchange_n(&io->times, &times, times - 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            if (times == 1)
                __atomic_store_n(&io->op, KV_FAULT_NONE, __ATOMIC_RELEASE);
            return io->err_no;
        }
    }
    return 0;
}

int kv_io_prepare_fault(kv_io *io) { return fault_fires(io, KV_FAULT_PREPARE); }

int kv_io_pwrite(kv_io *io, int fd, const void *buf, size_t len, uint64_t off)
{
    return kv_io_pwritev2(io, fd, buf, len, NULL, 0, off);
}

int kv_io_pwritev2(kv_io *io, int fd, const void *a, size_t alen, const void *b, size_t blen,
                   uint64_t off)
{
    int e = fault_fires(io, KV_FAULT_WRITE);
    if (e)
        return e;
    struct iovec iov[2] = {{(void *)a, alen}, {(void *)b, blen}};
    int n = blen ? 2 : 1;
    struct iovec *v = iov;
    while (n > 0) {
        ssize_t w = pwritev(fd, v, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        __atomic_add_fetch(&io->bytes_written, (uint64_t)w, __ATOMIC_RELAXED);
        off += (uint64_t)w;
        /* A short write is legal (and happens near a full disk): go on from where it stopped. */
        while (n > 0 && (size_t)w >= v->iov_len) {
            w -= (ssize_t)v->iov_len;
            v++;
            n--;
        }
        if (n > 0) {
            v->iov_base = (char *)v->iov_base + w;
            v->iov_len -= (size_t)w;
        }
    }
    __atomic_add_fetch(&io->writes, 1, __ATOMIC_RELAXED);
    return 0;
}

int kv_io_fdatasync(kv_io *io, int fd)
{
    int e = fault_fires(io, KV_FAULT_FSYNC);
    if (e)
        return e;
    __atomic_add_fetch(&io->fsyncs, 1, __ATOMIC_RELAXED);
    /* Never retried on failure: after a failed fdatasync the kernel may have dropped the dirty
     * pages, and a second call can then report success for data that is gone. */
    if (fdatasync(fd) < 0)
        return errno;
    return 0;
}

int kv_io_fsync_dir(kv_io *io, int dirfd)
{
    int e = fault_fires(io, KV_FAULT_FSYNC);
    if (e)
        return e;
    __atomic_add_fetch(&io->fsyncs, 1, __ATOMIC_RELAXED);
    if (fsync(dirfd) < 0)
        return errno;
    return 0;
}
