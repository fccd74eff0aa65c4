"""Sans-I/O HTTP/1.1 server side (WEB-2, SEC-2, SEC-4): request parser, response writer.

Feed the bytes a client sends to a :class:`RequestParser`; it returns whole
:class:`Request` objects, :class:`Continue` markers and, at most once, a
:class:`ParseError` carrying the status to answer with. Nothing here reads a
socket or a clock, so every limit is exact and every hostile input testable.

The parser is strict on purpose: anything two HTTP implementations could read
differently (obs-fold, bare CR or LF, duplicate or mixed Content-Length and
Transfer-Encoding) is refused rather than guessed, which closes request
smuggling and keeps the code small.
"""

from __future__ import annotations

import email.utils
import enum
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qsl, unquote, unquote_to_bytes, urlsplit

MAX_HEADER = 16 * 1024  # WEB-2: header block
MAX_BODY = 1 << 20  # WEB-2: request body
MAX_TARGET = 8 * 1024  # longer request targets get 414
MAX_CHUNK_LINE = 1024  # chunk size plus extensions

CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_TARGET = re.compile(rb"[\x21\x22\x24-\x7e]+")  # visible ASCII except '#'
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_CHUNK_EXT = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_ETAG = re.compile(r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"')
_CSP = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    # the page moves xterm.js's theme <style> into script-built stylesheets
    "style-src 'self'; "
    "script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


class ParseError(Exception):
    """A request that cannot be served; answer ``status`` and close the connection."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"ParseError({self.status}, {self.message!r})"


class Continue:
    """The client waits for ``CONTINUE_RESPONSE`` before it sends the body."""

    def __repr__(self) -> str:
        return "Continue()"


class Headers:
    """Ordered, case-insensitive multi-dict of header fields (names lower-cased)."""

    def __init__(self, fields: list[tuple[str, str]] | None = None):
        self._fields = [(name.lower(), value) for name, value in fields or ()]

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``."""
        name = name.lower()
        return next((v for n, v in self._fields if n == name), default)

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self._fields if n == name]

    def tokens(self, name: str) -> set[str]:
        """Lower-cased comma-separated elements of every ``name`` field (Connection, Upgrade)."""
        return {
            item.strip().lower()
            for value in self.get_all(name)
            for item in value.split(",")
            if item.strip()
        }

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(n == name.lower() for n, _ in self._fields)

    def __iter__(self):
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._fields == other._fields

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


@dataclass
class Request:
    method: str
    target: str
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: Headers
    body: bytes = b""
    trailers: Headers = field(default_factory=Headers)

    @property
    def keep_alive(self) -> bool:
        """HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 only if asked."""
        tokens = self.headers.tokens("connection")
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens and "close" not in tokens
        return "close" not in tokens

    @property
    def raw_path(self) -> str:
        """The path as sent, still percent-encoded: what :func:`safe_join` takes."""
        return self._split_target()[0]

    @property
    def path(self) -> str:
        """Percent-decoded path for routing; never join it to a directory yourself."""
        return unquote(self.raw_path, errors="replace")

    @property
    def query(self) -> dict[str, str]:
        """Query parameters; a repeated name keeps its last value."""
        return dict(parse_qsl(self._split_target()[1], keep_blank_values=True))

    def _split_target(self) -> tuple[str, str]:
        """(path, query); origin-form is split by hand so ``//x/y`` stays a path, not a host."""
        if self.target.startswith("/") or self.target == "*":
            path, _, query = self.target.partition("?")
            return path, query
        parts = urlsplit(self.target)
        return parts.path or "/", parts.query

    @property
    def wants_upgrade_websocket(self) -> bool:
        return (
            self.method == "GET"
            and "websocket" in self.headers.tokens("upgrade")
            and "upgrade" in self.headers.tokens("connection")
        )


class _State(enum.Enum):
    HEAD = "head"
    BODY = "body"  # Content-Length body
    CHUNK_SIZE = "chunk size line"
    CHUNK_DATA = "chunk data"
    CHUNK_END = "CRLF after chunk data"
    TRAILERS = "trailer fields"
    DONE = "done"  # after an error, a closing request or an upgrade


class RequestParser:
    """Incremental parser for the requests of one connection (pipelining included).

    After a request that closes the connection or asks for a WebSocket upgrade
    the parser stops; :attr:`leftover` holds the bytes that followed it (the
    first WebSocket frames, for an upgrade). After a :class:`ParseError` it
    stops too: the caller answers the error status and closes.
    """

    def __init__(
        self,
        max_header: int = MAX_HEADER,
        max_body: int = MAX_BODY,
        max_target: int = MAX_TARGET,
        stream_body: Callable[[Request], tuple[int, Callable[[bytes], None]] | None] | None = None,
    ):
        self.max_header = max_header
        self.max_body = max_body
        self.max_target = max_target
        # Called with each request once its head is parsed. None keeps the body in memory
        # under max_body; (limit, sink) hands it to sink piece by piece instead, so a large
        # upload can go to disk without a large limit for every request.
        self.stream_body = stream_body
        self._limit = max_body
        self._sink: Callable[[bytes], None] | None = None
        self._received = 0
        self._buffer = bytearray()
        self._state = _State.HEAD
        self._lines: list[bytes] = []  # head or trailer lines of the request in progress
        self._line_bytes = 0
        self._request: Request | None = None
        self._remaining = 0  # body or chunk bytes still expected
        self._body = bytearray()

    @property
    def idle(self) -> bool:
        """No request is partly received: the right moment for a keep-alive timeout
        rather than a slowloris (header/body) timeout."""
        return self._state is _State.HEAD and not self._lines and not self._buffer

    @property
    def stopped(self) -> bool:
        return self._state is _State.DONE

    @property
    def leftover(self) -> bytes:
        """Bytes that arrived with the last request, after it, once the parser has stopped.
        Later feeds are ignored: pass those bytes to whoever took over the connection."""
        return bytes(self._buffer) if self.stopped else b""

    def feed(self, data: bytes) -> list[Request | Continue | ParseError]:
        if self._state is _State.DONE:
            return []  # bytes after a stop belong to someone else (or to nobody)
        self._buffer += data
        events: list[Request | Continue | ParseError] = []
        try:
            while self._state is not _State.DONE and self._step(events):
                pass
        except ParseError as error:
            self._state = _State.DONE
            self._buffer.clear()
            events.append(error)
        return events

    # -- states ---------------------------------------------------------------

    def _step(self, events: list) -> bool:
        """Advance by one line or one body piece; False when more bytes are needed."""
        if self._state in (_State.BODY, _State.CHUNK_DATA):
            return self._take_body(events)
        line = self._take_line()
        if line is None:
            return False
        if self._state is _State.HEAD:
            self._head_line(line, events)
        elif self._state is _State.CHUNK_SIZE:
            self._chunk_size_line(line, events)
        elif self._state is _State.CHUNK_END:
            if line:
                raise ParseError(400, "chunk data longer than its size")
            self._state = _State.CHUNK_SIZE
        else:
            self._trailer_line(line, events)
        return True

    def _take_line(self) -> bytes | None:
        """Next CRLF-terminated line without its CRLF, enforcing the size limits."""
        end = self._buffer.find(b"\n")
        if end < 0:
            self._check_line_size(len(self._buffer))
            return None
        self._check_line_size(end + 1)
        if end == 0 or self._buffer[end - 1] != 0x0D:
            raise ParseError(400, "line not terminated by CRLF")
        line = bytes(self._buffer[: end - 1])
        del self._buffer[: end + 1]
        if b"\r" in line:
            raise ParseError(400, "bare CR in line")
        if self._state in (_State.HEAD, _State.TRAILERS):
            self._line_bytes += end + 1
        return line

    def _check_line_size(self, size: int) -> None:
        request_line = self._state is _State.HEAD and not self._lines
        if request_line and size > self.max_target + 64:
            raise ParseError(414, "request line too long")
        chunk_line = self._state in (_State.CHUNK_SIZE, _State.CHUNK_END)
        if chunk_line and size > MAX_CHUNK_LINE:
            raise ParseError(400, "chunk size line too long")
        if self._line_bytes + size > self.max_header:
            raise ParseError(431, "header block too large")

    def _head_line(self, line: bytes, events: list) -> None:
        if not self._lines and not line:
            return  # RFC 9112 §2.2: ignore empty lines before the request line
        if line:
            self._lines.append(line)
            return
        request = _parse_head(self._lines, self.max_target)
        self._lines = []
        self._line_bytes = 0
        self._request = request
        self._body = bytearray()
        streamed = self.stream_body(request) if self.stream_body else None
        self._limit, self._sink = streamed or (self.max_body, None)
        self._received = 0
        if _is_chunked(request):
            self._state = _State.CHUNK_SIZE
        else:
            self._remaining = _content_length(request)
            if self._remaining > self._limit:
                raise ParseError(413, "request body too large")
            self._state = _State.BODY
        body_expected = self._state is not _State.BODY or self._remaining
        expects_continue = "100-continue" in request.headers.tokens("expect")
        if expects_continue and body_expected and request.version == "HTTP/1.1":
            events.append(Continue())
        if self._state is _State.BODY and not self._remaining:
            self._finish(events)

    def _take_body(self, events: list) -> bool:
        if not self._buffer:
            return False
        piece = self._buffer[: self._remaining]
        del self._buffer[: len(piece)]
        self._received += len(piece)
        if self._sink is not None:
            self._sink(bytes(piece))
        else:
            self._body += piece
        self._remaining -= len(piece)
        if not self._remaining:
            if self._state is _State.CHUNK_DATA:
                self._state = _State.CHUNK_END
            else:
                self._finish(events)
        return True

    def _chunk_size_line(self, line: bytes, events: list) -> None:
        size, _, extension = line.partition(b";")
        if not _HEX.fullmatch(size) or not _CHUNK_EXT.fullmatch(extension):
            raise ParseError(400, "invalid chunk size line")
        self._remaining = int(size, 16)
        if self._received + self._remaining > self._limit:
            raise ParseError(413, "request body too large")
        self._state = _State.CHUNK_DATA if self._remaining else _State.TRAILERS

    def _trailer_line(self, line: bytes, events: list) -> None:
        if line:
            self._lines.append(line)
            return
        assert self._request is not None
        self._request.trailers = Headers(_parse_fields(self._lines))
        self._lines = []
        self._line_bytes = 0
        self._finish(events)

    def _finish(self, events: list) -> None:
        request = self._request
        assert request is not None
        request.body = bytes(self._body)
        self._request = None
        self._body = bytearray()
        events.append(request)
        if not request.keep_alive or request.wants_upgrade_websocket:
            self._state = _State.DONE
        else:
            self._state = _State.HEAD


# -- head parsing ---------------------------------------------------------------


def _parse_head(lines: list[bytes], max_target: int) -> Request:
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise ParseError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise ParseError(400, "invalid method")
    if len(target) > max_target:
        raise ParseError(414, "request target too long")
    if not _TARGET.fullmatch(target):
        raise ParseError(400, "invalid request target")
    if not (target.startswith(b"/") or target == b"*" or _is_absolute(target)):
        raise ParseError(400, "unsupported request target form")
    match = _VERSION.fullmatch(version)
    if not match:
        raise ParseError(400, "malformed HTTP version")
    if match.group(1) != b"1":
        raise ParseError(505, "HTTP version not supported")
    request = Request(
        method=method.decode("ascii"),
        target=target.decode("ascii"),
        version="HTTP/1.0" if match.group(2) == b"0" else "HTTP/1.1",
        headers=Headers(_parse_fields(lines[1:])),
    )
    if request.version == "HTTP/1.1" and len(request.headers.get_all("host")) != 1:
        raise ParseError(400, "HTTP/1.1 request needs exactly one Host header")
    return request


def _is_absolute(target: bytes) -> bool:
    return target.lower().startswith((b"http://", b"https://"))


def _parse_fields(lines: list[bytes]) -> list[tuple[str, str]]:
    fields = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise ParseError(400, "obsolete line folding")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise ParseError(400, "invalid header field name")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.fullmatch(value):
            raise ParseError(400, "invalid character in header field value")
        fields.append((name.decode("ascii"), value.decode("latin-1")))
    return fields


def _is_chunked(request: Request) -> bool:
    """True for a chunked body; refuses every framing two parsers could disagree on."""
    if "transfer-encoding" not in request.headers:
        return False
    if "content-length" in request.headers:
        raise ParseError(400, "both Content-Length and Transfer-Encoding")
    if request.version == "HTTP/1.0":
        raise ParseError(400, "Transfer-Encoding in an HTTP/1.0 request")
    codings = [
        item.strip().lower()
        for value in request.headers.get_all("transfer-encoding")
        for item in value.split(",")
        if item.strip()
    ]
    if any(coding != "chunked" for coding in codings):
        raise ParseError(501, "unsupported transfer coding")
    if len(codings) != 1:
        raise ParseError(400, "invalid Transfer-Encoding")
    return True


def _content_length(request: Request) -> int:
    values = request.headers.get_all("content-length")
    if not values:
        return 0
    if len(values) > 1:
        raise ParseError(400, "more than one Content-Length")
    if not values[0].isascii() or not values[0].isdigit() or len(values[0]) > 18:
        raise ParseError(400, "invalid Content-Length")
    return int(values[0])


# -- responses --------------------------------------------------------------------


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def render_response(
    status: int,
    headers: list[tuple[str, str]] | tuple = (),
    body: bytes = b"",
    head_only: bool = False,
    date: float | None = None,
) -> bytes:
    """A complete response. Content-Length is always computed here (never trust a caller's);
    ``head_only`` answers HEAD: same headers, no body. ``date`` is a Unix time for ``Date``.

    Raises ValueError for a header that would split the response (CR, LF, NUL, bad name).
    """
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}"]
    if date is not None:
        lines.append(f"Date: {email.utils.formatdate(date, usegmt=True)}")
    for name, value in headers:
        if not _TOKEN.fullmatch(name.encode("latin-1", "replace")):
            raise ValueError(f"invalid header name {name!r}")
        if not _FIELD_VALUE.fullmatch(value.encode("latin-1", "replace")):
            raise ValueError(f"invalid value for header {name}")
        if name.lower() == "content-length":
            raise ValueError("Content-Length is computed by render_response")
        lines.append(f"{name}: {value}")
    bodiless = status < 200 or status in (204, 304)
    if not bodiless:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only or bodiless else head + body


def security_headers(html_or_api: bool) -> list[tuple[str, str]]:
    """SEC-2 headers for every response; HTML pages and API answers must not be cached
    (they carry session state), static assets may be (they are revalidated by ETag)."""
    headers = [
        ("Content-Security-Policy", _CSP),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", "DENY"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
    ]
    if html_or_api:
        headers.append(("Cache-Control", "no-store"))
    return headers


# -- static files -------------------------------------------------------------------


def etag_for(stat: os.stat_result) -> str:
    """Strong validator from inode, size and nanosecond mtime: changes whenever the file does."""
    return f'"{stat.st_ino:x}-{stat.st_size:x}-{stat.st_mtime_ns:x}"'


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """True when ``If-None-Match`` matches ``etag`` (weak comparison, RFC 9110 §13.1.2):
    answer 304 instead of the body."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.removeprefix("W/") == wanted for tag in _ETAG.findall(if_none_match))


def safe_join(root: Path, url_path: str) -> Path | None:
    """``root`` joined with a still percent-encoded URL path, or None when the path could
    leave ``root`` or name something odd: ``..`` and ``.`` segments (also encoded),
    encoded ``/``, backslashes, NUL and control characters, invalid UTF-8.

    Each segment is decoded exactly once, so ``%252e%252e`` is the literal name ``%2e%2e``.
    """
    if not url_path.startswith("/") or "\\" in url_path or "\0" in url_path:
        return None
    names = []
    for segment in url_path.split("/"):
        if not segment:
            continue
        try:
            name = unquote_to_bytes(segment).decode("utf-8")
        except UnicodeDecodeError:
            return None
        if name in (".", "..") or any(c in "/\\" or ord(c) < 0x20 or c == "\x7f" for c in name):
            return None
        names.append(name)
    path = root.joinpath(*names)
    return path if path.is_relative_to(root) else None
