"""CLI-4: pull and build progress on a terminal (one live line) and elsewhere
(plain lines), driven with an injected clock."""

from coop.image.progress import Download, Extract, Note, Step
from coop.progress_view import ProgressView

ERASE = "\r\x1b[K"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def view(tty: bool, width: int = 200):
    out: list[str] = []
    clock = Clock()
    return ProgressView(out.append, tty=tty, width=width, clock=clock), out, clock


def dl(index, done, total, count=2):
    return Download(index, count, f"sha256:{index:064x}", done, total)


def test_terminal_redraws_one_line_with_bytes_per_layer_and_layers_done():
    v, out, clock = view(tty=True)
    v(dl(1, 1_000_000, 4_000_000))
    clock.now = 0.5
    v(dl(2, 500_000, 2_000_000))
    assert out == [ERASE + "pulling: layers 0/2 · layer 1: 1.0/4.0 MB",
                   ERASE + "pulling: layers 0/2 · layer 1: 1.0/4.0 MB · layer 2: 0.5/2.0 MB"]
    clock.now = 0.55  # too soon: skipped
    v(dl(1, 2_000_000, 4_000_000))
    assert len(out) == 2
    v(dl(1, 4_000_000, 4_000_000))  # a finished layer is always shown
    assert out[-1] == ERASE + "pulling: layers 1/2 · layer 2: 0.5/2.0 MB"
    v(Extract(1, 2, "sha256:" + "a" * 64))
    assert out[-1] == ERASE + "extracting layer 1/2 aaaaaaaaaaaa"
    v(Step(2, 5, "apk add git curl"))  # a step's line stays, the live line goes
    assert out[-2:] == [ERASE, "[2/5] apk add git curl\n"]
    v.clear()
    assert out[-1] == "[2/5] apk add git curl\n"  # nothing live left to clear


def test_terminal_line_never_wraps():
    v, out, _ = view(tty=True, width=30)
    v(dl(1, 1, 10**9))
    assert len(out[0]) == len(ERASE) + 29 and out[0].endswith("…")


def test_plain_lines_off_a_terminal_one_per_finished_layer():
    v, out, clock = view(tty=False)
    for done in (0, 1_000_000, 3_000_000, 3_000_000):
        clock.now += 1
        v(dl(1, done, 3_000_000))
    v(Extract(1, 1, "sha256:" + "b" * 64))
    v(Note("skipping [packages].brew: unknown package manager"))
    v(Step(1, 1, "true"))
    v.clear()
    assert out == [f"layer 1/2 {'0' * 12}: 3.0 MB / 3.0 MB\n",
                   "extracting layer 1/1 bbbbbbbbbbbb\n",
                   "skipping [packages].brew: unknown package manager\n",
                   "[1/1] true\n"]
