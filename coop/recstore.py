"""A session's recordings as the web API serves them (BYD-3).

Recordings outlive their session, so they are listed and read straight from
``<state>/sessions/<name>/rec/``, not asked of a session actor. Every path
component below the state directory is opened without following symlinks
and the file must be a regular file: a link or a FIFO planted anywhere under
the state directory leads nowhere.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

FILE_RE = re.compile(r"^[0-9]+-[0-9]+-[0-9]{3}\.cast$")  # <pty>-<unix time>-<part>.cast
MAX_SERVED = 256 << 20  # far above the Recorder's size cap: anything bigger is not ours
_HEAD_MAX = 64 << 10  # a header line is small; one longer than this is not a header
_TAIL_START = 64 << 10

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class RecordingNotFound(Exception):
    """No such session or recording (or a path that is not one); the message is one line."""


def _open_rec_dir(state: Path, name: str) -> int | None:
    """An fd of the session's ``rec`` directory; None when the session has none yet."""
    fd = os.open(state, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in ("sessions", name):
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError:  # missing, a symlink (ELOOP) or not a directory
                raise RecordingNotFound(f"no session {name!r}") from None
            os.close(fd)
            fd = inner
        try:
            return os.open("rec", _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError:
            raise RecordingNotFound(f"no recordings for session {name!r}") from None
    finally:
        os.close(fd)


def _open_file(dir_fd: int, file: str) -> tuple[int, os.stat_result]:
    """A regular recording file, opened without following a link; RecordingNotFound else."""
    if not FILE_RE.match(file):
        raise RecordingNotFound(f"no recording {file!r}")
    try:
        fd = os.open(file, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        raise RecordingNotFound(f"no recording {file!r}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise RecordingNotFound(f"no recording {file!r}")
    return fd, st


def _event_time(line: bytes) -> float | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if isinstance(event, list) and event and isinstance(event[0], (int, float)):
        return float(event[0])
    return None


def _last_time(fd: int, size: int) -> float:
    """The time of the last complete event, read from the end (a file being written
    may end in half a line)."""
    window = _TAIL_START
    while True:
        start = max(0, size - window)
        lines = os.pread(fd, size - start, start).split(b"\n")
        for line in reversed(lines[1:] if start else lines):
            t = _event_time(line)
            if t is not None:
                return t
        if start == 0:
            return 0.0
        window *= 4


def _summary(fd: int, st: os.stat_result, file: str) -> dict | None:
    """The listing entry of one file; None when it is not an asciicast v2 recording. A
    file still empty (the Recorder writes in bursts) is listed with its name's time."""
    pty, started, _part = file.split("-", 2)
    entry = {"name": file, "pty": int(pty), "size": st.st_size, "started": int(started),
             "width": None, "height": None, "duration": 0.0}
    if st.st_size == 0:
        return entry
    try:
        header = json.loads(os.pread(fd, _HEAD_MAX, 0).split(b"\n", 1)[0])
    except ValueError:
        return None
    if not isinstance(header, dict) or header.get("version") != 2:
        return None
    return {**entry, "width": header.get("width"), "height": header.get("height"),
            "duration": _last_time(fd, st.st_size)}


def list_recordings(state: Path, name: str) -> list[dict]:
    """``[{name, pty, size, started, width, height, duration}]``, oldest first."""
    dir_fd = _open_rec_dir(state, name)
    if dir_fd is None:
        return []
    entries = []
    try:
        for file in os.listdir(dir_fd):
            try:
                fd, st = _open_file(dir_fd, file)
            except RecordingNotFound:
                continue
            try:
                entry = _summary(fd, st, file)
            finally:
                os.close(fd)
            if entry:
                entries.append(entry)
    finally:
        os.close(dir_fd)
    entries.sort(key=lambda e: (e["started"], e["name"]))
    return entries


def read_recording(state: Path, name: str, file: str) -> bytes:
    """The bytes of one recording."""
    if not FILE_RE.match(file):
        raise RecordingNotFound(f"no recording {file!r}")
    dir_fd = _open_rec_dir(state, name)
    if dir_fd is None:
        raise RecordingNotFound(f"no recording {file!r}")
    try:
        fd, st = _open_file(dir_fd, file)
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as f:
        if st.st_size > MAX_SERVED:
            raise RecordingNotFound(f"recording {file!r} is too large to serve")
        return f.read(MAX_SERVED)
