"""PTY-3, BYD-1, SEC-4: any output, cut into any reads, with agent restarts (clear) in
between, keeps the ring's offsets, bounds, resume and replay cut points exact (checked
against the byte-at-a-time model of tests/test_scrollback.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coop.scrollback import Scrollback
from tests.fuzzing import Recipe, fuzz
from tests.test_scrollback import PIECES, expected_replay_offset

PALETTE = list(PIECES.values()) + [b"\xff", b"\xc3", b"\x1b[", b"\x1b]", b"z" * 300]


@pytest.mark.slow
@fuzz()
@given(st.binary(max_size=80))
def test_fuzz_ring_with_restarts_matches_the_model(data):
    r = Recipe(data)
    capacity = r.choice([1, 7, 64, 200, 1024])
    ring = Scrollback(capacity)
    stream, since_clear, start = b"", 0, 0
    while r.pos < len(r.data):
        if r.chance(16):
            ring.clear()
            since_clear = len(stream)
            assert ring.start == ring.end == len(stream) and ring.replay() == b""
            continue
        piece = b"".join(r.choice(PALETTE) for _ in range(r.pick(4) + 1))
        step = r.pick(24) + 1
        for at in range(0, len(piece), step):
            ring.append(piece[at:at + step])
        stream += piece
        assert ring.start >= start and ring.end == len(stream)
        start = ring.start
    kept = stream[since_clear:]
    assert ring.since(ring.start) == stream[ring.start:]
    assert ring.since(ring.start - 1) is None and ring.since(ring.end + 1) is None
    assert ring.end - ring.start >= min(capacity, len(kept))
    replay = ring.replay()
    assert kept.endswith(replay)
    assert len(kept) - len(replay) == expected_replay_offset(kept, ring.start - since_clear)
