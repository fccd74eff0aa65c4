"""Socket reads into one reused buffer, for the asyncio protocols of a busy actor.

A plain ``asyncio.Protocol`` gets every read as a fresh bytes object sized for
256 KiB. glibc hands such a block out by mapping it, so each read, even of a
single keystroke, cost a page fault and three more system calls (mmap, mremap,
munmap) on the way to the PTY. Here asyncio reads into a buffer made once per
process, and the protocol gets bytes of exactly what arrived.
"""

from __future__ import annotations

import asyncio

RECEIVE_SIZE = 64 << 10

_buffer: memoryview | None = None


class Receiver(asyncio.BufferedProtocol):
    """Implement ``data_received`` as for ``asyncio.Protocol``; the bytes it gets
    are its own to keep."""

    def get_buffer(self, sizehint: int) -> memoryview:
        global _buffer
        if _buffer is None:  # made on first use: the supervisor that imports this never reads here
            _buffer = memoryview(bytearray(RECEIVE_SIZE))
        return _buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError
