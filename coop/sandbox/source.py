"""SB-3: which host directories a session may mount (workspace, persist).

Symlinks are resolved first and the resolved path is the one checked and
mounted. A source must lie strictly inside the invoking user's home, or
inside a path the user allowed with ``--allow-path``, and must not contain a
protected path (coop's own state dir with the daemon's sockets).
"""

from __future__ import annotations

import os

from coop.sandbox.syscalls import SandboxError


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_source(path: str, home: str, allowed: list[str], protected: list[str] = ()) -> str:
    """The resolved ``path`` if a session may mount it, else SandboxError (one line)."""
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise SandboxError(f"{path}: not a directory")
    home = os.path.realpath(home)
    shown = path if real == os.path.abspath(path) else f"{path} (resolves to {real})"
    for blocked in protected:
        if _inside(os.path.realpath(blocked), real):
            raise SandboxError(f"{shown} contains {blocked}, coop's own state; "
                               "it cannot be mounted into a session")
    if any(_inside(real, os.path.realpath(root)) for root in allowed):
        return real
    if real == home:
        raise SandboxError(f"{shown} is your home directory itself; mount a project directory "
                           "inside it, or pass --allow-path to mean it")
    if _inside(real, home):
        return real
    raise SandboxError(f"{shown} is outside your home directory {home}; "
                       f"pass --allow-path {real} to mount it anyway")
