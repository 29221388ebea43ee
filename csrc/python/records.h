/* The Python types of the WAL module (csrc/python/records.c), for keyval/wal/log.py. */
#ifndef KEYVAL_PYTHON_RECORDS_H
#define KEYVAL_PYTHON_RECORDS_H

/* Puts the module's Python types into ns, a dict (a PyObject * cast to void *), under their
 * names; takes the GIL itself. 0, or -1 if a type could not be made. */
int kv_py_export(void *ns);

#endif
