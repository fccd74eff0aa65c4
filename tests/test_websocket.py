"""coop.websocket: handshake, framing, every protocol error with its close code (WEB-2, SEC-4),
and interop with the ``websockets`` library against tests/ws_echo.py."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coop.http import Headers, Request, RequestParser
from coop.websocket import (
    Binary,
    Close,
    CloseCode,
    ClosedError,
    Connection,
    Opcode,
    Ping,
    Pong,
    State,
    Text,
    accept_key,
    apply_mask,
    check_upgrade,
    encode_frame_header,
    handshake_response,
    valid_close_code,
)
from tests.fuzzing import fuzz
from tests.ws_echo import running

MASK = b"\x37\xfa\x21\x3d"


def frame(
    opcode: int,
    payload: bytes = b"",
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = MASK,
    length: int | None = None,
) -> bytes:
    """A frame as a (possibly misbehaving) client would write it."""
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if mask else 0
    if size < 126:
        header = struct.pack("!BB", first, mask_bit | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, size)
    if mask is None:
        return header + payload
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def receive(connection: Connection, *chunks: bytes) -> list:
    events = []
    for chunk in chunks:
        connection.receive_data(chunk)
        events += connection.events()
    return events


def close_code(data: bytes) -> int | None:
    """Status code of the single unmasked close frame in ``data`` (None for an empty one)."""
    assert data[0] == 0x88, data
    length = data[1]
    assert len(data) == 2 + length
    return int.from_bytes(data[2:4], "big") if length else None


def assert_failed(connection: Connection, code: int) -> None:
    assert close_code(connection.data_to_send()) == code
    assert connection.closed and connection.failure and connection.failure[0] == code
    assert receive(connection, frame(Opcode.TEXT, b"ignored")) == []
    assert connection.data_to_send() == b""


# -- handshake ----------------------------------------------------------------------


def upgrade_request(**overrides: str | None) -> Request:
    fields = {
        "Host": "localhost:8888",
        "Upgrade": "websocket",
        "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    fields.update(overrides)
    head = "GET /ws?session=a&pty=0 HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in fields.items() if value is not None
    )
    [request] = RequestParser().feed(head.encode() + b"\r\n")
    return request


def test_accept_key_rfc_example():
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_valid_upgrade_and_response():
    request = upgrade_request()
    assert request.wants_upgrade_websocket and check_upgrade(request) is None
    response = handshake_response("dGhlIHNhbXBsZSBub25jZQ==", [("X-Extra", "1")])
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response
    assert b"\r\nUpgrade: websocket\r\n" in response and b"\r\nX-Extra: 1\r\n" in response
    assert b"Content-Length" not in response and response.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"Upgrade": None}, 400),
        ({"Upgrade": "h2c"}, 400),
        ({"Connection": "keep-alive"}, 400),
        ({"Sec-WebSocket-Version": "8"}, 426),
        ({"Sec-WebSocket-Version": None}, 426),
        ({"Sec-WebSocket-Key": None}, 400),
        ({"Sec-WebSocket-Key": "not base64!"}, 400),
        ({"Sec-WebSocket-Key": "AAAAAAAAAAAAAAAAAAAA"}, 400),  # 15 bytes
        ({"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ"}, 400),  # padding missing
    ],
)
def test_invalid_upgrades(overrides, status):
    error = check_upgrade(upgrade_request(**overrides))
    assert error is not None and error.status == status and error.message
    if status == 426:
        assert ("Sec-WebSocket-Version", "13") in error.headers


def test_upgrade_needs_get_and_one_key():
    post = upgrade_request()
    post.method = "POST"
    assert check_upgrade(post).status == 400
    two_keys = Request(
        "GET",
        "/ws",
        "HTTP/1.1",
        Headers([*upgrade_request().headers, ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]),
    )
    assert check_upgrade(two_keys).status == 400


# -- codec ----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 1 << 32])
def test_frame_header_forms_match_reference(length):
    assert encode_frame_header(Opcode.BINARY, length) == frame(
        Opcode.BINARY, length=length, mask=None
    )
    assert encode_frame_header(Opcode.TEXT, length, fin=False, mask=MASK)[0] == Opcode.TEXT


@settings(max_examples=300, derandomize=True)
@given(st.binary(max_size=64), st.binary(min_size=4, max_size=4), st.integers(0, 10))
def test_apply_mask_matches_bytewise_xor(data, mask, offset):
    expected = bytes(b ^ mask[(i + offset) % 4] for i, b in enumerate(data))
    assert apply_mask(data, mask, offset) == expected


def test_close_code_ranges():
    valid = [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999]
    invalid = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
    assert all(map(valid_close_code, valid)) and not any(map(valid_close_code, invalid))


# -- messages ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_round_trip_client_to_server_and_back(size):
    client, server = Connection(is_client=True), Connection()
    text = ("é€😀a" * size)[:size]
    [event] = receive(server, client.send_text(text))
    assert event == Text(text)
    [event] = receive(client, server.send_binary(bytes(range(256)) * (size // 256) + b"x"))
    assert event == Binary(bytes(range(256)) * (size // 256) + b"x")


def test_bytewise_delivery_gives_the_same_events():
    stream = (
        frame(Opcode.TEXT, "καλημέρα".encode(), fin=False)
        + frame(Opcode.PING, b"p")
        + frame(Opcode.CONTINUATION, b" world")
        + frame(Opcode.BINARY, b"\x00" * 300)
        + frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"bye")
    )
    expected = [Ping(b"p"), Text("καλημέρα world"), Binary(b"\x00" * 300), Close(1000, "bye")]
    whole = Connection()
    assert receive(whole, stream) == expected
    bytewise = Connection()
    assert receive(bytewise, *(stream[i : i + 1] for i in range(len(stream)))) == expected
    assert bytewise.data_to_send() == whole.data_to_send()


def test_fragmented_message_with_interleaved_control_frames():
    server = Connection()
    events = receive(
        server,
        frame(Opcode.BINARY, b"ab", fin=False),
        frame(Opcode.PING, b"1"),
        frame(Opcode.CONTINUATION, b"", fin=False),
        frame(Opcode.PONG, b"2"),
        frame(Opcode.CONTINUATION, b"cd"),
    )
    assert events == [Ping(b"1"), Pong(b"2"), Binary(b"abcd")]
    assert server.data_to_send() == b"\x8a\x011"  # the automatic pong


def test_utf8_split_across_fragments_and_chunks():
    snowman = "☃".encode()  # 3 bytes
    server = Connection()
    events = receive(
        server,
        frame(Opcode.TEXT, b"a" + snowman[:1], fin=False),
        frame(Opcode.CONTINUATION, snowman[1:2], fin=False),
        frame(Opcode.CONTINUATION, snowman[2:] + b"b"),
    )
    assert events == [Text("a☃b")] and server.failure is None


def test_invalid_utf8_fails_on_the_first_impossible_byte():
    """Autobahn 6.4: fail before the rest of the frame or message has arrived."""
    server = Connection()
    data = frame(Opcode.TEXT, "κόσμε".encode() + b"\xf4\x90\x80\x80edited")
    head_and_valid = len(data) - len(b"\xf4\x90\x80\x80edited")
    assert receive(server, data[: head_and_valid + 1]) == [] and not server.closed
    assert receive(server, data[head_and_valid + 1 : head_and_valid + 2]) == []
    assert_failed(server, CloseCode.INVALID_DATA)


def test_surrogate_fails_after_two_bytes():
    server = Connection()
    receive(server, frame(Opcode.TEXT, b"a\xed", fin=False))
    assert not server.closed
    receive(server, frame(Opcode.CONTINUATION, b"\xa0", fin=False))
    assert_failed(server, CloseCode.INVALID_DATA)


def test_truncated_utf8_at_message_end_is_1007():
    server = Connection()
    receive(server, frame(Opcode.TEXT, "☃".encode()[:2]))
    assert_failed(server, CloseCode.INVALID_DATA)


def test_reply_to_a_message_goes_out_before_the_failure_it_precedes():
    """Frames are parsed while events are pulled (Autobahn 3.2: echo, then 1002)."""
    server = Connection()
    server.receive_data(frame(Opcode.TEXT, b"hello") + frame(Opcode.TEXT, b"x", rsv=2))
    written = b""
    for event in server.events():
        written += server.send_text(event.data) + server.data_to_send()
    written += server.data_to_send()
    assert written[:7] == b"\x81\x05hello"
    assert close_code(written[7:]) == CloseCode.PROTOCOL_ERROR


# -- protocol errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(Opcode.TEXT, b"x", mask=None), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.TEXT, b"x", rsv=4), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.TEXT, b"x", rsv=2), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.BINARY, b"x", rsv=1), CloseCode.PROTOCOL_ERROR),
        (frame(3, b"x"), CloseCode.PROTOCOL_ERROR),
        (frame(7), CloseCode.PROTOCOL_ERROR),
        (frame(0xB), CloseCode.PROTOCOL_ERROR),
        (frame(0xF), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.PING, b"x", fin=False), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.PING, b"x" * 126), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.PONG, b"x" * 126), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.CLOSE, b"\x03\xe8" + b"x" * 124), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.CONTINUATION, b"x"), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.TEXT, b"a", fin=False) + frame(Opcode.TEXT, b"b"), CloseCode.PROTOCOL_ERROR),
        (
            frame(Opcode.BINARY, b"a", fin=False) + frame(Opcode.BINARY, b"b"),
            CloseCode.PROTOCOL_ERROR,
        ),
        (frame(Opcode.CLOSE, b"\x03"), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.CLOSE, struct.pack("!H", 999)), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.CLOSE, struct.pack("!H", 1004)), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.CLOSE, struct.pack("!H", 1005)), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.CLOSE, struct.pack("!H", 1006)), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.CLOSE, struct.pack("!H", 1016)), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.CLOSE, struct.pack("!H", 5000)), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"\xff"), CloseCode.INVALID_DATA),
        (frame(Opcode.TEXT, b"\xc0\xaf"), CloseCode.INVALID_DATA),
        (frame(Opcode.TEXT, b"a" * 70, length=1 << 63), CloseCode.PROTOCOL_ERROR),
        (frame(Opcode.BINARY, length=(1 << 20) + 1), CloseCode.MESSAGE_TOO_BIG),
        (
            frame(Opcode.BINARY, b"x" * 1000, fin=False)
            + frame(Opcode.CONTINUATION, length=(1 << 20) - 999),
            CloseCode.MESSAGE_TOO_BIG,
        ),
    ],
)
def test_protocol_errors_fail_with_the_rfc_code(data, code):
    server = Connection()
    assert receive(server, data) == []
    assert_failed(server, code)


def test_client_side_refuses_masked_frames_from_a_server():
    client = Connection(is_client=True)
    receive(client, frame(Opcode.TEXT, b"x"))
    data = client.data_to_send()
    assert data[0] == 0x88 and data[1] & 0x80  # a client's close is masked too
    assert client.failure[0] == CloseCode.PROTOCOL_ERROR


def test_message_limit_is_configurable():
    server = Connection(max_message=10)
    assert receive(server, frame(Opcode.BINARY, b"x" * 10)) == [Binary(b"x" * 10)]
    receive(server, frame(Opcode.TEXT, b"x" * 6, fin=False), frame(Opcode.CONTINUATION, b"y" * 5))
    assert_failed(server, CloseCode.MESSAGE_TOO_BIG)


# -- closing --------------------------------------------------------------------------


def test_peer_close_is_echoed_and_closes():
    server = Connection()
    events = receive(server, frame(Opcode.CLOSE, struct.pack("!H", 1001) + "ciao ☃".encode()))
    assert events == [Close(1001, "ciao ☃")]
    assert close_code(server.data_to_send()) == 1001
    assert server.closed and server.failure is None
    with pytest.raises(ClosedError):
        server.send_text("late")


def test_empty_close_reports_no_status_and_replies_empty():
    server = Connection()
    assert receive(server, frame(Opcode.CLOSE)) == [Close(CloseCode.NO_STATUS, "")]
    assert server.data_to_send() == b"\x88\x00"


def test_server_initiated_close_handshake():
    server = Connection()
    assert close_code(server.send_close(CloseCode.GOING_AWAY, "bye")) == 1001
    assert server.state is State.CLOSING and not server.closed
    with pytest.raises(ClosedError):
        server.send_binary(b"x")
    events = receive(
        server,
        frame(Opcode.TEXT, b"in flight"),  # read and dropped
        frame(Opcode.PING, b"p"),  # not answered any more
        frame(Opcode.CLOSE, struct.pack("!H", 1001)),
    )
    assert events == [Close(1001, "")]
    assert server.data_to_send() == b"" and server.closed


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.send_ping(b"x" * 126), ValueError),
        (lambda c: c.send_pong(b"x" * 126), ValueError),
        (lambda c: c.send_close(1005), ValueError),
        (lambda c: c.send_close(1006), ValueError),
        (lambda c: c.send_close(1000, "x" * 124), ValueError),
    ],
)
def test_send_refuses_what_the_rfc_forbids(call, error):
    connection = Connection()
    with pytest.raises(error):
        call(connection)
    assert connection.state is State.OPEN


def test_client_to_server_full_conversation():
    client, server = Connection(is_client=True), Connection()
    assert receive(server, client.send_ping(b"hb")) == [Ping(b"hb")]
    assert receive(client, server.data_to_send()) == [Pong(b"hb")]
    assert receive(server, client.send_close(1000, "done")) == [Close(1000, "done")]
    assert receive(client, server.data_to_send()) == [Close(1000, "")]
    assert client.closed and server.closed


# -- fuzzing ---------------------------------------------------------------------------

FUZZ = fuzz()
OPCODES = [0, 1, 2, 0, 8, 9, 10, 1]


def frames_from(recipe: bytes) -> bytes:
    """Frames described by a recipe (one hypothesis draw keeps 10,000 examples fast): per
    frame a flags byte, a length byte, the payload. The flags' low nibble picks the opcode
    and FIN; a high nibble of 12 to 15 breaks one rule (no mask, reserved opcode, RSV bit,
    fragmented control frame), so most streams go deep before they fail."""
    data, i = b"", 0
    while i + 1 < len(recipe):
        flags, size = recipe[i], recipe[i + 1] % 141
        payload = recipe[i + 2 : i + 2 + size]
        i += 2 + size
        opcode, fin, rule = OPCODES[flags & 7], bool(flags & 8), flags >> 4
        if opcode >= 8:
            fin = rule != 15
        if rule == 13:
            opcode = 3 if opcode < 8 else 11
        data += frame(opcode, payload, fin, rsv=int(rule == 14), mask=None if rule == 12 else MASK)
    return data


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def check_stream(connection: Connection, chunks: list[bytes]) -> list:
    events = []
    for chunk in chunks:
        connection.receive_data(chunk)
        events += connection.events()
        connection.data_to_send()
    assert all(isinstance(event, Text | Binary | Ping | Pong | Close) for event in events)
    if connection.failure:
        assert connection.closed and connection.failure[0] in (1002, 1007, 1009)
    return events


@pytest.mark.slow
@FUZZ
@given(st.binary(max_size=256))
def test_fuzz_random_bytes(data):
    is_client, size = (data[0] & 1, data[0] % 64 + 1) if data else (False, 1)
    check_stream(Connection(is_client=bool(is_client), max_message=100), chunked(data, size))


@pytest.mark.slow
@FUZZ
@given(st.binary(min_size=1, max_size=400))
def test_fuzz_frame_sequences_parse_the_same_in_any_chunking(recipe):
    data = frames_from(recipe[1:])
    whole, pieces = Connection(max_message=200), Connection(max_message=200)
    assert check_stream(whole, [data]) == check_stream(pieces, chunked(data, recipe[0] % 50 + 1))
    assert whole.failure == pieces.failure


# -- interop: the websockets library against tests/ws_echo.py ------------------------------


@pytest.fixture(scope="module")
def echo_port():
    with running() as port:
        yield port


def test_websockets_client_interop(echo_port):
    import websockets  # test dependency, see pyproject [test]

    async def conversation():
        url = f"ws://127.0.0.1:{echo_port}/"
        async with websockets.connect(url, max_size=None, compression=None) as ws:
            await ws.send("héllo ☃")
            assert await ws.recv() == "héllo ☃"
            await ws.send(bytes(range(256)) * 4096)  # 1 MiB binary
            assert await ws.recv() == bytes(range(256)) * 4096
            await ws.send(["frag", "men", "ted ☃"])
            assert await ws.recv() == "fragmented ☃"
            await asyncio.wait_for(await ws.ping(b"are you there"), 5)
            await ws.close(4000, "bye")
        return ws.close_code, ws.close_reason

    assert asyncio.run(asyncio.wait_for(conversation(), 30)) == (4000, "")


def test_websockets_client_sees_protocol_error_close(echo_port):
    import websockets

    async def conversation():
        async with websockets.connect(f"ws://127.0.0.1:{echo_port}/", compression=None) as ws:
            # a close frame with a 1-byte payload, written raw past the library's own checks
            ws.transport.write(frame(Opcode.CLOSE, b"\x03"))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(asyncio.wait_for(conversation(), 30)) == CloseCode.PROTOCOL_ERROR


def raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received:
                break
        return received


def test_echo_server_refuses_bad_handshakes(echo_port):
    plain = raw_exchange(echo_port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert plain.startswith(b"HTTP/1.1 400 ")
    old = raw_exchange(
        echo_port,
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    )
    assert old.startswith(b"HTTP/1.1 426 ") and b"Sec-WebSocket-Version: 13\r\n" in old
    smuggled = raw_exchange(
        echo_port,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    assert smuggled.startswith(b"HTTP/1.1 400 ")
