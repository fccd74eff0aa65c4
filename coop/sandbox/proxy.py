"""Egress proxy for network mode "proxy" (SB-4, BYD-5).

The session's network namespace has only loopback; its HTTP_PROXY port is a
socket that the session actor serves here, on the host side. A request may
leave only to a host name matching ``[network].allow``, resolved here, and
only to public addresses: every resolved address is checked and the
connection goes to the checked address, so a name cannot be re-resolved to
somewhere else in between. Every refusal becomes ``denied host:port`` for
``coop logs``.

The request-head parser, the allow rules and the address policy are pure;
``EgressProxy`` is the asyncio shell around them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from coop.sandbox.network import PRIVATE_RANGES

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
EventCallback = Callable[[str], None]

REASONS = {
    200: "Connection established", 400: "Bad Request", 403: "Forbidden",
    408: "Request Timeout", 431: "Request Header Fields Too Large", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization",
              "proxy-authenticate", "te", "trailer", "upgrade", "host"}
REFUSED_NETWORKS = [ipaddress.ip_network(cidr) for cidr in PRIVATE_RANGES + [
    "192.0.0.0/24",   # IETF protocol assignments
    "fec0::/10",      # deprecated site-local
]]
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class ProxyRequestError(Exception):
    """The request cannot be proxied; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ProxyRequest:
    """Where the client wants to go, and what to send the origin first.

    ``forward_head`` is empty for CONNECT (the bytes that follow are the
    tunnel); for plain HTTP it is the request head in origin form, with
    hop-by-hop headers replaced by ``Connection: close``."""

    host: str
    port: int
    tunnel: bool
    forward_head: bytes = b""


def parse_request_head(head: bytes) -> ProxyRequest:
    """Parse one request head (up to and including the blank line)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyRequestError(400, "request head is not ASCII") from None
    lines = text.split("\r\n")
    if len(lines) < 3 or lines[-2:] != ["", ""]:
        raise ProxyRequestError(400, "request head must end with an empty line")
    if any(c in line for line in lines for c in "\r\n\0"):
        raise ProxyRequestError(400, "stray CR, LF or NUL in the request head")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not TOKEN.fullmatch(parts[0]) or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise ProxyRequestError(400, "malformed request line")
    method, target, version = parts
    headers = [_parse_header(line) for line in lines[1:-2]]
    if method == "CONNECT":
        host, port = parse_authority(target, default_port=None)
        return ProxyRequest(host, port, tunnel=True)
    match = re.fullmatch(r"(?i:http)://([^/?#]*)([^#]*)(#.*)?", target)
    if match is None:
        raise ProxyRequestError(400, "expected CONNECT or an absolute http:// URI")
    authority, path = match.group(1), match.group(2) or "/"
    if not path.startswith("/"):
        path = "/" + path
    host, port = parse_authority(authority, default_port=80)
    dropped = HOP_BY_HOP | _connection_tokens(headers)
    kept = [f"{name}: {value}" for name, value in headers if name.lower() not in dropped]
    forward = [f"{method} {path} {version}", f"Host: {authority}", *kept,
               "Connection: close", "", ""]
    return ProxyRequest(host, port, tunnel=False, forward_head="\r\n".join(forward).encode())


def _parse_header(line: str) -> tuple[str, str]:
    name, sep, value = line.partition(":")
    if not sep or not TOKEN.fullmatch(name):
        raise ProxyRequestError(400, "malformed header line")
    return name, value.strip(" \t")


def _connection_tokens(headers: list[tuple[str, str]]) -> set[str]:
    """Header names listed in Connection (also hop-by-hop, RFC 9110 7.6.1)."""
    return {token.strip().lower() for name, value in headers
            if name.lower() in ("connection", "proxy-connection") for token in value.split(",")}


def parse_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """``host[:port]`` → (normalised host, port); hosts are lower-case names
    without a trailing dot, or IP literals in canonical form."""
    if "@" in authority:
        raise ProxyRequestError(400, "user information in the target is not supported")
    if authority.startswith("["):
        literal, bracket, rest = authority[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ProxyRequestError(400, "malformed IPv6 literal")
        host, port_text = literal, rest[1:] if rest else None
    else:
        host, colon, port_text = authority.partition(":")
        port_text = port_text if colon else None
    if port_text is None:
        if default_port is None:
            raise ProxyRequestError(400, "CONNECT target needs a port")
        port = default_port
    elif port_text.isdigit() and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise ProxyRequestError(400, "malformed port")
    return normalise_host(host), port


def normalise_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.lower().removesuffix(".")
    if not HOST_NAME.fullmatch(name) or len(name) > 253:
        raise ProxyRequestError(400, "malformed host name")
    return name


class HostRules:
    """``[network].allow``: exact names (or IP literals), and ``*.suffix``,
    which matches any name below the suffix but not the suffix itself."""

    def __init__(self, patterns: list[str]) -> None:
        self.exact: set[str] = set()
        self.suffixes: list[str] = []
        for pattern in patterns:
            if pattern.startswith("*."):
                self.suffixes.append("." + normalise_pattern(pattern[2:], pattern))
            else:
                self.exact.add(normalise_pattern(pattern, pattern))

    def allows(self, host: str) -> bool:
        """``host`` as normalised by ``normalise_host``."""
        if host in self.exact:
            return True
        if _is_ip_literal(host):
            return False
        return any(host.endswith(suffix) for suffix in self.suffixes)


def normalise_pattern(text: str, pattern: str) -> str:
    try:
        return normalise_host(text)
    except ProxyRequestError:
        raise ValueError(f"invalid allow pattern {pattern!r}: expected a host name "
                         "or *.suffix") from None


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def is_refused_address(address: Address) -> bool:
    """True unless ``address`` is plainly on the public internet."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return is_refused_address(embedded)
    return (not address.is_global or address.is_multicast or address.is_reserved
            or address.is_unspecified or address.is_loopback or address.is_link_local
            or address.is_private or any(address in net for net in REFUSED_NETWORKS
                                         if net.version == address.version))


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64)."""
    if address.version == 4:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return ipaddress.IPv4Address(address.packed[-4:])
    return None


def error_response(status: int, message: str) -> bytes:
    body = f"coop proxy: {message}\n".encode()
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


async def _discard(reader: asyncio.StreamReader, limit: int) -> None:
    """Read and drop up to ``limit`` bytes, until end of stream."""
    while limit > 0 and (data := await reader.read(min(limit, 65536))):
        limit -= len(data)


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class EgressProxy:
    """Serves HTTP CONNECT and absolute-URI HTTP on an already listening socket."""

    def __init__(self, listen_sock: socket.socket, allow: list[str], on_event: EventCallback,
                 resolve: Resolver = system_resolve,
                 refuse: Callable[[Address], bool] = is_refused_address, *,
                 max_head_bytes: int = 16384, head_timeout: float = 10.0,
                 connect_timeout: float = 10.0, idle_timeout: float = 600.0,
                 max_connections: int = 256) -> None:
        self.listen_sock = listen_sock
        self.rules = HostRules(allow)
        self.on_event = on_event
        self.resolve = resolve
        self.refuse = refuse
        self.max_head_bytes = max_head_bytes
        self.head_timeout = head_timeout
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, sock=self.listen_sock, limit=self.max_head_bytes)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._clients.add(task)
        try:
            if len(self._clients) > self.max_connections:
                await self._answer_and_close(reader, writer, 503, "too many connections")
                return
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to tell it
        except asyncio.CancelledError:
            pass  # close() ends every connection; nobody awaits this task
        finally:
            self._clients.discard(task)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request, (up_reader, up_writer) = await self._accept(reader)
        except ProxyRequestError as exc:
            await self._answer_and_close(reader, writer, exc.status, str(exc))
            return
        try:
            if request.tunnel:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                up_writer.write(request.forward_head)
            await self._relay(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()

    async def _accept(self, reader: asyncio.StreamReader):
        """Read and check one request and connect for it; raises
        ProxyRequestError with the answer for the client."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout)
        except asyncio.LimitOverrunError:
            raise ProxyRequestError(431, f"request head over {self.max_head_bytes} bytes") from None
        except TimeoutError:
            raise ProxyRequestError(408, "request head not received in time") from None
        request = parse_request_head(head)
        return request, await self._open_upstream(request)

    async def _answer_and_close(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter, status: int, message: str) -> None:
        """Send an error and end our side, then swallow what the client is
        still sending for a moment: closing with unread input would reset
        the connection and could destroy the answer before it is read."""
        writer.write(error_response(status, message))
        writer.write_eof()
        try:
            await asyncio.wait_for(_discard(reader, self.max_head_bytes * 64), 1.0)
        except TimeoutError:
            pass

    async def _open_upstream(self, request: ProxyRequest):
        """Check the target against the rules and connect to a checked address."""
        target = f"{request.host}:{request.port}"
        if not self.rules.allows(request.host):
            raise self._deny(target, "not allowed by [network].allow")
        try:
            if _is_ip_literal(request.host):
                found = [request.host]
            else:
                found = await asyncio.wait_for(
                    self.resolve(request.host, request.port), self.connect_timeout)
            addresses = [ipaddress.ip_address(a) for a in found]
        except (TimeoutError, OSError, ValueError):
            raise ProxyRequestError(502, f"cannot resolve {request.host}") from None
        if not addresses or any(self.refuse(a) for a in addresses):
            raise self._deny(target, "resolves to a private or reserved address")
        try:
            return await asyncio.wait_for(
                self._connect_first(addresses, request.port), self.connect_timeout)
        except TimeoutError:
            raise ProxyRequestError(504, f"connecting to {target} timed out") from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ProxyRequestError(502, f"cannot connect to {target}: {reason}") from None

    def _deny(self, target: str, why: str) -> ProxyRequestError:
        self.on_event(f"denied {target}")
        return ProxyRequestError(403, f"{target} {why}")

    async def _connect_first(self, addresses: list[Address], port: int):
        """Connect to the first of the checked ``addresses`` that answers."""
        loop = asyncio.get_running_loop()
        error: OSError = OSError("no address")
        for address in addresses:
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, (str(address), port))
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return await asyncio.open_connection(sock=sock, limit=self.max_head_bytes)
        raise error

    async def _relay(self, client_reader, client_writer, up_reader, up_writer) -> None:
        """Copy both ways until both sides have finished, one side fails, or
        nothing moved for ``idle_timeout`` seconds. Each direction forwards
        end-of-stream on its own (half-close)."""
        loop = asyncio.get_running_loop()
        last_activity = [loop.time()]
        pumps = {asyncio.ensure_future(self._pump(client_reader, up_writer, last_activity)),
                 asyncio.ensure_future(self._pump(up_reader, client_writer, last_activity))}
        pending = set(pumps)
        try:
            while pending:
                remaining = last_activity[0] + self.idle_timeout - loop.time()
                if remaining <= 0:
                    break
                done, pending = await asyncio.wait(
                    pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                if any(task.exception() is not None for task in done):
                    break
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    last_activity: list[float]) -> None:
        loop = asyncio.get_running_loop()
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            last_activity[0] = loop.time()
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
