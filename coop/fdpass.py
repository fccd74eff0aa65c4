"""Send and receive framed JSON messages with file descriptors (SCM_RIGHTS).

Actors hand each other connections instead of relaying bytes: the fd travels
with the first byte of a message. Works on non-blocking sockets under an
asyncio loop (``loop.add_reader``), since asyncio streams cannot carry fds.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Awaitable, Callable

from coop import protocol
from coop.log import log

MAX_FDS = 4


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class FdChannel:
    """Framed JSON messages over a Unix stream socket, each with optional fds."""

    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        self.sock = sock
        self._decoder = protocol.FrameDecoder()
        self._messages: list[dict] = []
        self._fds: list[int] = []
        self._eof = False

    async def recv(self, timeout: float | None = None) -> tuple[dict, list[int]] | None:
        """Next message and the fds that arrived with it; None at EOF."""
        return await asyncio.wait_for(self._recv(), timeout)

    async def _recv(self) -> tuple[dict, list[int]] | None:
        loop = asyncio.get_running_loop()
        while not self._messages:
            if self._eof:
                return None
            fut = loop.create_future()
            loop.add_reader(self.sock.fileno(), _wake, fut)
            try:
                await fut
            finally:
                loop.remove_reader(self.sock.fileno())
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, MAX_FDS)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data, fds = b"", []
            for fd in fds:
                os.set_inheritable(fd, False)
            self._fds.extend(fds)
            if not data:
                self._eof = True
                continue
            self._messages.extend(protocol.decode_json(f) for f in self._decoder.feed(data))
        msg = self._messages.pop(0)
        nfds = msg.get("_fds", 0) if isinstance(msg.get("_fds", 0), int) else 0
        fds, self._fds = self._fds[:nfds], self._fds[nfds:]
        return msg, fds

    async def send(self, msg: dict, fds: list[int] = ()) -> None:
        if fds:
            msg = {**msg, "_fds": len(fds)}
        data = protocol.encode_message(msg)
        loop = asyncio.get_running_loop()
        first = True
        while data:
            try:
                n = socket.send_fds(self.sock, [data], list(fds)) if first and fds else self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                fut = loop.create_future()
                loop.add_writer(self.sock.fileno(), _wake, fut)
                try:
                    await fut
                finally:
                    loop.remove_writer(self.sock.fileno())
                continue
            first = False
            data = data[n:]

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self.sock.close()


async def connect(path: str, timeout: float = 5.0) -> FdChannel:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, path), timeout)
    except BaseException:
        sock.close()
        raise
    return FdChannel(sock)


async def ask(path: str, msg: dict, fds: list[int] = (), timeout: float = 10.0) -> dict:
    """One request/answer exchange with an actor's control socket."""
    chan = await connect(path, timeout)
    try:
        await chan.send(msg, fds)
        got = await chan.recv(timeout)
        if got is None:
            raise ConnectionError(f"{path}: closed without an answer")
        return got[0]
    finally:
        chan.close()


Handler = Callable[[dict, list[int]], Awaitable[dict | None]]


async def serve_requests(listener: socket.socket, handle: Handler, until: asyncio.Event) -> None:
    """An actor's control socket: one request per connection (receive, answer,
    close) until ``until`` is set. A request that fails is answered ``INTERNAL``
    and logged; it never ends the server."""
    loop = asyncio.get_running_loop()
    stop = asyncio.ensure_future(until.wait())
    try:
        while not until.is_set():
            accept = asyncio.ensure_future(loop.sock_accept(listener))
            await asyncio.wait({accept, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not accept.done():
                accept.cancel()
                break
            conn, _ = accept.result()
            asyncio.ensure_future(_answer(FdChannel(conn), handle))
    finally:
        stop.cancel()


async def _answer(chan: FdChannel, handle: Handler) -> None:
    try:
        got = await chan.recv(timeout=10)
        if got is None:
            return
        msg, fds = got
        try:
            answer = await handle(msg, fds)
        except protocol.ProtocolError as exc:
            answer = exc.answer()
        except Exception as exc:  # noqa: BLE001 - one request never ends the actor
            log(f"internal error: {exc!r}")
            answer = protocol.error(protocol.ErrorCode.INTERNAL, f"internal error: {exc}")
        if answer is not None:
            await chan.send(answer)
    except (OSError, asyncio.TimeoutError, protocol.ProtocolError):
        pass
    finally:
        chan.close()
