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
 *   untrack(node): the Node object itself, for the same reason
 *
 * The Node objects too: the page cache holds ~100,000 of them and a commit adds ~1,500, so
 * full collections came every ~10 commits and each walked every cached node (~80 ms, 7 of a
 * 1,000-put commit's 42 ms on average). A node refers only to its lists or tuples, and those
 * only down the tree: no cycle can pass through one.
 *
 * Uses only the stable ABI of Python 3.11, as the rest of the module.
 */
#define Py_LIMITED_API 0x030B0000
#include <Python.h>

#include "internal.h"

static PyObject *py_dirty_list(PyObject *module, PyObject *arg)
{
    (void)module;
    PyObject *out = PySequence_List(arg);
    if (out != NULL)
        PyObject_GC_UnTrack(out);
    return out;
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

static PyObject *py_untrack(PyObject *module, PyObject *arg)
{
    (void)module;
    if (PyObject_IS_GC(arg))
        PyObject_GC_UnTrack(arg);
    Py_RETURN_NONE;
}

PyMethodDef db_py_node_functions[] = {
    {"dirty_list", py_dirty_list, METH_O,
     "dirty_list(iterable) -> list of its items, untracked by the garbage collector (for a "
     "dirty node's entries, which can never be part of a reference cycle)"},
    {"clean_tuple", py_clean_tuple, METH_O,
     "clean_tuple(iterable) -> tuple of its items, untracked by the garbage collector (for a "
     "clean node's entries, under the same contract as dirty_list)"},
    {"untrack", py_untrack, METH_O,
     "untrack(node): take a Node out of the garbage collector's view (same contract)"},
    {NULL, NULL, 0, NULL},
};
