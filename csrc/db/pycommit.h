/* What the commit path's Python-API files share (csrc/db/pyencode.c, pysplit.c, pyspill.c):
 * the plain-leaf and branch encoders and the leaf cutter over a node's lists, so that
 * pyspill.c can seal a branch's dirty leaves, and the branch itself, without a Python call per
 * page. Include after Python.h. */
#ifndef KEYVAL_DB_PYCOMMIT_H
#define KEYVAL_DB_PYCOMMIT_H

/* A page size argument (a power of two from 512 to 65536, else ValueError): 0, or -1 with an
 * exception set. pyencode.c. */
int db_page_size_arg(PyObject *arg, long *page_size);

/* The sealed run at pgid of entries [a, b) of a plain leaf's lists (exactly bytes, checked),
 * whose data (keys and values, without elements) the caller measured as data bytes; NULL with
 * an exception. Entries that no longer match that measure (Python code changed the lists in
 * between) are RuntimeError, never a page that disagrees with its header. pyencode.c. */
PyObject *db_encode_plain_leaf(unsigned long long pgid, PyObject *keys, PyObject *vals,
                               Py_ssize_t a, Py_ssize_t b, size_t data, long page_size);

/* The sealed run at pgid of a branch's lists (keys exactly bytes, children exactly ints, as
 * many): NULL with TypeError or ValueError for what the format cannot hold. pyencode.c. */
PyObject *db_encode_branch(unsigned long long pgid, PyObject *keys, PyObject *children,
                           long page_size);

/* Where a commit cuts a plain leaf into pages (keyval/db/node.py's _pieces; the rule is in
 * pysplit.c's header). On success returns the page count c >= 1, with *cuts (c + 1 entries:
 * page j holds entries [cuts[j], cuts[j + 1])) and *cum (n + 1 running sums of the entries'
 * element and data bytes) allocated for the caller to free; -1 with an exception otherwise.
 * pysplit.c. */
Py_ssize_t db_cut_plain_leaf(PyObject *keys, PyObject *vals, Py_ssize_t page_size,
                             Py_ssize_t threshold, Py_ssize_t min_entries, Py_ssize_t **cuts,
                             long long **cum);

#endif
