/* Encoding leaf and branch pages: one call per page builds the header, the element table, the
 * packed keys (and values), the zero padding and the checksum, so the commit path does no
 * per-entry work in Python. The layout is keyval/db/page.py's; the tests check that these
 * bytes are identical to the Python codec's. Every length is checked before anything is
 * written, so bad input changes nothing and never writes outside out. */
#include "internal.h"

/* The run size for used bytes (whole pages), or 0 if it exceeds cap or the 32-bit overflow
 * count of the header. */
static size_t run_size(size_t used, uint32_t page_size, size_t cap)
{
    size_t span = used <= page_size ? 1 : (used + page_size - 1) / page_size;
    if (span - 1 > UINT32_MAX || span > cap / page_size)
        return 0;
    return span * page_size;
}

void db_seal(uint8_t *out, size_t used, size_t run, uint32_t page_size, uint64_t pgid,
                 uint8_t type, uint32_t count)
{
    memset(out, 0, DB_HEADER_SIZE);
    db_put64(out + DB_OFF_ID, pgid);
    out[DB_OFF_TYPE] = type;
    db_put32(out + DB_OFF_COUNT, count);
    db_put32(out + DB_OFF_OVERFLOW, (uint32_t)(run / page_size - 1));
    memset(out + used, 0, run - used);
    db_put64(out + DB_OFF_CHECKSUM, kvdb_hash(out + 8, run - 8));
}

int64_t kvdb_encode_leaf(uint8_t *out, size_t cap, uint32_t page_size, uint64_t pgid,
                         const uint8_t *data, size_t ndata, const uint32_t *lens, size_t nlens)
{
    if (page_size < DB_HEADER_SIZE || nlens % 2 != 0 || nlens / 2 > UINT32_MAX)
        return KVDB_EINVAL;
    size_t count = nlens / 2;
    size_t total = 0;
    for (size_t i = 0; i < nlens; i++) {
        if (i % 2 == 0 && lens[i] > UINT16_MAX)
            return KVDB_EINVAL;
        total += lens[i]; /* no wrap: each term is below 2^32 and nlens is an array size */
    }
    if (total != ndata)
        return KVDB_EINVAL;
    if (count > (SIZE_MAX - DB_HEADER_SIZE - ndata) / DB_LEAF_ELEMENT)
        return KVDB_EINVAL;
    size_t start = DB_HEADER_SIZE + DB_LEAF_ELEMENT * count;
    size_t used = start + ndata;
    size_t run = run_size(used, page_size, cap);
    if (run == 0)
        return KVDB_ESPACE;
    uint8_t *e = out + DB_HEADER_SIZE;
    for (size_t i = 0; i < count; i++, e += DB_LEAF_ELEMENT) {
        e[0] = DB_FLAG_VALUE;
        db_put16(e + 1, (uint16_t)lens[2 * i]);
        db_put32(e + 3, lens[2 * i + 1]);
    }
    if (ndata)
        memcpy(out + start, data, ndata);
    db_seal(out, used, run, page_size, pgid, DB_TYPE_LEAF, (uint32_t)count);
    return (int64_t)run;
}

int64_t kvdb_encode_branch(uint8_t *out, size_t cap, uint32_t page_size, uint64_t pgid,
                           const uint8_t *keys, size_t nkeys, const uint32_t *lens,
                           const uint64_t *children, size_t count)
{
    if (page_size < DB_HEADER_SIZE || count > UINT32_MAX)
        return KVDB_EINVAL;
    size_t total = 0;
    for (size_t i = 0; i < count; i++) {
        if (lens[i] > UINT16_MAX)
            return KVDB_EINVAL;
        total += lens[i];
    }
    if (total != nkeys)
        return KVDB_EINVAL;
    if (count > (SIZE_MAX - DB_HEADER_SIZE - nkeys) / DB_BRANCH_ELEMENT)
        return KVDB_EINVAL;
    size_t start = DB_HEADER_SIZE + DB_BRANCH_ELEMENT * count;
    size_t used = start + nkeys;
    size_t run = run_size(used, page_size, cap);
    if (run == 0)
        return KVDB_ESPACE;
    uint8_t *e = out + DB_HEADER_SIZE;
    for (size_t i = 0; i < count; i++, e += DB_BRANCH_ELEMENT) {
        db_put16(e, (uint16_t)lens[i]);
        db_put64(e + 2, children[i]);
    }
    if (nkeys)
        memcpy(out + start, keys, nkeys);
    db_seal(out, used, run, page_size, pgid, DB_TYPE_BRANCH, (uint32_t)count);
    return (int64_t)run;
}
