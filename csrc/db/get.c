/* Point lookups: the whole descent from a bucket's root to its leaf in one call. */
#include <stdlib.h>

#include "internal.h"

enum { STACK_ENDS = 2049 }; /* covers every leaf of a 4 KiB page; bigger ones use the heap */
enum { PREFETCH_BYTES = 4096 };

/* Index of the first entry of leaf n (offsets ends) whose key is >= key. */
static size_t leaf_search(const db_node *n, const uint64_t *ends, const uint8_t *key, size_t klen)
{
    size_t lo = 0, hi = n->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (db_compare(n->data + ends[2 * mid], ends[2 * mid + 1] - ends[2 * mid], key, klen) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int leaf_find(kvdb_map *m, uint64_t pgid, const db_node *n, const uint8_t *key,
                     size_t klen, kvdb_result *r)
{
    uint64_t stack_ends[STACK_ENDS];
    uint64_t *ends = stack_ends;
    /* A leaf is usually cold: ask for its first lines at once instead of missing on each
     * element and key in turn (measured: a fifth off a lookup in a 1M-key tree). */
    for (size_t o = 64; o < n->len && o < PREFETCH_BYTES; o += 64)
        __builtin_prefetch(n->data + o);
    if (n->count <= db_max_count(DB_TYPE_LEAF, n->len) && db_ends_needed(n) > STACK_ENDS) {
        ends = malloc(db_ends_needed(n) * sizeof *ends);
        if (ends == NULL)
            return KVDB_GET_NOMEM;
    }
    int rc;
    if (db_node_ends(n, pgid, 0, ends, NULL, NULL, r) != KVDB_OK) {
        rc = KVDB_GET_CORRUPT;
        goto out;
    }
    size_t i = leaf_search(n, ends, key, klen);
    if (i == n->count ||
        db_compare(n->data + ends[2 * i], ends[2 * i + 1] - ends[2 * i], key, klen) != 0) {
        rc = KVDB_GET_MISSING;
        goto out;
    }
    uint8_t flag = n->data[DB_HEADER_SIZE + DB_LEAF_ELEMENT * i];
    uint64_t offset = (pgid << m->shift) + ends[2 * i + 1];
    uint64_t length = ends[2 * i + 2] - ends[2 * i + 1];
    r->offset = offset;
    r->length = (uint32_t)length;
    if (flag == DB_FLAG_OVERFLOW)
        rc = KVDB_GET_OVERFLOW;
    else if (flag == DB_FLAG_BUCKET)
        rc = KVDB_GET_BUCKET;
    else
        rc = KVDB_GET_VALUE;
out:
    if (ends != stack_ends)
        free(ends);
    return rc;
}

int db_find(kvdb_map *m, uint64_t root, const uint8_t *key, size_t klen, kvdb_result *r)
{
    uint64_t pgid = root;
    uint64_t file_pages = __atomic_load_n(&m->file_pages, __ATOMIC_ACQUIRE);
    const db_branch *parent = NULL; /* the index pgid was found through */
    for (int depth = 0; depth < KVDB_MAX_DEPTH; depth++) {
        /* A branch with an index was verified when it was built: route without reading the
         * page (the common case: only the leaf is read). Below a branch whose children are
         * leaves there is no index to look for: the lookup in the table of indexes, a cache
         * miss of its own, is skipped. */
        if (pgid >= 2 && pgid < file_pages && !(parent && db_branch_leaf_children(parent))) {
            const db_branch *b = db_branch_cached(m, pgid);
            if (b != NULL) {
                pgid = db_branch_route(b, m->base + (pgid << m->shift), key, klen);
                parent = b;
                continue;
            }
        }
        db_node n;
        if (db_page(m, pgid, &n, r) != KVDB_OK)
            return KVDB_GET_CORRUPT;
        if (n.type == DB_TYPE_LEAF) {
            if (parent != NULL && !db_branch_leaf_children(parent))
                db_branch_saw_leaf(parent);
            return leaf_find(m, pgid, &n, key, klen, r);
        }
        if (n.type != DB_TYPE_BRANCH) {
            db_corrupt(r, pgid, "is not a branch or leaf page where one was expected");
            return KVDB_GET_CORRUPT;
        }
        const db_branch *b = db_branch_index(m, pgid, &n, r);
        if (b == NULL)
            return r->why != NULL ? KVDB_GET_CORRUPT : KVDB_GET_NOMEM;
        pgid = db_branch_route(b, n.data, key, klen);
        parent = b;
    }
    db_corrupt(r, pgid, "is deeper than any tree can be (a cycle of pages?)");
    return KVDB_GET_CORRUPT;
}

int64_t kvdb_get(kvdb_tree *t, const uint8_t *key, size_t klen)
{
    kvdb_result *r = &t->result;
    int rc = db_find(t->map, t->root, key, klen, r);
    if (rc != KVDB_GET_VALUE || r->length > KVDB_VALUE_MAX)
        return rc;
    memcpy(t->value, t->map->base + r->offset, r->length);
    return r->length;
}
