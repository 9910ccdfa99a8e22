"""Typed errors of the vhost-user back-end: what the front-end sent and why it is refused."""

from __future__ import annotations

from vm_memory import GuestMemoryError


class VhostUserError(GuestMemoryError):
    """The front-end sent something the back-end cannot accept; the connection is dropped."""

    def __init__(self, request: str, reason: str) -> None:
        self.request = request
        self.reason = reason
        self._init_args = (request, reason)
        super().__init__(f"vhost-user {request}: {reason}")


class MalformedMessage(VhostUserError):
    """A message whose header, size, payload or attached fds break the protocol."""


class UnmappedAddress(VhostUserError):
    """A front-end virtual address (or a guest range) no memory-table region covers."""

    def __init__(self, request: str, address: int, length: int, space: str) -> None:
        self.address = address
        self.length = length
        self.space = space
        super().__init__(request, f"{space} address range [{address:#x}, +{length:#x}) is "
                                  "not covered by the memory table")
        self._init_args = (request, address, length, space)


class StopRequested(Exception):
    """The server was asked to stop while it waited for the front-end (control flow, not
    bad input: the connection is dropped cleanly and `serve` returns)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"stop requested ({reason})")
