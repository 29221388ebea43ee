/* Bucket's C base class: Bucket.get (and, further down, Bucket.put) as C methods.
 *
 * get: the lookup fast path without a Python frame or a cffi call.
 *
 * Why: with the descent in C, a random get in a 1M-key tree spent about a fifth of its time on
 * the Python side of the call: the method's frame, cffi's argument conversion (a tuple per
 * call) and slicing the value out of a cffi buffer. A method of a C base class of Bucket does
 * the common case (an exact bytes key, the tree in committed pages, a plain value or no key)
 * and builds the value straight from the map; every other case calls Bucket._get, the Python
 * method, with the same arguments, so type checks, errors and corruption reports are the
 * Python path's. A subclass must define _get.
 *
 * The type is made at run time (kvdb_py_export: cffi modules have no hook to add types of
 * their own) and handed to keyval/db/pagemap.py in a dict. Its method is called by the
 * interpreter, with the GIL, and keeps it for the whole lookup, as the cffi lookups do (see
 * keyval/_db_build.py: releasing and retaking it per call starves other threads).
 *
 * Built against the full C API (not the stable ABI; see keyval/_db_build.py): the put path
 * reads list items with the unchecked macros and inserts with one memmove.
 */
#include <Python.h>

#include <structmember.h>

#include "internal.h"
#include "pynode.h"

typedef struct {
    PyObject_HEAD
    kvdb_map *map; /* NULL: no C lookups now; Bucket._get answers */
    uint64_t root;
    Py_ssize_t split_entries; /* 0: no puts in C now; Bucket._put answers */
    Py_ssize_t max_value;     /* the longest value a put in C stores (in the leaf) */
    /* Bucket's fields that a put changes (Bucket._node etc.), read and written here without
     * attribute lookups, which were a fifth of an ascending bulk load's puts. Python objects in
     * T_OBJECT_EX members, as __slots__ makes, so that the interpreter's specialized attribute
     * access still applies to them in Bucket's Python methods. */
    PyObject *node;       /* _node: the bucket's root node in this transaction, or None */
    PyObject *mods;       /* _mods: changes made in this transaction (an int) */
    PyObject *count;      /* _count: keys in the bucket (an int) */
    PyObject *unbalanced; /* _unbalanced: whether a node may have shrunk (Bucket._spill) */
    /* From _c_put_on, NULL while puts in C are off: the DB, whose page cache (DB._hot) a put
     * in C takes clean nodes from, and the transaction's list of freed runs (Tx._freed). */
    PyObject *db;
    PyObject *freed;
} lookup_object;

enum { MAX_KEY = 32 * 1024, MAX_DEPTH = 64 };

/* Interned names, made by kvdb_py_export. */
static PyObject *fallback_name, *put_fallback_name, *hot_name;
static PyObject *node_type; /* keyval.db.node.Node, from _c_put_on; kept for good */

/* type(self).<name>(self, *args, **kwargs): the function is found on the type (no bound method
 * made) and called without a tuple in the usual cases (a write transaction's gets come here). */
static PyObject *slow(PyObject *name, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames)
{
    PyObject *func = PyObject_GetAttr((PyObject *)Py_TYPE(self), name);
    if (func == NULL)
        return NULL;
    PyObject *tuple = NULL, *kwargs = NULL, *out = NULL;
    if (kwnames == NULL && nargs == 1) {
        out = PyObject_CallFunctionObjArgs(func, self, args[0], NULL);
        goto done;
    }
    if (kwnames == NULL && nargs == 2) {
        out = PyObject_CallFunctionObjArgs(func, self, args[0], args[1], NULL);
        goto done;
    }
    tuple = PyTuple_New(nargs + 1);
    if (tuple == NULL)
        goto done;
    Py_INCREF(self);
    PyTuple_SetItem(tuple, 0, self); /* steals; cannot fail on a new tuple */
    for (Py_ssize_t i = 0; i < nargs; i++) {
        Py_INCREF(args[i]);
        PyTuple_SetItem(tuple, i + 1, args[i]);
    }
    if (kwnames != NULL) {
        kwargs = PyDict_New();
        if (kwargs == NULL)
            goto done;
        for (Py_ssize_t i = 0; i < PyTuple_Size(kwnames); i++)
            if (PyDict_SetItem(kwargs, PyTuple_GetItem(kwnames, i), args[nargs + i]) < 0)
                goto done;
    }
    out = PyObject_Call(func, tuple, kwargs);
done:
    Py_DECREF(func);
    Py_XDECREF(tuple);
    Py_XDECREF(kwargs);
    return out;
}

static PyObject *lookup_get(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    lookup_object *o = (lookup_object *)self;
    if (o->map != NULL && kwnames == NULL && (nargs == 1 || nargs == 2) &&
        PyBytes_CheckExact(args[0])) {
        char *key;
        Py_ssize_t klen;
        if (PyBytes_AsStringAndSize(args[0], &key, &klen) < 0)
            return NULL;
        if (klen == 0 || klen > DB_MAX_KEY) /* Bucket._get raises for it, as put does */
            return slow(fallback_name, self, args, nargs, kwnames);
        kvdb_result r;
        int rc = db_find(o->map, o->root, (const uint8_t *)key, (size_t)klen, &r);
        if (rc == KVDB_GET_VALUE)
            return PyBytes_FromStringAndSize((const char *)o->map->base + r.offset, r.length);
        if (rc == KVDB_GET_MISSING) {
            PyObject *dflt = nargs == 2 ? args[1] : Py_None;
            Py_INCREF(dflt);
            return dflt;
        }
    }
    return slow(fallback_name, self, args, nargs, kwnames);
}

/* -- put ------------------------------------------------------------------------------------
 *
 * Bucket.put in C for the cases a bulk load and a batch of updates are made of: exact bytes key
 * and value, the value short enough to stay in the leaf, in a bucket already changed in this
 * transaction. Bucket._put arms it (_c_put_on) after a put of its own, which proves all of
 * that but the path; _no_c disarms it. On the way down, a clean child (a page id) whose node
 * is in the page cache's hot generation is made dirty as child_for_write does (node.py): its
 * run freed, a dirty copy put in its place. Anything else goes to Bucket._put: a clean child
 * not in the hot cache (loading it may read the file), an existing key whose value is not
 * plain bytes, a node or list that is not what the Python side makes, a new key that would
 * overfill its leaf (the split is Python's). What the caller sees changes only with the put's
 * own changes, those of Bucket._put in its order: _mods, the entry, _count; a path made dirty
 * before handing over holds the same entries. Nothing here calls Python code.
 */

/* Start loading the bytes object at keys[i] (its header and first bytes) into the cache. */
static inline void prefetch_key(PyObject *keys, Py_ssize_t i)
{
    PyObject *item = PyList_GET_ITEM(keys, i); /* callers keep i in range */
    __builtin_prefetch(item);
    __builtin_prefetch((const char *)item + 32);
}

/* keys[i] compared with k (memcmp order, then length), or -2 if it is not bytes. The
 * unchecked macros, not the API calls: this runs ~20 times per put, and bisect keeps i in
 * range of the list it sized (nothing that runs Python code comes between). */
static int compare_at(PyObject *keys, Py_ssize_t i, const char *k, Py_ssize_t klen)
{
    PyObject *item = PyList_GET_ITEM(keys, i);
    if (!PyBytes_CheckExact(item))
        return -2;
    int c = db_compare((const uint8_t *)PyBytes_AS_STRING(item), (size_t)PyBytes_GET_SIZE(item),
                       (const uint8_t *)k, (size_t)klen);
    return c < 0 ? -1 : c > 0;
}

/* bisect_left (right == 0) or bisect_right over a list of bytes; -1 if an item is not bytes.
 *
 * The last key is tried first: an ascending load puts every key past it, in a node just
 * written and still in the CPU cache. Otherwise each probe reads a bytes object somewhere in
 * the heap, in a tree bigger than the CPU cache a miss each: both keys the next probe may read
 * are fetched while this one compares, so the misses of consecutive probes overlap (random
 * bulk load: puts 17% faster). */
static Py_ssize_t bisect(PyObject *keys, const char *k, Py_ssize_t klen, int right)
{
    Py_ssize_t lo = 0, hi = PyList_GET_SIZE(keys);
    if (hi == 0)
        return 0;
    /* The first probe's key loads while the last one is compared: a random put pays one miss
     * for both, not two in a row. */
    prefetch_key(keys, (hi - 1) / 2);
    int c = compare_at(keys, hi - 1, k, klen);
    if (c == -2)
        return -1;
    if (right ? c <= 0 : c < 0)
        return hi;
    hi--; /* the last key is not before the answer */
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (hi - lo > 2) {
            prefetch_key(keys, lo + (mid - lo) / 2);
            prefetch_key(keys, mid + 1 + (hi - mid - 1) / 2);
        }
        c = compare_at(keys, mid, k, klen);
        if (c == -2)
            return -1;
        if (right ? c <= 0 : c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* A new reference to field + 1 for an int field; NULL with an exception if it is not one. */
static PyObject *plus_one(PyObject *field)
{
    Py_ssize_t v = field == NULL ? -1 : PyLong_AsSsize_t(field);
    if (v == -1 && (field == NULL || PyErr_Occurred())) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "a bucket counter is not set");
        return NULL;
    }
    if (v == PY_SSIZE_T_MAX) { /* unreachable from a valid file: page.py bounds the count */
        PyErr_SetString(PyExc_OverflowError, "a bucket counter is at its largest value");
        return NULL;
    }
    return PyLong_FromSsize_t(v + 1);
}

/* *slot = next, which the slot takes over. */
static void replace(PyObject **slot, PyObject *next)
{
    PyObject *was = *slot;
    *slot = next;
    Py_XDECREF(was);
}

/* *slot += 1 for an int field; -1 with an exception if it is not one. */
static int increment(PyObject **slot)
{
    PyObject *next = plus_one(*slot);
    if (next == NULL)
        return -1;
    replace(slot, next);
    return 0;
}

/* list.insert(i, item) for 0 <= i <= len(list), with one memmove: PyList_Insert shifts the
 * tail one pointer at a time, and a leaf of ~500 entries makes that a sixth of a random
 * bulk load's time. */
static int list_insert(PyObject *list, Py_ssize_t i, PyObject *item)
{
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (PyList_Append(list, item) < 0) /* grows (amortised) and takes a reference */
        return -1;
    if (i < n) {
        PyObject **items = ((PyListObject *)list)->ob_item;
        memmove(&items[i + 1], &items[i], (size_t)(n - i) * sizeof *items);
        items[i] = item;
    }
    return 0;
}

/* node as a dirty Node (its leaf field says which kind), or NULL if it is not something a put
 * in C may change: a clean node (Bucket._put copies it first), or not a Node at all. */
static db_node_object *dirty_node(PyObject *node)
{
    if (node == NULL || (PyObject *)Py_TYPE(node) != node_type)
        return NULL;
    db_node_object *n = (db_node_object *)node;
    if (n->dirty != Py_True || n->keys == NULL || n->vals == NULL ||
        !PyList_CheckExact(n->keys) || !PyList_CheckExact(n->vals) ||
        PyList_GET_SIZE(n->keys) != PyList_GET_SIZE(n->vals))
        return NULL;
    return n;
}

/* The clean node of page `pgid` if the hot generation of the page cache holds it (a borrowed
 * reference), else NULL: loading it is Python's (DB._load_node may read and decode the page,
 * or move it from the cold generation). */
static db_node_object *hot_clean_node(lookup_object *o, PyObject *pgid, PyObject **hot_out)
{
    /* Generic attribute lookup (checked in _c_put_on) of a plain instance attribute, and a
     * dict probe with an int key: neither runs Python code. DB._turn_cache replaces the
     * dict, so it is looked up each time. */
    PyObject *hot = PyObject_GetAttr(o->db, hot_name);
    if (hot == NULL) {
        PyErr_Clear(); /* not there (a closed DB): Python's path raises what it should */
        return NULL;
    }
    PyObject *node = PyDict_CheckExact(hot) ? PyDict_GetItemWithError(hot, pgid) : NULL;
    Py_DECREF(hot); /* the DB keeps it (node, borrowed from it, too) until Python code runs */
    if (node == NULL) {
        PyErr_Clear();
        return NULL;
    }
    *hot_out = hot; /* borrowed, as node */
    if ((PyObject *)Py_TYPE(node) != node_type)
        return NULL;
    db_node_object *n = (db_node_object *)node;
    int seq_ok = n->keys != NULL && n->vals != NULL &&
                 (PyTuple_CheckExact(n->keys) || PyList_CheckExact(n->keys)) &&
                 (PyTuple_CheckExact(n->vals) || PyList_CheckExact(n->vals)) &&
                 PySequence_Fast_GET_SIZE(n->keys) == PySequence_Fast_GET_SIZE(n->vals);
    if (!seq_ok || n->dirty != Py_False || (n->leaf != Py_True && n->leaf != Py_False) ||
        n->span == NULL || !PyLong_CheckExact(n->span) || n->plain == NULL)
        return NULL;
    return n;
}

/* The clean node itself made dirty in place, as dirty_copy would copy it, when nothing but the
 * hot cache refers to it: no new node, and its entries moved rather than copied, so that
 * neither this nor the eviction of the old node at commit (DB._uncache) touches each entry.
 * It leaves the cache: an older reader that needs its page reads it again, as after any
 * eviction (the page is unchanged until it is reused). A new reference; NULL with an
 * exception (nothing changed); NULL without one when the node is not alone (copy it). */
static PyObject *take_clean(PyObject *hot, PyObject *pgid, db_node_object *clean)
{
    /* The dict's reference and the caller's: no cursor, reader, early write or list of
     * nodes holds it, so no one can see it change. */
    if (Py_REFCNT(clean) != 2 || !PyDict_CheckExact(hot))
        return NULL;
    int branch = clean->leaf != Py_True;
    PyObject *keys = db_entries_room(clean->keys, 0);
    PyObject *vals = keys != NULL ? db_entries_room(clean->vals, 0) : NULL;
    PyObject *kids = vals != NULL && branch ? PyList_New(0) : NULL;
    if (vals == NULL || (branch && kids == NULL) || PyDict_DelItem(hot, pgid) < 0) {
        Py_XDECREF(keys);
        Py_XDECREF(vals);
        Py_XDECREF(kids);
        return NULL; /* with the exception: only an allocation fails here */
    }
    /* Nothing fails from here on. */
    db_entries_move(keys, clean->keys);
    db_entries_move(vals, clean->vals);
    if (kids != NULL)
        PyObject_GC_UnTrack(kids);
    db_set_field(&clean->keys, keys);
    db_set_field(&clean->vals, vals);
    Py_DECREF(keys);
    Py_DECREF(vals);
    PyObject *zero = PyLong_FromLong(0), *one = PyLong_FromLong(1); /* cached: cannot fail */
    db_set_field(&clean->pgid, zero);
    db_set_field(&clean->span, one);
    Py_DECREF(zero);
    Py_DECREF(one);
    db_set_field(&clean->dirty, Py_True);
    db_set_field(&clean->packed, Py_False);
    db_set_field(&clean->dirty_kids, branch ? kids : Py_None);
    Py_XDECREF(kids);
    Py_INCREF(clean);
    return (PyObject *)clean;
}

/* child_for_write (keyval/db/node.py) in C for the clean child parent.vals[i], a page id:
 * 1 with *child the dirty copy now in its place; 0 if its node is not in the hot cache (or
 * not a Node), nothing changed; -1 with an exception, nothing changed. */
static int dirty_child(lookup_object *o, db_node_object *parent, Py_ssize_t i, PyObject **child)
{
    if (o->db == NULL || o->freed == NULL)
        return 0;
    PyObject *pgid = PyList_GET_ITEM(parent->vals, i);
    PyObject *hot = NULL;
    db_node_object *clean = hot_clean_node(o, pgid, &hot);
    if (clean == NULL)
        return 0;
    /* Allocating the copy and the tuple could start a collection, whose finalizers, weakref
     * callbacks and gc.callbacks are Python code (and may let other threads run): code that
     * could end or commit this transaction (o->freed then NULL, parent sealed into tuples or
     * freed), or put into this very bucket, under the borrowed references of fast_put. The
     * collector waits until the copy is made: it runs at the next allocation after the put.
     * The references held and the look again below are only a second line. */
    int collecting = PyGC_Disable();
    Py_INCREF(pgid);
    Py_INCREF(clean);
    PyObject *copy = NULL;
    /* The run first: taking the node in place changes its span. */
    PyObject *run = PyTuple_Pack(2, pgid, clean->span);
    if (run != NULL) {
        copy = take_clean(hot, pgid, clean);
        if (copy == NULL && !PyErr_Occurred())
            copy = db_node_dirty_copy(node_type, clean);
        if (copy == NULL)
            Py_CLEAR(run);
    }
    Py_DECREF(clean);
    if (collecting)
        PyGC_Enable();
    int rc = -1;
    if (run == NULL)
        goto out;
    rc = 0;
    if (i >= PyList_GET_SIZE(parent->vals) || PyList_GET_ITEM(parent->vals, i) != pgid)
        goto out;
    /* The last step that can fail: a run freed while still in the tree would be handed out
     * again by this commit. */
    rc = -1;
    if (PyList_Append(o->freed, run) < 0)
        goto out;
    rc = 1;
    *child = copy;
    PyList_SET_ITEM(parent->vals, i, copy); /* takes copy's reference */
    copy = NULL;
    Py_DECREF(pgid); /* the list's reference to the page id */
    PyObject *kids = parent->dirty_kids;
    if (kids != NULL && PyList_CheckExact(kids)) {
        PyObject *index = PyLong_FromSsize_t(i); /* an int: no collection */
        if (index == NULL || PyList_Append(kids, index) < 0) {
            /* Only a hint for spill: None means "unknown", and spill looks at every child. */
            PyErr_Clear();
            db_set_field(&parent->dirty_kids, Py_None);
        }
        Py_XDECREF(index);
    }
out:
    Py_XDECREF(run);
    Py_XDECREF(copy);
    Py_DECREF(pgid);
    return rc;
}

/* 1: done; 0: not handled (Bucket._put takes it), nothing changed but maybe a path made dirty;
 * -1: error raised, the same. */
static int fast_put(lookup_object *o, PyObject *self, PyObject *key, PyObject *value)
{
    /* Both exactly bytes (bucket_put checked). */
    const char *k = PyBytes_AS_STRING(key);
    Py_ssize_t klen = PyBytes_GET_SIZE(key), vlen = PyBytes_GET_SIZE(value);
    if (klen == 0 || klen > MAX_KEY || vlen > o->max_value)
        return 0; /* the Python path refuses the key, or stores the value in an overflow run */
    /* Borrowed references all the way down: nothing below runs Python code until the leaf
     * is changed, so the tree cannot change under them. */
    db_node_object *node = dirty_node(o->node);
    for (int depth = 0; node != NULL && node->leaf != Py_True; depth++) {
        if (depth == MAX_DEPTH || PyList_GET_SIZE(node->vals) == 0)
            return 0;
        Py_ssize_t i = bisect(node->keys, k, klen, 1);
        if (i < 0)
            return 0;
        i = i > 0 ? i - 1 : 0; /* i <= len before */
        PyObject *child = PyList_GET_ITEM(node->vals, i);
        if (PyLong_CheckExact(child)) {
            int rc = dirty_child(o, node, i, &child);
            if (rc <= 0)
                return rc;
        }
        node = dirty_node(child);
    }
    if (node == NULL || node->leaf != Py_True)
        return 0;
    PyObject *keys = node->keys, *vals = node->vals;
    Py_ssize_t n = PyList_GET_SIZE(keys);
    Py_ssize_t i = bisect(keys, k, klen, 0);
    if (i < 0)
        return 0;
    if (i < n) {
        PyObject *there = PyList_GET_ITEM(keys, i);
        if (!PyBytes_CheckExact(there))
            return 0;
        if (PyBytes_GET_SIZE(there) == klen && memcmp(PyBytes_AS_STRING(there), k, (size_t)klen) == 0) {
            PyObject *old = PyList_GET_ITEM(vals, i); /* borrowed */
            if (!PyBytes_CheckExact(old))
                return 0; /* a nested bucket (an error) or an overflow run to free */
            if (increment(&o->mods) < 0)
                return -1;
            /* A shorter value may leave the leaf underfull: commit must look (Bucket._spill). */
            if (vlen < PyBytes_Size(old) && o->unbalanced != Py_True)
                db_set_field(&o->unbalanced, Py_True);
            Py_INCREF(value);
            PyList_SetItem(vals, i, value); /* steals value, drops the old one */
            return 1;
        }
    }
    /* A new key that overfills the leaf is Bucket._put's, which splits it: a split called
     * from here after the insert would run outside _write's guard, and an exception at its
     * start (KeyboardInterrupt, MemoryError) would leave a put that landed yet raised in a
     * transaction that still commits. One put in about SPLIT_ENTRIES / 2. */
    if (n + 1 > o->split_entries)
        return 0;
    /* The new count is made first: failing after the entry went in would leave the bucket
     * counting one key less than its tree holds, and a commit would write that. */
    PyObject *next_count = plus_one(o->count);
    if (next_count == NULL)
        return -1;
    if (increment(&o->mods) < 0 || list_insert(keys, i, key) < 0) {
        Py_DECREF(next_count);
        return -1;
    }
    if (list_insert(vals, i, value) < 0) {
        PySequence_DelItem(keys, i); /* out of memory: leave the leaf as it was */
        Py_DECREF(next_count);
        return -1;
    }
    replace(&o->count, next_count);
    return 1;
}

static PyObject *bucket_put(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    lookup_object *o = (lookup_object *)self;
    if (o->split_entries > 0 && kwnames == NULL && nargs == 2 && PyBytes_CheckExact(args[0]) &&
        PyBytes_CheckExact(args[1])) {
        int rc = fast_put(o, self, args[0], args[1]);
        if (rc < 0)
            return NULL;
        if (rc > 0)
            Py_RETURN_NONE;
    }
    return slow(put_fallback_name, self, args, nargs, kwnames);
}

/* _c_put_on(node_type, split_entries, max_value[, db, freed]): puts in C from now on (see
 * above), making clean children dirty too when given the DB and the transaction's Tx._freed;
 * _c_put_on(None, 0, 0): off. */
static PyObject *bucket_put_on(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 && nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "_c_put_on(node_type, split_entries, max_value[, db, freed])");
        return NULL;
    }
    Py_ssize_t split = PyLong_AsSsize_t(args[1]), max_value = PyLong_AsSsize_t(args[2]);
    if ((split == -1 || max_value == -1) && PyErr_Occurred())
        return NULL;
    if (split > 0) {
        /* The put reads nodes as CNode's struct: only its subclasses will do. */
        if (!PyType_Check(args[0]) || db_node_base == NULL ||
            !PyType_IsSubtype((PyTypeObject *)args[0], (PyTypeObject *)db_node_base)) {
            PyErr_SetString(PyExc_TypeError, "_c_put_on: node_type must be a subclass of CNode");
            return NULL;
        }
        if (node_type == NULL) {
            Py_INCREF(args[0]);
            node_type = args[0];
        } else if (node_type != args[0]) {
            PyErr_SetString(PyExc_ValueError, "_c_put_on: another node type");
            return NULL;
        }
    }
    lookup_object *o = (lookup_object *)self;
    o->split_entries = split > 0 ? split : 0;
    o->max_value = max_value;
    /* Clean children are made dirty here only while the DB's attributes are read without
     * running Python code, and the freed runs go to a real list. */
    PyObject *db = nargs == 5 && split > 0 ? args[3] : NULL;
    PyObject *freed = nargs == 5 && split > 0 ? args[4] : NULL;
    if (db != NULL && (Py_TYPE(db)->tp_getattro != PyObject_GenericGetAttr ||
                       !PyList_CheckExact(freed)))
        db = freed = NULL;
    Py_XINCREF(db);
    Py_XINCREF(freed);
    Py_XSETREF(o->db, db);
    Py_XSETREF(o->freed, freed);
    Py_RETURN_NONE;
}

/* _c_bind(map_address, root): look keys up in the tree at root through the kvdb_map at
 * map_address, which the caller keeps alive until _c_bind(0, 0). */
static PyObject *lookup_bind(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_c_bind(map_address, root)");
        return NULL;
    }
    void *map = PyLong_AsVoidPtr(args[0]);
    if (map == NULL && PyErr_Occurred())
        return NULL;
    unsigned long long root = PyLong_AsUnsignedLongLong(args[1]);
    if (root == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    lookup_object *o = (lookup_object *)self;
    o->map = map;
    o->root = root;
    Py_RETURN_NONE;
}

static PyMethodDef lookup_methods[] = {
    {"get", (PyCFunction)(void (*)(void))lookup_get, METH_FASTCALL | METH_KEYWORDS,
     "get($self, /, key, default=None)\n--\n\n"
     "The value of ``key``, or ``default`` if it is absent (or names a nested bucket)."},
    {"_c_bind", (PyCFunction)(void (*)(void))lookup_bind, METH_FASTCALL,
     "Bind (or with 0, 0 unbind) the C lookup path; see csrc/db/pylookup.c."},
    {"put", (PyCFunction)(void (*)(void))bucket_put, METH_FASTCALL | METH_KEYWORDS,
     "put($self, /, key, value)\n--\n\n"
     "Set ``key`` to ``value``. Raises BucketExists if ``key`` names a nested bucket."},
    {"_c_put_on", (PyCFunction)(void (*)(void))bucket_put_on, METH_FASTCALL,
     "Arm (or with None, 0, 0 disarm) the C put path; see csrc/db/pylookup.c."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef lookup_members[] = {
    {"_node", T_OBJECT_EX, offsetof(lookup_object, node), 0, "the root node in this transaction"},
    {"_mods", T_OBJECT_EX, offsetof(lookup_object, mods), 0, "changes in this transaction"},
    {"_count", T_OBJECT_EX, offsetof(lookup_object, count), 0, "keys in the bucket"},
    {"_unbalanced", T_OBJECT_EX, offsetof(lookup_object, unbalanced), 0,
     "whether a node may have shrunk in this transaction"},
    {NULL, 0, 0, 0, NULL},
};

/* Bucket is a collector type; this base is not: its objects (a node tree, a bool, the DB, a
 * list of (page id, span) tuples) never refer back to a bucket, so no cycle passes through
 * them. */
static void lookup_dealloc(PyObject *self)
{
    lookup_object *o = (lookup_object *)self;
    Py_CLEAR(o->node);
    Py_CLEAR(o->mods);
    Py_CLEAR(o->count);
    Py_CLEAR(o->unbalanced);
    Py_CLEAR(o->db);
    Py_CLEAR(o->freed);
    db_free_heap_object(self);
}

static PyType_Slot lookup_slots[] = {
    {Py_tp_doc, "keyval.db's C lookup path: the base class of Bucket."},
    {Py_tp_methods, lookup_methods},
    {Py_tp_members, lookup_members},
    {Py_tp_dealloc, lookup_dealloc},
    {0, NULL},
};

static PyType_Spec lookup_spec = {
    .name = "keyval._db_cffi.CLookup",
    .basicsize = sizeof(lookup_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = lookup_slots,
};

extern PyMethodDef db_py_encoders[], db_py_node_functions[], db_py_split_functions[],
    db_py_spill_functions[];

/* Adds a NULL-terminated table of functions to the dict ns: 0 or -1. */
static int add_functions(PyObject *ns, PyMethodDef *defs)
{
    for (PyMethodDef *def = defs; def->ml_name != NULL; def++) {
        PyObject *f = PyCFunction_NewEx(def, NULL, NULL);
        if (f == NULL)
            return -1;
        int rc = PyDict_SetItemString(ns, def->ml_name, f);
        Py_DECREF(f);
        if (rc < 0)
            return -1;
    }
    return 0;
}

int kvdb_py_export(void *namespace)
{
    /* cffi calls this like any other function of the module; take the GIL whether or not the
     * binding released it. */
    PyGILState_STATE gil = PyGILState_Ensure();
    int rc = -1;
    PyObject *ns = namespace, *type = NULL;
    if (!PyDict_Check(ns))
        goto out;
    if (fallback_name == NULL) {
        struct {
            PyObject **slot;
            const char *text;
        } names[] = {{&fallback_name, "_get"}, {&put_fallback_name, "_put"}, {&hot_name, "_hot"}};
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if ((*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
                goto out;
    }
    type = PyType_FromSpec(&lookup_spec);
    if (type == NULL)
        goto out;
    rc = PyDict_SetItemString(ns, "CLookup", type);
    if (rc == 0 && db_node_base == NULL && (db_node_base = PyType_FromSpec(&db_node_spec)) == NULL)
        rc = -1;
    if (rc == 0)
        rc = PyDict_SetItemString(ns, "CNode", db_node_base);
    if (rc == 0)
        rc = add_functions(ns, db_py_encoders);
    if (rc == 0)
        rc = add_functions(ns, db_py_node_functions);
    if (rc == 0)
        rc = add_functions(ns, db_py_split_functions);
    if (rc == 0)
        rc = add_functions(ns, db_py_spill_functions);
out:
    Py_XDECREF(type);
    if (rc < 0)
        PyErr_Clear();
    PyGILState_Release(gil);
    return rc;
}
