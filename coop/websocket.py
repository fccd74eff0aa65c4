"""Sans-I/O WebSocket (RFC 6455, WEB-2): opening handshake, frame codec, connection state.

A :class:`Connection` takes the bytes the peer sent (:meth:`Connection.receive_data`)
and hands back whole messages and control events (:meth:`Connection.events`);
the ``send_*`` methods return the bytes to write. Pongs and close replies are
produced by the connection itself and collected by :meth:`Connection.data_to_send`.
No socket, no clock, no extension support (RSV bits are always a protocol error).

Frames are parsed lazily, while :meth:`Connection.events` is iterated, so that
what the application sends in reply to one message goes out before whatever the
connection itself answers to a later frame (an echo before a 1002, for example).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import enum
import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from coop.http import Request, render_response

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
MAX_CONTROL = 125  # RFC 6455 §5.5: control payloads
MAX_MESSAGE = 1 << 20  # WEB-2


class Opcode(enum.IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never sent: reported when a close frame had no payload
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011


def valid_close_code(code: int) -> bool:
    """Codes a peer may put in a close frame (RFC 6455 §7.4, IANA registry to 1014)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


@dataclass(frozen=True)
class Text:
    data: str


@dataclass(frozen=True)
class Binary:
    data: bytes


@dataclass(frozen=True)
class Ping:
    data: bytes


@dataclass(frozen=True)
class Pong:
    data: bytes


@dataclass(frozen=True)
class Close:
    code: int  # CloseCode.NO_STATUS when the frame carried none
    reason: str


Event = Text | Binary | Ping | Pong | Close


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"  # we sent a close frame and wait for the peer's
    CLOSED = "closed"  # close handshake done or connection failed: close the transport


class HandshakeError(Exception):
    """An upgrade request to refuse with ``status`` (and ``headers``)."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class ClosedError(Exception):
    """Sending on a connection that already sent its close frame."""


# -- opening handshake --------------------------------------------------------------


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


def check_upgrade(request: Request) -> HandshakeError | None:
    """Why ``request`` is not a valid RFC 6455 opening handshake, or None if it is.
    Authentication and Origin checks (WEB-3) are the caller's."""
    if request.method != "GET" or request.version != "HTTP/1.1":
        return HandshakeError(400, "WebSocket upgrade needs GET over HTTP/1.1")
    if "websocket" not in request.headers.tokens("upgrade"):
        return HandshakeError(400, "missing Upgrade: websocket")
    if "upgrade" not in request.headers.tokens("connection"):
        return HandshakeError(400, "missing Connection: upgrade")
    if request.headers.get_all("sec-websocket-version") != ["13"]:
        return HandshakeError(
            426, "unsupported WebSocket version", (("Sec-WebSocket-Version", "13"),)
        )
    keys = request.headers.get_all("sec-websocket-key")
    if len(keys) != 1 or not _valid_key(keys[0]):
        return HandshakeError(400, "invalid Sec-WebSocket-Key")
    return None


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def handshake_response(key: str, extra_headers: list[tuple[str, str]] | tuple = ()) -> bytes:
    """The ``101 Switching Protocols`` answer to a request that passed :func:`check_upgrade`."""
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(key)),
        *extra_headers,
    ]
    return render_response(101, headers)


# -- frame codec --------------------------------------------------------------------


def encode_frame_header(
    opcode: Opcode, length: int, fin: bool = True, mask: bytes | None = None
) -> bytes:
    """Frame header for a payload of ``length`` bytes. Servers send unmasked frames, so one
    header plus one payload can be written unchanged to any number of clients."""
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    return header + mask if mask else header


def apply_mask(data: bytes, mask: bytes, offset: int = 0) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` starting ``offset`` bytes into the payload;
    one big-integer XOR instead of a Python loop over bytes."""
    size = len(data)
    if not size:
        return b""
    shift = offset % 4
    key = (mask[shift:] + mask[:shift]) * (size // 4 + 1)
    mixed = int.from_bytes(data, "little") ^ int.from_bytes(key[:size], "little")
    return mixed.to_bytes(size, "little")


class _Failure(Exception):
    """The peer broke the protocol: fail the connection with ``code``."""

    def __init__(self, code: CloseCode, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class _Frame:
    """A frame whose header is parsed and whose payload is still arriving."""

    opcode: Opcode
    fin: bool
    mask: bytes | None
    remaining: int
    received: int = 0
    control_payload: bytes = b""


class Connection:
    """One side of an open WebSocket connection.

    Protocol errors fail the connection: a close frame with the RFC's code
    (1002 framing, 1007 invalid UTF-8 or close reason, 1009 message too big)
    is queued in :meth:`data_to_send`, :attr:`failure` records why, and the
    state becomes CLOSED, after which all input is ignored.
    """

    def __init__(self, is_client: bool = False, max_message: int = MAX_MESSAGE):
        self.is_client = is_client
        self.max_message = max_message
        self.state = State.OPEN
        self.failure: tuple[int, str] | None = None
        self._buffer = bytearray()
        self._outbox = bytearray()
        self._frame: _Frame | None = None
        self._message_opcode: Opcode | None = None  # TEXT or BINARY while a message is open
        self._message_size = 0
        self._parts: list = []
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    @property
    def closed(self) -> bool:
        """The transport should be closed once :meth:`data_to_send` has been written."""
        return self.state is State.CLOSED

    # -- input --------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self.state is not State.CLOSED:
            self._buffer += data

    def events(self) -> Iterator[Event]:
        """Events parsed from the received bytes, in order; parsing happens as you iterate."""
        while (event := self._next_event()) is not None:
            yield event

    def data_to_send(self) -> bytes:
        """Pongs and close frames the connection produced on its own; write them promptly."""
        data = bytes(self._outbox)
        self._outbox.clear()
        return data

    def _next_event(self) -> Event | None:
        try:
            while self.state is not State.CLOSED:
                if self._frame is None:
                    self._frame = self._read_header()
                    if self._frame is None:
                        return None
                frame = self._frame
                if frame.remaining and not self._buffer:
                    return None
                chunk = bytes(self._buffer[: frame.remaining])
                del self._buffer[: len(chunk)]
                self._read_payload(frame, chunk)
                if not frame.remaining:
                    self._frame = None
                    event = self._end_frame(frame)
                    if event is not None:
                        return event
        except _Failure as failure:
            self._fail(failure.code, failure.reason)
        return None

    def _read_header(self) -> _Frame | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        first, second = buffer[0], buffer[1]
        if first & 0x70:
            raise _Failure(CloseCode.PROTOCOL_ERROR, "reserved bits set without an extension")
        try:
            opcode = Opcode(first & 0x0F)
        except ValueError:
            raise _Failure(CloseCode.PROTOCOL_ERROR, "reserved opcode") from None
        fin = bool(first & 0x80)
        masked = bool(second & 0x80)
        if masked == self.is_client:
            expected = "unmasked" if self.is_client else "masked"
            raise _Failure(CloseCode.PROTOCOL_ERROR, f"frames from the peer must be {expected}")
        length = second & 0x7F
        if opcode >= Opcode.CLOSE:
            if not fin:
                raise _Failure(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
            if length > MAX_CONTROL:
                raise _Failure(CloseCode.PROTOCOL_ERROR, "control frame payload over 125 bytes")
        elif opcode == Opcode.CONTINUATION and self._message_opcode is None:
            raise _Failure(CloseCode.PROTOCOL_ERROR, "continuation frame without a message")
        elif opcode != Opcode.CONTINUATION and self._message_opcode is not None:
            raise _Failure(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
        size = 2 + {126: 2, 127: 8}.get(length, 0)
        header_size = size + (4 if masked else 0)
        if len(buffer) < header_size:
            return None
        if length == 126:
            length = int.from_bytes(buffer[2:4], "big")
        elif length == 127:
            length = int.from_bytes(buffer[2:10], "big")
            if length >> 63:
                raise _Failure(CloseCode.PROTOCOL_ERROR, "payload length has its top bit set")
        if opcode < Opcode.CLOSE and self._message_size + length > self.max_message:
            raise _Failure(CloseCode.MESSAGE_TOO_BIG, f"message over {self.max_message} bytes")
        mask = bytes(buffer[size:header_size]) if masked else None
        del buffer[:header_size]
        if opcode in (Opcode.TEXT, Opcode.BINARY):
            self._message_opcode = opcode
        return _Frame(opcode, fin, mask, length)

    def _read_payload(self, frame: _Frame, chunk: bytes) -> None:
        if frame.mask is not None:
            chunk = apply_mask(chunk, frame.mask, frame.received)
        frame.received += len(chunk)
        frame.remaining -= len(chunk)
        if frame.opcode >= Opcode.CLOSE:
            frame.control_payload += chunk
            return
        self._message_size += len(chunk)
        if self._message_opcode == Opcode.TEXT:
            self._parts.append(self._decode(chunk, final=frame.fin and not frame.remaining))
        else:
            self._parts.append(chunk)

    def _decode(self, chunk: bytes, final: bool) -> str:
        """Incremental UTF-8 check that fails on the first byte that cannot start or continue
        a valid sequence (Autobahn 6.x fail-fast), not only at the end of the message."""
        try:
            text = self._decoder.decode(chunk, final)
        except UnicodeDecodeError:
            raise _Failure(CloseCode.INVALID_DATA, "invalid UTF-8 in text message") from None
        pending = self._decoder.getstate()[0]
        if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
            # the codec waits for a third byte before rejecting a UTF-16 surrogate
            raise _Failure(CloseCode.INVALID_DATA, "UTF-16 surrogate in text message")
        return text

    def _end_frame(self, frame: _Frame) -> Event | None:
        if frame.opcode == Opcode.CLOSE:
            return self._receive_close(frame.control_payload)
        if frame.opcode == Opcode.PING:
            if self.state is not State.OPEN:
                return None
            self._outbox += self._encode(Opcode.PONG, frame.control_payload)
            return Ping(frame.control_payload)
        if frame.opcode == Opcode.PONG:
            return Pong(frame.control_payload)
        if not frame.fin:
            return None
        opcode, parts = self._message_opcode, self._parts
        self._message_opcode, self._message_size, self._parts = None, 0, []
        self._decoder.reset()
        if self.state is not State.OPEN:
            return None  # data after our close frame is read and dropped
        return Text("".join(parts)) if opcode == Opcode.TEXT else Binary(b"".join(parts))

    def _receive_close(self, payload: bytes) -> Close:
        if len(payload) == 1:
            raise _Failure(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
        code = int.from_bytes(payload[:2], "big") if payload else CloseCode.NO_STATUS
        if payload and not valid_close_code(code):
            raise _Failure(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise _Failure(CloseCode.INVALID_DATA, "close reason is not UTF-8") from None
        if self.state is State.OPEN:
            self._outbox += self._encode(Opcode.CLOSE, payload[:2])
        self.state = State.CLOSED
        return Close(code, reason)

    def _fail(self, code: CloseCode, reason: str) -> None:
        if self.state is State.OPEN:
            self._outbox += self._encode(Opcode.CLOSE, _close_payload(code, reason))
        self.state = State.CLOSED
        self.failure = (int(code), reason)
        self._buffer.clear()

    # -- output -------------------------------------------------------------------

    def send_text(self, text: str) -> bytes:
        return self._send(Opcode.TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes) -> bytes:
        return self._send(Opcode.BINARY, data)

    def send_ping(self, data: bytes = b"") -> bytes:
        return self._send(Opcode.PING, data)

    def send_pong(self, data: bytes = b"") -> bytes:
        return self._send(Opcode.PONG, data)

    def send_close(self, code: int = CloseCode.NORMAL, reason: str = "") -> bytes:
        """Start the closing handshake; the connection is CLOSED when the peer answers."""
        if not valid_close_code(code):
            raise ValueError(f"close code {code} may not be sent")
        frame = self._send(Opcode.CLOSE, _close_payload(code, reason))
        self.state = State.CLOSING
        return frame

    def _send(self, opcode: Opcode, payload: bytes) -> bytes:
        if self.state is not State.OPEN:
            raise ClosedError(f"cannot send {opcode.name} on a {self.state.value} WebSocket")
        if opcode >= Opcode.CLOSE and len(payload) > MAX_CONTROL:
            raise ValueError(f"{opcode.name} payload over {MAX_CONTROL} bytes")
        return self._encode(opcode, payload)

    def _encode(self, opcode: Opcode, payload: bytes) -> bytes:
        if not self.is_client:
            return encode_frame_header(opcode, len(payload)) + payload
        mask = os.urandom(4)
        return encode_frame_header(opcode, len(payload), mask=mask) + apply_mask(payload, mask)


def _close_payload(code: int, reason: str) -> bytes:
    encoded = reason.encode("utf-8")
    if len(encoded) > MAX_CONTROL - 2:
        raise ValueError("close reason over 123 bytes")
    return int(code).to_bytes(2, "big") + encoded
