/* The lists of a dirty node, made without the cyclic garbage collector's tracking.
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
 *   dirty_list(iterable) -> list: a new list of the items, untracked by the collector
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

PyMethodDef db_py_node_functions[] = {
    {"dirty_list", py_dirty_list, METH_O,
     "dirty_list(iterable) -> list of its items, untracked by the garbage collector (for a "
     "dirty node's entries, which can never be part of a reference cycle)"},
    {NULL, NULL, 0, NULL},
};
