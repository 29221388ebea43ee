/* The branch search index: a verified branch page decoded once into a compact structure that a
 * lookup routes through without touching the page.
 *
 * Why: in a 1M-key tree the branch levels took a third of a lookup's time, nearly all of it in
 * cache and TLB misses on the page (the key offsets, then each probed key, then the child id in
 * the element table, all in different lines of a mapped 4 KiB page). The index keeps what a
 * descent needs in one small allocation:
 *
 *   - prefix: the bytes every key of the branch starts with (keys are in order, so the common
 *     prefix of the first and last key; the order is checked when the index is built);
 *   - slices[i]: key i's next bytes after the prefix as an integer that orders like the keys:
 *     up to 7 bytes big-endian in the top 56 bits (zero padded), and in the low byte how many
 *     bytes remain, capped at 8. If slice(a) < slice(b) then a < b. Equal slices with a low
 *     byte below 8 mean equal keys; only equal slices whose low byte is 8 (both keys go on past
 *     the 7 bytes) need the full keys compared, which the index finds through ends[];
 *   - children[i], ends[i] (key i is at [ends[i], ends[i+1]) of the run).
 *
 * So the usual descent step is a binary search over count integers and one load of a child id.
 */
#include <stdlib.h>

#include "internal.h"

struct db_branch {
    uint32_t count;
    uint32_t prefix_len;
    uint8_t leaf_children; /* a hint, set once a child was seen to be a leaf; atomic */
    const uint64_t *children;
    const uint32_t *ends;
    const uint8_t *prefix;
    uint64_t slices[]; /* count, then children, ends and prefix in the same allocation */
};

/* The slice of the n bytes at p (see the top of this file). */
static inline uint64_t slice(const uint8_t *p, size_t n)
{
    if (n >= 8)
        return (__builtin_bswap64(db_get64(p)) & ~(uint64_t)0xff) | 8;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (56 - 8 * i);
    return v | n;
}

const db_branch *db_branch_build(const db_node *n, uint64_t pgid, kvdb_result *r)
{
    if (n->count == 0) {
        db_corrupt(r, pgid, "is a branch without children");
        return NULL;
    }
    if (n->count > db_max_count(DB_TYPE_BRANCH, n->len)) {
        db_corrupt(r, pgid, "is a branch that claims more children than fit");
        return NULL;
    }
    if (n->len > UINT32_MAX) { /* offsets are kept in 32 bits */
        db_corrupt(r, pgid, "is a branch larger than any branch can be");
        return NULL;
    }
    size_t count = n->count;
    uint64_t *wide = malloc((count + 1) * sizeof *wide);
    uint64_t *kids = malloc(count * sizeof *kids);
    db_branch *b = NULL;
    r->why = NULL;
    if (wide == NULL || kids == NULL)
        goto out;
    if (db_node_ends(n, pgid, 0, wide, NULL, kids, r) != KVDB_OK)
        goto out;
    const uint8_t *run = n->data;
    for (size_t i = 1; i < count; i++) {
        if (db_compare(run + wide[i - 1], wide[i] - wide[i - 1], run + wide[i],
                       wide[i + 1] - wide[i]) > 0) {
            db_corrupt(r, pgid, "has branch keys out of order");
            goto out;
        }
    }
    /* Every key lies between the first and the last, so it shares their common prefix. */
    const uint8_t *first = run + wide[0], *last = run + wide[count - 1];
    size_t flen = wide[1] - wide[0], llen = wide[count] - wide[count - 1];
    size_t cp = 0;
    while (cp < flen && cp < llen && first[cp] == last[cp])
        cp++;
    size_t size = sizeof *b + count * 2 * sizeof(uint64_t) + (count + 1) * sizeof(uint32_t) + cp;
    b = malloc(size);
    if (b == NULL)
        goto out;
    b->count = (uint32_t)count;
    b->prefix_len = (uint32_t)cp;
    b->leaf_children = 0;
    uint64_t *children = b->slices + count;
    uint32_t *ends = (uint32_t *)(children + count);
    uint8_t *prefix = (uint8_t *)(ends + count + 1);
    for (size_t i = 0; i < count; i++) {
        b->slices[i] = slice(run + wide[i] + cp, wide[i + 1] - wide[i] - cp);
        children[i] = kids[i];
    }
    for (size_t i = 0; i <= count; i++)
        ends[i] = (uint32_t)wide[i]; /* within the run, and a run is far below 4 GiB */
    memcpy(prefix, first, cp);
    b->children = children;
    b->ends = ends;
    b->prefix = prefix;
out:
    free(wide);
    free(kids);
    return b;
}

void db_branch_free(const db_branch *b) { free((void *)b); }

int db_branch_leaf_children(const db_branch *b)
{
    return __atomic_load_n(&b->leaf_children, __ATOMIC_RELAXED);
}

void db_branch_saw_leaf(const db_branch *b)
{
    /* The hint is the only field written after the index is published. */
    __atomic_store_n(&((db_branch *)b)->leaf_children, 1, __ATOMIC_RELAXED);
}

uint64_t db_branch_route(const db_branch *b, const uint8_t *run, const uint8_t *key, size_t klen)
{
    size_t cp = b->prefix_len, count = b->count;
    if (cp > 0) {
        size_t n = klen < cp ? klen : cp;
        int c = db_compare(key, n, b->prefix, n);
        if (c < 0 || (c == 0 && klen < cp))
            return b->children[0]; /* below every key of the branch */
        if (c > 0)
            return b->children[count - 1]; /* above every key */
    }
    uint64_t s = slice(key + cp, klen - cp);
    /* hi: how many slices are <= s (branchless: the loads, not the branches, are the cost) */
    const uint64_t *base = b->slices;
    size_t len = count;
    while (len > 1) {
        size_t half = len / 2;
        base = base[half] <= s ? base + half : base;
        len -= half;
    }
    size_t hi = (size_t)(base - b->slices) + (*base <= s);
    if ((s & 0xff) == 8 && hi > 0 && b->slices[hi - 1] == s) {
        /* Keys i with slices[i] == s share 7 more bytes with key and go on: compare them
         * whole to find how many of them are <= key. */
        size_t lo = 0, top = hi - 1; /* the first of them: the first slice >= s */
        while (lo < top) {
            size_t mid = lo + (top - lo) / 2;
            if (b->slices[mid] < s)
                lo = mid + 1;
            else
                top = mid;
        }
        const uint32_t *ends = b->ends;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (db_compare(run + ends[mid], ends[mid + 1] - ends[mid], key, klen) <= 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        hi = lo;
    }
    return b->children[hi > 0 ? hi - 1 : 0];
}
