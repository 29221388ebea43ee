/* Decoding leaf and branch pages: the element table into offsets, every length checked against
 * the run, so a corrupt length is reported and never read past. */
#include "internal.h"

static int leaf_ends(const db_node *n, uint64_t pgid, uint64_t base, uint64_t *ends,
                     uint8_t *flags, kvdb_result *r)
{
    const uint8_t *p = n->data;
    size_t end = n->len;
    size_t count = n->count;
    if (count > db_max_count(DB_TYPE_LEAF, end))
        return db_corrupt(r, pgid, "is a leaf that claims more entries than fit");
    size_t pos = DB_HEADER_SIZE + DB_LEAF_ELEMENT * count;
    const uint8_t *e = p + DB_HEADER_SIZE;
    ends[0] = base + pos;
    for (size_t i = 0; i < count; i++, e += DB_LEAF_ELEMENT) {
        uint8_t flag = e[0];
        size_t klen = db_get16(e + 1);
        size_t vlen = db_get32(e + 3);
        /* pos <= end holds here, so neither subtraction wraps */
        if (klen > end - pos || vlen > end - pos - klen)
            return db_corrupt(r, pgid, "has a leaf entry that runs past the end of its page");
        if (klen == 0 || klen > DB_MAX_KEY)
            return db_corrupt(r, pgid, "has a leaf key that is empty or longer than keys can be");
        size_t kend = pos + klen;
        if (flag == DB_FLAG_OVERFLOW) {
            if (vlen != DB_OVERFLOW_REF)
                return db_corrupt(r, pgid, "has an overflow reference of the wrong size");
        } else if (flag == DB_FLAG_BUCKET) {
            if (vlen < 16 || (vlen < 20 && db_get64(p + kend) == 0))
                return db_corrupt(r, pgid, "has a bucket header that is cut short");
        } else if (flag != DB_FLAG_VALUE) {
            return db_corrupt(r, pgid, "has a leaf entry with unknown flags");
        }
        if (flags != NULL)
            flags[i] = flag;
        pos = kend + vlen;
        ends[2 * i + 1] = base + kend;
        ends[2 * i + 2] = base + pos;
    }
    return KVDB_OK;
}

static int branch_ends(const db_node *n, uint64_t pgid, uint64_t base, uint64_t *ends,
                       uint64_t *children, kvdb_result *r)
{
    const uint8_t *p = n->data;
    size_t end = n->len;
    size_t count = n->count;
    if (n->count == 0)
        return db_corrupt(r, pgid, "is a branch without children");
    if (count > db_max_count(DB_TYPE_BRANCH, end))
        return db_corrupt(r, pgid, "is a branch that claims more children than fit");
    size_t pos = DB_HEADER_SIZE + DB_BRANCH_ELEMENT * count;
    const uint8_t *e = p + DB_HEADER_SIZE;
    ends[0] = base + pos;
    for (size_t i = 0; i < count; i++, e += DB_BRANCH_ELEMENT) {
        size_t klen = db_get16(e);
        if (klen > end - pos)
            return db_corrupt(r, pgid, "has branch keys that run past the end of the page");
        pos += klen;
        ends[i + 1] = base + pos;
        if (children != NULL)
            children[i] = db_get64(e + 2);
    }
    return KVDB_OK;
}

int db_node_ends(const db_node *n, uint64_t pgid, uint64_t base, uint64_t *ends, uint8_t *flags,
                 uint64_t *children, kvdb_result *r)
{
    if (n->type == DB_TYPE_LEAF)
        return leaf_ends(n, pgid, base, ends, flags, r);
    if (n->type == DB_TYPE_BRANCH)
        return branch_ends(n, pgid, base, ends, children, r);
    return db_corrupt(r, pgid, "is not a branch or leaf page where one was expected");
}

static int node_out(const db_node *n, uint64_t pgid, uint64_t base, uint64_t *ends,
                    uint8_t *flags, uint64_t *children, size_t cap, kvdb_result *r)
{
    if (n->type == DB_TYPE_LEAF || n->type == DB_TYPE_BRANCH) {
        if (n->count > db_max_count(n->type, n->len))
            return db_node_ends(n, pgid, base, ends, flags, children, r); /* reports it */
        size_t need = db_ends_needed(n);
        if (need > cap) {
            r->length = (uint32_t)need;
            return KVDB_ESPACE;
        }
    }
    return db_node_ends(n, pgid, base, ends, flags, children, r);
}

int kvdb_node(kvdb_map *m, uint64_t pgid, uint64_t *ends, uint8_t *flags, uint64_t *children,
              size_t cap, kvdb_result *r)
{
    db_node n;
    int rc = db_page(m, pgid, &n, r);
    if (rc != KVDB_OK)
        return rc;
    return node_out(&n, pgid, pgid << m->shift, ends, flags, children, cap, r);
}

int kvdb_decode(const uint8_t *buf, size_t n, uint64_t *ends, uint8_t *flags, uint64_t *children,
                size_t cap, kvdb_result *r)
{
    if (n < DB_HEADER_SIZE)
        return db_corrupt(r, 0, "is shorter than a page header");
    db_node node = {buf[DB_OFF_TYPE], db_get32(buf + DB_OFF_COUNT), buf, n};
    r->type = node.type;
    r->count = node.count;
    return node_out(&node, 0, 0, ends, flags, children, cap, r);
}
