/* Segment files: names, headers, record framing, the bounds file, and the in-memory index of
 * record offsets. The layouts are specified in format.h. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "wal_internal.h"

void kv_seg_header_encode(unsigned char out[KV_SEG_HEADER_SIZE], const kv_seg_header *h)
{
    memset(out, 0, KV_SEG_HEADER_SIZE);
    memcpy(out, KV_SEG_MAGIC, 8);
    kv_put32(out + 8, KV_FORMAT_VERSION);
    kv_put32(out + 12, KV_SEG_HEADER_SIZE);
    kv_put64(out + 16, h->id);
    kv_put64(out + 24, h->first_seq);
    kv_put64(out + 32, h->salt);
    kv_put64(out + 40, h->created_size);
    kv_put32(out + 60, kv_crc32c(0, out, 60));
}

int kv_seg_header_decode(const unsigned char *in, kv_seg_header *h)
{
    int zero = 1;
    for (unsigned i = 0; i < KV_SEG_HEADER_SIZE; i++)
        if (in[i]) {
            zero = 0;
            break;
        }
    if (zero)
        return 1;
    /* Each field is checked on its own, magic first, so that a file of a newer version is
     * reported as such rather than as a bad checksum. */
    if (memcmp(in, KV_SEG_MAGIC, 8) != 0)
        return -1;
    h->version = kv_get32(in + 8);
    if (h->version != KV_FORMAT_VERSION)
        return -3;
    h->header_size = kv_get32(in + 12);
    if (h->header_size != KV_SEG_HEADER_SIZE)
        return -4;
    if (kv_get32(in + 60) != kv_crc32c(0, in, 60))
        return -2;
    h->id = kv_get64(in + 16);
    h->first_seq = kv_get64(in + 24);
    h->salt = kv_get64(in + 32);
    h->created_size = kv_get64(in + 40);
    return 0;
}

void kv_record_header_encode(unsigned char out[KV_REC_HEADER_SIZE], uint64_t salt, uint64_t seq,
                             unsigned type, unsigned flags, unsigned write_index,
                             const void *payload, uint32_t len)
{
    kv_put32(out + 4, len);
    kv_put64(out + 8, seq);
    out[16] = (unsigned char)type;
    out[17] = (unsigned char)flags;
    if (write_index > KV_REC_WRITE_INDEX_MAX)
        write_index = KV_REC_WRITE_INDEX_MAX;
    out[18] = (unsigned char)(write_index & 0xFF);
    out[19] = (unsigned char)(write_index >> 8);
    unsigned char s[8];
    kv_put64(s, salt);
    uint32_t crc = kv_crc32c(0, s, 8);
    crc = kv_crc32c(crc, out + 4, KV_REC_HEADER_SIZE - 4);
    crc = kv_crc32c(crc, payload, len);
    kv_put32(out, crc);
}

void kv_bounds_encode(unsigned char out[KV_BOUNDS_SIZE], const kv_bounds *b)
{
    memset(out, 0, KV_BOUNDS_SIZE);
    memcpy(out, KV_BOUNDS_MAGIC, 8);
    kv_put32(out + 8, KV_BOUNDS_VERSION);
    kv_put32(out + 12, b->flags);
    kv_put64(out + 16, b->front);
    kv_put64(out + 24, b->cut);
    kv_put64(out + 32, b->newest);
    kv_put32(out + 40, kv_crc32c(0, out, 40));
}

int kv_bounds_decode(const unsigned char *in, size_t n, kv_bounds *b)
{
    if (n < 12 || memcmp(in, KV_BOUNDS_MAGIC, 8) != 0)
        return n < 12 ? -4 : -1;
    uint32_t version = kv_get32(in + 8);
    size_t body = version == 1 ? 32 : version == KV_BOUNDS_VERSION ? 40 : 0;
    if (!body)
        return -3;
    if (n < body + 4)
        return -4;
    if (kv_get32(in + body) != kv_crc32c(0, in, body))
        return -2;
    b->flags = kv_get32(in + 12);
    b->front = kv_get64(in + 16);
    b->cut = kv_get64(in + 24);
    b->newest = version == 1 ? 0 : kv_get64(in + 32);
    return 0;
}

char *kv_path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

char *kv_segment_name(uint64_t id, uint64_t first_seq)
{
    char *p = malloc(64);
    if (p)
        snprintf(p, 64, "%016" PRIx64 "-%016" PRIx64 KV_SEG_SUFFIX, id, first_seq);
    return p;
}

static int parse_hex16(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else
            return 0;
        v = (v << 4) | (uint64_t)d;
    }
    *out = v;
    return 1;
}

int kv_parse_segment_name(const char *name, uint64_t *id, uint64_t *first_seq)
{
    /* 16 hex, '-', 16 hex, ".wal" */
    if (strlen(name) != 16 + 1 + 16 + strlen(KV_SEG_SUFFIX) || name[16] != '-' ||
        strcmp(name + 33, KV_SEG_SUFFIX) != 0)
        return 0;
    return parse_hex16(name, id) && parse_hex16(name + 17, first_seq);
}

uint64_t kv_random_salt(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, 0) != (ssize_t)sizeof s) {
        /* No entropy source: a salt only has to differ from the file's earlier lives. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 16);
    }
    return s ? s : 1;
}

int kv_segment_push_offset(kv_segment *s, uint32_t off)
{
    if (s->count == s->offs_cap) {
        size_t cap = s->offs_cap ? s->offs_cap * 2 : 1024;
        uint32_t *p = realloc(s->offs, cap * sizeof *p);
        if (!p)
            return ENOMEM;
        s->offs = p;
        s->offs_cap = cap;
    }
    s->offs[s->count++] = off;
    return 0;
}

int kv_segment_map(kv_segment *s)
{
    int fd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return e;
    }
    s->size = (uint64_t)st.st_size;
    s->map = NULL;
    if (s->size > 0) {
        void *m = mmap(NULL, s->size, PROT_READ, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            return e;
        }
        s->map = m;
    }
    close(fd);
    return 0;
}

void kv_segment_release(kv_segment *s)
{
    if (s->map)
        munmap(s->map, s->size);
    free(s->offs);
    free(s->path);
    memset(s, 0, sizeof *s);
}
