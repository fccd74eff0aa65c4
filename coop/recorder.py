"""A PTY's asciicast recording written by a process of its own (BYD-3).

Turning terminal output into JSON costs about as much CPU per byte as
everything else the session actor does with it; in the actor it would slow
every client of the session. So the actor only timestamps each chunk and
hands it over, and a process forked for the recording escapes and writes it
(``coop.recording.Recorder``), on another core when there is one.

The bytes go through a ring of memory shared by the two processes: the actor
copies a chunk in and sends a small record through a pipe naming where it is;
the recorder escapes it from there and then tells how far it has read by
storing that position in the ring's first word (one aligned 8-byte store and
load: never seen half-written). Moving the bytes through the pipe instead
cost a kernel copy on each side, a sixth of the recording's CPU (the ring
is ``RING_SIZE`` of memory per recorded PTY, paged in as a burst fills it). The
pipe keeps the order and the end: each record is a header ``<kind u8, time
f64, length u32>`` (time: ``time.monotonic()`` when the actor saw the bytes,
so the recorder's own delay never shows in the timing), then ``length``
bytes: the output itself, where the ring has no room; ``<start u64, length
u32>`` of output in the ring; or ``<cols u16, rows u16>`` for a resize. The
recorder lets a burst gather and writes it as few events (``merge_output``);
what it recorded is on disk within ``FLUSH_DELAY``. The actor never waits
for the recorder while the pipe has room; what does not fit waits in a
backlog, and a backlog past ``BACKLOG_LIMIT`` (a recorder stopped or stuck)
is written blocking: the session slows down rather than lose recorded bytes.
If the actor dies, the recorder still writes everything it was sent, then
exits at the pipe's EOF.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import gc
import mmap
import os
import select
import signal
import struct
import time
from pathlib import Path

from coop.launcher import reset_signals
from coop.log import log
from coop.recording import Recorder

OUTPUT, RESIZE, SHARED = 0, 1, 2
_HEADER = struct.Struct("<BdI")
_SIZE = struct.Struct("<HH")
_SPAN = struct.Struct("<QI")
PIPE_SIZE = 1 << 20
RING_SIZE = 2 << 20
_RING_DATA = 64  # the ring's bytes start after its read position (own cache line)
BACKLOG_LIMIT = 8 << 20
MERGE_WINDOW = 0.005  # output this close to an event's start joins that event
MERGE_LIMIT = 256 << 10
FLUSH_DELAY = 1.0
_HEAP_KEEP = 16 << 20  # bytes of freed heap the recorder keeps instead of returning
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


class RecordDecoder:
    """Sans-I/O: pipe bytes in, ``(kind, time, payload)`` records out. Payloads are
    views of the fed bytes (valid until the next ``feed``): output the ring had
    no room for comes this way."""

    def __init__(self):
        self._rest = b""

    def feed(self, data: bytes) -> list[tuple[int, float, memoryview]]:
        if self._rest:
            data = self._rest + data
        view = memoryview(data)
        records = []
        pos = 0
        while len(data) - pos >= _HEADER.size:
            kind, at, length = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + length
            if end > len(data):
                break
            records.append((kind, at, view[pos + _HEADER.size:end]))
            pos = end
        self._rest = bytes(view[pos:])
        return records


def merge_output(records, window: float = MERGE_WINDOW, limit: int = MERGE_LIMIT):
    """Consecutive output records less than ``window`` seconds after the first of
    their run become one (at the first's time, up to ``limit`` bytes): a busy PTY
    is read in pieces of a few KiB, and each event costs the same fixed work on
    top of its bytes. Replay timing moves by less than ``window``."""
    run: list = []
    run_at = 0.0
    size = 0
    for kind, at, payload in records:
        if run and (kind != OUTPUT or at - run_at >= window or size + len(payload) > limit):
            yield OUTPUT, run_at, b"".join(run)
            run = []
        if kind != OUTPUT:
            yield kind, at, payload
            continue
        if not run:
            run_at, size = at, 0
        run.append(payload)
        size += len(payload)
    if run:
        yield OUTPUT, run_at, b"".join(run)


class Ring:
    """Memory shared with the recorder process that chunks of output pass
    through. The actor ``put``s a chunk where it fits whole; the recorder
    ``get``s it by the start ``put`` returned and, once done with everything
    it got, publishes how far it has read with ``done``. Positions count
    every byte ever used, so the space left is ``size`` minus what is put and
    not yet read."""

    def __init__(self, size: int = RING_SIZE):
        self.size = size
        self._map = mmap.mmap(-1, _RING_DATA + size)  # anonymous, MAP_SHARED: kept over fork
        self._read = memoryview(self._map).cast("Q")  # [0]: the recorder's read position
        self._data = memoryview(self._map)[_RING_DATA:]
        self._written = 0  # the actor's: where the next chunk may start
        self._got = 0  # the recorder's: the end of what it has got

    def put(self, data: bytes) -> int | None:
        """Copy ``data`` in; its start, or None when there is no room now."""
        length = len(data)
        offset = self._written % self.size
        start = self._written
        if offset + length > self.size:  # a chunk never wraps: skip to the beginning
            start += self.size - offset
            offset = 0
        if start + length - self._read[0] > self.size:
            return None
        self._data[offset:offset + length] = data
        self._written = start + length
        return start

    def get(self, start: int, length: int) -> memoryview:
        offset = start % self.size
        self._got = start + length
        return self._data[offset:offset + length]

    def done(self) -> None:
        """Nothing got so far is used any more: the actor may overwrite it."""
        self._read[0] = self._got

    def close(self) -> None:
        self._read.release()
        self._data.release()
        self._map.close()


class RecorderProcess:
    """The actor's end: same calls as a ``Recorder``, served by a forked process."""

    def __init__(self, directory: Path, pty: int, cols: int, rows: int, *,
                 backlog_limit: int = BACKLOG_LIMIT, ring_size: int = RING_SIZE):
        self.backlog_limit = backlog_limit
        self._backlog = bytearray()
        self._ring = Ring(ring_size)
        self._loop = asyncio.get_running_loop()
        self.ended = self._loop.create_future()  # done once the process has written all and exited
        started = time.monotonic()
        read_end, self._fd = os.pipe()
        try:
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size: the default 64 KiB, a larger backlog
        self.pid = os.fork()
        if self.pid == 0:
            _recorder_main(read_end, self._ring, Path(directory), pty, cols, rows, started)  # never returns
        os.close(read_end)
        os.set_blocking(self._fd, False)
        self._pidfd = os.pidfd_open(self.pid)

    def output(self, data: bytes) -> None:
        if self._fd < 0:
            return
        start = self._ring.put(data)
        if start is None:  # the recorder is behind: the bytes go through the pipe
            self._send(OUTPUT, data)
        else:
            self._send(SHARED, _SPAN.pack(start, len(data)))

    def resize(self, cols: int, rows: int) -> None:
        self._send(RESIZE, _SIZE.pack(cols, rows))

    def close(self) -> None:
        """Send what is left, end the pipe; the process exits once it has written
        everything and is reaped then."""
        if self._fd < 0:
            return
        if self._backlog:
            self._loop.remove_writer(self._fd)
            self._write_blocking()
            if self._fd < 0:
                return  # the recorder died meanwhile (``_gone``)
        self._end()

    # -- helpers ----------------------------------------------------------------

    def _send(self, kind: int, payload: bytes) -> None:
        if self._fd < 0:
            return
        head = _HEADER.pack(kind, time.monotonic(), len(payload))
        if self._backlog:
            self._backlog += head
            self._backlog += payload
            if len(self._backlog) > self.backlog_limit:
                self._loop.remove_writer(self._fd)
                self._write_blocking()
            return
        try:
            sent = os.writev(self._fd, [head, payload])
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # the recorder died: nothing can be written any more
            self._gone(exc)
            return
        if sent < len(head) + len(payload):
            self._backlog += (head + payload)[sent:]
            self._loop.add_writer(self._fd, self._drain)

    def _drain(self) -> None:
        try:
            sent = os.write(self._fd, self._backlog)
        except BlockingIOError:
            return
        except OSError as exc:
            self._gone(exc)
            return
        del self._backlog[:sent]
        if not self._backlog:
            self._loop.remove_writer(self._fd)

    def _write_blocking(self) -> None:
        os.set_blocking(self._fd, True)
        try:
            with memoryview(self._backlog) as pending:
                done = 0
                while done < len(pending):
                    done += os.write(self._fd, pending[done:])
        except OSError as exc:
            self._gone(exc)
            return
        finally:
            if self._fd >= 0:
                os.set_blocking(self._fd, False)
        del self._backlog[:]

    def _gone(self, exc: OSError) -> None:
        log(f"recording of pty stopped: the recorder process is gone ({exc.strerror})")
        self._loop.remove_writer(self._fd)
        self._backlog = bytearray()
        self._end()

    def _end(self) -> None:
        """Close the pipe (the recorder's EOF) and drop the actor's side of the
        ring (the recorder keeps its own mapping); reap the process once it exits."""
        os.close(self._fd)
        self._fd = -1
        self._ring.close()
        self._loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        self._loop.remove_reader(self._pidfd)
        try:
            os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            pass
        os.close(self._pidfd)
        if not self.ended.done():
            self.ended.set_result(None)


def _keep_freed_memory() -> None:
    """Every event allocates and frees buffers of a few hundred KiB; by default
    glibc returns such memory to the kernel at once, and faulting fresh zeroed
    pages back in cost more than escaping the bytes. Keep it (glibc only)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return
    mallopt(_M_TRIM_THRESHOLD, _HEAP_KEEP)
    mallopt(_M_MMAP_THRESHOLD, _HEAP_KEEP)


def _from_ring(records, ring: Ring):
    """Records with the output in the ring as views of it."""
    for kind, at, payload in records:
        if kind == SHARED:
            yield OUTPUT, at, ring.get(*_SPAN.unpack(payload))
        else:
            yield kind, at, payload


def _recorder_main(fd: int, ring: Ring, directory: Path, pty: int, cols: int, rows: int,
                   started: float) -> None:
    """The forked recorder: records from ``fd`` into the cast until EOF, then exit."""
    code = 0
    gc.freeze()  # never copy the actor's heap by collecting it
    try:
        signal.set_wakeup_fd(-1)
        reset_signals()
        os.closerange(3, fd)
        os.closerange(fd + 1, 1 << 30)
        os.set_blocking(fd, False)
        _keep_freed_memory()
        recorder = Recorder(directory, pty, cols, rows, started=started)
        decoder = RecordDecoder()
        flush_at = None  # what was recorded is on disk within FLUSH_DELAY
        while True:
            try:
                data = os.read(fd, PIPE_SIZE)
            except BlockingIOError:
                wait = None if flush_at is None else max(0.0, flush_at - time.monotonic())
                if not select.select([fd], [], [], wait)[0]:
                    recorder.flush()
                    flush_at = None
                continue
            if not data:
                break
            for kind, at, payload in merge_output(_from_ring(decoder.feed(data), ring)):
                if kind == OUTPUT:
                    recorder.output(payload, at)  # a copy: merge_output joins
                elif kind == RESIZE:
                    recorder.resize(*_SIZE.unpack(payload), at)
            ring.done()
            now = time.monotonic()
            if flush_at is None:
                flush_at = now + FLUSH_DELAY
            elif now >= flush_at:  # output that never pauses is written out too
                recorder.flush()
                flush_at = None
            time.sleep(MERGE_WINDOW)  # let a burst gather: one wakeup per pass over many records
        recorder.close()
    except BaseException as exc:  # noqa: BLE001 — never unwind into the actor's code
        try:
            os.write(2, f"coop: recorder for pty {pty}: {exc}\n".encode())
        except OSError:
            pass
        code = 1
    os._exit(code)
