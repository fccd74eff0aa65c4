"""Sans-I/O client protocol (SPEC §6): length framing, stream frames, messages.

Command mode (IPC-2): ``length(4, BE) | JSON object``.
Stream mode (IPC-5): ``length(4, BE) | type(1) | payload`` where the length
counts the type byte and the payload.

Nothing here touches a socket or a clock: feed bytes in, get messages out.
"""

from __future__ import annotations

import enum
import json
import struct

VERSION = 1
MAX_MESSAGE = 1 << 20  # IPC-2: 1 MiB
_HEADER = struct.Struct(">I")


class ErrorCode(str, enum.Enum):
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    SESSION_EXISTS = "SESSION_EXISTS"
    PTY_NOT_FOUND = "PTY_NOT_FOUND"
    INVALID_COMMAND = "INVALID_COMMAND"
    VERSION_MISMATCH = "VERSION_MISMATCH"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    ROOTFS_NOT_BUILT = "ROOTFS_NOT_BUILT"
    INVALID_COOPFILE = "INVALID_COOPFILE"
    SANDBOX_FAILED = "SANDBOX_FAILED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INTERNAL = "INTERNAL"


class FrameType(enum.IntEnum):
    DATA = 0x00  # terminal bytes / exec stdout / exec stdin
    CONTROL = 0x01  # JSON control message
    STDERR = 0x02  # exec standard error


class ProtocolError(Exception):
    """Input that breaks the protocol; ``code`` is the error to answer with."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def answer(self) -> dict:
        return error(self.code, self.message)


def error(code: ErrorCode, message: str) -> dict:
    return {"ok": False, "error": code.value, "message": message}


def ok(**fields) -> dict:
    return {"ok": True, **fields}


# -- encoding ---------------------------------------------------------------


def encode_message(obj: dict) -> bytes:
    """Command-mode frame: length + compact UTF-8 JSON."""
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > MAX_MESSAGE:
        raise ProtocolError(ErrorCode.MESSAGE_TOO_LARGE, f"message of {len(body)} bytes")
    return _HEADER.pack(len(body)) + body


def encode_raw(payload: bytes) -> bytes:
    """Re-frame a payload that was already split off a stream."""
    return _HEADER.pack(len(payload)) + payload


def stream_header(kind: FrameType, payload_len: int) -> bytes:
    """Header of a stream-mode frame; write it followed by the payload."""
    return _HEADER.pack(payload_len + 1) + bytes((kind,))


def encode_frame(kind: FrameType, payload: bytes) -> bytes:
    return stream_header(kind, len(payload)) + payload


def encode_control(obj: dict) -> bytes:
    return encode_frame(FrameType.CONTROL, json.dumps(obj, separators=(",", ":")).encode())


def encode_data(chunks: bytes, max_payload: int = MAX_MESSAGE - 1) -> list[bytes]:
    """Data frames for ``chunks``, split so no frame exceeds the limit."""
    out = []
    for i in range(0, len(chunks), max_payload):
        part = chunks[i : i + max_payload]
        out.append(stream_header(FrameType.DATA, len(part)))
        out.append(part)
    return out


# -- decoding ---------------------------------------------------------------


def decode_json(body: bytes) -> dict:
    """Parse one command-mode payload into a JSON object."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.INVALID_COMMAND, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(ErrorCode.INVALID_COMMAND, "malformed JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.INVALID_COMMAND, "message must be a JSON object")
    return obj


class FrameDecoder:
    """Splits a byte stream into length-prefixed payloads.

    ``feed`` returns complete payloads; a length above ``limit`` raises
    ``MESSAGE_TOO_LARGE`` before any of the body is buffered (IPC-2).
    """

    def __init__(self, limit: int = MAX_MESSAGE):
        self._buf = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            (length,) = _HEADER.unpack_from(buf, pos)
            if length > self._limit:
                del buf[:pos]
                raise ProtocolError(
                    ErrorCode.MESSAGE_TOO_LARGE,
                    f"frame of {length} bytes exceeds the {self._limit}-byte limit",
                )
            if len(buf) - pos - 4 < length:
                break
            frames.append(bytes(buf[pos + 4 : pos + 4 + length]))
            pos += 4 + length
        if pos:
            del buf[:pos]
        return frames

    def take_rest(self) -> bytes:
        """Bytes fed but not yet part of a complete frame (for hand-offs)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    @property
    def pending(self) -> int:
        return len(self._buf)


def split_stream_frame(payload: bytes) -> tuple[FrameType, bytes]:
    """Type and body of one stream-mode payload."""
    if not payload:
        raise ProtocolError(ErrorCode.INVALID_COMMAND, "empty stream frame")
    try:
        kind = FrameType(payload[0])
    except ValueError:
        raise ProtocolError(
            ErrorCode.INVALID_COMMAND, f"unknown stream frame type {payload[0]:#04x}"
        ) from None
    return kind, payload[1:]


# -- handshake and command validation ---------------------------------------


def hello() -> dict:
    return {"version": VERSION}


def check_hello(msg: dict) -> dict:
    """IPC-3: the answer to a client's first message; raises on mismatch."""
    if msg.get("version") != VERSION:
        raise ProtocolError(
            ErrorCode.VERSION_MISMATCH,
            f"client speaks protocol version {msg.get('version')!r}, daemon speaks {VERSION}",
        )
    return {"version": VERSION, "ok": True}


_T = {"str": str, "int": int, "bool": bool, "list": list, "dict": dict, "float": (int, float)}

# command -> {field: (type name, required)}
COMMANDS: dict[str, dict[str, tuple[str, bool]]] = {
    "create": {
        "name": ("str", False),
        "workspace": ("str", True),
        "coopfile": ("dict", False),
        "detach": ("bool", False),
        "allow_paths": ("list", False),
    },
    "attach": {
        "session": ("str", True),
        "pty": ("int", False),
        "cols": ("int", False),
        "rows": ("int", False),
        "offset": ("int", False),
        "record": ("bool", False),
    },
    "shell": {
        "session": ("str", True),
        "command": ("str", False),
        "cols": ("int", False),
        "rows": ("int", False),
    },
    "exec": {"session": ("str", True), "argv": ("list", True), "stdin": ("bool", False)},
    "ls": {},
    "kill": {"session": ("str", True), "force": ("bool", False)},
    "serve": {
        "host": ("str", False),
        "port": ("int", False),
        "token": ("str", False),
        "read_only_token": ("bool", False),
        "tls": ("bool", False),
    },
    "serve_stop": {},
    "tunnel": {"stun": ("list", False), "no_stun": ("bool", False), "connect_url": ("str", False)},
    "tunnel_answer": {"answer": ("str", True), "tunnel": ("str", False), "secret": ("str", False)},
    "tunnel_status": {"tunnel": ("str", True)},
    "tunnel_close": {"tunnel": ("str", True)},
    "shutdown": {},
    "status": {},
}


def check_command(msg: dict) -> tuple[str, dict]:
    """Validate a command message's name and field types (IPC-4, IPC-6)."""
    cmd = msg.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError(ErrorCode.INVALID_COMMAND, 'missing "cmd" string')
    schema = COMMANDS.get(cmd)
    if schema is None:
        raise ProtocolError(ErrorCode.INVALID_COMMAND, f"unknown command {cmd!r}")
    for field, (tname, required) in schema.items():
        if field not in msg or msg[field] is None:
            if required:
                raise ProtocolError(ErrorCode.INVALID_COMMAND, f"{cmd}: missing field {field!r}")
            continue
        value = msg[field]
        want = _T[tname]
        if not isinstance(value, want) or (tname in ("int", "float") and isinstance(value, bool)):
            raise ProtocolError(
                ErrorCode.INVALID_COMMAND,
                f"{cmd}: field {field!r} must be {tname}, got {type(value).__name__}",
            )
    return cmd, msg
