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
 * reading a host pointer and using it. A memory object's table copies its regions'
 * host pointers; a mapping can only be unmapped while no memory object holds it
 * (vm_memory/lifetime.py), and any change of a region's host memory after its
 * construction bumps a global epoch, so a table refreshes its copy before its next use.
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
 * refused close that restores the view): tables copied before refresh on next use. */
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
    if (self->flags & R_SET)   /* a change after construction: tables must refresh */
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

typedef struct {
    uint64_t start;
    uint64_t length;
    char *host;
    unsigned flags;
    RegionObject *region;   /* borrowed: the memory's regions tuple owns it */
} Entry;

/* The page table's granularity and the regions it holds: the pure path's (_LOOKUP_SHIFT
 * and _SMALL_REGION_SLOTS in vm_memory/guest_memory.py). */
#define PAGE_SHIFT 12
#define SMALL_REGION_PAGES 16
#define PAGE_TABLE_MIN_BITS 4

/* 8 bytes a slot: a copy made at each hot-plug costs little (fresh memory page faults
 * dominate it). The key is the page number's low 32 bits: pages 16 TiB apart share a key,
 * and one of them then goes to the binary search (every guess is checked anyway). */
typedef struct {
    uint32_t key;           /* (uint32_t)page */
    uint32_t entry;         /* index + 1 of an entry whose region is on the page; 0: empty */
} PageSlot;

typedef struct {
    PyObject_HEAD
    PyObject *regions;      /* tuple of regions, sorted; NULL until installed */
    Entry *entries;
    uint64_t *starts;
    Py_ssize_t count;
    Py_ssize_t last;        /* index of the last entry hit */
    uint64_t epoch;
    /* A hash table (open addressing, linear probing) from page number to an entry of a
     * small region on that page: a guess, checked against the entry's bounds at each
     * use. Contiguous, like the entries: a lookup touches two cache lines, not a region
     * object somewhere in the heap. */
    PageSlot *pages;        /* NULL: no small region */
    size_t page_mask;       /* slots - 1; slots is a power of two */
    unsigned page_bits;     /* log2(slots) */
    size_t page_used;       /* occupied slots, kept at most half of them */
} MemoryObject;

static PyTypeObject *MemoryCoreType;

static void
refresh(MemoryObject *self)
{
    for (Py_ssize_t i = 0; i < self->count; i++) {
        Entry *entry = &self->entries[i];
        entry->host = entry->region->host;
        entry->flags = entry->region->flags;
    }
    self->epoch = host_epoch;
}

/* Index of the last entry whose start is <= value, or -1. Branch-free halving (the
 * comparison becomes a conditional move): alternating between regions then costs no
 * mispredicted branch per step. */
static inline Py_ssize_t
index_at(const MemoryObject *self, uint64_t value)
{
    const uint64_t *starts = self->starts;
    const uint64_t *base = starts;
    Py_ssize_t remaining = self->count;
    if (remaining == 0)
        return -1;
    while (remaining > 1) {
        Py_ssize_t half = remaining / 2;
        base = base[half] <= value ? base + half : base;
        remaining -= half;
    }
    return (base - starts) - (*base > value);
}

/* Fibonacci hashing: strided page numbers (regions every 1 MiB, say) spread evenly. */
static inline size_t
page_home(uint32_t key, unsigned bits)
{
    return (size_t)(((uint64_t)key * 0x9E3779B97F4A7C15ull) >> (64 - bits));
}

/* The entry holding `value` (remembered for the next lookup), or NULL: the last entry
 * hit, else the page table's guess, else a binary search. */
static inline Entry *
lookup(MemoryObject *self, uint64_t value)
{
    if (UNLIKELY(self->epoch != host_epoch))
        refresh(self);
    if (LIKELY(self->last >= 0)) {
        Entry *entry = &self->entries[self->last];
        if (LIKELY(value - entry->start < entry->length))
            return entry;
    }
    if (self->pages != NULL) {
        uint32_t key = (uint32_t)(value >> PAGE_SHIFT);
        size_t slot = page_home(key, self->page_bits);
        Py_ssize_t stored;
        while ((stored = self->pages[slot].entry) != 0) {
            if (self->pages[slot].key == key) {
                Entry *entry = &self->entries[stored - 1];
                if (LIKELY(value - entry->start < entry->length)) {
                    self->last = stored - 1;
                    return entry;
                }
                break;   /* a region on this page, not holding `value`: search */
            }
            slot = (slot + 1) & self->page_mask;
        }
    }
    Py_ssize_t index = index_at(self, value);
    if (index < 0)
        return NULL;
    Entry *entry = &self->entries[index];
    if (value - entry->start >= entry->length)
        return NULL;
    self->last = index;
    return entry;
}

/* The host bytes of [value, value + size) when one host-backed region holds them all. */
static inline char *
host_span(MemoryObject *self, uint64_t value, uint64_t size, int writing, Entry **found)
{
    Entry *entry = lookup(self, value);
    if (entry == NULL || entry->host == NULL)
        return NULL;
    uint64_t offset = value - entry->start;
    if (size > entry->length || offset > entry->length - size)
        return NULL;
    if (writing && (entry->flags & R_READ_ONLY))
        return NULL;
    *found = entry;
    return entry->host + offset;
}

static void
fill_entry(MemoryObject *self, Py_ssize_t index, RegionObject *region)
{
    Entry *entry = &self->entries[index];
    entry->start = region->start;
    entry->length = region->length;
    entry->host = region->host;
    entry->flags = region->flags;
    entry->region = region;
    self->starts[index] = region->start;
}

/* The pages of a region [start, start + length) if it is small enough for the page
 * table (else 0). */
static inline int
small_region_pages(uint64_t start, uint64_t length, uint64_t *first, uint64_t *last)
{
    if (length == 0)
        return 0;
    *first = start >> PAGE_SHIFT;
    *last = (start + length - 1) >> PAGE_SHIFT;
    return *last - *first < SMALL_REGION_PAGES;
}

static inline int
entry_pages(const Entry *entry, uint64_t *first, uint64_t *last)
{
    return small_region_pages(entry->start, entry->length, first, last);
}

/* The slot of `page`'s key, or the empty slot ending its probe run. */
static inline size_t
page_slot(const MemoryObject *self, uint64_t page)
{
    uint32_t key = (uint32_t)page;
    size_t slot = page_home(key, self->page_bits);
    while (self->pages[slot].entry != 0 && self->pages[slot].key != key)
        slot = (slot + 1) & self->page_mask;
    return slot;
}

/* Point `page` at entry `index` unless an entry is there already (any region on the
 * page is a valid guess). */
static void
pages_add(MemoryObject *self, uint64_t page, Py_ssize_t index)
{
    size_t slot = page_slot(self, page);
    if (self->pages[slot].entry != 0)
        return;
    self->pages[slot].key = (uint32_t)page;
    self->pages[slot].entry = (uint32_t)(index + 1);
    self->page_used++;
}

static void
pages_add_entry(MemoryObject *self, const Entry *entry, Py_ssize_t index)
{
    uint64_t first, last;
    if (entry_pages(entry, &first, &last))
        for (uint64_t page = first; page <= last; page++)
            pages_add(self, page, index);
}

/* Empty the slot `hole`, moving back the entries of its probe run that may fill it
 * (backward-shift deletion: no tombstones, so probe runs stay as short as when built). */
static void
pages_delete(MemoryObject *self, size_t hole)
{
    PageSlot *pages = self->pages;
    size_t mask = self->page_mask;
    size_t next = hole;
    for (;;) {
        next = (next + 1) & mask;
        if (pages[next].entry == 0)
            break;
        size_t home = page_home(pages[next].key, self->page_bits);
        /* it may move unless its home lies cyclically in (hole, next] */
        if (((next - home) & mask) >= ((next - hole) & mask)) {
            pages[hole] = pages[next];
            hole = next;
        }
    }
    pages[hole].entry = 0;
    self->page_used--;
}

/* Add `delta` to every slot's entry index at or above `from` (after an insert or a
 * remove shifted the entries). */
static void
pages_shift(MemoryObject *self, Py_ssize_t from, Py_ssize_t delta)
{
    PageSlot *pages = self->pages;
    size_t slots = self->page_mask + 1;
    for (size_t slot = 0; slot < slots; slot++)
        if (pages[slot].entry > from)   /* entry index + 1 > from: index >= from */
            pages[slot].entry = (uint32_t)(pages[slot].entry + delta);
}

/* A page table of at least twice `wanted` slots, empty; 0, or -1 with MemoryError. */
static int
pages_allocate(MemoryObject *self, size_t wanted)
{
    unsigned bits = PAGE_TABLE_MIN_BITS;
    while (((size_t)1 << bits) < 2 * wanted)
        bits++;
    self->pages = PyMem_Calloc((size_t)1 << bits, sizeof(PageSlot));
    if (self->pages == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->page_bits = bits;
    self->page_mask = ((size_t)1 << bits) - 1;
    self->page_used = 0;
    return 0;
}

/* The page table of all `count` entries, built afresh (none if no region is small). */
static int
pages_build(MemoryObject *self, Py_ssize_t count)
{
    size_t wanted = 0;
    uint64_t first, last;
    for (Py_ssize_t i = 0; i < count; i++)
        if (entry_pages(&self->entries[i], &first, &last))
            wanted += (size_t)(last - first + 1);
    if (wanted == 0 || (uint64_t)count >= UINT32_MAX)   /* no table: the search alone */
        return 0;
    if (pages_allocate(self, wanted) < 0)
        return -1;
    for (Py_ssize_t i = 0; i < count; i++)
        pages_add_entry(self, &self->entries[i], i);
    return 0;
}

/* The page table of `self` (its `count` entries set) from `old`'s, which differs by the
 * entry at `index` (inserted, or removed from `old`): a copy and the change, or a rebuild
 * when the copy would be more than half full. */
static int
pages_derive(MemoryObject *self, const MemoryObject *old, Py_ssize_t count, Py_ssize_t index,
             int inserted)
{
    uint64_t first, last;
    const Entry *changed = inserted ? &self->entries[index] : &old->entries[index];
    int small = entry_pages(changed, &first, &last);
    size_t adding = inserted && small ? (size_t)(last - first + 1) : 0;
    if (old->pages == NULL || 2 * (old->page_used + adding) > old->page_mask + 1 ||
            (uint64_t)count >= UINT32_MAX)
        return inserted ? pages_build(self, count) : 0;
    size_t slots = old->page_mask + 1;
    self->pages = PyMem_Malloc(slots * sizeof(PageSlot));
    if (self->pages == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(self->pages, old->pages, slots * sizeof(PageSlot));
    self->page_mask = old->page_mask;
    self->page_bits = old->page_bits;
    self->page_used = old->page_used;
    if (inserted) {
        pages_shift(self, index, 1);
        pages_add_entry(self, changed, index);
        return 0;
    }
    /* Removed: its pages go to a neighbour on the same page if there is one (only its
     * two neighbours can share its pages), numbered as in `old` until the shift. */
    for (uint64_t page = first; small && page <= last; page++) {
        size_t slot = page_slot(self, page);
        if (self->pages[slot].entry != (uint32_t)(index + 1))
            continue;
        pages_delete(self, slot);
        for (Py_ssize_t i = index - 1; i <= index + 1; i += 2) {
            uint64_t low, high;
            if (i >= 0 && i < old->count && entry_pages(&old->entries[i], &low, &high) &&
                    low <= page && page <= high) {
                pages_add(self, page, i);
                break;
            }
        }
    }
    pages_shift(self, index + 1, -1);
    return 0;
}

static void
free_table(MemoryObject *self)
{
    PyMem_Free(self->entries);
    PyMem_Free(self->starts);
    PyMem_Free(self->pages);
    self->entries = NULL;
    self->starts = NULL;
    self->pages = NULL;
    self->page_mask = 0;
    self->page_used = 0;
}

static int
memory_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(((MemoryObject *)op)->regions);
    Py_VISIT(Py_TYPE(op));
    return 0;
}

static int
memory_clear(PyObject *op)
{
    MemoryObject *self = (MemoryObject *)op;
    free_table(self);
    self->count = 0;
    self->last = -1;
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
    self->last = -1;
    self->epoch = host_epoch;
    return (PyObject *)self;
}

static int
allocate_table(MemoryObject *self, Py_ssize_t count)
{
    size_t slots = count > 0 ? (size_t)count : 1;
    self->entries = PyMem_Malloc(slots * sizeof(Entry));
    self->starts = PyMem_Malloc(slots * sizeof(uint64_t));
    if (self->entries == NULL || self->starts == NULL) {
        free_table(self);
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int
check_not_installed(MemoryObject *self)
{
    if (self->regions != NULL) {
        PyErr_SetString(PyExc_AttributeError, "a memory's regions are fixed at construction");
        return -1;
    }
    return 0;
}

/* _install(regions): the table of a new memory (regions: a tuple, sorted, checked). */
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
    if (allocate_table(self, count) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_GetItem(regions, i);
        if (!PyObject_TypeCheck(item, RegionCoreType) ||
                !(((RegionObject *)item)->flags & R_SET) ||
                (i > 0 && self->starts[i - 1] >= ((RegionObject *)item)->start)) {
            free_table(self);
            PyErr_SetString(PyExc_TypeError, "_install: sorted, constructed regions");
            return NULL;
        }
        fill_entry(self, i, (RegionObject *)item);
    }
    if (pages_build(self, count) < 0) {
        free_table(self);
        return NULL;
    }
    Py_INCREF(regions);
    self->regions = regions;
    self->count = count;
    self->last = -1;
    self->epoch = host_epoch;
    Py_RETURN_NONE;
}

/* _install_changed(old, regions, index, inserted): the table of `old` with the region at
 * `index` inserted (inserted true) or removed, copied and changed rather than rebuilt;
 * `regions` is the new tuple, already checked by the caller. */
static PyObject *
memory_install_changed(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    MemoryObject *self = (MemoryObject *)op;
    if (check_not_installed(self) < 0)
        return NULL;
    if (nargs != 4 || !PyObject_TypeCheck(args[0], MemoryCoreType) || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "_install_changed(old, regions, index, inserted)");
        return NULL;
    }
    MemoryObject *old = (MemoryObject *)args[0];
    PyObject *regions = args[1];
    Py_ssize_t index = PyLong_AsSsize_t(args[2]);
    int inserted = PyObject_IsTrue(args[3]);
    if ((index == -1 && PyErr_Occurred()) || inserted < 0)
        return NULL;
    Py_ssize_t count = PyTuple_Size(regions);
    if (old->regions == NULL || count != old->count + (inserted ? 1 : -1) || index < 0 ||
            index >= count + (inserted ? 0 : 1)) {
        PyErr_SetString(PyExc_ValueError, "_install_changed: the change does not fit");
        return NULL;
    }
    if (allocate_table(self, count) < 0)
        return NULL;
    if (old->epoch != host_epoch)
        refresh(old);
    memcpy(self->entries, old->entries, (size_t)index * sizeof(Entry));
    memcpy(self->starts, old->starts, (size_t)index * sizeof(uint64_t));
    if (inserted) {
        PyObject *item = PyTuple_GetItem(regions, index);
        if (!PyObject_TypeCheck(item, RegionCoreType) ||
                !(((RegionObject *)item)->flags & R_SET)) {
            free_table(self);
            PyErr_SetString(PyExc_TypeError, "_install_changed: a constructed region");
            return NULL;
        }
        fill_entry(self, index, (RegionObject *)item);
        memcpy(self->entries + index + 1, old->entries + index,
               (size_t)(old->count - index) * sizeof(Entry));
        memcpy(self->starts + index + 1, old->starts + index,
               (size_t)(old->count - index) * sizeof(uint64_t));
    } else {
        memcpy(self->entries + index, old->entries + index + 1,
               (size_t)(old->count - index - 1) * sizeof(Entry));
        memcpy(self->starts + index, old->starts + index + 1,
               (size_t)(old->count - index - 1) * sizeof(uint64_t));
    }
    for (Py_ssize_t i = 0; i < count; i++) {   /* the table and the tuple must agree */
        if ((PyObject *)self->entries[i].region != PyTuple_GetItem(regions, i)) {
            free_table(self);
            PyErr_SetString(PyExc_ValueError, "_install_changed: the regions disagree");
            return NULL;
        }
    }
    if (pages_derive(self, old, count, index, inserted) < 0) {
        free_table(self);
        return NULL;
    }
    Py_INCREF(regions);
    self->regions = regions;
    self->count = count;
    self->last = -1;
    self->epoch = host_epoch;
    Py_RETURN_NONE;
}

static PyObject *
memory_get_regions(PyObject *op, void *closure)
{
    PyObject *regions = ((MemoryObject *)op)->regions;
    if (regions == NULL)
        return PyTuple_New(0);
    Py_INCREF(regions);
    return regions;
}

static PyObject *
memory_region_at(PyObject *op, PyObject *value)
{
    uint64_t raw;
    if (!exact_u64(value, &raw)) {
        PyErr_SetString(PyExc_TypeError, "_region_at: an address value");
        return NULL;
    }
    Entry *entry = ((MemoryObject *)op)->count ? lookup((MemoryObject *)op, raw) : NULL;
    PyObject *region = entry != NULL ? (PyObject *)entry->region : no_region;
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
    if (self->pages != NULL) {
        size_t slot = page_slot(self, raw >> PAGE_SHIFT);
        if (self->pages[slot].entry != 0) {
            PyObject *region = (PyObject *)self->entries[self->pages[slot].entry - 1].region;
            Py_INCREF(region);
            return region;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
memory_index_at(PyObject *op, PyObject *value)
{
    uint64_t raw;
    if (!exact_u64(value, &raw)) {
        PyErr_SetString(PyExc_TypeError, "_index_at: an address value");
        return NULL;
    }
    return PyLong_FromSsize_t(index_at((MemoryObject *)op, raw));
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
    Entry *entry;
    unsigned size = info->size;
    char *pointer = host_span(self, aligned->raw, size, op != OP_LOAD, &entry);
    if (pointer == NULL || ((uintptr_t)pointer & (size - 1)))
        goto general;
    uint64_t offset = aligned->raw - entry->start;

    if (info->kind == K_BOOL && op != OP_LOAD && op != OP_STORE) {
        int old = 0;
        /* compare_exchange(expected, desired): `first` is expected, `second` desired */
        int stored = bool_read_modify_write(op, pointer, op == OP_CAS ? second : first, first,
                                            order, failure, &old);
        if (op != OP_CAS || stored)
            mark_dirty(entry->region, offset, size);
        if (op == OP_CAS)
            return Py_BuildValue("(NN)", PyBool_FromLong(stored), PyBool_FromLong(old));
        return PyBool_FromLong(old);
    }

    uint64_t old = 0;
    if (op == OP_CAS) {
        uint64_t seen = first;
        int stored = atomic_any(size, OP_CAS, pointer, second, &seen, order, failure, &old);
        if (stored)
            mark_dirty(entry->region, offset, size);
        PyObject *value = stored ? (Py_INCREF(args[1]), args[1]) : integer_object(seen, info);
        if (value == NULL)
            return NULL;
        return Py_BuildValue("(NN)", PyBool_FromLong(stored), value);
    }
    atomic_any(size, op, pointer, first, NULL, order, O_SEQ_CST, &old);
    if (op == OP_LOAD)
        return info->kind == K_BOOL ? PyBool_FromLong(old != 0) : integer_object(old, info);
    mark_dirty(entry->region, offset, size);
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
        Entry *entry;
        char *pointer;
        if (info->kind != K_OTHER &&
                (pointer = host_span(self, aligned->raw, info->size, 0, &entry)) != NULL)
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
        Entry *entry;
        char *pointer;
        if (info->kind != K_OTHER && value_bits(args[1], info, &bits) &&
                (pointer = host_span(self, aligned->raw, info->size, 1, &entry)) != NULL) {
            write_value_bits(pointer, info, bits);
            mark_dirty(entry->region, aligned->raw - entry->start, info->size);
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
        Entry *entry;
        char *pointer;
        if (info != NULL && info->kind != K_OTHER &&
                (pointer = host_span(self, raw, info->size, 0, &entry)) != NULL)
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
        Entry *entry;
        char *pointer;
        if (info != NULL && info->kind != K_OTHER && value_bits(args[2], info, &bits) &&
                (pointer = host_span(self, raw, info->size, 1, &entry)) != NULL) {
            write_value_bits(pointer, info, bits);
            mark_dirty(entry->region, raw - entry->start, info->size);
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
        Entry *entry;
        char *pointer = host_span(self, raw, (uint64_t)view.len, 0, &entry);
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
        Entry *entry;
        char *pointer = host_span(self, raw, (uint64_t)view.len, 1, &entry);
        if (pointer != NULL) {
            memmove(pointer, view.buf, (size_t)view.len);
            mark_dirty(entry->region, raw - entry->start, (uint64_t)view.len);
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
     "Build the region table from another memory's, one region inserted or removed."},
    {"_region_at", memory_region_at, METH_O,
     "The region holding an address value (remembered), or the no-region."},
    {"_page_guess", memory_page_guess, METH_O,
     "The region the page table guesses for an address value's page, or None."},
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
