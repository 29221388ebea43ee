/* The layout of keyval.db's Node objects (csrc/db/pynode.c's CNode, the base class of
 * keyval/db/node.py's Node), shared with the C put path in csrc/db/pylookup.c.
 *
 * Every field is a Python object, as in the __slots__ class it replaces (NULL only before
 * __init__, and an AttributeError if read then), so Python code sees no difference; C reads
 * the fields without an attribute lookup. Include after Python.h. */
#ifndef KEYVAL_DB_PYNODE_H
#define KEYVAL_DB_PYNODE_H

typedef struct {
    PyObject_HEAD
    PyObject *leaf;       /* True: a leaf; False: a branch */
    PyObject *keys;       /* list (dirty) or tuple (clean) of bytes */
    PyObject *vals;       /* values (leaf) or children: page ids or dirty Nodes (branch) */
    PyObject *pgid, *span;
    PyObject *dirty;      /* True: changed in this transaction; keys and vals are lists */
    PyObject *plain;      /* a leaf whose values are all bytes stored in the leaf */
    PyObject *packed;     /* left whole by appends at its end */
    PyObject *dirty_kids; /* a dirty branch's indices of its dirty children, or None */
} db_node_object;

/* Points an object field (*field, holding a reference or NULL) at value, with a reference of
 * its own; the old one is released last, so its deallocation sees the field already changed. */
static inline void db_set_field(PyObject **field, PyObject *value)
{
    PyObject *old = *field;
    Py_INCREF(value);
    *field = value;
    Py_XDECREF(old);
}

/* The end of a tp_dealloc for an object of a heap type (CNode, CLookup and their Python
 * subclasses): its memory freed by its type's tp_free, then its reference to the type dropped. */
static inline void db_free_heap_object(PyObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    freefunc free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    free(self);
    Py_DECREF(type);
}

/* A dirty copy of the clean node `clean`, as Node.dirty_copy makes it (keyval/db/node.py): of
 * type `type` (a subclass of CNode), its keys and values in new untracked lists, page id 0,
 * span 1, dirty, the same plain flag, an empty list of dirty children if a branch. `clean`'s
 * keys and vals must be exact tuples or lists. A new reference, or NULL with an exception.
 * Its allocations may start a collection, which runs Python code (finalizers): a caller that
 * must run none pauses the collector around it (PyGC_Disable), as pylookup.c's does. */
PyObject *db_node_dirty_copy(PyObject *type, const db_node_object *clean);

/* Moving a node's entries between the lists of a dirty node and the tuples of a clean one.
 * db_entries_room: a new list (as_tuple 0) or tuple as long as the tuple or list `seq`, its
 * items NULL, untracked by the collector; NULL with an exception. db_entries_move: fills such
 * a `room` with the items of `from` (as long as it), and never fails. When `from` has no
 * holder but its caller's (reference count 1), which is about to drop it, the items move and
 * `from` is left empty (a list) or holding NULLs (a tuple, fit only to be dropped): no
 * reference count changes, where a copy would touch each item twice (raise it now, lower it
 * when `from` goes), a cache miss each on a cold key, value or page id. Else they are copied.
 * Allocate every room first, then move: the moves cannot fail. */
PyObject *db_entries_room(PyObject *seq, int as_tuple);
void db_entries_move(PyObject *room, PyObject *from);

/* The type object of CNode, made by kvdb_py_export; NULL before. */
extern PyObject *db_node_base;

/* CNode's type spec, for kvdb_py_export. */
extern PyType_Spec db_node_spec;

#endif
