"""``vm-memory`` (``python -m vm_memory_tools``): the demo and the RAM-file inspector.

    vm-memory demo [--messages N] [--no-kvm]
    vm-memory inspect FILE [--layout START:SIZE[@OFFSET],...] {map,hexdump,read,search,write}
    vm-memory vhost-user-blk --socket PATH --image FILE [--read-only] [--queues N]
"""

from __future__ import annotations

import argparse
import sys

from vm_memory_tools.demo import add_demo_arguments, demo_main, guest_process_main
from vm_memory_tools.inspector import add_inspect_arguments, inspect_main
from vm_memory_vhost.command import add_arguments as add_vhost_user_blk_arguments
from vm_memory_vhost.command import main as vhost_user_blk_main

_GUEST_COMMAND = "demo-guest"  # internal: the demo's second-process guest


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (``demo``, ``inspect`` and ``vhost-user-blk``)."""
    parser = argparse.ArgumentParser(
        prog="vm-memory",
        description="Guest physical memory for Python VMMs: a live demo, a RAM-file "
                    "inspector and a vhost-user block device back-end.")
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{demo,inspect,vhost-user-blk}")
    demo = commands.add_parser(
        "demo", help="a guest (a KVM vCPU, or a second process) and a Python device "
                     "exchange messages through a split ring in guest memory",
        description="Run a guest driver and a Python device model against one split ring "
                    "in guest memory and verify every message. Exits 1 if any message is "
                    "lost or corrupted.")
    add_demo_arguments(demo)
    inspect = commands.add_parser(
        "inspect", help="look inside a VM's RAM file (read-only by default)",
        description="Map a RAM file (e.g. a QEMU memory-backend-file) as guest memory and "
                    "show its layout, dump, read or search it. Exits 2 on bad input.")
    add_inspect_arguments(inspect)
    blk = commands.add_parser(
        "vhost-user-blk", help="serve an image file as a vhost-user virtio-blk disk",
        description="Listen on a Unix socket and serve a disk image to a VMM (QEMU's "
                    "vhost-user-blk-pci) until SIGTERM or SIGINT.")
    add_vhost_user_blk_arguments(blk)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``vm-memory`` console script; returns the exit status."""
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == [_GUEST_COMMAND]:
        return guest_process_main(arguments[1:])
    parsed = build_parser().parse_args(arguments)
    if parsed.command == "demo":
        return demo_main(parsed)
    if parsed.command == "vhost-user-blk":
        return vhost_user_blk_main(parsed)
    return inspect_main(parsed)

