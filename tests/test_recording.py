"""The asciicast writer's own JSON string encoder and byte fidelity (BYD-3)."""

from __future__ import annotations

import json

import pytest

from hypothesis import given
from hypothesis import strategies as st

from coop import recording
from tests.fuzzing import fuzz

TERMINAL_CHARS = st.sampled_from(["\r\n", "\x1b[0m", "\t", "\b", "\\", '"', "a", "ü", "❯", "\x07", "\f", "\x00"])


DECODED_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))  # no lone surrogates


@fuzz()
@given(st.one_of(DECODED_TEXT, st.lists(TERMINAL_CHARS).map("".join)))
def test_json_escape_is_what_the_json_module_writes(text):
    quoted = b'"' + recording.json_escape(text.encode("utf-8")) + b'"'
    assert quoted == json.dumps(text, ensure_ascii=False).encode("utf-8")


@fuzz(500)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_recorded_output_is_the_output_decoded_as_utf8(tmp_path_factory, chunks):
    directory = tmp_path_factory.mktemp("rec")
    rec = recording.Recorder(directory, 0, 80, 24)
    for chunk in chunks:
        rec.output(chunk)
    rec.close()
    _header, events = recording.read_cast(next(directory.glob("*.cast")))
    assert [e[1] for e in events] == ["o"] * len(events)
    assert "".join(e[2] for e in events) == b"".join(chunks).decode("utf-8", "replace")
    times = [e[0] for e in events]
    assert times == sorted(times)


def test_pending_output_reaches_the_file_on_flush(tmp_path):
    rec = recording.Recorder(tmp_path, 0, 80, 24)
    path = rec.path
    rec.output(b"hello\r\n")
    assert b"hello" not in path.read_bytes()  # buffered: one write per 256 KiB or per flush
    rec.flush()
    assert path.read_bytes().splitlines()[-1].endswith(b'"o", "hello\\r\\n"]')
    rec.close()


def test_a_half_written_last_line_is_left_out_but_a_broken_line_is_an_error(tmp_path):
    """BYD-3: a recording read while the recorder writes it (``coop rec ls|play`` of a
    live session) ends at its last complete event; damage before that is reported."""
    path = tmp_path / "0-1-000.cast"
    header = '{"version": 2, "width": 80, "height": 24}\n'
    path.write_text(header + '[0.5, "o", "done\\r\\n"]\n[0.7, "o", "hal')
    assert recording.read_cast(path)[1] == [[0.5, "o", "done\r\n"]]
    path.write_text(header + '[0.5, "o", "bro\n[0.7, "o", "x"]\n')
    with pytest.raises(ValueError, match="not an asciicast v2 file"):
        recording.read_cast(path)
