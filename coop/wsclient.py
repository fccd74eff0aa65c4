"""A browser attached to a PTY over a handed-off WebSocket (WEB-4), in the session actor.

The web actor did the HTTP upgrade and passed the socket here, so terminal
bytes flow between the PTY and the browser with no process in between.
Binary frames carry terminal bytes both ways; text frames carry JSON control
(``resize`` from the browser; ``attached``, ``exited``, ``restarting``,
``lag``, ``blocked``, ``detached`` to it). Queueing, lag and replay are the
same as for IPC stream clients (``clients.QueuedClient``).
"""

from __future__ import annotations

import asyncio
import json

from coop import websocket
from coop.clients import QueuedClient
from coop.websocket import Opcode

PING_INTERVAL = 30.0  # keeps NAT and proxy mappings open; two unanswered pings end the client
CLOSE_TIMEOUT = 5.0  # how long a close frame waits for the browser's answer

# IPC event names whose browser name differs (console broadcasts the IPC names)
_EVENT_TYPES = {"pty_exited": "exited", "pty_restarting": "restarting"}

# IPC error codes → WebSocket close codes a page can act on (4000–4999: private use)
_CLOSE_CODES = {"SESSION_NOT_FOUND": 4404, "PTY_NOT_FOUND": 4404, "INVALID_COMMAND": 4400,
                "PERMISSION_DENIED": 4403}


def browser_event(obj: dict) -> dict | None:
    """The text-frame form of an IPC stream event: ``{"event": "pty_exited", …}`` →
    ``{"type": "exited", …}``; None for what is not an event."""
    name = obj.get("event")
    if not isinstance(name, str):
        return None
    fields = {k: v for k, v in obj.items() if k not in ("event", "ok")}
    return {"type": _EVENT_TYPES.get(name, name), **fields}


def browser_control(text: str) -> dict | None:
    """A JSON control message from the browser, or None when the text is terminal input."""
    if not text.startswith("{"):
        return None
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):  # SEC-4: too deeply nested is not a control either
        return None
    return msg if isinstance(msg, dict) and msg.get("type") == "resize" else None


def refusal(answer: dict) -> tuple[int, str]:
    """Close code and reason for an IPC error answer (a browser cannot read the HTTP
    status of a failed upgrade, so the reason travels in the close frame)."""
    reason = str(answer.get("message") or answer.get("error") or "refused")
    while len(reason.encode()) > websocket.MAX_CONTROL - 2:
        reason = reason[:-1]
    return _CLOSE_CODES.get(answer.get("error"), 4500), reason


class WebSocketClient(QueuedClient):
    """Server side of one browser's WebSocket, attached to one console."""

    def __init__(self, kind: str, session, console, size, *, filtered: bool, read_only: bool):
        super().__init__(kind, session, console, size, filtered=filtered, read_only=read_only)
        self.ws = websocket.Connection(is_client=False)
        self._timer: asyncio.TimerHandle | None = None
        self._unanswered_pings = 0

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._schedule(PING_INTERVAL, self._keepalive)

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for ev in self.ws.events():
            if isinstance(ev, websocket.Binary):
                self.input.feed(ev.data)
            elif isinstance(ev, websocket.Text):
                control = browser_control(ev.data)
                if control is None:
                    self.input.feed(ev.data.encode("utf-8"))
                else:
                    self.resize(control.get("cols"), control.get("rows"))
            elif isinstance(ev, websocket.Pong):
                self._unanswered_pings = 0
            self._send_pending()  # pongs and close replies, in order with our frames
        self._send_pending()
        if self.ws.closed:
            self._closing = True
            self._close_after_sending()

    def connection_lost(self, exc) -> None:
        if self._timer:
            self._timer.cancel()
        super().connection_lost(exc)

    # -- console.Client -----------------------------------------------------

    def _write_output(self, data: bytes) -> None:
        if self.ws.state is websocket.State.OPEN:
            # one header per chunk; the payload goes out as is (server frames are unmasked)
            self._send(websocket.encode_frame_header(Opcode.BINARY, len(data)), data)

    def event(self, obj: dict) -> None:
        mapped = browser_event(obj)
        if mapped is not None and not self._closing and self.ws.state is websocket.State.OPEN:
            self._send(self.ws.send_text(json.dumps(mapped, separators=(",", ":"))))

    def answer(self, obj: dict) -> None:
        """Nothing to send: the ``attached`` event that follows carries the answer."""

    def end(self) -> None:
        """Start the close handshake; the transport closes on the browser's answer
        or after ``CLOSE_TIMEOUT``."""
        if self._closing:
            return
        self._closing = True
        if self.ws.state is websocket.State.OPEN:
            self._send(self.ws.send_close(websocket.CloseCode.NORMAL))
            self._schedule(CLOSE_TIMEOUT, self.transport.close)
        else:
            self._close_after_sending()

    # -- helpers --------------------------------------------------------------

    def _send_pending(self) -> None:
        pending = self.ws.data_to_send()
        if pending:
            self._send(pending)

    def _schedule(self, delay: float, callback) -> None:
        if self._timer:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def _keepalive(self) -> None:
        if self.ws.state is not websocket.State.OPEN:
            return
        if self._unanswered_pings >= 2:
            self._closing = True
            self.transport.abort()
            return
        self._unanswered_pings += 1
        self._send(self.ws.send_ping(b"coop"))
        self._schedule(PING_INTERVAL, self._keepalive)
