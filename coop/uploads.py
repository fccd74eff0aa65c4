"""Files dropped into a session from the browser (BYD-8).

They land in ``<workspace>/.coop-uploads/``. The workspace belongs to the
session, which may have planted symlinks there, so every step goes through
directory fds with ``O_NOFOLLOW`` and the file is created with ``O_EXCL``:
nothing is followed, nothing existing is overwritten.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import BinaryIO

UPLOAD_DIR = ".coop-uploads"
MAX_NAME = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._+@=-]+")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UploadError(Exception):
    """The upload cannot be stored; the message is one line."""


def safe_name(filename: str) -> str:
    """A plain file name from whatever the browser sent: last path component only,
    runs of unusual characters as ``_``, no leading dot, bounded length."""
    base = re.split(r"[/\\]", filename)[-1]
    name = _UNSAFE.sub("_", base).lstrip(".")
    stem, dot, ext = name.rpartition(".")
    if dot and stem and len(ext) <= 16:
        name = stem[: MAX_NAME - len(ext) - 1] + "." + ext
    return name[:MAX_NAME] or "upload"


def _candidates(name: str):
    yield name
    stem, dot, ext = name.rpartition(".")
    if not (dot and stem):
        stem, dot, ext = name, "", ""
    for n in range(2, 10000):
        yield f"{stem}-{n}{dot}{ext}"


def store(workspace: str, filename: str, source: BinaryIO) -> str:
    """Copy ``source`` into the workspace's upload directory under a fresh name
    derived from ``filename``; returns that name."""
    try:
        ws_fd = os.open(workspace, _DIR_FLAGS)
    except OSError as exc:
        raise UploadError(f"cannot open workspace {workspace}: {exc.strerror}") from None
    try:
        try:
            os.mkdir(UPLOAD_DIR, 0o755, dir_fd=ws_fd)
        except FileExistsError:
            pass
        try:
            up_fd = os.open(UPLOAD_DIR, _DIR_FLAGS, dir_fd=ws_fd)
        except OSError as exc:
            raise UploadError(f"{UPLOAD_DIR} in {workspace} is not a plain directory "
                              f"({exc.strerror})") from None
    finally:
        os.close(ws_fd)
    try:
        for candidate in _candidates(safe_name(filename)):
            try:
                fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o644, dir_fd=up_fd)
            except FileExistsError:
                continue
            try:
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            except OSError as exc:
                os.unlink(candidate, dir_fd=up_fd)
                raise UploadError(f"cannot write {candidate}: {exc.strerror}") from None
            return candidate
        raise UploadError(f"too many uploads named {filename!r}")
    finally:
        os.close(up_fd)
