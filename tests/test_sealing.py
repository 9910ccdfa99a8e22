"""SIGBUS never reaches us from memory we made or memory a peer sent.

Touching a page of a file mapping past the file's end, or a page a full filesystem
cannot supply, is SIGBUS: the whole interpreter dies. So a peer's fd must be sealed
against shrinking (or explicitly trusted), our memfds are sealed and allocated up front,
and writable shared file mappings are allocated up front unless `sparse` is asked for.
Each refusal is shown beside its control: the same scenario without the protection
kills a child process with SIGBUS.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Final

import pytest
from support import python_environment, unavailable

from vm_memory import (
    GuestAddress,
    GuestMemoryMmap,
    MmapRegion,
    UnsealedMemory,
    receive_memory,
    send_memory,
)
from vm_memory.mmap_region import F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, file_seals

PAGE: Final = 4096


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def send_raw(sock: socket.socket, fd: int, size: int) -> None:
    """Send a one-region table for `fd` the way `send_memory` does."""
    payload = json.dumps([{"guest_start": 0, "size": size, "file_offset": 0,
                           "read_only": False}]).encode()
    socket.send_fds(sock, [len(payload).to_bytes(4, "little") + payload], [fd])


def test_our_memfds_are_sealed_and_allocated() -> None:
    region = MmapRegion.memfd(64 * PAGE)
    assert region.fd is not None
    seals = file_seals(region.fd)
    assert seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == \
        F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL
    with pytest.raises(PermissionError):  # F_SEAL_SEAL: no peer can add or change seals
        fcntl.fcntl(region.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
    with pytest.raises(PermissionError):
        os.ftruncate(region.fd, PAGE)
    assert os.fstat(region.fd).st_blocks * 512 >= 64 * PAGE, "allocated up front"
    sparse = MmapRegion.memfd(64 * PAGE, sparse=True)
    assert sparse.fd is not None
    assert os.fstat(sparse.fd).st_blocks * 512 < 64 * PAGE, "the control: sparse is not"


def test_an_unsealed_peer_fd_is_refused_and_every_fd_closed() -> None:
    fd = os.memfd_create("unsealed")
    os.ftruncate(fd, PAGE)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        before = open_fds()
        send_raw(ours, fd, PAGE)
        with pytest.raises(UnsealedMemory) as raised:
            receive_memory(theirs)
        assert "memfd without F_SEAL_SHRINK" in str(raised.value)
        assert open_fds() == before
        send_raw(ours, fd, PAGE)  # a trusted peer: mapped, on purpose
        memory = receive_memory(theirs, trust_unsealed=True)
        memory.write_slice(GuestAddress(0), b"trusted")
        assert os.pread(fd, 7, 0) == b"trusted"
    os.close(fd)


def test_a_plain_file_from_a_peer_is_refused() -> None:
    with tempfile.TemporaryFile() as handle:
        handle.truncate(PAGE)
        with pytest.raises(UnsealedMemory) as raised:
            MmapRegion.from_peer_fd(handle.fileno(), PAGE)
        assert "not a memfd" in str(raised.value)


def test_a_sealed_memfd_from_a_peer_is_accepted() -> None:
    memory = GuestMemoryMmap.from_ranges_memfd([(GuestAddress(0), PAGE)])
    ours, theirs = socket.socketpair()
    with ours, theirs:
        send_memory(ours, memory)
        received = receive_memory(theirs)
    received.write_slice(GuestAddress(8), b"seen")
    assert memory.read_bytes(GuestAddress(8), 4) == b"seen"


SHRINKING_PEER: Final = textwrap.dedent('''
    import os, socket, sys
    from vm_memory import *
    sock = socket.socket(fileno=int(sys.argv[1]))
    memory = receive_memory(sock, trust_unsealed=sys.argv[2] == "trust")
    sock.send(b"mapped")
    sock.recv(16)  # the peer has shrunk the file now
    print(memory.read_bytes(GuestAddress(0x8000), 8))
''')


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "trusted-unsealed"])
def test_a_peer_that_shrinks_what_it_sent(sealed: bool) -> None:
    """Sealed: the shrink fails and the receiver reads on. Unsealed and trusted (the
    control): the receiver dies of SIGBUS, as the seal requirement says it would."""
    fd = os.memfd_create("peer", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 16 * PAGE)
    if sealed:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, F_SEAL_SHRINK)
    ours, theirs = socket.socketpair()
    child = subprocess.Popen([sys.executable, "-c", SHRINKING_PEER, str(theirs.fileno()),
                              "trust" if not sealed else "no"],
                             pass_fds=[theirs.fileno()], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=python_environment())
    theirs.close()
    with ours:
        send_raw(ours, fd, 16 * PAGE)
        assert ours.recv(16) == b"mapped"
        try:
            os.ftruncate(fd, PAGE)
            shrunk = True
        except PermissionError:
            shrunk = False
        ours.send(b"go")
        out, err = child.communicate(timeout=120)
    os.close(fd)
    if sealed:
        assert not shrunk
        assert child.returncode == 0, err
        assert out.strip() == repr(bytes(8)).encode()
    else:
        assert shrunk
        assert child.returncode == -signal.SIGBUS, (child.returncode, err)


FULL_TMPFS: Final = textwrap.dedent('''
    import os, sys
    from vm_memory import *
    path = sys.argv[1] + "/ram"
    with open(path, "wb") as handle:
        handle.truncate(8 << 20)  # sparse: passes every size check on a 1 MiB tmpfs
    fd = os.open(path, os.O_RDWR)
    sparse = sys.argv[2] == "sparse"
    try:
        region = MmapRegion.from_file(fd, 8 << 20, sparse=sparse)
    except MappingError as error:
        print("refused:", error)
        sys.exit(0)
    memory = GuestMemoryMmap.from_regions([GuestRegionMmap(region, GuestAddress(0))])
    for offset in range(0, 8 << 20, 4096):
        memory.write_slice(GuestAddress(offset), b"x")
    print("wrote everything")
''')


def _tmpfs_runner() -> list[str] | None:
    """A command prefix that runs a shell in a private mount namespace (root only)."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return None
    probe = subprocess.run([unshare, "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=1m none /mnt && umount /mnt"],
                           capture_output=True, check=False)
    return [unshare, "--mount"] if probe.returncode == 0 else None


@pytest.mark.parametrize("sparse", [False, True], ids=["allocated", "sparse"])
def test_a_full_tmpfs_is_an_error_not_sigbus(sparse: bool) -> None:
    """A sparse 8 MiB file on a 1 MiB tmpfs: mapped writable and shared, it is allocated
    up front, so the mapping is refused with MappingError; asked to stay sparse (the
    control), the writes past the first MiB kill the child with SIGBUS."""
    runner = _tmpfs_runner()
    if runner is None:
        unavailable("needs root and unshare to mount a size-limited tmpfs")
    with tempfile.TemporaryDirectory() as directory:
        script = Path(directory) / "full.py"
        script.write_text(FULL_TMPFS)
        mount_point = Path(directory) / "mnt"
        mount_point.mkdir()
        command = (f"mount -t tmpfs -o size=1m none {mount_point} && exec {sys.executable} "
                   f"{script} {mount_point} {'sparse' if sparse else 'allocate'}")
        child = subprocess.run([*runner, "sh", "-c", command], capture_output=True, text=True,
                               env=python_environment(), timeout=120,
                               check=False)
    if sparse:
        assert child.returncode == -signal.SIGBUS or child.returncode == 128 + signal.SIGBUS, \
            (child.returncode, child.stdout, child.stderr)
    else:
        assert child.returncode == 0, child.stderr
        assert child.stdout.startswith("refused:") and "No space left" in child.stdout
