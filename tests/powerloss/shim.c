/* LD_PRELOAD shim: logs every mutating file system call under $PL_ROOT to $PL_TRACE.
 *
 * Record format (text header line, then raw bytes for writes):
 *   W <ino> <off> <len>\n<len bytes>     data written to inode (any write path, incl. O_DIRECT)
 *   T <ino> <len>                        ftruncate
 *   S <ino>                              fsync/fdatasync of a regular file
 *   D <dirpath>                          fsync of a directory
 *   C <ino> <path>                       create (open O_CREAT that made a new name)
 *   X <ino>                              O_TRUNC on open
 *   R <src> <dst>                        rename
 *   L <src> <dst>                        link
 *   U <path>                             unlink
 *   K <path>                             mkdir
 *   M <text>                             marker: write() to the fd of $PL_MARK
 * Paths are relative to PL_ROOT. A global mutex makes the trace order the execution order:
 * each call is made and logged under it. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int tfd = -1;
static char root[PATH_MAX];
static size_t rootlen;
static char markpath[PATH_MAX];
static int inited;

#define REAL(name) static __typeof__(name) *real_##name; if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name)

static ssize_t (*r_write)(int, const void *, size_t);

static void init(void)
{
    if (inited)
        return;
    inited = 1;
    r_write = dlsym(RTLD_NEXT, "write");
    const char *t = getenv("PL_TRACE"), *r = getenv("PL_ROOT"), *m = getenv("PL_MARK");
    if (!t || !r)
        return;
    int (*r_open)(const char *, int, ...) = dlsym(RTLD_NEXT, "open");
    tfd = r_open(t, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    snprintf(root, sizeof root, "%s", r);
    rootlen = strlen(root);
    if (m)
        snprintf(markpath, sizeof markpath, "%s", m);
}

static void out(const void *b, size_t n)
{
    const char *p = b;
    while (n) {
        ssize_t w = r_write(tfd, p, n);
        if (w <= 0)
            abort();
        p += w;
        n -= (size_t)w;
    }
}

static void logf_(const char *fmt, ...)
{
    char buf[3 * PATH_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    out(buf, (size_t)n);
}

/* Path relative to root, or NULL if outside. Resolves the parent directory only (the last
 * component may not exist). dirfd-relative paths are resolved through /proc. */
static const char *rel(int dirfd, const char *path, char *buf)
{
    if (tfd < 0 || !path)
        return NULL;
    char full[PATH_MAX], dirbuf[PATH_MAX];
    if (path[0] == '/') {
        snprintf(full, sizeof full, "%s", path);
    } else {
        if (dirfd == AT_FDCWD) {
            if (!getcwd(dirbuf, sizeof dirbuf))
                return NULL;
        } else {
            char l[64];
            snprintf(l, sizeof l, "/proc/self/fd/%d", dirfd);
            ssize_t n = readlink(l, dirbuf, sizeof dirbuf - 1);
            if (n < 0)
                return NULL;
            dirbuf[n] = 0;
        }
        snprintf(full, sizeof full, "%s/%s", dirbuf, path);
    }
    /* normalise the parent */
    char *slash = strrchr(full, '/');
    char parent[PATH_MAX], rp[PATH_MAX];
    const char *last;
    if (slash == full) {
        strcpy(parent, "/");
    } else {
        memcpy(parent, full, (size_t)(slash - full));
        parent[slash - full] = 0;
    }
    last = slash + 1;
    if (!realpath(parent, rp))
        return NULL;
    if (strncmp(rp, root, rootlen) || (rp[rootlen] && rp[rootlen] != '/'))
        return NULL;
    const char *r = rp + rootlen;
    if (*r == '/')
        r++;
    if (!*last || !strcmp(last, "."))
        snprintf(buf, PATH_MAX, "%s", *r ? r : ".");
    else if (*r)
        snprintf(buf, PATH_MAX, "%s/%s", r, last);
    else
        snprintf(buf, PATH_MAX, "%s", last);
    return buf;
}

/* Inode and kind of fd if it lies under root: 1 file, 2 dir, 3 marker, 0 not ours. */
static int fdinfo(int fd, unsigned long *ino, char *pathbuf)
{
    if (tfd < 0 || fd == tfd)
        return 0;
    char l[64], p[PATH_MAX];
    snprintf(l, sizeof l, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(l, p, sizeof p - 1);
    if (n < 0)
        return 0;
    p[n] = 0;
    if (markpath[0] && !strcmp(p, markpath))
        return 3;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return 0;
    int ours = !strncmp(p, root, rootlen) && (p[rootlen] == '/' || p[rootlen] == 0);
    if (!ours)
        return 0;
    *ino = (unsigned long)st.st_ino;
    if (pathbuf) {
        const char *r = p + rootlen;
        snprintf(pathbuf, PATH_MAX, "%s", *r == '/' ? r + 1 : (*r ? r : "."));
    }
    return S_ISDIR(st.st_mode) ? 2 : S_ISREG(st.st_mode) ? 1 : 0;
}

static int do_open(int dirfd, const char *path, int flags, mode_t mode, int at)
{
    init();
    REAL(openat);
    pthread_mutex_lock(&mu);
    char b[PATH_MAX];
    const char *r = (flags & (O_CREAT | O_TRUNC)) ? rel(dirfd, path, b) : NULL;
    int existed = 1;
    if (r && (flags & O_CREAT)) {
        struct stat st;
        existed = fstatat(dirfd, path, &st, 0) == 0;
    }
    int fd = real_openat(dirfd, path, flags, mode);
    if (fd >= 0 && r) {
        struct stat st;
        fstat(fd, &st);
        if (!existed)
            logf_("C %lu %s\n", (unsigned long)st.st_ino, r);
        if ((flags & O_TRUNC) && existed)
            logf_("X %lu\n", (unsigned long)st.st_ino);
    }
    (void)at;
    pthread_mutex_unlock(&mu);
    return fd;
}

#define OPEN_BODY(dirfd, at)                                                                  \
    mode_t mode = 0;                                                                          \
    if (flags & (O_CREAT | __O_TMPFILE)) {                                                     \
        va_list ap;                                                                           \
        va_start(ap, flags);                                                                  \
        mode = va_arg(ap, mode_t);                                                            \
        va_end(ap);                                                                           \
    }                                                                                         \
    return do_open(dirfd, path, flags, mode, at);

int open(const char *path, int flags, ...) { OPEN_BODY(AT_FDCWD, 0) }
int open64(const char *path, int flags, ...) { OPEN_BODY(AT_FDCWD, 0) }
int openat(int dirfd, const char *path, int flags, ...) { OPEN_BODY(dirfd, 1) }
int openat64(int dirfd, const char *path, int flags, ...) { OPEN_BODY(dirfd, 1) }

static void log_write(int fd, const struct iovec *v, int n, off_t off, ssize_t done)
{
    unsigned long ino;
    int k = fdinfo(fd, &ino, NULL);
    if (done <= 0 || !k)
        return;
    if (k == 3) {
        logf_("M ");
        size_t left = (size_t)done;
        for (int i = 0; i < n && left; i++) {
            size_t c = v[i].iov_len < left ? v[i].iov_len : left;
            out(v[i].iov_base, c);
            left -= c;
        }
        return;
    }
    if (k != 1)
        return;
    logf_("W %lu %lld %lld\n", ino, (long long)off, (long long)done);
    size_t left = (size_t)done;
    for (int i = 0; i < n && left; i++) {
        size_t c = v[i].iov_len < left ? v[i].iov_len : left;
        out(v[i].iov_base, c);
        left -= c;
    }
}

ssize_t write(int fd, const void *buf, size_t len)
{
    init();
    pthread_mutex_lock(&mu);
    REAL(lseek);
    off_t off = real_lseek(fd, 0, SEEK_CUR);
    ssize_t r = r_write(fd, buf, len);
    int e = errno;
    if (off >= 0) {
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0 && (fl & O_APPEND))
            off = real_lseek(fd, 0, SEEK_CUR) - (r > 0 ? r : 0);
    }
    struct iovec v = {(void *)buf, len};
    log_write(fd, &v, 1, off < 0 ? 0 : off, r);
    pthread_mutex_unlock(&mu);
    errno = e;
    return r;
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
    init();
    REAL(pwrite);
    pthread_mutex_lock(&mu);
    ssize_t r = real_pwrite(fd, buf, len, off);
    int e = errno;
    struct iovec v = {(void *)buf, len};
    log_write(fd, &v, 1, off, r);
    pthread_mutex_unlock(&mu);
    errno = e;
    return r;
}
ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off) { return pwrite(fd, buf, len, off); }

ssize_t pwritev(int fd, const struct iovec *v, int n, off_t off)
{
    init();
    REAL(pwritev);
    pthread_mutex_lock(&mu);
    ssize_t r = real_pwritev(fd, v, n, off);
    int e = errno;
    log_write(fd, v, n, off, r);
    pthread_mutex_unlock(&mu);
    errno = e;
    return r;
}
ssize_t pwritev64(int fd, const struct iovec *v, int n, off_t off) { return pwritev(fd, v, n, off); }

ssize_t pwritev2(int fd, const struct iovec *v, int n, off_t off, int flags)
{
    init();
    REAL(pwritev2);
    pthread_mutex_lock(&mu);
    off_t o = off;
    if (off == -1) {
        REAL(lseek);
        o = real_lseek(fd, 0, SEEK_CUR);
    }
    ssize_t r = real_pwritev2(fd, v, n, off, flags);
    int e = errno;
    log_write(fd, v, n, o, r);
    pthread_mutex_unlock(&mu);
    errno = e;
    return r;
}
ssize_t pwritev64v2(int fd, const struct iovec *v, int n, off_t off, int flags)
{
    return pwritev2(fd, v, n, off, flags);
}

ssize_t writev(int fd, const struct iovec *v, int n)
{
    init();
    REAL(writev);
    REAL(lseek);
    pthread_mutex_lock(&mu);
    off_t off = real_lseek(fd, 0, SEEK_CUR);
    ssize_t r = real_writev(fd, v, n);
    int e = errno;
    log_write(fd, v, n, off < 0 ? 0 : off, r);
    pthread_mutex_unlock(&mu);
    errno = e;
    return r;
}

static int do_sync(int fd, int data)
{
    init();
    REAL(fsync);
    REAL(fdatasync);
    pthread_mutex_lock(&mu);
    int r = data ? real_fdatasync(fd) : real_fsync(fd);
    int e = errno;
    unsigned long ino;
    char p[PATH_MAX];
    int k = r == 0 ? fdinfo(fd, &ino, p) : 0;
    if (k == 1)
        logf_("S %lu\n", ino);
    else if (k == 2)
        logf_("D %s\n", p);
    pthread_mutex_unlock(&mu);
    errno = e;
    return r;
}
int fsync(int fd) { return do_sync(fd, 0); }
int fdatasync(int fd) { return do_sync(fd, 1); }

int sync_file_range(int fd, off_t off, off_t n, unsigned int flags)
{
    init();
    REAL(sync_file_range);
    /* Not a durability barrier (no device flush, no metadata): logged as nothing. */
    return real_sync_file_range(fd, off, n, flags);
}

static int do_trunc(int fd, off_t len)
{
    init();
    REAL(ftruncate);
    pthread_mutex_lock(&mu);
    int r = real_ftruncate(fd, len);
    int e = errno;
    unsigned long ino;
    if (r == 0 && fdinfo(fd, &ino, NULL) == 1)
        logf_("T %lu %lld\n", ino, (long long)len);
    pthread_mutex_unlock(&mu);
    errno = e;
    return r;
}
int ftruncate(int fd, off_t len) { return do_trunc(fd, len); }
int ftruncate64(int fd, off_t len) { return do_trunc(fd, len); }

int fallocate(int fd, int mode, off_t off, off_t len)
{
    init();
    REAL(fallocate);
    pthread_mutex_lock(&mu);
    int r = real_fallocate(fd, mode, off, len);
    int e = errno;
    unsigned long ino;
    if (r == 0 && fdinfo(fd, &ino, NULL) == 1)
        logf_("F %lu %d %lld %lld\n", ino, mode, (long long)off, (long long)len);
    pthread_mutex_unlock(&mu);
    errno = e;
    return r;
}
int fallocate64(int fd, int mode, off_t off, off_t len) { return fallocate(fd, mode, off, len); }
int posix_fallocate(int fd, off_t off, off_t len) { return fallocate(fd, 0, off, len) ? errno : 0; }
int posix_fallocate64(int fd, off_t off, off_t len) { return posix_fallocate(fd, off, len); }

static int do_two(char op, int fd1, const char *a, int fd2, const char *b, int flags)
{
    init();
    REAL(renameat2);
    REAL(linkat);
    pthread_mutex_lock(&mu);
    char b1[PATH_MAX], b2[PATH_MAX];
    const char *ra = rel(fd1, a, b1), *rb = rel(fd2, b, b2);
    int r = op == 'R' ? real_renameat2(fd1, a, fd2, b, (unsigned)flags)
                      : real_linkat(fd1, a, fd2, b, flags);
    int e = errno;
    if (r == 0 && (ra || rb))
        logf_("%c %s %s\n", op, ra ? ra : "?OUT", rb ? rb : "?OUT");
    pthread_mutex_unlock(&mu);
    errno = e;
    return r;
}
int rename(const char *a, const char *b) { return do_two('R', AT_FDCWD, a, AT_FDCWD, b, 0); }
int renameat(int f1, const char *a, int f2, const char *b) { return do_two('R', f1, a, f2, b, 0); }
int renameat2(int f1, const char *a, int f2, const char *b, unsigned int fl)
{
    return do_two('R', f1, a, f2, b, (int)fl);
}
int link(const char *a, const char *b) { return do_two('L', AT_FDCWD, a, AT_FDCWD, b, 0); }
int linkat(int f1, const char *a, int f2, const char *b, int fl) { return do_two('L', f1, a, f2, b, fl); }

static int do_unlink(int dirfd, const char *path, int flags)
{
    init();
    REAL(unlinkat);
    pthread_mutex_lock(&mu);
    char b[PATH_MAX];
    const char *r = rel(dirfd, path, b);
    int res = real_unlinkat(dirfd, path, flags);
    int e = errno;
    if (res == 0 && r)
        logf_("U %s\n", r);
    pthread_mutex_unlock(&mu);
    errno = e;
    return res;
}
int unlink(const char *p) { return do_unlink(AT_FDCWD, p, 0); }
int unlinkat(int d, const char *p, int f) { return do_unlink(d, p, f); }
int rmdir(const char *p) { return do_unlink(AT_FDCWD, p, AT_REMOVEDIR); }

static int do_mkdir(int dirfd, const char *path, mode_t mode)
{
    init();
    REAL(mkdirat);
    pthread_mutex_lock(&mu);
    char b[PATH_MAX];
    const char *r = rel(dirfd, path, b);
    int res = real_mkdirat(dirfd, path, mode);
    int e = errno;
    if (res == 0 && r)
        logf_("K %s\n", r);
    pthread_mutex_unlock(&mu);
    errno = e;
    return res;
}
int mkdir(const char *p, mode_t m) { return do_mkdir(AT_FDCWD, p, m); }
int mkdirat(int d, const char *p, mode_t m) { return do_mkdir(d, p, m); }
