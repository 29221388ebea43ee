/* Plain leaf pages encoded straight from a node's lists: the commit path's leaf encoder.
 *
 * Why: a commit encodes every leaf it touched (64k of them for a 1M-key load). Through cffi
 * that took, per leaf, joining the keys and values into one bytes object, a list of their
 * lengths that cffi converts to an array, and a bytearray made in Python, which cost more than
 * the encoding itself. These functions take the node's key and value lists as they are, check
 * every item, and write header, element table, data, padding and checksum in one go; the bytes
 * are kvdb_encode_leaf's (the tests hold both to the Python codec). kvdb_py_export adds them
 * to keyval/db/pagemap.py's dict; keyval/db/encode.py uses them.
 *
 *   leaf_size(keys, vals) -> header, element table and data bytes of a plain leaf
 *   branch_size(keys) -> header, element table and key bytes of a branch (a rebalance asks
 *                        for the size of every changed node)
 *   encode_leaf(pgid, keys, vals, page_size) -> bytearray: the sealed run at pgid
 *   encode_branch(pgid, keys, children, page_size) -> bytearray: the same for a branch whose
 *                        children are all page ids (ints; a negative or too large one is
 *                        OverflowError), as a commit seals branches after their children
 *
 * Keys and values must be exactly bytes (TypeError), lists of one length (ValueError), keys
 * at most 65535 bytes and values below 4 GiB (ValueError, as the format's fields).
 */
#include <Python.h>

#include "internal.h"
#include "pycommit.h"

/* Entry count and data bytes of a plain leaf, every item checked; -1 with an exception. */
static int leaf_measure(PyObject *keys, PyObject *vals, Py_ssize_t *count, size_t *data)
{
    if (!PyList_CheckExact(keys) || !PyList_CheckExact(vals)) {
        PyErr_SetString(PyExc_TypeError, "a leaf's keys and values are lists");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(keys);
    if (PyList_GET_SIZE(vals) != n) {
        PyErr_SetString(PyExc_ValueError, "a leaf has as many values as keys");
        return -1;
    }
    size_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyList_GET_ITEM(keys, i), *v = PyList_GET_ITEM(vals, i);
        if (!PyBytes_CheckExact(k) || !PyBytes_CheckExact(v)) {
            PyErr_SetString(PyExc_TypeError, "a plain leaf holds bytes keys and values");
            return -1;
        }
        Py_ssize_t kl = PyBytes_GET_SIZE(k), vl = PyBytes_GET_SIZE(v);
        if (kl > UINT16_MAX || (uint64_t)vl > UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "leaf entry cannot be encoded: a key over 65535 bytes or a value of 4 GiB");
            return -1;
        }
        total += (size_t)kl + (size_t)vl;
    }
    *count = n;
    *data = total;
    return 0;
}

static PyObject *py_leaf_size(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "leaf_size(keys, vals)");
        return NULL;
    }
    Py_ssize_t n;
    size_t data;
    if (leaf_measure(args[0], args[1], &n, &data) < 0)
        return NULL;
    return PyLong_FromSize_t(DB_HEADER_SIZE + DB_LEAF_ELEMENT * (size_t)n + data);
}

static PyObject *py_branch_size(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 1 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "branch_size(keys), keys a list");
        return NULL;
    }
    PyObject *keys = args[0];
    Py_ssize_t n = PyList_Size(keys);
    size_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyList_GetItem(keys, i);
        if (!PyBytes_CheckExact(k)) {
            PyErr_SetString(PyExc_TypeError, "a branch holds bytes keys");
            return NULL;
        }
        total += (size_t)PyBytes_Size(k);
    }
    return PyLong_FromSize_t(DB_HEADER_SIZE + DB_BRANCH_ELEMENT * (size_t)n + total);
}

/* A bytearray of whole pages for a run of `used` bytes, left for the encoder to fill (`what`
 * names the page kind in the error): NULL with ValueError when the format cannot hold it. */
static PyObject *new_run(size_t used, size_t ps, const char *what, size_t *run)
{
    size_t span = used <= ps ? 1 : (used + ps - 1) / ps;
    if (span - 1 > UINT32_MAX || span > (size_t)PY_SSIZE_T_MAX / ps) {
        PyErr_Format(PyExc_ValueError, "%s cannot be encoded: larger than the format holds", what);
        return NULL;
    }
    *run = span * ps;
    return PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)*run);
}

int db_page_size_arg(PyObject *arg, long *page_size)
{
    *page_size = PyLong_AsLong(arg);
    if (*page_size == -1 && PyErr_Occurred())
        return -1;
    if (*page_size < 512 || *page_size > 65536 || (*page_size & (*page_size - 1))) {
        PyErr_SetString(PyExc_ValueError, "a page size is a power of two from 512 to 65536");
        return -1;
    }
    return 0;
}

/* An encoder's four arguments (pgid, two lists, page_size; usage names them in the error):
 * the page id and page size read, 0, or -1 with an exception set. */
static int encoder_args(PyObject *const *args, Py_ssize_t nargs, const char *usage,
                        unsigned long long *pgid, long *page_size)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    *pgid = PyLong_AsUnsignedLongLong(args[0]);
    if (*pgid == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    return db_page_size_arg(args[3], page_size);
}

PyObject *db_encode_plain_leaf(unsigned long long pgid, PyObject *keys, PyObject *vals,
                               Py_ssize_t a, Py_ssize_t b, size_t data, long page_size)
{
    Py_ssize_t n = b - a;
    if ((uint64_t)n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "leaf cannot be encoded: more entries than the format holds");
        return NULL;
    }
    if (!PyList_CheckExact(keys) || !PyList_CheckExact(vals)) {
        PyErr_SetString(PyExc_TypeError, "a leaf's keys and values are lists");
        return NULL;
    }
    if (a < 0 || n < 0 || PyList_GET_SIZE(keys) < b || PyList_GET_SIZE(vals) < b) {
        PyErr_SetString(PyExc_RuntimeError, "a leaf changed while it was being encoded");
        return NULL;
    }
    size_t start = DB_HEADER_SIZE + DB_LEAF_ELEMENT * (size_t)n, used = start + data, run;
    PyObject *out = new_run(used, (size_t)page_size, "leaf", &run);
    if (out == NULL)
        return NULL;
    uint8_t *p = (uint8_t *)PyByteArray_AsString(out);
    uint8_t *e = p + DB_HEADER_SIZE;
    uint8_t *d = p + start;
    for (Py_ssize_t i = a; i < b; i++, e += DB_LEAF_ELEMENT) {
        /* The unchecked macros: i < b <= both lengths, and no Python code runs in this loop. */
        PyObject *k = PyList_GET_ITEM(keys, i), *v = PyList_GET_ITEM(vals, i);
        if (!PyBytes_CheckExact(k) || !PyBytes_CheckExact(v))
            goto changed;
        Py_ssize_t kl = PyBytes_GET_SIZE(k), vl = PyBytes_GET_SIZE(v);
        if (kl > UINT16_MAX || (uint64_t)vl > UINT32_MAX ||
            (size_t)kl + (size_t)vl > (size_t)(p + used - d))
            goto changed;
        e[0] = DB_FLAG_VALUE;
        db_put16(e + 1, (uint16_t)kl);
        db_put32(e + 3, (uint32_t)vl);
        memcpy(d, PyBytes_AS_STRING(k), (size_t)kl);
        memcpy(d + kl, PyBytes_AS_STRING(v), (size_t)vl);
        d += kl + vl;
    }
    if (d != p + used)
        goto changed;
    db_seal(p, used, run, (uint32_t)page_size, pgid, DB_TYPE_LEAF, (uint32_t)n);
    return out;
changed:
    Py_DECREF(out);
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_RuntimeError, "a leaf changed while it was being encoded");
    return NULL;
}

static PyObject *py_encode_leaf(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    unsigned long long pgid;
    long page_size;
    if (encoder_args(args, nargs, "encode_leaf(pgid, keys, vals, page_size)", &pgid,
                     &page_size) < 0)
        return NULL;
    Py_ssize_t n;
    size_t data;
    if (leaf_measure(args[1], args[2], &n, &data) < 0)
        return NULL;
    return db_encode_plain_leaf(pgid, args[1], args[2], 0, n, data, page_size);
}

PyObject *db_encode_branch(unsigned long long pgid, PyObject *keys, PyObject *children,
                           long page_size)
{
    if (!PyList_CheckExact(keys) || !PyList_CheckExact(children)) {
        PyErr_SetString(PyExc_TypeError, "a branch's keys and children are lists");
        return NULL;
    }
    Py_ssize_t n = PyList_Size(keys);
    if (PyList_Size(children) != n) {
        PyErr_SetString(PyExc_ValueError, "a branch has as many children as keys");
        return NULL;
    }
    if ((uint64_t)n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "branch cannot be encoded: more children than the format holds");
        return NULL;
    }
    size_t data = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyList_GetItem(keys, i), *c = PyList_GetItem(children, i);
        if (!PyBytes_CheckExact(k) || !PyLong_CheckExact(c)) {
            PyErr_SetString(PyExc_TypeError, "a branch holds bytes keys and int page ids");
            return NULL;
        }
        Py_ssize_t kl = PyBytes_Size(k);
        if (kl > UINT16_MAX) {
            PyErr_SetString(PyExc_ValueError, "branch key cannot be encoded: over 65535 bytes");
            return NULL;
        }
        data += (size_t)kl;
    }
    size_t start = DB_HEADER_SIZE + DB_BRANCH_ELEMENT * (size_t)n, used = start + data, run;
    PyObject *out = new_run(used, (size_t)page_size, "branch", &run);
    if (out == NULL)
        return NULL;
    uint8_t *p = (uint8_t *)PyByteArray_AsString(out);
    uint8_t *e = p + DB_HEADER_SIZE;
    uint8_t *d = p + start;
    for (Py_ssize_t i = 0; i < n; i++, e += DB_BRANCH_ELEMENT) {
        /* The lists were checked above and nothing ran since (no Python code). */
        char *kp;
        Py_ssize_t kl;
        unsigned long long child = PyLong_AsUnsignedLongLong(PyList_GetItem(children, i));
        if ((child == (unsigned long long)-1 && PyErr_Occurred()) ||
            PyBytes_AsStringAndSize(PyList_GetItem(keys, i), &kp, &kl) < 0) {
            Py_DECREF(out); /* a negative or too large page id: OverflowError */
            return NULL;
        }
        db_put16(e, (uint16_t)kl);
        db_put64(e + 2, (uint64_t)child);
        memcpy(d, kp, (size_t)kl);
        d += kl;
    }
    db_seal(p, used, run, (uint32_t)page_size, pgid, DB_TYPE_BRANCH, (uint32_t)n);
    return out;
}

static PyObject *py_encode_branch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    unsigned long long pgid;
    long page_size;
    if (encoder_args(args, nargs, "encode_branch(pgid, keys, children, page_size)", &pgid,
                     &page_size) < 0)
        return NULL;
    return db_encode_branch(pgid, args[1], args[2], page_size);
}

PyMethodDef db_py_encoders[] = {
    {"leaf_size", (PyCFunction)(void (*)(void))py_leaf_size, METH_FASTCALL,
     "leaf_size(keys, vals) -> bytes a plain leaf of these entries takes before padding"},
    {"branch_size", (PyCFunction)(void (*)(void))py_branch_size, METH_FASTCALL,
     "branch_size(keys) -> bytes a branch with these keys takes before padding"},
    {"encode_leaf", (PyCFunction)(void (*)(void))py_encode_leaf, METH_FASTCALL,
     "encode_leaf(pgid, keys, vals, page_size) -> bytearray: the sealed plain leaf run"},
    {"encode_branch", (PyCFunction)(void (*)(void))py_encode_branch, METH_FASTCALL,
     "encode_branch(pgid, keys, children, page_size) -> bytearray: the sealed branch run"},
    {NULL, NULL, 0, NULL},
};
