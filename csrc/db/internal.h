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
    const struct db_branch **branches; /* per page: a verified branch's search index, or NULL */
    size_t branches_bytes;
    uint64_t branches_top; /* 1 + highest page id with an index ever set; atomic */
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

/* kvdb_get's lookup, without the copy: a plain value of any length is KVDB_GET_VALUE with
 * r->offset and r->length set; the other outcomes as kvdb_get. */
int db_find(kvdb_map *m, uint64_t root, const uint8_t *key, size_t klen, kvdb_result *r);

/* The verified run at pgid. */
int db_page(kvdb_map *m, uint64_t pgid, db_node *n, kvdb_result *r);

/* memcmp order, then length; inline and a word at a time, since keys are short and a call to
 * the library's memcmp per probe showed in profiles. */
static inline int db_compare(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x = __builtin_bswap64(db_get64(a + i)), y = __builtin_bswap64(db_get64(b + i));
        if (x != y)
            return x < y ? -1 : 1;
    }
    for (; i < n; i++)
        if (a[i] != b[i])
            return a[i] < b[i] ? -1 : 1;
    return alen < blen ? -1 : alen > blen;
}

/* A branch page's search index (branch.c): built from the verified branch n at pgid, which it
 * checks (children, element table, key order); NULL with r filled in if the page is corrupt,
 * or with r->why NULL if memory ran out. */
typedef struct db_branch db_branch;
const db_branch *db_branch_build(const db_node *n, uint64_t pgid, kvdb_result *r);
void db_branch_free(const db_branch *b);
/* The child of the branch (run: its page run) whose subtree may hold key: the last child whose
 * key is <= key, or the first. */
uint64_t db_branch_route(const db_branch *b, const uint8_t *run, const uint8_t *key, size_t klen);
/* Whether b's children were seen to be leaves: a hint (all children of a branch are on one
 * level), so a descent can skip looking for an index of a page that will not have one; the
 * page's own type is what counts. */
int db_branch_leaf_children(const db_branch *b);
void db_branch_saw_leaf(const db_branch *b);

/* The index of the verified branch n at pgid, built on first use and kept in the map until the
 * page is forgotten; NULL as db_branch_build. */
const db_branch *db_branch_index(kvdb_map *m, uint64_t pgid, const db_node *n, kvdb_result *r);
/* The kept index of page pgid, if any: then pgid is a verified branch. The caller checked that
 * pgid is inside the file. */
static inline const db_branch *db_branch_cached(kvdb_map *m, uint64_t pgid)
{
    return __atomic_load_n(&m->branches[pgid], __ATOMIC_ACQUIRE);
}

/* A page run's header (checksum last, over everything after its own field) and zero padding
 * from used to run bytes (encode.c). */
void db_seal(uint8_t *out, size_t used, size_t run, uint32_t page_size, uint64_t pgid,
             uint8_t type, uint32_t count);

/* The Python functions of pyencode.c, pynode.c, pysplit.c and pyspill.c are PyMethodDef
 * tables named db_py_encoders, db_py_node_functions, db_py_split_functions and
 * db_py_spill_functions (declared where Python.h is included: pylookup.c, whose
 * kvdb_py_export adds them to the module's namespace). */

/* Largest entry count a run of len bytes of the given type can hold. */
static inline size_t db_max_count(uint32_t type, size_t len)
{
    size_t elem = type == DB_TYPE_LEAF ? DB_LEAF_ELEMENT : DB_BRANCH_ELEMENT;
    return len < DB_HEADER_SIZE ? 0 : (len - DB_HEADER_SIZE) / elem;
}

#endif
