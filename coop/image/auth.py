"""Registry credentials and ``WWW-Authenticate`` challenges (IMG-2).

Credentials come from ``$DOCKER_CONFIG/config.json`` or
``~/.docker/config.json`` (``auths``: base64 ``auth`` or
``username``/``password``). They are held in a ``Credentials`` object whose
repr hides the secret, so no log line or traceback ever shows it.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from coop.image.reference import DOCKER_HUB, DOCKER_HUB_API

_DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", DOCKER_HUB, DOCKER_HUB_API)
_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return f"Basic {token}"


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lowercase: "basic" or "bearer"
    params: dict


def parse_challenge(header: str) -> Challenge:
    """Parse one ``WWW-Authenticate`` value; ValueError when it has no scheme."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        raise ValueError("empty WWW-Authenticate header")
    params = {}
    pos = 0
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if not match or match.end() == pos:
            break
        value = match.group(2)
        value = re.sub(r"\\(.)", r"\1", value) if value is not None else match.group(3)
        params[match.group(1).lower()] = value
        pos = match.end()
    return Challenge(scheme.lower(), params)


def _config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    if base:
        return Path(base) / "config.json"
    home = os.environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".docker" / "config.json"


def _host_of(key: str) -> str:
    key = re.sub(r"^[a-z]+://", "", key)
    return key.split("/", 1)[0]


def docker_credentials(registry: str) -> Credentials | None:
    """Credentials for ``registry`` (host[:port]) from the docker config, if any."""
    try:
        auths = json.loads(_config_path().read_text()).get("auths") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(auths, dict):
        return None
    hub = registry in (DOCKER_HUB, DOCKER_HUB_API)
    wanted = set(_DOCKER_HUB_KEYS) if hub else {registry}
    for key, entry in auths.items():
        if _host_of(key) not in wanted and key not in wanted or not isinstance(entry, dict):
            continue
        if entry.get("username") and entry.get("password"):
            return Credentials(str(entry["username"]), str(entry["password"]))
        try:
            user, _, password = base64.b64decode(entry.get("auth") or "").decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            continue
        if user and password:
            return Credentials(user, password)
    return None
