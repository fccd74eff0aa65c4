"""Test-side clients for the web server: plain HTTP, raw sockets, WebSocket terminals.

``serve`` starts the web actor of a ``tests.daemon.Coop`` through the IPC
``serve`` command (port 0: ephemeral), the way ``coop serve`` does.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import ssl
import time

import websockets

from tests.daemon import Coop
from tests.e2e.test_daemon import RawClient


def serve(c: Coop, **options) -> dict:
    cl = RawClient(c.socket)
    try:
        answer = cl.ask({"cmd": "serve", "host": "127.0.0.1", "port": 0, **options})
    finally:
        cl.close()
    return answer


def stop_serving(c: Coop) -> bool:
    cl = RawClient(c.socket)
    try:
        return cl.ask({"cmd": "serve_stop"})["stopped"]
    finally:
        cl.close()


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry))
    return found


def web_actor_pid(c: Coop) -> int | None:
    """The daemon's child that is not a session actor."""
    sessions = {s["pid"] for s in c.ls()}
    others = children(c.daemon_pid()) - sessions
    return others.pop() if len(others) == 1 else None


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class Web:
    """One running web server: its address, tokens and request helpers."""

    def __init__(self, c: Coop, answer: dict):
        assert answer.get("ok"), answer
        self.coop = c
        self.answer = answer
        self.port = answer["port"]
        self.token = answer["token"]
        self.read_only_token = answer.get("read_only_token")
        self.scheme = "https" if answer["urls"][0].startswith("https") else "http"
        self.origin = f"{self.scheme}://127.0.0.1:{self.port}"

    def connection(self, timeout: float = 10) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                               context=insecure_context())
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, token: str | None = "bearer"):
        """(status, headers, body); ``token="bearer"`` sends ours as a Bearer header."""
        headers = dict(headers or {})
        if token == "bearer":
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def api(self, method: str, path: str, obj=None, token: str | None = None):
        """(status, JSON answer) with ``token`` (ours by default) as a Bearer header."""
        headers = {"Authorization": f"Bearer {token or self.token}"}
        body = None
        if obj is not None:
            body = json.dumps(obj).encode()
            headers["Content-Type"] = "application/json"
        status, _, data = self.request(method, path, body, headers, token=None)
        return status, json.loads(data)

    def raw(self, data: bytes, timeout: float = 10) -> bytes:
        """Send raw bytes on a fresh connection and read until the server closes it."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(data)
            out = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                out += chunk
            return out

    def ws_url(self, session: str = "proj", pty: int = 0, token: str | None = None,
               **params) -> str:
        query = {"session": session, "pty": pty, **params}
        if token != "":
            query["token"] = token or self.token
        scheme = "wss" if self.scheme == "https" else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/ws?" + "&".join(
            f"{k}={v}" for k, v in query.items())

    async def term(self, session: str = "proj", pty: int = 0, token: str | None = None,
                   origin: str | None = None, **params) -> Term:
        conn = await websockets.connect(
            self.ws_url(session, pty, token, **params), origin=origin or self.origin,
            max_size=None, open_timeout=10, ping_interval=None,
            ssl=insecure_context() if self.scheme == "https" else None)
        return await Term.attached(conn)


def insecure_context() -> ssl.SSLContext:
    """The server's certificate is self-signed; tests check its fingerprint instead."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Term:
    """A browser-like terminal on one PTY: terminal bytes and JSON events kept apart."""

    def __init__(self, conn):
        self.conn = conn
        self.data = bytearray()
        self.events: list[dict] = []
        self.attached: dict | None = None

    @classmethod
    async def attached(cls, conn) -> Term:
        term = cls(conn)
        term.attached = await term.event("attached")
        return term

    @property
    def offset(self) -> int:
        """Stream offset after the last byte received."""
        return self.attached["offset"] + len(self.data)

    async def _next(self, timeout: float) -> None:
        message = await asyncio.wait_for(self.conn.recv(), timeout)
        if isinstance(message, bytes):
            self.data += message
        else:
            self.events.append(json.loads(message))

    async def until(self, needle: bytes, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        searched = 0  # search only what arrived since (large outputs stay linear)
        while self.data.find(needle, searched) < 0:
            searched = max(0, len(self.data) - len(needle) + 1)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {needle!r}; "
                                     f"got {bytes(self.data[-300:])!r}")
            await self._next(left)
        return bytes(self.data)

    async def event(self, kind: str, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                if ev.get("type") == kind:
                    self.events.remove(ev)
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind} event; events {self.events}")
            await self._next(left)

    async def send(self, data: bytes | str) -> None:
        await self.conn.send(data)

    async def resize(self, cols: int, rows: int) -> None:
        await self.conn.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    async def closed(self, timeout: float = 10):
        """Read until the server closes; returns the close frame it sent."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                await self._next(max(0.01, deadline - time.monotonic()))
        except websockets.ConnectionClosed as exc:
            return exc.rcvd

    async def close(self) -> None:
        await self.conn.close()
