/*
 * vm_memory._fastpath: the optional compiled access path.
 *
 * C base types for the hot objects — GuestAddress, AlignedGuestAddress, GuestMemoryRegion
 * and GuestMemory — whose fields C reads without attribute lookups, and C methods for the
 * access table's hot operations: region lookup, bounds and alignment checks, typed scalar
 * reads and writes, every atomic operation (compiler __atomic builtins, inlined: no
 * libatomic call) and single-region bulk copies.
 *
 * One rule: C admits only what the pure path would accept with the same result (exact
 * ints and floats, Ordering members by identity, a host-backed region holding the whole
 * access, writable where it stores, a lock-free width). Anything else — every refusal
 * included — is handed, arguments untouched, to the Python general path registered for
 * the method, which stays the single source of truth for errors.
 *
 * Lifetimes: every C method runs with the GIL held and runs no Python code between
 * reading a host pointer and using it. A memory object's table holds its regions (in
 * chunks shared between snapshots) and reads each one's host pointer from the region
 * itself; a mapping can only be unmapped while no memory object holds it
 * (vm_memory/lifetime.py), and a region's host memory changing after its construction
 * (a close) is seen by the next lookup.
 *
 * Stable ABI: built with Py_LIMITED_API for 3.11 (METH_FASTCALL is limited since 3.10).
 * Portable C11 with GCC/Clang __atomic builtins; a width the compiler cannot do lock-free
 * is left to the pure path (which asks libatomic).
 */
#define PY_SSIZE_T_CLEAN
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030B0000
#endif
#include <Python.h>

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- Widths the compiler does lock-free (no libatomic call is ever emitted) ---------- */

#if defined(__GCC_ATOMIC_CHAR_LOCK_FREE) && __GCC_ATOMIC_CHAR_LOCK_FREE == 2
#define LOCK_FREE_1 1
#else
#define LOCK_FREE_1 0
#endif
#if defined(__GCC_ATOMIC_SHORT_LOCK_FREE) && __GCC_ATOMIC_SHORT_LOCK_FREE == 2 && \
    __SIZEOF_SHORT__ == 2
#define LOCK_FREE_2 1
#else
#define LOCK_FREE_2 0
#endif
#if defined(__GCC_ATOMIC_INT_LOCK_FREE) && __GCC_ATOMIC_INT_LOCK_FREE == 2 && \
    __SIZEOF_INT__ == 4
#define LOCK_FREE_4 1
#else
#define LOCK_FREE_4 0
#endif
#if defined(__GCC_ATOMIC_LLONG_LOCK_FREE) && __GCC_ATOMIC_LLONG_LOCK_FREE == 2 && \
    __SIZEOF_LONG_LONG__ == 8
#define LOCK_FREE_8 1
#else
#define LOCK_FREE_8 0
#endif

static int
lock_free(unsigned size)
{
    switch (size) {
    case 1: return LOCK_FREE_1;
    case 2: return LOCK_FREE_2;
    case 4: return LOCK_FREE_4;
    case 8: return LOCK_FREE_8;
    default: return 0;
    }
}

#ifndef VM_MEMORY_SOURCE_DIGEST
#define VM_MEMORY_SOURCE_DIGEST "unknown"   /* the build hook passes the source's digest */
#endif

#if defined(__GNUC__)
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#endif

/* ---- What Python registers (see vm_memory/access_path.py and the modules it feeds) --- */

enum {
    G_READ_ATOMIC, G_WRITE_ATOMIC, G_SWAP, G_COMPARE_EXCHANGE, G_FETCH_ADD, G_FETCH_SUB,
    G_FETCH_AND, G_FETCH_OR, G_FETCH_XOR, G_READ_OBJ, G_WRITE_OBJ, G_READ_OBJ_UNALIGNED,
    G_WRITE_OBJ_UNALIGNED, G_READ_SLICE, G_WRITE_SLICE,
    A_NEW, A_TRY_NEW, A_OFFSET, A_ADD, A_SUB, A_MAKE, G_ADD, G_SUB, G_CHECK_U64,
    FALLBACK_COUNT
};

static const char *const fallback_names[FALLBACK_COUNT] = {
    "read_atomic", "write_atomic", "swap", "compare_exchange", "fetch_add", "fetch_sub",
    "fetch_and", "fetch_or", "fetch_xor", "read_obj", "write_obj", "read_obj_unaligned",
    "write_obj_unaligned", "read_slice", "write_slice",
    "aligned.new", "aligned.try_new", "aligned.offset", "aligned.add", "aligned.sub",
    "aligned.make", "address.add", "address.sub", "check_u64",
};

static PyObject *fallbacks[FALLBACK_COUNT];
static PyTypeObject *guest_address_type;   /* the Python class GuestAddress */
static PyTypeObject *aligned_type;         /* the Python class AlignedGuestAddress */
static PyObject *describe;                 /* ctype -> TypeInfo | None */
static PyObject *no_region;                /* the region that matches nothing */
static PyObject *type_infos;               /* dict: ctype -> TypeInfo (successes only) */
/* Ordering members by their C value (__ATOMIC_*); index 1 (CONSUME) stays NULL. */
static PyObject *orderings[6];

/* Bumped whenever a region's host memory changes after construction (a close, or a
 * refused close that restores the view): what `host_epoch()` reports. */
static uint64_t host_epoch = 1;

#define O_RELAXED 0
#define O_ACQUIRE 2
#define O_RELEASE 3
#define O_ACQ_REL 4
#define O_SEQ_CST 5
#define ORDERS_LOAD ((1u << O_RELAXED) | (1u << O_ACQUIRE) | (1u << O_SEQ_CST))
#define ORDERS_STORE ((1u << O_RELAXED) | (1u << O_RELEASE) | (1u << O_SEQ_CST))
#define ORDERS_ALL (ORDERS_LOAD | ORDERS_STORE | (1u << O_ACQ_REL))

/* The C value of an Ordering member allowed by `mask` (identity only), else -1. */
static inline int
order_of(PyObject *order, unsigned mask)
{
    if (LIKELY(order == orderings[O_SEQ_CST]))
        return O_SEQ_CST;
    for (int value = 0; value < O_SEQ_CST; value++) {
        if (orderings[value] != NULL && order == orderings[value])
            return (mask >> value) & 1u ? value : -1;
    }
    return -1;
}

/* Call the Python general path: fallback(self, *args, **kwargs), arguments untouched. */
static PyObject *
call_fallback(int which, PyObject *self, PyObject *const *args, Py_ssize_t nargs,
              PyObject *kwnames)
{
    PyObject *function = fallbacks[which];
    if (function == NULL) {
        PyErr_Format(PyExc_SystemError, "vm_memory._fastpath: no fallback for %s",
                     fallback_names[which]);
        return NULL;
    }
    Py_ssize_t extra = self != NULL ? 1 : 0;
    PyObject *positional = PyTuple_New(nargs + extra);
    if (positional == NULL)
        return NULL;
    if (self != NULL) {
        Py_INCREF(self);
        PyTuple_SetItem(positional, 0, self);
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        Py_INCREF(args[i]);
        PyTuple_SetItem(positional, i + extra, args[i]);
    }
    PyObject *keywords = NULL;
    if (kwnames != NULL) {
        keywords = PyDict_New();
        if (keywords == NULL) {
            Py_DECREF(positional);
            return NULL;
        }
        Py_ssize_t count = PyTuple_Size(kwnames);
        for (Py_ssize_t i = 0; i < count; i++) {
            if (PyDict_SetItem(keywords, PyTuple_GetItem(kwnames, i), args[nargs + i]) < 0) {
                Py_DECREF(positional);
                Py_DECREF(keywords);
                return NULL;
            }
        }
    }
    PyObject *result = PyObject_Call(function, positional, keywords);
    Py_DECREF(positional);
    Py_XDECREF(keywords);
    return result;
}

static void
type_dealloc_tail(PyObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    freefunc free_slot = (freefunc)PyType_GetSlot(type, Py_tp_free);
    free_slot(self);
    Py_DECREF(type);
}

static PyObject *
alloc_instance(PyTypeObject *type)
{
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    return alloc(type, 0);
}

/* An exact int in [0, 2**64) as a uint64_t; 0 and no error if it is not one. */
static inline int
exact_u64(PyObject *value, uint64_t *out)
{
    if (!PyLong_CheckExact(value))
        return 0;
    int overflow = 0;
    long long small = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (LIKELY(overflow == 0)) {
        if (small < 0)
            return 0;
        *out = (uint64_t)small;
        return 1;
    }
    if (overflow < 0)
        return 0;
    unsigned long long big = PyLong_AsUnsignedLongLong(value);
    if (big == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = (uint64_t)big;
    return 1;
}

/* ---- TypeInfo: what C needs to know about a ByteValued type ------------------------- */

enum { K_OTHER = 0, K_UINT = 1, K_SINT = 2, K_BOOL = 3, K_FLOAT = 4 };

typedef struct {
    PyObject_HEAD
    PyObject *ctype;
    PyObject *layout;
    PyObject *alignment_object;
    PyObject *python_info;   /* the pure path's AlignmentInfo for the same type */
    uint64_t alignment;
    unsigned size;
    int kind;
    int swap;     /* stored in the foreign byte order */
    int atomic;   /* AtomicAccess, and C does this width lock-free */
} TypeInfoObject;

static PyTypeObject *TypeInfoType;

static PyObject *
typeinfo_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"info", "ctype", "layout", "alignment", "size", "kind", "swap",
                            "atomic", NULL};
    PyObject *python_info, *ctype, *layout, *alignment;
    unsigned long size;
    int kind, swap, atomic;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO!kipp:TypeInfo", names, &python_info,
                                     &ctype, &layout, &PyLong_Type, &alignment, &size, &kind,
                                     &swap, &atomic))
        return NULL;
    unsigned long long align_value = PyLong_AsUnsignedLongLong(alignment);
    if (PyErr_Occurred())
        return NULL;
    if (align_value == 0 || (align_value & (align_value - 1)) || kind < K_OTHER ||
        kind > K_FLOAT || ((kind != K_OTHER) && size != 1 && size != 2 && size != 4 &&
                           size != 8) || (kind == K_FLOAT && size != 4 && size != 8)) {
        PyErr_SetString(PyExc_ValueError, "TypeInfo: inconsistent description");
        return NULL;
    }
    TypeInfoObject *self = (TypeInfoObject *)alloc_instance(type);
    if (self == NULL)
        return NULL;
    Py_INCREF(python_info);
    self->python_info = python_info;
    Py_INCREF(ctype);
    self->ctype = ctype;
    Py_INCREF(layout);
    self->layout = layout;
    Py_INCREF(alignment);
    self->alignment_object = alignment;
    self->alignment = (uint64_t)align_value;
    self->size = (unsigned)size;
    self->kind = kind;
    self->swap = swap;
    self->atomic = atomic && (kind == K_UINT || kind == K_SINT || kind == K_BOOL) && !swap &&
                   lock_free((unsigned)size);
    return (PyObject *)self;
}

static void
typeinfo_dealloc(PyObject *op)
{
    TypeInfoObject *self = (TypeInfoObject *)op;
    Py_XDECREF(self->ctype);
    Py_XDECREF(self->layout);
    Py_XDECREF(self->alignment_object);
    Py_XDECREF(self->python_info);
    type_dealloc_tail(op);
}

static PyObject *
typeinfo_get_atomic(PyObject *op, void *closure)
{
    return PyBool_FromLong(((TypeInfoObject *)op)->atomic);
}

static PyObject *
typeinfo_get_kind(PyObject *op, void *closure)
{
    return PyLong_FromLong(((TypeInfoObject *)op)->kind);
}

static PyGetSetDef typeinfo_getset[] = {
    {"atomic", typeinfo_get_atomic, NULL, "Whether C runs atomics on this type.", NULL},
    {"kind", typeinfo_get_kind, NULL, "How C converts values (0: it does not).", NULL},
    {NULL},
};

static PyType_Slot typeinfo_slots[] = {
    {Py_tp_new, typeinfo_new},
    {Py_tp_dealloc, typeinfo_dealloc},
    {Py_tp_getset, typeinfo_getset},
    {Py_tp_doc, "What the compiled path knows of a ByteValued type (made by Python)."},
    {0, NULL},
};

static PyType_Spec typeinfo_spec = {
    "vm_memory._fastpath.TypeInfo", sizeof(TypeInfoObject), 0, Py_TPFLAGS_DEFAULT,
    typeinfo_slots,
};

/* The TypeInfo of `ctype` (borrowed), or NULL with no error set when C cannot use it. */
static TypeInfoObject *
info_of(PyObject *ctype)
{
    PyObject *found = PyDict_GetItemWithError(type_infos, ctype);
    if (LIKELY(found != NULL)) {
        /* A hit must be this very type: a metaclass may make another type compare equal
           to a cached one (the general path refuses such a type). */
        if (UNLIKELY(((TypeInfoObject *)found)->ctype != ctype))
            return NULL;
        return (TypeInfoObject *)found;
    }
    if (PyErr_Occurred()) {     /* unhashable: the general path says what it is */
        PyErr_Clear();
        return NULL;
    }
    if (describe == NULL)
        return NULL;
    PyObject *made = PyObject_CallFunctionObjArgs(describe, ctype, NULL);
    if (made == NULL) {
        PyErr_Clear();
        return NULL;
    }
    if (!PyObject_TypeCheck(made, TypeInfoType)) {
        Py_DECREF(made);
        return NULL;
    }
    int stored = PyDict_SetItem(type_infos, ctype, made);
    Py_DECREF(made);   /* the dict keeps it */
    if (stored < 0) {
        PyErr_Clear();
        return NULL;
    }
    return (TypeInfoObject *)made;
}

/* ---- GuestAddress ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *value;   /* an exact int in [0, 2**64) */
    uint64_t raw;
} AddressObject;

static PyTypeObject *AddressCoreType;

static PyObject *
make_address(PyTypeObject *type, PyObject *value, uint64_t raw)
{
    AddressObject *self = (AddressObject *)alloc_instance(type);
    if (self == NULL)
        return NULL;
    Py_INCREF(value);
    self->value = value;
    self->raw = raw;
    return (PyObject *)self;
}

/* `value` converted by the pure check_u64 (the typed errors), as an exact int and raw. */
static PyObject *
checked_by_python(PyObject *value, uint64_t *raw)
{
    PyObject *args[1] = {value};
    PyObject *checked = call_fallback(G_CHECK_U64, NULL, args, 1, NULL);
    if (checked == NULL)
        return NULL;
    if (!exact_u64(checked, raw)) {
        Py_DECREF(checked);
        PyErr_SetString(PyExc_SystemError, "check_u64 returned no address");
        return NULL;
    }
    return checked;
}

static PyObject *
address_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *value;
    if (kwds == NULL && PyTuple_Size(args) == 1) {
        value = PyTuple_GetItem(args, 0);
    } else {
        static char *names[] = {"value", NULL};
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:GuestAddress", names, &value))
            return NULL;
    }
    uint64_t raw;
    if (exact_u64(value, &raw))
        return make_address(type, value, raw);
    PyObject *checked = checked_by_python(value, &raw);
    if (checked == NULL)
        return NULL;
    PyObject *result = make_address(type, checked, raw);
    Py_DECREF(checked);
    return result;
}

static int
address_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    return 0;   /* everything happened in __new__: an address never changes */
}

static void
address_dealloc(PyObject *op)
{
    Py_XDECREF(((AddressObject *)op)->value);
    type_dealloc_tail(op);
}

static PyObject *
address_get_value(PyObject *op, void *closure)
{
    PyObject *value = ((AddressObject *)op)->value;
    if (value == NULL)
        Py_RETURN_NONE;
    Py_INCREF(value);
    return value;
}

static PyObject *
address_raw_value(PyObject *op, PyObject *unused)
{
    return address_get_value(op, NULL);
}

/* cls._unchecked(value): for values the caller already proved in range. */
static PyObject *
address_unchecked(PyObject *cls, PyObject *value)
{
    uint64_t raw;
    if (!exact_u64(value, &raw)) {
        PyErr_SetString(PyExc_SystemError, "_unchecked: not an address value");
        return NULL;
    }
    return make_address((PyTypeObject *)cls, value, raw);
}

static PyObject *
address_add(PyObject *left, PyObject *right)
{
    if (!PyObject_TypeCheck(left, AddressCoreType))
        Py_RETURN_NOTIMPLEMENTED;
    AddressObject *self = (AddressObject *)left;
    uint64_t offset;
    if (exact_u64(right, &offset) && offset <= UINT64_MAX - self->raw) {
        PyObject *sum = PyLong_FromUnsignedLongLong(self->raw + offset);
        if (sum == NULL)
            return NULL;
        PyObject *result = make_address(Py_TYPE(left), sum, self->raw + offset);
        Py_DECREF(sum);
        return result;
    }
    PyObject *args[1] = {right};
    return call_fallback(G_ADD, left, args, 1, NULL);
}

static PyObject *
address_subtract(PyObject *left, PyObject *right)
{
    if (!PyObject_TypeCheck(left, AddressCoreType))
        Py_RETURN_NOTIMPLEMENTED;
    AddressObject *self = (AddressObject *)left;
    uint64_t offset;
    if (exact_u64(right, &offset) && offset <= self->raw) {
        PyObject *difference = PyLong_FromUnsignedLongLong(self->raw - offset);
        if (difference == NULL)
            return NULL;
        PyObject *result = make_address(Py_TYPE(left), difference, self->raw - offset);
        Py_DECREF(difference);
        return result;
    }
    PyObject *args[1] = {right};
    return call_fallback(G_SUB, left, args, 1, NULL);
}

static PyGetSetDef address_getset[] = {
    {"_guest_value", address_get_value, NULL, "The address as an int.", NULL},
    {NULL},
};

static PyMethodDef address_methods[] = {
    {"raw_value", address_raw_value, METH_NOARGS, "raw_value($self, /)\n--\n\nThe address as an int."},
    {"_unchecked", address_unchecked, METH_O | METH_CLASS, "An address from a value already in range."},
    {NULL},
};

static PyType_Slot address_slots[] = {
    {Py_tp_new, address_new},
    {Py_tp_init, address_init},
    {Py_tp_dealloc, address_dealloc},
    {Py_tp_getset, address_getset},
    {Py_tp_methods, address_methods},
    {Py_nb_add, address_add},
    {Py_nb_subtract, address_subtract},
    {Py_tp_doc, "The compiled fields of GuestAddress."},
    {0, NULL},
};

static PyType_Spec address_spec = {
    "vm_memory._fastpath.GuestAddressCore", sizeof(AddressObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, address_slots,
};

/* ---- AlignedGuestAddress ----------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *value;   /* an exact int in [0, 2**64), aligned for info */
    uint64_t raw;
    TypeInfoObject *info;
} AlignedObject;

static PyTypeObject *AlignedCoreType;

static PyObject *
make_aligned(PyObject *value, uint64_t raw, TypeInfoObject *info)
{
    AlignedObject *self = (AlignedObject *)alloc_instance(aligned_type);
    if (self == NULL)
        return NULL;
    Py_INCREF(value);
    self->value = value;
    self->raw = raw;
    Py_INCREF((PyObject *)info);
    self->info = info;
    return (PyObject *)self;
}

static PyObject *
make_aligned_raw(uint64_t raw, TypeInfoObject *info)
{
    PyObject *value = PyLong_FromUnsignedLongLong(raw);
    if (value == NULL)
        return NULL;
    PyObject *result = make_aligned(value, raw, info);
    Py_DECREF(value);
    return result;
}

static void
aligned_dealloc(PyObject *op)
{
    AlignedObject *self = (AlignedObject *)op;
    Py_XDECREF(self->value);
    Py_XDECREF((PyObject *)self->info);
    type_dealloc_tail(op);
}

/* The int behind the address argument of new/try_new (a GuestAddress, exactly), or 0. */
static inline int
address_argument(PyObject *address, PyObject **value, uint64_t *raw)
{
    if (Py_TYPE(address) == guest_address_type) {
        *value = ((AddressObject *)address)->value;
        *raw = ((AddressObject *)address)->raw;
        return 1;
    }
    return 0;
}

static PyObject *
aligned_construct(int which, PyObject *cls, PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames)
{
    if (aligned_type == NULL || kwnames != NULL || nargs != 2)
        return call_fallback(which, cls, args, nargs, kwnames);
    TypeInfoObject *info = info_of(args[0]);
    PyObject *value;
    uint64_t raw;
    if (info == NULL || !address_argument(args[1], &value, &raw))
        return call_fallback(which, cls, args, nargs, kwnames);
    if (raw & (info->alignment - 1)) {
        if (which == A_TRY_NEW)
            Py_RETURN_NONE;
        return call_fallback(which, cls, args, nargs, kwnames);   /* MisalignedAddress */
    }
    return make_aligned(value, raw, info);
}

static PyObject *
aligned_new_method(PyObject *cls, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return aligned_construct(A_NEW, cls, args, nargs, kwnames);
}

static PyObject *
aligned_try_new_method(PyObject *cls, PyObject *const *args, Py_ssize_t nargs,
                       PyObject *kwnames)
{
    return aligned_construct(A_TRY_NEW, cls, args, nargs, kwnames);
}

/* cls._make(ctype, value, layout, alignment): the pure constructors' last step. */
static PyObject *
aligned_make(PyObject *cls, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t raw;
    if (nargs != 4 || !exact_u64(args[1], &raw)) {
        PyErr_SetString(PyExc_SystemError, "_make(ctype, value, layout, alignment)");
        return NULL;
    }
    TypeInfoObject *info = info_of(args[0]);
    if (info == NULL || info->layout != args[2] || (raw & (info->alignment - 1))) {
        PyErr_SetString(PyExc_SystemError, "_make: the layout or alignment disagrees");
        return NULL;
    }
    return make_aligned(args[1], raw, info);
}

static PyObject *
aligned_offset(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    AlignedObject *self = (AlignedObject *)op;
    if (kwnames == NULL && nargs == 1 && PyLong_CheckExact(args[0])) {
        int overflow = 0;
        long long elements = PyLong_AsLongLongAndOverflow(args[0], &overflow);
        uint64_t size = self->info->size;
        if (overflow == 0 && size > 0) {
            if (elements >= 0 && (uint64_t)elements <= (UINT64_MAX - self->raw) / size)
                return make_aligned_raw(self->raw + (uint64_t)elements * size, self->info);
            if (elements < 0) {
                uint64_t back = (uint64_t)(-(elements + 1)) + 1;   /* no overflow at LLONG_MIN */
                if (back <= self->raw / size)
                    return make_aligned_raw(self->raw - back * size, self->info);
            }
        }
    }
    return call_fallback(A_OFFSET, op, args, nargs, kwnames);
}

/* aligned +/- offset: aligned for the same type when the offset is a multiple of the
 * alignment; anything else (a misaligned offset, an overflow, another operand) goes to
 * the pure method, which raises. */
static PyObject *
aligned_shift(PyObject *left, PyObject *right, int subtract)
{
    if (!PyObject_TypeCheck(left, AlignedCoreType))
        Py_RETURN_NOTIMPLEMENTED;
    AlignedObject *self = (AlignedObject *)left;
    uint64_t offset;
    if (exact_u64(right, &offset) && (offset & (self->info->alignment - 1)) == 0 &&
            (subtract ? offset <= self->raw : offset <= UINT64_MAX - self->raw))
        return make_aligned_raw(subtract ? self->raw - offset : self->raw + offset, self->info);
    PyObject *args[1] = {right};
    return call_fallback(subtract ? A_SUB : A_ADD, left, args, 1, NULL);
}

static PyObject *
aligned_add(PyObject *left, PyObject *right)
{
    return aligned_shift(left, right, 0);
}

static PyObject *
aligned_subtract(PyObject *left, PyObject *right)
{
    return aligned_shift(left, right, 1);
}

static PyObject *
new_reference(PyObject *object)
{
    if (object == NULL)
        Py_RETURN_NONE;
    Py_INCREF(object);
    return object;
}

static PyObject *
aligned_get_value(PyObject *op, void *closure)
{
    return new_reference(((AlignedObject *)op)->value);
}

/* A field of the address's TypeInfo; `closure` is its offset in TypeInfoObject. */
static PyObject *
aligned_get_info_field(PyObject *op, void *closure)
{
    TypeInfoObject *info = ((AlignedObject *)op)->info;
    if (info == NULL)
        Py_RETURN_NONE;
    return new_reference(*(PyObject **)((char *)info + (size_t)closure));
}

static PyObject *
aligned_raw_value(PyObject *op, PyObject *unused)
{
    return aligned_get_value(op, NULL);
}

static PyGetSetDef aligned_getset[] = {
    {"_guest_value", aligned_get_value, NULL, "The address as an int.", NULL},
    {"_type", aligned_get_info_field, NULL, "The type the address is aligned for.",
     (void *)offsetof(TypeInfoObject, ctype)},
    {"_layout", aligned_get_info_field, NULL, "The type's layout.",
     (void *)offsetof(TypeInfoObject, layout)},
    {"_alignment", aligned_get_info_field, NULL, "The alignment proven.",
     (void *)offsetof(TypeInfoObject, alignment_object)},
    {"_info", aligned_get_info_field, NULL, "The type's AlignmentInfo.",
     (void *)offsetof(TypeInfoObject, python_info)},
    {NULL},
};

static PyMethodDef aligned_methods[] = {
    {"new", (PyCFunction)(void (*)(void))aligned_new_method,
     METH_FASTCALL | METH_KEYWORDS | METH_CLASS,
     "new($cls, ctype, address)\n--\n\n`address` as aligned for `ctype`; raises "
     "`MisalignedAddress` if it is not."},
    {"try_new", (PyCFunction)(void (*)(void))aligned_try_new_method,
     METH_FASTCALL | METH_KEYWORDS | METH_CLASS,
     "try_new($cls, ctype, address)\n--\n\n`address` as aligned for `ctype`, or None if "
     "it is not aligned."},
    {"_make", (PyCFunction)(void (*)(void))aligned_make, METH_FASTCALL | METH_CLASS,
     "An aligned address from checked parts."},
    {"offset", (PyCFunction)(void (*)(void))aligned_offset, METH_FASTCALL | METH_KEYWORDS,
     "offset($self, elements)\n--\n\nThe address `elements` values of T further "
     "(negative: back); stays aligned."},
    {"raw_value", aligned_raw_value, METH_NOARGS,
     "raw_value($self, /)\n--\n\nThe address as an int."},
    {NULL},
};

static PyType_Slot aligned_slots[] = {
    {Py_tp_dealloc, aligned_dealloc},
    {Py_tp_getset, aligned_getset},
    {Py_tp_methods, aligned_methods},
    {Py_nb_add, aligned_add},
    {Py_nb_subtract, aligned_subtract},
    {Py_tp_doc, "The compiled fields of AlignedGuestAddress."},
    {0, NULL},
};

static PyType_Spec aligned_spec = {
    "vm_memory._fastpath.AlignedCore", sizeof(AlignedObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION, aligned_slots,
};

/* ---- GuestMemoryRegion --------------------------------------------------------------- */

#define R_READ_ONLY 1u
#define R_SET 2u

typedef struct {
    PyObject_HEAD
    uint64_t start;
    uint64_t length;
    char *host;          /* NULL: no host memory (or not host-backed any more) */
    unsigned flags;
    PyObject *dirty;     /* the DirtyBitmap, or NULL */
    unsigned char *dirty_map;
    unsigned dirty_shift;
    uint64_t dirty_pages;
    struct LedgerObject *ledger;   /* the ledger of the mapping it is placed on, or NULL */
    Py_ssize_t ledger_index;       /* its entry there */
} RegionObject;

static PyTypeObject *RegionCoreType;

/* A ledger: the regions placed on one mapping (vm_memory/mmap_region.py's owner of an
 * `mmap`), each entry a borrowed pointer that the region clears when it is deallocated
 * (it holds the ledger meanwhile): what a close must reach, at 8 bytes a region where a
 * weak reference costs 80. */
typedef struct LedgerObject {
    PyObject_HEAD
    RegionObject **entries;   /* NULL where the region is gone */
    Py_ssize_t count, capacity;
} LedgerObject;

static PyTypeObject *LedgerType;

/* Forget `region` at its ledger (it is being deallocated). */
static void
ledger_forget(RegionObject *region)
{
    LedgerObject *ledger = region->ledger;
    if (ledger == NULL)
        return;
    ledger->entries[region->ledger_index] = NULL;
    region->ledger = NULL;
    Py_DECREF((PyObject *)ledger);
}

/* The names of GuestMemoryRegion's slots that `_fill` and `_derive` set (interned), in
 * the order of the F_* indexes below. */
enum {
    F_START, F_START_VALUE, F_LENGTH, F_READ_ONLY, F_BUFFER, F_HOST_ADDRESS, F_TYPED_VIEWS,
    F_END_VALUE, F_ATOMIC_DELTA, F_READ_LIMIT, F_WRITE_LIMIT, F_ATOMIC_READ_LIMIT,
    F_ATOMIC_WRITE_LIMIT, F_COUNT
};
static PyObject *region_field_names[F_COUNT];
static PyObject *minus_one, *zero, *seven;

static int
region_names_init(void)
{
    static const char *const texts[F_COUNT] = {
        "start", "start_value", "length", "read_only", "buffer", "host_address",
        "typed_views", "end_value", "atomic_delta", "read_limit", "write_limit",
        "atomic_read_limit", "atomic_write_limit",
    };
    for (int index = 0; index < F_COUNT; index++)
        if ((region_field_names[index] = PyUnicode_InternFromString(texts[index])) == NULL)
            return -1;
    minus_one = PyLong_FromLong(-1);
    zero = PyLong_FromLong(0);
    seven = PyLong_FromLong(7);
    return minus_one != NULL && zero != NULL && seven != NULL ? 0 : -1;
}

/* Slot descriptors (`member_descriptor`s) set a field without an attribute lookup: what
 * the bulk builders use, with the descriptors looked up once per build. */
static PyTypeObject *member_descriptor_type;
static descrsetfunc member_set;
static descrgetfunc member_get;

static int
member_names_init(void)
{
    PyObject *types = PyImport_ImportModule("types");
    PyObject *type = types == NULL ? NULL : PyObject_GetAttrString(types, "MemberDescriptorType");
    Py_XDECREF(types);
    if (type == NULL)
        return -1;
    if (!PyType_Check(type)) {
        Py_DECREF(type);
        PyErr_SetString(PyExc_ImportError, "types.MemberDescriptorType is not a type");
        return -1;
    }
    member_descriptor_type = (PyTypeObject *)type;   /* kept for the module's life */
    member_set = (descrsetfunc)PyType_GetSlot(member_descriptor_type, Py_tp_descr_set);
    member_get = (descrgetfunc)PyType_GetSlot(member_descriptor_type, Py_tp_descr_get);
    if (member_set == NULL || member_get == NULL) {
        PyErr_SetString(PyExc_ImportError, "member descriptors cannot be set from C here");
        return -1;
    }
    return 0;
}

/* The slot descriptors of `names` on `type` (new references), or -1 with nothing held
 * and an error if one is not a plain slot there. */
static int
slot_descriptors(PyTypeObject *type, PyObject *const *names, int count, PyObject **found)
{
    for (int index = 0; index < count; index++) {
        found[index] = PyObject_GetAttr((PyObject *)type, names[index]);
        if (found[index] == NULL || Py_TYPE(found[index]) != member_descriptor_type) {
            if (found[index] != NULL)
                PyErr_Format(PyExc_SystemError, "%R is not a slot", names[index]);
            for (int held = 0; held <= index; held++)
                Py_CLEAR(found[held]);
            return -1;
        }
    }
    return 0;
}

/* Set a region field: through its slot descriptor when one is given, else as
 * `object.__setattr__` does. */
static inline int
set_field(PyObject *op, PyObject *const *descriptors, int field, PyObject *value)
{
    if (descriptors != NULL)
        return member_set(descriptors[field], op, value);
    return PyObject_GenericSetAttr(op, region_field_names[field], value);
}

/* `_derive(start_value, length, read_only, buffer, host_address)`: what the pure base's
 * `_derive` computes (GuestMemoryRegion's derived fields), set in one call, and the
 * compiled fields copied (as `_set_fast_state` did). The inputs are already checked.
 * `descriptors`: GuestMemoryRegion's slot descriptors by F_* index, or NULL. */
static PyObject *
derive_fields(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
              PyObject *const *descriptors)
{
    RegionObject *self = (RegionObject *)op;
    uint64_t start, length;
    if (nargs != 5 || !exact_u64(args[0], &start) || !exact_u64(args[1], &length)) {
        PyErr_SetString(PyExc_SystemError,
                        "_derive(start_value, length, read_only, buffer, host_address)");
        return NULL;
    }
    int read_only = PyObject_IsTrue(args[2]);
    if (read_only < 0)
        return NULL;
    PyObject *buffer = args[3], *host_address = args[4];
    char *host = NULL;
    if (host_address != Py_None) {
        host = (char *)PyLong_AsVoidPtr(host_address);
        if (host == NULL && PyErr_Occurred())
            return NULL;
    }
    PyObject *end = PyNumber_Add(args[0], args[1]);
    PyObject *scalar_limit = end == NULL ? NULL : PyNumber_Subtract(end, seven);
    PyObject *delta = NULL;
    int aligned = host != NULL && (((uint64_t)(uintptr_t)host - start) & 7u) == 0;
    if (scalar_limit != NULL)
        delta = aligned ? PyNumber_Subtract(host_address, args[0]) : (Py_INCREF(zero), zero);
    int failed = delta == NULL;
    if (!failed) {
        PyObject *read_limit = buffer != Py_None ? scalar_limit : minus_one;
        PyObject *atomic_limit = aligned ? scalar_limit : minus_one;
        failed = set_field(op, descriptors, F_END_VALUE, end) < 0 ||
            set_field(op, descriptors, F_ATOMIC_DELTA, delta) < 0 ||
            set_field(op, descriptors, F_READ_LIMIT, read_limit) < 0 ||
            set_field(op, descriptors, F_WRITE_LIMIT, read_only ? minus_one : read_limit) < 0 ||
            set_field(op, descriptors, F_ATOMIC_READ_LIMIT, atomic_limit) < 0 ||
            set_field(op, descriptors, F_ATOMIC_WRITE_LIMIT,
                      read_only ? minus_one : atomic_limit) < 0;
    }
    Py_XDECREF(end);
    Py_XDECREF(scalar_limit);
    Py_XDECREF(delta);
    if (failed)
        return NULL;
    if (self->flags & R_SET)   /* a change after construction */
        host_epoch++;
    self->start = start;
    self->length = length;
    self->host = host;
    self->flags = R_SET | (read_only ? R_READ_ONLY : 0u);
    Py_RETURN_NONE;
}

/* `_fill(start, start_value, length, read_only, buffer, host_address, typed_views)`: a
 * new region's checked inputs set, then `_derive` (the dirty bitmap starts as None). */
static PyObject *
fill_fields(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
            PyObject *const *descriptors)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_SystemError, "_fill(start, start_value, length, read_only, "
                                           "buffer, host_address, typed_views)");
        return NULL;
    }
    for (int field = F_START; field <= F_TYPED_VIEWS; field++)
        if (set_field(op, descriptors, field, args[field]) < 0)
            return NULL;
    PyObject *derive_args[5] = {args[1], args[2], args[3], args[4], args[5]};
    return derive_fields(op, derive_args, 5, descriptors);
}

static PyObject *
region_derive(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    return derive_fields(op, args, nargs, NULL);
}

static PyObject *
region_fill(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    return fill_fields(op, args, nargs, NULL);
}

static PyObject *
region_get_dirty(PyObject *op, void *closure)
{
    PyObject *dirty = ((RegionObject *)op)->dirty;
    if (dirty == NULL)
        Py_RETURN_NONE;
    Py_INCREF(dirty);
    return dirty;
}

static int
region_set_dirty(PyObject *op, PyObject *value, void *closure)
{
    RegionObject *self = (RegionObject *)op;
    if (value == NULL || value == Py_None) {
        PyObject *old = self->dirty;
        self->dirty = NULL;
        self->dirty_map = NULL;
        self->dirty_pages = 0;
        Py_XDECREF(old);
        return 0;
    }
    PyObject *address = PyObject_GetAttrString(value, "_map_address");
    PyObject *shift = PyObject_GetAttrString(value, "_shift");
    PyObject *pages = PyObject_GetAttrString(value, "page_count");
    int ok = address != NULL && shift != NULL && pages != NULL;
    void *map = NULL;
    long shift_value = 0;
    unsigned long long page_count = 0;
    if (ok) {
        map = PyLong_AsVoidPtr(address);
        shift_value = PyLong_AsLong(shift);
        page_count = PyLong_AsUnsignedLongLong(pages);
        ok = !PyErr_Occurred() && map != NULL && shift_value >= 0 && shift_value < 64;
    }
    Py_XDECREF(address);
    Py_XDECREF(shift);
    Py_XDECREF(pages);
    if (!ok) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "dirty: a DirtyBitmap or None");
        return -1;
    }
    PyObject *old = self->dirty;
    Py_INCREF(value);
    self->dirty = value;
    self->dirty_map = (unsigned char *)map;
    self->dirty_shift = (unsigned)shift_value;
    self->dirty_pages = (uint64_t)page_count;
    Py_XDECREF(old);
    return 0;
}

/* Mark the pages of [offset, offset + count) written, as DirtyBitmap.mark does. */
static inline void
mark_dirty(RegionObject *region, uint64_t offset, uint64_t count)
{
    unsigned char *map = region->dirty_map;
    if (map == NULL || count == 0)
        return;
    uint64_t first = offset >> region->dirty_shift;
    uint64_t last = (offset + count - 1) >> region->dirty_shift;
    if (first >= region->dirty_pages)
        return;
    if (last >= region->dirty_pages)
        last = region->dirty_pages - 1;
    if (first == last)
        map[first] = 1;
    else
        memset(map + first, 1, (size_t)(last - first + 1));
}

static int
region_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(((RegionObject *)op)->dirty);
    Py_VISIT(Py_TYPE(op));
    return 0;
}

static int
region_clear(PyObject *op)
{
    RegionObject *self = (RegionObject *)op;
    self->dirty_map = NULL;
    self->dirty_pages = 0;
    Py_CLEAR(self->dirty);
    return 0;
}

static void
region_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    ledger_forget((RegionObject *)op);
    region_clear(op);
    type_dealloc_tail(op);
}

static PyGetSetDef region_getset[] = {
    {"dirty", region_get_dirty, region_set_dirty,
     "The pages this library has written, when dirty tracking is on.", NULL},
    {NULL},
};

static PyMethodDef region_methods[] = {
    {"_fill", (PyCFunction)(void (*)(void))region_fill, METH_FASTCALL,
     "Set a new region's checked inputs and derive its fast-path fields."},
    {"_derive", (PyCFunction)(void (*)(void))region_derive, METH_FASTCALL,
     "Derive the fast-path fields from the inputs and copy them for the compiled paths."},
    {NULL},
};

static PyType_Slot region_slots[] = {
    {Py_tp_dealloc, region_dealloc},
    {Py_tp_traverse, region_traverse},
    {Py_tp_clear, region_clear},
    {Py_tp_getset, region_getset},
    {Py_tp_methods, region_methods},
    {Py_tp_doc, "The compiled fields of GuestMemoryRegion."},
    {0, NULL},
};

static PyType_Spec region_spec = {
    "vm_memory._fastpath.RegionCore", sizeof(RegionObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, region_slots,
};

/* ---- Ledger: the regions placed on one mapping --------------------------------------- */

/* Drop the entries of regions gone, keeping the order (each live one learns its index). */
static void
ledger_compact(LedgerObject *self)
{
    Py_ssize_t kept = 0;
    for (Py_ssize_t index = 0; index < self->count; index++) {
        RegionObject *region = self->entries[index];
        if (region != NULL) {
            region->ledger_index = kept;
            self->entries[kept++] = region;
        }
    }
    self->count = kept;
}

/* add(regions, /): record each region of the list (a RegionCore in no ledger yet). */
static PyObject *
ledger_add(PyObject *op, PyObject *regions)
{
    LedgerObject *self = (LedgerObject *)op;
    if (!PyList_Check(regions)) {
        PyErr_SetString(PyExc_TypeError, "Ledger.add: a list of regions");
        return NULL;
    }
    Py_ssize_t adding = PyList_Size(regions);
    for (Py_ssize_t index = 0; index < adding; index++) {
        PyObject *region = PyList_GetItem(regions, index);
        if (!PyObject_TypeCheck(region, RegionCoreType) ||
            ((RegionObject *)region)->ledger != NULL) {
            PyErr_Format(PyExc_ValueError, "Ledger.add: %R is not a region in no ledger",
                         region);
            return NULL;
        }
    }
    if (self->count + adding > self->capacity)
        ledger_compact(self);
    if (self->count + adding > self->capacity) {
        Py_ssize_t capacity = self->capacity ? self->capacity : 8;
        while (capacity < self->count + adding)
            capacity *= 2;
        RegionObject **entries = PyMem_Realloc(self->entries,
                                               (size_t)capacity * sizeof *entries);
        if (entries == NULL)
            return PyErr_NoMemory();
        self->entries = entries;
        self->capacity = capacity;
    }
    for (Py_ssize_t index = 0; index < adding; index++) {
        RegionObject *region = (RegionObject *)PyList_GetItem(regions, index);
        if (region->ledger != NULL)   /* listed twice: one entry (its dealloc clears one) */
            continue;
        Py_INCREF(op);
        region->ledger = self;
        region->ledger_index = self->count;
        self->entries[self->count++] = region;
    }
    Py_RETURN_NONE;
}

/* live(): the regions recorded and still alive, in the order they were added. A region
 * whose count has reached 0 is being deallocated (its weak references' callbacks, a
 * slot's `__del__` and a deferred trashcan run before its entry is cleared): as a dead
 * weak reference, it is skipped, never handed out again (that would free it twice). */
static PyObject *
ledger_live(PyObject *op, PyObject *unused)
{
    LedgerObject *self = (LedgerObject *)op;
    PyObject *live = PyList_New(0);
    for (Py_ssize_t index = 0; live != NULL && index < self->count; index++) {
        PyObject *region = (PyObject *)self->entries[index];
        if (region != NULL && Py_REFCNT(region) > 0 && PyList_Append(live, region) < 0)
            Py_CLEAR(live);
    }
    return live;
}

static PyObject *
ledger_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_Size(args) != 0 || (kwds != NULL && PyDict_Size(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Ledger() takes no arguments");
        return NULL;
    }
    return alloc_instance(type);   /* zeroed: no entries */
}

static void
ledger_dealloc(PyObject *op)
{
    /* Every region recorded holds the ledger: none is left when it goes. */
    PyMem_Free(((LedgerObject *)op)->entries);
    type_dealloc_tail(op);
}

static PyMethodDef ledger_methods[] = {
    {"add", ledger_add, METH_O, "Record each region of a list as placed on the mapping."},
    {"live", ledger_live, METH_NOARGS, "The regions recorded that are still alive."},
    {NULL},
};

static PyType_Slot ledger_slots[] = {
    {Py_tp_new, ledger_new},
    {Py_tp_dealloc, ledger_dealloc},
    {Py_tp_methods, ledger_methods},
    {Py_tp_doc, "The regions placed on one mapping, without a reference to each."},
    {0, NULL},
};

static PyType_Spec ledger_spec = {
    "vm_memory._fastpath.Ledger", sizeof(LedgerObject), 0, Py_TPFLAGS_DEFAULT, ledger_slots,
};

/* ---- Bulk builders: the windows and regions of a one-mapping layout ------------------ */
/* What `_cut_windows_pure` and `_place_fresh_pure` (vm_memory/mmap_region.py) do, one
 * C loop each, every field set through its slot descriptor (looked up once per build):
 * a build of 100,000 regions spends its time making objects, not looking up names. */

enum {
    W_MAPPING, W_SIZE, W_READ_ONLY, W_SHARED, W_FD, W_FILE_OFFSET, W_HOST_ADDRESS, W_VIEW,
    W_OFFSET, W_BASE, W_COUNT
};
static PyObject *window_field_names[W_COUNT];

static int
bulk_names_init(void)
{
    static const char *const texts[W_COUNT] = {
        "mapping", "size", "read_only", "shared", "fd", "file_offset", "host_address",
        "view", "offset", "_base",
    };
    for (int index = 0; index < W_COUNT; index++)
        if ((window_field_names[index] = PyUnicode_InternFromString(texts[index])) == NULL)
            return -1;
    return 0;
}

static void
release_all(PyObject **objects, int count)
{
    for (int index = 0; index < count; index++)
        Py_CLEAR(objects[index]);
}

/* The window at `offset` of the owner's mapping, of `size` (`length`) bytes.
 * `owned`: the owner's fields by W_* index (W_BASE: the owner itself). */
static PyObject *
cut_window(PyTypeObject *type, allocfunc alloc, PyObject *const *descriptors,
           PyObject *const *owned, uint64_t host, int file_offset_set, PyObject *size,
           Py_ssize_t length, Py_ssize_t offset)
{
    PyObject *window = alloc(type, 0);
    PyObject *values[W_COUNT] = {NULL};
    values[W_OFFSET] = PyLong_FromSsize_t(offset);
    values[W_HOST_ADDRESS] = PyLong_FromUnsignedLongLong(host + (uint64_t)offset);
    if (values[W_OFFSET] != NULL)
        values[W_FILE_OFFSET] = file_offset_set
            ? PyNumber_Add(owned[W_FILE_OFFSET], values[W_OFFSET])
            : (Py_INCREF(values[W_OFFSET]), values[W_OFFSET]);
    values[W_VIEW] = PySequence_GetSlice(owned[W_VIEW], offset, offset + length);
    int failed = window == NULL || values[W_OFFSET] == NULL ||
        values[W_HOST_ADDRESS] == NULL || values[W_FILE_OFFSET] == NULL ||
        values[W_VIEW] == NULL;
    for (int field = 0; !failed && field < W_COUNT; field++) {
        PyObject *value = field == W_SIZE ? size : values[field] != NULL ? values[field]
                                                                         : owned[field];
        failed = member_set(descriptors[field], window, value) < 0;
    }
    release_all(values, W_COUNT);
    if (failed) {
        Py_XDECREF(window);
        return NULL;
    }
    return window;
}

/* The two sequences of a bulk builder as tuples of one length (new references), or -1
 * with an error: a snapshot the loop reads while code it runs (a collection's
 * finalizers, another thread) may change the caller's lists. */
static int
bulk_snapshot(PyObject *first, PyObject *second, PyObject **tuples, const char *usage)
{
    tuples[0] = PySequence_Tuple(first);
    tuples[1] = tuples[0] == NULL ? NULL : PySequence_Tuple(second);
    if (tuples[1] != NULL && PyTuple_Size(tuples[0]) == PyTuple_Size(tuples[1]))
        return 0;
    if (tuples[1] != NULL)
        PyErr_SetString(PyExc_SystemError, usage);
    release_all(tuples, 2);
    return -1;
}

/* cut_windows(MmapRegion, owner, sizes, spans, /): `_cut_windows_pure(owner, sizes,
 * spans)` (sizes checked, spans their whole pages, all inside the owner's mapping). A
 * window not inside the owner's mapping, or overlapping the next, is refused (a
 * SystemError): its size is what placements and the raw-pointer paths trust. */
static PyObject *
module_cut_windows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    static const char usage[] = "cut_windows(MmapRegion, owner, sizes, spans)";
    if (nargs != 4 || !PyType_Check(args[0]) || Py_TYPE(args[1]) != (PyTypeObject *)args[0]) {
        PyErr_SetString(PyExc_SystemError, usage);
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[0];
    PyObject *owner = args[1];
    PyObject *descriptors[W_COUNT] = {NULL};
    PyObject *owned[W_COUNT] = {NULL};
    PyObject *snapshot[2];   /* sizes, spans */
    if (bulk_snapshot(args[2], args[3], snapshot, usage) < 0)
        return NULL;
    PyObject *sizes = snapshot[0], *spans = snapshot[1];
    if (slot_descriptors(type, window_field_names, W_COUNT, descriptors) < 0) {
        release_all(snapshot, 2);
        return NULL;
    }
    int ok = 1;
    for (int field = 0; ok && field < W_COUNT; field++) {
        owned[field] = field == W_BASE ? (Py_INCREF(owner), owner)
                                       : PyObject_GetAttr(owner, window_field_names[field]);
        ok = owned[field] != NULL;
    }
    uint64_t host = ok ? PyLong_AsUnsignedLongLong(owned[W_HOST_ADDRESS]) : 0;
    int file_offset_set = ok && !PyErr_Occurred() ? PyObject_IsTrue(owned[W_FILE_OFFSET]) : -1;
    Py_ssize_t owner_size = file_offset_set >= 0 ? PyLong_AsSsize_t(owned[W_SIZE]) : -1;
    Py_ssize_t count = PyTuple_Size(sizes);
    if (owner_size < 0 && !PyErr_Occurred())
        PyErr_SetString(PyExc_SystemError, "cut_windows: an owner of negative size");
    PyObject *windows = owner_size >= 0 ? PyList_New(count) : NULL;
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    Py_ssize_t offset = 0;
    for (Py_ssize_t index = 0; windows != NULL && index < count; index++) {
        PyObject *size = PyTuple_GetItem(sizes, index);
        Py_ssize_t length = PyLong_AsSsize_t(size);
        Py_ssize_t span = PyLong_AsSsize_t(PyTuple_GetItem(spans, index));
        if (!PyErr_Occurred() && (length <= 0 || span < length || span > owner_size - offset))
            PyErr_SetString(PyExc_SystemError, "cut_windows: a window outside its owner");
        PyObject *window = PyErr_Occurred() ? NULL :
            cut_window(type, alloc, descriptors, owned, host, file_offset_set, size, length,
                       offset);
        if (window == NULL) {
            Py_CLEAR(windows);
            break;
        }
        PyList_SetItem(windows, index, window);
        offset += span;
    }
    release_all(descriptors, W_COUNT);
    release_all(owned, W_COUNT);
    release_all(snapshot, 2);
    return windows;
}

/* place_windows(GuestRegionMmap, MmapRegion, windows, starts, no_typed_views, /): what
 * `_place_fresh_pure(windows, starts)` returns — (regions, ordered), or None if a start
 * is not a GuestAddress or its region would pass 2**64 (Python's checks then refuse). */
static PyObject *
module_place_windows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    static const char usage[] = "place_windows(GuestRegionMmap, MmapRegion, windows, "
                                "starts, no_typed_views)";
    if (nargs != 5 || !PyType_Check(args[0]) || !PyType_Check(args[1]) ||
        !PyType_IsSubtype((PyTypeObject *)args[0], RegionCoreType) ||
        guest_address_type == NULL) {
        PyErr_SetString(PyExc_SystemError, usage);
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[0], *window_type = (PyTypeObject *)args[1];
    PyObject *fields[F_COUNT + 1] = {NULL};   /* the region's, then its `mapping` */
    PyObject *window_fields[W_COUNT] = {NULL};
    PyObject *snapshot[2];   /* windows, starts */
    if (bulk_snapshot(args[2], args[3], snapshot, usage) < 0)
        return NULL;
    PyObject *windows = snapshot[0], *starts = snapshot[1];
    if (slot_descriptors(type, region_field_names, F_COUNT, fields) < 0) {
        release_all(snapshot, 2);
        return NULL;
    }
    if (slot_descriptors(type, &window_field_names[W_MAPPING], 1, &fields[F_COUNT]) < 0 ||
        slot_descriptors(window_type, window_field_names, W_COUNT, window_fields) < 0) {
        release_all(fields, F_COUNT + 1);
        release_all(snapshot, 2);
        return NULL;
    }
    Py_ssize_t count = PyTuple_Size(windows);
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    PyObject *regions = PyList_New(count);
    PyObject *result = NULL;
    int ordered = 1, refused = 0;
    uint64_t previous_last = 0;
    for (Py_ssize_t index = 0; regions != NULL && index < count; index++) {
        PyObject *window = PyTuple_GetItem(windows, index);
        PyObject *start = PyTuple_GetItem(starts, index);
        if (Py_TYPE(start) != guest_address_type) {
            refused = 1;
            break;
        }
        AddressObject *address = (AddressObject *)start;
        PyObject *inputs[7] = {
            start, address->value,
            member_get(window_fields[W_SIZE], window, (PyObject *)window_type),
            member_get(window_fields[W_READ_ONLY], window, (PyObject *)window_type),
            member_get(window_fields[W_VIEW], window, (PyObject *)window_type),
            member_get(window_fields[W_HOST_ADDRESS], window, (PyObject *)window_type),
            args[4]};
        int failed = inputs[2] == NULL || inputs[3] == NULL || inputs[4] == NULL ||
            inputs[5] == NULL;
        uint64_t size = failed ? 0 : PyLong_AsUnsignedLongLong(inputs[2]);
        failed = failed || PyErr_Occurred() != NULL;
        refused = !failed && (size == 0 || size - 1 > UINT64_MAX - address->raw);
        PyObject *region = NULL;
        if (!failed && !refused) {
            if (index > 0 && address->raw <= previous_last)
                ordered = 0;
            previous_last = address->raw + (size - 1);
            region = alloc(type, 0);
            PyObject *done = region == NULL ? NULL : fill_fields(region, inputs, 7, fields);
            Py_XDECREF(done);
            if (done == NULL || member_set(fields[F_COUNT], region, window) < 0)
                Py_CLEAR(region);
        }
        for (int input = 2; input < 6; input++)
            Py_XDECREF(inputs[input]);
        if (region == NULL)
            break;
        PyList_SetItem(regions, index, region);
        if (index + 1 == count)
            result = Py_BuildValue("(OO)", regions, ordered ? Py_True : Py_False);
    }
    if (count == 0 && regions != NULL)
        result = Py_BuildValue("(OO)", regions, Py_True);
    if (refused && !PyErr_Occurred()) {
        result = Py_None;
        Py_INCREF(result);
    }
    Py_XDECREF(regions);
    release_all(fields, F_COUNT + 1);
    release_all(window_fields, W_COUNT);
    release_all(snapshot, 2);
    return result;
}

/* ---- GuestMemory: the region table and the hot methods ------------------------------- */

/* The region table is persistent: a hot-plug change makes a new memory object that
 * shares every part of the old one's table it does not change, so an insert or a remove
 * costs work proportional to the change (one chunk of regions, the bucket of each page it
 * touches, and the two small indexes over them), not to the number of regions. Every
 * shared part is immutable once a memory object refers to it; a change copies what it
 * changes first. The old memory object stays valid and unchanged for whoever holds it.
 *
 * - Regions: sorted, in chunks (ChunkObject) of at most CHUNK_MAX, each a GC-tracked
 *   object owning its regions; a memory object owns a reference to each of its chunks and
 *   an index over them (the chunks, their first starts, the index of each one's first
 *   region).
 * - Page table: page number -> a small region on that page (a guess, checked at each
 *   use), an extendible hash: a directory (each memory object's own) of buckets shared
 *   between memory objects, each bucket a small open-addressing table. A change copies
 *   the directory and the buckets it changes; a full bucket splits on its own.
 *
 * Lookups read a region's fields (start, length, host, flags) from the region object
 * itself, so a region's host memory changing after construction (a close) is seen at
 * once; only which region holds a page is remembered. The region cache's slots and the
 * page table's point at regions this memory object holds (its chunks own them). */

typedef struct {
    uint64_t start;
    RegionObject *region;   /* strong: the chunk owns it */
} Entry;

typedef struct {
    PyObject_VAR_HEAD       /* ob_size: how many entries */
    Entry entries[1];
} ChunkObject;

static PyTypeObject *ChunkType;

#define CHUNK_MAX 256        /* a chunk never holds more (an insert into a full one splits it) */
#define CHUNK_BUILD 128      /* a new memory's chunks: room to grow before splitting */
#define CHUNK_MIN 64         /* a smaller chunk merges with a neighbour where they fit */

static inline Py_ssize_t
chunk_size(const ChunkObject *chunk)
{
    return chunk->ob_base.ob_size;
}

static int
chunk_traverse(PyObject *op, visitproc visit, void *arg)
{
    ChunkObject *chunk = (ChunkObject *)op;
    for (Py_ssize_t i = 0; i < chunk_size(chunk); i++)
        Py_VISIT((PyObject *)chunk->entries[i].region);
    Py_VISIT(Py_TYPE(op));
    return 0;
}

static void
chunk_dealloc(PyObject *op)
{
    ChunkObject *chunk = (ChunkObject *)op;
    PyObject_GC_UnTrack(op);
    for (Py_ssize_t i = 0; i < chunk_size(chunk); i++)
        Py_CLEAR(chunk->entries[i].region);
    type_dealloc_tail(op);
}

/* No tp_clear: a chunk is immutable; a cycle through it goes through a memory object,
 * whose tp_clear lets go of its chunks. */
static PyType_Slot chunk_slots[] = {
    {Py_tp_dealloc, chunk_dealloc},
    {Py_tp_traverse, chunk_traverse},
    {Py_tp_doc, "A run of a region table's regions, shared by the memory objects holding it."},
    {0, NULL},
};

static PyType_Spec chunk_spec = {
    "vm_memory._fastpath.RegionChunk", offsetof(ChunkObject, entries), sizeof(Entry),
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION, chunk_slots,
};

/* A new chunk of `count` regions (new references taken), or NULL with MemoryError. */
static ChunkObject *
chunk_of(RegionObject *const *regions, Py_ssize_t count)
{
    allocfunc alloc = (allocfunc)PyType_GetSlot(ChunkType, Py_tp_alloc);
    ChunkObject *chunk = (ChunkObject *)alloc(ChunkType, count);   /* zeroed, tracked */
    if (chunk == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_INCREF((PyObject *)regions[i]);
        chunk->entries[i].start = regions[i]->start;
        chunk->entries[i].region = regions[i];
    }
    return chunk;
}

/* The page table's granularity and the regions it holds: the pure path's (_LOOKUP_SHIFT
 * and _SMALL_REGION_SLOTS in vm_memory/guest_memory.py). */
#define PAGE_SHIFT 12
#define SMALL_REGION_PAGES 16
#define BUCKET_MIN_BITS 3    /* a new bucket's slots: 8 */
#define BUCKET_MAX_BITS 9    /* a bucket this big splits rather than grows ... */
#define DEPTH_MAX 24         /* ... unless the directory would pass 2**24 slots */
#define FIBONACCI 0x9E3779B97F4A7C15ull

typedef struct {
    uint64_t page;
    RegionObject *region;   /* borrowed (a region of every memory naming the bucket); NULL: empty */
} PageSlot;

/* Pages whose hashes share their top `depth` bits; a slot's home is the hash's next
 * `bits` bits. Immutable while more directory slots name it than this memory's own. */
typedef struct {
    unsigned depth;
    unsigned home_shift;    /* 64 - bits */
    size_t mask;            /* slots - 1 */
    unsigned bits;
    size_t used;
    Py_ssize_t refs;        /* directory slots naming it, over every memory object */
    PageSlot slots[];
} Bucket;

/* The region cache: the region each lookup found, in the slot of its address's page (a
 * direct-mapped cache of PAGE_CACHE_SLOTS slots, each memory object its own). A slot is a
 * guess, checked at each use to hold the address (regions sharing a page, or pages whose
 * slot collides, replace each other); it names a region this memory's own chunks hold,
 * or `no_cached_region`. A staying loop hits one slot, as does a loop over many regions
 * as long as their pages fall in different slots. */
#define PAGE_CACHE_BITS 8
#define PAGE_CACHE_SLOTS (1u << PAGE_CACHE_BITS)

typedef struct {
    PyObject_HEAD
    Bucket **directory;     /* 2**directory_bits buckets; NULL: no small region yet */
    unsigned directory_shift;   /* 63 - directory_bits */
    unsigned directory_bits;
    Py_ssize_t count;       /* regions */
    Py_ssize_t chunk_count;
    ChunkObject **chunks;   /* strong; one allocation holds chunks, firsts and bases */
    uint64_t *firsts;       /* firsts[k]: the start of chunk k's first region */
    Py_ssize_t *bases;      /* bases[k]: the index of chunk k's first region */
    PyObject *regions;      /* the regions as a tuple, made on first use; or NULL */
    int installed;
    Py_ssize_t cache_misses;   /* lookups the region cache did not answer (for tests) */
    RegionObject *cache[PAGE_CACHE_SLOTS];   /* borrowed; see PAGE_CACHE_BITS */
} MemoryObject;

/* An empty cache slot: no address passes its check (length 0). Never a region of any
 * table, never handed out. */
static RegionObject no_cached_region;

/* The cache slot of `value`'s page: the page number's low bits, with its next bits
 * folded in. Pages within a 2**PAGE_CACHE_BITS-page window all get slots of their own
 * (as a loop over neighbouring regions needs), and pages a power of two apart (aligned
 * regions' starts) still spread over many slots. Two cheap operations on the lookup's
 * critical path, no multiply (hashing left neighbouring pages colliding). */
static inline size_t
cache_slot(uint64_t value)
{
    uint64_t page = value >> PAGE_SHIFT;
    return (size_t)((page ^ (page >> PAGE_CACHE_BITS) ^ (page >> (2 * PAGE_CACHE_BITS))) &
                    (PAGE_CACHE_SLOTS - 1));
}

static void
cache_clear(MemoryObject *self)
{
    for (size_t i = 0; i < PAGE_CACHE_SLOTS; i++)
        self->cache[i] = &no_cached_region;
}

static PyTypeObject *MemoryCoreType;

static inline uint64_t
page_hash(uint64_t page)
{
    return page * FIBONACCI;   /* Fibonacci hashing: strided pages spread evenly */
}

static inline size_t
directory_slot(const MemoryObject *self, uint64_t hash)
{
    return (size_t)((hash >> 1) >> self->directory_shift);   /* top directory_bits bits */
}

static inline size_t
bucket_home(const Bucket *bucket, uint64_t hash)
{
    return (size_t)((hash << bucket->depth) >> bucket->home_shift);
}

static inline size_t
bucket_mask(const Bucket *bucket)
{
    return bucket->mask;
}

/* Index of the last of `count` starts (`stride` bytes apart) that is <= value, or -1.
 * Branch-free halving (the comparison becomes a conditional move): alternating between
 * regions then costs no mispredicted branch per step. */
static inline Py_ssize_t
search_starts(const char *starts, size_t stride, Py_ssize_t count, uint64_t value)
{
    if (count == 0)
        return -1;
    const char *base = starts;
    while (count > 1) {
        Py_ssize_t half = count / 2;
        base = *(const uint64_t *)(base + (size_t)half * stride) <= value
            ? base + (size_t)half * stride : base;
        count -= half;
    }
    return (Py_ssize_t)((size_t)(base - starts) / stride) - (*(const uint64_t *)base > value);
}

/* The entry of the last region starting at or below `value` (and its index), or NULL. */
static inline Entry *
entry_at(const MemoryObject *self, uint64_t value, Py_ssize_t *index)
{
    Py_ssize_t k = search_starts((const char *)self->firsts, sizeof(uint64_t),
                                 self->chunk_count, value);
    if (k < 0)
        return NULL;
    ChunkObject *chunk = self->chunks[k];
    Py_ssize_t local = search_starts((const char *)&chunk->entries[0].start, sizeof(Entry),
                                     chunk_size(chunk), value);
    *index = self->bases[k] + local;
    return &chunk->entries[local];
}

/* The chunk holding the region at `index` (0 <= index < count) and its place there. */
static inline Py_ssize_t
chunk_of_index(const MemoryObject *self, Py_ssize_t index, Py_ssize_t *local)
{
    Py_ssize_t low = 0, high = self->chunk_count - 1;
    while (low < high) {   /* the last chunk whose base is <= index */
        Py_ssize_t middle = (low + high + 1) / 2;
        if (self->bases[middle] <= index)
            low = middle;
        else
            high = middle - 1;
    }
    *local = index - self->bases[low];
    return low;
}

static inline RegionObject *
region_by_index(const MemoryObject *self, Py_ssize_t index)
{
    Py_ssize_t local;
    Py_ssize_t k = chunk_of_index(self, index, &local);
    return self->chunks[k]->entries[local].region;
}

/* A cache miss of `lookup` (out of line: the hot part stays small): the page table's
 * guess, checked, else a binary search; the region found goes in the cache slot. */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static RegionObject *
lookup_miss(MemoryObject *self, uint64_t value, RegionObject **cached)
{
    RegionObject *region;
    self->cache_misses++;
    if (self->directory != NULL) {
        uint64_t page = value >> PAGE_SHIFT;
        uint64_t hash = page_hash(page);
        const Bucket *bucket = self->directory[directory_slot(self, hash)];
        size_t slot = bucket_home(bucket, hash);
        while ((region = bucket->slots[slot].region) != NULL) {
            if (bucket->slots[slot].page == page) {
                if (value - region->start < region->length) {
                    *cached = region;
                    return region;
                }
                break;   /* a region on this page, not holding `value`: search */
            }
            slot = (slot + 1) & bucket->mask;
        }
    }
    Py_ssize_t index;
    Entry *entry = entry_at(self, value, &index);
    if (entry == NULL || value - entry->start >= entry->region->length)
        return NULL;
    *cached = entry->region;
    return entry->region;
}

/* The region holding `value`, or NULL: the cache slot of its page if the region there
 * holds it, else `lookup_miss`. */
static inline RegionObject *
lookup(MemoryObject *self, uint64_t value)
{
    RegionObject **cached = &self->cache[cache_slot(value)];
    RegionObject *region = *cached;
    if (LIKELY(value - region->start < region->length))
        return region;
    return lookup_miss(self, value, cached);
}

/* The host bytes of [value, value + size) when one host-backed region holds them all. */
static inline char *
host_span(MemoryObject *self, uint64_t value, uint64_t size, int writing,
          RegionObject **found)
{
    RegionObject *region = lookup(self, value);
    if (region == NULL || region->host == NULL)
        return NULL;
    uint64_t offset = value - region->start;
    if (size > region->length || offset > region->length - size)
        return NULL;
    if (writing && (region->flags & R_READ_ONLY))
        return NULL;
    *found = region;
    return region->host + offset;
}

/* The pages of a region if it is small enough for the page table (else 0). */
static inline int
small_region_pages(const RegionObject *region, uint64_t *first, uint64_t *last)
{
    if (region->length == 0)
        return 0;
    *first = region->start >> PAGE_SHIFT;
    *last = (region->start + region->length - 1) >> PAGE_SHIFT;
    return *last - *first < SMALL_REGION_PAGES;
}

/* ---- The page table: an extendible hash of shared buckets ---- */

static Bucket *
bucket_new(unsigned depth, unsigned bits)
{
    Bucket *bucket = PyMem_Calloc(1, sizeof(Bucket) + ((size_t)1 << bits) * sizeof(PageSlot));
    if (bucket == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    bucket->depth = depth;
    bucket->bits = bits;
    bucket->home_shift = 64 - bits;
    bucket->mask = ((size_t)1 << bits) - 1;
    return bucket;
}

static void
bucket_release(Bucket *bucket, Py_ssize_t references)
{
    bucket->refs -= references;
    if (bucket->refs == 0)
        PyMem_Free(bucket);
}

/* Put (page, region) in a bucket with room that does not hold `page`. */
static void
bucket_put(Bucket *bucket, uint64_t page, RegionObject *region)
{
    size_t mask = bucket_mask(bucket);
    size_t slot = bucket_home(bucket, page_hash(page));
    while (bucket->slots[slot].region != NULL)
        slot = (slot + 1) & mask;
    bucket->slots[slot].page = page;
    bucket->slots[slot].region = region;
    bucket->used++;
}

/* The slot of `page` in `bucket`, or the empty slot ending its probe run. */
static size_t
bucket_find(const Bucket *bucket, uint64_t page)
{
    size_t mask = bucket_mask(bucket);
    size_t slot = bucket_home(bucket, page_hash(page));
    while (bucket->slots[slot].region != NULL && bucket->slots[slot].page != page)
        slot = (slot + 1) & mask;
    return slot;
}

/* How many of this memory's directory slots name a bucket of `depth`, and the first. */
static inline Py_ssize_t
directory_span(const MemoryObject *self, unsigned depth)
{
    return (Py_ssize_t)1 << (self->directory_bits - depth);
}

static inline size_t
directory_first(const MemoryObject *self, uint64_t hash, unsigned depth)
{
    size_t span = (size_t)directory_span(self, depth);
    return directory_slot(self, hash) / span * span;
}

/* Point the directory slots of `old` (this memory's, for `hash`) at `replacement`
 * instead: the replacement takes those references, the old bucket loses them. */
static void
directory_replace(MemoryObject *self, uint64_t hash, Bucket *old, Bucket *replacement)
{
    Py_ssize_t span = directory_span(self, old->depth);
    size_t first = directory_first(self, hash, old->depth);
    for (Py_ssize_t i = 0; i < span; i++)
        self->directory[first + (size_t)i] = replacement;
    replacement->refs += span;
    bucket_release(old, span);
}

/* The bucket for `hash`, this memory's own (copied first if another memory names it). */
static Bucket *
bucket_owned(MemoryObject *self, uint64_t hash)
{
    Bucket *bucket = self->directory[directory_slot(self, hash)];
    if (bucket->refs == directory_span(self, bucket->depth))
        return bucket;
    size_t size = sizeof(Bucket) + ((size_t)1 << bucket->bits) * sizeof(PageSlot);
    Bucket *copy = PyMem_Malloc(size);
    if (copy == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(copy, bucket, size);
    copy->refs = 0;
    directory_replace(self, hash, bucket, copy);
    return copy;
}

/* Rehash `bucket`'s pages into `into` (and those of the upper half into `upper`, when
 * splitting). */
static void
bucket_rehash(const Bucket *bucket, Bucket *into, Bucket *upper)
{
    for (size_t slot = 0; slot <= bucket_mask(bucket); slot++) {
        const PageSlot *entry = &bucket->slots[slot];
        if (entry->region == NULL)
            continue;
        Bucket *target = into;
        if (upper != NULL && ((page_hash(entry->page) << bucket->depth) >> 63))
            target = upper;
        bucket_put(target, entry->page, entry->region);
    }
}

/* Double the directory (this memory's own): each bucket named by twice the slots. */
static int
directory_double(MemoryObject *self)
{
    size_t slots = (size_t)1 << self->directory_bits;
    Bucket **doubled = PyMem_Malloc(2 * slots * sizeof(Bucket *));
    if (doubled == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < 2 * slots; i++) {
        doubled[i] = self->directory[i / 2];
        doubled[i]->refs++;
    }
    for (size_t i = 0; i < slots; i++)
        self->directory[i]->refs--;   /* stays named by the doubled directory */
    PyMem_Free(self->directory);
    self->directory = doubled;
    self->directory_bits++;
    self->directory_shift--;
    return 0;
}

/* Make room for one more page in the bucket for `hash`: grow it, or split it (doubling
 * the directory first if the bucket is as deep as the directory). */
static int
bucket_make_room(MemoryObject *self, uint64_t hash)
{
    Bucket *bucket = self->directory[directory_slot(self, hash)];
    if (bucket->bits < BUCKET_MAX_BITS || bucket->depth >= DEPTH_MAX) {
        Bucket *grown = bucket_new(bucket->depth, bucket->bits + 1);
        if (grown == NULL)
            return -1;
        bucket_rehash(bucket, grown, NULL);
        directory_replace(self, hash, bucket, grown);
        return 0;
    }
    if (bucket->depth == self->directory_bits && directory_double(self) < 0)
        return -1;
    Bucket *lower = bucket_new(bucket->depth + 1, bucket->bits);
    Bucket *upper = bucket_new(bucket->depth + 1, bucket->bits);
    if (lower == NULL || upper == NULL) {
        PyMem_Free(lower);
        PyMem_Free(upper);
        return -1;
    }
    bucket_rehash(bucket, lower, upper);
    Py_ssize_t span = directory_span(self, bucket->depth);
    size_t first = directory_first(self, hash, bucket->depth);
    for (Py_ssize_t i = 0; i < span; i++)
        self->directory[first + (size_t)i] = i < span / 2 ? lower : upper;
    lower->refs = upper->refs = span / 2;
    bucket_release(bucket, span);
    return 0;
}

/* A directory of one empty bucket (the first small region of this memory). */
static int
directory_start(MemoryObject *self)
{
    self->directory = PyMem_Malloc(sizeof(Bucket *));
    Bucket *bucket = self->directory == NULL ? NULL : bucket_new(0, BUCKET_MIN_BITS);
    if (bucket == NULL) {
        PyMem_Free(self->directory);
        self->directory = NULL;
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return -1;
    }
    bucket->refs = 1;
    self->directory[0] = bucket;
    self->directory_bits = 0;
    self->directory_shift = 63;
    return 0;
}

/* Name `region` for `page` unless a region is named there already (any region on the
 * page is a valid guess). */
static int
pages_add(MemoryObject *self, uint64_t page, RegionObject *region)
{
    if (self->directory == NULL && directory_start(self) < 0)
        return -1;
    uint64_t hash = page_hash(page);
    for (;;) {
        Bucket *bucket = self->directory[directory_slot(self, hash)];
        if (bucket->slots[bucket_find(bucket, page)].region != NULL)
            return 0;
        if (2 * (bucket->used + 1) <= ((size_t)1 << bucket->bits))
            break;
        if (bucket_make_room(self, hash) < 0)
            return -1;
    }
    Bucket *bucket = bucket_owned(self, hash);
    if (bucket == NULL)
        return -1;
    bucket_put(bucket, page, region);
    return 0;
}

static int
pages_add_region(MemoryObject *self, RegionObject *region)
{
    uint64_t first, last;
    if (small_region_pages(region, &first, &last))
        for (uint64_t page = first; page <= last; page++)
            if (pages_add(self, page, region) < 0)
                return -1;
    return 0;
}

/* Forget `page` if it names `region` (backward-shift deletion: no tombstones, so probe
 * runs stay as short as when built); 1 if it did. */
static int
pages_forget(MemoryObject *self, uint64_t page, RegionObject *region)
{
    uint64_t hash = page_hash(page);
    Bucket *bucket = self->directory[directory_slot(self, hash)];
    if (bucket->slots[bucket_find(bucket, page)].region != region)
        return 0;
    if ((bucket = bucket_owned(self, hash)) == NULL)
        return -1;
    size_t mask = bucket_mask(bucket);
    size_t hole = bucket_find(bucket, page);
    size_t next = hole;
    for (;;) {
        next = (next + 1) & mask;
        if (bucket->slots[next].region == NULL)
            break;
        size_t home = bucket_home(bucket, page_hash(bucket->slots[next].page));
        /* it may move unless its home lies cyclically in (hole, next] */
        if (((next - home) & mask) >= ((next - hole) & mask)) {
            bucket->slots[hole] = bucket->slots[next];
            hole = next;
        }
    }
    bucket->slots[hole].region = NULL;
    bucket->used--;
    return 1;
}

/* ---- Tables: made, copied, changed, freed ---- */

static int
index_allocate(MemoryObject *self, Py_ssize_t chunk_count)
{
    size_t slots = chunk_count > 0 ? (size_t)chunk_count : 1;
    char *block = PyMem_Malloc(slots * (sizeof(ChunkObject *) + sizeof(uint64_t)) +
                               (slots + 1) * sizeof(Py_ssize_t));
    if (block == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->chunks = (ChunkObject **)block;
    self->firsts = (uint64_t *)(block + slots * sizeof(ChunkObject *));
    self->bases = (Py_ssize_t *)(block + slots * (sizeof(ChunkObject *) + sizeof(uint64_t)));
    self->chunk_count = 0;
    self->count = 0;
    return 0;
}

/* Append a chunk (a new reference taken) to the index being built. */
static void
index_append(MemoryObject *self, ChunkObject *chunk)
{
    Py_ssize_t k = self->chunk_count++;
    Py_INCREF((PyObject *)chunk);
    self->chunks[k] = chunk;
    self->firsts[k] = chunk->entries[0].start;
    self->bases[k] = self->count;
    self->count += chunk_size(chunk);
}

static void
free_table(MemoryObject *self)
{
    /* The table is emptied before any region is let go: code a release runs (a
     * finalizer) may look up in this memory, and must neither find nor cache a region. */
    cache_clear(self);
    if (self->directory != NULL) {
        for (size_t i = 0; i < ((size_t)1 << self->directory_bits); i++)
            bucket_release(self->directory[i], 1);
        PyMem_Free(self->directory);
        self->directory = NULL;
    }
    ChunkObject **chunks = self->chunks;
    Py_ssize_t chunk_count = self->chunk_count;
    self->chunks = NULL;
    self->firsts = NULL;
    self->bases = NULL;
    self->chunk_count = 0;
    self->count = 0;
    for (Py_ssize_t k = 0; k < chunk_count; k++)
        Py_DECREF((PyObject *)chunks[k]);
    PyMem_Free(chunks);
}

static int
memory_traverse(PyObject *op, visitproc visit, void *arg)
{
    MemoryObject *self = (MemoryObject *)op;
    for (Py_ssize_t k = 0; k < self->chunk_count; k++)
        Py_VISIT((PyObject *)self->chunks[k]);
    Py_VISIT(self->regions);
    Py_VISIT(Py_TYPE(op));
    return 0;
}

static int
memory_clear(PyObject *op)
{
    MemoryObject *self = (MemoryObject *)op;
    free_table(self);
    Py_CLEAR(self->regions);
    return 0;
}

static void
memory_dealloc(PyObject *op)
{
    PyObject_GC_UnTrack(op);
    memory_clear(op);
    type_dealloc_tail(op);
}

static PyObject *
memory_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    MemoryObject *self = (MemoryObject *)alloc_instance(type);
    if (self == NULL)
        return NULL;
    cache_clear(self);
    self->directory_shift = 63;
    return (PyObject *)self;
}

static int
check_not_installed(MemoryObject *self)
{
    if (self->installed) {
        PyErr_SetString(PyExc_AttributeError, "a memory's regions are fixed at construction");
        return -1;
    }
    return 0;
}

/* Whether `before` ends at or below the start of `after` (sorted, apart). */
static inline int
regions_apart(const RegionObject *before, const RegionObject *after)
{
    return before->start < after->start && before->length <= after->start - before->start;
}

/* _install(regions): the table of a new memory (regions: a tuple, sorted, apart). */
static PyObject *
memory_install(PyObject *op, PyObject *regions)
{
    MemoryObject *self = (MemoryObject *)op;
    if (check_not_installed(self) < 0)
        return NULL;
    if (!PyTuple_Check(regions)) {
        PyErr_SetString(PyExc_TypeError, "_install: a tuple of regions");
        return NULL;
    }
    Py_ssize_t count = PyTuple_Size(regions);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_GetItem(regions, i);
        if (!PyObject_TypeCheck(item, RegionCoreType) ||
                !(((RegionObject *)item)->flags & R_SET) ||
                (i > 0 && !regions_apart((RegionObject *)PyTuple_GetItem(regions, i - 1),
                                         (RegionObject *)item))) {
            PyErr_SetString(PyExc_TypeError, "_install: sorted, non-overlapping, constructed regions");
            return NULL;
        }
    }
    if (index_allocate(self, (count + CHUNK_BUILD - 1) / CHUNK_BUILD) < 0)
        return NULL;
    RegionObject *run[CHUNK_BUILD];
    for (Py_ssize_t done = 0; done < count; done += CHUNK_BUILD) {
        Py_ssize_t size = count - done < CHUNK_BUILD ? count - done : CHUNK_BUILD;
        for (Py_ssize_t i = 0; i < size; i++)
            run[i] = (RegionObject *)PyTuple_GetItem(regions, done + i);
        ChunkObject *chunk = chunk_of(run, size);
        if (chunk == NULL)
            goto failed;
        index_append(self, chunk);
        Py_DECREF((PyObject *)chunk);
    }
    for (Py_ssize_t i = 0; i < count; i++)
        if (pages_add_region(self, (RegionObject *)PyTuple_GetItem(regions, i)) < 0)
            goto failed;
    PyObject *previous = self->regions;   /* an empty tuple asked for before install */
    Py_INCREF(regions);
    self->regions = regions;
    Py_XDECREF(previous);
    self->installed = 1;
    Py_RETURN_NONE;
failed:
    free_table(self);
    return NULL;
}

/* The index of `old` with its chunks [first, first + dropped) replaced by `added` (new
 * references, stolen), into `self`. */
static int
index_derive(MemoryObject *self, const MemoryObject *old, Py_ssize_t first,
             Py_ssize_t dropped, ChunkObject **added, Py_ssize_t adding)
{
    if (index_allocate(self, old->chunk_count - dropped + adding) < 0) {
        for (Py_ssize_t i = 0; i < adding; i++)
            Py_DECREF((PyObject *)added[i]);
        return -1;
    }
    for (Py_ssize_t k = 0; k < first; k++)
        index_append(self, old->chunks[k]);
    for (Py_ssize_t i = 0; i < adding; i++) {
        index_append(self, added[i]);
        Py_DECREF((PyObject *)added[i]);
    }
    for (Py_ssize_t k = first + dropped; k < old->chunk_count; k++)
        index_append(self, old->chunks[k]);
    return 0;
}

/* The regions of chunks [first, first + count) of `old` in order, into `run`; how many. */
static Py_ssize_t
gather(const MemoryObject *old, Py_ssize_t first, Py_ssize_t count, RegionObject **run)
{
    Py_ssize_t done = 0;
    for (Py_ssize_t k = first; k < first + count; k++)
        for (Py_ssize_t i = 0; i < chunk_size(old->chunks[k]); i++)
            run[done++] = old->chunks[k]->entries[i].region;
    return done;
}

/* `self`'s chunks: `old`'s with `region` inserted at `index`. */
static int
chunks_insert(MemoryObject *self, const MemoryObject *old, Py_ssize_t index,
              RegionObject *region)
{
    RegionObject *run[CHUNK_MAX + 1];
    ChunkObject *added[2] = {NULL, NULL};
    if (old->chunk_count == 0) {
        if ((added[0] = chunk_of(&region, 1)) == NULL)
            return -1;
        return index_derive(self, old, 0, 0, added, 1);
    }
    Py_ssize_t local;
    Py_ssize_t k = index == old->count ? old->chunk_count - 1 : chunk_of_index(old, index, &local);
    local = index - old->bases[k];
    Py_ssize_t size = gather(old, k, 1, run);
    memmove(run + local + 1, run + local, (size_t)(size - local) * sizeof(RegionObject *));
    run[local] = region;
    size++;
    Py_ssize_t left = size <= CHUNK_MAX ? size : size / 2;
    if ((added[0] = chunk_of(run, left)) == NULL)
        return -1;
    if (left < size && (added[1] = chunk_of(run + left, size - left)) == NULL) {
        Py_DECREF((PyObject *)added[0]);
        return -1;
    }
    return index_derive(self, old, k, 1, added, left < size ? 2 : 1);
}

/* `self`'s chunks: `old`'s without the region at `index` (a chunk left small merges with
 * a neighbour where both fit in one). */
static int
chunks_remove(MemoryObject *self, const MemoryObject *old, Py_ssize_t index)
{
    RegionObject *run[2 * CHUNK_MAX];
    ChunkObject *added[1] = {NULL};
    Py_ssize_t local;
    Py_ssize_t k = chunk_of_index(old, index, &local);
    Py_ssize_t size = chunk_size(old->chunks[k]) - 1;
    if (size == 0)
        return index_derive(self, old, k, 1, added, 0);
    Py_ssize_t first = k, dropped = 1;
    if (size < CHUNK_MIN) {
        if (k + 1 < old->chunk_count && size + chunk_size(old->chunks[k + 1]) <= CHUNK_MAX)
            dropped = 2;
        else if (k > 0 && size + chunk_size(old->chunks[k - 1]) <= CHUNK_MAX)
            first = k - 1, dropped = 2;
    }
    Py_ssize_t total = gather(old, first, dropped, run);
    Py_ssize_t at = index - old->bases[first];
    memmove(run + at, run + at + 1, (size_t)(total - at - 1) * sizeof(RegionObject *));
    if ((added[0] = chunk_of(run, total - 1)) == NULL)
        return -1;
    return index_derive(self, old, first, dropped, added, 1);
}

/* _install_changed(old, index, region): the table of `old` with `region` inserted at
 * `index`, or (region None) with the region at `index` removed; every part the change
 * does not touch shared with `old`. The caller has checked the change (closed regions,
 * admission); this checks again that it keeps the table sorted and without overlap. */
static PyObject *
memory_install_changed(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    MemoryObject *self = (MemoryObject *)op;
    if (check_not_installed(self) < 0)
        return NULL;
    if (nargs != 3 || !PyObject_TypeCheck(args[0], MemoryCoreType)) {
        PyErr_SetString(PyExc_TypeError, "_install_changed(old, index, region)");
        return NULL;
    }
    MemoryObject *old = (MemoryObject *)args[0];
    Py_ssize_t index = PyLong_AsSsize_t(args[1]);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    int inserted = args[2] != Py_None;
    RegionObject *region = (RegionObject *)args[2];
    if (inserted && (!PyObject_TypeCheck(args[2], RegionCoreType) || !(region->flags & R_SET))) {
        PyErr_SetString(PyExc_TypeError, "_install_changed: a constructed region");
        return NULL;
    }
    if (!old->installed || index < 0 || index > old->count - (inserted ? 0 : 1) ||
            (inserted && ((index > 0 && !regions_apart(region_by_index(old, index - 1), region)) ||
                          (index < old->count &&
                           !regions_apart(region, region_by_index(old, index)))))) {
        PyErr_SetString(PyExc_ValueError, "_install_changed: the change does not fit");
        return NULL;
    }
    Py_CLEAR(self->regions);   /* an empty tuple asked for before install */
    RegionObject *removed = inserted ? NULL : region_by_index(old, index);
    if ((inserted ? chunks_insert(self, old, index, region)
                  : chunks_remove(self, old, index)) < 0)
        goto failed;
    if (old->directory != NULL) {   /* a copy of the directory, naming the same buckets */
        size_t slots = (size_t)1 << old->directory_bits;
        self->directory = PyMem_Malloc(slots * sizeof(Bucket *));
        if (self->directory == NULL) {
            PyErr_NoMemory();
            goto failed;
        }
        memcpy(self->directory, old->directory, slots * sizeof(Bucket *));
        for (size_t i = 0; i < slots; i++)
            self->directory[i]->refs++;
        self->directory_bits = old->directory_bits;
        self->directory_shift = old->directory_shift;
    }
    if (inserted) {
        if (pages_add_region(self, region) < 0)
            goto failed;
    } else {
        /* its pages go to a neighbour on the same page if there is one (only its two
         * neighbours can share its pages; in `self` they are at index - 1 and index) */
        uint64_t first = 1, last = 0;
        if (!small_region_pages(removed, &first, &last))
            last = 0, first = 1;   /* not in the page table */
        for (uint64_t page = first; page <= last; page++) {
            int forgotten = pages_forget(self, page, removed);
            if (forgotten < 0)
                goto failed;
            for (Py_ssize_t i = index - 1; forgotten && i <= index; i++) {
                uint64_t low, high;
                if (i < 0 || i >= self->count)
                    continue;
                RegionObject *neighbour = region_by_index(self, i);
                if (small_region_pages(neighbour, &low, &high) && low <= page && page <= high) {
                    if (pages_add(self, page, neighbour) < 0)
                        goto failed;
                    break;
                }
            }
        }
    }
    self->installed = 1;
    Py_RETURN_NONE;
failed:
    free_table(self);
    return NULL;
}

/* _regions: the regions as a tuple (made once per memory object, on first use). */
static PyObject *
memory_get_regions(PyObject *op, void *closure)
{
    MemoryObject *self = (MemoryObject *)op;
    if (self->regions == NULL) {
        PyObject *regions = PyTuple_New(self->count);
        if (regions == NULL)
            return NULL;
        if (self->regions != NULL) {   /* made meanwhile (by a finalizer the allocation ran) */
            Py_DECREF(regions);
            Py_INCREF(self->regions);
            return self->regions;
        }
        Py_ssize_t done = 0;
        for (Py_ssize_t k = 0; k < self->chunk_count; k++)
            for (Py_ssize_t i = 0; i < chunk_size(self->chunks[k]); i++) {
                PyObject *region = (PyObject *)self->chunks[k]->entries[i].region;
                Py_INCREF(region);
                PyTuple_SetItem(regions, done++, region);
            }
        self->regions = regions;
    }
    Py_INCREF(self->regions);
    return self->regions;
}

static PyObject *
memory_num_regions(PyObject *op, PyObject *unused)
{
    return PyLong_FromSsize_t(((MemoryObject *)op)->count);
}

/* _nth_region(index): the region at `index` in address order (0 <= index < count). */
static PyObject *
memory_nth_region(PyObject *op, PyObject *value)
{
    MemoryObject *self = (MemoryObject *)op;
    Py_ssize_t index = PyLong_AsSsize_t(value);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    if (index < 0 || index >= self->count) {
        PyErr_SetString(PyExc_IndexError, "region index out of range");
        return NULL;
    }
    PyObject *region = (PyObject *)region_by_index(self, index);
    Py_INCREF(region);
    return region;
}

static PyObject *
memory_region_at(PyObject *op, PyObject *value)
{
    uint64_t raw;
    if (!exact_u64(value, &raw)) {
        PyErr_SetString(PyExc_TypeError, "_region_at: an address value");
        return NULL;
    }
    RegionObject *found = lookup((MemoryObject *)op, raw);
    PyObject *region = found != NULL ? (PyObject *)found : no_region;
    if (region == NULL)
        Py_RETURN_NONE;
    Py_INCREF(region);
    return region;
}

/* _page_guess(value): the region the page table names for `value`'s page, or None (for
 * tests: every page of a small region has a guess, each guess lies on its page). */
static PyObject *
memory_page_guess(PyObject *op, PyObject *value)
{
    MemoryObject *self = (MemoryObject *)op;
    uint64_t raw;
    if (!exact_u64(value, &raw)) {
        PyErr_SetString(PyExc_TypeError, "_page_guess: an address value");
        return NULL;
    }
    if (self->directory != NULL) {
        uint64_t page = raw >> PAGE_SHIFT;
        const Bucket *bucket = self->directory[directory_slot(self, page_hash(page))];
        PyObject *region = (PyObject *)bucket->slots[bucket_find(bucket, page)].region;
        if (region != NULL) {
            Py_INCREF(region);
            return region;
        }
    }
    Py_RETURN_NONE;
}

/* _cached_region(value): the region the region cache's slot for `value`'s page names —
 * the unchecked guess, which need not hold `value` — or None (for tests). */
static PyObject *
memory_cached_region(PyObject *op, PyObject *value)
{
    MemoryObject *self = (MemoryObject *)op;
    uint64_t raw;
    if (!exact_u64(value, &raw)) {
        PyErr_SetString(PyExc_TypeError, "_cached_region: an address value");
        return NULL;
    }
    PyObject *region = (PyObject *)self->cache[cache_slot(raw)];
    if (region == (PyObject *)&no_cached_region)
        Py_RETURN_NONE;
    Py_INCREF(region);
    return region;
}

/* _cache_misses(): how many lookups the region cache has not answered (for tests). */
static PyObject *
memory_cache_misses(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(((MemoryObject *)op)->cache_misses);
}

static PyObject *
memory_index_at(PyObject *op, PyObject *value)
{
    uint64_t raw;
    if (!exact_u64(value, &raw)) {
        PyErr_SetString(PyExc_TypeError, "_index_at: an address value");
        return NULL;
    }
    Py_ssize_t index = -1;
    entry_at((MemoryObject *)op, raw, &index);
    return PyLong_FromSsize_t(index);
}

/* ---- Values: raw bits <-> Python objects, as the pure path's struct codecs do ------ */

static inline uint64_t
swap_bytes(uint64_t bits, unsigned size)
{
    switch (size) {
    case 2: return __builtin_bswap16((uint16_t)bits);
    case 4: return __builtin_bswap32((uint32_t)bits);
    case 8: return __builtin_bswap64(bits);
    default: return bits;
    }
}

static inline uint64_t
load_bits(const char *pointer, unsigned size)
{
    switch (size) {
    case 1: { uint8_t v; memcpy(&v, pointer, 1); return v; }
    case 2: { uint16_t v; memcpy(&v, pointer, 2); return v; }
    case 4: { uint32_t v; memcpy(&v, pointer, 4); return v; }
    default: { uint64_t v; memcpy(&v, pointer, 8); return v; }
    }
}

static inline void
store_bits(char *pointer, unsigned size, uint64_t bits)
{
    switch (size) {
    case 1: { uint8_t v = (uint8_t)bits; memcpy(pointer, &v, 1); break; }
    case 2: { uint16_t v = (uint16_t)bits; memcpy(pointer, &v, 2); break; }
    case 4: { uint32_t v = (uint32_t)bits; memcpy(pointer, &v, 4); break; }
    default: memcpy(pointer, &bits, 8); break;
    }
}

static inline int64_t
sign_extend(uint64_t bits, unsigned size)
{
    if (size >= 8)
        return (int64_t)bits;
    unsigned shift = 64 - 8 * size;
    return (int64_t)(bits << shift) >> shift;
}

static PyObject *
integer_object(uint64_t bits, const TypeInfoObject *info)
{
    if (info->kind == K_SINT)
        return PyLong_FromLongLong(sign_extend(bits, info->size));
    return PyLong_FromUnsignedLongLong(bits);
}

/* The Python value of `bits` read from memory (host byte order already undone). */
static PyObject *
value_object(uint64_t bits, const TypeInfoObject *info)
{
    switch (info->kind) {
    case K_UINT:
    case K_SINT:
        return integer_object(bits, info);
    case K_BOOL:
        return PyBool_FromLong(bits != 0);
    case K_FLOAT:
        if (info->size == 4) {
            uint32_t narrow = (uint32_t)bits;
            float value;
            memcpy(&value, &narrow, 4);
            return PyFloat_FromDouble((double)value);
        } else {
            double value;
            memcpy(&value, &bits, 8);
            return PyFloat_FromDouble(value);
        }
    default:
        return NULL;
    }
}

/* `value` as the bits of an integer (or bool) of `info` if it is an exact int (a bool:
 * True/False too) in the type's range; else 0. */
static inline int
integer_bits(PyObject *value, const TypeInfoObject *info, uint64_t *bits)
{
    unsigned width = 8 * info->size;
    if (info->kind == K_BOOL) {
        if (value == Py_True || value == Py_False) {
            *bits = value == Py_True;
            return 1;
        }
    }
    if (!PyLong_CheckExact(value))
        return 0;
    int overflow = 0;
    long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow != 0) {
        if (overflow < 0 || info->kind != K_UINT || info->size != 8)
            return 0;
        unsigned long long big = PyLong_AsUnsignedLongLong(value);
        if (big == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        *bits = (uint64_t)big;
        return 1;
    }
    switch (info->kind) {
    case K_BOOL:
        if (number != 0 && number != 1)
            return 0;
        break;
    case K_UINT:
        if (number < 0 || (width < 64 && (uint64_t)number >> width))
            return 0;
        break;
    case K_SINT:
        if (width < 64) {
            long long limit = 1LL << (width - 1);
            if (number < -limit || number >= limit)
                return 0;
        }
        break;
    default:
        return 0;
    }
    *bits = (uint64_t)number;
    return 1;
}

/* `value` as the bits to store for `info` (ints, bools, floats of exact types), or 0. */
static inline int
value_bits(PyObject *value, const TypeInfoObject *info, uint64_t *bits)
{
    if (info->kind == K_FLOAT) {
        if (!PyFloat_CheckExact(value))
            return 0;
        double number = PyFloat_AsDouble(value);
        if (info->size == 8) {
            memcpy(bits, &number, 8);
        } else {
            float narrow = (float)number;
            if (isinf(narrow) && !isinf(number))
                return 0;   /* struct refuses it: the general path says so */
            uint32_t narrow_bits;
            memcpy(&narrow_bits, &narrow, 4);
            *bits = narrow_bits;
        }
        return 1;
    }
    return integer_bits(value, info, bits);
}

/* ---- Atomic operations with __atomic builtins ---------------------------------------- */

enum { OP_LOAD, OP_STORE, OP_SWAP, OP_CAS, OP_ADD, OP_SUB, OP_AND, OP_OR, OP_XOR };

#define LOAD_CASES(T, pointer, order, out)                                       \
    switch (order) {                                                            \
    case O_RELAXED: out = __atomic_load_n((T *)(pointer), __ATOMIC_RELAXED); break; \
    case O_ACQUIRE: out = __atomic_load_n((T *)(pointer), __ATOMIC_ACQUIRE); break; \
    default: out = __atomic_load_n((T *)(pointer), __ATOMIC_SEQ_CST); break;    \
    }

#define STORE_CASES(T, pointer, value, order)                                     \
    switch (order) {                                                            \
    case O_RELAXED: __atomic_store_n((T *)(pointer), (T)(value), __ATOMIC_RELAXED); break; \
    case O_RELEASE: __atomic_store_n((T *)(pointer), (T)(value), __ATOMIC_RELEASE); break; \
    default: __atomic_store_n((T *)(pointer), (T)(value), __ATOMIC_SEQ_CST); break; \
    }

#define RMW_CASES(T, builtin, pointer, value, order, out)                         \
    switch (order) {                                                            \
    case O_RELAXED: out = builtin((T *)(pointer), (T)(value), __ATOMIC_RELAXED); break; \
    case O_ACQUIRE: out = builtin((T *)(pointer), (T)(value), __ATOMIC_ACQUIRE); break; \
    case O_RELEASE: out = builtin((T *)(pointer), (T)(value), __ATOMIC_RELEASE); break; \
    case O_ACQ_REL: out = builtin((T *)(pointer), (T)(value), __ATOMIC_ACQ_REL); break; \
    default: out = builtin((T *)(pointer), (T)(value), __ATOMIC_SEQ_CST); break; \
    }

/* A compare-exchange with the orderings asked for, or stronger ones where C11 forbids
 * the pair as given (a failure ordering stronger than the success ordering). */
#define CAS_ONE(T, pointer, expected, desired, s, f) \
    __atomic_compare_exchange_n((T *)(pointer), (T *)(expected), (T)(desired), 0, s, f)
#define CAS_CASES(T, pointer, expected, desired, success, failure, out)                   \
    if ((failure) == O_SEQ_CST) {                                                        \
        out = CAS_ONE(T, pointer, expected, desired, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); \
    } else if ((failure) == O_ACQUIRE) {                                                  \
        switch (success) {                                                               \
        case O_RELAXED: case O_ACQUIRE:                                                  \
            out = CAS_ONE(T, pointer, expected, desired, __ATOMIC_ACQUIRE, __ATOMIC_ACQUIRE); \
            break;                                                                       \
        case O_RELEASE: case O_ACQ_REL:                                                  \
            out = CAS_ONE(T, pointer, expected, desired, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE); \
            break;                                                                       \
        default:                                                                         \
            out = CAS_ONE(T, pointer, expected, desired, __ATOMIC_SEQ_CST, __ATOMIC_ACQUIRE); \
            break;                                                                       \
        }                                                                                \
    } else {                                                                             \
        switch (success) {                                                               \
        case O_RELAXED:                                                                  \
            out = CAS_ONE(T, pointer, expected, desired, __ATOMIC_RELAXED, __ATOMIC_RELAXED); \
            break;                                                                       \
        case O_ACQUIRE:                                                                  \
            out = CAS_ONE(T, pointer, expected, desired, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED); \
            break;                                                                       \
        case O_RELEASE:                                                                  \
            out = CAS_ONE(T, pointer, expected, desired, __ATOMIC_RELEASE, __ATOMIC_RELAXED); \
            break;                                                                       \
        case O_ACQ_REL:                                                                  \
            out = CAS_ONE(T, pointer, expected, desired, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED); \
            break;                                                                       \
        default:                                                                         \
            out = CAS_ONE(T, pointer, expected, desired, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED); \
            break;                                                                       \
        }                                                                                \
    }

/* One atomic operation of width T on `pointer`; `*old` gets the previous value (loads and
 * read-modify-writes), `*expected` is updated by a compare-exchange, which returns whether
 * it stored. */
#define ATOMIC_WIDTH(T)                                                                 \
    static int atomic_##T(int op, char *pointer, uint64_t value, uint64_t *expected,     \
                          int order, int failure, uint64_t *old)                        \
    {                                                                                   \
        T result = 0;                                                                   \
        int stored = 1;                                                                 \
        switch (op) {                                                                   \
        case OP_LOAD: LOAD_CASES(T, pointer, order, result); break;                     \
        case OP_STORE: STORE_CASES(T, pointer, value, order); break;                    \
        case OP_SWAP: RMW_CASES(T, __atomic_exchange_n, pointer, value, order, result); break; \
        case OP_ADD: RMW_CASES(T, __atomic_fetch_add, pointer, value, order, result); break; \
        case OP_SUB: RMW_CASES(T, __atomic_fetch_sub, pointer, value, order, result); break; \
        case OP_AND: RMW_CASES(T, __atomic_fetch_and, pointer, value, order, result); break; \
        case OP_OR: RMW_CASES(T, __atomic_fetch_or, pointer, value, order, result); break; \
        case OP_XOR: RMW_CASES(T, __atomic_fetch_xor, pointer, value, order, result); break; \
        case OP_CAS: {                                                                  \
            T seen = (T)*expected;                                                      \
            CAS_CASES(T, pointer, &seen, value, order, failure, stored);                \
            *expected = (uint64_t)seen;                                                 \
            break;                                                                      \
        }                                                                               \
        }                                                                               \
        *old = (uint64_t)result;                                                        \
        return stored;                                                                  \
    }

#if LOCK_FREE_1
ATOMIC_WIDTH(uint8_t)
#endif
#if LOCK_FREE_2
ATOMIC_WIDTH(uint16_t)
#endif
#if LOCK_FREE_4
ATOMIC_WIDTH(uint32_t)
#endif
#if LOCK_FREE_8
ATOMIC_WIDTH(uint64_t)
#endif

static int
atomic_any(unsigned size, int op, char *pointer, uint64_t value, uint64_t *expected,
           int order, int failure, uint64_t *old)
{
    switch (size) {
#if LOCK_FREE_1
    case 1: return atomic_uint8_t(op, pointer, value, expected, order, failure, old);
#endif
#if LOCK_FREE_2
    case 2: return atomic_uint16_t(op, pointer, value, expected, order, failure, old);
#endif
#if LOCK_FREE_4
    case 4: return atomic_uint32_t(op, pointer, value, expected, order, failure, old);
#endif
#if LOCK_FREE_8
    case 8: return atomic_uint64_t(op, pointer, value, expected, order, failure, old);
#endif
    default: return -1;   /* unreachable: TypeInfo.atomic needs a lock-free width */
    }
}

/* A read-modify-write on a c_bool: a compare-exchange loop on the byte, as the pure path
 * does (vm_memory/atomic_operations.py): any non-zero byte is True, stores write 0 or 1.
 * Returns the old value (a bool); for a compare-exchange also whether it stored. */
static int
bool_read_modify_write(int op, char *pointer, uint64_t value, uint64_t expected, int order,
                       int failure, int *old_value)
{
    uint64_t raw = 0, ignored = 0;
    atomic_any(1, OP_LOAD, pointer, 0, NULL, op == OP_CAS ? failure : O_RELAXED, 0, &raw);
    for (;;) {
        int old = raw != 0;
        uint64_t desired;
        switch (op) {
        case OP_SWAP: desired = value; break;
        case OP_AND: desired = (uint64_t)old & value; break;
        case OP_OR: desired = (uint64_t)old | value; break;
        case OP_XOR: desired = (uint64_t)old ^ value; break;
        default:   /* OP_CAS */
            if ((uint64_t)old != expected) {
                *old_value = old;
                return 0;
            }
            desired = value;
            break;
        }
        uint64_t seen = raw;
        if (atomic_any(1, OP_CAS, pointer, desired, &seen, order, O_RELAXED, &ignored)) {
            *old_value = old;
            return 1;
        }
        raw = seen;
    }
}

/* Arguments of each atomic method: (address, operands..., order[, failure]). */
static const int operand_counts[] = {0, 1, 1, 2, 1, 1, 1, 1, 1};
static const unsigned order_masks[] = {ORDERS_LOAD, ORDERS_STORE, ORDERS_ALL, ORDERS_ALL,
                                       ORDERS_ALL, ORDERS_ALL, ORDERS_ALL, ORDERS_ALL,
                                       ORDERS_ALL};

static PyObject *
atomic_method(int op, PyObject *op_self, PyObject *const *args, Py_ssize_t nargs,
              PyObject *kwnames)
{
    MemoryObject *self = (MemoryObject *)op_self;
    int operands = operand_counts[op];
    Py_ssize_t most = 1 + operands + (op == OP_CAS ? 2 : 1);
    if (kwnames != NULL || nargs < 1 + operands || nargs > most)
        goto general;
    PyObject *address = args[0];
    if (Py_TYPE(address) != aligned_type)
        goto general;
    AlignedObject *aligned = (AlignedObject *)address;
    TypeInfoObject *info = aligned->info;
    if (!info->atomic || (info->kind == K_BOOL && (op == OP_ADD || op == OP_SUB)))
        goto general;
    int order = O_SEQ_CST, failure = O_SEQ_CST;
    if (nargs > 1 + operands && (order = order_of(args[1 + operands], order_masks[op])) < 0)
        goto general;
    if (nargs > 2 + operands && (failure = order_of(args[2 + operands], ORDERS_LOAD)) < 0)
        goto general;
    uint64_t first = 0, second = 0;
    if (operands >= 1 && !integer_bits(args[1], info, &first))
        goto general;
    if (operands == 2 && !integer_bits(args[2], info, &second))
        goto general;
    RegionObject *region;
    unsigned size = info->size;
    char *pointer = host_span(self, aligned->raw, size, op != OP_LOAD, &region);
    if (pointer == NULL || ((uintptr_t)pointer & (size - 1)))
        goto general;
    uint64_t offset = aligned->raw - region->start;

    if (info->kind == K_BOOL && op != OP_LOAD && op != OP_STORE) {
        int old = 0;
        /* compare_exchange(expected, desired): `first` is expected, `second` desired */
        int stored = bool_read_modify_write(op, pointer, op == OP_CAS ? second : first, first,
                                            order, failure, &old);
        if (op != OP_CAS || stored)
            mark_dirty(region, offset, size);
        if (op == OP_CAS)
            return Py_BuildValue("(NN)", PyBool_FromLong(stored), PyBool_FromLong(old));
        return PyBool_FromLong(old);
    }

    uint64_t old = 0;
    if (op == OP_CAS) {
        uint64_t seen = first;
        int stored = atomic_any(size, OP_CAS, pointer, second, &seen, order, failure, &old);
        if (stored)
            mark_dirty(region, offset, size);
        PyObject *value = stored ? (Py_INCREF(args[1]), args[1]) : integer_object(seen, info);
        if (value == NULL)
            return NULL;
        return Py_BuildValue("(NN)", PyBool_FromLong(stored), value);
    }
    atomic_any(size, op, pointer, first, NULL, order, O_SEQ_CST, &old);
    if (op == OP_LOAD)
        return info->kind == K_BOOL ? PyBool_FromLong(old != 0) : integer_object(old, info);
    mark_dirty(region, offset, size);
    if (op == OP_STORE)
        Py_RETURN_NONE;
    return integer_object(old, info);

general:
    return call_fallback(G_READ_ATOMIC + op, op_self, args, nargs, kwnames);
}

#define ATOMIC_METHOD(name, op)                                                          \
    static PyObject *memory_##name(PyObject *self, PyObject *const *args, Py_ssize_t nargs, \
                                   PyObject *kwnames)                                    \
    {                                                                                    \
        return atomic_method(op, self, args, nargs, kwnames);                            \
    }

ATOMIC_METHOD(read_atomic, OP_LOAD)
ATOMIC_METHOD(write_atomic, OP_STORE)
ATOMIC_METHOD(swap, OP_SWAP)
ATOMIC_METHOD(compare_exchange, OP_CAS)
ATOMIC_METHOD(fetch_add, OP_ADD)
ATOMIC_METHOD(fetch_sub, OP_SUB)
ATOMIC_METHOD(fetch_and, OP_AND)
ATOMIC_METHOD(fetch_or, OP_OR)
ATOMIC_METHOD(fetch_xor, OP_XOR)

/* ---- Typed, not atomic ------------------------------------------------------------- */

static inline uint64_t
read_value_bits(const char *pointer, const TypeInfoObject *info)
{
    uint64_t bits = load_bits(pointer, info->size);
    return info->swap ? swap_bytes(bits, info->size) : bits;
}

static inline void
write_value_bits(char *pointer, const TypeInfoObject *info, uint64_t bits)
{
    store_bits(pointer, info->size, info->swap ? swap_bytes(bits, info->size) : bits);
}

static PyObject *
memory_read_obj(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    MemoryObject *self = (MemoryObject *)op;
    if (kwnames == NULL && nargs == 1 && Py_TYPE(args[0]) == aligned_type) {
        AlignedObject *aligned = (AlignedObject *)args[0];
        TypeInfoObject *info = aligned->info;
        RegionObject *region;
        char *pointer;
        if (info->kind != K_OTHER &&
                (pointer = host_span(self, aligned->raw, info->size, 0, &region)) != NULL)
            return value_object(read_value_bits(pointer, info), info);
    }
    return call_fallback(G_READ_OBJ, op, args, nargs, kwnames);
}

static PyObject *
memory_write_obj(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    MemoryObject *self = (MemoryObject *)op;
    if (kwnames == NULL && nargs == 2 && Py_TYPE(args[0]) == aligned_type) {
        AlignedObject *aligned = (AlignedObject *)args[0];
        TypeInfoObject *info = aligned->info;
        uint64_t bits;
        RegionObject *region;
        char *pointer;
        if (info->kind != K_OTHER && value_bits(args[1], info, &bits) &&
                (pointer = host_span(self, aligned->raw, info->size, 1, &region)) != NULL) {
            write_value_bits(pointer, info, bits);
            mark_dirty(region, aligned->raw - region->start, info->size);
            Py_RETURN_NONE;
        }
    }
    return call_fallback(G_WRITE_OBJ, op, args, nargs, kwnames);
}

/* The raw value of a GuestAddress (or AlignedGuestAddress) argument, exact types only. */
static inline int
plain_address(PyObject *address, uint64_t *raw)
{
    if (Py_TYPE(address) == guest_address_type) {
        *raw = ((AddressObject *)address)->raw;
        return 1;
    }
    if (Py_TYPE(address) == aligned_type) {
        *raw = ((AlignedObject *)address)->raw;
        return 1;
    }
    return 0;
}

static PyObject *
memory_read_obj_unaligned(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames)
{
    MemoryObject *self = (MemoryObject *)op;
    uint64_t raw;
    if (kwnames == NULL && nargs == 2 && plain_address(args[0], &raw)) {
        TypeInfoObject *info = info_of(args[1]);
        RegionObject *region;
        char *pointer;
        if (info != NULL && info->kind != K_OTHER &&
                (pointer = host_span(self, raw, info->size, 0, &region)) != NULL)
            return value_object(read_value_bits(pointer, info), info);
    }
    return call_fallback(G_READ_OBJ_UNALIGNED, op, args, nargs, kwnames);
}

static PyObject *
memory_write_obj_unaligned(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    MemoryObject *self = (MemoryObject *)op;
    uint64_t raw, bits;
    if (kwnames == NULL && nargs == 3 && plain_address(args[0], &raw)) {
        TypeInfoObject *info = info_of(args[1]);
        RegionObject *region;
        char *pointer;
        if (info != NULL && info->kind != K_OTHER && value_bits(args[2], info, &bits) &&
                (pointer = host_span(self, raw, info->size, 1, &region)) != NULL) {
            write_value_bits(pointer, info, bits);
            mark_dirty(region, raw - region->start, info->size);
            Py_RETURN_NONE;
        }
    }
    return call_fallback(G_WRITE_OBJ_UNALIGNED, op, args, nargs, kwnames);
}

/* ---- Bulk copies inside one region ------------------------------------------------- */

/* A 1-D, C-contiguous, non-empty buffer (what the pure path's byte_view takes as is),
 * or 0 with no error and nothing held. */
static int
flat_buffer(PyObject *object, Py_buffer *view, int writable)
{
    int flags = PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(object, view, flags) < 0) {
        PyErr_Clear();
        return 0;
    }
    if (view->ndim != 1 || view->len <= 0 || !PyBuffer_IsContiguous(view, 'C')) {
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

static PyObject *
memory_read_slice(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    MemoryObject *self = (MemoryObject *)op;
    uint64_t raw;
    Py_buffer view;
    if (kwnames == NULL && nargs == 2 && plain_address(args[0], &raw) &&
            flat_buffer(args[1], &view, 1)) {
        RegionObject *region;
        char *pointer = host_span(self, raw, (uint64_t)view.len, 0, &region);
        if (pointer != NULL)
            memmove(view.buf, pointer, (size_t)view.len);
        PyBuffer_Release(&view);
        if (pointer != NULL)
            Py_RETURN_NONE;
    }
    return call_fallback(G_READ_SLICE, op, args, nargs, kwnames);
}

static PyObject *
memory_write_slice(PyObject *op, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    MemoryObject *self = (MemoryObject *)op;
    uint64_t raw;
    Py_buffer view;
    if (kwnames == NULL && nargs == 2 && plain_address(args[0], &raw) &&
            flat_buffer(args[1], &view, 0)) {
        RegionObject *region;
        char *pointer = host_span(self, raw, (uint64_t)view.len, 1, &region);
        if (pointer != NULL) {
            memmove(pointer, view.buf, (size_t)view.len);
            mark_dirty(region, raw - region->start, (uint64_t)view.len);
        }
        PyBuffer_Release(&view);
        if (pointer != NULL)
            Py_RETURN_NONE;
    }
    return call_fallback(G_WRITE_SLICE, op, args, nargs, kwnames);
}

#define FAST(name, doc)                                                                   \
    {#name, (PyCFunction)(void (*)(void))memory_##name, METH_FASTCALL | METH_KEYWORDS, doc}

static PyMethodDef memory_methods[] = {
    FAST(read_atomic, "read_atomic($self, address, order=vm_memory.ordering.Ordering.SEQ_CST)\n--\n\nOne hardware-atomic load with `order` (RELAXED, ACQUIRE or SEQ_CST)."),
    FAST(write_atomic, "write_atomic($self, address, value, order=vm_memory.ordering.Ordering.SEQ_CST)\n--\n\nOne hardware-atomic store with `order` (RELAXED, RELEASE or SEQ_CST)."),
    FAST(swap, "swap($self, address, value, order=vm_memory.ordering.Ordering.SEQ_CST)\n--\n\nAtomically store `value` and return the previous value."),
    FAST(compare_exchange, "compare_exchange($self, address, expected, desired, success=vm_memory.ordering.Ordering.SEQ_CST, failure=vm_memory.ordering.Ordering.SEQ_CST)\n--\n\nAtomically store `desired` if the value is `expected`.\n\n"
         "Returns (whether it was stored, the value found). A read-only region refuses even "
         "a compare-exchange that would fail: the instruction writes either way."),
    FAST(fetch_add, "fetch_add($self, address, value, order=vm_memory.ordering.Ordering.SEQ_CST)\n--\n\nAtomically add `value` (wrapping at the type's width); return the old "
         "value."),
    FAST(fetch_sub, "fetch_sub($self, address, value, order=vm_memory.ordering.Ordering.SEQ_CST)\n--\n\nAtomically subtract `value` (wrapping); return the old value."),
    FAST(fetch_and, "fetch_and($self, address, value, order=vm_memory.ordering.Ordering.SEQ_CST)\n--\n\nAtomically AND `value` in; return the old value."),
    FAST(fetch_or, "fetch_or($self, address, value, order=vm_memory.ordering.Ordering.SEQ_CST)\n--\n\nAtomically OR `value` in; return the old value."),
    FAST(fetch_xor, "fetch_xor($self, address, value, order=vm_memory.ordering.Ordering.SEQ_CST)\n--\n\nAtomically XOR `value` in; return the old value."),
    FAST(read_obj, "read_obj($self, address)\n--\n\nThe value at an aligned address: bounds-checked, not guaranteed atomic."),
    FAST(write_obj, "write_obj($self, address, value)\n--\n\nStore at an aligned address: bounds-checked, not guaranteed atomic."),
    FAST(read_obj_unaligned, "read_obj_unaligned($self, address, ctype)\n--\n\nA value of ByteValued `ctype` at any address, possibly across "
         "regions."),
    FAST(write_obj_unaligned, "write_obj_unaligned($self, address, ctype, value)\n--\n\nStore `value` as ByteValued `ctype` at any address, possibly "
         "across regions."),
    FAST(read_slice, "read_slice($self, address, buffer)\n--\n\nFill `buffer` from guest memory, or raise `PartialBuffer` having copied "
         "nothing."),
    FAST(write_slice, "write_slice($self, address, data)\n--\n\nCopy all of `data` into guest memory, or raise having written "
         "nothing."),
    {"_install", memory_install, METH_O, "Build the region table (once)."},
    {"_install_changed", (PyCFunction)(void (*)(void))memory_install_changed, METH_FASTCALL,
     "Build the region table from another memory's, one region inserted or removed, "
     "sharing what the change does not touch."},
    {"_nth_region", memory_nth_region, METH_O,
     "_nth_region($self, index, /)\n--\n\nThe region at `index` in address order."},
    {"num_regions", memory_num_regions, METH_NOARGS,
     "num_regions($self, /)\n--\n\nHow many regions there are."},
    {"_region_at", memory_region_at, METH_O,
     "The region holding an address value (remembered), or the no-region."},
    {"_page_guess", memory_page_guess, METH_O,
     "The region the page table guesses for an address value's page, or None."},
    {"_cached_region", memory_cached_region, METH_O,
     "The region the region cache's slot for an address value's page names, or None."},
    {"_cache_misses", memory_cache_misses, METH_NOARGS,
     "How many lookups the region cache has not answered."},
    {"_index_at", memory_index_at, METH_O,
     "The index of the last region starting at or below an address value, or -1."},
    {NULL},
};

static PyGetSetDef memory_getset[] = {
    {"_regions", memory_get_regions, NULL, "The regions, sorted by start address.", NULL},
    {NULL},
};

static PyType_Slot memory_slots[] = {
    {Py_tp_new, memory_new},
    {Py_tp_dealloc, memory_dealloc},
    {Py_tp_traverse, memory_traverse},
    {Py_tp_clear, memory_clear},
    {Py_tp_methods, memory_methods},
    {Py_tp_getset, memory_getset},
    {Py_tp_doc, "The compiled region table and hot methods of GuestMemory."},
    {0, NULL},
};

static PyType_Spec memory_spec = {
    "vm_memory._fastpath.MemoryCore", sizeof(MemoryObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC, memory_slots,
};

/* ---- Module: registration by the Python modules that define the classes ------------- */

static int
set_object(PyObject **slot, PyObject *value)
{
    PyObject *old = *slot;
    Py_XINCREF(value);
    *slot = value;
    Py_XDECREF(old);
    return 0;
}

static PyObject *
module_register(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "register(name, object)");
        return NULL;
    }
    const char *name = PyUnicode_AsUTF8AndSize(args[0], NULL);
    PyObject *value = args[1];
    if (name == NULL)
        return NULL;
    if (strcmp(name, "guest_address") == 0 || strcmp(name, "aligned_address") == 0) {
        PyTypeObject *base = name[0] == 'g' ? AddressCoreType : AlignedCoreType;
        if (!PyType_Check(value) || !PyType_IsSubtype((PyTypeObject *)value, base)) {
            PyErr_Format(PyExc_TypeError, "register: %s must derive from the core type", name);
            return NULL;
        }
        set_object((PyObject **)(name[0] == 'g' ? &guest_address_type : &aligned_type), value);
        Py_RETURN_NONE;
    }
    if (strcmp(name, "describe") == 0) {
        set_object(&describe, value);
        Py_RETURN_NONE;
    }
    if (strcmp(name, "no_region") == 0) {
        if (!PyObject_TypeCheck(value, RegionCoreType)) {
            PyErr_SetString(PyExc_TypeError, "register: no_region must be a region");
            return NULL;
        }
        set_object(&no_region, value);
        Py_RETURN_NONE;
    }
    if (strcmp(name, "orderings") == 0) {
        /* The Ordering members: each at its C value. */
        PyObject *members = PySequence_Tuple(value);
        if (members == NULL)
            return NULL;
        PyObject *found[6] = {NULL};
        for (Py_ssize_t i = 0; i < PyTuple_Size(members); i++) {
            PyObject *member = PyTuple_GetItem(members, i);
            long number = PyLong_AsLong(member);
            if (number == -1 && PyErr_Occurred()) {
                Py_DECREF(members);
                return NULL;
            }
            if (number < 0 || number > 5 || number == 1) {
                Py_DECREF(members);
                PyErr_SetString(PyExc_ValueError, "register: an unknown ordering");
                return NULL;
            }
            found[number] = member;
        }
        for (int i = 0; i < 6; i++)
            set_object(&orderings[i], found[i]);
        Py_DECREF(members);
        Py_RETURN_NONE;
    }
    for (int which = 0; which < FALLBACK_COUNT; which++) {
        if (strcmp(name, fallback_names[which]) == 0) {
            if (!PyCallable_Check(value)) {
                PyErr_Format(PyExc_TypeError, "register: %s must be callable", name);
                return NULL;
            }
            set_object(&fallbacks[which], value);
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError, "register: nothing is called %s", name);
    return NULL;
}

static PyObject *
module_registered(PyObject *module, PyObject *unused)
{
    /* The names still missing: the library checks that every one was registered. */
    PyObject *missing = PyList_New(0);
    if (missing == NULL)
        return NULL;
    for (int which = 0; which < FALLBACK_COUNT; which++) {
        if (fallbacks[which] == NULL) {
            PyObject *name = PyUnicode_FromString(fallback_names[which]);
            if (name == NULL || PyList_Append(missing, name) < 0) {
                Py_XDECREF(name);
                Py_DECREF(missing);
                return NULL;
            }
            Py_DECREF(name);
        }
    }
    const char *objects[] = {"guest_address", "aligned_address", "describe", "no_region",
                             "orderings"};
    PyObject *present[] = {(PyObject *)guest_address_type, (PyObject *)aligned_type,
                           describe, no_region, orderings[O_SEQ_CST]};
    for (int i = 0; i < 5; i++) {
        if (present[i] == NULL) {
            PyObject *name = PyUnicode_FromString(objects[i]);
            if (name == NULL || PyList_Append(missing, name) < 0) {
                Py_XDECREF(name);
                Py_DECREF(missing);
                return NULL;
            }
            Py_DECREF(name);
        }
    }
    return missing;
}

static PyObject *
module_lock_free_widths(PyObject *module, PyObject *unused)
{
    PyObject *widths = PyList_New(0);
    if (widths == NULL)
        return NULL;
    for (unsigned size = 1; size <= 8; size *= 2) {
        if (!lock_free(size))
            continue;
        PyObject *number = PyLong_FromUnsignedLong(size);
        if (number == NULL || PyList_Append(widths, number) < 0) {
            Py_XDECREF(number);
            Py_DECREF(widths);
            return NULL;
        }
        Py_DECREF(number);
    }
    PyObject *result = PyList_AsTuple(widths);
    Py_DECREF(widths);
    return result;
}

static PyObject *
module_host_epoch(PyObject *module, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(host_epoch);
}

static PyMethodDef module_methods[] = {
    {"register", (PyCFunction)(void (*)(void))module_register, METH_FASTCALL,
     "register(name, object, /)\n--\n\nGive C a class, a helper or a general path."},
    {"missing_registrations", module_registered, METH_NOARGS,
     "missing_registrations($module, /)\n--\n\nThe names nothing registered yet."},
    {"lock_free_widths", module_lock_free_widths, METH_NOARGS,
     "lock_free_widths($module, /)\n--\n\nThe access sizes C does lock-free (always)."},
    {"cut_windows", (PyCFunction)(void (*)(void))module_cut_windows, METH_FASTCALL,
     "cut_windows(window_type, owner, sizes, spans, /)\n--\n\n"
     "The windows of MmapRegion.anonymous_windows, cut in one loop."},
    {"place_windows", (PyCFunction)(void (*)(void))module_place_windows, METH_FASTCALL,
     "place_windows(region_type, window_type, windows, starts, no_typed_views, /)\n--\n\n"
     "The regions of GuestRegionMmap._place_windows and whether they are in order."},
    {"host_epoch", module_host_epoch, METH_NOARGS,
     "host_epoch($module, /)\n--\n\nHow many times region host memory changed (+1)."},
    {NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "vm_memory._fastpath",
    "The optional compiled access path of vm_memory (see vm_memory.access_path).", -1,
    module_methods,
};

static PyTypeObject *
add_type(PyObject *module, PyType_Spec *spec, const char *name)
{
    PyTypeObject *type = (PyTypeObject *)PyType_FromSpec(spec);
    if (type == NULL)
        return NULL;
    Py_INCREF((PyObject *)type);
    if (PyModule_AddObject(module, name, (PyObject *)type) < 0) {
        Py_DECREF((PyObject *)type);
        Py_DECREF((PyObject *)type);
        return NULL;
    }
    return type;
}

PyMODINIT_FUNC
PyInit__fastpath(void)
{
    PyObject *module = PyModule_Create(&module_definition);
    if (module == NULL)
        return NULL;
    type_infos = PyDict_New();
    if (type_infos == NULL || region_names_init() < 0 || member_names_init() < 0 ||
        bulk_names_init() < 0 ||
        (TypeInfoType = add_type(module, &typeinfo_spec, "TypeInfo")) == NULL ||
        (AddressCoreType = add_type(module, &address_spec, "GuestAddressCore")) == NULL ||
        (AlignedCoreType = add_type(module, &aligned_spec, "AlignedCore")) == NULL ||
        (RegionCoreType = add_type(module, &region_spec, "RegionCore")) == NULL ||
        (LedgerType = add_type(module, &ledger_spec, "Ledger")) == NULL ||
        (MemoryCoreType = add_type(module, &memory_spec, "MemoryCore")) == NULL ||
        (ChunkType = add_type(module, &chunk_spec, "RegionChunk")) == NULL ||
        PyModule_AddIntConstant(module, "KIND_OTHER", K_OTHER) < 0 ||
        PyModule_AddIntConstant(module, "KIND_UNSIGNED", K_UINT) < 0 ||
        PyModule_AddIntConstant(module, "KIND_SIGNED", K_SINT) < 0 ||
        PyModule_AddIntConstant(module, "KIND_BOOL", K_BOOL) < 0 ||
        PyModule_AddIntConstant(module, "KIND_FLOAT", K_FLOAT) < 0 ||
        PyModule_AddStringConstant(module, "SOURCE_DIGEST", VM_MEMORY_SOURCE_DIGEST) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
