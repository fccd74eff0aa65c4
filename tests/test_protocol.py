"""IPC-2/3/4/5/6: the sans-I/O protocol module."""

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coop import protocol
from coop.protocol import ErrorCode, FrameDecoder, FrameType, ProtocolError
from tests.fuzzing import fuzz


def test_message_roundtrip_any_chunking():
    msgs = [{"cmd": "ls"}, {"cmd": "attach", "session": "a", "pty": 1}, {"x": "é" * 1000}]
    wire = b"".join(protocol.encode_message(m) for m in msgs)
    for step in (1, 3, 7, len(wire)):
        dec = FrameDecoder()
        got = []
        for i in range(0, len(wire), step):
            got += [protocol.decode_json(f) for f in dec.feed(wire[i:i + step])]
        assert got == msgs


def test_oversized_length_refused_before_body():
    dec = FrameDecoder()
    with pytest.raises(ProtocolError) as exc:
        dec.feed(struct.pack(">I", protocol.MAX_MESSAGE + 1))
    assert exc.value.code == ErrorCode.MESSAGE_TOO_LARGE


def test_exact_limit_accepted():
    dec = FrameDecoder()
    body = b"x" * protocol.MAX_MESSAGE
    assert dec.feed(struct.pack(">I", len(body)) + body) == [body]


@pytest.mark.parametrize("body", [b"not json", b"[1,2]", b"\xff\xfe", b'"str"', b""])
def test_decode_json_rejects(body):
    with pytest.raises(ProtocolError) as exc:
        protocol.decode_json(body)
    assert exc.value.code == ErrorCode.INVALID_COMMAND


def test_handshake():
    assert protocol.check_hello({"version": 1}) == {"version": 1, "ok": True}
    for bad in ({"version": 2}, {}, {"version": "1"}):
        with pytest.raises(ProtocolError) as exc:
            protocol.check_hello(bad)
        assert exc.value.code == ErrorCode.VERSION_MISMATCH


@pytest.mark.parametrize("msg,needle", [
    ({}, "cmd"),
    ({"cmd": 3}, "cmd"),
    ({"cmd": "fly"}, "unknown command"),
    ({"cmd": "attach"}, "missing field 'session'"),
    ({"cmd": "attach", "session": 5}, "must be str"),
    ({"cmd": "attach", "session": "a", "pty": True}, "must be int"),
    ({"cmd": "exec", "session": "a", "argv": "ls"}, "must be list"),
])
def test_check_command_errors(msg, needle):
    with pytest.raises(ProtocolError) as exc:
        protocol.check_command(msg)
    assert exc.value.code == ErrorCode.INVALID_COMMAND
    assert needle in exc.value.message


def test_stream_frames():
    wire = protocol.encode_frame(FrameType.DATA, b"hi") + protocol.encode_control({"type": "detach"})
    frames = FrameDecoder().feed(wire)
    assert protocol.split_stream_frame(frames[0]) == (FrameType.DATA, b"hi")
    kind, body = protocol.split_stream_frame(frames[1])
    assert kind == FrameType.CONTROL and json.loads(body) == {"type": "detach"}
    with pytest.raises(ProtocolError):
        protocol.split_stream_frame(b"\x07abc")
    with pytest.raises(ProtocolError):
        protocol.split_stream_frame(b"")


def test_encode_data_splits_at_limit():
    parts = protocol.encode_data(b"a" * 10, max_payload=4)
    frames = FrameDecoder().feed(b"".join(parts))
    assert [protocol.split_stream_frame(f)[1] for f in frames] == [b"aaaa", b"aaaa", b"aa"]


@fuzz()
@given(st.binary(max_size=64), st.integers(1, 16))
def test_fuzz_decoder_only_protocol_errors(data, step):
    """IPC-6: any bytes give frames or a ProtocolError, nothing else."""
    dec = FrameDecoder(limit=32)
    try:
        for i in range(0, len(data), step):
            for frame in dec.feed(data[i:i + step]):
                try:
                    msg = protocol.decode_json(frame)
                    protocol.check_command(msg)
                except ProtocolError:
                    pass
    except ProtocolError as exc:
        assert exc.code == ErrorCode.MESSAGE_TOO_LARGE


@fuzz(2000)
@given(st.dictionaries(st.sampled_from(["cmd", "session", "pty", "argv", "cols", "force"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                                 st.lists(st.text(max_size=3), max_size=3),
                                 st.sampled_from(list(protocol.COMMANDS)))))
def test_fuzz_check_command(msg):
    try:
        cmd, _ = protocol.check_command(msg)
        assert cmd in protocol.COMMANDS
    except ProtocolError as exc:
        assert exc.code == ErrorCode.INVALID_COMMAND
