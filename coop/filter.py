"""Input filter for web and tunnel clients on agent PTYs (SPEC FLT-1…FLT-5).

A guard against accidents on a phone keyboard, not a security boundary
(FLT-5). One filter per filtered client; its input passes three stages:

1. key sequences — Ctrl+D, Ctrl+\\ and `[input_filter].block_sequences` —
   are deleted wherever they occur (unanchored Aho–Corasick);
2. a Ctrl+C within `ctrl_c_debounce_ms` of the last forwarded one is dropped;
3. line commands — `exit`, `/exit`, `quit` plus Enter — are deleted when
   they are the whole line (anchored Aho–Corasick). This stage sees exactly
   the bytes the agent will get, so nothing deleted earlier (a Ctrl+D inside
   the word, a debounced Ctrl+C before the Enter) can smuggle a command through.

A line starts at the start of the client's input and after `\\r`, `\\n` or
Ctrl+C (which clears the agent's input line), counted on what is forwarded:
a deleted command leaves its line empty, so `exit⏎exit⏎` is two blocks
while `fix the early exit⏎` passes intact.

Both matchers keep their state across feed() calls and hold back only the
bytes that could still be deleted; held bytes go out, in order, as soon as
the match fails or after `hold_ms` without new input (the session actor
calls flush_due() at deadline()).
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

BLOCK_NOTICE = (
    "\r\n\x1b[1;33m\u26a0  Blocked from web. Use local terminal to exit.\x1b[0m\r\n".encode()
)
CTRL_C_NOTICE = "\r\n\x1b[1;33m\u26a0  Repeated Ctrl+C suppressed.\x1b[0m\r\n".encode()

BLOCKED_KEYS = (b"\x04", b"\x1c")
LINE_COMMANDS = (b"exit", b"/exit", b"quit")
LINE_ENDS = (b"\r", b"\n")
LINE_RESETS = b"\r\n\x03"
CTRL_C = b"\x03"

_LINE_START = 256  # virtual symbol an anchored automaton reads wherever a line begins


@dataclass
class FilterResult:
    forward: bytes = b""
    blocked: list[bytes] = field(default_factory=list)
    ctrl_c_suppressed: int = 0


class _Automaton:
    """Aho–Corasick tables for one pattern set; immutable, so filters share them.

    With `anchored`, every pattern is preceded by the virtual _LINE_START
    symbol; patterns must not contain a line-reset byte except as their last.
    """

    def __init__(self, patterns: tuple[bytes, ...], anchored: bool) -> None:
        lead = [_LINE_START] if anchored else []
        goto: list[dict[int, int]] = [{}]
        self.cut = [0]  # bytes deleted when the automaton reaches this node (0: no match)
        self.hold = [0]  # trailing bytes that a later match could still delete
        for pattern in patterns:
            node = 0
            for symbol in [*lead, *pattern]:
                if symbol not in goto[node]:
                    goto[node][symbol] = len(goto)
                    goto.append({})
                    self.cut.append(0)
                    self.hold.append(self.hold[node] + (symbol != _LINE_START))
                node = goto[node][symbol]
            self.cut[node] = len(pattern)
        self.delta = self._fill_delta(goto)
        self.anchored = anchored
        self.line_start = self.delta[0].get(_LINE_START, 0)
        # Bytes that move a resting automaton; a line start only follows a line reset.
        self.wake = tuple(sorted(set(LINE_RESETS) if anchored else set(self.delta[0])))

    def _fill_delta(self, goto: list[dict[int, int]]) -> list[dict[int, int]]:
        """Full transition table (missing symbol → root), filled breadth-first along failure links."""
        fail = [0] * len(goto)
        delta: list[dict[int, int]] = [dict(goto[0])] + [{} for _ in goto[1:]]
        queue = deque(goto[0].values())
        while queue:
            node = queue.popleft()
            delta[node] = {**delta[fail[node]], **goto[node]}
            self.cut[node] = self.cut[node] or self.cut[fail[node]]
            for symbol, child in goto[node].items():
                fail[child] = delta[fail[node]].get(symbol, 0)
                queue.append(child)
        return delta


_automaton = functools.lru_cache(maxsize=32)(_Automaton)


def _next_wake(data: bytes, pos: int, upcoming: dict[int, int]) -> int:
    """Offset of the first wake byte at or after `pos`, or -1.

    `upcoming` maps each wake byte to its last known offset (-1: none left);
    refreshing only the stale ones keeps a whole chunk at one memchr per byte.
    """
    first = -1
    for byte, at in upcoming.items():
        if 0 <= at < pos:
            at = upcoming[byte] = data.find(byte, pos)
        if at >= 0 and (first < 0 or at < first):
            first = at
    return first


class _StreamMatcher:
    """Runs an automaton over a byte stream and deletes every match.

    The first match to complete wins (the longest among those ending at the
    same byte); matching restarts after it. Only bytes that may still belong
    to a match are held.
    """

    def __init__(self, patterns: Iterable[bytes], anchored: bool) -> None:
        self._automaton = _automaton(tuple(patterns), anchored)
        self._node = self._automaton.line_start
        self._held = bytearray()

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def feed(self, data: bytes, blocked: list[bytes]) -> bytes:
        """Return the bytes released by `data`; append each deleted match to `blocked`."""
        out = bytearray()
        auto, held = self._automaton, self._held
        delta, cut, hold = auto.delta, auto.cut, auto.hold
        node, pos, stop = self._node, 0, len(data)
        upcoming = {byte: data.find(byte) for byte in auto.wake}
        while pos < stop:
            if node == 0:  # at rest: skip to the next byte that can start something
                wake = _next_wake(data, pos, upcoming)
                if wake < 0:
                    if pos == 0:
                        return data  # fast path: nothing in this chunk can start a match
                    out += data[pos:]
                    break
                out += data[pos:wake]
                pos = wake
            byte = data[pos]
            pos += 1
            node = delta[node].get(byte, 0)
            held.append(byte)
            if cut[node]:
                start = len(held) - cut[node]
                out += held[:start]
                blocked.append(bytes(held[start:]))
                held.clear()
                node = auto.line_start
                continue
            release = len(held) - hold[node]
            if release:
                out += held[:release]
                del held[:release]
            if auto.anchored and byte in LINE_RESETS:
                node = delta[node].get(_LINE_START, 0)
        self._node = node
        return bytes(out)

    def flush(self) -> bytes:
        """Give up the partial match: release held bytes (none ends a line) and restart."""
        out = bytes(self._held)
        if out:
            self._held.clear()
            self._node = 0
        return out


class InputFilter:
    """FLT-2…FLT-4 for one filtered client; sans-I/O, the clock is injected."""

    def __init__(
        self,
        extra_sequences: Iterable[bytes] = (),
        ctrl_c_debounce_ms: int = 500,
        hold_ms: int = 500,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sequences = _StreamMatcher([*BLOCKED_KEYS, *(s for s in extra_sequences if s)], False)
        self._commands = _StreamMatcher([c + e for c in LINE_COMMANDS for e in LINE_ENDS], True)
        self._debounce = ctrl_c_debounce_ms / 1000
        self._hold = hold_ms / 1000
        self._clock = clock
        self._last_input = 0.0
        self._last_ctrl_c: float | None = None

    def feed(self, data: bytes) -> FilterResult:
        now = self._clock()
        result = self._flush_if_due(now)
        if data:
            self._last_input = now
            self._deliver(self._sequences.feed(bytes(data), result.blocked), now, result)
        return result

    def deadline(self) -> float | None:
        holding = self._sequences.holding or self._commands.holding
        return self._last_input + self._hold if holding else None

    def flush_due(self) -> FilterResult:
        return self._flush_if_due(self._clock())

    def _flush_if_due(self, now: float) -> FilterResult:
        result = FilterResult()
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            # Stage 1's held bytes may complete a line command (`exit` + a held `\r`).
            self._deliver(self._sequences.flush(), now, result)
            result.forward += self._commands.flush()
        return result

    def _deliver(self, data: bytes, now: float, result: FilterResult) -> None:
        """Stages 2 and 3 for bytes that stage 1 let through."""
        if CTRL_C in data:
            first, *rest = data.split(CTRL_C)
            kept = [first]
            for part in rest:
                if self._last_ctrl_c is None or now - self._last_ctrl_c >= self._debounce:
                    self._last_ctrl_c = now
                    kept.append(CTRL_C)
                else:
                    result.ctrl_c_suppressed += 1
                kept.append(part)
            data = b"".join(kept)
        result.forward += self._commands.feed(data, result.blocked)
