"""A real Linux guest under QEMU, for real-client tests and benchmarks of block back-ends.

The parts come from Debian's archive without installing a kernel: `apt-get download`
of `busybox-static` and of the kernel package `linux-image-cloud-amd64` depends on,
unpacked with `dpkg-deb -x` into a cache outside the repository
(`$XDG_CACHE_HOME/vm-memory/linux-guest`, else `~/.cache/...`), reused across runs.
`python -m vm_memory_tools.linux_guest fetch` fills the cache (CI does that first).

`build_initramfs` writes a gzipped newc archive (written here: no `cpio` needed) with
busybox, the virtio modules and the caller's `/init` script and data files.
`run_guest` boots it under TCG (this host's KVM cannot boot Linux) with guest RAM in a
shared memfd, as vhost-user needs, and one `vhost-user-blk-pci` per socket given;
`storage_daemon` starts `qemu-storage-daemon` as the reference back-end.

Standard library only, so CI can run it before anything is installed.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

KERNEL_META_PACKAGE: Final = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE: Final = "busybox-static"
MODULES: Final = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                  "virtio_pci", "virtio_blk")
"""Load order of the virtio modules (plain .ko files, no modules.dep in the image)."""
QEMU: Final = "qemu-system-x86_64"
STORAGE_DAEMON: Final = "qemu-storage-daemon"
CONSOLE_END: Final = "GUEST-DONE"
"""What an init script prints last, before powering off."""


class GuestUnavailable(Exception):
    """Something a real guest needs is missing here (the reason says what and how to
    install it)."""


@dataclass(frozen=True)
class GuestParts:
    """A kernel, its virtio modules and a static busybox, unpacked in the cache."""

    kernel: Path
    modules: dict[str, Path]
    busybox: Path


def cache_directory() -> Path:
    """Where the guest parts are kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "vm-memory" / "linux-guest"


def _run(command: list[str], cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                                check=False, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise GuestUnavailable(f"{' '.join(command)} failed: {error}") from None
    if result.returncode != 0:
        raise GuestUnavailable(f"{' '.join(command)} exited {result.returncode}: "
                               f"{result.stderr.strip()[-500:]}")
    return result.stdout


def _kernel_package() -> str:
    for line in _run(["apt-cache", "depends", KERNEL_META_PACKAGE]).splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-"):
            return name
    raise GuestUnavailable(f"apt-cache names no kernel package for {KERNEL_META_PACKAGE} "
                           "(run apt-get update)")


def _find_parts(root: Path) -> GuestParts | None:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    busybox = root / "bin" / "busybox"
    if not kernels or not busybox.exists():
        return None
    release = kernels[-1].name.removeprefix("vmlinuz-")
    modules: dict[str, Path] = {}
    for path in (root / "lib" / "modules" / release).rglob("*.ko"):
        if path.stem in MODULES:
            modules[path.stem] = path
    if set(modules) != set(MODULES):
        return None
    return GuestParts(kernels[-1], modules, busybox)


def guest_parts(cache: Path | None = None) -> GuestParts:
    """The parts, fetched from Debian's archive into the cache unless already there."""
    cache = cache or cache_directory()
    root = cache / "root"
    found = _find_parts(root)
    if found is not None:
        return found
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise GuestUnavailable(f"{tool} is missing: the guest's kernel and busybox come "
                                   "from Debian's archive")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as download:
        _run(["apt-get", "download", BUSYBOX_PACKAGE, _kernel_package()], cwd=Path(download))
        staging = Path(tempfile.mkdtemp(dir=cache))
        for package in sorted(Path(download).glob("*.deb")):
            _run(["dpkg-deb", "-x", str(package), str(staging)])
        if _find_parts(staging) is None:
            shutil.rmtree(staging, ignore_errors=True)
            raise GuestUnavailable("the downloaded packages lack a kernel, the virtio "
                                   "modules or busybox")
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
    found = _find_parts(root)
    assert found is not None
    return found


def require_qemu(*, storage_daemon: bool = False) -> str:
    """The QEMU binary (and check for qemu-storage-daemon), or GuestUnavailable."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise GuestUnavailable(f"{QEMU} is missing (Debian: apt-get install qemu-system-x86)")
    if storage_daemon and shutil.which(STORAGE_DAEMON) is None:
        raise GuestUnavailable(f"{STORAGE_DAEMON} is missing (Debian: apt-get install "
                               "qemu-system-common)")
    return qemu


# ---- initramfs --------------------------------------------------------------------------

def _newc_entry(name: str, mode: int, data: bytes, inode: int) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(f"{value:08X}".encode() for value in fields)
    entry = header + encoded
    entry += b"\0" * (-len(entry) % 4)
    entry += data
    entry += b"\0" * (-len(entry) % 4)
    return entry


def build_initramfs(parts: GuestParts, init: str, files: dict[str, bytes],
                    path: Path) -> None:
    """A gzipped newc archive: busybox, the modules in /lib/modules, `/init`, `files`."""
    directories = ["bin", "dev", "proc", "sys", "lib", "lib/modules", "data", "tmp"]
    entries: list[tuple[str, int, bytes]] = [(name, 0o040755, b"") for name in directories]
    entries.append(("bin/busybox", 0o100755, parts.busybox.read_bytes()))
    entries += [(f"lib/modules/{name}.ko", 0o100644, parts.modules[name].read_bytes())
                for name in MODULES]
    entries.append(("init", 0o100755, init.encode()))
    entries += [(name.lstrip("/"), 0o100755, data) for name, data in files.items()]
    archive = b"".join(_newc_entry(name, mode, data, inode)
                       for inode, (name, mode, data) in enumerate(entries, start=1))
    archive += _newc_entry("TRAILER!!!", 0, b"", 0)
    path.write_bytes(gzip.compress(archive, compresslevel=1))


INIT_PROLOGUE: Final = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in {modules}; do
  insmod /lib/modules/$module.ko || echo "GUEST-ERROR insmod $module"
done
for disk in {disks}; do
  tries=0
  while [ ! -b /dev/$disk ] && [ $tries -lt 300 ]; do sleep 0.1; tries=$((tries + 1)); done
  [ -b /dev/$disk ] || echo "GUEST-ERROR no /dev/$disk"
done
"""
INIT_EPILOGUE: Final = f"""
sync
echo {CONSOLE_END}
poweroff -f
"""


def init_script(body: str, disks: list[str]) -> str:
    """`body` wrapped in the boot steps (mounts, modules, waiting for the disks) and the
    end marker plus power-off."""
    return INIT_PROLOGUE.format(modules=" ".join(MODULES), disks=" ".join(disks)) + body + \
        INIT_EPILOGUE


# ---- running ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Disk:
    """A vhost-user-blk device for the guest: its back-end's socket and queue count."""

    socket: str
    queues: int = 1
    reconnect: bool = False


def qemu_command(parts: GuestParts, initrd: Path, disks: list[Disk], *, cpus: int = 2,
                 memory_mib: int = 512) -> list[str]:
    """The QEMU command line: TCG, guest RAM in a shared memfd, one disk per `Disk`.

    `no_timer_check`: under TCG on a loaded host the kernel's IO-APIC timer check can
    miss its ticks and panic ("IO-APIC + timer doesn't work"); virtual machines skip it.
    """
    command = [require_qemu(), "-machine", "q35,accel=tcg,memory-backend=mem",
               "-object", f"memory-backend-memfd,id=mem,size={memory_mib}M,share=on",
               "-m", f"{memory_mib}M", "-smp", str(cpus), "-kernel", str(parts.kernel),
               "-initrd", str(initrd), "-append", "console=ttyS0 quiet panic=-1 no_timer_check",
               "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"]
    for number, disk in enumerate(disks):
        chardev = f"socket,id=vu{number},path={disk.socket}"
        if disk.reconnect:
            chardev += ",reconnect=1"
        command += ["-chardev", chardev, "-device",
                    f"vhost-user-blk-pci,chardev=vu{number},num-queues={disk.queues}"]
    return command


def nice(command: list[str]) -> list[str]:
    """`command` run at a lower priority (the machine is shared)."""
    return ["nice", "-n", "10", *command] if shutil.which("nice") else command


def start_guest(parts: GuestParts, initrd: Path, disks: list[Disk], console: Path, *,
                cpus: int = 2, memory_mib: int = 512) -> subprocess.Popen[bytes]:
    """Boot the guest in the background, its console going to `console`."""
    with open(console, "wb") as log:
        return subprocess.Popen(nice(qemu_command(parts, initrd, disks, cpus=cpus,
                                                  memory_mib=memory_mib)),
                                stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)


def wait_guest(process: subprocess.Popen[bytes], console: Path, timeout: float) -> str:
    """Wait for the guest to power off (killing it after `timeout` s); its console."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return console.read_text(errors="replace")


def wait_for_line(console: Path, text: str, timeout: float,
                  process: subprocess.Popen[bytes] | None = None) -> bool:
    """Whether `text` appeared on the console within `timeout` s (polling)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in console.read_text(errors="replace"):
            return True
        if process is not None and process.poll() is not None:
            return text in console.read_text(errors="replace")
        time.sleep(0.1)
    return False


def storage_daemon(image: str, socket_path: str, *, queues: int = 1,
                   read_only: bool = False) -> list[str]:
    """The qemu-storage-daemon command serving `image` as a vhost-user-blk export."""
    require_qemu(storage_daemon=True)
    writable = "off" if read_only else "on"
    return [STORAGE_DAEMON,
            "--blockdev", f"driver=file,node-name=f0,filename={image}"
                          f"{',read-only=on' if read_only else ''}",
            "--blockdev", f"driver=raw,node-name=d0,file=f0"
                          f"{',read-only=on' if read_only else ''}",
            "--export", f"type=vhost-user-blk,id=e0,addr.type=unix,addr.path={socket_path},"
                        f"node-name=d0,writable={writable},num-queues={queues}"]


def wait_for_socket(path: str, timeout: float,
                    process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until a back-end listens on `path` (raises GuestUnavailable after `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return
        if process is not None and process.poll() is not None:
            raise GuestUnavailable(f"the back-end for {path} exited {process.returncode}")
        time.sleep(0.05)
    raise GuestUnavailable(f"no back-end listening on {path} after {timeout} s")


def results(console: str) -> dict[str, str]:
    """The guest's `RESULT name value...` lines, by name."""
    found: dict[str, str] = {}
    for raw in console.splitlines():
        at = raw.find("RESULT ")  # a console escape sequence may come first
        if at >= 0:
            _, _, rest = raw[at:].strip().partition(" ")
            name, _, value = rest.partition(" ")
            found[name] = value.strip()
    return found


def main(argv: list[str] | None = None) -> int:
    """`python -m vm_memory_tools.linux_guest fetch`: fill the cache (for CI)."""
    parser = argparse.ArgumentParser(prog="python -m vm_memory_tools.linux_guest")
    parser.add_argument("action", choices=["fetch"])
    parser.parse_args(argv)
    try:
        parts = guest_parts()
    except GuestUnavailable as error:
        print(f"linux_guest: {error}", file=sys.stderr)
        return 1
    print(f"linux_guest: kernel {parts.kernel}, busybox {parts.busybox}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
