/* Where a commit cuts a plain leaf into pages: keyval/db/node.py's _pieces, in C.
 *
 * Why: a bulk load's dirty leaves hold up to SPLIT_ENTRIES (1024) entries each and every one is
 * cut into pages at commit; in Python that took a list of entry sizes, their running sums and
 * a bisect per page (a tenth of a 1M-key load's commit). This is the same greedy rule over the
 * node's lists as they are, with no list made per entry:
 *
 *   leaf_cuts(keys, vals, page_size, threshold, min_entries) -> [(a, b), ...]
 *
 * The entries [a, b) of each page, in order, covering [0, len(keys)). A page starting at entry
 * a ends before the first entry i >= a + min_entries that would take it past threshold bytes
 * (header included); a last page under a quarter page shares the last two pages' entries
 * evenly (by bytes). A leaf of at most min_entries entries or at most page_size bytes is one
 * page. keys and vals: lists of exactly bytes of one length (TypeError, ValueError otherwise);
 * page_size and min_entries >= 1, threshold >= 0 (ValueError). The tests hold it to _pieces.
 */
#include <Python.h>
#include <stdlib.h>

#include "internal.h"
#include "pycommit.h"

/* Append (a, b) to out: 0 or -1. */
static int add_range(PyObject *out, Py_ssize_t a, Py_ssize_t b)
{
    PyObject *t = Py_BuildValue("(nn)", a, b);
    if (t == NULL)
        return -1;
    int rc = PyList_Append(out, t);
    Py_DECREF(t);
    return rc;
}

Py_ssize_t db_cut_plain_leaf(PyObject *keys, PyObject *vals, Py_ssize_t page_size,
                             Py_ssize_t threshold, Py_ssize_t min_entries, Py_ssize_t **cuts_out,
                             long long **cum_out)
{
    if (!PyList_CheckExact(keys) || !PyList_CheckExact(vals)) {
        PyErr_SetString(PyExc_TypeError, "a leaf's keys and values are lists");
        return -1;
    }
    if (page_size <= 0 || threshold < 0 || min_entries < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "leaf_cuts: page_size and min_entries are positive, threshold is not negative");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(keys);
    if (PyList_GET_SIZE(vals) != n) {
        PyErr_SetString(PyExc_ValueError, "a leaf has as many values as keys");
        return -1;
    }
    /* cum[i]: bytes of entries [0, i) (elements and data), as _pieces' running sums */
    long long *cum = malloc(sizeof *cum * (size_t)(n + 1));
    Py_ssize_t *cuts = malloc(sizeof *cuts * (size_t)(n + 2));
    if (cum == NULL || cuts == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    cum[0] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyList_GET_ITEM(keys, i), *v = PyList_GET_ITEM(vals, i);
        if (!PyBytes_CheckExact(k) || !PyBytes_CheckExact(v)) {
            PyErr_SetString(PyExc_TypeError, "a plain leaf holds bytes keys and values");
            goto fail;
        }
        cum[i + 1] = cum[i] + DB_LEAF_ELEMENT + PyBytes_GET_SIZE(k) + PyBytes_GET_SIZE(v);
    }
    Py_ssize_t count = 0;
    cuts[0] = 0;
    if (n <= min_entries || DB_HEADER_SIZE + cum[n] <= page_size) {
        cuts[++count] = n;
        goto done;
    }
    /* Greedy cuts; cuts[j] the first entry of page j, cuts[count] == n. */
    Py_ssize_t a = 0, i = 0;
    for (;;) {
        /* the largest i with cum[i] <= threshold - header + cum[a] (cum increases strictly) */
        long long limit = (long long)threshold - DB_HEADER_SIZE + cum[a];
        if (i < a)
            i = a;
        while (i < n && cum[i + 1] <= limit)
            i++;
        if (i < a + min_entries)
            i = a + min_entries;
        if (i >= n)
            break;
        cuts[++count] = i;
        a = i;
    }
    cuts[++count] = n;
    if (count > 1) {
        /* A small last page would be underfull at once: share the last two evenly. */
        Py_ssize_t lo = cuts[count - 2], hi = n;
        long long last = DB_HEADER_SIZE + cum[hi] - cum[cuts[count - 1]];
        if (last < page_size / 4) {
            long long twice_half = DB_HEADER_SIZE + cum[hi] - cum[lo];
            long long acc = DB_HEADER_SIZE;
            Py_ssize_t mid = lo;
            while (mid < hi - 1 &&
                   (2 * (acc + cum[mid + 1] - cum[mid]) <= twice_half || mid - lo < 1)) {
                acc += cum[mid + 1] - cum[mid];
                mid++;
            }
            if (lo < mid && mid < hi)
                cuts[count - 1] = mid;
            else
                cuts[count - 1] = cuts[count], count--;
        }
    }
done:
    *cuts_out = cuts;
    *cum_out = cum;
    return count;
fail:
    free(cum);
    free(cuts);
    return -1;
}

static PyObject *py_leaf_cuts(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "leaf_cuts(keys, vals, page_size, threshold, min_entries)");
        return NULL;
    }
    Py_ssize_t page_size = PyLong_AsSsize_t(args[2]), threshold = PyLong_AsSsize_t(args[3]),
               min_entries = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return NULL;
    Py_ssize_t *cuts;
    long long *cum;
    Py_ssize_t count =
        db_cut_plain_leaf(args[0], args[1], page_size, threshold, min_entries, &cuts, &cum);
    if (count < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    for (Py_ssize_t j = 0; out != NULL && j < count; j++)
        if (add_range(out, cuts[j], cuts[j + 1]) < 0)
            Py_CLEAR(out);
    free(cuts);
    free(cum);
    return out;
}

PyMethodDef db_py_split_functions[] = {
    {"leaf_cuts", (PyCFunction)(void (*)(void))py_leaf_cuts, METH_FASTCALL,
     "leaf_cuts(keys, vals, page_size, threshold, min_entries) -> [(a, b), ...]: the entries "
     "of each page a plain leaf is cut into at commit (keyval/db/node.py's _pieces)"},
    {NULL, NULL, 0, NULL},
};
