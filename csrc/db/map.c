/* The page map: mapping the file, verifying each page run once, the checksum function. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "internal.h"

typedef uint64_t (*hash_fn)(const void *, size_t);
static hash_fn xxh3_64;

int kvdb_hash_init(const char *path)
{
    /* The xxhash Python module (a dependency) links xxHash in and exports its API; using that
     * copy keeps the checksum identical to the Python codec's without a second copy of it. */
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL)
        return -1;
    void *sym = dlsym(lib, "XXH3_64bits");
    if (sym == NULL)
        return -1;
    xxh3_64 = (hash_fn)sym;
    return 0;
}

uint64_t kvdb_hash(const void *data, size_t n) { return xxh3_64(data, n); }

int db_corrupt(kvdb_result *r, uint64_t pgid, const char *why)
{
    r->pgid = pgid;
    r->why = why;
    return KVDB_ECORRUPT;
}

kvdb_map *kvdb_map_open(int fd, uint32_t page_size, uint64_t map_pages, uint64_t file_pages)
{
    if (page_size < 512 || page_size > 65536 || (page_size & (page_size - 1)) ||
        file_pages > map_pages || xxh3_64 == NULL) {
        errno = EINVAL;
        return NULL;
    }
    kvdb_map *m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    m->page_size = page_size;
    while ((1u << m->shift) < page_size)
        m->shift++;
    m->map_pages = map_pages;
    m->file_pages = file_pages;
    void *base = mmap(NULL, map_pages << m->shift, PROT_READ, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        goto fail;
    m->base = base;
    /* Untouched parts of the bitmap cost no memory: NORESERVE, zero-filled on first write. */
    m->verified_bytes = (map_pages + 7) / 8;
    void *bits = mmap(NULL, m->verified_bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (bits == MAP_FAILED) {
        munmap(base, map_pages << m->shift);
        goto fail;
    }
    m->verified = bits;
    m->branches_bytes = map_pages * sizeof *m->branches;
    void *branches = mmap(NULL, m->branches_bytes, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (branches == MAP_FAILED) {
        munmap(bits, m->verified_bytes);
        munmap(base, map_pages << m->shift);
        goto fail;
    }
    m->branches = branches;
    return m;
fail:;
    int e = errno;
    free(m);
    errno = e;
    return NULL;
}

void kvdb_map_close(kvdb_map *m)
{
    if (m == NULL)
        return;
    for (uint64_t p = 0; p < m->branches_top; p++)
        db_branch_free(m->branches[p]);
    munmap(m->branches, m->branches_bytes);
    munmap((void *)m->base, m->map_pages << m->shift);
    munmap(m->verified, m->verified_bytes);
    free(m);
}

const uint8_t *kvdb_map_base(const kvdb_map *m) { return m->base; }

uint64_t kvdb_map_pages(const kvdb_map *m) { return m->map_pages; }

void kvdb_map_set_file_pages(kvdb_map *m, uint64_t n)
{
    if (n > m->map_pages)
        n = m->map_pages;
    __atomic_store_n(&m->file_pages, n, __ATOMIC_RELEASE);
}

void kvdb_map_forget(kvdb_map *m, uint64_t pgid, uint64_t span)
{
    for (uint64_t p = pgid; p < pgid + span && p < m->map_pages; p++) {
        __atomic_fetch_and(&m->verified[p >> 3], (uint8_t) ~(1u << (p & 7)), __ATOMIC_RELEASE);
        db_branch_free(__atomic_exchange_n(&m->branches[p], NULL, __ATOMIC_ACQ_REL));
    }
}

const db_branch *db_branch_index(kvdb_map *m, uint64_t pgid, const db_node *n, kvdb_result *r)
{
    const db_branch *b = db_branch_cached(m, pgid);
    if (b != NULL)
        return b;
    b = db_branch_build(n, pgid, r);
    if (b == NULL)
        return NULL;
    const db_branch *expected = NULL;
    if (!__atomic_compare_exchange_n(&m->branches[pgid], &expected, b, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        db_branch_free(b); /* another reader built it first */
        return expected;
    }
    uint64_t top = __atomic_load_n(&m->branches_top, __ATOMIC_RELAXED);
    while (top < pgid + 1 && !__atomic_compare_exchange_n(&m->branches_top, &top, pgid + 1, 0,
                                                          __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        ;
    return b;
}

int db_page(kvdb_map *m, uint64_t pgid, db_node *n, kvdb_result *r)
{
    uint64_t file_pages = __atomic_load_n(&m->file_pages, __ATOMIC_ACQUIRE);
    if (pgid < 2 || pgid >= file_pages)
        return db_corrupt(r, pgid, "is referenced but lies outside the file");
    const uint8_t *p = m->base + (pgid << m->shift);
    uint32_t overflow = db_get32(p + DB_OFF_OVERFLOW);
    if ((uint64_t)overflow >= file_pages - pgid)
        return db_corrupt(r, pgid, "claims more overflow pages than the file holds");
    size_t len = ((size_t)overflow + 1) << m->shift;
    uint8_t *bits = &m->verified[pgid >> 3];
    uint8_t bit = (uint8_t)(1u << (pgid & 7));
    if (!(__atomic_load_n(bits, __ATOMIC_ACQUIRE) & bit)) {
        if (xxh3_64(p + 8, len - 8) != db_get64(p + DB_OFF_CHECKSUM))
            return db_corrupt(r, pgid, "fails its checksum");
        if (db_get64(p + DB_OFF_ID) != pgid)
            return db_corrupt(r, pgid, "carries the id of another page");
        __atomic_fetch_or(bits, bit, __ATOMIC_RELEASE);
    }
    n->type = p[DB_OFF_TYPE];
    n->count = db_get32(p + DB_OFF_COUNT);
    n->data = p;
    n->len = len;
    r->pgid = pgid;
    r->offset = pgid << m->shift;
    r->type = n->type;
    r->count = n->count;
    r->span = overflow + 1;
    return KVDB_OK;
}

int kvdb_page(kvdb_map *m, uint64_t pgid, kvdb_result *r)
{
    db_node n;
    return db_page(m, pgid, &n, r);
}
