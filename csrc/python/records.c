/* FramedRecords: a C iterator over a batch that kv_wal_read_batch copied out, yielding
 * (seq, type, payload) tuples. WAL.replay hands these out one batch after another.
 *
 * Why C: a 100 B record is replayed at 1 GB/s only if it costs under 100 ns from the read to
 * the caller's loop body. Splitting the batch with struct and zipping it with a range of
 * sequence numbers spent some 70 ns per record in three iterators and their objects; here a
 * record is one bytes object, one int and a reused tuple.
 *
 * The type is made at run time (kv_py_export: cffi modules have no hook to add types of their
 * own) and handed to keyval/wal/log.py in a dict. The rest of this module never calls into
 * Python and runs without the GIL; these functions are called with it held, except
 * kv_py_export, which takes it itself (cffi releases it around every call).
 *
 * Uses only the stable ABI of Python 3.11, as the rest of the module does (abi3).
 */
#define Py_LIMITED_API 0x030B0000
#include <Python.h>

#include "records.h"
#include "format.h"

typedef struct {
    PyObject_HEAD
    Py_buffer view;    /* the batch; released once the last record is handed out */
    Py_ssize_t pos;    /* offset of the next record in view */
    Py_ssize_t end;    /* bytes of view that hold records */
    Py_ssize_t left;   /* records not yet handed out */
    PyObject *result;  /* the last tuple handed out, reused when the caller let it go */
} records_object;

enum { FRAME_HEADER = 16 }; /* u64 seq | u32 len | u8 type | 3 zero bytes (see wal.h) */

static void records_release(records_object *self)
{
    if (self->view.obj != NULL)
        PyBuffer_Release(&self->view);
    self->left = 0;
}

static PyObject *records_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *buffer;
    Py_ssize_t used, count;
    if (kwargs != NULL && PyDict_Size(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "FramedRecords takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "Onn:FramedRecords", &buffer, &used, &count))
        return NULL;
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    records_object *self = (records_object *)alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_SIMPLE) != 0) {
        Py_DECREF(self);
        return NULL;
    }
    if (used < 0 || count < 0 || used > self->view.len) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_ValueError, "FramedRecords: used or count out of range");
        return NULL;
    }
    self->end = used;
    self->left = count;
    return (PyObject *)self;
}

static PyObject *records_next(records_object *self)
{
    if (self->left == 0)
        return NULL;
    const unsigned char *at = (const unsigned char *)self->view.buf + self->pos;
    Py_ssize_t room = self->end - self->pos;
    Py_ssize_t size = FRAME_HEADER;
    if (room >= FRAME_HEADER)
        size += ((Py_ssize_t)kv_get32(at + 8) + 7) & ~(Py_ssize_t)7;
    if (size > room) {
        /* C wrote the batch; a short one is a bug, reported rather than read past. */
        records_release(self);
        PyErr_SetString(PyExc_SystemError, "FramedRecords: a record runs past its batch");
        return NULL;
    }
    PyObject *seq = PyLong_FromUnsignedLongLong(kv_get64(at));
    PyObject *type = PyLong_FromLong(at[12]);
    PyObject *payload =
        PyBytes_FromStringAndSize((const char *)at + FRAME_HEADER, (Py_ssize_t)kv_get32(at + 8));
    if (seq == NULL || type == NULL || payload == NULL) {
        Py_XDECREF(seq);
        Py_XDECREF(type);
        Py_XDECREF(payload);
        return NULL;
    }
    self->pos += size;
    if (--self->left == 0)
        records_release(self); /* the caller may refill the buffer now */
    PyObject *out = self->result;
    if (out != NULL && Py_REFCNT(out) == 1) {
        /* Nobody else holds the last tuple (a for loop unpacked it): refill it, as zip does.
         * PyTuple_SetItem drops the item it replaces. */
        PyTuple_SetItem(out, 0, seq);
        PyTuple_SetItem(out, 1, type);
        PyTuple_SetItem(out, 2, payload);
        Py_INCREF(out);
        return out;
    }
    PyObject *fresh = PyTuple_New(3);
    if (fresh == NULL) {
        Py_DECREF(seq);
        Py_DECREF(type);
        Py_DECREF(payload);
        return NULL;
    }
    PyTuple_SetItem(fresh, 0, seq);
    PyTuple_SetItem(fresh, 1, type);
    PyTuple_SetItem(fresh, 2, payload);
    Py_XDECREF(self->result);
    self->result = fresh;
    Py_INCREF(fresh);
    return fresh;
}

static PyObject *records_length_hint(records_object *self, PyObject *unused)
{
    return PyLong_FromSsize_t(self->left);
}

static int records_traverse(records_object *self, visitproc visit, void *arg)
{
    Py_VISIT(self->result);
    Py_VISIT(self->view.obj);
    return 0;
}

static void records_dealloc(records_object *self)
{
    PyTypeObject *type = Py_TYPE((PyObject *)self);
    PyObject_GC_UnTrack(self);
    records_release(self);
    Py_CLEAR(self->result);
    freefunc free_slot = (freefunc)PyType_GetSlot(type, Py_tp_free);
    free_slot(self);
    Py_DECREF(type);
}

static PyMethodDef records_methods[] = {
    {"__length_hint__", (PyCFunction)records_length_hint, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot records_slots[] = {
    {Py_tp_doc, "FramedRecords(buffer, used, count): iterator of (seq, type, payload) over a "
                "batch kv_wal_read_batch wrote to buffer (used bytes, count records)."},
    {Py_tp_new, records_new},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, records_next},
    {Py_tp_methods, records_methods},
    {Py_tp_traverse, records_traverse},
    {Py_tp_dealloc, records_dealloc},
    {0, NULL},
};

static PyType_Spec records_spec = {
    .name = "keyval._wal_cffi.FramedRecords",
    .basicsize = sizeof(records_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = records_slots,
};

int kv_py_export(void *ns)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    int rc = -1;
    PyObject *type = PyType_FromSpec(&records_spec);
    if (type != NULL) {
        rc = PyDict_SetItemString((PyObject *)ns, "FramedRecords", type);
        Py_DECREF(type);
    }
    if (rc != 0)
        PyErr_Clear(); /* the caller sees -1 and says so */
    PyGILState_Release(gil);
    return rc;
}
