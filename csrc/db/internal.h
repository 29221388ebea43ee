/* What the files of csrc/db share beyond the public API in kvdb.h. */
#ifndef KEYVAL_DB_INTERNAL_H
#define KEYVAL_DB_INTERNAL_H

#include "format.h"
#include "kvdb.h"

struct kvdb_map {
    const uint8_t *base; /* map_pages pages of the file, read-only */
    uint64_t map_pages;
    uint64_t file_pages; /* pages that exist in the file; atomic */
    uint32_t page_size;
    unsigned shift; /* log2(page_size) */
    uint8_t *verified; /* one bit per page: the run starting there passed its checks */
    size_t verified_bytes;
    uint32_t **branch_ends; /* per page: a verified branch's key offsets (count + 1), or NULL */
    size_t branch_ends_bytes;
    uint64_t branch_ends_top; /* 1 + highest page id with offsets ever set; atomic */
};

/* Entries of node pages: a decoded view used by lookups, scans and the fuzz tests. */
typedef struct {
    uint32_t type;
    uint32_t count;
    const uint8_t *data; /* start of the run */
    size_t len;          /* bytes of the run */
} db_node;

int db_corrupt(kvdb_result *r, uint64_t pgid, const char *why);

/* Check a node's element table against its length (no checksum) and fill ends, flags and
 * children as kvdb_decode documents, with base added to every offset. ends has room for
 * db_ends_needed(n) entries (flags and children for n->count). */
int db_node_ends(const db_node *n, uint64_t pgid, uint64_t base, uint64_t *ends, uint8_t *flags,
                 uint64_t *children, kvdb_result *r);

static inline size_t db_ends_needed(const db_node *n)
{
    return n->type == DB_TYPE_LEAF ? 2 * (size_t)n->count + 1 : (size_t)n->count + 1;
}

/* The verified run at pgid. */
int db_page(kvdb_map *m, uint64_t pgid, db_node *n, kvdb_result *r);

/* The key offsets of the verified branch n at pgid (count + 1 of them, relative to the run),
 * decoded and checked on first use; NULL with r filled in if it is corrupt or memory ran out
 * (r->why is NULL then). */
const uint32_t *db_branch_ends(kvdb_map *m, uint64_t pgid, const db_node *n, kvdb_result *r);

/* Largest entry count a run of len bytes of the given type can hold. */
static inline size_t db_max_count(uint32_t type, size_t len)
{
    size_t elem = type == DB_TYPE_LEAF ? DB_LEAF_ELEMENT : DB_BRANCH_ELEMENT;
    return len < DB_HEADER_SIZE ? 0 : (len - DB_HEADER_SIZE) / elem;
}

#endif
