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
from coop.recorder import OUTPUT, RESIZE, RecordDecoder, RecorderProcess, merge_output
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


def test_output_and_resizes_arrive_in_order_with_the_actors_times(tmp_path):
    async def main():
        seen = [time.monotonic()]  # the recording's time zero is no earlier than this
        rec = RecorderProcess(tmp_path, 0, 80, 24)
        for i in range(200):
            seen.append(time.monotonic())
            rec.output(f"line {i}\r\n".encode())
            if i == 100:
                rec.resize(100, 30)
        rec.close()
        return rec.pid, seen

    pid, seen = asyncio.run(main())
    wait_for(lambda: exited(pid), what="the recorder's exit")
    text, events = cast_text(tmp_path)
    assert text == "".join(f"line {i}\r\n" for i in range(200))
    resize = next(i for i, e in enumerate(events) if e[1] == "r")
    assert events[resize][2] == "100x30"
    assert "".join(e[2] for e in events[:resize]) == "".join(f"line {i}\r\n" for i in range(101))
    times = [e[0] for e in events]
    assert times == sorted(times) and times[-1] <= seen[-1] - seen[0]


def test_a_stopped_recorder_loses_nothing(tmp_path):
    """Past the ring and the pipe, bytes wait in the backlog; past the backlog limit
    the actor's write blocks until the recorder goes on: slower, never lossy."""
    chunk = b"x" * 65535 + b"\n"
    main_thread = threading.get_native_id()

    def resume_when_blocked(pid):
        wait_for(lambda: "pipe_write" in open(f"/proc/self/task/{main_thread}/wchan").read(),
                 what="the actor blocked writing to the recorder")
        os.kill(pid, signal.SIGCONT)

    async def main():
        rec = RecorderProcess(tmp_path, 0, 80, 24, backlog_limit=4 << 20)
        os.kill(rec.pid, signal.SIGSTOP)
        for _ in range(64):  # 2 MiB ring + 1 MiB pipe + 1 MiB backlog
            rec.output(chunk)
        assert rec._backlog, "the ring and the pipe should be full"
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


def test_chunks_of_any_size_pass_a_small_ring_whole_and_in_order(tmp_path):
    """A ring smaller than some chunks: each chunk goes into it whole (from the
    ring's start when it would not fit before its end) or, while the ring is
    full or too small for it, through the pipe. The cast holds every chunk, in
    order, whichever way it went."""
    sizes = [1, 1000, 40000, 70000, 150000, 7, 99999, 33333] * 10
    chunks = [bytes([65 + i % 26]) * size for i, size in enumerate(sizes)]
    ways = []

    async def caught_up(rec):
        deadline = time.monotonic() + 10
        while rec._ring._read[0] < rec._ring._written or rec._backlog:
            assert time.monotonic() < deadline, "the recorder did not catch up"
            await asyncio.sleep(0.001)

    async def main():
        rec = RecorderProcess(tmp_path, 0, 80, 24, ring_size=100_000)
        os.kill(rec.pid, signal.SIGSTOP)
        for chunk in chunks[:40]:  # the ring fills: the rest waits in the pipe and backlog
            rec.output(chunk)
        os.kill(rec.pid, signal.SIGCONT)
        for chunk in chunks[40:]:
            await caught_up(rec)  # the ring is empty: each chunk that fits goes in
            before = rec._ring._written
            rec.output(chunk)
            after = rec._ring._written
            ways.append("pipe" if after == before else "ring" if after == before + len(chunk) else "wrapped")
        rec.close()
        return rec.pid

    pid = asyncio.run(main())
    wait_for(lambda: exited(pid), what="the recorder's exit")
    text, _ = cast_text(tmp_path)
    assert text == b"".join(chunks).decode()
    assert {"pipe", "ring", "wrapped"} <= set(ways)


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
async def main():
    rec = RecorderProcess(sys.argv[1], 3, 80, 24)
    print(rec.pid, flush=True)
    for i in range(1000):
        rec.output(b"%d\\r\\n" % i)
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


@fuzz(2000)
@given(st.lists(st.tuples(st.sampled_from([OUTPUT, RESIZE]), st.floats(0, 0.02), st.binary(max_size=40)),
                max_size=30))
def test_merged_output_keeps_every_byte_and_moves_none_past_the_window(records):
    records.sort(key=lambda r: r[1])
    merged = list(merge_output(records, window=0.005, limit=64))
    assert b"".join(p for k, _, p in merged if k == OUTPUT) == b"".join(p for k, _, p in records if k == OUTPUT)
    assert [r for r in merged if r[0] == RESIZE] == [r for r in records if r[0] == RESIZE]
    assert [at for _, at, _ in merged] == sorted(at for _, at, _ in merged)
    events, offset = [], 0  # (start offset, time) of each merged output event
    for kind, at, payload in merged:
        if kind == OUTPUT:
            assert len(payload) <= 64
            events.append((offset, at))
            offset += len(payload)
    offset = 0
    for kind, at, payload in records:
        if kind == OUTPUT and payload:
            event_at = [t for start, t in events if start <= offset][-1]
            assert event_at <= at < event_at + 0.005
            offset += len(payload)


def test_a_dead_recorder_ends_the_recording_not_the_session(tmp_path):
    """A recorder killed from outside: the actor's writes fail once, recording stops,
    everything else goes on (and the dead recorder is reaped)."""
    async def main():
        rec = RecorderProcess(tmp_path, 0, 80, 24)
        rec.output(b"before\r\n")
        os.kill(rec.pid, signal.SIGKILL)
        for _ in range(64):  # fills the pipe; EPIPE once the reader is gone
            rec.output(b"x" * 65536)
        await asyncio.wait_for(rec.ended, 10)
        rec.output(b"after\r\n")
        rec.close()
        return rec.pid

    pid = asyncio.run(main())
    assert exited(pid)
