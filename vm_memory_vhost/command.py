"""`vm-memory vhost-user-blk`: serve an image file to a VM as a vhost-user virtio-blk disk.

    vm-memory vhost-user-blk --socket PATH --image FILE [--read-only] [--queues N]

Like `qemu-storage-daemon`'s vhost-user-blk export: it listens on PATH, serves the
front-end that connects (QEMU's `-device vhost-user-blk-pci,chardev=...`), and waits
for the next one when it leaves; SIGTERM or SIGINT stops it cleanly in any state, even
with a front-end stopped mid-message (queues drained, the image synced, the socket file
removed), exit status 0. A bad image is exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys

from vm_memory_vhost.backend import VhostUserBackend
from vm_memory_vhost.blk import BlkDevice

log = logging.getLogger("vm_memory_vhost")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's options."""
    parser.add_argument("--socket", required=True, metavar="PATH",
                        help="the Unix socket to listen on (a stale one is replaced)")
    parser.add_argument("--image", required=True, metavar="FILE",
                        help="the disk image (raw); its size, rounded down to 512-byte "
                             "sectors, is the disk's capacity")
    parser.add_argument("--read-only", action="store_true",
                        help="report the disk read-only to the guest and refuse writes")
    parser.add_argument("--queues", type=int, default=1, metavar="N",
                        help="request queues the guest may use concurrently (default 1)")
    parser.add_argument("--serial", default=None,
                        help="the disk's ID string (GET_ID; default: the image's file name)")


def main(parsed: argparse.Namespace) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit status."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="vhost-user-blk: %(message)s")
    if not 1 <= parsed.queues <= 256:
        print(f"vhost-user-blk: --queues {parsed.queues}: must be 1 to 256", file=sys.stderr)
        return 2
    try:
        device = BlkDevice(parsed.image, read_only=parsed.read_only,
                           num_queues=parsed.queues, serial=parsed.serial)
    except OSError as error:
        print(f"vhost-user-blk: cannot open image {parsed.image!r}: {error.strerror}",
              file=sys.stderr)
        return 2
    backend = VhostUserBackend(device)
    try:
        # The handlers stay in place until the image is synced; the stop request's pipe is
        # closed only once it is no longer the signals' wake-up fd.
        with backend.stop_on_signals(signal.SIGTERM, signal.SIGINT):
            try:
                backend.serve(parsed.socket, ready=lambda: log.info(
                    "serving %s (%d sectors%s, %d queue%s) on %s", parsed.image,
                    device.capacity, ", read-only" if parsed.read_only else "",
                    parsed.queues, "" if parsed.queues == 1 else "s", parsed.socket))
            except OSError as error:
                print(f"vhost-user-blk: cannot serve on {parsed.socket!r}: {error}",
                      file=sys.stderr)
                return 2
            if not parsed.read_only:
                os.fsync(device.fd)
    finally:
        backend.close()
        device.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    log.info("stopped: %d requests served, %.3f s CPU", backend.requests_served,
             usage.ru_utime + usage.ru_stime)
    return 0
