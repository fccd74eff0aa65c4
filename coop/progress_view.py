"""How pull and build progress looks on the user's stderr (CLI-4), sans I/O.

On a terminal, downloads and extraction redraw one line in place (bytes of
each layer in flight, layers done out of all) and each build step gets its
own line (``[2/5] apk add git curl``) before the step's live output. Anywhere
else, every event worth keeping is one plain line: a finished layer, an
extraction, a step, a note; never a line per received chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from coop.image.progress import Download, Event, Extract

REDRAW_INTERVAL = 0.1  # seconds between two redraws of the live line
_ERASE = "\r\x1b[K"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}"


class ProgressView:
    """Turns progress events into text for ``write``. Thread-safe only as far as
    the caller serialises events (the image puller does)."""

    def __init__(self, write: Callable[[str], None], *, tty: bool, width: int = 80,
                 clock: Callable[[], float] = time.monotonic):
        self.write = write
        self.tty = tty
        self.width = max(20, width)
        self.clock = clock
        self.layers: dict[int, tuple[int, int]] = {}  # index -> (done, total) in flight
        self.finished: set[int] = set()
        self.live = False  # a live line is on screen
        self.drawn_at = float("-inf")

    def __call__(self, event: Event) -> None:
        if isinstance(event, Download):
            self._download(event)
        elif isinstance(event, Extract) and self.tty:
            self._draw(str(event), force=True)
        else:
            self.line(str(event))

    def line(self, text: str) -> None:
        """A line that stays (replacing the live line on a terminal)."""
        self.clear()
        self.write(text + "\n")

    def clear(self) -> None:
        """Remove the live line, e.g. before a step's own output starts."""
        if self.live:
            self.write(_ERASE)
            self.live = False

    def _download(self, event: Download) -> None:
        complete = event.total > 0 and event.done >= event.total
        if complete:
            if event.index in self.finished:
                return
            self.finished.add(event.index)
            self.layers.pop(event.index, None)
        else:
            self.layers[event.index] = (event.done, event.total)
        if not self.tty:
            if complete:
                self.line(str(event))
            return
        parts = [f"layers {len(self.finished)}/{event.count}"]
        parts += [f"layer {index}: {_mb(done)}/{_mb(total)} MB"
                  for index, (done, total) in sorted(self.layers.items())]
        self._draw("pulling: " + " · ".join(parts), force=complete)

    def _draw(self, text: str, force: bool) -> None:
        now = self.clock()
        if not force and now - self.drawn_at < REDRAW_INTERVAL:
            return
        self.drawn_at = now
        if len(text) > self.width - 1:
            text = text[: self.width - 2] + "…"
        self.write(_ERASE + text)
        self.live = True
