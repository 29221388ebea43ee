/* Bucket.get as a C method: the lookup fast path without a Python frame or a cffi call.
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
 * Uses only the stable ABI of Python 3.11, as the rest of the module does (abi3).
 */
#define Py_LIMITED_API 0x030B0000
#include <Python.h>

#include "internal.h"

typedef struct {
    PyObject_HEAD
    kvdb_map *map; /* NULL: no C lookups now; Bucket._get answers */
    uint64_t root;
} lookup_object;

static PyObject *fallback_name; /* "_get", interned */

/* type(self)._get(self, *args, **kwargs): the function is found on the type (no bound method
 * made) and called without a tuple in the usual cases (a write transaction's gets come here). */
static PyObject *slow(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *func = PyObject_GetAttr((PyObject *)Py_TYPE(self), fallback_name);
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
    return slow(self, args, nargs, kwnames);
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
    {NULL, NULL, 0, NULL},
};

static PyType_Slot lookup_slots[] = {
    {Py_tp_doc, "keyval.db's C lookup path: the base class of Bucket."},
    {Py_tp_methods, lookup_methods},
    {0, NULL},
};

static PyType_Spec lookup_spec = {
    .name = "keyval._db_cffi.CLookup",
    .basicsize = sizeof(lookup_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = lookup_slots,
};

int kvdb_py_export(void *namespace)
{
    /* cffi calls this like any other function of the module; take the GIL whether or not the
     * binding released it. */
    PyGILState_STATE gil = PyGILState_Ensure();
    int rc = -1;
    PyObject *ns = namespace, *type = NULL;
    if (!PyDict_Check(ns))
        goto out;
    if (fallback_name == NULL && (fallback_name = PyUnicode_InternFromString("_get")) == NULL)
        goto out;
    type = PyType_FromSpec(&lookup_spec);
    if (type == NULL)
        goto out;
    rc = PyDict_SetItemString(ns, "CLookup", type);
out:
    Py_XDECREF(type);
    if (rc < 0)
        PyErr_Clear();
    PyGILState_Release(gil);
    return rc;
}
