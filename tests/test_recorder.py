"""The recorder process of a PTY's recording (BYD-3): every byte the actor hands
over reaches the cast, in order, with the actor's timestamps, even while the
recorder is stopped, and after the actor itself is gone."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import threading
import time

from hypothesis import given
from hypothesis import strategies as st

from coop import recorder, recording
from coop.recorder import OUTPUT, RESIZE, RecordDecoder, RecorderProcess
from tests.daemon import wait_for
from tests.fuzzing import fuzz

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(kind: int, at: float, payload: bytes) -> bytes:
    return struct.pack("<BdI", kind, at, len(payload)) + payload


@fuzz(2000)
@given(st.lists(st.tuples(st.sampled_from([OUTPUT, RESIZE]), st.floats(0, 1e6), st.binary(max_size=50)),
                max_size=10), st.data())
def test_records_cut_anywhere_decode_the_same(records, data):
    wire = b"".join(record(*r) for r in records)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=5)))
    decoder = RecordDecoder()
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)]):
        got += [(kind, at, bytes(payload)) for kind, at, payload in decoder.feed(wire[start:end])]
    assert got == records


def cast_text(directory) -> tuple[str, list[list]]:
    events = []
    for path in sorted(directory.glob("*.cast")):
        events += recording.read_cast(path)[1]
    return "".join(e[2] for e in events if e[1] == "o"), events


def exited(pid: int) -> bool:
    """Whether our child ``pid`` has exited (its zombie is collected here: the
    loop that would have reaped it has ended)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


def record_chunks(tmp_path, chunks: list[bytes], pause: float = 0.0, resize_after: int = -1):
    """Hand ``chunks`` to a recorder process, ``pause`` seconds apart, with a resize
    to 100x30 after chunk ``resize_after``. When each chunk was handed over
    (after the time the recording starts from), the cast's text and events."""
    async def main():
        seen = [time.monotonic()]
        rec = RecorderProcess(tmp_path, 0, 80, 24)
        for i, chunk in enumerate(chunks):
            seen.append(time.monotonic())
            rec.output(chunk)
            if i == resize_after:
                rec.resize(100, 30)
            if pause:
                await asyncio.sleep(pause)
        rec.close()
        return rec.pid, seen

    pid, seen = asyncio.run(main())
    wait_for(lambda: exited(pid), what="the recorder's exit")
    return (seen, *cast_text(tmp_path))


def test_output_and_resizes_arrive_in_order_with_the_actors_times(tmp_path):
    lines = [f"line {i}\r\n" for i in range(200)]
    seen, text, events = record_chunks(tmp_path, [line.encode() for line in lines], resize_after=100)
    assert text == "".join(lines)
    resize = next(i for i, e in enumerate(events) if e[1] == "r")
    assert events[resize][2] == "100x30"
    assert "".join(e[2] for e in events[:resize]) == "".join(lines[:101])
    times = [e[0] for e in events]
    assert times == sorted(times) and times[-1] <= seen[-1] - seen[0]


def test_output_is_batched_by_time_and_keeps_its_timing(tmp_path):
    """Chunks less than BATCH_WINDOW after a batch's first join it: one event,
    at the time the actor saw that first chunk, so event times keep the
    output's own timing."""
    seen, text, events = record_chunks(tmp_path, [b"%d\r\n" % i for i in range(100)], pause=0.001)
    seen = seen[1:]  # seen[i]: when line i was handed over
    assert text == "".join(f"{i}\r\n" for i in range(100))
    firsts = [int(e[2].split("\r\n")[0]) for e in events]
    assert 100 / 20 < len(events) < 100, firsts  # ~1 ms apart: several lines a batch
    for first, after in zip(firsts, [*firsts[1:], 100]):
        assert seen[after - 1] - seen[first] < recorder.BATCH_WINDOW
    for event, first in zip(events, firsts):
        assert abs((event[0] - events[0][0]) - (seen[first] - seen[0])) < 0.001


def test_a_stopped_recorder_loses_nothing(tmp_path):
    """Past the spool's limit and the pipe, bytes wait in the backlog; past the
    backlog limit the actor's write blocks until the recorder goes on: slower,
    never lossy."""
    chunk = b"x" * 65535 + b"\n"
    main_thread = threading.get_native_id()

    def resume_when_blocked(pid):
        wait_for(lambda: "pipe_write" in open(f"/proc/self/task/{main_thread}/wchan").read(),
                 what="the actor blocked writing to the recorder")
        os.kill(pid, signal.SIGCONT)

    async def main():
        rec = RecorderProcess(tmp_path, 0, 80, 24, backlog_limit=4 << 20, spool_limit=2 << 20)
        os.kill(rec.pid, signal.SIGSTOP)
        for _ in range(64):  # 2 MiB spool + 1 MiB pipe + 1 MiB backlog
            rec.output(chunk)
        assert rec._backlog, "the spool and the pipe should be full"
        waker = threading.Thread(target=resume_when_blocked, args=(rec.pid,))
        waker.start()
        for _ in range(64):  # past the limit: blocks until SIGCONT
            rec.output(chunk)
        waker.join()
        rec.close()
        return rec.pid

    pid = asyncio.run(main())
    wait_for(lambda: exited(pid), what="the recorder's exit")
    text, _ = cast_text(tmp_path)
    assert text == chunk.decode() * 128


def test_the_spool_frees_what_is_released_and_starts_over_once_all_is(tmp_path):
    """The spool in one process: chunks come back as put; released bytes give
    their blocks back (so their dirty pages are never written); past
    ``limit`` waiting, ``put`` refuses; once everything is released past
    REWIND_AT, the next chunk goes to the start of the file."""
    spool = recorder.Spool(tmp_path, limit=3 << 20)
    chunks = [bytes([65 + i]) * (1 << 20) for i in range(3)]
    offsets = [spool.put([chunk[:10], chunk[10:]], len(chunk)) for chunk in chunks]
    assert offsets == [0, 1 << 20, 2 << 20]
    assert spool.put([b"x"], 1) is None  # 3 MiB wait: no more
    assert [spool.read(o, len(c)) for o, c in zip(offsets, chunks)] == chunks
    blocks = os.fstat(spool.fd).st_blocks
    spool.release(2 << 20, 2 << 20)
    assert os.fstat(spool.fd).st_blocks <= blocks - (2 << 20) // 512
    assert spool.put([b"y" * 100], 100) == 3 << 20  # room again; 1 MiB + 100 still wait
    spool.release((3 << 20) + 100, (1 << 20) + 100)
    spool._end = recorder.REWIND_AT  # as if that much had passed through
    assert spool.put([b"z"], 1) == 0
    assert spool.read(0, 1) == b"z"
    assert list(tmp_path.iterdir()) == [], "the spool has no name in the directory"
    spool.close()


def test_conversion_waits_for_a_pause_while_output_streams_fast():
    """conversion_due: output streaming faster than FIREHOSE waits for QUIET (or
    DEFER_LIMIT), slower output waits FLUSH_DELAY at most."""
    due = recorder.conversion_due
    mib = 1 << 20
    assert not due(0.0, 0.1, 1000, 0.15)  # a trickle, just now
    assert due(0.0, 0.1, 1000, 0.1 + recorder.QUIET + 1e-6)  # ...that paused
    assert due(0.0, 1.1, 1000, 1.15)  # a trickle that never pauses: FLUSH_DELAY
    assert not due(0.0, 1.1, 40 * mib, 1.15)  # a firehose that never pauses: waits...
    assert due(0.0, 1.1, 40 * mib, 1.1 + recorder.QUIET + 1e-6)  # ...for its pause
    assert due(0.0, 1.1, recorder.DEFER_LIMIT, 1.15)  # ...or for DEFER_LIMIT
    rate = recorder.FIREHOSE * 0.9  # just slower than a firehose, for 10 s
    assert due(0.0, 9.99, int(rate * 10), 10.0)


def test_streaming_output_waits_for_a_pause_to_be_converted(tmp_path):
    """Output faster than FIREHOSE is not converted while it streams, well past
    FLUSH_DELAY: only the cast's header is on disk. Once it pauses, all of it
    is in the cast, in order, within QUIET and the conversion's time."""
    chunk = b"0123456789" * 6553 + b"\r\n"

    def cast_size():
        return sum(p.stat().st_size for p in tmp_path.glob("*.cast"))

    async def main():
        rec = RecorderProcess(tmp_path, 0, 80, 24)
        wait_for(lambda: cast_size() > 0, what="the cast's header")
        header = cast_size()
        sent = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < recorder.FLUSH_DELAY + 0.5:
            rec.output(chunk)  # 64 KiB each ms or so: far above FIREHOSE
            sent += 1
            await asyncio.sleep(0.001)
        assert sent * len(chunk) > recorder.FIREHOSE * (recorder.FLUSH_DELAY + 0.5)
        assert cast_size() == header, "converted while the output streamed"
        paused = time.monotonic()
        await asyncio.to_thread(wait_for, lambda: cast_size() > sent * len(chunk),
                                what="the converted cast")
        converted_after = time.monotonic() - paused
        rec.close()
        return rec.pid, sent, converted_after

    pid, sent, converted_after = asyncio.run(main())
    wait_for(lambda: exited(pid), what="the recorder's exit")
    text, _ = cast_text(tmp_path)
    assert text == chunk.decode() * sent
    assert converted_after >= recorder.QUIET * 0.9, converted_after


async def handed_over(rec: RecorderProcess) -> None:
    """Until the actor's batch is in the spool or the pipe (BATCH_WINDOW)."""
    deadline = time.monotonic() + 5
    while rec._batch:
        assert time.monotonic() < deadline, "the batch was never handed over"
        await asyncio.sleep(0.001)


def test_spooled_and_piped_chunks_of_any_size_arrive_whole_and_in_order(tmp_path):
    """A spool limit smaller than some chunks: each goes into the spool whole
    or, while the spool holds its limit, through the pipe. The cast holds every
    chunk, in order, whichever way it went."""
    sizes = [1, 1000, 40000, 70000, 150000, 7, 99999, 33333] * 10
    chunks = [bytes([65 + i % 26]) * size for i, size in enumerate(sizes)]
    ways = []

    async def main():
        rec = RecorderProcess(tmp_path, 0, 80, 24, spool_limit=100_000)
        for chunk in chunks:
            before = rec._spool._put
            rec.output(chunk)
            await handed_over(rec)
            ways.append("pipe" if rec._spool._put == before else "spool")
        rec.close()
        return rec.pid

    pid = asyncio.run(main())
    wait_for(lambda: exited(pid), what="the recorder's exit")
    text, _ = cast_text(tmp_path)
    assert text == b"".join(chunks).decode()
    assert {"pipe", "spool"} <= set(ways)


def test_output_that_never_pauses_is_on_disk_within_the_flush_delay(tmp_path):
    """A spinner redrawing every 2 ms leaves something in the pipe whenever the
    recorder looks; what it wrote still reaches the file within FLUSH_DELAY, not
    only at the end or after 256 KiB."""
    async def main():
        rec = RecorderProcess(tmp_path, 0, 80, 24)
        on_disk_at = None
        t0 = time.monotonic()
        for i in range(2000):  # ~4 s of ticks, well past FLUSH_DELAY
            rec.output(b"tick %d\r" % i)
            if i % 10 == 0 and b"tick 0\\r" in b"".join(p.read_bytes() for p in tmp_path.glob("*.cast")):
                on_disk_at = time.monotonic() - t0
                break
            await asyncio.sleep(0.002)
        rec.close()
        return rec.pid, on_disk_at

    pid, on_disk_at = asyncio.run(main())
    wait_for(lambda: exited(pid), what="the recorder's exit")
    assert on_disk_at is not None and on_disk_at < recorder.FLUSH_DELAY + 1.5, on_disk_at


ACTOR = """
import asyncio, os, sys
from coop.recorder import RecorderProcess
from tests.test_recorder import handed_over
async def main():
    rec = RecorderProcess(sys.argv[1], 3, 80, 24)
    print(rec.pid, flush=True)
    for i in range(1000):
        rec.output(b"%d\\r\\n" % i)
    await handed_over(rec)  # all but the last BATCH_WINDOW of output is handed over
    os.kill(os.getpid(), 9)  # the actor dies with its recording open
asyncio.run(main())
"""


def test_the_recording_survives_the_actor(tmp_path):
    proc = subprocess.run([sys.executable, "-c", ACTOR, str(tmp_path)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=30,
                          check=False)
    assert proc.returncode == -9, proc.stderr
    pid = int(proc.stdout.split()[0])
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="the orphaned recorder's exit")
    text, _ = cast_text(tmp_path)
    assert text == "".join(f"{i}\r\n" for i in range(1000))


def test_a_dead_recorder_ends_the_recording_not_the_session(tmp_path):
    """A recorder killed from outside: the actor's writes fail once, recording stops,
    everything else goes on (and the dead recorder is reaped)."""
    async def main():
        rec = RecorderProcess(tmp_path, 0, 80, 24)
        rec.output(b"before\r\n")
        os.kill(rec.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not rec.ended.done():  # EPIPE once the reader is gone
            assert time.monotonic() < deadline, "the dead recorder was not noticed"
            rec.output(b"x" * 65536)
            await asyncio.sleep(0.01)
        rec.output(b"after\r\n")
        rec.close()
        return rec.pid

    pid = asyncio.run(main())
    assert exited(pid)
