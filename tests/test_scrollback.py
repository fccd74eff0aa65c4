"""PTY-3, BYD-1: scrollback ring, offsets, resume and safe replay cut points."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coop.scrollback import LINE_SEARCH_BYTES, Scrollback
from tests.fuzzing import fuzz

FINAL_BYTES = {
    "escape": range(0x30, 0x7F),
    "intermediate": range(0x30, 0x7F),
    "csi": range(0x40, 0x7F),
    "string": (0x07,),
}


def ground_offsets(stream: bytes) -> list[bool]:
    """For each offset 0..len, whether a replay may begin there: a byte-at-a-time parser is in
    ground state once that offset's byte has ended whatever it interrupts.

    The model: ESC starts an escape from any state; `ESC [` a CSI up to a
    final byte 0x40-0x7E; `ESC ] P X ^ _` a string up to BEL or the next
    ESC; `ESC` + intermediates + final a short escape; a UTF-8 lead byte
    expects its continuation bytes. A non-continuation byte ends an unfinished
    UTF-8 sequence and a non-ASCII byte an unfinished escape or CSI; the
    byte is then read as text.
    """
    state, need = "ground", 0
    ground = []
    for byte in stream:
        broken = not 0x80 <= byte <= 0xBF if state == "utf8" else byte >= 0x80
        if broken and state in ("utf8", "escape", "intermediate", "csi"):
            state = "ground"
        ground.append(state == "ground")
        if byte == 0x1B:
            state = "escape"
        elif state == "utf8":
            need -= 1
            state = "utf8" if need else "ground"
        elif state == "ground":
            need = 1 if 0xC2 <= byte <= 0xDF else 2 if 0xE0 <= byte <= 0xEF else 0
            need = 3 if 0xF0 <= byte <= 0xF4 else need
            state = "utf8" if need else "ground"
        elif state == "escape" and byte == ord("["):
            state = "csi"
        elif state == "escape" and byte in b"]PX^_":
            state = "string"
        elif state in ("escape", "intermediate") and 0x20 <= byte <= 0x2F:
            state = "intermediate"
        elif byte in FINAL_BYTES.get(state, ()):
            state = "ground"
    ground.append(state == "ground")
    return ground


def expected_replay_offset(stream: bytes, start: int) -> int:
    """Where replay must begin: at the first line start (offset 0, or after a newline read in
    ground state) near `start`, else at the first ground offset at or after `start`."""
    ground = ground_offsets(stream)
    for at in range(start, min(len(stream), start + LINE_SEARCH_BYTES) + 1):
        if at == 0 or stream[at - 1] == 0x0A and ground[at - 1]:
            return at
    return next((at for at in range(start, len(stream) + 1) if ground[at]), len(stream))


PIECES = {
    "a": b"plain text ",
    "n": b"\n",
    "r": b"\r\n",
    "e": "é".encode(),
    "u": "€".encode(),
    "m": "😀".encode(),
    "c": b"\x1b[31m",
    "C": b"\x1b[1;2H",
    "k": b"\x1b[3\n1m",  # a newline inside a CSI is executed, the CSI goes on
    "o": b"\x1b]0;title\x07",
    "O": b"\x1b]2;\xc3\xa9\nx\x1b\\",  # a newline inside an OSC is part of its text
    "d": b"\x1bPq#0;2\x1b\\",
    "t": b"\x1b(B",
    "7": b"\x1b7",
    "x": b"\x1b",
    "(": b"\x1b(",
    "P": b"\x1bP",
    "q": b"\x9b",  # C1 CSI is a UTF-8 continuation byte, not a CSI
    "[": b"\x1b[",
    "]": b"\x1b]",
    "8": b"\x80",
    "l": b"\xe2",
    "b": b"\x07",
    "h": b"x",
}


def chunks_of(script: str, cut_every: list[int]) -> list[bytes]:
    """The pieces named by `script`, re-split into appends of the given sizes (cycled)."""
    stream = b"".join(PIECES[c] for c in script)
    chunks, pos, index = [], 0, 0
    while pos < len(stream):
        size = cut_every[index % len(cut_every)]
        chunks.append(stream[pos : pos + size])
        pos, index = pos + size, index + 1
    return chunks


# Without newlines replay must find a cut inside sequences instead of at a line start.
ALPHABETS = ["".join(PIECES), "".join(c for c, piece in PIECES.items() if b"\n" not in piece)]
sizes = st.lists(st.integers(1, 40), min_size=1, max_size=6)


@pytest.mark.parametrize("alphabet", ALPHABETS, ids=["lines", "no-newlines"])
@fuzz(3000)
@given(script=st.data(), cut_every=sizes, capacity=st.integers(1, 200), probe=st.integers(0, 1000))
def test_ring_keeps_offsets_bounds_and_safe_replay(alphabet, script, cut_every, capacity, probe):
    chunks = chunks_of(script.draw(st.text(alphabet, max_size=60)), cut_every)
    stream = b"".join(chunks)
    ring = Scrollback(capacity)
    starts = [ring.start]
    for chunk in chunks:
        ring.append(chunk)
        starts.append(ring.start)
    assert starts == sorted(starts)
    assert ring.end == len(stream)
    kept = ring.end - ring.start
    assert kept >= min(capacity, len(stream))
    assert kept < capacity + max(capacity // 8, *map(len, chunks), 1)

    offset = probe % (len(stream) + 2)
    assert ring.since(offset) == (stream[offset:] if ring.start <= offset <= ring.end else None)
    assert ring.since(ring.start) == stream[ring.start :]

    replay = ring.replay()
    assert stream.endswith(replay)
    assert len(stream) - len(replay) == expected_replay_offset(stream, ring.start)


def test_replay_begins_on_the_first_whole_line():
    ring = Scrollback(10)
    ring.append(b"\x1b[1mfirst\nol")
    assert ring.replay() == b"\x1b[1mfirst\nol"  # nothing lost yet: the output's own start
    ring.append(b"d\nline one\r\n")
    assert ring.start == 12
    assert ring.replay() == b"line one\r\n"
    ring.append(b"next line\n")  # the oldest chunk now begins a line
    assert ring.start == 24
    assert ring.replay() == b"next line\n"


def test_replay_skips_newlines_inside_a_sequence():
    ring = Scrollback(16)
    for chunk in (b"A" * 20, b"\x1b]0;ti", b"tle\nmore\x07 text\nnext", b"\x1b[3", b"\n1m!"):
        ring.append(chunk)
    assert ring.start == 26  # the oldest kept chunk begins inside the OSC title
    assert ring.replay() == b"next\x1b[3\n1m!"


def test_replay_without_a_newline_starts_after_the_broken_character():
    ring = Scrollback(5)
    for chunk in (b"0123456789ab\xe2\x82", b"\xac rest"):
        ring.append(chunk)
    assert ring.start == 14
    assert ring.replay() == b" rest"


def test_replay_without_a_newline_starts_after_an_unfinished_escape():
    ring = Scrollback(4)
    for chunk in (b"0123\x1b[38;5", b";200mred\x1b[0m"):
        ring.append(chunk)
    assert ring.start == 10
    assert ring.replay() == b"red\x1b[0m"


def test_since_returns_exactly_the_missed_bytes_or_none():
    ring = Scrollback(100)
    for i in range(30):
        ring.append(b"%04d:56789" % i)
    assert ring.end == 300
    assert ring.since(300) == b""
    assert ring.since(295) == b"56789"
    assert ring.since(ring.start) == b"".join(b"%04d:56789" % i for i in range(30))[ring.start :]
    assert ring.since(ring.start - 1) is None
    assert ring.since(301) is None
    assert ring.since(-1) is None


def test_capacity_bounds_memory_for_small_and_large_writes():
    ring = Scrollback(4096)
    for _ in range(10_000):
        ring.append(b"x" * 7)
    assert 4096 <= ring.end - ring.start < 4096 + 4096 // 8
    ring.append(b"y" * 100_000)  # a single write larger than the ring
    assert ring.end - ring.start == 100_000
    ring.append(b"z")
    assert ring.end - ring.start == 100_001
    ring.append(b"z" * 5000)
    assert ring.end - ring.start == 5000


def test_clear_keeps_offsets_monotonic():
    ring = Scrollback(64)
    ring.append(b"\x1b]0;unfinished title")
    ring.clear()
    assert (ring.start, ring.end) == (20, 20)
    assert ring.replay() == b""
    assert ring.since(20) == b""
    assert ring.since(10) is None
    ring.append(b"fresh start\n")  # parsing restarts in ground state
    assert (ring.start, ring.end) == (20, 32)
    assert ring.replay() == b"fresh start\n"
    assert ring.since(26) == b"start\n"


def test_empty_ring():
    ring = Scrollback(10)
    ring.append(b"")
    assert (ring.start, ring.end, ring.replay(), ring.since(0)) == (0, 0, b"", b"")


def test_replay_settles_for_a_mid_line_cut_when_no_line_starts_nearby():
    ring = Scrollback(LINE_SEARCH_BYTES)
    ring.append(b"\x1b[1mhead\n" + b"y" * 50 + "\u20ac".encode()[:2])
    ring.append("\u20ac".encode()[2:] + b"z" * LINE_SEARCH_BYTES + b"\nlast line")
    assert ring.start == 61
    assert ring.replay() == b"z" * LINE_SEARCH_BYTES + b"\nlast line"
