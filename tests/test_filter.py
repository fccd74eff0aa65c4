"""FLT-2…FLT-4: input filter for web/tunnel clients, checked against a brute-force model."""

import re

from hypothesis import given
from hypothesis import strategies as st

from coop.filter import BLOCK_NOTICE, CTRL_C_NOTICE, InputFilter
from tests.fuzzing import fuzz

COMMANDS = (b"exit", b"/exit", b"quit")
ENTERS = b"\r\n"
LINE_RESETS = b"\r\n\x03"
KEYS = (b"\x04", b"\x1c")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def model(data: bytes, extras=(), flush_at=frozenset(), debounce=True):
    """The filter's contract, written the slow obvious way.

    Stage 1 deletes key sequences (first to complete wins, longest at that
    byte); with a clock that never moves, stage 2 lets only the first Ctrl+C
    pass; stage 3 deletes a command word + Enter when everything forwarded
    before it ends a line. `flush_at`: input offsets before which held bytes
    are given up. Returns (forwarded, sorted blocked, ctrl_c_suppressed).
    """
    sequences = [*KEYS, *(e for e in extras if e)]
    blocked = []
    out1, pending, cuts = bytearray(), bytearray(), set()
    for i, byte in enumerate(data):
        if i in flush_at:
            out1 += pending
            pending.clear()
            cuts.add(len(out1))
        pending.append(byte)
        hits = [s for s in sequences if pending.endswith(s)]
        if hits:
            hit = max(hits, key=len)
            out1 += pending[: -len(hit)]
            pending.clear()
            blocked.append(hit)
    out1 += pending

    out2, suppressed, cuts2 = bytearray(), 0, set()
    for i, byte in enumerate(out1):
        if i in cuts:
            cuts2.add(len(out2))
        if byte == 3 and debounce and 3 in out2:
            suppressed += 1
        else:
            out2.append(byte)

    out3, pending = bytearray(), bytearray()
    for i, byte in enumerate(out2):
        if i in cuts2:
            out3 += pending
            pending.clear()
        pending.append(byte)
        for command in (c + bytes([e]) for c in COMMANDS for e in ENTERS):
            if not pending.endswith(command):
                continue
            forwarded_before = out3 + pending[: -len(command)]
            if not forwarded_before or forwarded_before[-1] in LINE_RESETS:
                out3 = forwarded_before
                pending.clear()
                blocked.append(command)
                break
    out3 += pending
    return bytes(out3), sorted(blocked), suppressed


def whole_line_commands(output: bytes) -> list[bytes]:
    """Lines of `output` that are exactly a command word ended by Enter."""
    found = []
    for line in re.finditer(rb"([^\r\n\x03]*)([\r\n\x03])", output):
        if line.group(1) in COMMANDS and line.group(2) in (b"\r", b"\n"):
            found.append(line.group(0))
    return found


def is_subsequence(small: bytes, big: bytes) -> bool:
    it = iter(big)
    return all(byte in it for byte in small)


WORDS = {"E": "exit", "Q": "quit", "S": "/exit"}
KEYSTROKES = "exitqu/ab \r\n\x03\x04\x1c" + "".join(WORDS)
EXTRAS = [b"ab", b"xa", b"\r\r", b"it", b"q", b"a\nb", b"exit\r"]
# A held Ctrl+C goes out at flush time, later than the model's frozen clock: only without debounce.
CTRL_C_EXTRAS = [b"\x03\x03", b"\x03"]


def parse(script: str) -> tuple[list[bytes], list[bool]]:
    """A test script: `|` starts another feed(), `~` another one after a 500 ms pause; E, Q, S
    stand for the command words. Returns the chunks and whether a pause precedes each."""
    chunks, pauses = [b""], [False]
    for char in script:
        if char in "|~":
            chunks.append(b"")
            pauses.append(char == "~")
        else:
            chunks[-1] += WORDS.get(char, char).encode("latin-1")
    return chunks, pauses


def pick(extras: list[bytes], mask: int) -> list[bytes]:
    return [e for i, e in enumerate(extras) if mask >> i & 1]


def run(script: str, extras=(), debounce_ms=500, via_feed=False):
    """Play a script through one filter, then flush; returns what the model returns.

    Blocked patterns come back sorted: within one feed() the order of the two stages' reports is
    not part of the contract.
    """
    clock = FakeClock()
    flt = InputFilter(extras, ctrl_c_debounce_ms=debounce_ms, clock=clock)
    forwarded, blocked, suppressed = bytearray(), [], 0

    def take(result):
        nonlocal suppressed
        forwarded.extend(result.forward)
        blocked.extend(result.blocked)
        suppressed += result.ctrl_c_suppressed

    for chunk, pause in zip(*parse(script)):
        if pause:
            clock.now += 0.5
            if not via_feed:
                take(flt.flush_due())
        take(flt.feed(chunk))
    clock.now += 0.5
    take(flt.flush_due())
    assert flt.deadline() is None
    return bytes(forwarded), sorted(blocked), suppressed


def pause_offsets(script: str) -> set[int]:
    chunks, pauses = parse(script)
    offsets, offset = set(), 0
    for chunk, pause in zip(chunks, pauses):
        if pause:
            offsets.add(offset)
        offset += len(chunk)
    return offsets


def assert_nothing_else_lost(data: bytes, forwarded: bytes, blocked, suppressed: int) -> None:
    assert is_subsequence(forwarded, data)
    assert len(forwarded) + sum(map(len, blocked)) + suppressed == len(data)


@fuzz()
@given(st.text(KEYSTROKES + "|", max_size=40), st.integers(0, 2 ** len(EXTRAS) - 1))
def test_any_chunking_matches_the_model(script, mask):
    extras = pick(EXTRAS, mask)
    data = b"".join(parse(script)[0])
    got = run(script, extras)
    assert got == run(script.replace("|", ""), extras)
    assert got == model(data, extras)
    assert whole_line_commands(got[0]) == []
    assert_nothing_else_lost(data, *got)


@fuzz(4_000)
@given(
    st.text(KEYSTROKES + "|~", max_size=40),
    st.integers(0, 2 ** (len(EXTRAS) + len(CTRL_C_EXTRAS)) - 1),
    st.booleans(),
)
def test_pauses_give_up_partial_matches_without_losing_bytes(script, mask, via_feed):
    extras = pick(EXTRAS + CTRL_C_EXTRAS, mask)
    data = b"".join(parse(script)[0])
    got = run(script, extras, debounce_ms=0, via_feed=via_feed)
    assert got == model(data, extras, pause_offsets(script), debounce=False)
    assert_nothing_else_lost(data, *got)


def test_command_typed_as_five_messages_is_blocked():
    flt = InputFilter(clock=FakeClock())
    results = [flt.feed(key) for key in (b"e", b"x", b"i", b"t", b"\r")]
    assert [r.forward for r in results] == [b""] * 5
    assert [r.blocked for r in results] == [[], [], [], [], [b"exit\r"]]
    assert flt.deadline() is None


def test_command_inside_a_sentence_passes():
    flt = InputFilter(clock=FakeClock())
    assert flt.feed(b"fix the early exit\r").forward == b"fix the early exit\r"
    assert flt.feed(b"quit smoking\n").forward == b"quit smoking\n"


def test_whole_line_commands_are_blocked_after_any_line_end():
    flt = InputFilter(clock=FakeClock())
    result = flt.feed(b"/exit\nls\rquit\rexit\nexit")
    assert result.forward == b"ls\r"
    assert result.blocked == [b"/exit\n", b"quit\r", b"exit\n"]
    assert flt.feed(b"\r").blocked == [b"exit\r"]


def test_ctrl_c_starts_a_fresh_line():
    flt = InputFilter(clock=FakeClock())
    result = flt.feed(b"some prompt\x03exit\r")
    assert result.forward == b"some prompt\x03"
    assert result.blocked == [b"exit\r"]


def test_blocked_keys_vanish_mid_text_and_cannot_hide_a_command():
    flt = InputFilter(clock=FakeClock())
    result = flt.feed(b"ab\x04cd\x1c")
    assert (result.forward, result.blocked) == (b"abcd", [b"\x04", b"\x1c"])
    result = flt.feed(b"\nex\x04it\r")
    assert (result.forward, result.blocked) == (b"\n", [b"\x04", b"exit\r"])


def test_extra_sequences_are_blocked_across_feeds():
    flt = InputFilter([b"\x1b[200~", b"rm -rf"], clock=FakeClock())
    assert flt.feed(b"echo \x1b[20").forward == b"echo "
    result = flt.feed(b"0~ok rm -r")
    assert (result.forward, result.blocked) == (b"ok ", [b"\x1b[200~"])
    result = flt.feed(b"f /")
    assert (result.forward, result.blocked) == (b" /", [b"rm -rf"])
    assert flt.feed(b"\x1b[2X").forward == b"\x1b[2X"


def test_held_partial_match_flushes_after_hold_time_only():
    clock = FakeClock()
    flt = InputFilter(clock=clock)
    assert flt.deadline() is None
    assert flt.feed(b"ls\rex").forward == b"ls\r"
    assert flt.deadline() == 100.5
    clock.now = 100.4
    assert flt.flush_due().forward == b""
    assert flt.feed(b"i").forward == b""  # new input restarts the wait
    assert flt.deadline() == 100.9
    clock.now = 100.8
    assert flt.flush_due().forward == b""
    clock.now = 100.9
    assert flt.flush_due().forward == b"exi"
    assert flt.deadline() is None
    # The line no longer starts empty, so its end is not a command.
    assert flt.feed(b"t\r").forward == b"t\r"


def test_late_input_first_flushes_what_was_due():
    clock = FakeClock()
    flt = InputFilter(clock=clock)
    flt.feed(b"qui")
    clock.now = 101.0
    result = flt.feed(b"t\r")
    assert (result.forward, result.blocked) == (b"quit\r", [])


def test_flushed_enter_can_still_complete_a_command():
    clock = FakeClock()
    flt = InputFilter([b"\r\r"], clock=clock)
    assert flt.feed(b"exit\r").forward == b""
    clock.now = flt.deadline()
    result = flt.flush_due()
    assert (result.forward, result.blocked) == (b"", [b"exit\r"])


def test_repeated_ctrl_c_is_debounced_from_the_last_forwarded_one():
    clock = FakeClock()
    flt = InputFilter(clock=clock)
    assert flt.feed(b"\x03").forward == b"\x03"
    clock.now = 100.3
    result = flt.feed(b"\x03")
    assert (result.forward, result.ctrl_c_suppressed) == (b"", 1)
    clock.now = 100.5
    assert flt.feed(b"\x03").forward == b"\x03"
    clock.now = 100.9
    result = flt.feed(b"a\x03b\x03")
    assert (result.forward, result.ctrl_c_suppressed) == (b"ab", 2)
    clock.now = 101.0
    assert flt.feed(b"\x03\x03").forward == b"\x03"


def test_plain_chunk_passes_whole():
    flt = InputFilter(clock=FakeClock())
    chunk = bytes(range(32, 127)) * 700
    result = flt.feed(chunk)
    assert result == type(result)(forward=chunk)
    assert flt.deadline() is None


def test_notices_are_one_bold_yellow_line():
    assert BLOCK_NOTICE == (
        "\r\n\x1b[1;33m\u26a0  Blocked from web. Use local terminal to exit.\x1b[0m\r\n".encode()
    )
    for notice in (BLOCK_NOTICE, CTRL_C_NOTICE):
        text = notice.decode()
        assert text.startswith("\r\n\x1b[1;33m\u26a0  ") and text.endswith("\x1b[0m\r\n")
        assert text.count("\n") == 2
