"""Per-PTY output ring with absolute offsets and safe cut points (SPEC PTY-3, BYD-1).

Output is kept as a deque of chunks; whole chunks fall off the front once
the rest still holds `capacity` bytes, so memory stays near capacity plus
one chunk and append() never re-copies the ring. Offsets count every byte
ever appended, so a reconnecting client can ask for exactly what it missed.

A replay must not begin inside a UTF-8 sequence or an escape sequence, or
the client's terminal shows garbage until the next reset. append() runs on
every PTY read, so it tracks only the terminal-parser state at each chunk
start, in O(1) Python steps per chunk: an ESC resets the parser from any
state, so only the bytes after the chunk's last ESC decide the state at its
end. replay() then parses forward from the oldest chunk's recorded state
to its first cut point, preferring the start of a line.
"""

from __future__ import annotations

import re
from collections import deque

LINE_SEARCH_BYTES = 16384  # how far replay() looks for a line start before settling for less
_COALESCE_BYTES = 16384  # small reads are joined (up to capacity/8) to keep per-chunk overhead low

# Parser states (a subset of the VT500 parser, enough to know where a sequence ends).
# Negative values -n: inside a UTF-8 sequence, n continuation bytes still expected.
_GROUND, _ESCAPE, _ESCAPE_INTERMEDIATE, _CSI, _STRING = range(5)

_ESC = 0x1B
_STRING_INTRODUCERS = b"]PX^_"  # OSC, DCS, SOS, PM, APC: run until BEL or ESC (ST is ESC \)
_CSI_END = re.compile(rb"[\x1b\x40-\x7e\x80-\xff]")
_STRING_END = re.compile(rb"[\x07\x1b]")


def _utf8_need(lead: int) -> int:
    """Continuation bytes a UTF-8 lead byte announces (0 for ASCII and invalid bytes)."""
    if 0xC2 <= lead <= 0xDF:
        return 1
    if 0xE0 <= lead <= 0xEF:
        return 2
    if 0xF0 <= lead <= 0xF4:
        return 3
    return 0


def _ground_end(data: bytes, pos: int, stop: int) -> int:
    """State at `stop` after text in ground state from `pos` with no ESC in between."""
    for at in range(stop - 1, max(pos, stop - 3) - 1, -1):
        byte = data[at]
        if not 0x80 <= byte <= 0xBF:  # the last byte that is not a continuation
            missing = _utf8_need(byte) - (stop - 1 - at)
            return -missing if missing > 0 else _GROUND
    return _GROUND


def _parse(
    state: int, data: bytes, pos: int, stop: int, to_ground: bool = False
) -> tuple[int, int]:
    """Run the parser over data[pos:stop] from `state`; return (state, offset).

    The offset is `stop`, or with `to_ground` the first offset in ground
    state. Text is skipped with find()/regex jumps, not byte by byte.
    """
    while pos < stop:
        if state == _GROUND:
            if to_ground:
                return _GROUND, pos
            esc = data.find(_ESC, pos, stop)
            if esc < 0:
                return _ground_end(data, pos, stop), stop
            state, pos = _ESCAPE, esc + 1
        elif state < 0:  # inside UTF-8: a non-continuation byte ends it and is read again
            if 0x80 <= data[pos] <= 0xBF:
                state, pos = state + 1, pos + 1
            else:
                state = _GROUND
        elif state == _CSI or state == _STRING:
            end = (_CSI_END if state == _CSI else _STRING_END).search(data, pos, stop)
            if end is None:
                return state, stop
            byte, pos = data[end.start()], end.start()
            if byte == _ESC:
                state, pos = _ESCAPE, pos + 1
            elif byte < 0x80:  # final byte or BEL
                state, pos = _GROUND, pos + 1
            else:  # a non-ASCII byte aborts a _CSI and is read again as text
                state = _GROUND
        else:  # _ESCAPE or _ESCAPE_INTERMEDIATE
            byte = data[pos]
            if byte >= 0x80:
                state = _GROUND
                continue
            pos += 1
            if byte == _ESC:
                state = _ESCAPE
            elif state == _ESCAPE and byte == 0x5B:  # [
                state = _CSI
            elif state == _ESCAPE and byte in _STRING_INTRODUCERS:
                state = _STRING
            elif 0x20 <= byte <= 0x2F:
                state = _ESCAPE_INTERMEDIATE
            elif 0x30 <= byte <= 0x7E:
                state = _GROUND
            # other C0 controls and DEL leave the state as it is
    return state, pos


def _state_after(state: int, data: bytes, pos: int = 0, stop: int | None = None) -> int:
    """Parser state after data[pos:stop]: only what follows the last ESC matters."""
    stop = len(data) if stop is None else stop
    esc = data.rfind(_ESC, pos, stop)
    if esc >= 0:
        state, pos = _ESCAPE, esc + 1
    return _parse(state, data, pos, stop)[0]


def _line_start(data: bytes, state: int, limit: int) -> int | None:
    """First offset before `limit` that follows a newline written in ground state."""
    pos = 0
    while (newline := data.find(b"\n", pos, limit)) >= 0:
        state = _state_after(state, data, pos, newline + 1)
        if state == _GROUND:
            return newline + 1
        pos = newline + 1
    return None


_Chunk = tuple[int, "bytes | bytearray", int, bool]


class Scrollback:
    """The last `capacity` bytes (or a little more) of one PTY's output."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._coalesce = min(_COALESCE_BYTES, capacity // 8)
        # (offset, data, parser state at its start, whether it starts a line)
        self._chunks: deque[_Chunk] = deque()
        self._size = 0
        self._end = 0
        self._state = _GROUND  # parser state at `end`
        self._line_start = True  # whether `end` starts a line

    @property
    def end(self) -> int:
        return self._end

    @property
    def start(self) -> int:
        return self._end - self._size

    def append(self, data: bytes) -> None:
        if not data:
            return
        chunks = self._chunks
        last = chunks[-1][1] if chunks else None
        if isinstance(last, bytearray) and len(last) + len(data) <= self._coalesce:
            last += data
        else:
            piece = bytearray(data) if len(data) < self._coalesce else bytes(data)
            chunks.append((self._end, piece, self._state, self._line_start))
        self._state = _state_after(self._state, data)
        self._line_start = data[-1] == 0x0A and self._state == _GROUND
        self._size += len(data)
        self._end += len(data)
        while len(chunks) > 1 and self._size - len(chunks[0][1]) >= self._capacity:
            self._size -= len(chunks.popleft()[1])

    def since(self, offset: int) -> bytes | None:
        """Exactly the bytes from `offset` to `end` (BYD-1), or None if no longer (or never) held."""
        if not self.start <= offset <= self._end:
            return None
        pieces = []
        for chunk_offset, data, _, _ in reversed(self._chunks):
            if chunk_offset <= offset:
                pieces.append(data[offset - chunk_offset :])
                break
            pieces.append(data)
        return b"".join(reversed(pieces))

    def replay(self) -> bytes:
        """The retained output from its first safe cut point, a line start if one is near."""
        chunks = list(self._chunks)
        budget = LINE_SEARCH_BYTES
        for index, (_, data, state, starts_line) in enumerate(chunks):
            if budget <= 0:
                break
            cut = 0 if starts_line else _line_start(data, state, min(len(data), budget))
            if cut is not None:
                return self._join(chunks, index, cut)
            budget -= len(data)
        for index, (_, data, state, _) in enumerate(chunks):
            state, cut = _parse(state, data, 0, len(data), to_ground=True)
            if state == _GROUND:
                return self._join(chunks, index, cut)
        return b""

    @staticmethod
    def _join(chunks: list[_Chunk], index: int, cut: int) -> bytes:
        return b"".join([chunks[index][1][cut:], *(chunk[1] for chunk in chunks[index + 1 :])])

    def clear(self) -> None:
        """Forget the output (agent restart) but keep offsets monotonic."""
        self._chunks.clear()
        self._size = 0
        self._state = _GROUND
        self._line_start = True
