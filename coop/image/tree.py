"""Removing directory trees without following symlinks, whatever their modes.

Rootfs trees hold read-only directories (``0555``) and hostile names; a
plain ``shutil.rmtree`` stops at the first unwritable directory when coop
runs unprivileged. Everything here works on directory fds, so a symlink is
removed, never followed.
"""

from __future__ import annotations

import os
import stat

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


def remove_at(parent_fd: int, name: str) -> None:
    """Remove ``name`` (file, symlink or whole directory) inside ``parent_fd``."""
    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        _writable(parent_fd, lambda: os.unlink(name, dir_fd=parent_fd))
        return
    if stat.S_IMODE(st.st_mode) & 0o700 != 0o700:
        _writable(parent_fd, lambda: os.chmod(name, stat.S_IMODE(st.st_mode) | 0o700,
                                              dir_fd=parent_fd))
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        for child in os.listdir(fd):
            remove_at(fd, child)
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
