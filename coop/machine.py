"""This machine's identity for the tunnel page's dashboard (TUN-2, TUN-6).

A random id made once and kept in ``~/.coop/machine_id``, so a phone can tell
machines apart (and recognise one again) without learning anything about it.
"""

from __future__ import annotations

import os
import re
import secrets

from coop.paths import Paths

ID_RE = re.compile(r"^[0-9a-f]{16}$")


def machine_id(paths: Paths) -> str:
    """The kept id; created (16 hex digits, mode 0600) on first use."""
    path = str(paths.machine_id)
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(64).strip()
        if ID_RE.match(text):
            return text
    except FileNotFoundError:
        pass
    paths.ensure_state()
    new = secrets.token_hex(8)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, f"{new}\n".encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return new
