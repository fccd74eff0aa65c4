"""Real daemons on temporary HOMEs: DMN-1…DMN-10, IPC-1…IPC-6, PTY-1…PTY-5, CLI-1…CLI-3."""

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from coop import protocol
from coop.protocol import FrameDecoder, FrameType
from tests.daemon import Coop, pid_alive, wait_for


class RawClient:
    """A hand-rolled protocol client, to send what the real CLI never would."""

    def __init__(self, path, hello=True):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.dec = FrameDecoder()
        self.frames = []
        if hello:
            assert self.ask({"version": 1}) == {"version": 1, "ok": True}

    def send(self, msg):
        self.sock.sendall(protocol.encode_message(msg))

    def recv_payload(self):
        while not self.frames:
            data = self.sock.recv(1 << 20)
            if not data:
                return None
            self.frames += self.dec.feed(data)
        return self.frames.pop(0)

    def recv(self):
        p = self.recv_payload()
        return None if p is None else json.loads(p)

    def ask(self, msg):
        self.send(msg)
        return self.recv()

    def closed(self, timeout=10):
        """The daemon ends the stream within ``timeout``; what it sent before
        the end (output still in flight) is read past."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.sock.recv(1 << 16):
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            pass
        return False

    def send_data(self, data):
        self.sock.sendall(protocol.encode_frame(FrameType.DATA, data))

    def send_control(self, obj):
        self.sock.sendall(protocol.encode_control(obj))

    def read_stream_until(self, needle: bytes, timeout=10):
        """Collect terminal bytes (and events) until needle is seen."""
        out, events = b"", []
        deadline = time.monotonic() + timeout
        while needle not in out:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {needle!r}, got {out[-300:]!r}")
            p = self.recv_payload()
            if p is None:
                raise AssertionError(f"closed waiting for {needle!r}, got {out[-300:]!r}")
            kind, body = protocol.split_stream_frame(p)
            if kind == FrameType.DATA:
                out += body
            else:
                events.append(json.loads(body))
        return out, events

    def read_event(self, name, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self.recv_payload()
            assert p is not None, f"closed before event {name}"
            kind, body = protocol.split_stream_frame(p)
            if kind == FrameType.CONTROL:
                ev = json.loads(body)
                if ev.get("event") == name:
                    return ev
        raise AssertionError(f"no {name} event")

    def close(self):
        self.sock.close()


def attach_raw(c: Coop, session, pty=0, cols=None, rows=None, **extra) -> RawClient:
    cl = RawClient(c.socket)
    req = {"cmd": "attach", "session": session, "pty": pty, **extra}
    if cols:
        req.update(cols=cols, rows=rows)
    ans = cl.ask(req)
    assert ans["ok"], ans
    return cl


def start(c: Coop, name="proj", coopfile='command = "sh"'):
    ws = c.workspace(name, coopfile)
    c.ok("-d", cwd=ws)
    return ws


# -- DMN-1: auto-start, one daemon, socket path safety ----------------------


def test_ten_concurrent_first_commands_start_one_daemon(coop):
    procs = [subprocess.Popen([sys.executable, "-m", "coop", "ls", "--json"], env=coop.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(10)]
    outs = [p.communicate(timeout=30) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert all(json.loads(o[0]) == {"sessions": []} for o in outs)
    pid = coop.daemon_pid()
    assert pid and pid_alive(pid)

    def daemons():
        matching = {p: _ppid(p) for p in _pids() if _is_coop_process(p, coop)}
        return [p for p, parent in matching.items() if parent not in matching]

    # Candidates that lost the lock may still be on their way out; none stays.
    wait_for(lambda: daemons() == [pid], what="the candidates that lost the lock to exit")


def _pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def _is_coop_process(pid, c):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
    except OSError:
        return False
    return b"coop.actors.supervisor" in cmd and str(c.socket).encode() in cmd


def test_stale_socket_is_replaced(coop):
    coop.state.mkdir(parents=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(coop.socket))
    s.close()  # a socket file nobody listens on
    assert coop.ls() == []


def test_symlink_at_socket_path_is_refused(coop, tmp_path):
    coop.state.mkdir(parents=True)
    target = tmp_path / "elsewhere"
    os.symlink(target, coop.socket)
    res = coop.run("ls")
    assert res.returncode == 4
    err = res.stderr.decode()
    assert "symlink" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not target.exists() and os.path.islink(coop.socket)


def test_foreign_owned_file_at_socket_path_is_refused(coop):
    coop.state.mkdir(parents=True)
    coop.socket.write_text("")
    os.chown(coop.socket, 12345, 12345)
    res = coop.run("ls")
    assert res.returncode == 4 and "not a socket" in res.stderr.decode()
    assert coop.socket.read_text() == ""


# -- IPC-1: SO_PEERCRED -------------------------------------------------------


@pytest.fixture(scope="module")
def other_user():
    name = f"coop-ipc{os.getpid()}"  # per run: test runs in parallel never share it
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", name], capture_output=True, check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def test_other_uid_is_rejected_owner_is_served(coop, other_user):
    import tempfile

    open_dir = tempfile.mkdtemp(prefix="coop-peercred-")
    os.chmod(open_dir, 0o755)
    coop.socket = coop.socket.__class__(open_dir) / "sock"
    coop.env["COOP_SOCKET"] = str(coop.socket)
    assert coop.ls() == []
    os.chmod(coop.socket, 0o777)  # open the path up so only SO_PEERCRED stands in the way
    probe = (
        "import socket,struct,sys\n"
        "s=socket.socket(socket.AF_UNIX);s.settimeout(5);s.connect(sys.argv[1])\n"
        "b=b'{\"version\":1}'\n"
        "try:\n s.sendall(struct.pack('>I',len(b))+b); d=s.recv(100)\nexcept OSError:\n d=b''\n"
        "print('CLOSED' if d==b'' else 'ANSWERED')\n"
    )
    res = subprocess.run(["runuser", "-u", other_user, "--", "/usr/bin/python3", "-c", probe,
                          str(coop.socket)], capture_output=True, timeout=20)
    assert res.stdout.decode().strip() == "CLOSED", res.stderr
    assert "refused connection from uid" in coop.log()
    assert coop.ls() == []
    coop.cleanup()
    shutil.rmtree(open_dir, ignore_errors=True)


# -- IPC-2/3/6: malformed input ----------------------------------------------


def test_malformed_input_gets_errors_and_daemon_keeps_serving(coop):
    start(coop)
    watcher = attach_raw(coop, "proj")
    watcher.send_data(b"echo before\n")
    watcher.read_stream_until(b"before\r\n")

    cl = RawClient(coop.socket, hello=False)
    assert cl.ask({"version": 99})["error"] == "VERSION_MISMATCH"
    assert cl.closed()

    cl = RawClient(coop.socket, hello=False)
    cl.sock.sendall(b"\x00\x00\x00\x05garbage")
    assert cl.recv()["error"] == "INVALID_COMMAND"

    cl = RawClient(coop.socket)
    cl.sock.sendall(struct.pack(">I", (1 << 20) + 1))
    assert cl.recv()["error"] == "MESSAGE_TOO_LARGE"
    assert cl.closed()

    cl = RawClient(coop.socket)
    assert cl.ask({"cmd": "teleport"})["error"] == "INVALID_COMMAND"
    assert cl.ask({"cmd": "kill", "session": 7})["error"] == "INVALID_COMMAND"
    assert cl.ask({"cmd": "attach", "session": "nope"})["error"] == "SESSION_NOT_FOUND"
    assert cl.ask({"cmd": "attach", "session": "proj", "pty": 9})["error"] == "PTY_NOT_FOUND"

    cl = RawClient(coop.socket)
    cl.sock.sendall(b"\x00\x00\x01\x00{\"cmd\"")  # truncated frame, then gone
    cl.close()

    cl = RawClient(coop.socket, hello=False)
    cl.sock.sendall(os.urandom(3000))
    cl.close()

    watcher.send_data(b"echo after\n")
    watcher.read_stream_until(b"after\r\n")
    assert [s["name"] for s in coop.ls()] == ["proj"]


def test_bad_stream_frames_end_only_that_client(coop):
    start(coop)
    good = attach_raw(coop, "proj")
    bad = attach_raw(coop, "proj")
    bad.sock.sendall(b"\x00\x00\x00\x02\x09x")  # unknown frame type
    bad.read_event("error")
    assert bad.closed()
    good.send_data(b"echo still\n")
    good.read_stream_until(b"still\r\n")


# -- PTY-1/2/3/4 -------------------------------------------------------------


def test_two_clients_see_all_output_and_input_merges(coop):
    start(coop)
    a = attach_raw(coop, "proj")
    b = attach_raw(coop, "proj")
    a.send_data(b"echo from-a\n")
    b.send_data(b"echo from-b\n")
    for cl in (a, b):
        out, _ = cl.read_stream_until(b"from-b\r\n")
        assert b"from-a\r\n" in out


def test_scrollback_replay_on_attach(coop):
    start(coop)
    a = attach_raw(coop, "proj")
    a.send_data(b"echo remembered-$((6*7))\n")
    a.read_stream_until(b"remembered-42")
    a.close()
    b = attach_raw(coop, "proj")
    out, _ = b.read_stream_until(b"remembered-42")
    assert b"remembered-42" in out


def test_resume_from_offset_gets_exactly_missed_bytes(coop):
    start(coop)
    a = attach_raw(coop, "proj")
    ev = a.read_event("attached")
    got, _ = b"", None
    a.send_data(b"echo one-$((1))\n")
    got, _ = a.read_stream_until(b"one-1\r\n")
    seen = ev["offset"] + len(got)
    a.close()
    b = attach_raw(coop, "proj")
    b.send_data(b"echo two-$((2))\n")
    b.read_stream_until(b"two-2\r\n")
    c = attach_raw(coop, "proj", offset=seen)
    out, events = c.read_stream_until(b"two-2\r\n")
    assert b"one-1" not in out
    assert events[0]["offset"] == seen


def test_min_size_resize_across_clients(coop):
    start(coop)
    a = attach_raw(coop, "proj", cols=120, rows=40)
    b = attach_raw(coop, "proj", cols=100, rows=50)

    def size():
        return coop.session("proj")["ptys"][0]["size"]

    wait_for(lambda: size() == [100, 40], what="min size")
    a.send_data(b"stty size\n")
    a.read_stream_until(b"40 100\r\n")
    b.send_control({"type": "resize", "cols": 90, "rows": 45})
    wait_for(lambda: size() == [90, 40], what="resize")
    b.close()
    wait_for(lambda: size() == [120, 40], what="size after detach")


def test_stalled_client_does_not_slow_others_and_gets_lag(coop):
    start(coop, coopfile='command = "sh"')
    stalled = attach_raw(coop, "proj")
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    fast = attach_raw(coop, "proj")
    total = 40 << 20
    fast.send_data(f"head -c {total} /dev/zero | tr '\\0' x; echo; echo DONE-$((1+1))\n".encode())
    t0 = time.monotonic()
    received = own_drops = 0
    buf = b""
    while b"DONE-2" not in buf[-64:]:
        p = fast.recv_payload()
        assert p is not None
        kind, body = protocol.split_stream_frame(p)
        if kind == FrameType.DATA:
            received += len(body)
            buf = (buf + body)[-64:]
        elif json.loads(body).get("event") == "lag":  # only if this reader itself fell behind
            own_drops += json.loads(body)["dropped"]
    elapsed = time.monotonic() - t0
    # a stalled peer that blocked the PTY would have stopped this stream after
    # the peer's queue filled (4 MiB); instead every byte came or was our own drop
    assert received + own_drops >= total and received >= total // 2
    print(f"fast client: {received / elapsed / 2**20:.1f} MiB/s with a stalled peer, "
          f"{own_drops} bytes of its own lag")
    # the stalled client, once it reads, finds a lag event and a replay
    stalled.sock.settimeout(10)
    ev = stalled.read_event("lag")
    assert ev["dropped"] > 0
    out, _ = stalled.read_stream_until(b"DONE-2")


def test_a_detach_is_answered_after_the_output_queued_before_it(coop):
    """PTY-2/IPC-5: output a client's socket could not take yet waits in its
    queue, in order; a detach is answered after all of it, and the stream ends
    only once that answer is out (closing at once would drop the queue)."""
    start(coop, coopfile='command = "sh"')
    slow = attach_raw(coop, "proj")
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    fast = attach_raw(coop, "proj")
    size = 2 << 20  # well under the 4 MiB queue limit: queued, never dropped
    fast.send_data(f"head -c {size} /dev/zero | tr '\\0' y; echo END-$((2+3))\n".encode())
    fast.read_stream_until(b"END-5", timeout=30)  # all of it has left the PTY
    slow.send_control({"type": "detach"})
    received, answered = b"", False
    while (payload := slow.recv_payload()) is not None:
        kind, body = protocol.split_stream_frame(payload)
        if kind == FrameType.DATA:
            assert not answered, "output after the detach answer"
            received += body
        elif json.loads(body) == {"ok": True}:  # not the "attached" event, also "ok"
            answered = True
    assert answered
    _typed, output = received.split(b"\r\n", 1)  # the typed command, then its output
    assert output.count(b"y") == size and b"END-5" in output


# -- DMN-7/8: exits, restarts, crash loop, shells ----------------------------


def test_agent_restart_events_and_same_client_continues(coop):
    start(coop, coopfile='[agent]\ncommand = "sh"\n[session]\nrestart_delay_ms = 50\n')
    a = attach_raw(coop, "proj")
    a.send_data(b"exit 7\n")
    out, events = a.read_stream_until(b"restarting in 50 ms")
    assert b"[process exited (code 7)]" in out
    assert {"event": "pty_exited", "pty": 0, "code": 7} in events
    a.read_event("pty_restarting")
    wait_for(lambda: coop.session("proj")["ptys"][0]["state"] == "running", what="restart")
    a.send_data(b"echo back-$((3+3))\n")
    a.read_stream_until(b"back-6")


def test_crash_loop_stops_restarting(coop):
    start(coop, coopfile='[agent]\ncommand = "false"\n[session]\nrestart_delay_ms = 10\n')
    wait_for(lambda: coop.session("proj")["ptys"][0]["state"] == "exited", timeout=15,
             what="crash loop to stop")
    cl = attach_raw(coop, "proj")  # attaching restarts it once more
    out, _ = cl.read_stream_until(b"not restarting")
    assert b"5 times" in out or b"not restarting" in out


def test_shell_pty_and_its_exit_removes_it(coop):
    start(coop)
    sh = RawClient(coop.socket)
    ans = sh.ask({"cmd": "shell", "session": "proj", "command": "echo in-shell; read x; exit 3"})
    assert ans["ok"] and ans["pty"] == 1
    sh.read_stream_until(b"in-shell")
    assert [p["role"] for p in coop.session("proj")["ptys"]] == ["agent", "shell"]
    sh.send_data(b"\n")
    ev = sh.read_event("pty_exited")
    assert ev["code"] == 3
    assert sh.closed()
    wait_for(lambda: len(coop.session("proj")["ptys"]) == 1, what="shell removed")


def test_exec_streams_and_returns_code(coop):
    start(coop)
    res = coop.run("exec", "proj", "--", "sh", "-c", "echo out; echo err >&2; exit 4")
    assert res.returncode == 4
    assert res.stdout == b"out\n" and res.stderr == b"err\n"
    res = coop.run("exec", "proj", "--", "sh", "-c", "tr a-z A-Z", input=b"hello\n")
    assert res.returncode == 0 and res.stdout == b"HELLO\n"


# -- DMN-2/3/4: idle exit, shutdown, crash survival ---------------------------


def test_idle_exit(tmp_path):
    c = Coop(tmp_path, idle_timeout=0.5)
    try:
        assert c.ls() == []
        pid = c.daemon_pid()
        wait_for(lambda: not pid_alive(pid), timeout=10, what="idle exit")
        assert not c.socket.exists() and not (c.state / "daemon.pid").exists()
    finally:
        c.cleanup()


def test_shutdown_keeps_sessions_and_new_daemon_readopts(coop):
    start(coop)
    a = attach_raw(coop, "proj")
    a.send_data(b"echo kept-$((5*5))\n")
    a.read_stream_until(b"kept-25")
    actor = coop.session("proj")["pid"]
    old = coop.daemon_pid()
    coop.ok("shutdown")
    a.read_event("detached")
    wait_for(lambda: not pid_alive(old), what="daemon exit")
    assert pid_alive(actor)
    assert [s["name"] for s in coop.ls()] == ["proj"]
    assert coop.daemon_pid() != old
    b = attach_raw(coop, "proj")
    b.read_stream_until(b"kept-25")


def test_sigkill_of_supervisor_loses_no_session(coop):
    start(coop)
    a = attach_raw(coop, "proj")
    a.send_data(b"echo survived-$((9*9))\n")
    a.read_stream_until(b"survived-81")
    actor = coop.session("proj")["pid"]
    old = coop.daemon_pid()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not pid_alive(old), what="supervisor gone")
    # the attached client is served by the actor, not the supervisor
    a.send_data(b"echo still-$((2*2))\n")
    a.read_stream_until(b"still-4")
    sessions = coop.ls()  # starts a new daemon that re-adopts
    assert [s["name"] for s in sessions] == ["proj"] and sessions[0]["pid"] == actor
    b = attach_raw(coop, "proj")
    b.read_stream_until(b"survived-81")


def test_kill_and_kill_all(coop):
    start(coop, "one")
    start(coop, "two")
    assert {s["name"] for s in coop.ls()} == {"one", "two"}
    pid_one = coop.session("one")["pid"]
    coop.ok("kill", "one", "-f")
    wait_for(lambda: not pid_alive(pid_one), what="actor exit")
    assert [s["name"] for s in coop.ls()] == ["two"]
    assert not (coop.state / "sessions" / "one").exists()
    coop.ok("kill", "--all", "-f")
    assert coop.ls() == []


def test_names_collide_with_suffix_and_lookup_by_path(coop):
    ws = coop.workspace("My Proj")
    coop.ok("-d", cwd=ws)
    coop.ok("-d", "-n", "my-proj-x", cwd=ws)
    names = sorted(s["name"] for s in coop.ls())
    assert names == ["my-proj", "my-proj-x"]
    other = coop.workspace("sub/My Proj")
    coop.ok("-d", cwd=other)
    assert "my-proj-2" in {s["name"] for s in coop.ls()}
    res = coop.run("exec", str(other), "--", "sh", "-c", "echo $COOP_SESSION")
    assert res.stdout == b"my-proj-2\n"


# -- PTY-5: local attach from a real terminal ---------------------------------


def test_attach_detach_restores_terminal(coop):
    ws = start(coop)
    script = (f"stty -g > {coop.root}/before; "
              f"{sys.executable} -m coop attach proj; echo rc=$?; "
              f"stty -g > {coop.root}/after; echo END")
    term = coop_pty(coop, script, ws)
    term.write(b"echo attached-$((4+4))\r")
    term.read_until(b"attached-8")
    term.write(b"\x1d")
    term.read_until(b"END")
    assert b"[detached from proj]" in term.buf and b"rc=0" in term.buf
    assert (coop.root / "before").read_text() == (coop.root / "after").read_text()


def test_custom_detach_keys(coop):
    ws = start(coop)
    term = coop_pty(coop, f"{sys.executable} -m coop attach proj --detach-keys ctrl-a,d; echo END",
                    ws)
    term.write(b"echo typed-$((1+4))\r")
    term.read_until(b"typed-5")
    term.write(b"\x01d")
    term.read_until(b"END")
    assert b"[detached from proj]" in term.buf


def test_terminal_restored_when_session_killed_while_attached(coop):
    ws = start(coop)
    script = (f"stty -g > {coop.root}/before; {sys.executable} -m coop attach proj; "
              f"stty -g > {coop.root}/after; echo END")
    term = coop_pty(coop, script, ws)
    term.write(b"echo here-$((2+5))\r")
    term.read_until(b"here-7")
    coop.ok("kill", "proj", "-f")
    term.read_until(b"END")
    assert (coop.root / "before").read_text() == (coop.root / "after").read_text()


def coop_pty(c: Coop, script: str, cwd):
    from tests.daemon import PtyProc

    return PtyProc(["sh", "-c", script], env=c.env, cwd=cwd, owner=c)


def test_attach_from_a_pipe_streams_without_raw_mode(coop):
    start(coop)
    script = coop.root / "input"
    script.write_bytes(b"echo piped-$((3*3))\n")
    with open(script, "rb") as stdin:  # EOF on stdin does not detach: output keeps flowing
        proc = subprocess.Popen([sys.executable, "-m", "coop", "attach", "proj"], env=coop.env,
                                stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    coop.procs.append(proc)
    watcher = attach_raw(coop, "proj")
    watcher.read_stream_until(b"piped-9")
    coop.ok("kill", "proj", "-f")
    out, err = proc.communicate(timeout=20)
    assert b"piped-9" in out and b"\x1b[2m" not in err


# -- CLI-3: exit codes and one-line errors ------------------------------------


def test_cli_exit_codes_and_one_line_errors(coop, tmp_path):
    res = coop.run("--bogus-flag")
    assert res.returncode == 2 and res.stderr.decode().count("\n") == 1
    res = coop.run("attach", "nosuch")
    assert res.returncode == 3 and res.stderr.decode().count("\n") == 1
    res = coop.run("kill", "nosuch")
    assert res.returncode == 3
    ws = coop.workspace("bad", coopfile="[network]\nmode = \"vet\"\n[agent]\ncommand='sh'\n")
    res = coop.run("-d", cwd=ws)
    assert res.returncode == 1
    err = res.stderr.decode()
    assert err.count("\n") == 1 and "[network].mode" in err and "Traceback" not in err
    res = coop.run("ls", env={"COOP_SOCKET": str(tmp_path / "no" / "such" / "dir" / "sock")})
    assert res.returncode in (1, 4) and "Traceback" not in res.stderr.decode()
    assert coop.run("--version").stdout.decode().startswith("coop ")
    assert coop.run("ls").returncode == 0


def test_interrupt_exits_130(coop):
    coop.ls()
    proc = subprocess.Popen([sys.executable, "-m", "coop", "logs", "-f"], env=coop.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    coop.procs.append(proc)
    wait_for(lambda: proc.stdout.peek(1) if hasattr(proc.stdout, "peek") else True,
             what="logs output")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 130


def test_logs_have_events_not_content(coop):
    start(coop)
    a = attach_raw(coop, "proj")
    a.send_data(b"echo SECRET-CONTENT-$((1+1))\n")
    a.read_stream_until(b"SECRET-CONTENT-2")
    log = coop.ok("logs", "proj")
    assert "created" in log and "attached local client" in log
    assert "SECRET-CONTENT" not in coop.log()
