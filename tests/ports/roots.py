"""Minimal Debian roots, one per architecture, with Debian's own Python and libatomic.

A root is `debootstrap --foreign` of the minimal base plus python3.11-minimal,
libpython3.11-stdlib, libatomic1, python3-numpy and libpython3.11-dev (the headers the
compiled access path is cross-compiled against) for the architecture, with every fetched package
unpacked by `dpkg-deb -x`: Python runs from it without debootstrap's second stage, which
would need the architecture's CPU. The roots live in a cache outside the repository
(`$VM_MEMORY_PORTS_CACHE`, else `~/.cache/vm-memory-ports`) and are reused until the
recipe changes; a build holds a lock, so parallel test workers build each root once.

Programs in a root run under `qemu-<arch>-static -L ROOT` (no binfmt registration is
needed: the launcher names the emulator), i386 natively through the root's own loader.
Each root gets a launcher script, `usr/bin/python3.11-port`, that is also the foreign
interpreter's `sys.executable`, so tests that start `sys.executable` in a subprocess start
the same foreign Python. Beside it, the root's Python sees the host's files: `-L` only
redirects absolute paths that exist in the root, and the root keeps no /dev, /proc, /sys,
/tmp or /run of its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .architectures import Port

RELEASE: Final = "bookworm"
"""Debian 12: its Python is 3.11, the oldest the project supports."""
PACKAGES: Final = ("python3.11-minimal", "libpython3.11-stdlib", "libatomic1", "python3-numpy",
                   "libpython3.11-dev")
"""Debian's own builds: the interpreter, its standard library, libatomic, numpy (some
tests use its arrays as buffers; a compiled package, so the archive's, not PyPI's), and
Python's headers with the architecture's pyconfig.h (for `extension`)."""
RECIPE: Final = 3
"""Bumped whenever the way a root is built changes: cached roots of another recipe are
rebuilt."""
TEST_PACKAGES: Final = ("pytest", "hypothesis")
"""What the runtime tests need beside the standard library, installed for the foreign
interpreters with the host's pip."""
REPOSITORY: Final = Path(__file__).resolve().parents[2]
HOST_DIRECTORIES: Final = ("dev", "proc", "sys", "tmp", "run")
"""Directories the root must not have, so that the emulated programs see the host's."""
LAUNCHER: Final = "usr/bin/python3.11-port"
BUILD_TIMEOUT_SECONDS: Final = 1800


class PortUnavailable(Exception):
    """What a port needs cannot be had on this machine (the message says what)."""


@dataclass(frozen=True)
class Root:
    """A built root: `python` runs its Python (the interpreter's own `sys.executable`)."""

    port: Port
    path: Path

    @property
    def python(self) -> Path:
        return self.path / LAUNCHER

    def describe(self) -> str:
        stamp = json.loads((self.path.parent / "ready.json").read_text())
        return f"Debian {RELEASE} {self.port.debian}, python3.11 {stamp['python']}"


def cache_home() -> Path:
    configured = os.environ.get("VM_MEMORY_PORTS_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vm-memory-ports"


@contextmanager
def locked(name: str) -> Generator[Path]:
    """An exclusive lock on `name` in the cache (held across processes)."""
    home = cache_home()
    home.mkdir(parents=True, exist_ok=True)
    with (home / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield home
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def runner_unavailable(port: Port) -> str | None:
    """None if this machine can run the port's programs; otherwise why not."""
    if port.emulator is None:
        if platform.machine() not in ("x86_64", "i686", "i386"):
            return f"{port.debian} runs natively only on x86, this host is {platform.machine()}"
        return None
    if shutil.which(port.emulator) is None:
        return f"{port.emulator} is not installed (Debian package qemu-user-static)"
    return None


def debian_mirror() -> str:
    """The Debian mirror apt is configured with for the release (or the environment's)."""
    configured = os.environ.get("VM_MEMORY_PORTS_MIRROR")
    if configured:
        return configured
    if shutil.which("apt-get") is None:
        raise PortUnavailable("no apt here to name a Debian mirror "
                              "(set VM_MEMORY_PORTS_MIRROR)")
    listing = subprocess.run(
        ["apt-get", "indextargets", "--format", "$(SITE) $(CODENAME) $(ORIGIN) $(COMPONENT)"],
        capture_output=True, text=True, timeout=600, check=False)
    for line in listing.stdout.splitlines():
        fields = line.split()
        if fields[1:] == [RELEASE, "Debian", "main"]:
            return fields[0]
    raise PortUnavailable(f"apt is configured with no Debian {RELEASE} main mirror "
                          "(run apt-get update, or set VM_MEMORY_PORTS_MIRROR)")


def ensure_root(port: Port) -> Root:
    """The port's root, built if the cache has none of the current recipe."""
    reason = runner_unavailable(port)
    if reason is not None:
        raise PortUnavailable(reason)
    with locked(port.debian) as home:
        directory = home / f"{RELEASE}-{port.debian}"
        stamp = directory / "ready.json"
        if stamp.exists() and json.loads(stamp.read_text()).get("recipe") == RECIPE:
            return Root(port, directory / "root")
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        python_version = _build(port, directory / "root", directory / "build.log")
        stamp.write_text(json.dumps({"recipe": RECIPE, "python": python_version}))
        return Root(port, directory / "root")


SYSTEM_DIRECTORIES: Final = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def _build(port: Port, root: Path, log: Path) -> str:
    """Bootstrap, unpack and check a root; returns the python3.11 package version."""
    # debootstrap lives in /usr/sbin, which a non-login PATH may leave out
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), *SYSTEM_DIRECTORIES])
    for tool in ("debootstrap", "dpkg-deb"):
        if shutil.which(tool, path=path) is None:
            raise PortUnavailable(f"{tool} is not installed (Debian package {tool.split('-')[0]})")
    if os.geteuid() != 0:
        raise PortUnavailable("debootstrap needs root to build a Debian root")
    command = ["debootstrap", "--foreign", f"--arch={port.debian}", "--variant=minbase",
               f"--include={','.join(PACKAGES)}", RELEASE, str(root), debian_mirror()]
    with log.open("w") as output:
        result = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT,
                                env={**os.environ, "PATH": path},
                                timeout=BUILD_TIMEOUT_SECONDS, check=False)
    if result.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-5:])
        raise PortUnavailable(f"{shlex.join(command)} failed ({result.returncode}):\n{tail}")
    archives = root / "var" / "cache" / "apt" / "archives"
    packages = sorted(archives.glob("*.deb"))
    for package in packages:
        subprocess.run(["dpkg-deb", "-x", str(package), str(root)], check=True, timeout=600)
        package.unlink()
    _make_symlinks_relative(root)
    _install_alternatives(port, root)
    for name in (*HOST_DIRECTORIES, "debootstrap"):
        target = root / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        else:
            shutil.rmtree(target, ignore_errors=True)
    _write_launcher(port, root)
    check = subprocess.run([str(root / LAUNCHER), "-c", CHECK], capture_output=True,
                           text=True, timeout=BUILD_TIMEOUT_SECONDS, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"the {port.debian} root's Python does not work:\n"
                           f"{check.stdout}{check.stderr}")
    return next(package.name.split("_")[1] for package in packages
                if package.name.startswith("python3.11-minimal_"))


CHECK: Final = "import ctypes, mmap, numpy; ctypes.CDLL('libatomic.so.1')"


def _make_symlinks_relative(root: Path) -> None:
    """Point absolute symlinks inside the root (on ppc64el and mips64el, the loader's
    own: /lib64/ld64.so.2 -> /lib/<triplet>/...) at their target inside the root."""
    for directory, names, files in os.walk(root):
        for name in (*names, *files):
            link = Path(directory) / name
            if not link.is_symlink():
                continue
            target = os.readlink(link)
            if target.startswith("/"):
                link.unlink()
                link.symlink_to(os.path.relpath(root / target.lstrip("/"), link.parent))


def _install_alternatives(port: Port, root: Path) -> None:
    """The links update-alternatives makes in the second stage, which never runs here:
    numpy needs libblas.so.3 and liblapack.so.3 (each in its own directory)."""
    libraries = root / "usr" / "lib" / port.triplet
    for name in ("blas", "lapack"):
        link, target = libraries / f"lib{name}.so.3", libraries / name / f"lib{name}.so.3"
        if target.exists() and not link.exists():
            link.symlink_to(f"{name}/lib{name}.so.3")


def _write_launcher(port: Port, root: Path) -> None:
    """The script that runs the root's Python and is its `sys.executable` (`-0`, `--argv0`).

    It sits beside the real interpreter, so Python finds the root's standard library
    from it (sys.prefix is the root's /usr)."""
    python = shlex.quote(str(root / "usr" / "bin" / "python3.11"))
    if port.emulator is None:
        libraries = shlex.quote(":".join(str(root / directory / "lib" / port.triplet)
                                         for directory in (".", "usr")))
        loader = shlex.quote(str(root / port.native_loader))
        run = f'{loader} --library-path {libraries} --argv0 "$0" {python} "$@"'
    else:
        run = f'{port.emulator} -L {shlex.quote(str(root))} -0 "$0" {python} "$@"'
    launcher = root / LAUNCHER
    launcher.write_text(f"#!/bin/sh\n# Debian {RELEASE} {port.debian}: python3.11\n"
                        f"exec {run}\n")
    launcher.chmod(0o755)


def ensure_test_packages() -> Path:
    """A directory holding pytest and hypothesis as pure-Python wheels, for the foreign
    interpreters' sys.path: the newest releases the project's own requirements allow
    (the host may run a hypothesis with a compiled part, which a foreign CPU cannot load)."""
    requirements = test_requirements()
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]
    with locked("site") as home:
        directory = home / f"site-{key}"
        if (directory / "ready").exists():
            return directory
        shutil.rmtree(directory, ignore_errors=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--target", str(directory), "--only-binary=:all:", "--python-version", "3.11",
             "--implementation", "py", "--abi", "none", "--platform", "any", *requirements],
            capture_output=True, text=True, timeout=600, check=False)
        if result.returncode != 0:
            raise PortUnavailable(f"pip cannot install {' '.join(requirements)} as pure "
                                  f"Python for the foreign interpreters:\n"
                                  f"{result.stderr[-2000:]}")
        (directory / "ready").write_text("\n".join(requirements) + "\n")
        return directory


def test_requirements() -> list[str]:
    """The `dev` requirements of the project naming TEST_PACKAGES, as pyproject.toml says."""
    with (REPOSITORY / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    return sorted(requirement for requirement in project["optional-dependencies"]["dev"]
                  if re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0] in TEST_PACKAGES)
