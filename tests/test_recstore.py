"""BYD-3 recordings as the web API serves them (coop.recstore), on real files written by
the real Recorder: listing, partial files, and paths that must lead nowhere."""

from __future__ import annotations

import os

import pytest

from coop import recstore
from coop.recording import Recorder


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def state(tmp_path):
    (tmp_path / "sessions" / "proj").mkdir(parents=True)
    return tmp_path


def record(state, pty=0, wall=1_700_000_000, events=(("o", b"hello\r\n", 0.5),)) -> str:
    clock = Clock()
    rec = Recorder(state / "sessions" / "proj" / "rec", pty, 80, 24, clock=clock,
                   wallclock=lambda: wall)
    for kind, data, at in events:
        clock.now = 100.0 + at
        if kind == "o":
            rec.output(data)
        else:
            rec.resize(*data)
    rec.close()
    return rec.path.name


def test_lists_recordings_with_duration_and_serves_bytes(state):
    second = record(state, pty=1, wall=1_700_000_100,
                    events=[("o", b"a", 0.25), ("r", (100, 30), 1.0), ("o", b"b", 2.5)])
    first = record(state)
    found = recstore.list_recordings(state, "proj")
    assert [r["name"] for r in found] == [first, second]
    assert found[0] == {"name": first, "pty": 0, "started": 1_700_000_000, "width": 80,
                             "height": 24, "duration": 0.5,
                             "size": os.path.getsize(state / "sessions/proj/rec" / first)}
    assert (found[1]["pty"], found[1]["duration"]) == (1, 2.5)
    assert recstore.read_recording(state, "proj", second) == \
        (state / "sessions/proj/rec" / second).read_bytes()


def test_a_half_written_last_line_is_skipped(state):
    name = record(state, events=[("o", b"x", 1.0), ("o", b"y", 3.0)])
    path = state / "sessions/proj/rec" / name
    with open(path, "a") as f:
        f.write('[7.5, "o", "unfinis')
    assert recstore.list_recordings(state, "proj")[0]["duration"] == 3.0


def test_a_long_last_event_is_found_beyond_the_first_window(state):
    name = record(state, events=[("o", b"x" * (300 << 10), 4.0)])
    assert recstore.list_recordings(state, "proj")[0]["duration"] == 4.0
    assert len(recstore.read_recording(state, "proj", name)) > 300 << 10


def test_session_without_recordings_lists_nothing_and_unknown_session_is_not_found(state):
    assert recstore.list_recordings(state, "proj") == []
    with pytest.raises(recstore.RecordingNotFound, match="no session 'ghost'"):
        recstore.list_recordings(state, "ghost")
    with pytest.raises(recstore.RecordingNotFound):
        recstore.read_recording(state, "ghost", "0-1-000.cast")


@pytest.mark.parametrize("file", ["../x", "..", "%2e%2e", "0-1-000.cast/", "0-1-000.cast\x00",
                                  "/etc/passwd", "0-1-0000.cast", "a-1-000.cast", "0-1-000.txt"])
def test_names_outside_the_pattern_are_refused(state, file):
    record(state)
    with pytest.raises(recstore.RecordingNotFound):
        recstore.read_recording(state, "proj", file)


def test_planted_links_and_fifos_lead_nowhere(state, tmp_path_factory):
    secret = tmp_path_factory.mktemp("outside") / "secret"
    secret.write_text('{"version": 2, "width": 1, "height": 1}\n[1.0, "o", "secret"]\n')
    record(state)
    rec = state / "sessions/proj/rec"
    (rec / "0-1-001.cast").symlink_to(secret)
    os.mkfifo(rec / "0-1-002.cast")
    assert [r["name"] for r in recstore.list_recordings(state, "proj")] == \
        [p for p in os.listdir(rec) if p.endswith("000.cast")]
    for planted in ("0-1-001.cast", "0-1-002.cast"):
        with pytest.raises(recstore.RecordingNotFound):
            recstore.read_recording(state, "proj", planted)
    # a linked rec directory and a linked session directory
    (state / "sessions/linked").mkdir()
    (state / "sessions/linked/rec").symlink_to(rec)
    (state / "sessions/alias").symlink_to(state / "sessions/proj")
    for session in ("linked", "alias"):
        with pytest.raises(recstore.RecordingNotFound):
            recstore.list_recordings(state, session)
        with pytest.raises(recstore.RecordingNotFound):
            recstore.read_recording(state, session, "0-1-001.cast")


def test_a_recording_not_yet_flushed_is_listed_with_its_name_time(state):
    rec = state / "sessions/proj/rec"
    rec.mkdir()
    (rec / "2-1700000500-000.cast").write_bytes(b"")
    (rec / "3-1700000600-000.cast").write_bytes(b"garbage\n")
    assert recstore.list_recordings(state, "proj") == [
        {"name": "2-1700000500-000.cast", "pty": 2, "size": 0, "started": 1700000500,
         "width": None, "height": None, "duration": 0.0}]
