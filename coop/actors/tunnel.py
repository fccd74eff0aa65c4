"""Tunnel actor: WebRTC peers for ``coop tunnel`` (TUN-1 … TUN-5, SEC-3).

The only importer of aiortc (heavy), and only once forked: importing this
module stays cheap, so the supervisor never carries aiortc. The supervisor forks it on the first
``tunnel`` command and forwards every ``tunnel*`` command to
``~/.coop/tunnel.sock``; one process hosts every tunnel and exits once none
has existed for ``RETAIN`` seconds.

Channels of one tunnel (TUN-4):

* ``coop-control`` (made by the daemon, in the offer): the browser sends text
  JSON requests ``{"id"?, "cmd": "ls"|"create"|"kill"|"shell"|"attach", …}``;
  each gets exactly one text JSON answer there, carrying the same ``id``.
  ``ls``/``create``/``kill`` are the supervisor's answers; ``shell
  {session, command?}`` answers ``{session, pty}`` (attach to it next).
* ``coop-pty-<session>-<pty>``: for each successful ``attach {session, pty?,
  cols?, rows?, offset?}`` the daemon opens this channel. Its first message
  is text: the session actor's attach answer plus the request's ``id`` (so
  attaching the same PTY twice stays unambiguous); every later message is
  binary, one IPC-5 stream frame (length, type, payload; terminal bytes in
  frames of at most 16 KiB). The browser sends binary IPC-5 frames (keys,
  ``{"type": "resize"}``, ``{"type": "detach"}``); closing the channel
  detaches. Behind it, a socketpair whose other end the session actor holds
  as a filtered ``tunnel`` client (FLT-1).

A slow channel never stalls the others: aiortc sends every channel's data
through one FIFO, so each channel may hold at most ``HIGH_WATER`` bytes in
it; past that the bridge stops reading its socketpair, the session actor's
bounded queue takes over (drop, then ``lag`` and a replay, PTY-2).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import secrets
import signal
import socket
import struct
import time
from collections import deque

from coop import envelope, fdpass, protocol, unixsocket
from coop.actors.supervisor import NAME_RE
from coop.unixsocket import SocketPathError
from coop.log import log, set_actor
from coop.machine import machine_id
from coop.paths import Paths
from coop.protocol import ErrorCode, FrameType, ProtocolError

DEFAULT_STUN = ["stun:stun.l.google.com:19302", "stun:stun.cloudflare.com:3478"]
RETAIN = 30.0  # a finished tunnel's state stays readable this long
HIGH_WATER = 64 << 10  # bytes one PTY channel may have queued in aiortc
LOW_WATER = 16 << 10
CHUNK = 16 << 10  # interoperable DataChannel message size
INPUT_LIMIT = 4 << 20  # browser input the session has not read yet
MAX_CHANNELS = 64
MAX_INFLIGHT = 32  # control requests being served at once, per tunnel
CONTROL_COMMANDS = ("ls", "create", "kill", "shell", "attach")
ADVICE = "try `coop serve` on the LAN, or forward a port"


def connect_timeout() -> float:
    """TUN-5: 5 minutes to connect; ``COOP_TUNNEL_TIMEOUT`` shortens it for tests."""
    return float(os.environ.get("COOP_TUNNEL_TIMEOUT", "300"))


class Tunnel:
    """One peer connection: offer, answer, control requests, PTY bridges."""

    def __init__(self, actor: TunnelActor, ident: str, stun: list[str]):
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

        self.actor = actor
        self.id = ident
        self.secret = secrets.token_urlsafe(9)
        self.state = "waiting"
        self.reason: str | None = None
        self.finished_at: float | None = None
        self.closing: asyncio.Future | None = None  # the peer connection's close
        self.bridges: set[PtyBridge] = set()
        self.inflight = 0
        self.pc = RTCPeerConnection(RTCConfiguration(
            iceServers=[RTCIceServer(urls=url) for url in stun]))
        self.pc.on("connectionstatechange", self._on_connection_state)
        self.control = self.pc.createDataChannel("coop-control")
        self.control.on("open", self._on_control_open)
        self.control.on("close", lambda: self.finish("closed", "the browser disconnected"))
        self.control.on("message", self._on_control_message)
        self._deadline = asyncio.get_running_loop().call_later(
            connect_timeout(), self._give_up)

    async def offer(self, paths: Paths, connect_url: str) -> dict:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        description = envelope.Description.from_sdp(self.pc.localDescription.sdp)
        if not description.candidates:
            raise ProtocolError(ErrorCode.INTERNAL,
                                "no network address to offer (is a network interface up?)")
        code = envelope.encode_offer(envelope.Offer(
            description, machine_id(paths), socket.gethostname(), self.secret))
        url = f"{connect_url.rstrip('/')}/connect#{code}" if connect_url else ""
        return protocol.ok(tunnel=self.id, envelope=code, url=url)

    # -- answer and state (TUN-3, TUN-5) -------------------------------------

    async def apply_answer(self, code: str) -> dict:
        from aiortc import RTCSessionDescription

        if self.state != "waiting":
            return protocol.error(ErrorCode.INVALID_COMMAND,
                                  f"tunnel {self.id} is {self.state}, not waiting for an answer")
        try:
            answer = envelope.decode_answer(code).without_mdns()
        except envelope.EnvelopeError as exc:
            return protocol.error(ErrorCode.INVALID_COMMAND, f"bad answer code: {exc}")
        self.state = "connecting"  # refuse a second answer from now on
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(answer.to_sdp(), "answer"))
        except Exception as exc:  # noqa: BLE001 - aiortc rejected what the envelope accepted
            self.finish("failed", f"the answer could not be applied: {exc}")
            return protocol.error(ErrorCode.INVALID_COMMAND, f"answer not applied: {exc}")
        log(f"tunnel {self.id}: answer applied")
        return protocol.ok(tunnel=self.id, state=self.state)

    def status(self) -> dict:
        extra = {"reason": self.reason} if self.reason else {}
        return protocol.ok(tunnel=self.id, state=self.state, **extra)

    def _on_control_open(self) -> None:
        if self.state in ("waiting", "connecting"):
            self.state = "connected"
            self._deadline.cancel()
            log(f"tunnel {self.id}: connected")

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state == "failed":
            if self.state == "connected":
                self.finish("closed", "the browser is gone (connection lost)")
            else:
                self.finish("failed", f"ICE failed: no network path to the browser; {ADVICE}")
        elif state == "closed":
            self.finish("closed", "the connection closed")

    def _give_up(self) -> None:
        if self.state in ("waiting", "connecting"):
            self.finish("failed", f"no connection within {connect_timeout():g} s; {ADVICE}")

    def finish(self, state: str, reason: str) -> None:
        """End the tunnel once; the first reason wins."""
        if self.finished_at is not None:
            return
        self.state, self.reason = state, reason
        self.finished_at = time.monotonic()
        self._deadline.cancel()
        log(f"tunnel {self.id}: {state} ({reason})")
        for bridge in list(self.bridges):
            bridge.close()
        self.closing = asyncio.ensure_future(self._close_pc())

    async def _close_pc(self) -> None:
        try:
            await asyncio.wait_for(self.pc.close(), 5)
        except Exception as exc:  # noqa: BLE001 - closing anyway (a timeout included)
            log(f"tunnel {self.id}: close: {exc!r}")

    # -- coop-control (TUN-4) ------------------------------------------------

    def _on_control_message(self, message) -> None:
        if self.finished_at is not None:
            return
        if self.inflight >= MAX_INFLIGHT:
            self._reply(None, protocol.error(ErrorCode.INVALID_COMMAND, "too many requests at once"))
            return
        self.inflight += 1
        asyncio.ensure_future(self._serve_control(message))

    async def _serve_control(self, message) -> None:
        ident = None
        try:
            if not isinstance(message, str):
                raise ProtocolError(ErrorCode.INVALID_COMMAND, "control messages are JSON text")
            msg = protocol.decode_json(message.encode("utf-8", "surrogatepass"))
            ident = msg.get("id") if isinstance(msg.get("id"), (int, str)) else None
            cmd, msg = protocol.check_command(msg)
            if cmd not in CONTROL_COMMANDS:
                raise ProtocolError(ErrorCode.INVALID_COMMAND, f"{cmd}: not available over a tunnel")
            answer = await getattr(self, f"_cmd_{cmd}")(msg, ident)
        except ProtocolError as exc:
            answer = exc.answer()
        except Exception as exc:  # noqa: BLE001 - never let one request end the tunnel
            log(f"tunnel {self.id}: internal error: {exc!r}")
            answer = protocol.error(ErrorCode.INTERNAL, f"internal error: {exc}")
        finally:
            self.inflight -= 1
        self._reply(ident, answer)

    def _reply(self, ident, answer: dict) -> None:
        if self.control.readyState == "open":
            self.control.send(json.dumps({**answer, "id": ident} if ident is not None else answer))

    async def _cmd_ls(self, msg: dict, ident) -> dict:
        return await self.actor.ask_supervisor({"cmd": "ls"})

    async def _cmd_kill(self, msg: dict, ident) -> dict:
        return await self.actor.ask_supervisor(
            {"cmd": "kill", "session": msg["session"], "force": bool(msg.get("force"))})

    async def _cmd_create(self, msg: dict, ident) -> dict:
        """Like the web API's create: paths under the home, the Coopfile applies."""
        from coop.webapi import create_request

        request = await asyncio.to_thread(create_request, msg["workspace"], msg.get("name"))
        return await self.actor.ask_supervisor(request, timeout=120)

    async def _cmd_shell(self, msg: dict, ident) -> dict:
        path = self.actor.session_socket(msg["session"])
        request = {"cmd": "spawn_shell"}
        if msg.get("command") is not None:
            request["command"] = msg["command"]
        answer = await self.actor.ask_session(path, request)
        return {**answer, "session": msg["session"]} if answer.get("ok") else answer

    async def _cmd_attach(self, msg: dict, ident) -> dict:
        if len(self.bridges) >= MAX_CHANNELS:
            return protocol.error(ErrorCode.INVALID_COMMAND, f"at most {MAX_CHANNELS} PTY channels")
        session, pty = msg["session"], msg.get("pty") or 0
        path = self.actor.session_socket(session)
        request = {"cmd": "attach", "session": session, "pty": pty}
        request.update({k: msg[k] for k in ("cols", "rows", "offset") if msg.get(k) is not None})
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        bridge = PtyBridge(self, ident)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: bridge, ours)
            self.bridges.add(bridge)  # until its socketpair closes (connection_lost)
            adopted = await self.actor.ask_session(path, {"cmd": "adopt", "kind": "tunnel",
                                                          "request": request}, [theirs.fileno()])
        finally:
            theirs.close()
        if not adopted.get("ok"):
            bridge.close()
            return adopted
        answer = await bridge.first_answer()
        if not answer.get("ok"):
            bridge.close()
            return answer
        if self.finished_at is not None:
            bridge.close()
            return protocol.error(ErrorCode.INVALID_COMMAND, "the tunnel closed")
        label = f"coop-pty-{session}-{answer.get('pty', pty)}"
        bridge.open_channel(self.pc.createDataChannel(label),
                            json.dumps({**answer, "id": ident}))
        return {**answer, "channel": label}


class PtyBridge(asyncio.Protocol):
    """One attached PTY: our end of the socketpair ⇄ one DataChannel."""

    def __init__(self, tunnel: Tunnel, ident):
        self.tunnel = tunnel
        self.ident = ident
        self.transport: asyncio.Transport | None = None
        self.channel = None
        self._decoder = protocol.FrameDecoder()
        self._answer = asyncio.get_running_loop().create_future()
        self._pending: deque = deque()  # messages waiting for the channel to open
        self._pending_bytes = 0
        self._paused = False
        self._closed = False

    async def first_answer(self, timeout: float = 10) -> dict:
        """The session actor's command-mode answer, which precedes stream frames."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._answer), timeout)
        except TimeoutError:
            return protocol.error(ErrorCode.INTERNAL, "the session did not answer the attach")

    def open_channel(self, channel, first: str) -> None:
        self.channel = channel
        channel.bufferedAmountLowThreshold = LOW_WATER
        channel.on("open", self._flush)
        channel.on("bufferedamountlow", self._maybe_resume)
        channel.on("message", self._from_browser)
        channel.on("close", self.close)
        self._pending.appendleft(first)
        self._pending_bytes += len(first)
        if channel.readyState == "open":
            self._flush()

    # -- session → browser ---------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self._decoder.feed(data)
        except ProtocolError:
            self.close()
            return
        for payload in payloads:
            if not self._answer.done():
                try:
                    self._answer.set_result(protocol.decode_json(payload))
                except ProtocolError as exc:
                    self._answer.set_result(exc.answer())
                continue
            if payload[:1] == bytes((FrameType.DATA,)) and len(payload) > CHUNK + 1:
                for i in range(1, len(payload), CHUNK):
                    self._send(protocol.encode_frame(FrameType.DATA, payload[i:i + CHUNK]))
            else:
                self._send(protocol.encode_raw(payload))
        if self._queued() > HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def _send(self, message) -> None:
        if self.channel is not None and self.channel.readyState == "open" and not self._pending:
            self.channel.send(message)
        else:
            self._pending.append(message)
            self._pending_bytes += len(message)

    def _queued(self) -> int:
        return self._pending_bytes + (self.channel.bufferedAmount if self.channel else 0)

    def _flush(self) -> None:
        while self._pending and self.channel.readyState == "open":
            message = self._pending.popleft()
            self._pending_bytes -= len(message)
            self.channel.send(message)
        if self._closed and not self._pending:
            self.channel.close()
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        if self._paused and self._queued() <= LOW_WATER and not self._closed:
            self._paused = False
            self.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        """The session ended this client (detach, PTY gone, shutdown)."""
        if not self._answer.done():
            self._answer.set_result(protocol.error(ErrorCode.INTERNAL, "the session closed the attach"))
        self._closed = True
        self.tunnel.bridges.discard(self)
        if self.channel is not None and self.channel.readyState == "open" and not self._pending:
            self.channel.close()

    # -- browser → session ---------------------------------------------------

    def _from_browser(self, message) -> None:
        if self._closed or not isinstance(message, bytes):
            return
        self.transport.write(message)
        if self.transport.get_write_buffer_size() > INPUT_LIMIT:
            log(f"tunnel {self.tunnel.id}: input backlog over {INPUT_LIMIT} bytes; detaching")
            self.close()

    def close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()
        if self.channel is not None and self.channel.readyState in ("connecting", "open"):
            self.channel.close()


class TunnelActor:
    """The control socket and the table of tunnels."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self.tunnels: dict[str, Tunnel] = {}
        self.stopping = asyncio.Event()
        self.empty_since = time.monotonic()

    def session_socket(self, session: str) -> str:
        if not NAME_RE.fullmatch(session):
            raise ProtocolError(ErrorCode.SESSION_NOT_FOUND, f"no session {session!r}")
        return str(self.paths.actor_socket(session))

    async def ask_session(self, path: str, msg: dict, fds=(), timeout: float = 30) -> dict:
        try:
            return await fdpass.ask(path, msg, list(fds), timeout)
        except (TimeoutError, OSError):
            name = os.path.basename(os.path.dirname(path))
            return protocol.error(ErrorCode.SESSION_NOT_FOUND, f"no session {name!r} (see ls)")

    async def ask_supervisor(self, msg: dict, timeout: float = 30) -> dict:
        """One request over ~/.coop/sock, like any client (IPC-2, IPC-3)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.paths.socket)), 5)
        except (TimeoutError, OSError):
            return protocol.error(ErrorCode.INTERNAL, "the daemon is not answering")
        try:
            writer.write(protocol.encode_message(protocol.hello()) + protocol.encode_message(msg))
            for _ in range(2):
                head = await asyncio.wait_for(reader.readexactly(4), timeout)
                (length,) = struct.unpack(">I", head)
                if length > protocol.MAX_MESSAGE:
                    raise ProtocolError(ErrorCode.MESSAGE_TOO_LARGE, "oversized answer")
                answer = protocol.decode_json(await asyncio.wait_for(reader.readexactly(length), 5))
                if not answer.get("ok"):
                    return answer
            return answer
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return protocol.error(ErrorCode.INTERNAL, "the daemon did not answer")
        finally:
            writer.close()

    # -- control socket ------------------------------------------------------

    async def serve(self, listener: socket.socket) -> None:
        housekeeping = asyncio.ensure_future(self._housekeeping())
        await fdpass.serve_requests(listener, self._handle, self.stopping)
        housekeeping.cancel()
        for tunnel in self.tunnels.values():
            tunnel.finish("closed", "the daemon is shutting down")
        await asyncio.gather(*(t.closing for t in self.tunnels.values() if t.closing))

    async def _housekeeping(self) -> None:
        """Forget finished tunnels after RETAIN; exit when none is left."""
        while True:
            await asyncio.sleep(1)
            now = time.monotonic()
            for ident, t in list(self.tunnels.items()):
                if t.finished_at is not None and now - t.finished_at >= RETAIN:
                    del self.tunnels[ident]
            if self.tunnels:
                self.empty_since = now
            elif now - self.empty_since >= RETAIN:
                log("no tunnels left; exiting")
                self.stopping.set()

    async def _handle(self, msg: dict, fds: list[int]) -> dict:
        for fd in fds:
            os.close(fd)
        cmd, msg = protocol.check_command(msg)
        return await self.dispatch(cmd, msg)

    async def dispatch(self, cmd: str, msg: dict) -> dict:
        if cmd == "tunnel":
            return await self.create(msg)
        if cmd == "tunnel_answer":
            return await self.answer(msg)
        if cmd in ("tunnel_status", "tunnel_close"):
            tunnel = self.tunnels.get(msg["tunnel"])
            if tunnel is None:
                return protocol.error(ErrorCode.INVALID_COMMAND, f"no tunnel {msg['tunnel']!r}")
            if cmd == "tunnel_close":
                tunnel.finish("closed", "closed by coop tunnel")
            return tunnel.status()
        return protocol.error(ErrorCode.INVALID_COMMAND, f"{cmd}: not a tunnel command")

    async def create(self, msg: dict) -> dict:
        if msg.get("no_stun"):
            stun = []
        else:
            stun = msg.get("stun") or DEFAULT_STUN
            if not all(isinstance(u, str) and re.fullmatch(r"stuns?:[^\s]{1,200}", u) for u in stun):
                return protocol.error(ErrorCode.INVALID_COMMAND,
                                      "STUN servers must be stun:HOST[:PORT] URLs")
        connect_url = msg.get("connect_url") or ""
        ident = secrets.token_hex(4)
        tunnel = Tunnel(self, ident, stun)
        self.tunnels[ident] = tunnel
        try:
            answer = await tunnel.offer(self.paths, connect_url)
        except ProtocolError as exc:
            tunnel.finish("failed", exc.message)
            return exc.answer()
        except Exception as exc:  # noqa: BLE001 - gathering or encoding failed
            tunnel.finish("failed", f"cannot make an offer: {exc}")
            return protocol.error(ErrorCode.INTERNAL, f"cannot make an offer: {exc}")
        log(f"tunnel {ident}: offer ready ({len(answer['envelope'])} characters)")
        return answer

    async def answer(self, msg: dict) -> dict:
        """TUN-3: with a secret, the waiting tunnel it belongs to (the automatic
        return path); without, the named or the only waiting tunnel (a paste)."""
        waiting = [t for t in self.tunnels.values() if t.state == "waiting"]
        if msg.get("tunnel") is not None:
            tunnel = self.tunnels.get(msg["tunnel"])
            if tunnel is None:
                return protocol.error(ErrorCode.INVALID_COMMAND, f"no tunnel {msg['tunnel']!r}")
        elif msg.get("secret") is not None:
            tunnel = next((t for t in waiting if hmac.compare_digest(
                t.secret.encode(), msg["secret"].encode("utf-8", "replace"))), None)
            if tunnel is None:
                return protocol.error(ErrorCode.PERMISSION_DENIED,
                                      "no waiting tunnel has that secret")
        elif len(waiting) == 1:
            tunnel = waiting[0]
        else:
            return protocol.error(ErrorCode.INVALID_COMMAND,
                                  "no tunnel is waiting for an answer" if not waiting
                                  else "several tunnels are waiting; paste the code at the prompt of yours")
        if msg.get("secret") is not None and not hmac.compare_digest(
                tunnel.secret.encode(), msg["secret"].encode("utf-8", "replace")):
            return protocol.error(ErrorCode.PERMISSION_DENIED, "wrong tunnel secret")
        return await tunnel.apply_answer(msg["answer"])


async def run(paths: Paths, ready_fd: int) -> None:
    """Actor main: report readiness, serve tunnels until SIGTERM or idle."""
    set_actor("tunnel")
    for name in ("aiortc", "aioice"):  # their warnings are ours to phrase
        logging.getLogger(name).setLevel(logging.ERROR)
    actor = TunnelActor(paths)
    try:
        listener = unixsocket.listen(str(paths.tunnel_socket))
    except (OSError, SocketPathError) as exc:
        answer = protocol.error(ErrorCode.INTERNAL, f"tunnel socket: {exc}")
        os.write(ready_fd, protocol.encode_message(answer))
        os.close(ready_fd)
        return
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, actor.stopping.set)
    os.write(ready_fd, protocol.encode_message(protocol.ok()))
    os.close(ready_fd)
    log(f"tunnel actor started, pid {os.getpid()}")
    try:
        await actor.serve(listener)
    finally:
        try:
            os.unlink(paths.tunnel_socket)
        except FileNotFoundError:
            pass
        listener.close()
