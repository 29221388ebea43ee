/* A commit's sealing of a branch's dirty plain leaves: keyval/db/node.py's spill step, in C.
 *
 * Why: a 1M-key bulk load spills some 1,000 dirty leaves of up to 1,024 entries each into
 * 31,000 pages. In Python every page cost a dozen calls (cut, size, allocate, encode, two
 * tuples, a Node, the run), 8 us a page and two thirds of the commit; here it is one call per
 * branch and one call of `allocate` per page.
 *
 *   seal_leaves(keys, children, dirty, end, page_size, threshold, min_entries, allocate, runs)
 *       -> how many of dirty[:end] are left
 *
 * keys, children: a dirty branch's lists; dirty: the indices of its dirty children, strictly
 * ascending. The children at dirty[end - 1], dirty[end - 2], ... are done as spill's loop does
 * them in Python, back to front, for as long as each is a dirty plain leaf (a CNode whose
 * values are all bytes in the leaf):
 *   - cut into pages by leaf_cuts' rule (pysplit.c) with threshold bytes a page, or page_size
 *     if the leaf is packed;
 *   - for each page, front to back: pgid = allocate(span); the page encoded; the entries made
 *     tuples (untracked, as clean_tuple's; a leaf left whole moves its entries into them);
 *     (pgid, span, [page], node) appended to runs, where node is the leaf itself, made clean,
 *     when it fits one page, else a new node of the same class (leaf, keys, vals, pgid, span,
 *     dirty=False, plain=True);
 *   - the child's key and entry in the branch replaced by each page's first key and page id.
 * The first child that is something else (a branch, a leaf with overflow values or nested
 * buckets, an empty leaf) stops it: the count returned includes it, for spill to do it and call
 * again below it. So pages get the ids and bytes the Python loop gives them, which the tests
 * check on whole files. Errors (from allocate, or lists that are not what they should be)
 * propagate; the commit then fails as a whole, so a half-sealed branch is never written.
 */
#include <Python.h>
#include <stdlib.h>

#include "internal.h"
#include "pycommit.h"
#include "pynode.h"

/* A clean node's tuple of list[a:b], untracked as clean_tuple's (csrc/db/pynode.c). */
static PyObject *clean_slice(PyObject *list, Py_ssize_t a, Py_ssize_t b)
{
    if (a < 0 || a > b) {
        PyErr_SetString(PyExc_RuntimeError, "a leaf changed while it was being sealed");
        return NULL;
    }
    PyObject *t = PyTuple_New(b - a);
    if (t == NULL)
        return NULL;
    /* Checked after the allocation, which may run a collection and so finalizers. */
    if (!PyList_CheckExact(list) || b > PyList_GET_SIZE(list)) {
        Py_DECREF(t);
        PyErr_SetString(PyExc_RuntimeError, "a leaf changed while it was being sealed");
        return NULL;
    }
    for (Py_ssize_t i = a; i < b; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        Py_INCREF(item);
        PyTuple_SET_ITEM(t, i - a, item);
    }
    if (b > a)
        PyObject_GC_UnTrack(t);
    return t;
}

/* allocate(span), its answer read as a page id into *pgid: a new reference to it, or NULL with
 * an exception. allocate is Python code: the caller looks at its node again afterwards. */
static PyObject *allocate_page(PyObject *allocate, PyObject *span, unsigned long long *pgid)
{
    PyObject *pgid_obj = PyObject_CallFunctionObjArgs(allocate, span, NULL);
    if (pgid_obj == NULL)
        return NULL;
    *pgid = PyLong_AsUnsignedLongLong(pgid_obj);
    if (*pgid == (unsigned long long)-1 && PyErr_Occurred())
        Py_CLEAR(pgid_obj);
    return pgid_obj;
}

/* (pgid, span, [page], owner) appended to runs, as Tx._write queues a run: 0, or -1 with an
 * exception and runs unchanged. The list and the tuple are untracked: neither can be part of a
 * cycle (a node's fields never lead back to a run), and tracked, the 31,000 runs of a 1M-key
 * load made the collector sweep the whole heap during the commit, a tenth of its time. */
static int queue_run(PyObject *runs, PyObject *pgid, PyObject *span, PyObject *page,
                     PyObject *owner)
{
    PyObject *buffers = PyList_New(1);
    if (buffers == NULL)
        return -1;
    Py_INCREF(page);
    PyList_SET_ITEM(buffers, 0, page);
    PyObject *run = PyTuple_Pack(4, pgid, span, buffers, owner);
    Py_DECREF(buffers); /* the run holds it */
    if (run == NULL)
        return -1;
    PyObject_GC_UnTrack(buffers);
    PyObject_GC_UnTrack(run);
    int rc = PyList_Append(runs, run);
    Py_DECREF(run);
    return rc;
}

/* The page run for entries [a, b) of node: allocated, encoded and queued in runs, with its node
 * (node itself when reuse, else a new one). Sets *first and *pgid_out to new references to the
 * page's first key and id: 0, or -1 with an exception. */
static int seal_piece(db_node_object *node, Py_ssize_t a, Py_ssize_t b, const long long *cum,
                      long page_size, int reuse, PyObject *allocate, PyObject *runs,
                      PyObject **first, PyObject **pgid_out)
{
    size_t used = DB_HEADER_SIZE + (size_t)(cum[b] - cum[a]);
    size_t data = (size_t)(cum[b] - cum[a]) - DB_LEAF_ELEMENT * (size_t)(b - a);
    size_t span = used <= (size_t)page_size ? 1 : (used + (size_t)page_size - 1) / (size_t)page_size;
    int rc = -1;
    PyObject *span_obj = NULL, *pgid_obj = NULL, *page = NULL, *kt = NULL, *vt = NULL,
             *owner = NULL;
    unsigned long long pgid;
    span_obj = PyLong_FromSize_t(span);
    if (span_obj == NULL || (pgid_obj = allocate_page(allocate, span_obj, &pgid)) == NULL)
        goto out;
    if (node->keys == NULL || node->vals == NULL) { /* allocate ran Python code and deleted one */
        PyErr_SetString(PyExc_RuntimeError, "a leaf changed while it was being sealed");
        goto out;
    }
    page = db_encode_plain_leaf(pgid, node->keys, node->vals, a, b, data, page_size);
    if (page == NULL)
        goto out;
    if (reuse) { /* the whole leaf: its entries move into the tuples at the end */
        if (a != 0 || !PyList_CheckExact(node->keys) || !PyList_CheckExact(node->vals) ||
            b != PyList_GET_SIZE(node->keys) || b != PyList_GET_SIZE(node->vals)) {
            PyErr_SetString(PyExc_RuntimeError, "a leaf changed while it was being sealed");
            goto out;
        }
        kt = db_entries_room(node->keys, 1);
        vt = kt != NULL ? db_entries_room(node->vals, 1) : NULL;
    } else {
        kt = clean_slice(node->keys, a, b);
        vt = kt != NULL ? clean_slice(node->vals, a, b) : NULL;
    }
    if (vt == NULL)
        goto out;
    if (reuse) {
        owner = (PyObject *)node;
        Py_INCREF(owner);
    } else {
        owner = PyObject_CallFunctionObjArgs((PyObject *)Py_TYPE(node), Py_True, kt, vt, pgid_obj,
                                             span_obj, Py_False, Py_True, NULL);
        if (owner == NULL)
            goto out;
    }
    if (queue_run(runs, pgid_obj, span_obj, page, owner) < 0)
        goto out;
    if (reuse) { /* nothing fails from here on */
        db_entries_move(kt, node->keys);
        db_entries_move(vt, node->vals);
    }
    *first = PyTuple_GetItem(kt, 0);
    Py_INCREF(*first);
    *pgid_out = pgid_obj;
    Py_INCREF(pgid_obj);
    if (reuse) { /* clean from here on, as spill's _seal leaves a node it reuses */
        db_set_field(&node->keys, kt);
        db_set_field(&node->vals, vt);
        db_set_field(&node->dirty_kids, Py_None);
        db_set_field(&node->pgid, pgid_obj);
        db_set_field(&node->span, span_obj);
        db_set_field(&node->dirty, Py_False);
    }
    rc = 0;
out:
    Py_XDECREF(span_obj);
    Py_XDECREF(pgid_obj);
    Py_XDECREF(page);
    Py_XDECREF(kt);
    Py_XDECREF(vt);
    Py_XDECREF(owner);
    return rc;
}

/* Seals the child at idx of the branch (keys, children) if it is a dirty plain leaf: its page
 * count when done (the branch then has that many entries in its place), 0 when the child is
 * left to spill, -1 with an exception. */
static Py_ssize_t seal_child(PyObject *keys, PyObject *children, Py_ssize_t idx, long page_size,
                             Py_ssize_t threshold, Py_ssize_t min_entries, PyObject *allocate,
                             PyObject *runs)
{
    PyObject *child = PyList_GetItem(children, idx);
    if (child == NULL)
        return -1;
    if (!PyObject_TypeCheck(child, (PyTypeObject *)db_node_base))
        return 0;
    db_node_object *node = (db_node_object *)child;
    if (node->leaf != Py_True || node->plain != Py_True || node->dirty != Py_True ||
        node->keys == NULL || node->vals == NULL || !PyList_CheckExact(node->keys) ||
        PyList_Size(node->keys) == 0)
        return 0;
    Py_ssize_t *cuts = NULL;
    long long *cum = NULL;
    Py_ssize_t count = db_cut_plain_leaf(node->keys, node->vals, page_size,
                                         node->packed == Py_True ? page_size : threshold,
                                         min_entries, &cuts, &cum);
    if (count < 0)
        return -1;
    Py_ssize_t rc = -1;
    PyObject *firsts = PyList_New(count), *pgids = PyList_New(count);
    Py_INCREF(child); /* allocate runs Python code: hold the node until it is sealed */
    if (firsts == NULL || pgids == NULL)
        goto out;
    for (Py_ssize_t j = 0; j < count; j++) {
        PyObject *first, *pgid;
        if (seal_piece(node, cuts[j], cuts[j + 1], cum, page_size, count == 1, allocate, runs,
                       &first, &pgid) < 0)
            goto out;
        PyList_SetItem(firsts, j, first);
        PyList_SetItem(pgids, j, pgid);
    }
    if (PyList_SetSlice(keys, idx, idx + 1, firsts) < 0 ||
        PyList_SetSlice(children, idx, idx + 1, pgids) < 0)
        goto out;
    rc = count;
out:
    Py_XDECREF(firsts);
    Py_XDECREF(pgids);
    Py_DECREF(child);
    free(cuts);
    free(cum);
    return rc;
}

static PyObject *py_seal_leaves(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "seal_leaves(keys, children, dirty, end, page_size, "
                                         "threshold, min_entries, allocate, runs)");
        return NULL;
    }
    PyObject *keys = args[0], *children = args[1], *dirty = args[2], *allocate = args[7],
             *runs = args[8];
    if (!PyList_CheckExact(keys) || !PyList_CheckExact(children) || !PyList_CheckExact(dirty) ||
        !PyList_CheckExact(runs)) {
        PyErr_SetString(PyExc_TypeError, "seal_leaves: keys, children, dirty and runs are lists");
        return NULL;
    }
    if (PyList_Size(keys) != PyList_Size(children)) {
        PyErr_SetString(PyExc_ValueError, "a branch has as many children as keys");
        return NULL;
    }
    long page_size;
    if (db_page_size_arg(args[4], &page_size) < 0)
        return NULL;
    Py_ssize_t end = PyLong_AsSsize_t(args[3]);
    Py_ssize_t threshold = PyLong_AsSsize_t(args[5]), min_entries = PyLong_AsSsize_t(args[6]);
    if (PyErr_Occurred())
        return NULL;
    if (end < 0 || end > PyList_Size(dirty)) {
        PyErr_SetString(PyExc_ValueError, "seal_leaves: end is within dirty");
        return NULL;
    }
    /* The indices, all checked before anything changes. */
    Py_ssize_t size = PyList_Size(children);
    Py_ssize_t *idx = malloc(sizeof *idx * (size_t)(end + 1));
    if (idx == NULL)
        return PyErr_NoMemory();
    PyObject *out = NULL;
    for (Py_ssize_t j = 0; j < end; j++) {
        idx[j] = PyLong_AsSsize_t(PyList_GetItem(dirty, j));
        if (idx[j] == -1 && PyErr_Occurred())
            goto done;
        if (idx[j] < 0 || idx[j] >= size || (j > 0 && idx[j] <= idx[j - 1])) {
            PyErr_SetString(PyExc_ValueError,
                            "seal_leaves: dirty indices are ascending and inside the branch");
            goto done;
        }
    }
    /* Each page allocates five objects of collected types (node, tuples, run), none of which
     * can be part of a cycle; Tx.commit keeps the collector waiting for the whole commit, so
     * they set off no collection. */
    /* Back to front, so a splice leaves the indices below it valid; stop at the first child
     * left to spill, so that pages are allocated in the order the Python loop allocates. */
    Py_ssize_t j = end;
    for (; j > 0; j--) {
        Py_ssize_t pages =
            seal_child(keys, children, idx[j - 1], page_size, threshold, min_entries, allocate, runs);
        if (pages < 0)
            break;
        if (pages == 0)
            break;
    }
    if (!PyErr_Occurred())
        out = PyLong_FromSsize_t(j);
done:
    free(idx);
    return out;
}

/* seal_branch(node, page_size, allocate, runs) -> (first key, page id) | None: spill's sealing
 * of a dirty branch whose children are sealed (page ids all) when it fits one page, which is
 * the common case: allocate(1), the page encoded, (pgid, 1, [page], node) appended to runs,
 * the node itself made the clean one (its entries moved into tuples when nothing else holds
 * its lists, as seal_entries does). None, with nothing done, for anything else (a branch
 * that must be cut into pieces, a child still a node, an entry of another type): spill's
 * Python path does it, or raises what it should. Errors from allocate propagate; the commit
 * then fails as a whole. */
static PyObject *py_seal_branch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4 || !PyObject_TypeCheck(args[0], (PyTypeObject *)db_node_base) ||
        !PyList_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "seal_branch(node, page_size, allocate, runs)");
        return NULL;
    }
    db_node_object *node = (db_node_object *)args[0];
    PyObject *allocate = args[2], *runs = args[3];
    long page_size;
    if (db_page_size_arg(args[1], &page_size) < 0)
        return NULL;
    if (node->leaf != Py_False || node->dirty != Py_True || node->keys == NULL ||
        node->vals == NULL || !PyList_CheckExact(node->keys) || !PyList_CheckExact(node->vals))
        Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(node->keys);
    if (n == 0 || PyList_GET_SIZE(node->vals) != n)
        Py_RETURN_NONE;
    size_t used = DB_HEADER_SIZE + DB_BRANCH_ELEMENT * (size_t)n;
    for (Py_ssize_t i = 0; i < n && used <= (size_t)page_size; i++) {
        PyObject *k = PyList_GET_ITEM(node->keys, i);
        if (!PyBytes_CheckExact(k) || !PyLong_CheckExact(PyList_GET_ITEM(node->vals, i)))
            Py_RETURN_NONE;
        used += (size_t)PyBytes_GET_SIZE(k);
    }
    if (used > (size_t)page_size)
        Py_RETURN_NONE;
    PyObject *one = PyLong_FromLong(1), *out = NULL;
    PyObject *pgid_obj = NULL, *page = NULL, *kt = NULL, *vt = NULL;
    unsigned long long pgid;
    Py_INCREF(node); /* allocate runs Python code: hold the node until it is sealed */
    if ((pgid_obj = allocate_page(allocate, one, &pgid)) == NULL)
        goto out;
    /* allocate ran Python code: the lists must be the ones measured (a field it deleted is
     * NULL), and the node still a branch. */
    if (node->leaf != Py_False || node->keys == NULL || node->vals == NULL ||
        !PyList_CheckExact(node->keys) || !PyList_CheckExact(node->vals) ||
        PyList_GET_SIZE(node->keys) != n || PyList_GET_SIZE(node->vals) != n) {
        PyErr_SetString(PyExc_RuntimeError, "a branch changed while it was being sealed");
        goto out;
    }
    page = db_encode_branch(pgid, node->keys, node->vals, page_size);
    if (page == NULL || PyByteArray_GET_SIZE(page) != page_size) {
        if (page != NULL)
            PyErr_SetString(PyExc_RuntimeError, "a branch changed while it was being sealed");
        goto out;
    }
    kt = db_entries_room(node->keys, 1);
    vt = kt != NULL ? db_entries_room(node->vals, 1) : NULL;
    if (vt == NULL || (out = PyTuple_New(2)) == NULL)
        goto out;
    if (queue_run(runs, pgid_obj, one, page, (PyObject *)node) < 0) {
        Py_CLEAR(out);
        goto out;
    }
    /* Nothing fails from here on. */
    db_entries_move(kt, node->keys);
    db_entries_move(vt, node->vals);
    PyObject *first = PyTuple_GET_ITEM(kt, 0);
    Py_INCREF(first);
    PyTuple_SET_ITEM(out, 0, first);
    Py_INCREF(pgid_obj);
    PyTuple_SET_ITEM(out, 1, pgid_obj);
    db_set_field(&node->keys, kt);
    db_set_field(&node->vals, vt);
    db_set_field(&node->dirty_kids, Py_None);
    db_set_field(&node->pgid, pgid_obj);
    db_set_field(&node->span, one);
    db_set_field(&node->dirty, Py_False);
    db_set_field(&node->plain, Py_False);
out:
    Py_DECREF(node);
    Py_XDECREF(one);
    Py_XDECREF(pgid_obj);
    Py_XDECREF(page);
    Py_XDECREF(kt);
    Py_XDECREF(vt);
    return out;
}

PyMethodDef db_py_spill_functions[] = {
    {"seal_leaves", (PyCFunction)(void (*)(void))py_seal_leaves, METH_FASTCALL,
     "seal_leaves(keys, children, dirty, end, page_size, threshold, min_entries, allocate, "
     "runs) -> entries of dirty left: spill's sealing of a branch's dirty plain leaves "
     "(csrc/db/pyspill.c)"},
    {"seal_branch", (PyCFunction)(void (*)(void))py_seal_branch, METH_FASTCALL,
     "seal_branch(node, page_size, allocate, runs) -> (first key, page id) or None: spill's "
     "sealing of a dirty branch that fits one page (csrc/db/pyspill.c)"},
    {NULL, NULL, 0, NULL},
};
