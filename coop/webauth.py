"""Who may use the web server (WEB-3, BYD-4): tokens, the cookie, same-origin checks.

Sans-I/O: decisions on parsed requests only. A token is accepted from the
query (``?token=``), an ``Authorization: Bearer`` header or the ``coop_token``
cookie, always compared in constant time. A full token may do everything; a
read-only token may watch every PTY and list sessions, nothing else.
"""

from __future__ import annotations

import enum
import hmac
import secrets
from urllib.parse import quote, unquote, urlsplit

from coop.http import Request

COOKIE = "coop_token"
TOKEN_BYTES = 24  # 192 bits from secrets (≥ 128 required)


class Access(enum.Enum):
    FULL = "full"
    READ_ONLY = "read-only"


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def _cookie_token(request: Request) -> str | None:
    for header in request.headers.get_all("cookie"):
        for pair in header.split(";"):
            name, eq, value = pair.strip().partition("=")
            if eq and name == COOKIE:
                return unquote(value.strip('"'))
    return None


def _bearer_token(request: Request) -> str | None:
    value = request.headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class Auth:
    def __init__(self, token: str, read_only_token: str | None = None):
        if not token:
            raise ValueError("the web token must not be empty")
        self.token = token
        self.read_only_token = read_only_token

    def _match(self, candidate: str | None) -> Access | None:
        if not candidate:
            return None
        given = candidate.encode("utf-8", "surrogateescape")
        # both comparisons always run: which token matched must not show in the timing
        full = hmac.compare_digest(given, self.token.encode())
        ro = self.read_only_token is not None and hmac.compare_digest(
            given, self.read_only_token.encode())
        return Access.FULL if full else Access.READ_ONLY if ro else None

    def from_query(self, request: Request) -> Access | None:
        return self._match(request.query.get("token"))

    def access(self, request: Request) -> Access | None:
        """The strongest access any of the request's credentials grants."""
        found = [self.from_query(request), self._match(_bearer_token(request)),
                 self._match(_cookie_token(request))]
        if Access.FULL in found:
            return Access.FULL
        return Access.READ_ONLY if Access.READ_ONLY in found else None

    def set_cookie(self, request: Request, secure: bool) -> str:
        """``Set-Cookie`` value carrying the query token, so it can leave the address bar."""
        value = quote(request.query.get("token", ""), safe="")
        return f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")


def without_token(request: Request) -> str:
    """The request target with every ``token`` query parameter removed, the rest as sent."""
    path, _, query = request.target.partition("?")
    kept = [p for p in query.split("&") if p and unquote(p.partition("=")[0]) != "token"]
    return path + ("?" + "&".join(kept) if kept else "")


def same_origin(request: Request, scheme: str) -> bool:
    """True when the ``Origin`` header names this server as the client reached it (the
    ``Host`` header): what stops another site's page from opening a WebSocket here."""
    origin, host = request.headers.get("origin"), request.headers.get("host")
    if not origin or not host:
        return False
    try:
        parts = urlsplit(origin)
        origin_port = parts.port
    except ValueError:
        return False
    if parts.scheme != scheme or not parts.hostname or parts.path not in ("", "/"):
        return False
    default = 443 if scheme == "https" else 80
    try:
        host_parts = urlsplit(f"//{host}")
        host_port = host_parts.port
    except ValueError:
        return False
    return (parts.hostname == host_parts.hostname
            and (origin_port or default) == (host_port or default))
