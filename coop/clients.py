"""Client connections held by a session actor, in the IPC stream dialect (IPC-5).

Each client has a bounded output queue. When it passes ``QUEUE_LIMIT`` the
client stops receiving output (the bytes are dropped and counted); once it
has drained it gets a ``lag`` event and a fresh scrollback replay so its
screen recovers (PTY-2). The queue is a deque of the frames themselves,
handed to the socket a batch at a time: asyncio's own write buffer (3.11) is
a bytearray that is copied whole every time it grows after a send took bytes
off its front, so a client slightly slower than its PTY cost the actor ten
copies of every byte, and page faults on each fresh copy. Local CLI clients
and tunnel socketpairs speak this dialect; browsers speak WebSocket
(``wsclient.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from typing import Callable

from coop import protocol
from coop.filter import BLOCK_NOTICE, CTRL_C_NOTICE, InputFilter
from coop.launcher import read_ready
from coop.log import log
from coop.protocol import FrameType
from coop.receiver import Receiver

QUEUE_LIMIT = 4 << 20
SEND_BATCH = 64 << 10  # queued bytes handed to the socket at a time


class InputPath:
    """Where a client's keystrokes go: straight to the console, or through the
    input filter (FLT-1: web and tunnel clients on the agent PTY), or nowhere
    (read-only viewers, BYD-4)."""

    def __init__(self, console, filt: InputFilter | None, read_only: bool, notify: Callable):
        self.console = console
        self.filter = filt
        self.read_only = read_only
        self._notify = notify  # notify(blocked: list[bytes], ctrl_c: int)
        self._timer: asyncio.TimerHandle | None = None

    def feed(self, data: bytes) -> None:
        if self.read_only:
            return
        if self.filter is None:
            self.console.write_input(data)
            return
        self._apply(self.filter.feed(data))

    def _apply(self, result) -> None:
        if result.forward:
            self.console.write_input(result.forward)
        if result.blocked or result.ctrl_c_suppressed:
            self._notify(result.blocked, result.ctrl_c_suppressed)
        self._arm()

    def _arm(self) -> None:
        if self._timer:
            self._timer.cancel()
            self._timer = None
        deadline = self.filter.deadline()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, deadline - time.monotonic())
            self._timer = loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        self._timer = None
        self._apply(self.filter.flush_due())

    def close(self) -> None:
        if self._timer:
            self._timer.cancel()


def notice_bytes(blocked: list[bytes], ctrl_c: int) -> bytes:
    return (BLOCK_NOTICE if blocked else b"") + (CTRL_C_NOTICE if ctrl_c else b"")


class QueuedClient(Receiver):
    """What every attached client shares, whatever its dialect: the input path,
    the bounded output queue with lag and replay (PTY-2), resize and detach
    bookkeeping. A dialect writes frames (``_write_output``, ``event``) and
    reads them (``data_received``)."""

    def __init__(self, kind: str, session, console, size, *, filtered: bool, read_only: bool):
        self.kind = kind
        self.session = session
        self.console = console
        self.size = None if read_only else size  # watchers never shrink the PTY (PTY-4)
        self.transport: asyncio.Transport | None = None
        self._queue: deque[bytes] = deque()
        self._queued = 0  # bytes in _queue
        self._close_when_sent = False
        self._lagging = False
        self._dropped = 0
        self._closing = False
        filt = session.make_filter() if filtered and console.role == "agent" else None
        self.input = InputPath(console, filt, read_only, self._on_blocked)

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=0)  # resumed once the socket took every byte

    def resume_writing(self) -> None:
        self._send_queued()

    def connection_lost(self, exc) -> None:
        self._closing = True
        self._queue.clear()
        self.input.close()
        self.console.remove_client(self)
        self.session.client_gone(self)

    # -- console.Client -----------------------------------------------------

    def output(self, data: bytes) -> None:
        if self._closing:
            return
        if self._lagging:
            self._dropped += len(data)
            return
        self._write_output(data)
        if self._queued > QUEUE_LIMIT:
            self._lagging = True

    def _write_output(self, data: bytes) -> None:
        raise NotImplementedError

    # -- the queue ----------------------------------------------------------

    def _send(self, *pieces: bytes) -> None:
        """Queue ``pieces`` in order; straight to the socket while nothing waits."""
        if self._queue or self.transport.get_write_buffer_size():
            self._queue.extend(pieces)
            self._queued += sum(map(len, pieces))
        else:
            self.transport.writelines(pieces)  # what the socket does not take waits there

    def _send_queued(self) -> None:
        while self._queue and not self.transport.get_write_buffer_size():
            batch, size = [], 0
            while self._queue and size < SEND_BATCH:
                batch.append(self._queue.popleft())
                size += len(batch[-1])
            self._queued -= size
            self.transport.writelines(batch)
        if self._lagging and self._queued <= QUEUE_LIMIT // 4 and not self._closing:
            self._end_lag()
        if self._close_when_sent and not self._queue:
            self.transport.close()

    def _end_lag(self) -> None:
        self._lagging = False
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            replay = self.console.scrollback.replay()
            offset = self.console.scrollback.end - len(replay)
            self.event({"event": "lag", "dropped": dropped, "offset": offset})
            self._write_output(replay)
            log(f"{self.kind} client on pty {self.console.id} lagged, "
                f"{dropped} bytes dropped")

    def _close_after_sending(self) -> None:
        """Close once the queue is out (``transport.close()`` alone drops it)."""
        if self._queue:
            self._close_when_sent = True
        else:
            self.transport.close()

    def event(self, obj: dict) -> None:
        raise NotImplementedError

    # -- from the client ----------------------------------------------------

    def resize(self, cols, rows) -> None:
        if self.input.read_only:
            return
        if isinstance(cols, int) and isinstance(rows, int) and 0 < cols < 10000 and 0 < rows < 10000:
            self.size = (cols, rows)
            self.console.resize()

    def _on_blocked(self, blocked: list[bytes], ctrl_c: int) -> None:
        self.output(notice_bytes(blocked, ctrl_c))
        if blocked:
            self.event({"event": "blocked", "sequences": [b.decode("latin-1") for b in blocked]})
            log(f"blocked input from {self.kind} client")


class StreamClient(QueuedClient):
    """An attached client speaking IPC stream frames."""

    def __init__(self, kind: str, session, console, size, *, filtered: bool, read_only: bool):
        super().__init__(kind, session, console, size, filtered=filtered, read_only=read_only)
        self._decoder = protocol.FrameDecoder()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
            for payload in frames:
                kind, body = protocol.split_stream_frame(payload)
                if kind == FrameType.DATA:
                    self.input.feed(body)
                elif kind == FrameType.CONTROL:
                    self._control(protocol.decode_json(body))
        except protocol.ProtocolError as exc:
            self.event({"event": "error", **exc.answer()})
            self.end()

    def _control(self, msg: dict) -> None:
        kind = msg.get("type") or msg.get("cmd")
        if kind == "resize":
            self.resize(msg.get("cols"), msg.get("rows"))
        elif kind == "detach":
            self.event({"ok": True})
            self.end()
        else:
            self.event({"event": "error", **protocol.error(
                protocol.ErrorCode.INVALID_COMMAND, f"unknown control message {kind!r}")})

    def _write_output(self, data: bytes) -> None:
        self._send(*protocol.encode_data(data))

    def event(self, obj: dict) -> None:
        if not self._closing:
            self._send(protocol.encode_control(obj))

    def answer(self, obj: dict) -> None:
        """The command-mode answer that precedes stream mode."""
        self._send(protocol.encode_message(obj))

    def end(self) -> None:
        if not self._closing:
            self._closing = True
            self._close_after_sending()


class ExecClient(Receiver):
    """``coop exec``: a process on pipes; stdout and stderr kept apart (BYD-6)."""

    def __init__(self, session, child):
        self.session = session
        self.child = child
        self.kind = "local"
        self.transport = None
        self._decoder = protocol.FrameDecoder()
        self._open_outputs = 2
        self.exit_code: int | None = None
        self._loop = asyncio.get_event_loop()
        self._stdin_buf = bytearray()
        self._eof_requested = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        for fd, kind in ((self.child.stdout_fd, FrameType.DATA), (self.child.stderr_fd, FrameType.STDERR)):
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._pump, fd, kind)
        os.set_blocking(self.child.stdin_fd, False)

    def _pump(self, fd: int, kind: FrameType) -> None:
        data = read_ready(fd)
        if data is None:
            return
        if data:
            self.transport.write(protocol.encode_frame(kind, data))
            return
        self._loop.remove_reader(fd)
        os.close(fd)
        self._open_outputs -= 1
        self._maybe_finish()

    def process_exited(self, code: int) -> None:
        self.exit_code = code
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._open_outputs == 0 and self.exit_code is not None:
            self.transport.write(protocol.encode_control({"event": "exited", "code": self.exit_code}))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            for payload in self._decoder.feed(data):
                kind, body = protocol.split_stream_frame(payload)
                if kind == FrameType.DATA:
                    self._write_stdin(body)
                elif kind == FrameType.CONTROL and json.loads(body).get("type") == "eof":
                    self._close_stdin()
        except (protocol.ProtocolError, ValueError, AttributeError, RecursionError):
            self.transport.close()

    def _write_stdin(self, data: bytes) -> None:
        if self.child.stdin_fd < 0:
            return
        self._stdin_buf += data
        self._flush_stdin()

    def _flush_stdin(self) -> None:
        fd = self.child.stdin_fd
        try:
            n = os.write(fd, self._stdin_buf)
        except BlockingIOError:
            n = 0
        except OSError:
            n = len(self._stdin_buf)
        del self._stdin_buf[:n]
        if self._stdin_buf:
            self.transport.pause_reading()
            self._loop.add_writer(fd, self._drain_stdin)
        elif self._eof_requested:
            self._close_stdin()

    def _drain_stdin(self) -> None:
        self._loop.remove_writer(self.child.stdin_fd)
        self.transport.resume_reading()
        self._flush_stdin()

    def _close_stdin(self) -> None:
        self._eof_requested = True
        if self.child.stdin_fd >= 0 and not self._stdin_buf:
            os.close(self.child.stdin_fd)
            self.child.stdin_fd = -1

    def connection_lost(self, exc) -> None:
        if self.exit_code is None:  # client went away: stop the command
            self.session.launcher.signal(self.child.pid, 15)
        if self.child.stdin_fd >= 0:
            self._loop.remove_writer(self.child.stdin_fd)
            os.close(self.child.stdin_fd)
            self.child.stdin_fd = -1
