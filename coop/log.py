"""Operational event log (DMN-10): one line per event, appended atomically.

Every actor writes to its inherited stderr, which the daemon opened with
O_APPEND on ``~/.coop/logs/daemon.log``; one ``os.write`` per line keeps lines
whole across processes. Callers pass events only — never terminal bytes,
environment values or tokens.
"""

from __future__ import annotations

import os
import time

_who = "daemon"


def set_actor(who: str) -> None:
    global _who
    _who = who


def log(text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
    line = f"{stamp} [{_who}] {text}".replace("\n", " ") + "\n"
    try:
        os.write(2, line.encode("utf-8", "replace"))
    except OSError:
        pass
