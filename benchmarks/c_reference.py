"""The compiled floor: a few lines of C doing the benchmarks' accesses on raw pointers.

Each function is what any Python-callable C access costs at least — one `METH_FASTCALL`
call, the host address already known, no lookup and no check — so a row of ours against
it shows how far the compiled path is from the floor of a call from Python. Built with
the C compiler at run time into a temporary directory (stable ABI, like the library's own
extension); `build()` returns None, with the reason, where there is no compiler.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t *at(PyObject *host) {
    return (uint64_t *)PyLong_AsVoidPtr(host);
}
static PyObject *read_u64(PyObject *m, PyObject *const *a, Py_ssize_t n) {
    uint64_t v; memcpy(&v, at(a[0]), 8); return PyLong_FromUnsignedLongLong(v);
}
static PyObject *write_u64(PyObject *m, PyObject *const *a, Py_ssize_t n) {
    uint64_t v = PyLong_AsUnsignedLongLong(a[1]); memcpy(at(a[0]), &v, 8); Py_RETURN_NONE;
}
static PyObject *load_u64(PyObject *m, PyObject *const *a, Py_ssize_t n) {
    return PyLong_FromUnsignedLongLong(__atomic_load_n(at(a[0]), __ATOMIC_SEQ_CST));
}
static PyObject *store_u64(PyObject *m, PyObject *const *a, Py_ssize_t n) {
    __atomic_store_n(at(a[0]), PyLong_AsUnsignedLongLong(a[1]), __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}
static PyObject *fetch_add_u64(PyObject *m, PyObject *const *a, Py_ssize_t n) {
    return PyLong_FromUnsignedLongLong(
        __atomic_fetch_add(at(a[0]), PyLong_AsUnsignedLongLong(a[1]), __ATOMIC_SEQ_CST));
}
static PyObject *cas_u64(PyObject *m, PyObject *const *a, Py_ssize_t n) {
    uint64_t expected = PyLong_AsUnsignedLongLong(a[1]);
    int stored = __atomic_compare_exchange_n(at(a[0]), &expected,
        PyLong_AsUnsignedLongLong(a[2]), 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    PyObject *found = PyLong_FromUnsignedLongLong(expected);
    PyObject *result = Py_BuildValue("(ON)", stored ? Py_True : Py_False, found);
    return result;
}
static PyObject *copy_out(PyObject *m, PyObject *const *a, Py_ssize_t n) {
    Py_buffer view;
    if (PyObject_GetBuffer(a[1], &view, PyBUF_WRITABLE) < 0) return NULL;
    memcpy(view.buf, at(a[0]), (size_t)view.len);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}
static PyMethodDef methods[] = {
    {"read_u64", (PyCFunction)(void (*)(void))read_u64, METH_FASTCALL, NULL},
    {"write_u64", (PyCFunction)(void (*)(void))write_u64, METH_FASTCALL, NULL},
    {"load_u64", (PyCFunction)(void (*)(void))load_u64, METH_FASTCALL, NULL},
    {"store_u64", (PyCFunction)(void (*)(void))store_u64, METH_FASTCALL, NULL},
    {"fetch_add_u64", (PyCFunction)(void (*)(void))fetch_add_u64, METH_FASTCALL, NULL},
    {"cas_u64", (PyCFunction)(void (*)(void))cas_u64, METH_FASTCALL, NULL},
    {"copy_out", (PyCFunction)(void (*)(void))copy_out, METH_FASTCALL, NULL},
    {NULL},
};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "c_reference", NULL, 0, methods};
PyMODINIT_FUNC PyInit_c_reference(void) { return PyModule_Create(&module); }
"""


def build() -> tuple[ModuleType | None, str]:
    """The compiled reference module, or None and why it could not be built."""
    directory = Path(tempfile.mkdtemp(prefix="vm-memory-c-reference-"))
    source = directory / "c_reference.c"
    source.write_text(SOURCE)
    output = directory / "c_reference.abi3.so"
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    include = Path(sysconfig.get_paths()["include"])
    # Debian's pyconfig.h includes <TRIPLET/python3.X/pyconfig.h> from the directory above
    # (a native compiler searches it by default; a cross compiler, as for the ports, not).
    command = [*compiler, "-std=c11", "-O2", "-fPIC", "-shared", "-DPy_LIMITED_API=0x030B0000",
               f"-I{include}", f"-idirafter{include.parent}", str(source), "-o", str(output)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                check=False)
    except OSError as error:
        return None, f"no C compiler ({error})"
    if result.returncode != 0:
        return None, f"the C reference did not compile: {result.stderr.strip()[:200]}"
    spec = importlib.util.spec_from_file_location("c_reference", output)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, "built"
