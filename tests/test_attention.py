"""BYD-2: busy/waiting detection from output bytes, with an injected clock."""

from hypothesis import given
from hypothesis import strategies as st

from coop.attention import BUSY, WAITING, Attention
from tests.fuzzing import fuzz


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make():
    clock = Clock()
    return Attention(quiet_ms=3000, clock=clock), clock


def test_quiet_prompt_becomes_waiting_only_after_quiet_time():
    a, clock = make()
    assert a.feed(b"thinking...\r\nProceed? [y/N] ") is None  # already busy
    assert a.deadline() == 103.0
    clock.now = 102.9
    assert a.tick() is None and a.state == BUSY
    clock.now = 103.0
    assert a.tick() == WAITING


def test_quiet_without_prompt_stays_busy():
    a, clock = make()
    a.feed(b"compiling module 3 of 9\r\n")
    clock.now += 10
    assert a.tick() is None and a.state == BUSY


def test_bell_and_osc_notifications_mean_waiting():
    a, _ = make()
    assert a.feed(b"done\x07") == WAITING
    assert a.feed(b"more output") == BUSY
    assert a.feed(b"\x1b]9;Claude needs your input\x07") == WAITING
    a.feed(b"x")
    assert a.feed(b"\x1b]777;notify;title;body\x1b\\") == WAITING


def test_bel_ending_an_osc_title_is_not_a_bell():
    a, _ = make()
    a.feed(b"x")
    assert a.feed(b"\x1b]0;window title\x07") is None and a.state == BUSY
    assert a.feed(b"\x1b]0;split") is None
    assert a.feed(b" title\x07") is None and a.state == BUSY


def test_spinner_redraws_stay_busy_then_prompt_waits():
    a, clock = make()
    for frame in "|/-\\" * 20:
        a.feed(f"\r\x1b[2K{frame} Working".encode())
        clock.now += 0.1
        assert a.tick() is None
    a.feed(b"\r\x1b[2K\xe2\x9d\xaf ")  # "❯ "
    assert a.line() == "❯ "
    clock.now += 3
    assert a.tick() == WAITING


def test_escape_only_output_does_not_wake():
    a, clock = make()
    a.feed(b"$ ")
    clock.now += 3
    assert a.tick() == WAITING
    assert a.feed(b"\x1b[?25l\x1b[?25h") is None
    assert a.state == WAITING


@fuzz(1500)
@given(st.lists(st.sampled_from([b"a", b"\x1b", b"[", b"]", b"9;", b"\x07", b"\r", b"\n",
                                  b"? ", b"\x1b\\", b"2K", b"m", b"\xe2\x9d\xaf "]),
                max_size=40),
       st.integers(1, 7))
def test_chunking_does_not_change_the_outcome(parts, step):
    data = b"".join(parts)
    whole, _ = make()
    whole.feed(data)
    chunked, _ = make()
    for i in range(0, len(data), step):
        chunked.feed(data[i:i + step])
    # a signal inside a chunk may be followed by output in the same chunk, so
    # compare what both agree on: the visible cursor line
    assert chunked.line() == whole.line()


def test_long_coloured_output_ends_on_its_prompt():
    a, clock = make()
    a.feed(b"$ ")
    clock.now += 3
    assert a.tick() == WAITING
    burst = b"\x1b[32mok\x1b[0m line\r\n" * 2000 + "\x1b[1m❯\x1b[0m ".encode()
    assert a.feed(burst) == BUSY
    assert a.line() == "❯ "
    clock.now += 3
    assert a.tick() == WAITING
