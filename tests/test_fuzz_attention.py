"""BYD-2, SEC-4: any output in any chunking, with quiet gaps, keeps the attention state
machine total and bounded: only busy/waiting, a cursor line and a held escape of bounded
size, the same cursor line however the bytes were cut."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coop.attention import BUSY, WAITING, Attention
from tests.fuzzing import Recipe, fuzz

PIECES = [b"a", b"\x1b", b"[", b"]", b"9;", b"777;", b"\x07", b"\r", b"\n", b"? ", b"$ ",
          b"\x1b\\", b"2K", b"m", "❯ ".encode(), b"[y/N] ", b"\xe2\x9d", b"\xff", b"P", b"0;t",
          b"\x1b]0;" + b"t" * 300, b"x" * 500, b"\t", b"\x00"]
QUIET_MS = 3000


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.slow
@fuzz()
@given(st.binary(max_size=60))
def test_fuzz_any_output_keeps_the_state_machine_bounded(data):
    r = Recipe(data)
    clock = Clock()
    chunked, whole = Attention(QUIET_MS, clock), Attention(QUIET_MS, clock)
    stream = b""
    while r.pos < len(r.data):
        piece = b"".join(r.choice(PIECES) for _ in range(r.pick(4) + 1))
        stream += piece
        step = r.pick(16) + 1
        for at in range(0, len(piece), step):
            assert chunked.feed(piece[at:at + step]) in (None, BUSY, WAITING)
        if r.chance(4):
            clock.now += r.choice([0.5, 2.999, 3.0, 60.0])
            assert chunked.tick() in (None, WAITING)
            due = chunked.deadline()
            assert due is None or clock.now < due
        assert chunked.state in (BUSY, WAITING)
        assert len(chunked.line()) <= 256
    whole.feed(stream)
    assert chunked.line() == whole.line()
