"""A vhost-user-style device back-end in its own process, serving a VMM's virtqueue.

The "VMM" (this script's main process) owns guest memory: two regions, each in a sealed
memfd. Over a Unix socket it hands the back-end what vhost-user hands it:

1. the memory table with the regions' file descriptors (``send_memory``, like
   ``VHOST_USER_SET_MEM_TABLE``),
2. the queue's guest addresses (``SET_VRING_ADDR``) with a kick and a call eventfd
   (``SET_VRING_KICK`` / ``SET_VRING_CALL``).

The back-end (this script started again with ``--backend``) maps the same memory
(``receive_memory``), waits for kicks, takes each request chain from the split ring,
writes the upper-cased text into the chain's device-writable buffer, returns the chain
on the used ring and signals the call eventfd. The VMM, playing the guest driver,
reads the replies, then closes the socket: the back-end exits (as a vhost-user back-end
does when its front-end hangs up). An eventfd only wakes; its count carries no meaning,
as in vhost-user. No byte is copied between the processes except over shared memory.

Run: python examples/vhost_user_backend.py
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from vm_memory import GuestAddress, GuestMemoryMmap, receive_memory, send_memory
from vm_memory_virtio import DriverQueue, QueueLayout, SplitQueue

QUEUE_SIZE = 8
RING_BASE = GuestAddress(0x1000)
REQUEST_AREA = GuestAddress(0x10_0000)  # in the second region
REPLY_AREA = GuestAddress(0x10_8000)
BUFFER_BYTES = 256
MESSAGES = ("hello, vhost-user", "guest memory is shared", "no copies on the socket")


def backend(socket_path: str) -> int:
    """The back-end process: map the VMM's memory, serve the queue until the VMM hangs up."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(socket_path)
    memory = receive_memory(connection)
    data, fds, _, _ = socket.recv_fds(connection, 4096, 2)
    vring = json.loads(data)
    kick, call = fds
    regions = ", ".join(f"{region.start_value:#x}+{region.length:#x}"
                        for region in memory.regions())
    print(f"backend[{os.getpid()}]: mapped {memory.num_regions()} regions: {regions}",
          flush=True)
    layout = QueueLayout(vring["size"], GuestAddress(vring["desc"]),
                         GuestAddress(vring["avail"]), GuestAddress(vring["used"]))
    device = SplitQueue(memory, layout)
    served = 0
    socket_fd = connection.fileno()
    while socket_fd not in select.select([kick, socket_fd], [], [])[0]:
        # The front-end sends nothing more on the socket: readable means it hung up.
        os.eventfd_read(kick)
        while (chain := device.pop()) is not None:
            (request, request_bytes), = chain.readable
            (reply, reply_bytes), = chain.writable
            text = memory.read_bytes(GuestAddress(request), request_bytes).decode()
            answer = text.upper().encode()[:reply_bytes]
            memory.write_slice(GuestAddress(reply), answer)
            device.add_used(chain.head, len(answer))
            served += 1
            print(f"backend: request {served}: {text!r} -> {answer.decode()!r}", flush=True)
        os.eventfd_write(call, 1)
    connection.close()
    os.close(kick)
    os.close(call)
    return 0


def vmm() -> int:
    """The VMM: build memory and a queue, start the back-end, drive requests through it."""
    memory = GuestMemoryMmap.from_ranges_memfd([(GuestAddress(0), 0x10_0000),
                                                (GuestAddress(0x10_0000), 0x10_0000)])
    layout = QueueLayout.contiguous(QUEUE_SIZE, RING_BASE)
    driver = DriverQueue(memory, layout)
    print(f"vmm: {memory.num_regions()} regions of guest memory in memfds; queue of "
          f"{QUEUE_SIZE} at {RING_BASE.raw_value():#x}", flush=True)
    kick = os.eventfd(0, os.EFD_CLOEXEC)
    call = os.eventfd(0, os.EFD_CLOEXEC)
    with tempfile.TemporaryDirectory() as directory:
        socket_path = str(Path(directory) / "vhost-user.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(socket_path)
            server.listen(1)
            server.settimeout(30)  # a back-end that fails to start must not hang the VMM
            child = subprocess.Popen([sys.executable, __file__, "--backend", socket_path])
            connection, _ = server.accept()
        with connection:
            send_memory(connection, memory)
            vring = {"size": layout.size, "desc": layout.desc_table.raw_value(),
                     "avail": layout.avail_ring.raw_value(),
                     "used": layout.used_ring.raw_value()}
            socket.send_fds(connection, [json.dumps(vring).encode()], [kick, call])
            print("vmm: sent the memory table (2 regions, 2 fds) and the vring "
                  "(addresses, kick and call eventfds)", flush=True)
            for number, text in enumerate(MESSAGES, 1):
                request = REQUEST_AREA + number * BUFFER_BYTES
                reply = REPLY_AREA + number * BUFFER_BYTES
                memory.write_slice(request, text.encode())
                head = driver.add([(request.raw_value(), len(text))],
                                  [(reply.raw_value(), BUFFER_BYTES)])
                os.eventfd_write(kick, 1)
                os.eventfd_read(call)  # blocks until the back-end signals
                (used_head, used_bytes), = driver.used()
                assert used_head == head
                answer = memory.read_bytes(reply, used_bytes).decode()
                assert answer == text.upper()
                print(f"vmm: reply {number}: {answer!r} ({used_bytes} bytes)", flush=True)
    status = child.wait(timeout=30)
    os.close(kick)
    os.close(call)
    print(f"vmm: back-end exited with status {status}", flush=True)
    return status


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--backend":
        sys.exit(backend(sys.argv[2]))
    sys.exit(vmm())


if __name__ == "__main__":
    main()
