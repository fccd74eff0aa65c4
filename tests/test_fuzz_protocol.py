"""IPC-2…IPC-6, SEC-4: well-framed but hostile messages — every command name with every
field set to junk, cut and re-chunked — give a ProtocolError with the right code, never
anything else (the supervisor turns any other exception into INTERNAL)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coop import protocol
from coop.protocol import ErrorCode, FrameDecoder, FrameType, ProtocolError
from tests.fuzzing import Recipe, fuzz

FIELDS = sorted({f for schema in protocol.COMMANDS.values() for f in schema} | {"cmd", "version"})
LEAVES = (None, True, False, 0, 1, -1, 2 ** 31, 2 ** 64, 1.5, "", "proj", "/", "\x00", [], {})
NAMES = sorted(protocol.COMMANDS) + ["", "ATTACH", "attach ", 7]


def message(r: Recipe) -> dict:
    msg = {"cmd": r.choice(NAMES)} if r.pick(8) else {}
    for _ in range(r.pick(6)):
        msg[r.choice(FIELDS)] = r.json(LEAVES, tuple(FIELDS))
    return msg


def check(payload: bytes, greeted: bool) -> None:
    try:
        msg = protocol.decode_json(payload)
        if not greeted:
            assert protocol.check_hello(msg) == {"version": 1, "ok": True}
            return
        cmd, checked = protocol.check_command(msg)
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.INVALID_COMMAND, ErrorCode.VERSION_MISMATCH)
        assert "\n" not in exc.message
        return
    for field, (kind, required) in protocol.COMMANDS[cmd].items():
        value = checked.get(field)
        assert value is not None or not required
        if value is not None:
            assert isinstance(value, protocol._T[kind]) and not (
                kind == "int" and isinstance(value, bool))


@pytest.mark.slow
@fuzz()
@given(st.binary(max_size=96))
def test_fuzz_hostile_messages_raise_only_protocol_errors(data):
    r = Recipe(data)
    stream = b"".join(protocol.encode_message(message(r)) for _ in range(r.pick(3) + 1))
    if r.chance(3):
        stream = r.mangle(stream)
    decoder, step, greeted = FrameDecoder(limit=512), r.pick(40) + 1, bool(r.pick(4))
    try:
        for i in range(0, len(stream), step):
            for payload in decoder.feed(stream[i:i + step]):
                check(payload, greeted)
    except ProtocolError as exc:
        assert exc.code == ErrorCode.MESSAGE_TOO_LARGE


@pytest.mark.slow
@fuzz()
@given(st.binary(max_size=40))
def test_fuzz_stream_frames_split_or_refuse(payload):
    try:
        kind, body = protocol.split_stream_frame(payload)
    except ProtocolError as exc:
        assert exc.code == ErrorCode.INVALID_COMMAND
        assert not payload or payload[0] not in set(FrameType)
    else:
        assert protocol.encode_frame(kind, body)[4:] == payload


def test_check_command_accepts_every_command_in_its_minimal_form():
    for cmd, schema in protocol.COMMANDS.items():
        sample = {"str": "x", "int": 1, "bool": True, "list": [], "dict": {}, "float": 1.0}
        msg = {"cmd": cmd, **{f: sample[k] for f, (k, required) in schema.items() if required}}
        assert protocol.check_command(json.loads(json.dumps(msg))) == (cmd, msg)


def test_deeply_nested_json_is_an_invalid_command():
    with pytest.raises(ProtocolError) as exc:
        protocol.decode_json(b"[" * 100_000)
    assert exc.value.code == ErrorCode.INVALID_COMMAND
