"""SB-4 "proxy" mode / BYD-5: the egress proxy on real loopback sockets.

Test names resolve (through an injected resolver) to test servers on
127.0.0.2; since the real policy refuses loopback, the tests that need a
connection relax it for 127.0.0.0/8 only, and the policy tests use the real
one and check that the test server never saw a connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coop.sandbox.proxy import (
    EgressProxy,
    HostRules,
    ProxyRequestError,
    is_refused_address,
    parse_request_head,
    system_resolve,
)

UPSTREAM_HOST = "127.0.0.2"
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def loopback_relaxed(address) -> bool:
    """The real policy, except that 127.0.0.0/8 (where the test servers are) is allowed."""
    return False if address in LOOPBACK else is_refused_address(address)


def run(coro, timeout: float = 10.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Upstream:
    """A test origin server that counts connections and runs ``handler``."""

    def __init__(self, handler=None) -> None:
        self.handler = handler or self.echo
        self.peers: list[int] = []  # client ports, in the order of acceptance
        self.server: asyncio.AbstractServer | None = None

    @staticmethod
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, UPSTREAM_HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader, writer):
        self.peers.append(writer.get_extra_info("peername")[1])
        try:
            await self.handler(reader, writer)
        finally:
            writer.close()

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def connections_so_far(self) -> int:
        """How many connections arrived before now: accepts are in order, so
        once a marker connection of ours is accepted, none earlier is pending."""
        _, writer = await asyncio.open_connection(UPSTREAM_HOST, self.port)
        marker = writer.get_extra_info("sockname")[1]
        deadline = asyncio.get_running_loop().time() + 3
        while marker not in self.peers and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        writer.close()
        return self.peers.index(marker)


class Proxy:
    """An EgressProxy on a loopback listening socket with a table resolver."""

    def __init__(self, allow, names=None, refuse=loopback_relaxed, **options) -> None:
        self.names = names or {}
        self.resolved: list[str] = []
        self.events: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.proxy = EgressProxy(self.sock, allow, self.events.append, resolve=self.resolve,
                                 refuse=refuse, **options)

    async def resolve(self, host: str, port: int) -> list[str]:
        self.resolved.append(host)
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.names[host]

    async def __aenter__(self):
        await self.proxy.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.proxy.close()

    async def open(self):
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, head: bytes):
        """Send ``head``, return (status, body) of the proxy's answer, and the streams."""
        reader, writer = await self.open()
        writer.write(head)
        status, body = await read_response(reader)
        return status, body, reader, writer


async def read_response(reader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":")[1])
    return status, await reader.readexactly(length)


def connect_head(host: str, port: int) -> bytes:
    return f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


# --- the policy refuses private answers before connecting ------------------------------

@pytest.mark.parametrize("address", [
    "192.168.1.5", "10.1.2.3", "172.16.0.9", "127.0.0.2", "::1", "169.254.169.254",
    "100.64.0.1", "fd00::1", "fe80::1", "::ffff:10.0.0.1", "0.0.0.0", "224.0.0.1",
])
def test_real_policy_refuses_allowed_name_resolving_to_private_address(address):
    async def main():
        async with Upstream() as upstream, Proxy(
                ["api.allowed.test"], {"api.allowed.test": [address]},
                refuse=is_refused_address) as proxy:
            status, body, _, writer = await proxy.request(
                connect_head("api.allowed.test", upstream.port))
            writer.close()
            assert status == 403
            assert b"private or reserved" in body
            assert proxy.events == [f"denied api.allowed.test:{upstream.port}"]
            assert await upstream.connections_so_far() == 0
    run(main())


def test_real_policy_refuses_plain_http_to_loopback_answer():
    async def main():
        async with Upstream() as upstream, Proxy(
                ["api.allowed.test"], {"api.allowed.test": [UPSTREAM_HOST]},
                refuse=is_refused_address) as proxy:
            head = f"GET http://api.allowed.test:{upstream.port}/ HTTP/1.1\r\n\r\n".encode()
            status, _, _, writer = await proxy.request(head)
            writer.close()
            assert status == 403
            assert proxy.events == [f"denied api.allowed.test:{upstream.port}"]
            assert await upstream.connections_so_far() == 0
    run(main())


def test_one_private_address_among_the_answers_denies_the_name():
    async def main():
        async with Upstream() as upstream, Proxy(
                ["api.allowed.test"], {"api.allowed.test": [UPSTREAM_HOST, "10.0.0.1"]}) as proxy:
            status, _, _, writer = await proxy.request(
                connect_head("api.allowed.test", upstream.port))
            writer.close()
            assert status == 403
            assert await upstream.connections_so_far() == 0
    run(main())


# --- allowed traffic is relayed ----------------------------------------------------------

def test_connect_tunnel_relays_bytes_both_ways():
    payload = bytes(range(256)) * 4096  # 1 MiB, far beyond any socket buffer

    async def main():
        async with Upstream() as upstream, Proxy(
                ["api.allowed.test"], {"api.allowed.test": [UPSTREAM_HOST]}) as proxy:
            reader, writer = await proxy.open()
            # The first bytes of the tunnel travel in the same segment as the head.
            writer.write(connect_head("api.allowed.test", upstream.port) + b"early")
            assert await reader.readuntil(b"\r\n\r\n") == \
                b"HTTP/1.1 200 Connection established\r\n\r\n"
            assert await reader.readexactly(5) == b"early"

            async def send():
                writer.write(payload)
                await writer.drain()

            sender = asyncio.ensure_future(send())
            assert await reader.readexactly(len(payload)) == payload
            await sender
            writer.close()
            assert proxy.resolved == ["api.allowed.test"]
            assert proxy.events == []
    run(main())


def test_tunnel_forwards_half_close():
    async def reply_after_eof(reader, writer):
        received = await reader.read()  # until the client's end of stream
        writer.write(b"got " + received)
        await writer.drain()

    async def main():
        async with Upstream(reply_after_eof) as upstream, Proxy(
                ["api.allowed.test"], {"api.allowed.test": [UPSTREAM_HOST]}) as proxy:
            status, _, reader, writer = await proxy.request(
                connect_head("api.allowed.test", upstream.port))
            assert status == 200
            writer.write(b"question")
            writer.write_eof()
            assert await reader.read() == b"got question"
            writer.close()
    run(main())


def test_plain_http_goes_out_in_origin_form_without_proxy_headers():
    seen: list[bytes] = []

    async def origin(reader, writer):
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        seen.append(await reader.readexactly(5))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()

    async def main():
        async with Upstream(origin) as upstream, Proxy(
                ["api.allowed.test"], {"api.allowed.test": [UPSTREAM_HOST]}) as proxy:
            head = (f"POST http://API.allowed.test:{upstream.port}/x?y=1#frag HTTP/1.1\r\n"
                    "Host: elsewhere\r\nProxy-Connection: keep-alive\r\n"
                    "Proxy-Authorization: Basic c2VjcmV0\r\nConnection: X-Drop\r\nX-Drop: 1\r\n"
                    "Content-Length: 5\r\nUser-Agent: t\r\n\r\nhello").encode()
            status, body, _, writer = await proxy.request(head)
            writer.close()
            assert (status, body) == (200, b"ok")
            assert seen == [
                (f"POST /x?y=1 HTTP/1.1\r\nHost: API.allowed.test:{upstream.port}\r\n"
                 "Content-Length: 5\r\nUser-Agent: t\r\nConnection: close\r\n\r\n").encode(),
                b"hello",
            ]
    run(main())


# --- allow rules -----------------------------------------------------------------------

def test_disallowed_name_is_denied_without_resolving():
    async def main():
        async with Proxy(["api.allowed.test"], {"other.test": [UPSTREAM_HOST]}) as proxy:
            status, body, _, writer = await proxy.request(connect_head("other.test", 443))
            writer.close()
            assert status == 403
            assert body == b"coop proxy: other.test:443 not allowed by [network].allow\n"
            assert proxy.events == ["denied other.test:443"]
            assert proxy.resolved == []
            head = b"GET http://other.test/ HTTP/1.1\r\n\r\n"
            status, _, _, writer = await proxy.request(head)
            writer.close()
            assert status == 403
            assert proxy.events == ["denied other.test:443", "denied other.test:80"]
    run(main())


@pytest.mark.parametrize("host, allowed", [
    ("a.example.test", True), ("b.a.example.test", True), ("A.Example.TEST.", True),
    ("example.test", False), ("badexample.test", False), ("example.test.evil", False),
])
def test_suffix_pattern_through_the_proxy(host, allowed):
    async def main():
        async with Upstream() as upstream, Proxy(
                ["*.example.test"], {host.lower().rstrip("."): [UPSTREAM_HOST]}) as proxy:
            status, _, _, writer = await proxy.request(connect_head(host, upstream.port))
            writer.close()
            assert status == (200 if allowed else 403)
            assert await upstream.connections_so_far() == (1 if allowed else 0)
    run(main())


def test_ip_literals_need_an_exact_rule_and_still_face_the_policy():
    async def main():
        async with Upstream() as upstream:
            async with Proxy(["*.test", UPSTREAM_HOST]) as proxy:
                status, _, _, w1 = await proxy.request(connect_head(UPSTREAM_HOST, upstream.port))
                assert status == 200
                status, _, _, w2 = await proxy.request(connect_head("127.0.0.3", upstream.port))
                assert status == 403
                status, _, _, w3 = await proxy.request(connect_head("[::1]", upstream.port))
                assert status == 403
                assert proxy.events == [f"denied 127.0.0.3:{upstream.port}",
                                        f"denied ::1:{upstream.port}"]
                assert proxy.resolved == []
                for writer in (w1, w2, w3):
                    writer.close()
            async with Proxy([UPSTREAM_HOST], refuse=is_refused_address) as proxy:
                status, _, _, writer = await proxy.request(
                    connect_head(UPSTREAM_HOST, upstream.port))
                writer.close()
                assert status == 403
            assert await upstream.connections_so_far() == 1
    run(main())


def test_host_rules():
    rules = HostRules(["Exact.Test", "*.wild.test", "203.0.113.7", "2001:DB8::1"])
    assert rules.allows("exact.test")
    assert not rules.allows("sub.exact.test")
    assert rules.allows("a.wild.test") and rules.allows("a.b.wild.test")
    assert not rules.allows("wild.test")
    assert not rules.allows("xwild.test")
    assert rules.allows("203.0.113.7") and rules.allows("2001:db8::1")
    assert not HostRules(["*.0.113.7"]).allows("203.0.113.7")
    assert not HostRules([]).allows("exact.test")
    for bad in ("*", "*.", "a.*.test", "bad name", "*example.test"):
        with pytest.raises(ValueError, match="invalid allow pattern"):
            HostRules([bad])


# --- hostile and broken clients --------------------------------------------------------

@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nHost: api.allowed.test\r\n\r\n",          # origin form
    b"GET https://api.allowed.test/ HTTP/1.1\r\n\r\n",             # TLS is CONNECT's job
    b"CONNECT api.allowed.test HTTP/1.1\r\n\r\n",                  # no port
    b"CONNECT api.allowed.test:99999 HTTP/1.1\r\n\r\n",
    b"CONNECT api.allowed.test:443 HTTP/2.0\r\n\r\n",
    b"GET http://user@api.allowed.test/ HTTP/1.1\r\n\r\n",
    b"GET http://api.allowed.test/ HTTP/1.1\r\n folded: header\r\n\r\n",
    b"GET http://api.allowed.test/ HTTP/1.1\r\nNoColon\r\n\r\n",
    b"GET http://api.allowed.test/ HTTP/1.1\r\nX: a\nInjected: b\r\n\r\n",
    b"GET http://api\xff.test/ HTTP/1.1\r\n\r\n",
    b"GET  http://api.allowed.test/ HTTP/1.1\r\n\r\n",
    b"\r\n\r\n",
])
def test_malformed_request_gets_400_and_the_proxy_keeps_serving(head):
    async def main():
        async with Upstream() as upstream, Proxy(
                ["api.allowed.test"], {"api.allowed.test": [UPSTREAM_HOST]}) as proxy:
            status, _, _, writer = await proxy.request(head)
            writer.close()
            assert status == 400
            status, _, _, writer = await proxy.request(
                connect_head("api.allowed.test", upstream.port))
            writer.close()
            assert status == 200
            assert proxy.events == []
    run(main())


def test_huge_head_gets_431():
    async def main():
        async with Proxy(["api.allowed.test"], max_head_bytes=4096) as proxy:
            reader, writer = await proxy.open()
            writer.write(b"GET http://api.allowed.test/ HTTP/1.1\r\n")
            writer.write(b"X-Filler: " + b"a" * 100_000 + b"\r\n\r\n")
            status, _ = await read_response(reader)
            writer.close()
            assert status == 431
            assert proxy.resolved == []
    run(main())


def test_slow_client_gets_408_while_others_are_served():
    async def main():
        async with Upstream() as upstream, Proxy(
                ["api.allowed.test"], {"api.allowed.test": [UPSTREAM_HOST]},
                head_timeout=0.5) as proxy:
            slow_reader, slow_writer = await proxy.open()
            slow_writer.write(b"CONNECT api.allowed.te")  # ... and nothing more
            status, _, _, writer = await proxy.request(
                connect_head("api.allowed.test", upstream.port))
            writer.close()
            assert status == 200
            started = asyncio.get_running_loop().time()
            status, _ = await read_response(slow_reader)
            assert status == 408
            assert asyncio.get_running_loop().time() - started < 2.0
            assert await slow_reader.read() == b""  # and the connection is closed
            slow_writer.close()
    run(main())


def test_connection_limit_answers_503_and_frees_slots():
    async def main():
        async with Upstream() as upstream, Proxy(
                ["api.allowed.test"], {"api.allowed.test": [UPSTREAM_HOST]},
                max_connections=2) as proxy:
            holders = [await proxy.open() for _ in range(2)]
            for _, writer in holders:
                writer.write(b"CONNECT api")
                await writer.drain()
            status, body, _, writer = await proxy.request(
                connect_head("api.allowed.test", upstream.port))
            writer.close()
            assert (status, body) == (503, b"coop proxy: too many connections\n")
            for _, writer in holders:
                writer.close()
            # The slots come back once the proxy has seen the holders leave.
            deadline = asyncio.get_running_loop().time() + 3
            while True:
                status, _, _, writer = await proxy.request(
                    connect_head("api.allowed.test", upstream.port))
                writer.close()
                if status == 200 or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.01)
            assert status == 200
    run(main())


def test_idle_tunnel_is_closed():
    async def main():
        async with Upstream() as upstream, Proxy(
                ["api.allowed.test"], {"api.allowed.test": [UPSTREAM_HOST]},
                idle_timeout=0.3) as proxy:
            status, _, reader, writer = await proxy.request(
                connect_head("api.allowed.test", upstream.port))
            assert status == 200
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            assert await asyncio.wait_for(reader.read(), 3) == b""
            writer.close()
    run(main())


def test_unreachable_upstream_gets_502():
    with socket.socket() as probe:
        probe.bind((UPSTREAM_HOST, 0))
        closed_port = probe.getsockname()[1]  # bound, never listening: refuses

        async def main():
            async with Proxy(["api.allowed.test"], {"api.allowed.test": [UPSTREAM_HOST]}) as proxy:
                status, body, _, writer = await proxy.request(
                    connect_head("api.allowed.test", closed_port))
                writer.close()
                assert status == 502
                assert body == (f"coop proxy: cannot connect to api.allowed.test:{closed_port}: "
                                "Connection refused\n").encode()
        run(main())


def test_unresolvable_name_gets_502():
    async def main():
        async with Proxy(["*.allowed.test"]) as proxy:
            status, body, _, writer = await proxy.request(connect_head("nx.allowed.test", 443))
            writer.close()
            assert (status, body) == (502, b"coop proxy: cannot resolve nx.allowed.test\n")
            assert proxy.events == []
    run(main())


def test_close_cuts_tunnels_and_stops_listening():
    async def main():
        async with Upstream() as upstream:
            proxy = Proxy(["api.allowed.test"], {"api.allowed.test": [UPSTREAM_HOST]})
            await proxy.proxy.start()
            status, _, reader, writer = await proxy.request(
                connect_head("api.allowed.test", upstream.port))
            assert status == 200
            await proxy.proxy.close()
            assert await reader.read() == b""
            writer.close()
            with pytest.raises(ConnectionRefusedError):
                await proxy.open()
    run(main())


def test_system_resolver_answers_from_the_hosts_file():
    assert "127.0.0.1" in run(system_resolve("localhost", 80))


# --- the pure parts ----------------------------------------------------------------------

def test_parse_connect_and_absolute_uri():
    request = parse_request_head(b"CONNECT [2001:DB8::1]:443 HTTP/1.1\r\n\r\n")
    assert (request.host, request.port, request.tunnel) == ("2001:db8::1", 443, True)
    request = parse_request_head(b"GET http://Example.Test.?q HTTP/1.0\r\nAccept: */*\r\n\r\n")
    assert (request.host, request.port, request.tunnel) == ("example.test", 80, False)
    assert request.forward_head == (b"GET /?q HTTP/1.0\r\nHost: Example.Test.\r\n"
                                    b"Accept: */*\r\nConnection: close\r\n\r\n")


@pytest.mark.parametrize("address, refused", [
    ("192.168.1.5", True), ("10.0.0.1", True), ("172.31.255.255", True), ("127.0.0.1", True),
    ("169.254.169.254", True), ("100.64.0.1", True), ("0.0.0.0", True), ("224.0.0.251", True),
    ("255.255.255.255", True), ("240.0.0.1", True), ("192.0.0.8", True), ("198.18.0.1", True),
    ("::1", True), ("::", True), ("fd12::1", True), ("fe80::1", True), ("fec0::1", True),
    ("ff02::1", True), ("::ffff:192.168.1.1", True), ("2002:c0a8:105::1", True),
    ("64:ff9b::a00:1", True), ("2001:db8::1", True),
    ("93.184.216.34", False), ("1.1.1.1", False), ("2606:4700::1111", False),
    ("::ffff:1.1.1.1", False), ("64:ff9b::101:101", False),
])
def test_address_policy(address, refused):
    assert is_refused_address(ipaddress.ip_address(address)) is refused


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parser_never_fails_unexpectedly_on_arbitrary_bytes(data):
    try:
        request = parse_request_head(data + b"\r\n\r\n")
    except ProxyRequestError as exc:
        assert exc.status == 400
    else:
        assert 0 < request.port < 65536
        assert request.host and "\r" not in request.host and "\n" not in request.host
