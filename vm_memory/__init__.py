"""Typed, bounds-checked, truly atomic guest physical memory for Python VMMs.

The public API, by layer: addresses, ByteValued and AtomicAccess types, orderings,
regions, and `GuestMemory` with its access table (see the README).
"""

from vm_memory.address import GuestAddress, MemoryRegionAddress
from vm_memory.aligned_address import AlignedGuestAddress
from vm_memory.atomic_access import AtomicAccess, AtomicInteger, is_atomic_access
from vm_memory.bitmap import DirtyBitmap
from vm_memory.byte_valued import ScalarValue, is_byte_valued
from vm_memory.device_region import DeviceRegion, MemoryDevice
from vm_memory.endian import (
    Be16,
    Be32,
    Be64,
    BeI16,
    BeI32,
    BeI64,
    Le16,
    Le32,
    Le64,
    LeI16,
    LeI32,
    LeI64,
)
from vm_memory.errors import (
    AddressOutOfRange,
    AddressOverflow,
    AlignedAddressConstruction,
    AtomicAccessUnsupported,
    AtomicLibraryMissing,
    AtomicWidthUnsupported,
    DeviceError,
    GuestMemoryError,
    IndexOutOfRange,
    InvalidAlignment,
    InvalidArgumentType,
    InvalidGuestAddress,
    InvalidGuestValue,
    InvalidOrdering,
    InvalidRange,
    MalformedMemoryTable,
    MappingError,
    MappingPastEof,
    MisalignedAddress,
    NoHostAddress,
    NoMemoryRegion,
    NotAtomicAccess,
    NotByteValued,
    NotShareable,
    PartialBuffer,
    ReadOnlyRegion,
    RegionInUse,
    RegionIoError,
    RegionOverlap,
    UnsealedMemory,
    ValueOutOfRange,
)
from vm_memory.file_region import FileRegion
from vm_memory.guest_memory import GuestMemory
from vm_memory.hotplug import GuestMemoryAtomic
from vm_memory.implementation import (
    PURE_ENVIRONMENT_VARIABLE,
    AccessPath,
    access_path,
)
from vm_memory.implementation import check_registrations as _check_registrations
from vm_memory.mmap_memory import GuestMemoryMmap
from vm_memory.mmap_region import FileOffset, GuestRegionMmap, MmapRegion
from vm_memory.ordering import Ordering
from vm_memory.region import GuestMemoryRegion
from vm_memory.sharing import receive_memory, send_memory
from vm_memory.volatile import ViewedMemory, VolatileArrayRef, VolatileRef, VolatileSlice

__version__ = "0.1.0"

__all__ = [
    "PURE_ENVIRONMENT_VARIABLE",
    "AccessPath",
    "AddressOutOfRange",
    "AddressOverflow",
    "AlignedAddressConstruction",
    "AlignedGuestAddress",
    "AtomicAccess",
    "AtomicAccessUnsupported",
    "AtomicInteger",
    "AtomicLibraryMissing",
    "AtomicWidthUnsupported",
    "Be16",
    "Be32",
    "Be64",
    "BeI16",
    "BeI32",
    "BeI64",
    "DeviceError",
    "DeviceRegion",
    "DirtyBitmap",
    "FileOffset",
    "FileRegion",
    "GuestAddress",
    "GuestMemory",
    "GuestMemoryAtomic",
    "GuestMemoryError",
    "GuestMemoryMmap",
    "GuestMemoryRegion",
    "GuestRegionMmap",
    "IndexOutOfRange",
    "InvalidAlignment",
    "InvalidArgumentType",
    "InvalidGuestAddress",
    "InvalidGuestValue",
    "InvalidOrdering",
    "InvalidRange",
    "Le16",
    "Le32",
    "Le64",
    "LeI16",
    "LeI32",
    "LeI64",
    "MalformedMemoryTable",
    "MappingError",
    "MappingPastEof",
    "MemoryDevice",
    "MemoryRegionAddress",
    "MisalignedAddress",
    "MmapRegion",
    "NoHostAddress",
    "NoMemoryRegion",
    "NotAtomicAccess",
    "NotByteValued",
    "NotShareable",
    "Ordering",
    "PartialBuffer",
    "ReadOnlyRegion",
    "RegionInUse",
    "RegionIoError",
    "RegionOverlap",
    "ScalarValue",
    "UnsealedMemory",
    "ValueOutOfRange",
    "ViewedMemory",
    "VolatileArrayRef",
    "VolatileRef",
    "VolatileSlice",
    "__version__",
    "access_path",
    "is_atomic_access",
    "is_byte_valued",
    "receive_memory",
    "send_memory",
]

_check_registrations()
