"""BYD-2 attention and BYD-3 recording, through real daemons and real programs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from coop import recording
from tests.daemon import Coop, wait_for
from tests.e2e.test_daemon import attach_raw


def agent_state(c: Coop, name="proj"):
    return c.session(name)["ptys"][0]["state"]


def start_agent(c: Coop, script: str, extra: str = ""):
    ws = c.workspace("proj", f'[agent]\ncommand = "sh"\nargs = ["-c", {json.dumps(script)}]\n'
                             f'[session]\nattention_quiet_ms = 300\n{extra}')
    c.ok("-d", cwd=ws)
    return ws


def test_question_waiting_on_read_is_waiting(coop):
    start_agent(coop, "echo working; sleep 0.2; printf 'Apply the patch? [y/N] '; read x; "
                      "echo got-$x; exec sleep 1000")
    wait_for(lambda: agent_state(coop) == "waiting", timeout=10, what="waiting")
    assert coop.session("proj")["state"] == "waiting"
    cl = attach_raw(coop, "proj")
    cl.send_data(b"y\n")
    cl.read_stream_until(b"got-y")
    wait_for(lambda: agent_state(coop) == "running", timeout=5, what="busy again")


def test_bell_is_waiting_and_hook_runs_with_session_name(coop):
    marker = coop.root / "hook-ran"
    start_agent(coop, "echo build done; printf '\\a'; exec sleep 1000",
                extra=f'on_attention = "echo {{session}} > {marker}"\n')
    wait_for(lambda: agent_state(coop) == "waiting", timeout=10, what="bell")
    wait_for(marker.exists, timeout=10, what="hook")
    assert marker.read_text() == "proj\n"


def test_continuous_output_stays_busy(coop):
    start_agent(coop, "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.05; done")
    t_end = time.monotonic() + 2
    while time.monotonic() < t_end:  # sampled over several quiet windows
        assert agent_state(coop) == "running"


def test_spinner_then_prompt(coop):
    script = ("for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do "
              "printf '\\r\\033[2K%s thinking' $i; sleep 0.05; done; "
              "printf '\\r\\033[2K\\342\\235\\257 '; exec sleep 1000")
    start_agent(coop, script)
    assert agent_state(coop) == "running"
    wait_for(lambda: agent_state(coop) == "waiting", timeout=10, what="prompt")


def test_recording_is_valid_asciicast_and_replays_the_same_bytes(coop):
    start_agent(coop, "printf 'h\\303\\251llo\\r\\n'; sleep 0.3; printf '\\033[1mbold\\033[0m\\r\\n';"
                      " exec cat", extra="record = true\n")
    cl = attach_raw(coop, "proj", cols=100, rows=30)
    seen, _ = cl.read_stream_until(b"bold")
    cl.send_data(b"typed-input\n")
    more, _ = cl.read_stream_until(b"typed-input\r\n" * 2)
    seen += more
    coop.ok("kill", "proj")
    files = sorted((coop.state / "sessions" / "proj" / "rec").glob("*.cast"))
    assert len(files) == 1
    lines = files[0].read_text().splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2 and header["width"] == 80 and header["height"] == 24
    assert header["env"]["TERM"] and isinstance(header["timestamp"], int)
    events = [json.loads(line) for line in lines[1:]]
    times = [e[0] for e in events]
    assert times == sorted(times)
    assert {e[1] for e in events} <= {"o", "r"}
    assert [e[1:] for e in events if e[1] == "r"][-1] == ["r", "100x30"]
    out = "".join(e[2] for e in events if e[1] == "o")
    assert "héllo" in out and "\x1b[1mbold" in out
    assert out.count("typed-input") == 2  # the tty's echo and cat's output; no input event
    # replayed, the bytes are exactly what the attached terminal received (then
    # the exit notice of the kill)
    res = coop.run("rec", "play", "proj", "--speed", "100")
    assert res.returncode == 0 and res.stdout == out.encode()
    assert res.stdout.startswith(seen) and b"process exited" in res.stdout[len(seen):]
    # and asciinema itself reads it (BYD-3: playable by standard players)
    player = subprocess.run([os.path.join(os.path.dirname(sys.executable), "asciinema"), "cat",
                             str(files[0])], capture_output=True, timeout=30, check=False)
    assert (player.returncode, player.stdout) == (0, out.encode()), player.stderr


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(child) for child in f.read().split()]
    return found


def test_a_kill_returns_with_the_recording_complete(coop):
    """BYD-3: a kill returns only once the recorder process has written everything,
    up to the exit notice, even when it is slow (here: stopped)."""
    start_agent(coop, "yes 0123456789abcdef | head -c 5000000; echo END-$((1+1)); exec sleep 100",
                extra='record = true\n[network]\nmode = "none"\n')
    rec = coop.state / "sessions" / "proj" / "rec"

    def recorded() -> str:
        return "".join(e[2] for p in sorted(rec.glob("*.cast")) for e in recording.read_cast(p)[1])

    wait_for(lambda: "END-2" in recorded(), what="the output recorded")
    actor = coop.session("proj")["pid"]

    def ours(pid):  # forked from the actor and in its PID namespace: not the sandbox's init
        return all(os.readlink(f"/proc/{pid}/{link}") == os.readlink(f"/proc/{actor}/{link}")
                   for link in ("exe", "ns/pid"))

    (recorder,) = [c for c in children(actor) if ours(c)]
    (init,) = [c for c in children(actor) if not ours(c)]
    os.kill(recorder, signal.SIGSTOP)
    try:
        kill = subprocess.Popen([sys.executable, "-m", "coop", "kill", "-f", "proj"], env=coop.env,
                                cwd=coop.home, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        coop.procs.append(kill)
        wait_for(lambda: not os.path.exists(f"/proc/{init}"), what="the sandbox gone")
        with pytest.raises(subprocess.TimeoutExpired):
            kill.wait(2)  # held by the stopped recorder
    finally:
        os.kill(recorder, signal.SIGCONT)
    assert kill.wait(30) == 0, kill.stderr.read()
    events = [e for p in sorted(rec.glob("*.cast")) for e in recording.read_cast(p)[1]]
    assert "process exited" in events[-1][2]
    assert recorded().startswith("0123456789abcdef\r\n" * 1000)


def test_a_recording_that_cannot_start_leaves_the_session_running(coop):
    """BYD-3: where the recordings' folder cannot be made (a file holds its name),
    the PTY goes on unrecorded and the log says why."""
    rec = coop.state / "sessions" / "proj" / "rec"
    rec.parent.mkdir(parents=True)
    rec.write_text("not a folder")
    start_agent(coop, "echo hello-$((1+1)); exec sleep 100", extra="record = true\n")
    attach_raw(coop, "proj").read_stream_until(b"hello-2")
    assert "recording of pty 0 not started: [Errno 17] File exists" in coop.ok("logs", "proj")
    assert coop.session("proj")["state"] == "running"


def test_rec_play_speed(coop):
    start_agent(coop, "echo a; sleep 1; echo b; sleep 1; echo c; exec sleep 100",
                extra="record = true\n")
    cl = attach_raw(coop, "proj")
    cl.read_stream_until(b"c\r\n")
    t0 = time.monotonic()
    assert coop.ok("rec", "play", "proj", "--speed", "10") .startswith("a")
    fast = time.monotonic() - t0
    assert fast < 1.5  # 2 s of recording at 10x, plus process start
    ls = coop.ok("rec", "ls", "proj")
    assert "0-" in ls and ".cast" in ls
    dest = coop.root / "export"
    coop.ok("rec", "export", "proj", str(dest))
    assert len(list(dest.glob("*.cast"))) == 1


def test_rec_without_recordings_is_clear(coop):
    res = coop.run("rec", "ls", "nosuch")
    assert res.returncode == 3 and "no recordings" in res.stderr.decode()


def test_recorder_rotates_at_cap(tmp_path):
    t = [0.0]
    rec = recording.Recorder(tmp_path, 0, 80, 24, cap=2000, clock=lambda: t[0],
                             wallclock=lambda: 1700000000)
    for i in range(50):
        t[0] += 0.1
        rec.output(f"line {i:03d} {'x' * 80}\r\n".encode())
    rec.close()
    parts = sorted(tmp_path.glob("*.cast"))
    assert len(parts) > 1
    text = ""
    for p in parts:
        header, events = recording.read_cast(p)
        assert header["version"] == 2
        assert p.stat().st_size < 2000 + 200
        text += "".join(e[2] for e in events)
    assert text == "".join(f"line {i:03d} {'x' * 80}\r\n" for i in range(50))


def test_recorder_keeps_utf8_split_across_chunks(tmp_path):
    rec = recording.Recorder(tmp_path, 1, 80, 24)
    data = "ünïcødé ❯ ok".encode()
    for i in range(len(data)):
        rec.output(data[i:i + 1])
    rec.close()
    _, events = recording.read_cast(next(tmp_path.glob("*.cast")))
    assert "".join(e[2] for e in events) == "ünïcødé ❯ ok"


@pytest.mark.parametrize("speed", [0, -1])
def test_rec_play_rejects_bad_speed(coop, speed):
    start_agent(coop, "echo a; exec sleep 100", extra="record = true\n")
    wait_for(lambda: list((coop.state / "sessions" / "proj" / "rec").glob("*.cast")), what="rec")
    res = coop.run("rec", "play", "proj", "--speed", str(speed))
    assert res.returncode == 2
