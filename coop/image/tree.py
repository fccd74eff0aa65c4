"""Removing directory trees without following symlinks, whatever their modes.

Rootfs trees hold read-only directories (``0555``) and hostile names; a
plain ``shutil.rmtree`` stops at the first unwritable directory when coop
runs unprivileged. Everything here works on directory fds, so a symlink is
removed, never followed.

A session may leave a tree thousands of levels deep in its writable layer,
so the walk is a loop, not a recursion, and holds one directory fd at a
time (not one per level, which would run out of descriptors): it climbs
back through ``..`` and checks that it arrived where it came from.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Level:
    """One directory on the way down: who it is and what is left in it."""

    name: str  # its name in the level above
    identity: tuple[int, int]  # (st_dev, st_ino)
    subdirs: list[str] = field(default_factory=list)


def _writable(parent_fd: int, action) -> None:
    """Run ``action``; on EACCES give the parent u+wx for the call and restore it."""
    try:
        action()
        return
    except PermissionError:
        mode = os.fstat(parent_fd).st_mode
        os.fchmod(parent_fd, stat.S_IMODE(mode) | 0o300)
    try:
        action()
    finally:
        os.fchmod(parent_fd, stat.S_IMODE(mode))


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _enter(parent_fd: int, name: str, st: os.stat_result) -> tuple[int, _Level]:
    """Open the directory ``name`` (made u+rwx first if need be), delete the
    non-directories in it; its fd and its level with the subdirectories left."""
    if stat.S_IMODE(st.st_mode) & 0o700 != 0o700:
        _writable(parent_fd, lambda: os.chmod(name, stat.S_IMODE(st.st_mode) | 0o700,
                                              dir_fd=parent_fd))
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        level = _Level(name, _identity(os.fstat(fd)))
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    level.subdirs.append(entry.name)
                else:
                    _writable(fd, lambda child=entry.name: os.unlink(child, dir_fd=fd))
    except BaseException:
        os.close(fd)
        raise
    return fd, level


def _climb(fd: int, expected: tuple[int, int]) -> int:
    """The fd of ``..`` of ``fd``, which must be the directory we came down from."""
    parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
    if _identity(os.fstat(parent)) != expected:
        os.close(parent)
        raise OSError(errno.ESTALE, "the tree moved while it was being removed")
    return parent


def remove_at(parent_fd: int, name: str) -> None:
    """Remove ``name`` (file, symlink or whole directory) inside ``parent_fd``."""
    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        _writable(parent_fd, lambda: os.unlink(name, dir_fd=parent_fd))
        return
    fd, top = _enter(parent_fd, name, st)
    path = [top]
    try:
        while True:
            here = path[-1]
            if here.subdirs:
                child = here.subdirs.pop()
                child_fd, level = _enter(fd, child, os.stat(child, dir_fd=fd,
                                                            follow_symlinks=False))
                os.close(fd)
                fd = child_fd
                path.append(level)
                continue
            if len(path) == 1:
                break
            path.pop()
            parent = _climb(fd, path[-1].identity)
            os.close(fd)
            fd = parent
            _writable(fd, lambda done=here.name, at=fd: os.rmdir(done, dir_fd=at))
    finally:
        os.close(fd)
    _writable(parent_fd, lambda: os.rmdir(name, dir_fd=parent_fd))


def remove(path: os.PathLike | str) -> None:
    """Remove ``path`` and everything below it; a missing path is fine."""
    path = os.fspath(path)
    parent, name = os.path.split(os.path.abspath(path))
    parent_fd = os.open(parent, _DIR_FLAGS)
    try:
        remove_at(parent_fd, name)
    except FileNotFoundError:
        pass
    finally:
        os.close(parent_fd)
