"""A small, typed KVM harness in pure Python (``fcntl.ioctl`` + ``ctypes`` + ``mmap``).

It exists so the tests and the demo can run a real guest vCPU on the same host memory
the library manages: a guest executing ``lock``-prefixed instructions is the strongest
check that host-side atomics really are atomic. It works on raw host addresses and
imports nothing from ``vm_memory``: a caller passes the host address of memory it pins
(x86-64 Linux only).

Typical use::

    memory = mmap.mmap(-1, 0x10000)
    pin = ctypes.c_char.from_buffer(memory)  # keeps the mapping alive under the VM
    with KvmVm() as vm:
        vm.add_memory(0, 0x0, len(memory), ctypes.addressof(pin))
        vcpu = vm.create_vcpu()
        vcpu.set_real_mode(entry=0x1000)
        vcpu.run_until_halt(max_exits=10, timeout=5.0)

``KVM_RUN`` is issued with ``fcntl.ioctl`` and an integer argument, which releases the
GIL: host Python threads keep running while the guest executes.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import fcntl
import mmap
import os
import signal
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self, TypeAlias

__all__ = [
    "KICK_SIGNAL",
    "ExitHandler",
    "ExitReason",
    "IoAccess",
    "IoDirection",
    "KvmError",
    "KvmRegs",
    "KvmSegment",
    "KvmSregs",
    "KvmTimeoutError",
    "KvmVcpu",
    "KvmVm",
    "MmioAccess",
    "VcpuExit",
    "install_kick_handler",
    "kvm_unavailable_reason",
]

KVM_DEVICE: Final = "/dev/kvm"
KVM_API_VERSION: Final = 12
PAGE_SIZE: Final = 4096

# ioctl request numbers (x86-64), from <linux/kvm.h>.
_KVM_GET_API_VERSION: Final = 0xAE00
_KVM_CREATE_VM: Final = 0xAE01
_KVM_CHECK_EXTENSION: Final = 0xAE03
_KVM_GET_VCPU_MMAP_SIZE: Final = 0xAE04
_KVM_CREATE_VCPU: Final = 0xAE41
_KVM_SET_USER_MEMORY_REGION: Final = 0x4020AE46
_KVM_SET_TSS_ADDR: Final = 0xAE47
_KVM_RUN: Final = 0xAE80
_KVM_GET_REGS: Final = 0x8090AE81
_KVM_SET_REGS: Final = 0x4090AE82
_KVM_GET_SREGS: Final = 0x8138AE83
_KVM_SET_SREGS: Final = 0x4138AE84

_KVM_CAP_READONLY_MEM: Final = 31
_KVM_MEM_READONLY: Final = 1 << 1
# Where KVM may put the three-page TSS Intel VMX needs for real mode without
# "unrestricted guest" (same address as QEMU and kvmtool); harmless on AMD.
_TSS_GUEST_ADDRESS: Final = 0xFFFB_D000

# kvm_run layout: exit_reason u32 at offset 8, immediate_exit u8 at offset 1,
# the exit-specific union from offset 32.
_RUN_IMMEDIATE_EXIT_OFFSET: Final = 1
_RUN_EXIT_REASON_OFFSET: Final = 8
_RUN_EXIT_DATA_OFFSET: Final = 32
_MMIO_DATA_OFFSET: Final = _RUN_EXIT_DATA_OFFSET + 8
_IO_EXIT: Final = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
_MMIO_EXIT: Final = struct.Struct("<Q8sIB")  # phys_addr, data[8], len, is_write
_TWO_U32: Final = struct.Struct("<II")
_U32: Final = struct.Struct("<I")
_FAIL_ENTRY_EXIT: Final = struct.Struct("<QI")  # hardware_entry_failure_reason, cpu
_U64: Final = struct.Struct("<Q")

_REAL_MODE_LIMIT: Final = 0x10_0000  # 1 MiB: what a real-mode CS:IP can reach from CS=entry>>4
_RFLAGS_RESERVED_BIT: Final = 0x2

#: The signal `KvmVcpu.kick` sends to the vCPU thread to pull it out of ``KVM_RUN``.
#: A real-time signal, so it does not collide with SIGUSR1/SIGUSR2 users.
KICK_SIGNAL: Final[int] = int(signal.SIGRTMIN) + 1


class ExitReason(enum.IntEnum):
    """``KVM_EXIT_*`` numbers (``kvm_run.exit_reason``) that x86 can produce."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    NMI = 16
    INTERNAL_ERROR = 17
    SYSTEM_EVENT = 24
    IOAPIC_EOI = 26
    HYPERV = 27
    X86_RDMSR = 29
    X86_WRMSR = 30
    DIRTY_RING_FULL = 31
    X86_BUS_LOCK = 33
    NOTIFY = 37
    MEMORY_FAULT = 39


#: ``KVM_INTERNAL_ERROR_*`` suberrors (first word of an INTERNAL_ERROR exit).
_INTERNAL_ERROR_NAMES: Final = {
    1: "EMULATION: the instruction emulator failed",
    2: "SIMUL_EX: exception while delivering an exception",
    3: "DELIVERY_EV: event delivery failed",
    4: "UNEXPECTED_EXIT_REASON",
}


class IoDirection(enum.IntEnum):
    """``KVM_EXIT_IO_IN`` / ``KVM_EXIT_IO_OUT``: ``in`` reads a port, ``out`` writes one."""

    IN = 0
    OUT = 1


@dataclass(frozen=True, slots=True)
class IoAccess:
    """A port access that left the guest: ``count`` items of ``size`` bytes.

    ``data`` holds the ``size * count`` bytes the guest wrote for OUT and is empty for
    IN (the handler supplies those bytes).
    """

    direction: IoDirection
    port: int
    size: int
    count: int
    data: bytes


@dataclass(frozen=True, slots=True)
class MmioAccess:
    """A guest access to a guest-physical address no memory slot backs (or a write
    to a read-only slot). ``data`` holds the written bytes, empty for a read."""

    address: int
    length: int
    is_write: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class VcpuExit:
    """Why one ``KVM_RUN`` returned, with the facts of that exit.

    ``detail`` carries the raw words of exits without a dedicated field: the hardware
    reason for UNKNOWN/FAIL_ENTRY, suberror and data for INTERNAL_ERROR, and so on.
    """

    reason: int
    io: IoAccess | None = None
    mmio: MmioAccess | None = None
    detail: tuple[int, ...] = ()

    @property
    def reason_name(self) -> str:
        """The ``KVM_EXIT_*`` name without prefix, e.g. ``"HLT"``."""
        try:
            return ExitReason(self.reason).name
        except ValueError:
            return f"EXIT_{self.reason}"

    def __str__(self) -> str:
        parts = [f"KVM_EXIT_{self.reason_name} ({self.reason})"]
        if self.io is not None:
            io = self.io
            parts.append(
                f"{io.direction.name} port {io.port:#x} size {io.size} count {io.count}"
                + (f" data {io.data.hex()}" if io.data else "")
            )
        if self.mmio is not None:
            mmio = self.mmio
            kind = "write" if mmio.is_write else "read"
            parts.append(
                f"{kind} of {mmio.length} bytes at {mmio.address:#x}"
                + (f" data {mmio.data.hex()}" if mmio.data else "")
            )
        if self.reason == ExitReason.INTERNAL_ERROR and self.detail:
            suberror = _INTERNAL_ERROR_NAMES.get(self.detail[0], "unknown")
            parts.append(f"suberror {self.detail[0]} ({suberror})")
        if self.detail:
            parts.append("detail " + ", ".join(f"{word:#x}" for word in self.detail))
        return ": ".join(parts)


#: Called by `KvmVcpu.run_until_halt` for IO and MMIO exits. For an OUT or an MMIO
#: write it returns None; for an IN or an MMIO read it returns the bytes the guest reads.
ExitHandler: TypeAlias = Callable[[VcpuExit], bytes | None]


class KvmError(RuntimeError):
    """A KVM operation failed or the guest stopped in a way the caller did not expect.

    Carries the facts: ``operation`` (the ioctl or step), ``errno`` (when the kernel
    refused), ``exit`` (the exit that ended the run) and ``rip`` (guest instruction
    pointer at that moment, when it could be read).
    """

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        errno: int | None = None,
        exit: VcpuExit | None = None,
        rip: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.operation = operation
        self.errno = errno
        self.exit = exit
        self.rip = rip

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments: rebuild through a helper so the error pickles
        # (it crosses process boundaries in subprocess tests).
        return (
            _rebuild_error,
            (type(self), self.message, self.operation, self.errno, self.exit, self.rip),
        )


class KvmTimeoutError(KvmError):
    """The guest was still running when the caller's time limit ran out."""


def _rebuild_error(
    cls: type[KvmError],
    message: str,
    operation: str,
    error_number: int | None,
    exit_: VcpuExit | None,
    rip: int | None,
) -> KvmError:
    return cls(message, operation=operation, errno=error_number, exit=exit_, rip=rip)


def _ioctl(fd: int, request: int, argument: int, name: str) -> int:
    """An integer-argument ioctl whose failure becomes a `KvmError` naming it."""
    try:
        return fcntl.ioctl(fd, request, argument)
    except OSError as error:
        raise KvmError(
            f"{name} failed: {os.strerror(error.errno or 0)}", operation=name, errno=error.errno
        ) from error


def _ioctl_buffer(fd: int, request: int, buffer: bytearray, name: str) -> None:
    """A struct-argument ioctl; the kernel reads and, for GET_*, fills ``buffer`` in place."""
    try:
        fcntl.ioctl(fd, request, buffer, True)
    except OSError as error:
        raise KvmError(
            f"{name} failed: {os.strerror(error.errno or 0)}", operation=name, errno=error.errno
        ) from error


def _set_tss_address(vm_fd: int) -> None:
    """``KVM_SET_TSS_ADDR``, through libc: its argument is an unsigned long above
    ``INT_MAX``, which ``fcntl.ioctl``'s C-int argument cannot carry."""
    libc = ctypes.CDLL(None, use_errno=True)
    ioctl = libc.ioctl
    ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
    ioctl.restype = ctypes.c_int
    if ioctl(vm_fd, _KVM_SET_TSS_ADDR, _TSS_GUEST_ADDRESS) < 0:
        error_number = ctypes.get_errno()
        raise KvmError(
            f"KVM_SET_TSS_ADDR failed: {os.strerror(error_number)}",
            operation="KVM_SET_TSS_ADDR",
            errno=error_number,
        )


def kvm_unavailable_reason() -> str | None:
    """None when KVM can run guests here; otherwise a sentence saying why not."""
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{KVM_DEVICE} does not exist (no KVM module loaded, or not exposed here)"
    except PermissionError:
        return f"no permission to open {KVM_DEVICE} (add the user to the 'kvm' group)"
    except OSError as error:
        return f"cannot open {KVM_DEVICE}: {error.strerror}"
    try:
        version = fcntl.ioctl(fd, _KVM_GET_API_VERSION, 0)
    except OSError as error:
        return f"KVM_GET_API_VERSION on {KVM_DEVICE} failed: {error.strerror}"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return f"KVM API version is {version}, this harness speaks {KVM_API_VERSION}"
    if os.uname().machine != "x86_64":
        return f"the KVM harness drives x86-64 guests, this host is {os.uname().machine}"
    return None


def install_kick_handler() -> None:
    """Give `KICK_SIGNAL` a do-nothing handler so a kick interrupts ``KVM_RUN``.

    The default action of a real-time signal kills the process and an ignored signal
    interrupts nothing, so a handler must exist before any kick. Python only lets the
    main thread install handlers: call this there when vCPUs run on other threads.
    An existing Python handler is kept (any handler interrupts ``KVM_RUN``).
    """
    current = signal.getsignal(KICK_SIGNAL)
    if current is signal.SIG_IGN:
        raise KvmError(
            f"signal {KICK_SIGNAL} is ignored, so a kick could not interrupt KVM_RUN",
            operation="install_kick_handler",
        )
    if callable(current):
        return
    if threading.current_thread() is not threading.main_thread():
        raise KvmError(
            "a handler for the kick signal must be installed from the main thread: "
            "call install_kick_handler() there before running with a timeout",
            operation="install_kick_handler",
        )
    signal.signal(KICK_SIGNAL, _ignore_kick)


def _ignore_kick(signal_number: int, frame: object) -> None:
    """The kick only needs to interrupt the ioctl; there is nothing to do here."""


class KvmSegment(ctypes.Structure):
    """``struct kvm_segment``."""

    _fields_: ClassVar = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("selector", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("present", ctypes.c_uint8),
        ("dpl", ctypes.c_uint8),
        ("db", ctypes.c_uint8),
        ("s", ctypes.c_uint8),
        ("l", ctypes.c_uint8),
        ("g", ctypes.c_uint8),
        ("avl", ctypes.c_uint8),
        ("unusable", ctypes.c_uint8),
        ("padding", ctypes.c_uint8),
    ]
    if TYPE_CHECKING:
        base: int
        limit: int
        selector: int
        type: int
        present: int


class _KvmDtable(ctypes.Structure):
    """``struct kvm_dtable`` (GDT/IDT base and limit)."""

    _fields_: ClassVar = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint16),
        ("padding", ctypes.c_uint16 * 3),
    ]


class KvmSregs(ctypes.Structure):
    """``struct kvm_sregs``: segment, descriptor-table and control registers."""

    _fields_: ClassVar = [
        ("cs", KvmSegment),
        ("ds", KvmSegment),
        ("es", KvmSegment),
        ("fs", KvmSegment),
        ("gs", KvmSegment),
        ("ss", KvmSegment),
        ("tr", KvmSegment),
        ("ldt", KvmSegment),
        ("gdt", _KvmDtable),
        ("idt", _KvmDtable),
        ("cr0", ctypes.c_uint64),
        ("cr2", ctypes.c_uint64),
        ("cr3", ctypes.c_uint64),
        ("cr4", ctypes.c_uint64),
        ("cr8", ctypes.c_uint64),
        ("efer", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64),
        ("interrupt_bitmap", ctypes.c_uint64 * 4),
    ]
    if TYPE_CHECKING:
        cs: KvmSegment
        ds: KvmSegment
        es: KvmSegment
        fs: KvmSegment
        gs: KvmSegment
        ss: KvmSegment
        cr0: int
        cr4: int


class KvmRegs(ctypes.Structure):
    """``struct kvm_regs``: the general-purpose registers, rip and rflags."""

    _fields_: ClassVar = [
        (name, ctypes.c_uint64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]  # fmt: skip
    if TYPE_CHECKING:
        rax: int
        rbx: int
        rcx: int
        rdx: int
        rsi: int
        rdi: int
        rsp: int
        rbp: int
        rip: int
        rflags: int


assert ctypes.sizeof(KvmSregs) == 0x138 and ctypes.sizeof(KvmRegs) == 0x90


class _UserMemoryRegion(ctypes.Structure):
    """``struct kvm_userspace_memory_region``."""

    _fields_: ClassVar = [
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
    ]


class KvmVm:
    """One KVM virtual machine: memory slots and vCPUs. A context manager that closes
    every file descriptor it opened.

    Guest memory is the caller's: ``add_memory`` hands KVM a raw host address, and the
    mapping behind it must stay alive (e.g. pinned with ``ctypes.c_char.from_buffer``)
    until the VM is closed or the slot removed.
    """

    def __init__(self) -> None:
        reason = kvm_unavailable_reason()
        if reason is not None:
            raise KvmError(reason, operation="open " + KVM_DEVICE)
        self._kvm_fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        self._vm_fd = -1
        self._vcpus: list[KvmVcpu] = []
        self._slots: dict[int, tuple[int, int]] = {}
        try:
            self._vm_fd = _ioctl(self._kvm_fd, _KVM_CREATE_VM, 0, "KVM_CREATE_VM")
            _set_tss_address(self._vm_fd)
            self._vcpu_mmap_size = _ioctl(
                self._kvm_fd, _KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE"
            )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once `close` ran."""
        return self._kvm_fd < 0

    def check_extension(self, capability: int) -> int:
        """``KVM_CHECK_EXTENSION`` on the VM: 0 when unsupported, else a capability value."""
        return _ioctl(
            self._require_vm_fd(), _KVM_CHECK_EXTENSION, capability, "KVM_CHECK_EXTENSION"
        )

    def add_memory(
        self,
        slot: int,
        guest_physical_address: int,
        size: int,
        host_address: int,
        *,
        read_only: bool = False,
    ) -> None:
        """Back guest-physical ``[guest_physical_address, +size)`` with host memory at
        ``host_address`` (``KVM_SET_USER_MEMORY_REGION``).

        All three numbers must be multiples of the page size. A read-only slot turns
        guest writes into MMIO exits instead of changing memory.
        """
        for name, value in (
            ("guest_physical_address", guest_physical_address),
            ("size", size),
            ("host_address", host_address),
        ):
            if value < 0 or value % PAGE_SIZE:
                raise ValueError(f"{name} {value:#x} is not a non-negative multiple of {PAGE_SIZE}")
        if size == 0:
            raise ValueError("size is 0; use remove_memory to delete a slot")
        flags = 0
        if read_only:
            if not self.check_extension(_KVM_CAP_READONLY_MEM):
                raise KvmError(
                    "this KVM does not support read-only memory slots",
                    operation="KVM_SET_USER_MEMORY_REGION",
                )
            flags |= _KVM_MEM_READONLY
        self._set_region(slot, flags, guest_physical_address, size, host_address)
        self._slots[slot] = (guest_physical_address, size)

    def remove_memory(self, slot: int) -> None:
        """Delete a slot added by `add_memory`; its host memory may then be released."""
        if slot not in self._slots:
            raise KeyError(f"memory slot {slot} is not in use")
        guest_physical_address, _ = self._slots.pop(slot)
        self._set_region(slot, 0, guest_physical_address, 0, 0)

    def _set_region(
        self, slot: int, flags: int, guest_physical_address: int, size: int, host_address: int
    ) -> None:
        region = _UserMemoryRegion(slot, flags, guest_physical_address, size, host_address)
        _ioctl_buffer(
            self._require_vm_fd(),
            _KVM_SET_USER_MEMORY_REGION,
            bytearray(bytes(region)),
            "KVM_SET_USER_MEMORY_REGION",
        )

    def create_vcpu(self) -> KvmVcpu:
        """Create the next vCPU (ids 0, 1, ...); it is closed with the VM."""
        vcpu_id = len(self._vcpus)
        fd = _ioctl(self._require_vm_fd(), _KVM_CREATE_VCPU, vcpu_id, "KVM_CREATE_VCPU")
        try:
            vcpu = KvmVcpu(fd, vcpu_id, self._vcpu_mmap_size)
        except BaseException:
            os.close(fd)
            raise
        self._vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        """Close the vCPUs, the VM and the KVM device (idempotent)."""
        for vcpu in self._vcpus:
            vcpu.close()
        self._vcpus.clear()
        if self._vm_fd >= 0:
            os.close(self._vm_fd)
            self._vm_fd = -1
        if self._kvm_fd >= 0:
            os.close(self._kvm_fd)
            self._kvm_fd = -1

    def _require_vm_fd(self) -> int:
        if self._vm_fd < 0:
            raise KvmError("the VM is closed", operation="use of a closed KvmVm")
        return self._vm_fd


class KvmVcpu:
    """One virtual CPU: its registers, its shared ``kvm_run`` page, and the run loop.

    Create it with `KvmVm.create_vcpu`. Run it from one thread at a time; `kick` may be
    called from any thread.
    """

    def __init__(self, fd: int, vcpu_id: int, run_mmap_size: int) -> None:
        self._fd = fd
        self.vcpu_id = vcpu_id
        self._run = mmap.mmap(fd, run_mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # Guarded by _kick_lock: kicks come from other threads.
        self._kick_lock = threading.Lock()
        self._runner_thread_id: int | None = None
        self._timeout_armed = False
        self._timed_out = False

    def close(self) -> None:
        """Unmap ``kvm_run`` and close the vCPU fd (idempotent)."""
        with self._kick_lock:
            if self._fd >= 0:
                self._run.close()
                os.close(self._fd)
                self._fd = -1

    # -- registers -------------------------------------------------------------

    def get_regs(self) -> KvmRegs:
        """A copy of the general-purpose registers (``KVM_GET_REGS``)."""
        buffer = bytearray(ctypes.sizeof(KvmRegs))
        _ioctl_buffer(self._require_fd(), _KVM_GET_REGS, buffer, "KVM_GET_REGS")
        return KvmRegs.from_buffer_copy(buffer)

    def set_regs(self, regs: KvmRegs) -> None:
        """Load the general-purpose registers (``KVM_SET_REGS``)."""
        _ioctl_buffer(self._require_fd(), _KVM_SET_REGS, bytearray(bytes(regs)), "KVM_SET_REGS")

    def get_sregs(self) -> KvmSregs:
        """A copy of the special registers (``KVM_GET_SREGS``)."""
        buffer = bytearray(ctypes.sizeof(KvmSregs))
        _ioctl_buffer(self._require_fd(), _KVM_GET_SREGS, buffer, "KVM_GET_SREGS")
        return KvmSregs.from_buffer_copy(buffer)

    def set_sregs(self, sregs: KvmSregs) -> None:
        """Load the special registers (``KVM_SET_SREGS``)."""
        _ioctl_buffer(self._require_fd(), _KVM_SET_SREGS, bytearray(bytes(sregs)), "KVM_SET_SREGS")

    def set_real_mode(self, entry: int) -> None:
        """Start executing 16-bit real-mode code at guest-physical ``entry`` (< 1 MiB).

        Entries below 64 KiB run with CS = 0 and IP = entry; higher ones with
        CS = entry >> 4. DS, ES, FS, GS and SS are 0, the general registers are zeroed
        and RFLAGS holds only its always-one bit (interrupts off).
        """
        if not 0 <= entry < _REAL_MODE_LIMIT:
            raise ValueError(f"real-mode entry {entry:#x} is not below 1 MiB")
        code_segment = 0 if entry <= 0xFFFF else entry >> 4
        sregs = self.get_sregs()
        for segment in (sregs.cs, sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
            segment.base = 0
            segment.selector = 0
        sregs.cs.selector = code_segment
        sregs.cs.base = code_segment << 4
        self.set_sregs(sregs)
        regs = KvmRegs()
        regs.rip = entry - (code_segment << 4)
        regs.rflags = _RFLAGS_RESERVED_BIT
        self.set_regs(regs)

    # -- running ---------------------------------------------------------------

    def run(self) -> VcpuExit:
        """Enter the guest once (``KVM_RUN``, GIL released) and describe why it left.

        A signal that interrupts the run (a `kick`, or any signal whose Python handler
        returns normally) comes back as an INTR exit; an exception raised by a handler
        (e.g. KeyboardInterrupt) propagates, so Ctrl-C stops a spinning guest.
        """
        fd = self._require_fd()
        with self._kick_lock:
            self._runner_thread_id = threading.get_ident()
        try:
            fcntl.ioctl(fd, _KVM_RUN, 0)
        except InterruptedError:
            with self._kick_lock:
                self._run[_RUN_IMMEDIATE_EXIT_OFFSET] = 0  # this run answered the kick
            return VcpuExit(ExitReason.INTR)
        except OSError as error:
            raise KvmError(
                f"KVM_RUN failed: {os.strerror(error.errno or 0)}",
                operation="KVM_RUN",
                errno=error.errno,
                rip=self._rip_or_none(),
            ) from error
        return self._decode_exit()

    def provide_input(self, data: bytes) -> None:
        """Give the guest the bytes its pending IN or MMIO read receives on the next run."""
        exit_ = self._decode_exit()
        if exit_.io is not None and exit_.io.direction is IoDirection.IN:
            expected = exit_.io.size * exit_.io.count
            data_offset = _IO_EXIT.unpack_from(self._run, _RUN_EXIT_DATA_OFFSET)[4]
            destination = int(data_offset)
        elif exit_.mmio is not None and not exit_.mmio.is_write:
            expected = exit_.mmio.length
            destination = _MMIO_DATA_OFFSET
        else:
            raise KvmError(
                f"no IN or MMIO read is pending (last exit: {exit_})",
                operation="provide_input",
                exit=exit_,
            )
        if len(data) != expected:
            raise ValueError(f"the pending read takes {expected} bytes, got {len(data)}")
        self._run[destination : destination + expected] = data

    def run_until_halt(
        self,
        max_exits: int,
        *,
        handle_exit: ExitHandler | None = None,
        timeout: float | None = None,
    ) -> int:
        """Run until the guest executes ``hlt``; return how many exits that took.

        IO and MMIO exits go to ``handle_exit`` (whose bytes answer reads). Anything
        else — SHUTDOWN (triple fault), FAIL_ENTRY, INTERNAL_ERROR, an IO/MMIO exit
        with no handler, more than ``max_exits`` exits — raises `KvmError`. With a
        ``timeout`` (seconds) a guest that never exits is kicked out and
        `KvmTimeoutError` is raised instead of hanging; this needs `KICK_SIGNAL`'s
        handler, which is installed here when called from the main thread.
        """
        if max_exits < 1:
            raise ValueError(f"max_exits must be at least 1, got {max_exits}")
        timer: threading.Timer | None = None
        if timeout is not None:
            install_kick_handler()
            timer = threading.Timer(timeout, self._kick_for_timeout)
            timer.daemon = True
        with self._kick_lock:
            self._timeout_armed = timer is not None
            self._timed_out = False
        if timer is not None:
            timer.start()
        try:
            return self._run_loop(max_exits, handle_exit, timeout)
        finally:
            if timer is not None:
                timer.cancel()
            with self._kick_lock:
                # After this block a late timer can no longer kick (it checks the flag).
                self._timeout_armed = False
                self._timed_out = False
                if self._fd >= 0:
                    self._run[_RUN_IMMEDIATE_EXIT_OFFSET] = 0

    def _run_loop(
        self, max_exits: int, handle_exit: ExitHandler | None, timeout: float | None
    ) -> int:
        for exit_count in range(1, max_exits + 1):
            exit_ = self.run()
            reason = exit_.reason
            if reason == ExitReason.HLT:
                return exit_count
            if reason == ExitReason.INTR:
                with self._kick_lock:
                    timed_out = self._timed_out
                if timed_out:
                    raise KvmTimeoutError(
                        f"guest still running after {timeout} s; kicked out of KVM_RUN",
                        operation="run_until_halt",
                        errno=errno.EINTR,
                        exit=exit_,
                        rip=self._rip_or_none(),
                    )
                continue  # another signal or a caller's kick: the guest simply goes on
            if reason in (ExitReason.IO, ExitReason.MMIO) and handle_exit is not None:
                answer = handle_exit(exit_)
                needs_input = (exit_.io is not None and exit_.io.direction is IoDirection.IN) or (
                    exit_.mmio is not None and not exit_.mmio.is_write
                )
                if needs_input:
                    if answer is None:
                        raise KvmError(
                            f"the exit handler gave no data for a guest read: {exit_}",
                            operation="run_until_halt",
                            exit=exit_,
                            rip=self._rip_or_none(),
                        )
                    self.provide_input(answer)
                continue
            raise KvmError(
                f"guest stopped unexpectedly: {exit_}",
                operation="run_until_halt",
                exit=exit_,
                rip=self._rip_or_none(),
            )
        raise KvmError(
            f"guest did not halt within {max_exits} exits",
            operation="run_until_halt",
            rip=self._rip_or_none(),
        )

    def _kick_for_timeout(self) -> None:
        """Timer callback: kick only if the run that armed the timer is still going."""
        with self._kick_lock:
            if self._timeout_armed:
                self._timed_out = True
                self._kick_locked()

    def kick(self) -> None:
        """Make the running (or next) ``KVM_RUN`` of this vCPU return with an INTR exit.

        Callable from any thread: sets ``kvm_run.immediate_exit`` (covers a run about to
        start) and sends `KICK_SIGNAL` to the thread that last entered ``KVM_RUN``.
        Requires `install_kick_handler` to have run. A kick is consumed by the one run
        that returns INTR for it; `run_until_halt` treats it as a pause and goes on.
        """
        if not callable(signal.getsignal(KICK_SIGNAL)):
            raise KvmError(
                "no handler for the kick signal: call install_kick_handler() first",
                operation="kick",
            )
        with self._kick_lock:
            self._kick_locked()

    def _kick_locked(self) -> None:
        if self._fd < 0:
            return
        self._run[_RUN_IMMEDIATE_EXIT_OFFSET] = 1
        if self._runner_thread_id is not None:
            signal.pthread_kill(self._runner_thread_id, KICK_SIGNAL)

    # -- helpers ---------------------------------------------------------------

    def _decode_exit(self) -> VcpuExit:
        run = self._run
        reason: int = _U32.unpack_from(run, _RUN_EXIT_REASON_OFFSET)[0]
        data = _RUN_EXIT_DATA_OFFSET
        if reason == ExitReason.IO:
            direction, size, port, count, data_offset = _IO_EXIT.unpack_from(run, data)
            io_direction = IoDirection(direction)
            payload = (
                bytes(run[data_offset : data_offset + size * count])
                if io_direction is IoDirection.OUT
                else b""
            )
            return VcpuExit(reason, io=IoAccess(io_direction, port, size, count, payload))
        if reason == ExitReason.MMIO:
            address, raw, length, is_write = _MMIO_EXIT.unpack_from(run, data)
            written = bytes(raw[:length]) if is_write else b""
            return VcpuExit(reason, mmio=MmioAccess(address, length, bool(is_write), written))
        if reason in (ExitReason.INTERNAL_ERROR, ExitReason.SYSTEM_EVENT):
            first, count = _TWO_U32.unpack_from(run, data)
            words = struct.unpack_from(f"<{min(count, 16)}Q", run, data + 8)
            return VcpuExit(reason, detail=(first, count, *words))
        if reason == ExitReason.FAIL_ENTRY:
            return VcpuExit(reason, detail=_FAIL_ENTRY_EXIT.unpack_from(run, data))
        if reason == ExitReason.EXCEPTION:
            return VcpuExit(reason, detail=_TWO_U32.unpack_from(run, data))
        if reason == ExitReason.MEMORY_FAULT:
            return VcpuExit(reason, detail=struct.unpack_from("<3Q", run, data))
        if reason == ExitReason.UNKNOWN:
            return VcpuExit(reason, detail=_U64.unpack_from(run, data))
        return VcpuExit(reason)

    def _rip_or_none(self) -> int | None:
        try:
            return self.get_regs().rip
        except KvmError:
            return None

    def _require_fd(self) -> int:
        if self._fd < 0:
            raise KvmError("the vCPU is closed", operation="use of a closed KvmVcpu")
        return self._fd
