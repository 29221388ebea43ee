/* keyval.db's C fast paths: the page map, lookups and leaf decoding over it (bound to Python by
 * keyval/_db_build.py; the file format is specified in keyval/db/page.py).
 *
 * A kvdb_map is a read-only MAP_SHARED mapping of the database file, reserved once at a fixed
 * size much larger than the file and never remapped, so a reader's pointers stay valid however
 * the file grows (no remap stall; LMDB's map size). Only pages below the map's file page count
 * are touched, so a page past the end of the file is an error, never a SIGBUS.
 *
 * Every page run is verified (xxh3_64 checksum, page id, run length within the file) the first
 * time a lookup reads it; a bit per page remembers that. A branch page is decoded on that first
 * read into a search index (branch.c: its keys' common prefix, the next bytes of each key as an
 * integer, its children) kept beside the map, so a descent routes through branches without
 * touching their pages and reads only the leaf. The writer forgets both for pages it rewrites
 * (kvdb_map_forget) before publishing them, so a reused page id is verified and decoded again.
 *
 * Thread safety: any number of threads may read through one map at once (the bits and indexes
 * are published with atomic operations; the binding keeps the GIL, see _db_build.py, but
 * nothing here relies on it). kvdb_map_forget,
 * kvdb_map_set_file_pages and kvdb_map_close are the writer's: the caller guarantees that no
 * reader can reach the pages concerned (kvdb_map_close: that no reader is left). That is what
 * makes freeing a forgotten page's index safe: a page is rewritten only once no open
 * transaction can see it (keyval.db's freelist), so no lookup can be reading it.
 *
 * Functions returning int return KVDB_OK (0) or a positive lookup outcome, or a negative
 * KVDB_E* code; on KVDB_ECORRUPT the kvdb_result names the page and what is wrong with it.
 * Nothing here calls back into Python, except the fallbacks of kvdb_py_export's type.
 */
#ifndef KEYVAL_KVDB_H
#define KEYVAL_KVDB_H

#include <stddef.h>
#include <stdint.h>

typedef struct kvdb_map kvdb_map;

enum {
    KVDB_OK = 0,
    KVDB_ECORRUPT = -1,  /* a page fails its checksum or breaks a format rule */
    KVDB_ENOMEM = -2,    /* out of memory */
    KVDB_ESYS = -3,      /* an OS call failed (errno is set) */
    KVDB_EINVAL = -4,    /* a bad argument */
    KVDB_ESPACE = -5     /* the caller's array is too small; the result's length says how big */
};

enum { KVDB_MAX_DEPTH = 64 }; /* deeper than any real tree: a cycle in a corrupt file */

typedef struct {
    uint64_t pgid;   /* the page the outcome or the error concerns */
    uint64_t offset; /* kvdb_get: file offset of the value (or reference, or bucket header) */
    uint32_t length; /* bytes at offset */
    uint32_t count;  /* entry count of page pgid */
    uint32_t span;   /* pages in the run of page pgid (1 + overflow) */
    uint32_t type;   /* page type of page pgid */
    const char *why; /* KVDB_ECORRUPT: what is wrong with page pgid (a static string) */
} kvdb_result;

/* Find xxh3_64 ("XXH3_64bits") in the shared library at path, which the caller has loaded
 * already (the xxhash module's extension). 0, or -1 if it is not there. */
int kvdb_hash_init(const char *path);
/* xxh3_64 of n bytes; only after kvdb_hash_init succeeded. */
uint64_t kvdb_hash(const void *data, size_t n);

/* Map the file open as fd (read-only, shared) reserving map_pages pages; file_pages of them
 * exist now. NULL with errno set on failure. */
kvdb_map *kvdb_map_open(int fd, uint32_t page_size, uint64_t map_pages, uint64_t file_pages);
void kvdb_map_close(kvdb_map *m);
const uint8_t *kvdb_map_base(const kvdb_map *m);
uint64_t kvdb_map_pages(const kvdb_map *m);
/* The file now has n pages: lower it before truncating the file, raise it after growing it. */
void kvdb_map_set_file_pages(kvdb_map *m, uint64_t n);
/* Pages [pgid, pgid + span) are about to be rewritten: verify them again when next read. */
void kvdb_map_forget(kvdb_map *m, uint64_t pgid, uint64_t span);

/* Verify the run at pgid (if not done yet); fills r's pgid, offset (of the run), count, span
 * and type. */
int kvdb_page(kvdb_map *m, uint64_t pgid, kvdb_result *r);

/* A tree to look keys up in: one per bucket and transaction (so per thread), holding the map
 * (which must outlive it), the root page, the details of the last outcome and a copy of the
 * last plain value found. */
enum { KVDB_VALUE_MAX = 16384 }; /* the longest value a leaf holds: a quarter of 64 KiB */
typedef struct {
    kvdb_map *map;
    uint64_t root;
    kvdb_result result;
    uint8_t value[KVDB_VALUE_MAX];
} kvdb_tree;

/* Look key up in t's tree. The common outcome, a plain value stored in its leaf, is copied to
 * t->value and its length returned (>= 0), so the caller slices a buffer it holds and reads
 * nothing else; every other outcome is a negative KVDB_GET_* code with t->result filled in. */
enum {
    KVDB_GET_MISSING = -1,  /* no such key */
    KVDB_GET_VALUE = -2,    /* a plain value longer than KVDB_VALUE_MAX (result.offset, length) */
    KVDB_GET_OVERFLOW = -3, /* an overflow reference (12 bytes at result.offset) */
    KVDB_GET_BUCKET = -4,   /* the key names a nested bucket */
    KVDB_GET_CORRUPT = -5,  /* as KVDB_ECORRUPT */
    KVDB_GET_NOMEM = -6
};
int64_t kvdb_get(kvdb_tree *t, const uint8_t *key, size_t klen);

/* Decode the leaf or branch page run at pgid (verified first) into offsets in the file.
 * Leaf: for entry i, flags[i], key at [ends[2i], ends[2i+1]), value at [ends[2i+1], ends[2i+2]).
 * Branch: key i at [ends[i], ends[i+1]), child i is children[i]; flags unused.
 * ends holds cap entries (2 * count + 1 for a leaf, count + 1 for a branch; KVDB_ESPACE says
 * how many are needed in r->length); flags and children hold cap / 2 and cap entries. */
int kvdb_node(kvdb_map *m, uint64_t pgid, uint64_t *ends, uint8_t *flags, uint64_t *children,
              size_t cap, kvdb_result *r);

/* The same decoding for a page run held in memory (buf, n bytes, starting with its header),
 * without verifying its checksum: for page buffers and fuzz tests. Offsets are into buf. */
int kvdb_decode(const uint8_t *buf, size_t n, uint64_t *ends, uint8_t *flags, uint64_t *children,
                size_t cap, kvdb_result *r);

/* Encode a sealed leaf page run at pgid into out (cap bytes) whose values are all stored in
 * the leaf: data is key 0, value 0, key 1, ... packed (ndata bytes), lens their nlens lengths
 * (two per entry). Header, elements, data, zero padding to whole pages and checksum are
 * written; returns the run's size in bytes, KVDB_ESPACE if it does not fit in cap, or
 * KVDB_EINVAL (odd nlens, a key longer than 65535, lengths that do not add up to ndata), in
 * which case out is untouched. Only after kvdb_hash_init succeeded. */
int64_t kvdb_encode_leaf(uint8_t *out, size_t cap, uint32_t page_size, uint64_t pgid,
                         const uint8_t *data, size_t ndata, const uint32_t *lens, size_t nlens);
/* The same for a branch page: count keys packed in keys (nkeys bytes) with lengths lens, and
 * the count child page ids. */
int64_t kvdb_encode_branch(uint8_t *out, size_t cap, uint32_t page_size, uint64_t pgid,
                           const uint8_t *keys, size_t nkeys, const uint32_t *lens,
                           const uint64_t *children, size_t count);

/* Put the C base class of keyval.db's Bucket (csrc/db/pylookup.c) into the dict ns (a
 * PyObject *, passed as a pointer) as "CLookup", and the plain leaf encoders of
 * csrc/db/pyencode.c as "leaf_size" and "encode_leaf", csrc/db/pynode.c's "dirty_list" and
 * csrc/db/pysplit.c's "leaf_cuts".
 * 0, or -1 if that failed. Takes the GIL itself; the one function here that uses the Python
 * API. */
int kvdb_py_export(void *ns);

#endif
