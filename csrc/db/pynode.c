/* The lists of a dirty node and the tuples of a clean one, made without the cyclic garbage
 * collector's tracking.
 *
 * Why: a write transaction copies every node it changes into a dirty node whose keys and
 * values are lists (a 1,000-put transaction over 1M keys makes about 1,500 of them). Lists are
 * tracked by the collector from birth, so each of the ~10 young collections such a
 * transaction triggers walked hundreds of these lists and read the header of every key and
 * value in them: the collector took about as long as the puts themselves.
 *
 * Untracking a container is safe when it can never be part of a reference cycle, since the
 * collector exists only to free cycles. A dirty node's lists hold bytes keys, and bytes values,
 * OverflowRef or BucketHeader (leaf), or page ids and dirty child nodes (branch): none of
 * these ever refers back to the node or its ancestors (a tree has no upward links), so no cycle
 * can pass through the lists. Reference counting frees them as before. Callers must keep to
 * that contract: never put an object that may refer back to the list into it.
 *
 * A clean node's tuples hold the same kinds of items. CPython untracks such a tuple by itself,
 * but only when a young collection first walks it and reads every item's header, by then out
 * of the CPU cache: the ~1,500 nodes a 1,000-put commit seals cost ~15% of the commit that way.
 *
 *   dirty_list(iterable) -> list: a new list of the items, untracked by the collector
 *   clean_tuple(iterable) -> tuple: a new tuple of the items, untracked by the collector
 *   seal_entries(node): a dirty node's lists replaced by such tuples, the entries moved out of
 *       lists nothing else holds (db_entries_move in pynode.h says what that spares)
 *   decode_plain_leaf(buf, start, count, end) -> (keys, vals) | None
 *
 * decode_plain_leaf cuts a leaf body whose values are all stored in the leaf (the common
 * case) into two such tuples: keyval/db/page.py's decode_leaf_body in C, for the nodes a walk
 * bigger than the cache decodes by the thousand (10 us a page in Python, ~60% of a full scan
 * through the default cache). It answers None for everything else, valid or not (an overflow
 * or bucket value, entries past `end`, a count that does not fit): the Python codec then
 * decodes the page, or raises the CorruptionError that names what is wrong.
 *
 * The Node objects too: the page cache holds ~100,000 of them and a commit adds ~1,500, so
 * full collections came every ~10 commits and each walked every cached node (~80 ms, 7 of a
 * 1,000-put commit's 42 ms on average). A node refers only to its lists or tuples, and those
 * only down the tree: no cycle can pass through one. So CNode, the C base class of Node that
 * holds its fields (csrc/db/pynode.h), is not a collector type at all, and its Python subclass
 * adds no fields and so is not one either. Its fields are what the C put path reads directly.
 */
#include <Python.h>

#include <structmember.h>

#include "internal.h"
#include "pynode.h"

PyObject *db_node_base;

static void node_dealloc(PyObject *self)
{
    db_node_object *n = (db_node_object *)self;
    Py_CLEAR(n->leaf);
    Py_CLEAR(n->keys);
    Py_CLEAR(n->vals);
    Py_CLEAR(n->pgid);
    Py_CLEAR(n->span);
    Py_CLEAR(n->dirty);
    Py_CLEAR(n->plain);
    Py_CLEAR(n->packed);
    Py_CLEAR(n->dirty_kids);
    db_free_heap_object(self);
}

/* T_OBJECT_EX, as __slots__ makes: the interpreter specializes attribute reads and writes of
 * those members only (T_OBJECT fields took the generic path, 10% slower puts in Python). */

/* Node(leaf, keys, vals, pgid=0, span=1, dirty=False, plain=False): the fields set, packed
 * False and dirty_kids None, and the object taken out of the collector's view. A class made by
 * a class statement is always a collector type, so the Python subclass's objects start
 * tracked; since no field can lead back to the node (see above), they are untracked here. */
static int node_init(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"leaf", "keys", "vals", "pgid", "span", "dirty", "plain", NULL};
    PyObject *leaf, *keys, *vals, *pgid = NULL, *span = NULL, *dirty = Py_False,
                                  *plain = Py_False;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|OOOO:Node", names, &leaf, &keys, &vals,
                                     &pgid, &span, &dirty, &plain))
        return -1;
    /* New references from here on; 0 and 1 are CPython's cached small ints. */
    pgid = pgid != NULL ? (Py_INCREF(pgid), pgid) : PyLong_FromLong(0);
    span = span != NULL ? (Py_INCREF(span), span) : PyLong_FromLong(1);
    if (pgid == NULL || span == NULL) {
        Py_XDECREF(pgid);
        Py_XDECREF(span);
        return -1;
    }
    db_node_object *n = (db_node_object *)self;
    PyObject *old[9] = {n->leaf, n->keys, n->vals, n->pgid, n->span,
                        n->dirty, n->plain, n->packed, n->dirty_kids};
    Py_INCREF(leaf);
    Py_INCREF(keys);
    Py_INCREF(vals);
    Py_INCREF(dirty);
    Py_INCREF(plain);
    Py_INCREF(Py_False);
    Py_INCREF(Py_None);
    n->leaf = leaf;
    n->keys = keys;
    n->vals = vals;
    n->pgid = pgid;
    n->span = span;
    n->dirty = dirty;
    n->plain = plain;
    n->packed = Py_False;
    n->dirty_kids = Py_None;
    for (int i = 0; i < 9; i++)
        Py_XDECREF(old[i]);
    if (PyObject_IS_GC(self))
        PyObject_GC_UnTrack(self);
    return 0;
}

#define NODE_FIELD(name, doc)                                                                  \
    {#name, T_OBJECT_EX, offsetof(db_node_object, name), 0, doc}

static PyMemberDef node_members[] = {
    NODE_FIELD(leaf, "True for a leaf, False for a branch"),
    NODE_FIELD(keys, "the keys: a list while dirty, a tuple once clean"),
    NODE_FIELD(vals, "a leaf's values, a branch's children (page ids or dirty nodes)"),
    NODE_FIELD(pgid, "the page the node was read from or sealed into (0: not yet)"),
    NODE_FIELD(span, "pages of that run"),
    NODE_FIELD(dirty, "changed in this write transaction"),
    NODE_FIELD(plain, "a leaf whose values are all bytes kept in the leaf"),
    NODE_FIELD(packed, "left whole by appends at its end (spilled into full pages)"),
    NODE_FIELD(dirty_kids, "a dirty branch's indices of its dirty children, or None"),
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot node_slots[] = {
    {Py_tp_doc, "The fields of keyval.db's Node, in C (see csrc/db/pynode.h)."},
    {Py_tp_dealloc, node_dealloc},
    {Py_tp_init, node_init},
    {Py_tp_members, node_members},
    {0, NULL},
};

PyType_Spec db_node_spec = {
    .name = "keyval._db_cffi.CNode",
    .basicsize = sizeof(db_node_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = node_slots,
};

/* A new list of the items of an iterable, untracked by the collector. */
static PyObject *untracked_list(PyObject *items)
{
    PyObject *out = PySequence_List(items);
    if (out != NULL)
        PyObject_GC_UnTrack(out);
    return out;
}

PyObject *db_node_dirty_copy(PyObject *type, const db_node_object *clean)
{
    int branch = clean->leaf != Py_True;
    PyObject *keys = untracked_list(clean->keys);
    PyObject *vals = keys != NULL ? untracked_list(clean->vals) : NULL;
    PyObject *kids = vals != NULL && branch ? PyList_New(0) : NULL;
    if (kids != NULL)
        PyObject_GC_UnTrack(kids);
    PyTypeObject *t = (PyTypeObject *)type;
    /* tp_alloc zeroes the fields and takes a reference to a heap type (db_free_heap_object
     * drops it). */
    PyObject *self = vals != NULL && (kids != NULL || !branch) ? t->tp_alloc(t, 0) : NULL;
    if (self == NULL) {
        Py_XDECREF(keys);
        Py_XDECREF(vals);
        Py_XDECREF(kids);
        return NULL;
    }
    db_node_object *n = (db_node_object *)self;
    n->leaf = Py_NewRef(clean->leaf);
    n->keys = keys;
    n->vals = vals;
    n->pgid = PyLong_FromLong(0); /* CPython's cached small ints: these cannot fail */
    n->span = PyLong_FromLong(1);
    n->dirty = Py_NewRef(Py_True);
    n->plain = Py_NewRef(clean->plain);
    n->packed = Py_NewRef(Py_False);
    n->dirty_kids = branch ? kids : Py_NewRef(Py_None);
    if (PyObject_IS_GC(self)) /* as node_init: no field leads back to the node */
        PyObject_GC_UnTrack(self);
    return self;
}

PyObject *db_entries_room(PyObject *seq, int as_tuple)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = as_tuple ? PyTuple_New(n) : PyList_New(n);
    /* The empty tuple is a shared singleton: left as CPython keeps it. */
    if (out != NULL && (n > 0 || !as_tuple))
        PyObject_GC_UnTrack(out);
    return out;
}

void db_entries_move(PyObject *room, PyObject *from)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(room);
    PyObject **to = PySequence_Fast_ITEMS(room), **items = PySequence_Fast_ITEMS(from);
    memcpy(to, items, (size_t)n * sizeof *items);
    if (Py_REFCNT(from) != 1) {
        for (Py_ssize_t i = 0; i < n; i++)
            Py_INCREF(to[i]);
    } else if (PyList_CheckExact(from)) {
        Py_SET_SIZE(from, 0); /* an empty list, whose deallocation frees only its array */
    } else {
        memset(items, 0, (size_t)n * sizeof *items); /* a tuple's deallocation skips NULLs */
    }
}

static PyObject *py_seal_entries(PyObject *module, PyObject *arg)
{
    (void)module;
    if (!PyObject_TypeCheck(arg, (PyTypeObject *)db_node_base)) {
        PyErr_SetString(PyExc_TypeError, "seal_entries(node): node is a Node");
        return NULL;
    }
    db_node_object *n = (db_node_object *)arg;
    if (n->keys == NULL || n->vals == NULL || !PyList_CheckExact(n->keys) ||
        !PyList_CheckExact(n->vals)) {
        PyErr_SetString(PyExc_TypeError, "seal_entries(node): a dirty node's entries are lists");
        return NULL;
    }
    PyObject *keys = db_entries_room(n->keys, 1);
    PyObject *vals = keys != NULL ? db_entries_room(n->vals, 1) : NULL;
    if (vals == NULL) {
        Py_XDECREF(keys);
        return NULL;
    }
    db_entries_move(keys, n->keys);
    db_entries_move(vals, n->vals);
    db_set_field(&n->keys, keys);
    db_set_field(&n->vals, vals);
    Py_DECREF(keys);
    Py_DECREF(vals);
    Py_RETURN_NONE;
}

static PyObject *py_dirty_list(PyObject *module, PyObject *arg)
{
    (void)module;
    return untracked_list(arg);
}

static PyObject *py_clean_tuple(PyObject *module, PyObject *arg)
{
    (void)module;
    PyObject *out = PySequence_Tuple(arg);
    /* The empty tuple is a shared singleton: leave it as CPython keeps it. */
    if (out != NULL && PyTuple_Size(out) > 0)
        PyObject_GC_UnTrack(out);
    return out;
}

static PyObject *py_decode_plain_leaf(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "decode_plain_leaf(buf, start, count, end)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]), count = PyLong_AsSsize_t(args[2]),
               end = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *keys = NULL, *vals = NULL, *out = NULL;
    const uint8_t *buf = (const uint8_t *)view.buf;
    if (start < 0 || count < 0 || end > view.len || start > end ||
        count > (end - start) / DB_LEAF_ELEMENT)
        goto none;
    Py_ssize_t pos = start + count * DB_LEAF_ELEMENT;
    for (Py_ssize_t i = 0; i < count; i++) { /* all in the leaf, all within the page */
        const uint8_t *e = buf + start + i * DB_LEAF_ELEMENT;
        if (e[0] != DB_FLAG_VALUE || db_get16(e + 1) == 0 || db_get16(e + 1) > DB_MAX_KEY)
            goto none; /* the Python codec decodes it, or says what is wrong with it */
        pos += (Py_ssize_t)db_get16(e + 1) + (Py_ssize_t)db_get32(e + 3);
        if (pos > end)
            goto none;
    }
    keys = PyTuple_New(count);
    vals = PyTuple_New(count);
    if (keys == NULL || vals == NULL)
        goto fail;
    pos = start + count * DB_LEAF_ELEMENT;
    for (Py_ssize_t i = 0; i < count; i++) {
        const uint8_t *e = buf + start + i * DB_LEAF_ELEMENT;
        Py_ssize_t klen = db_get16(e + 1), vlen = (Py_ssize_t)db_get32(e + 3);
        PyObject *k = PyBytes_FromStringAndSize((const char *)buf + pos, klen);
        if (k == NULL || PyTuple_SetItem(keys, i, k) < 0)
            goto fail;
        pos += klen;
        PyObject *v = PyBytes_FromStringAndSize((const char *)buf + pos, vlen);
        if (v == NULL || PyTuple_SetItem(vals, i, v) < 0)
            goto fail;
        pos += vlen;
    }
    if (count > 0) { /* bytes only: see clean_tuple */
        PyObject_GC_UnTrack(keys);
        PyObject_GC_UnTrack(vals);
    }
    out = PyTuple_Pack(2, keys, vals);
fail:
    Py_XDECREF(keys);
    Py_XDECREF(vals);
    PyBuffer_Release(&view);
    return out;
none:
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

PyMethodDef db_py_node_functions[] = {
    {"dirty_list", py_dirty_list, METH_O,
     "dirty_list(iterable) -> list of its items, untracked by the garbage collector (for a "
     "dirty node's entries, which can never be part of a reference cycle)"},
    {"clean_tuple", py_clean_tuple, METH_O,
     "clean_tuple(iterable) -> tuple of its items, untracked by the garbage collector (for a "
     "clean node's entries, under the same contract as dirty_list)"},
    {"seal_entries", py_seal_entries, METH_O,
     "seal_entries(node): a dirty node's entry lists replaced by tuples, untracked by the "
     "garbage collector, the entries moved out of a list nothing else holds (else copied)"},
    {"decode_plain_leaf", (PyCFunction)(void (*)(void))py_decode_plain_leaf, METH_FASTCALL,
     "decode_plain_leaf(buf, start, count, end) -> (keys, vals) tuples, or None when the "
     "Python codec must decode the leaf (see csrc/db/pynode.c)"},
    {NULL, NULL, 0, NULL},
};
