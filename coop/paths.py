"""Every path coop uses under ~/.coop and ~/.config/coop, in one place.

The state directory is ``$COOP_HOME`` when set (tests), else ``~/.coop``.
The socket is ``--socket``/``$COOP_SOCKET``, else ``<state>/sock``.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The invoking user's home directory."""
    return Path(os.environ.get("HOME") or os.path.expanduser("~"))


class Paths:
    """The state directory and the daemon socket (no dataclass: its import costs
    more than the whole of ``coop ls``'s own work)."""

    __slots__ = ("state", "socket")

    def __init__(self, state: Path, socket: Path):
        self.state = Path(state)
        self.socket = Path(socket)

    @classmethod
    def default(cls, socket: str | os.PathLike | None = None) -> "Paths":
        state = Path(os.environ.get("COOP_HOME") or home() / ".coop")
        sock = socket or os.environ.get("COOP_SOCKET") or state / "sock"
        return cls(state=state, socket=Path(sock))

    @property
    def lock(self) -> Path:
        return self.state / "daemon.lock"

    @property
    def pidfile(self) -> Path:
        return self.state / "daemon.pid"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def daemon_log(self) -> Path:
        return self.logs / "daemon.log"

    @property
    def sessions(self) -> Path:
        return self.state / "sessions"

    def session_dir(self, name: str) -> Path:
        return self.sessions / name

    def actor_socket(self, name: str) -> Path:
        return self.session_dir(name) / "actor.sock"

    @property
    def tunnel_socket(self) -> Path:
        return self.state / "tunnel.sock"

    @property
    def cache(self) -> Path:
        return self.state / "cache"

    @property
    def rootfs(self) -> Path:
        return self.state / "rootfs"

    @property
    def tls(self) -> Path:
        return self.state / "tls"

    @property
    def machine_id(self) -> Path:
        return self.state / "machine_id"

    def ensure_state(self) -> None:
        """Create the state tree with owner-only permissions (SEC-1)."""
        for d in (self.state, self.logs, self.sessions):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.state, 0o700)


def global_coopfile() -> Path:
    """CF-1: the global layer, ``~/.config/coop/default.toml``."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(home() / ".config")
    return Path(base) / "coop" / "default.toml"
