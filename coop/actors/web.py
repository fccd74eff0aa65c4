"""Web actor (WEB-1…WEB-4, SEC-2, SEC-4, BYD-4, BYD-8): the browser's way in.

HTTP/1.1 on one asyncio protocol per connection around the sans-I/O parser
(``coop.http``): the token on every route (``webauth``), static files from
``coop/www/``, the JSON API (``webapi``, which asks the supervisor and the
session actors), and WebSocket upgrades. After an upgrade to
``/ws?session=…&pty=…`` the TCP socket goes to the session actor by
SCM_RIGHTS and this process forgets it, so terminal bytes never pass through
here. With ``--tls`` the TLS state lives in this process and cannot be
handed over; then frames are relayed (``WsRelay``) over a socketpair the
session actor treats as an IPC stream client.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import re
import signal
import socket
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, unquote

from coop import fdpass, hostaddrs, http, protocol, tlscert, webapi, websocket
from coop.log import log, set_actor
from coop.page import WWW
from coop.paths import Paths
from coop.protocol import ErrorCode, FrameType
from coop.webauth import Access, Auth, new_token, same_origin, without_token
from coop.wsclient import browser_control, browser_event, refusal

REQUEST_TIMEOUT = float(os.environ.get("COOP_WEB_REQUEST_TIMEOUT", "10"))  # head; body idle
KEEPALIVE_TIMEOUT = 60.0
WRITE_TIMEOUT = 30.0
WRITE_HIGH = 256 << 10
UPLOAD_LIMIT = 32 << 20
MAX_CONNECTIONS = 512
UPLOAD_PATH = re.compile(r"/api/sessions/[^/]+/upload")
CONNECT = "/connect"  # the tunnel's public connect page (TUN-3)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
    ".woff2": "font/woff2",
}


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


def text_response(status: int, text: str, close: bool = False) -> Response:
    return Response(status, f"{text}\n".encode(),
                    [("Content-Type", "text/plain; charset=utf-8"), *http.security_headers(True)],
                    close)


def json_response(status: int, obj: dict) -> Response:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(status, body,
                    [("Content-Type", "application/json"), *http.security_headers(True)])


FORBIDDEN = "forbidden"


class StaticFiles:
    """The page: ``coop/www/`` as shipped in the package, revalidated by ETag."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[Path, tuple[str, bytes]] = {}

    def get(self, request: http.Request, url_path: str | None = None) -> Response:
        """The file at ``url_path`` (default: the request's path)."""
        if request.method not in ("GET", "HEAD"):
            response = text_response(405, "method not allowed")
            response.headers.append(("Allow", "GET, HEAD"))
            return response
        url_path = url_path or request.raw_path
        path = http.safe_join(self.root, "/index.html" if url_path == "/" else url_path)
        if path is None:
            return text_response(404, "not found")
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode) or not path.resolve().is_relative_to(self.root):
                return text_response(404, "not found")
            etag = http.etag_for(st)
            headers = [("ETag", etag), *http.security_headers(path.suffix == ".html")]
            if path.suffix != ".html":
                headers.append(("Cache-Control", "no-cache"))  # cache, but ask again (ETag)
            if http.not_modified(request.headers.get("if-none-match"), etag):
                return Response(304, b"", headers)
            cached = self._cache.get(path)
            if cached is None or cached[0] != etag:
                cached = (etag, path.read_bytes())
                self._cache[path] = cached
        except OSError:
            return text_response(404, "not found")
        content_type = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
        return Response(200, cached[1], [("Content-Type", content_type), *headers])


class WebServer:
    """What every connection shares: address, tokens, the page, the API."""

    def __init__(self, paths: Paths, config: dict):
        self.paths = paths
        self.host = config.get("host") or "127.0.0.1"
        self.port = int(config.get("port", 8888))
        ro = config.get("read_only_token")
        self.auth = Auth(config.get("token") or new_token(),
                         ro if isinstance(ro, str) and ro else new_token() if ro else None)
        self.tls = bool(config.get("tls"))
        self.scheme = "https" if self.tls else "http"
        self.static = StaticFiles(WWW)
        self.api = webapi.Api(paths)
        self.connections: set[HttpConnection] = set()
        self.server: asyncio.AbstractServer | None = None
        self.fingerprint: str | None = None

    async def start(self) -> None:
        """Bind (and make or load the certificate); raises OSError or CertificateError."""
        context = None
        if self.tls:
            cert, key = await asyncio.to_thread(tlscert.ensure, self.paths.tls,
                                                hostaddrs.ipv4_addresses())
            context = tlscert.server_context(cert, key)
            self.fingerprint = tlscert.fingerprint(cert.read_text())
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: HttpConnection(self), self.host, self.port, ssl=context, backlog=128,
            ssl_handshake_timeout=REQUEST_TIMEOUT if context else None)
        self.port = self.server.sockets[0].getsockname()[1]

    def urls(self, token: str) -> list[str]:
        """The local URL, then one per LAN address when bound to every address (WEB-1)."""
        def url(address: str) -> str:
            host = f"[{address}]" if ":" in address else address
            return f"{self.scheme}://{host}:{self.port}/?token={quote(token, safe='')}"

        if self.host in ("0.0.0.0", "::", ""):
            return [url("127.0.0.1")] + [url(a) for a in hostaddrs.ipv4_addresses()]
        return [url(self.host)]

    def info(self) -> dict:
        info = {"host": self.host, "port": self.port, "token": self.auth.token,
                "urls": self.urls(self.auth.token)}
        if self.auth.read_only_token:
            info["read_only_token"] = self.auth.read_only_token
            info["read_only_urls"] = self.urls(self.auth.read_only_token)
        if self.fingerprint:
            info["fingerprint"] = self.fingerprint
        return info

    def close(self) -> None:
        if self.server:
            self.server.close()
        for conn in list(self.connections):
            conn.transport.close()


class HttpConnection(asyncio.Protocol):
    """One client connection: requests in order, until it closes, times out, is
    handed to a session actor or becomes a TLS relay."""

    def __init__(self, server: WebServer):
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.parser = http.RequestParser(stream_body=self._stream_body)
        self.queue: collections.deque = collections.deque()
        self.wakeup = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.body_of: http.Request | None = None  # the request whose body is arriving
        self.spools: dict[int, BinaryIO] = {}  # id(request) → its streamed upload
        self.relay: WsRelay | None = None
        self.task: asyncio.Task | None = None
        self.handed_off = False
        self.served = 0
        self.eof = False
        self.lost = False
        self._write_paused = False
        self._writable: asyncio.Future | None = None

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        if len(self.server.connections) >= MAX_CONNECTIONS:
            self.lost = True
            transport.write(http.render_response(503, [("Connection", "close")]))
            transport.close()
            return
        self.server.connections.add(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        self._arm(REQUEST_TIMEOUT)
        self.task = self.loop.create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if self.relay:
            self.relay.from_browser(data)
            return
        if self.lost:
            return
        was_idle = self.parser.idle
        events = self.parser.feed(data)
        if self.body_of is not None and any(ev is self.body_of for ev in events):
            self.body_of = None
        if events:
            self.queue.extend(events)
            self.transport.pause_reading()
            self._disarm()
            self.wakeup.set()
        elif self.body_of is not None:
            self._arm(REQUEST_TIMEOUT)  # a body may be long; each piece renews the wait
        elif was_idle and not self.parser.idle:
            self._arm(REQUEST_TIMEOUT)  # a head gets one deadline, however it trickles in

    def eof_received(self) -> bool:
        if self.relay:
            self.relay.browser_closed()
            return False
        self.eof = True  # answer what was asked, then close
        self.wakeup.set()
        return not self.server.tls  # a TLS transport cannot stay half-open

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.server.connections.discard(self)
        self._disarm()
        self.wakeup.set()
        if self._writable and not self._writable.done():
            self._writable.set_result(None)
        for spool in self.spools.values():
            spool.close()
        self.spools.clear()
        if self.relay:
            self.relay.browser_closed()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.relay:
            self.relay.browser_paused(True)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.relay:
            self.relay.browser_paused(False)
        if self._writable and not self._writable.done():
            self._writable.set_result(None)

    # -- timers -----------------------------------------------------------------

    def _arm(self, delay: float) -> None:
        self._disarm()
        self.timer = self.loop.call_later(delay, self._timed_out)

    def _disarm(self) -> None:
        if self.timer:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        """SEC-4: a silent keep-alive connection closes; a request that trickles in
        (slowloris) gets 408 and closes."""
        self.timer = None
        if not (self.parser.idle and self.body_of is None):
            self.transport.write(self._render(text_response(408, "request timeout", True)))
        self.transport.close()

    # -- requests ---------------------------------------------------------------

    def _stream_body(self, request: http.Request):
        """Called by the parser once a head is complete: an authorised upload streams
        to a temporary file (up to UPLOAD_LIMIT), every other body stays small."""
        self.body_of = request
        if (request.method == "POST" and UPLOAD_PATH.fullmatch(request.raw_path)
                and self.server.auth.access(request) is Access.FULL):
            # closed by _request once answered, or by connection_lost
            spool = tempfile.TemporaryFile(dir=self.server.paths.state)  # noqa: SIM115
            self.spools[id(request)] = spool
            return UPLOAD_LIMIT, spool.write
        return None

    async def _serve(self) -> None:
        try:
            while not self.lost:
                if not self.queue:
                    if self.eof:
                        return
                    self._wait_for_more()
                    self.wakeup.clear()
                    await self.wakeup.wait()
                    continue
                event = self.queue.popleft()
                if isinstance(event, http.Continue):
                    self.transport.write(http.CONTINUE_RESPONSE)
                    continue
                if isinstance(event, http.ParseError):
                    log(f"bad request: {event.status} {event.message}")
                    await self._send(None, text_response(event.status, event.message, True))
                    return
                if not await self._request(event):
                    return
        except ConnectionError:
            self.transport.abort()
        except Exception as exc:  # noqa: BLE001 - SEC-4: one bad connection, not the server
            log(f"internal error serving a web request: {exc!r}")
            self.transport.abort()
        finally:
            if not (self.handed_off or self.relay):
                self.transport.close()

    def _wait_for_more(self) -> None:
        """Nothing queued: read again, with the timeout for where the client is."""
        if self.lost:
            return
        self.transport.resume_reading()
        # a connection that has not sent one request yet gets no keep-alive grace
        self._arm(KEEPALIVE_TIMEOUT if self.served and self.parser.idle else REQUEST_TIMEOUT)

    async def _request(self, request: http.Request) -> bool:
        """Answer one request; False when the connection must not serve another."""
        spool = self.spools.pop(id(request), None)
        self.served += 1
        try:
            if request.raw_path == "/ws" or request.wants_upgrade_websocket:
                return await self._websocket(request)
            return await self._send(request, await self._route(request, spool))
        finally:
            if spool:
                spool.close()

    async def _route(self, request: http.Request, spool) -> Response:
        if request.raw_path == CONNECT or request.raw_path.startswith(CONNECT + "/"):
            return self._connect_page(request)
        if request.raw_path == webapi.TUNNEL_ANSWER:
            return await self._tunnel_answer(request)
        auth = self.server.auth
        access = auth.access(request)
        if access is None:
            return text_response(403, FORBIDDEN)
        is_api = request.raw_path.startswith("/api/")
        if is_api:
            return await self._api(request, access, spool)
        if request.method in ("GET", "HEAD") and auth.from_query(request):
            # WEB-3: the token moves into a cookie and leaves the address bar and history
            return Response(303, b"", [("Location", without_token(request)),
                                       ("Set-Cookie", auth.set_cookie(request, self.server.tls)),
                                       *http.security_headers(True)])
        return self.server.static.get(request)

    def _connect_page(self, request: http.Request) -> Response:
        """TUN-3: the tunnel's connect page is public, token or not: the page (the same
        files as ``coop www export`` writes) under ``/connect/``, nothing else. The
        offer stays in the URL fragment, which a redirect keeps."""
        if request.raw_path == CONNECT:
            return Response(308, b"", [("Location", CONNECT + "/"), *http.security_headers(True)])
        return self.server.static.get(request, request.raw_path[len(CONNECT):])

    async def _tunnel_answer(self, request: http.Request) -> Response:
        """TUN-3: the connect page's automatic answer; no web token, the tunnel's
        one-time secret instead (the tunnel actor checks it)."""
        if request.method != "POST":
            response = text_response(405, "method not allowed")
            response.headers.append(("Allow", "POST"))
            return response
        if "origin" in request.headers and not same_origin(request, self.server.scheme):
            return text_response(403, FORBIDDEN)
        try:
            status, answer = await webapi.tunnel_answer(self.server.paths, request)
        except webapi.ApiError as exc:
            status, answer = exc.status, exc.answer()
        return json_response(status, answer)

    async def _api(self, request: http.Request, access: Access, spool) -> Response:
        if request.method not in ("GET", "HEAD") and "origin" in request.headers \
                and not same_origin(request, self.server.scheme):
            return text_response(403, FORBIDDEN)
        segments = [unquote(s) for s in request.raw_path.split("/")[2:]]
        try:
            status, answer = await self.server.api.handle(
                request, segments, access is Access.READ_ONLY, spool)
        except webapi.ApiError as exc:
            status, answer = exc.status, exc.answer()
        if isinstance(answer, webapi.Download):
            return Response(status, answer.body, [
                ("Content-Type", answer.content_type),
                ("Content-Disposition", f'inline; filename="{answer.filename}"'),
                *http.security_headers(True)])
        return json_response(status, answer)

    def _render(self, response: Response, request: http.Request | None = None) -> bytes:
        headers = list(response.headers)
        if response.close:
            headers.append(("Connection", "close"))
        elif request is not None and request.version == "HTTP/1.0":
            headers.append(("Connection", "keep-alive"))
        return http.render_response(response.status, headers, response.body,
                                    head_only=request is not None and request.method == "HEAD",
                                    date=time.time())

    async def _send(self, request: http.Request | None, response: Response) -> bool:
        """Write a response; True when the connection stays open for another request."""
        if request is None or not request.keep_alive or (self.parser.stopped and not self.queue):
            response.close = True  # (a request pipelined behind this one still gets its answer)
        if response.status >= 400 and request is not None:
            log(f"{request.method} {request.raw_path[:200]} → {response.status}")
        self.transport.write(self._render(response, request))
        await self._drain()
        return not response.close

    async def _drain(self, empty: bool = False) -> None:
        """Wait until the client has taken our bytes (or all of them with ``empty``);
        a client that stops reading is cut off after WRITE_TIMEOUT."""
        if empty:
            self.transport.set_write_buffer_limits(high=0)  # resume only once it is empty
        if self._write_paused and not self.lost:
            self._writable = self.loop.create_future()
            try:
                await asyncio.wait_for(self._writable, WRITE_TIMEOUT)
            except TimeoutError:
                raise ConnectionError("client stopped reading") from None
        if self.lost:
            raise ConnectionError("client went away")

    # -- WebSocket ---------------------------------------------------------------

    async def _websocket(self, request: http.Request) -> bool:
        """Upgrade ``/ws``, then hand the socket to the session actor (or relay under TLS).
        Always False: this connection serves no further HTTP request."""
        server = self.server
        access = server.auth.access(request)
        if request.raw_path != "/ws":
            return await self._send(request, text_response(404, "not found", True))
        if access is None or not same_origin(request, server.scheme):
            return await self._send(request, text_response(403, FORBIDDEN, True))
        error = websocket.check_upgrade(request)
        if error is not None:
            response = text_response(error.status, error.message, True)
            response.headers.extend(error.headers)
            return await self._send(request, response)
        try:
            attach = attach_request(request.query)
        except ValueError as exc:
            return await self._send(request, text_response(400, str(exc), True))
        read_only = access is Access.READ_ONLY
        self.transport.write(websocket.handshake_response(
            request.headers.get("sec-websocket-key"), http.security_headers(True)))
        refused = await self._check_pty(attach["session"], attach["pty"])
        if refused:
            self._close_websocket(refused)
            return False
        log(f"websocket to {attach['session']} pty {attach['pty']}"
            + (" (read-only)" if read_only else ""))
        if server.tls:
            await self._relay(attach, read_only)
        else:
            await self._hand_off(attach, read_only)
        return False

    async def _check_pty(self, name: str, pty: int) -> dict | None:
        """Ask the session before the hand-off so a wrong name or PTY gets a close
        frame with a reason instead of a connection that just drops."""
        try:
            answer = await fdpass.ask(str(self.server.paths.actor_socket(name)), {"cmd": "info"},
                                      timeout=5)
        except (TimeoutError, OSError):
            return protocol.error(ErrorCode.SESSION_NOT_FOUND, f"no session {name!r}")
        ptys = [p.get("id") for p in (answer.get("session") or {}).get("ptys") or []]
        if pty not in ptys:
            return protocol.error(ErrorCode.PTY_NOT_FOUND, f"session {name} has no pty {pty}")
        return None

    def _close_websocket(self, answer: dict) -> None:
        code, reason = refusal(answer)
        self.transport.write(websocket.Connection().send_close(code, reason))
        self.transport.close()

    def _adopt(self, attach: dict, read_only: bool, dialect: str, rest: bytes) -> dict:
        return {"cmd": "adopt", "kind": "web", "dialect": dialect, "read_only": read_only,
                "request": attach, "rest": base64.b64encode(rest).decode()}

    async def _hand_off(self, attach: dict, read_only: bool) -> None:
        """The 101 is on the wire before the actor may write; from then on only the
        actor writes, unless it said it did not take the socket."""
        await self._drain(empty=True)
        path = str(self.server.paths.actor_socket(attach["session"]))
        msg = self._adopt(attach, read_only, "websocket", self.parser.leftover)
        fd = os.dup(self.transport.get_extra_info("socket").fileno())
        answer: dict | None
        try:
            answer = await fdpass.ask(path, msg, [fd], timeout=10)
        except (FileNotFoundError, ConnectionRefusedError):  # never reached the actor
            answer = protocol.error(ErrorCode.SESSION_NOT_FOUND, f"session {attach['session']} is gone")
        except (TimeoutError, OSError):
            answer = None  # the actor may own the socket now: stay silent
        finally:
            os.close(fd)
        self.handed_off = True
        if answer is not None and not answer.get("ok"):
            self._close_websocket(answer)
        else:
            self.transport.close()  # our copy only: no shutdown, the actor's stays open

    async def _relay(self, attach: dict, read_only: bool) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        relay = WsRelay(self.transport)
        try:
            await self.loop.connect_accepted_socket(lambda: SessionSide(relay), ours)
            path = str(self.server.paths.actor_socket(attach["session"]))
            answer = await fdpass.ask(path, self._adopt(attach, read_only, "ipc", b""),
                                      [theirs.fileno()], timeout=10)
        except (TimeoutError, OSError):
            answer = protocol.error(ErrorCode.SESSION_NOT_FOUND, f"session {attach['session']} is gone")
        finally:
            theirs.close()
        if not answer.get("ok"):
            relay.refuse(answer)
            return
        self.relay = relay
        relay.from_browser(self.parser.leftover)
        self.transport.resume_reading()


def attach_request(query: dict) -> dict:
    """The IPC ``attach`` for ``/ws?session=&pty=&offset=&cols=&rows=``; ValueError when
    a parameter is malformed."""
    name = query.get("session", "")
    if not webapi.NAME_RE.match(name):
        raise ValueError("session: a session name is required")
    attach = {"cmd": "attach", "session": name, "pty": 0}
    for key, low, high in (("pty", 0, 1 << 16), ("offset", 0, 1 << 62), ("cols", 1, 9999),
                           ("rows", 1, 9999)):
        value = query.get(key)
        if value is None or value == "":
            continue
        if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
            raise ValueError(f"{key}: expected a number from {low} to {high}")
        attach[key] = int(value)
    return attach


class WsRelay:
    """``--tls``: WebSocket frames from the browser ↔ IPC stream frames to the session
    actor (a socketpair it serves like any stream client). Each side's back-pressure
    pauses the other, so a slow browser makes the session's queue lag, not ours grow."""

    def __init__(self, browser: asyncio.Transport):
        self.browser = browser
        self.session: asyncio.Transport | None = None
        self.ws = websocket.Connection()
        self.decoder = protocol.FrameDecoder()
        self.answered = False

    def from_browser(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for ev in self.ws.events():
            if isinstance(ev, websocket.Binary):
                self.session.writelines(protocol.encode_data(ev.data))
            elif isinstance(ev, websocket.Text):
                control = browser_control(ev.data)
                if control is None:
                    self.session.writelines(protocol.encode_data(ev.data.encode("utf-8")))
                else:
                    self.session.write(protocol.encode_control(control))
            self._flush()
        self._flush()
        if self.ws.closed:
            self.browser.close()
            self.session.close()

    def from_session(self, data: bytes) -> None:
        try:
            for payload in self.decoder.feed(data):
                if not self.answered:  # the command-mode answer to the attach
                    self.answered = True
                    answer = protocol.decode_json(payload)
                    if not answer.get("ok"):
                        self.refuse(answer)
                        return
                    continue
                kind, body = protocol.split_stream_frame(payload)
                if self.ws.state is not websocket.State.OPEN:
                    continue
                if kind == FrameType.DATA:
                    self.browser.writelines([websocket.encode_frame_header(
                        websocket.Opcode.BINARY, len(body)), body])
                elif kind == FrameType.CONTROL:
                    mapped = browser_event(json.loads(body))
                    if mapped is not None:
                        self.browser.write(self.ws.send_text(json.dumps(mapped)))
        except (protocol.ProtocolError, ValueError):
            self.refuse(protocol.error(ErrorCode.INTERNAL, "bad frame from the session"))

    def _flush(self) -> None:
        pending = self.ws.data_to_send()
        if pending:
            self.browser.write(pending)

    def refuse(self, answer: dict) -> None:
        if self.ws.state is websocket.State.OPEN:
            code, reason = refusal(answer)
            self.browser.write(self.ws.send_close(code, reason))
        self.browser.close()
        if self.session:
            self.session.close()

    def session_closed(self) -> None:
        if self.ws.state is websocket.State.OPEN:
            self.browser.write(self.ws.send_close(websocket.CloseCode.NORMAL))
        self.browser.close()

    def browser_closed(self) -> None:
        if self.session:
            self.session.close()

    def browser_paused(self, paused: bool) -> None:
        if self.session:
            (self.session.pause_reading if paused else self.session.resume_reading)()


class SessionSide(asyncio.Protocol):
    """The relay's socketpair end towards the session actor."""

    def __init__(self, relay: WsRelay):
        self.relay = relay

    def connection_made(self, transport) -> None:
        self.relay.session = transport

    def data_received(self, data: bytes) -> None:
        self.relay.from_session(data)

    def connection_lost(self, exc) -> None:
        self.relay.session_closed()

    def pause_writing(self) -> None:
        self.relay.browser.pause_reading()

    def resume_writing(self) -> None:
        self.relay.browser.resume_reading()


async def run(paths: Paths, config: dict, ready_fd: int) -> None:
    """Actor main: bind, report the URLs (or why not) on ``ready_fd``, serve until SIGTERM."""
    set_actor("web")
    server = WebServer(paths, config)

    def ready(answer: dict) -> None:
        os.write(ready_fd, protocol.encode_message(answer))
        os.close(ready_fd)

    try:
        await server.start()
    except OSError as exc:
        where = f"{server.host}:{server.port}"
        ready(protocol.error(ErrorCode.INVALID_COMMAND,
                             f"cannot listen on {where}: {exc.strerror or exc}"))
        return
    except tlscert.CertificateError as exc:
        ready(protocol.error(ErrorCode.INVALID_COMMAND, str(exc)))
        return
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    ready(protocol.ok(**server.info()))
    await stopping.wait()
    server.close()
    log("web server stopped")
