"""One PTY of a session: its process, output fan-out, scrollback and size.

The console reads the PTY master as fast as the process writes (PTY-2: no
client can slow it), keeps the last bytes in a scrollback ring (PTY-3) and
hands every chunk to each attached client, which queues it or drops it.
The PTY size is the smallest reported client size (PTY-4).
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from typing import Protocol

from coop.attention import WAITING, Attention
from coop.launcher import PtyChild, set_winsize
from coop.log import log
from coop.recorder import RecorderProcess
from coop.scrollback import Scrollback

READ_SIZE = 65536
DEFAULT_SIZE = (80, 24)


def dim_line(text: str) -> bytes:
    """A notice line in the terminal stream (DMN-7), dim, on its own line."""
    return f"\r\n\x1b[2m[{text}]\x1b[0m\r\n".encode()


class Client(Protocol):
    """What a console needs from an attached client, whatever its dialect."""

    kind: str  # "local" | "web" | "tunnel"
    size: tuple[int, int] | None

    def output(self, data: bytes) -> None: ...

    def event(self, obj: dict) -> None: ...

    def end(self) -> None: ...


def _read_chunk(fd: int) -> tuple[bytes, bool]:
    """What the PTY holds, up to READ_SIZE, as one chunk (a PTY read returns at
    most ~4 KiB, and every chunk costs the same fixed work downstream:
    scrollback, attention, one frame per client); and whether the PTY is closed
    (EIO: no slave fd is open any more)."""
    chunks, total = [], 0
    while total < READ_SIZE:
        try:
            data = os.read(fd, READ_SIZE - total)
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            return b"".join(chunks), True
        if not data:
            return b"".join(chunks), True
        chunks.append(data)
        total += len(data)
    return b"".join(chunks), False  # a lone chunk is returned as it is, not copied


def _no_callback(console, state):
    pass


class Console:
    def __init__(self, ident: int, role: str, argv: list[str], scrollback_bytes: int,
                 attention_quiet_ms: int = 3000, on_attention=_no_callback):
        self.id = ident
        self.role = role  # "agent" | "shell"
        self.argv = argv
        self.scrollback = Scrollback(scrollback_bytes)
        self.clients: list[Client] = []
        self.child: PtyChild | None = None
        self.state = "starting"
        self.exit_code: int | None = None
        self.started_at = 0.0
        self.size = DEFAULT_SIZE
        self._pending_input = bytearray()
        self._writer_armed = False
        self._loop = asyncio.get_event_loop()
        self.attention = Attention(attention_quiet_ms)  # BYD-2
        self._on_attention = on_attention
        self._attention_timer: asyncio.TimerHandle | None = None
        self.recorder: RecorderProcess | None = None  # BYD-3

    # -- process ------------------------------------------------------------

    def attach_process(self, child: PtyChild) -> None:
        self.child = child
        self.state = "running"
        self.exit_code = None
        self.started_at = time.monotonic()
        set_winsize(child.master_fd, *self.size)
        self._loop.add_reader(child.master_fd, self._on_readable)

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child else None

    def _on_readable(self) -> None:
        data, closed = _read_chunk(self.child.master_fd)
        if data:
            self.emit(data)
        if closed:  # every slave fd is closed; the exit report follows
            self._loop.remove_reader(self.child.master_fd)

    def process_exited(self, code: int) -> None:
        """Drain what the process wrote before it died, then close the PTY."""
        child, self.child = self.child, None
        if child is None:
            return
        fd = child.master_fd
        self._loop.remove_reader(fd)
        if self._writer_armed:
            self._loop.remove_writer(fd)
            self._writer_armed = False
        self._pending_input.clear()
        for _ in range(64):
            data, closed = _read_chunk(fd)
            if data:
                self.emit(data)
            if closed or not data:
                break
        os.close(fd)
        self.state = "exited"
        self.exit_code = code

    # -- output -------------------------------------------------------------

    def emit(self, data: bytes) -> None:
        """Clients first: the bookkeeping after them is off the path of an
        echoed keystroke."""
        for client in self.clients:
            client.output(data)
        self.scrollback.append(data)
        if self.recorder:
            self.recorder.output(data)
        changed = self.attention.feed(data)
        if changed:
            self._on_attention(self, changed)
        if self._attention_timer is None:
            self._arm_attention()

    # -- attention (BYD-2) and recording (BYD-3) ----------------------------

    def _arm_attention(self) -> None:
        due = self.attention.deadline()
        if due is not None:  # Attention's clock is time.monotonic, like loop.time()
            self._attention_timer = self._loop.call_at(due, self._attention_due)

    def _attention_due(self) -> None:
        self._attention_timer = None
        changed = self.attention.tick()
        if changed:
            self._on_attention(self, changed)
        else:
            self._arm_attention()  # output came meanwhile: the deadline moved

    def start_recording(self, directory) -> None:
        """Record from now on. A recording that cannot start (no room on the disk,
        no process left) is logged; the PTY goes on unrecorded."""
        if self.recorder is None:
            try:
                self.recorder = RecorderProcess(directory, self.id, *self.size)
            except OSError as exc:
                log(f"recording of pty {self.id} not started: {exc}")

    def stop_recording(self) -> asyncio.Future | None:
        """End the recording; the future is done once all of it is on disk."""
        if self.recorder is None:
            return None
        recorder, self.recorder = self.recorder, None
        recorder.close()
        return recorder.ended

    @property
    def display_state(self) -> str:
        if self.state == "running" and self.attention.state == WAITING:
            return "waiting"
        return self.state

    def notice(self, text: str) -> None:
        self.emit(dim_line(text))

    def broadcast(self, obj: dict) -> None:
        for client in self.clients:
            client.event(obj)

    # -- input --------------------------------------------------------------

    def write_input(self, data: bytes) -> None:
        """Input in arrival order (PTY-1); queued while the PTY buffer is full."""
        if self.child is None or not data:
            return
        if self._pending_input:
            self._pending_input += data
            return
        try:
            n = os.write(self.child.master_fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            return
        if n < len(data):
            self._pending_input += data[n:]
            self._loop.add_writer(self.child.master_fd, self._flush_input)
            self._writer_armed = True

    def _flush_input(self) -> None:
        try:
            n = os.write(self.child.master_fd, self._pending_input)
        except BlockingIOError:
            return
        except OSError:
            n = len(self._pending_input)
        del self._pending_input[:n]
        if not self._pending_input:
            self._loop.remove_writer(self.child.master_fd)
            self._writer_armed = False

    # -- clients ------------------------------------------------------------

    def add_client(self, client: Client, offset: int | None = None,
                   announce=lambda start: None) -> int:
        """Attach with a replay (PTY-3), or resume from ``offset`` (BYD-1).

        ``announce(start)`` runs before any byte is sent, with the stream
        offset of the first byte the client will receive; returns that offset.
        A client that comes after the process has exited for good (a shell's
        exit can be handled while its client is still connecting) gets the
        replay and the exit, then is ended.
        """
        missed = self.scrollback.since(offset) if offset is not None else None
        if missed is not None:
            start, data = offset, missed
        else:
            data = self.scrollback.replay()
            start = self.scrollback.end - len(data)
        announce(start)
        if data:
            client.output(data)
        if self.state == "exited":  # DMN-8
            client.event(self.exit_event())
            client.end()
            return start
        self.clients.append(client)
        self.resize(nudge=True)
        return start

    def exit_event(self) -> dict:
        return {"event": "pty_exited", "pty": self.id, "code": self.exit_code}

    def remove_client(self, client: Client) -> None:
        if client in self.clients:
            self.clients.remove(client)
            self.resize()

    def resize(self, nudge: bool = False) -> None:
        """PTY-4: smallest cols and rows among clients that reported a size."""
        sizes = [c.size for c in self.clients if c.size]
        if sizes:
            self.size = (min(s[0] for s in sizes), min(s[1] for s in sizes))
        if self.child is None:
            return
        cols, rows = self.size
        if nudge:  # a size change makes full-screen programs repaint (SIGWINCH)
            set_winsize(self.child.master_fd, cols, max(1, rows - 1))
        set_winsize(self.child.master_fd, cols, rows)
        if self.recorder:
            self.recorder.resize(cols, rows)

    def close(self) -> asyncio.Future | None:
        """The console is going away: timers and recording end (the future:
        ``stop_recording``'s)."""
        if self._attention_timer:
            self._attention_timer.cancel()
            self._attention_timer = None
        return self.stop_recording()

    def end_clients(self) -> None:
        for client in list(self.clients):
            client.end()
        self.clients.clear()

    def info(self) -> dict:
        return {
            "id": self.id,
            "role": self.role,
            "command": " ".join(self.argv),
            "state": self.display_state,
            "exit_code": self.exit_code,
            "clients": len(self.clients),
            "size": list(self.size),
        }
