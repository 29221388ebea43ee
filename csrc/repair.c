/* Telling a torn tail from corruption, and cutting a torn tail off.
 *
 * A crash in the middle of a write leaves the last record of the last segment partly written.
 * That record was never acknowledged (its fdatasync had not returned), so cutting it loses
 * nothing. Corruption elsewhere looks the same up close; what tells them apart is what
 * follows: after a torn record nothing valid with a later seq can exist, because records are
 * written in seq order and the crash stopped the writing. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wal_internal.h"

int64_t kv_find_later_record(const kv_segment *s, uint64_t from, uint64_t after_seq,
                             uint64_t *found_seq)
{
    uint64_t off = (from + KV_REC_ALIGN - 1) & ~(uint64_t)(KV_REC_ALIGN - 1);
    for (; off + KV_REC_HEADER_SIZE <= s->size; off += KV_REC_ALIGN) {
        uint64_t seq = kv_get64(s->map + off + 8);
        /* Each record takes at least 24 bytes, which bounds the seqs that can stand here; the
         * cheap check skips almost every offset without computing a CRC. */
        uint64_t max_seq = after_seq + 1 + (off - from) / (KV_REC_HEADER_SIZE + 4);
        if (seq <= after_seq || seq > max_seq)
            continue;
        if (kv_record_valid_at(s, off, seq)) {
            if (found_seq)
                *found_seq = seq;
            return (int64_t)off;
        }
    }
    return -1;
}

int kv_torn_write(const kv_segment *s, uint64_t from, uint64_t expected, uint64_t *later_seq,
                  uint64_t *later_off)
{
    /* A block that never reached the disk reads as the zeros the segment was filled with,
     * from the first record it should have held to its end (the bytes before that record in
     * the block, if any, were synced by an earlier write): zero at least up to the next
     * sector boundary, where a flipped bit or a record overwritten with other data leaves
     * its own bytes. */
    uint64_t sector_end = (from / KV_TORN_SECTOR + 1) * KV_TORN_SECTOR;
    if (sector_end > s->size)
        return 0;
    for (uint64_t k = from; k < sector_end; k++)
        if (s->map[k])
            return 0;
    uint64_t off = from, after = expected - 1, seq;
    int found = 0;
    for (;;) {
        int64_t at = kv_find_later_record(s, off, after, &seq);
        if (at < 0)
            return found;
        found = 1;
        for (off = (uint64_t)at; kv_record_valid_at(s, off, seq); seq++) {
            /* seq - index is the first record appended since the last fdatasync that had
             * returned when this one was written (or a later one: the index never counts
             * more than the truth, and saturates). Past `expected`, that fdatasync covered
             * `expected`: the bad record had been synced, so this is no torn write. */
            uint64_t index = kv_get16(s->map + off + 18);
            if (seq <= expected || index < seq - expected) {
                *later_seq = seq;
                *later_off = off;
                return -1;
            }
            off += kv_record_size(kv_get32(s->map + off + 4));
            after = seq;
        }
    }
}

int kv_cut_tail(kv_wal *w, kv_segment *s, int fd, uint64_t from, uint64_t *cut_bytes)
{
    uint64_t last = s->size;
    while (last > from && s->map[last - 1] == 0)
        last--;
    *cut_bytes = last - from;
    if (last == from)
        return 0;
    size_t chunk = 1u << 20;
    unsigned char *zeros = calloc(1, chunk);
    if (!zeros)
        return 12; /* ENOMEM */
    int e = 0;
    for (uint64_t off = from; off < last && !e; off += chunk) {
        size_t n = (size_t)(last - off < chunk ? last - off : chunk);
        e = kv_io_pwrite(&w->io, fd, zeros, n, off);
    }
    free(zeros);
    if (!e)
        e = kv_io_fdatasync(&w->io, fd);
    return e;
}

int kv_clear_continues(kv_wal *w, kv_segment *s, uint64_t count, int fd)
{
    if (count == 0)
        return 0;
    uint64_t off = s->offs[count - 1];
    const unsigned char *rec = s->map + off;
    /* A header whose last rewrite was torn (see recover) is written again, whatever its
     * flags byte says. */
    if (!(rec[17] & KV_REC_CONTINUES) &&
        kv_record_valid_at(s, off, s->first_seq + count - 1))
        return 0;
    unsigned char hdr[KV_REC_HEADER_SIZE];
    uint32_t len = kv_get32(rec + 4);
    kv_record_header_encode(hdr, s->salt, kv_get64(rec + 8), rec[16], 0, kv_get16(rec + 18),
                            rec + KV_REC_HEADER_SIZE, len);
    int own = fd < 0;
    if (own && (fd = open(s->path, O_RDWR | O_CLOEXEC)) < 0)
        return errno;
    int e = kv_io_pwrite(&w->io, fd, hdr, sizeof hdr, off);
    if (!e)
        e = kv_io_fdatasync(&w->io, fd);
    if (own)
        close(fd);
    return e;
}
