"""A PTY's asciicast recording written by a process of its own (BYD-3).

Turning terminal output into JSON costs about as much CPU per byte as
everything else the session actor does with it. So the actor only timestamps
each chunk and hands it over, and a process forked for the recording escapes
and writes it (``coop.recording.Recorder``).

That work is put off while the PTY streams: on a machine whose cores are all
busy with the stream (the PTY's producer, the kernel's PTY work, the actor,
the clients), a recorder working alongside slowed the stream by 12 % on two
cores; after the stream pauses it slows nothing. So the output waits in a
spool file (disk, through the page cache: a burst costs no memory that stays
taken) until its PTY has been quiet for ``QUIET`` (at once, at the recording's
end), and no longer than ``FLUSH_DELAY`` when it comes slower than
``FIREHOSE`` bytes a second; once ``DEFER_LIMIT`` waits, the recorder converts
it anyway. Converted bytes are punched out of the spool, so its dirty pages
are dropped, never written to disk.

The actor gathers the chunks of each ``BATCH_WINDOW`` into one batch,
appends it to the spool (one ``pwritev``: a kernel copy into the page cache)
and sends a small record through a pipe naming where it is; the pipe keeps
the order and the end. Each record is a header ``<kind u8, time f64, length
u32>`` (time: ``time.monotonic()`` when the actor saw the batch's first
bytes, so the recorder's delay never shows in the timing), then ``length``
bytes: ``<offset u64, length u32>`` of output in the spool; the output
itself, once ``SPOOL_LIMIT`` waits unconverted (a recorder stopped or
stuck); or ``<cols u16, rows u16>`` for a resize. The actor never waits for
the recorder while the pipe has room; what does not fit waits in a backlog,
and a backlog past ``BACKLOG_LIMIT`` is written blocking: the session slows
down rather than lose recorded bytes. If the actor dies, the recorder still
writes everything it was handed (all but the last ``BATCH_WINDOW`` of
output), then exits at the pipe's EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import functools
import gc
import mmap
import os
import select
import signal
import struct
import tempfile
import time
from pathlib import Path

from coop.launcher import reset_signals
from coop.log import log
from coop.recording import Recorder

OUTPUT, RESIZE, SPOOLED = 0, 1, 2
_HEADER = struct.Struct("<BdI")
_SIZE = struct.Struct("<HH")
_SPAN = struct.Struct("<QI")
PIPE_SIZE = 1 << 20
BACKLOG_LIMIT = 8 << 20
SPOOL_LIMIT = 1 << 30  # unconverted bytes past which the actor sends output through the pipe
DEFER_LIMIT = 256 << 20  # unconverted bytes past which the recorder converts while the PTY streams
REWIND_AT = 64 << 20  # a spool this long starts over at its beginning once all of it is converted
QUIET = 0.2  # a pause in the output this long lets the recorder convert
FLUSH_DELAY = 1.0  # the longest output slower than FIREHOSE waits to be converted
FIREHOSE = 4 << 20  # bytes a second: output faster than this waits for a pause
GATHER = 0.02  # the recorder reads the pipe at most this often while it waits
PIECE = 4 << 20  # spool bytes converted between looks at the pipe
BATCH_WINDOW = 0.005  # output this close after a batch's first chunk joins that batch
BATCH_LIMIT = 256 << 10
_IOV_MAX = 1024
_HEAP_KEEP = 16 << 20  # bytes of freed heap the recorder keeps instead of returning
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 1, 2
_PAGE = mmap.PAGESIZE


class RecordDecoder:
    """Sans-I/O: pipe bytes in, ``(kind, time, payload)`` records out. Payloads are
    views of the fed bytes."""

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


def conversion_due(oldest: float, newest: float, waiting: int, now: float) -> bool:
    """Sans-I/O: whether the recorder converts what waits, ``waiting`` bytes
    that the actor saw from ``oldest`` to ``newest``. Output streaming faster
    than ``FIREHOSE`` waits for a pause of ``QUIET`` (or for ``DEFER_LIMIT``);
    slower output, ``FLUSH_DELAY`` at most."""
    if now - newest >= QUIET or waiting >= DEFER_LIMIT:
        return True
    age = now - oldest
    return age >= FLUSH_DELAY and waiting < FIREHOSE * age


class Spool:
    """The file output waits in until the recorder has converted it. The actor
    ``put``s each batch after the last; the recorder ``read``s chunks back by
    offset and, once they are in the cast, ``release``s them: their blocks are
    freed, and the count of bytes released so far is published in memory
    shared by the two processes (one aligned 8-byte store and load: never seen
    half-written), so the actor knows how much waits. The file has no name
    (``O_TMPFILE`` where the filesystem has it, unlinked at once elsewhere):
    nothing is left behind by a process that dies."""

    def __init__(self, directory: Path, limit: int = SPOOL_LIMIT):
        self.limit = limit
        self._file = tempfile.TemporaryFile(dir=directory, buffering=0)
        self.fd = self._file.fileno()
        self._map = mmap.mmap(-1, 8)  # anonymous, MAP_SHARED: kept over fork
        self._released = memoryview(self._map).cast("Q")
        self._end = 0  # the actor's: where the next chunk goes
        self._put = 0  # the actor's: bytes ever put
        self._freed = 0  # the recorder's: the spool's blocks before this are freed
        self._punch = True  # the recorder's: whether the filesystem frees blocks

    def put(self, chunks: list[bytes], size: int) -> int | None:
        """Append ``chunks`` (``size`` bytes; at most IOV_MAX of them, written by
        one call: on ext4 each write call costs as much as copying 10 KiB);
        their offset, or None when ``limit`` waits already. OSError: the file
        could not take them (a full disk)."""
        waiting = self._put - self._released[0]
        if waiting + size > self.limit:
            return None
        if not waiting and self._end >= REWIND_AT:
            self._end = 0  # everything was converted: the file stays short
        offset = self._end
        if os.pwritev(self.fd, chunks, offset) < size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._end += size
        self._put += size
        return offset

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) < length:
            raise OSError(errno.EIO, f"spool ends at {offset + len(data)}, not {offset + length}")
        return data

    def release(self, end: int, count: int) -> None:
        """``count`` more bytes are converted, the last ending at offset ``end``."""
        if end < self._freed:
            self._freed = 0  # the actor started over (all before was released)
        upto = end - end % _PAGE  # the page ``end`` is in may hold what is not converted yet
        if self._punch and upto > self._freed:
            if _fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                          self._freed, upto - self._freed):
                self._punch = False  # not on this filesystem: the blocks stay till the file's end
            self._freed = upto
        self._released[0] += count

    def close(self) -> None:
        self._released.release()
        self._map.close()
        self._file.close()


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    return _libc().fallocate(fd, mode, ctypes.c_int64(offset), ctypes.c_int64(length))


class RecorderProcess:
    """The actor's end: same calls as a ``Recorder``, served by a forked process."""

    def __init__(self, directory: Path, pty: int, cols: int, rows: int, *,
                 backlog_limit: int = BACKLOG_LIMIT, spool_limit: int = SPOOL_LIMIT):
        self.pty = pty
        self.backlog_limit = backlog_limit
        self._backlog = bytearray()
        self._batch: list[bytes] = []
        self._batch_size = 0
        self._batch_at = 0.0
        self._batch_timer: asyncio.TimerHandle | None = None
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._loop = asyncio.get_running_loop()
        self.ended = self._loop.create_future()  # done once the process has written all and exited
        started = time.monotonic()
        with contextlib.ExitStack() as undo:  # undone if the process cannot start
            self._spool = Spool(directory, spool_limit)
            undo.callback(self._spool.close)
            read_end, self._fd = os.pipe()
            undo.callback(os.close, self._fd)
            undo.callback(os.close, read_end)
            try:
                fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # over /proc/sys/fs/pipe-max-size: the default 64 KiB, a larger backlog
            self.pid = os.fork()
            if self.pid == 0:
                _recorder_main(read_end, self._spool, directory, pty, cols, rows, started)  # never returns
            undo.pop_all()
        os.close(read_end)
        os.set_blocking(self._fd, False)
        self._pidfd = os.pidfd_open(self.pid)

    def output(self, data: bytes) -> None:
        """Chunks become one event per ``BATCH_WINDOW`` (at its first chunk's
        time: replay moves by less than that): a busy PTY is read in pieces of
        a few KiB, and each spool write and each event costs the same fixed
        work on top of its bytes."""
        if self._fd < 0:
            return
        now = time.monotonic()
        if self._batch and now - self._batch_at >= BATCH_WINDOW:
            self._flush()
        if not self._batch:
            self._batch_at = now
            self._batch_timer = self._loop.call_later(BATCH_WINDOW, self._flush)
        self._batch.append(data)
        self._batch_size += len(data)
        if self._batch_size >= BATCH_LIMIT or len(self._batch) >= _IOV_MAX:
            self._flush()

    def resize(self, cols: int, rows: int) -> None:
        self._flush()
        self._send(RESIZE, _SIZE.pack(cols, rows), time.monotonic())

    def close(self) -> None:
        """Send what is left, end the pipe; the process exits once it has written
        everything and is reaped then."""
        self._flush()
        if self._fd < 0:
            return
        if self._backlog:
            self._loop.remove_writer(self._fd)
            self._write_blocking()
            if self._fd < 0:
                return  # the recorder died meanwhile (``_gone``)
        self._end()

    # -- helpers ----------------------------------------------------------------

    def _flush(self) -> None:
        """Hand the batch over: into the spool, or while ``spool_limit`` waits
        there, through the pipe."""
        if self._batch_timer:
            self._batch_timer.cancel()
            self._batch_timer = None
        batch, size = self._batch, self._batch_size
        self._batch, self._batch_size = [], 0
        if not batch or self._fd < 0:
            return
        try:
            offset = self._spool.put(batch, size)
        except OSError as exc:
            self._stop(f"the spool cannot take more ({exc.strerror})")
            return
        if offset is None:  # the recorder is far behind
            self._send(OUTPUT, b"".join(batch), self._batch_at)
        else:
            self._send(SPOOLED, _SPAN.pack(offset, size), self._batch_at)

    def _send(self, kind: int, payload: bytes, at: float) -> None:
        if self._fd < 0:
            return
        head = _HEADER.pack(kind, at, len(payload))
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
        self._stop(f"the recorder process is gone ({exc.strerror})")

    def _stop(self, why: str) -> None:
        log(f"recording of pty {self.pty} stopped: {why}")
        self._loop.remove_writer(self._fd)
        if self._batch_timer:
            self._batch_timer.cancel()
            self._batch_timer = None
        self._batch, self._batch_size = [], 0
        self._backlog = bytearray()
        self._end()

    def _end(self) -> None:
        """Close the pipe (the recorder's EOF) and drop the actor's side of the
        spool (the recorder keeps its own); reap the process once it exits."""
        os.close(self._fd)
        self._fd = -1
        self._spool.close()
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
        mallopt = _libc().mallopt
    except AttributeError:
        return
    mallopt(_M_TRIM_THRESHOLD, _HEAP_KEEP)
    mallopt(_M_MMAP_THRESHOLD, _HEAP_KEEP)


class _Conversion:
    """The recorder's side: records from the pipe wait in ``pending`` until
    ``conversion_due``; ``convert`` then writes the oldest of them, a piece at
    a time, into the cast and releases their spool bytes."""

    def __init__(self, spool: Spool, recorder: Recorder):
        self.spool = spool
        self.recorder = recorder
        self.pending: list[tuple] = []  # (kind, time, size, payload): bytes or a spool span
        self.waiting = 0  # bytes in the spool that pending records name

    def add(self, kind: int, at: float, payload: memoryview) -> None:
        if kind == SPOOLED:
            offset, length = _SPAN.unpack(payload)
            self.pending.append((OUTPUT, at, length, (offset, length)))
            self.waiting += length
        else:
            self.pending.append((kind, at, len(payload), bytes(payload)))

    def due(self) -> bool:
        return bool(self.pending) and conversion_due(self.pending[0][1], self.pending[-1][1],
                                                     self.waiting, time.monotonic())

    def wait(self) -> float | None:
        """Seconds until a conversion is due if nothing more comes."""
        return max(0.0, self.pending[-1][1] + QUIET - time.monotonic()) if self.pending else None

    def convert(self, limit: int = PIECE) -> None:
        """Write the oldest pending records, about ``limit`` bytes of them."""
        count = size = 0
        while count < len(self.pending) and size < limit:
            size += self.pending[count][2]
            count += 1
        taken = self.pending[:count]
        del self.pending[:count]
        for kind, at, _, payload in taken:
            if isinstance(payload, tuple):  # output waiting in the spool
                payload = self.spool.read(*payload)
            if kind == OUTPUT:
                self.recorder.output(payload, at)
            elif kind == RESIZE:
                self.recorder.resize(*_SIZE.unpack(payload), at)
        spans = [payload for _, _, _, payload in taken if isinstance(payload, tuple)]
        if spans:
            released = sum(length for _, length in spans)
            self.spool.release(sum(spans[-1]), released)
            self.waiting -= released


def _recorder_main(fd: int, spool: Spool, directory: Path, pty: int, cols: int, rows: int,
                   started: float) -> None:
    """The forked recorder: records from ``fd`` into the cast until EOF, then exit."""
    code = 0
    gc.freeze()  # never copy the actor's heap by collecting it
    try:
        signal.set_wakeup_fd(-1)
        reset_signals()
        keep = sorted({fd, spool.fd})
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, 1 << 30)
        os.set_blocking(fd, False)
        _keep_freed_memory()
        conversion = _Conversion(spool, Recorder(directory, pty, cols, rows, started=started))
        decoder = RecordDecoder()
        while True:
            try:
                data = os.read(fd, PIPE_SIZE)
            except BlockingIOError:
                data = None
            if data == b"":
                break
            if data:
                for kind, at, payload in decoder.feed(data):
                    conversion.add(kind, at, payload)
            if conversion.due():
                conversion.convert()
                continue  # a look at the pipe between pieces: the PTY may stream again
            conversion.recorder.flush()
            if data:
                time.sleep(GATHER)  # the PTY streams: read its records in batches
            else:
                select.select([fd], [], [], conversion.wait())
        while conversion.pending:
            conversion.convert()
        conversion.recorder.close()
    except BaseException as exc:  # noqa: BLE001 — never unwind into the actor's code
        try:
            os.write(2, f"coop: recorder for pty {pty}: {exc}\n".encode())
        except OSError:
            pass
        code = 1
    os._exit(code)
