"""Owner-only Unix listening sockets (IPC-1, SEC-1).

A path is bound only when it is free or holds a stale socket of ours: never a
symlink (not followed), never a file of another kind or another owner, never a
socket something still listens on. Binding happens under umask 0177, so the
socket is 0600 from its first moment.
"""

from __future__ import annotations

import os
import socket
import stat


class SocketPathError(Exception):
    """The socket path is unsafe or taken; the message is one line."""


def check_socket_path(path: str) -> bool:
    """True when a socket of ours is at ``path``, False when the path is free.
    Raises for a symlink, a non-socket or a foreign owner."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise SocketPathError(f"{path} is a symlink; refusing to follow it")
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathError(f"{path} exists and is not a socket; remove it or use --socket")
    if st.st_uid != os.getuid():
        raise SocketPathError(f"{path} is owned by uid {st.st_uid}, not by you")
    return True


def listening(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    finally:
        probe.close()


def listen(path: str, backlog: int = 64) -> socket.socket:
    """A non-blocking listening socket at ``path``, replacing a stale one of ours."""
    if check_socket_path(path):
        if listening(path):
            raise SocketPathError(f"something is already listening on {path}")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
