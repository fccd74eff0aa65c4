"""Sans-I/O "waiting for you" detection for one PTY (BYD-2).

A PTY is ``busy`` while it prints, ``waiting`` after it rings the bell (BEL
outside an OSC string), sends an OSC 9 / OSC 777 notification, or goes quiet
for ``quiet_ms`` after a burst while the cursor's line looks like a prompt.
It is a small state machine over the bytes already flowing to clients: no
terminal emulator, the clock is injected.
"""

from __future__ import annotations

import re
import time
from typing import Callable

BUSY, WAITING = "busy", "waiting"

PROMPT = re.compile(r"(?:[>?$#:❯›»] |\[[yY]/[nN]\] ?|\([yY]/[nN]\) ?|[❯›»])\s*$")
_LINE_KEEP = 256

# Escape sequences: CSI, OSC (to BEL or ST), DCS/SOS/PM/APC strings, two-byte ESC x.
_SEQUENCE = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
                       rb"|\x1b[PX^_][^\x1b]*\x1b\\|\x1b[ -OQ-WYZ\\`-~]")
# what an escape sequence cut short by the end of a chunk looks like
_PARTIAL = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[PX^_][^\x1b]*\x1b?)?")
_NOTIFY = re.compile(rb"\x1b\](?:9|777);")
_ERASE_LINE = re.compile(rb"\x1b\[[0-2]?[KJ]")
# what a chunk may start with before its first visible character
_INVISIBLE = re.compile(rb"(?:" + _SEQUENCE.pattern + rb"|[\x00-\x1a\x1c-\x1f\x7f])*")
_MAX_HELD = 4096  # an unfinished sequence longer than this is dropped
_TAIL = 8192  # bytes of a long unbroken line that are scanned for the cursor line


class Attention:
    def __init__(self, quiet_ms: int = 3000, clock: Callable[[], float] = time.monotonic):
        self.quiet = quiet_ms / 1000
        self.clock = clock
        self.state = BUSY
        self._last_output: float | None = None
        self._held = b""  # an escape sequence cut by the end of the last chunk
        self._line = bytearray()  # visible text since the last line break

    def feed(self, data: bytes) -> str | None:
        """Account for output; returns the new state when it changed."""
        printable, signalled = self._scan_bytes(data)
        if signalled:
            return self._set(WAITING)
        if printable:
            self._last_output = self.clock()
            return self._set(BUSY)
        return None

    def deadline(self) -> float | None:
        """When ``tick`` may turn a quiet prompt into ``waiting``."""
        if self.state == BUSY and self._last_output is not None:
            return self._last_output + self.quiet
        return None

    def tick(self) -> str | None:
        due = self.deadline()
        if due is None or self.clock() < due:
            return None
        self._last_output = None
        if PROMPT.search(self.line()):
            return self._set(WAITING)
        return None

    def line(self) -> str:
        """The cursor's line, approximately: visible text after the last break."""
        text = bytes(b for b in self._line if b >= 0x20 or b == 0x09)
        return text.decode("utf-8", "replace")

    def _set(self, state: str) -> str | None:
        if state == self.state:
            return None
        self.state = state
        return state

    def _scan_bytes(self, data: bytes) -> tuple[bool, bool]:
        """Signals, whether anything visible was printed, and the cursor's line,
        with C-speed scans that touch most bytes once (this runs on every output
        chunk); escape sequences are stripped only from the cursor's line, or
        from a chunk with a bell. A sequence cut by the chunk's end waits for
        the next chunk."""
        data = self._held + data
        self._held = b""
        esc = data.rfind(b"\x1b", max(0, len(data) - _MAX_HELD))
        while esc >= 0 and _PARTIAL.fullmatch(data, esc):
            data, self._held = data[:esc], data[esc:] + self._held
            esc = data.rfind(b"\x1b", max(0, esc - _MAX_HELD))
        escaped = b"\x1b" in data
        signalled = escaped and b"]" in data and _NOTIFY.search(data) is not None
        if b"\x07" in data:  # a bell, unless it ends an OSC string
            signalled |= b"\x07" in (_SEQUENCE.sub(b"", data) if escaped else data)
        printable = _INVISIBLE.match(data).end() < len(data)
        cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
        line = data[max(cut + 1, len(data) - _TAIL):]
        if b"\x1b" in line:
            line = _SEQUENCE.sub(b"", _ERASE_LINE.sub(b"\n", line))
            erased = line.rfind(b"\n")
            if erased >= 0:
                cut, line = erased, line[erased + 1:]
        if cut >= 0:
            self._line = bytearray(line[-_LINE_KEEP:])
        else:
            self._line += line[-_LINE_KEEP:]
            del self._line[:-_LINE_KEEP]
        return printable, signalled
