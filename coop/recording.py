"""Asciicast v2 recordings of a PTY's output (BYD-3).

One file per PTY and start, ``<dir>/<pty>-<unix time>-<part>.cast``: a JSON
header line, then ``[seconds, "o", text]`` for output and ``[seconds, "r",
"COLSxROWS"]`` for resizes. Input is never recorded. A file that reaches the
size cap is closed and the recording continues in the next part, which starts
with its own header so every part plays on its own.
"""

from __future__ import annotations

import codecs
import json
import os
import time
from pathlib import Path
from typing import Callable

DEFAULT_CAP = 64 << 20
FLUSH_AT = 256 << 10
_IOV_MAX = 1024

# One bytes.replace pass per character that occurs, each found at memchr speed:
# five times faster than the json module on terminal output (the cost that
# counts when recording a fast PTY), where most of these never occur. In UTF-8,
# a byte below 0x20 is always that control character itself, never part of a
# longer sequence. The backslash goes first: later escapes add backslashes.
_SHORT_ESCAPES = {b"\\": b"\\\\", b'"': b'\\"', b"\n": b"\\n", b"\r": b"\\r", b"\t": b"\\t",
                  b"\b": b"\\b", b"\f": b"\\f"}
_ESCAPES = tuple(_SHORT_ESCAPES.items()) + tuple(
    (bytes([c]), b"\\u%04x" % c) for c in range(32) if bytes([c]) not in _SHORT_ESCAPES)


def json_escape(utf8: bytes) -> bytes:
    """The inside of the JSON string literal of ``utf8`` (valid UTF-8), in UTF-8:
    ``json.dumps(text, ensure_ascii=False)`` without its quotes, encoded."""
    for plain, escaped in _ESCAPES:
        if plain in utf8:
            utf8 = utf8.replace(plain, escaped)
    return utf8


class Recorder:
    """Writes one PTY's recording. Event times are ``clock()`` when the event is
    written, or the ``at`` given (same clock) when the bytes were seen earlier;
    ``started``: the recording's time zero, when not now."""

    def __init__(self, directory: Path, pty: int, cols: int, rows: int, *,
                 cap: int = DEFAULT_CAP, term: str = "xterm-256color",
                 clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time, started: float | None = None):
        self.directory = Path(directory)
        self.pty = pty
        self.size = (cols, rows)
        self.cap = cap
        self.term = term
        self.clock = clock
        self.wallclock = wallclock
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._fd = -1
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._written = 0
        self._part = 0
        self._started = 0.0
        self._stem = f"{pty}-{int(wallclock())}"
        self._open(clock() if started is None else started)

    @property
    def path(self) -> Path:
        return self.directory / f"{self._stem}-{self._part:03d}.cast"

    def _open(self, started: float) -> None:
        """The next free part (never overwrite, never follow a planted link)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            try:
                fd = os.open(self.path, flags, 0o600)
                break
            except FileExistsError:
                self._part += 1
        self._fd = fd
        self._started = started
        header = {"version": 2, "width": self.size[0], "height": self.size[1],
                  "timestamp": int(self.wallclock()), "env": {"TERM": self.term}}
        self._write(json.dumps(header).encode() + b"\n")
        self.flush()  # a new recording is a valid (empty) cast at once

    def _write(self, *parts: bytes) -> None:
        for part in parts:
            self._pending.append(part)
            self._pending_size += len(part)
            self._written += len(part)
        if self._pending_size >= FLUSH_AT:
            self.flush()

    def _event(self, code: bytes, utf8: bytes, at: float | None) -> None:
        at = self.clock() if at is None else at
        if self._written >= self.cap:
            self._close_part()
            self._part += 1
            self._written = 0
            self._open(at)
        self._write(b'[%.6f, "%s", "' % (max(0.0, at - self._started), code),
                    json_escape(utf8), b'"]\n')

    def output(self, data: bytes, at: float | None = None) -> None:
        if data.isascii() and not self._decoder.getstate()[0]:
            utf8 = bytes(data)  # most output: no decoding (nor a copy, for bytes)
        else:
            utf8 = self._decoder.decode(data).encode("utf-8")
        if utf8:
            self._event(b"o", utf8, at)

    def resize(self, cols: int, rows: int, at: float | None = None) -> None:
        if (cols, rows) != self.size:
            self.size = (cols, rows)
            self._event(b"r", f"{cols}x{rows}".encode(), at)

    def flush(self) -> None:
        """Write what is pending (one writev: the pieces are not joined first)."""
        pieces = self._pending
        while pieces:
            done = os.writev(self._fd, pieces[:_IOV_MAX])
            while pieces and done >= len(pieces[0]):
                done -= len(pieces.pop(0))
            if done:
                pieces[0] = pieces[0][done:]
        self._pending_size = 0

    def _close_part(self) -> None:
        self.flush()
        os.close(self._fd)
        self._fd = -1

    def close(self) -> None:
        if self._fd >= 0:
            tail = self._decoder.decode(b"", final=True)
            if tail:
                self._event(b"o", tail.encode("utf-8"), None)
            self._close_part()


def read_cast(path: Path) -> tuple[dict, list[list]]:
    """Header and events of one recording; ValueError with the line number. A
    half-written last line (the session may still be recording) is left out."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")[:-1]  # what follows the last line break is unfinished
    if not lines:
        raise ValueError(f"{path}: empty recording")
    try:
        header = json.loads(lines[0])
        events = [json.loads(line) for line in lines[1:] if line]
    except ValueError as exc:
        raise ValueError(f"{path}: not an asciicast v2 file ({exc})") from None
    if not isinstance(header, dict) or header.get("version") != 2:
        raise ValueError(f"{path}: not an asciicast v2 file")
    return header, events


def play(path: Path, write: Callable[[bytes], None], *, speed: float = 1.0,
         sleep: Callable[[float], None] = time.sleep, max_idle: float | None = None) -> None:
    """Replay output events with their original timing divided by ``speed``."""
    _header, events = read_cast(path)
    last = 0.0
    for t, code, data in events:
        delay = (t - last) / speed
        if max_idle is not None:
            delay = min(delay, max_idle)
        if delay > 0:
            sleep(delay)
        last = t
        if code == "o":
            write(data.encode("utf-8"))
