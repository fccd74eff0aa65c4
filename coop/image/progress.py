"""Progress events of pulls and builds (CLI-4).

The image layer only reports; the CLI decides how to show it (a redrawn
line on a terminal, plain lines otherwise). ``str(event)`` is the plain line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@dataclass(frozen=True)
class Download:
    """Bytes of layer ``index`` (1-based) of ``count`` received so far."""

    index: int
    count: int
    digest: str
    done: int
    total: int

    def __str__(self) -> str:
        return f"layer {self.index}/{self.count} {_short(self.digest)}: " \
               f"{_mb(self.done)} / {_mb(self.total)}"


@dataclass(frozen=True)
class Extract:
    index: int
    count: int
    digest: str

    def __str__(self) -> str:
        return f"extracting layer {self.index}/{self.count} {_short(self.digest)}"


@dataclass(frozen=True)
class Step:
    """Build step ``index`` (1-based) of ``count`` is starting."""

    index: int
    count: int
    label: str

    def __str__(self) -> str:
        return f"[{self.index}/{self.count}] {self.label}"


@dataclass(frozen=True)
class Note:
    text: str

    def __str__(self) -> str:
        return self.text


Event = Union[Download, Extract, Step, Note]
Progress = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default progress sink."""
