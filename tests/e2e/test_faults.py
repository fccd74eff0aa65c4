"""Fault injection on real daemons (SEC-4, DMN-3, DMN-4, DMN-9, WEB-1, TUN-1).

Each actor is SIGKILLed in turn while sessions have local and web clients: the
rest keeps working, the supervisor restarts what it owns, a dead session leaves
``ls`` at once, and after ``coop kill --all`` and ``coop shutdown`` nothing is
left: no process of the test's HOME, no mount under it, no session cgroup, no
socket or session file under ``~/.coop``. Hostile input and a full state disk
get clear errors without harming the daemon.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from coop import protocol
from coop.protocol import FrameType
from tests.daemon import REPO, Coop, pid_alive, wait_for
from tests.e2e.test_daemon import RawClient, attach_raw
from tests.tunnel_peer import BrowserPeer, IpcClient, private_network
from tests.webclient import Web, children, serve, web_actor_pid

SANDBOX_BODY = '[agent]\ncommand = "sh"\n[network]\nmode = "none"\n[limits]\npids = 64\n'


def names(count: int) -> list[str]:
    """Session names unique to this run: cgroups are named after sessions, host-wide."""
    tag = secrets.token_hex(3)
    return [f"f{tag}-{i}" for i in range(count)]


def start_sessions(c: Coop, session_names: list[str], body: str = 'command = "sh"') -> None:
    for name in session_names:
        c.ok("-d", "-n", name, "-w", str(c.workspace(name, body)))


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def echo(client: RawClient, word: str) -> None:
    """The PTY behind ``client`` still runs commands and its output still arrives."""
    client.send_data(f"echo {word}-$((6*7))\n".encode())
    client.read_stream_until(f"{word}-42".encode())


async def web_echo(term, word: str) -> None:
    await term.send(f"echo {word}-$((6*7))\n".encode())
    await term.until(f"{word}-42".encode())


# -- what must be gone ------------------------------------------------------------


def processes_of(root: Path) -> list[str]:
    """Live processes started for this test's HOME: by environment or working directory."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (str(root).encode() in environ or cwd.startswith(str(root))) and pid_alive(int(entry)):
            found.append(f"{entry}: {cmdline[:80]}")
    return found


def session_cgroups(session_names: list[str]) -> list[str]:
    found = []
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        if os.path.basename(top) == "coop":
            found += [os.path.join(top, d) for d in dirs if d in session_names]
    return found


def mounts_under(root: Path, ours: tuple[Path, ...] = ()) -> list[str]:
    """Mounts under ``root`` other than the test's own ``ours``."""
    with open("/proc/self/mountinfo") as f:
        return [line.strip() for line in f
                if str(root) in line and line.split()[4] not in map(str, ours)]


def state_leftovers(c: Coop) -> list[str]:
    """Sockets anywhere under ~/.coop, and session files other than kept ones (SB-2, BYD-3)."""
    found = []
    for top, _, files in os.walk(c.state):
        for name in files:
            path = os.path.join(top, name)
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                found.append(path)
    sessions = c.state / "sessions"
    for session in os.listdir(sessions) if sessions.is_dir() else []:
        found += [str(sessions / session / e) for e in os.listdir(sessions / session)
                  if e not in ("persist", "rec")]
    return found


def assert_nothing_left(c: Coop, session_names: list[str], port: int | None = None,
                        ours: tuple[Path, ...] = ()) -> None:
    """DMN-9, DMN-3: stop everything the normal way, then look for leftovers."""
    c.ok("kill", "--all", "-f")
    daemon = c.daemon_pid()
    c.ok("shutdown")
    wait_for(lambda: not daemon or not pid_alive(daemon), timeout=15, what="daemon exit")
    wait_for(lambda: not processes_of(c.root), timeout=10,
             what=f"processes of the test to end: {processes_of(c.root)}")
    assert mounts_under(c.root, ours) == []
    assert session_cgroups(session_names) == []
    assert state_leftovers(c) == []
    if port:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest.fixture
def sandboxed(tmp_path):
    c = Coop(tmp_path, sandboxed=True)
    try:
        yield c
    finally:
        c.cleanup()


def track(c: Coop, pid: int | None) -> int | None:
    """Let the harness end ``pid`` even when the daemon cannot."""
    if pid:
        c.extra_pids.add(pid)
    return pid


# -- SIGKILL of each actor in turn ------------------------------------------------


@pytest.mark.slow
def test_sigkill_of_the_web_actor_restarts_it_on_the_same_port(coop):
    one, two = names(2)
    start_sessions(coop, [one, two])
    web = Web(coop, serve(coop))
    old = track(coop, web_actor_pid(coop))
    local = attach_raw(coop, two)

    async def scenario():
        term = await web.term(one)
        await web_echo(term, "before")
        os.kill(old, signal.SIGKILL)
        new = wait_for(lambda: (pid := web_actor_pid(coop)) not in (None, old) and pid,
                       timeout=15, what="a new web actor")
        track(coop, new)
        await web_echo(term, "handed-off")  # the socket lives in the session actor
        status, answer = wait_for(lambda: _api_sessions(web), timeout=10, what="the web API")
        assert status == 200 and {s["name"] for s in answer["sessions"]} == {one, two}
        again = await web.term(two)  # same port, same token
        await web_echo(again, "after")
        await again.close()
        await term.close()

    run(scenario())
    echo(local, "local")
    assert "web server exited unexpectedly" in coop.log()
    assert_nothing_left(coop, [one, two], web.port)


def _api_sessions(web: Web):
    try:
        return web.api("GET", "/api/sessions")
    except OSError:
        return None


@pytest.mark.slow
def test_sigkill_of_the_supervisor_keeps_clients_and_ends_its_web_actor(coop):
    one, two = names(2)
    start_sessions(coop, [one, two])
    web = Web(coop, serve(coop))
    web_pid = track(coop, web_actor_pid(coop))
    actors = {s["name"]: s["pid"] for s in coop.ls()}
    local = attach_raw(coop, two)
    supervisor = coop.daemon_pid()

    async def scenario():
        term = await web.term(one)
        await web_echo(term, "before")
        os.kill(supervisor, signal.SIGKILL)
        wait_for(lambda: not pid_alive(supervisor), what="the supervisor to die")
        # the web actor holds a port and a token nobody could stop any more
        wait_for(lambda: not pid_alive(web_pid), timeout=10, what="the web actor to end")
        await web_echo(term, "orphaned")  # clients live in the session actors
        echo(local, "local")
        await term.close()

    run(scenario())
    assert {s["name"]: s["pid"] for s in coop.ls()} == actors  # a new daemon re-adopts
    assert coop.daemon_pid() != supervisor
    web = Web(coop, serve(coop))
    track(coop, web_actor_pid(coop))

    async def after():
        term = await web.term(two)
        await web_echo(term, "new-web")
        await term.close()

    run(after())
    assert_nothing_left(coop, [one, two], web.port)


@pytest.mark.slow
def test_sigkill_of_a_sandboxed_session_actor_ends_only_that_session(sandboxed):
    c = sandboxed
    one, two = names(2)
    start_sessions(c, [one, two], SANDBOX_BODY)
    web = Web(c, serve(c))
    track(c, web_actor_pid(c))
    infos = {s["name"]: s for s in c.ls()}
    assert "enforced (cgroup" in infos[one]["launcher"]["limits"]["pids"]
    assert session_cgroups([one]), "the session should have a cgroup to leave behind"
    init = infos[one]["launcher"]["init_pid"]
    doomed, survivor = attach_raw(c, one), attach_raw(c, two)
    echo(doomed, "doomed")

    async def scenario():
        term = await web.term(two)
        await web_echo(term, "before")
        os.kill(infos[one]["pid"], signal.SIGKILL)
        assert doomed.closed()  # its client is let go, not left hanging
        wait_for(lambda: not pid_alive(init), timeout=10, what="the sandbox init to end")
        assert [s["name"] for s in c.ls()] == [two]
        status, answer = web.api("GET", "/api/sessions")
        assert status == 200 and [s["name"] for s in answer["sessions"]] == [two]
        await web_echo(term, "after")
        echo(survivor, "local")
        await term.close()

    run(scenario())
    assert not any(one in p for p in processes_of(c.root))
    assert mounts_under(c.root) == []
    assert_nothing_left(c, [two], web.port)


def test_sigkill_of_a_session_actor_leaves_no_cgroup(sandboxed):
    """The supervisor buries a killed actor's cgroups (Limits.left_behind)."""
    c = sandboxed
    (one,) = names(1)
    start_sessions(c, [one], SANDBOX_BODY)
    info = c.session(one)
    assert session_cgroups([one])
    os.kill(info["pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(info["launcher"]["init_pid"]), what="the sandbox init to end")
    assert c.ls() == []
    wait_for(lambda: not session_cgroups([one]), timeout=5, what="the session cgroups to go")


def test_a_dead_actor_found_by_a_later_supervisor_is_cleaned_up(coop):
    one, two = names(2)
    start_sessions(coop, [one, two])
    actors = {s["name"]: s["pid"] for s in coop.ls()}
    supervisor = coop.daemon_pid()
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: not pid_alive(supervisor), what="the supervisor to die")
    assert {s["name"] for s in coop.ls()} == {one, two}  # re-adopted: not its children

    os.kill(actors[one], signal.SIGKILL)  # seen when the next ask is refused
    wait_for(lambda: not pid_alive(actors[one]), what="the actor to die")
    assert [s["name"] for s in coop.ls()] == [two]
    assert not (coop.state / "sessions" / one).exists()

    supervisor = coop.daemon_pid()
    os.kill(supervisor, signal.SIGKILL)
    os.kill(actors[two], signal.SIGKILL)  # seen by the next supervisor's re-adoption
    wait_for(lambda: not pid_alive(supervisor) and not pid_alive(actors[two]), what="both to die")
    assert coop.ls() == []
    assert not (coop.state / "sessions" / two).exists()
    assert f"session {two}: its actor died" in coop.log()
    assert_nothing_left(coop, [])


def aiortc_missing() -> str | None:
    try:
        import aiortc  # noqa: F401 - only whether it loads
    except ImportError as exc:
        return f"the tunnel actor cannot start without aiortc: {exc}"
    return None


async def tunnel_peer(c: Coop) -> tuple[IpcClient, BrowserPeer]:
    """A tunnel through the daemon's tunnel actor and a connected browser-like peer."""
    ipc = await IpcClient.connect(c.socket)
    info = await ipc.ask({"cmd": "tunnel", "no_stun": True})
    assert info["ok"], info
    peer = BrowserPeer()
    answer = await ipc.ask({"cmd": "tunnel_answer", "tunnel": info["tunnel"],
                            "answer": await peer.answer(info["envelope"])})
    assert answer["ok"], answer
    await asyncio.wait_for(peer.control_open.wait(), 15)
    return ipc, peer


def tunnel_actor_pid(c: Coop, known: set[int]) -> int:
    """The supervisor's one child that is no session actor and no ``known`` actor."""
    others = children(c.daemon_pid()) - {s["pid"] for s in c.ls()} - known
    assert len(others) == 1, others
    return others.pop()


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the tunnel peers need a network namespace (root)")
@pytest.mark.skipif(aiortc_missing() is not None, reason=str(aiortc_missing()))
def test_sigkill_of_the_tunnel_actor_spares_sessions_and_a_new_tunnel_works(tmp_path):
    with private_network():  # aioice gathers no loopback candidates
        c = Coop(tmp_path)
        try:
            (one,) = names(1)
            start_sessions(c, [one])
            web = Web(c, serve(c))
            web_pid = track(c, web_actor_pid(c))
            local = attach_raw(c, one)

            async def scenario():
                ipc, peer = await tunnel_peer(c)
                stream = await peer.attach(one)
                stream.send(b"echo tunnel-$((6*7))\r")
                await stream.read_until(b"tunnel-42")
                old = track(c, tunnel_actor_pid(c, {web_pid}))
                os.kill(old, signal.SIGKILL)
                wait_for(lambda: not pid_alive(old), what="the tunnel actor to die")
                echo(local, "local")
                wait_for(lambda: c.session(one)["tunnel_clients"] == 0, what="the relay to drop")
                assert web.api("GET", "/api/sessions")[0] == 200
                await peer.close()
                ipc.close()
                ipc, peer = await tunnel_peer(c)  # a new tunnel actor on the same socket
                assert track(c, tunnel_actor_pid(c, {web_pid})) != old
                stream = await peer.attach(one)
                stream.send(b"echo again-$((6*7))\r")
                await stream.read_until(b"again-42")
                await peer.close()
                ipc.close()

            run(scenario(), timeout=120)
            assert_nothing_left(c, [one], web.port)
        finally:
            c.cleanup()



@pytest.mark.slow
def test_a_stopped_session_actor_is_not_answering_not_forgotten(coop):
    one, two = names(2)
    start_sessions(coop, [one, two])
    actor = coop.session(one)["pid"]
    os.kill(actor, signal.SIGSTOP)
    try:
        states = {s["name"]: s["state"] for s in coop.ls()}
        assert states[one] == "not answering" and states[two] != "not answering"
        assert "exists" in coop.ok("-d", "-n", one, "-w", str(coop.workspace(one)))
        supervisor = coop.daemon_pid()  # a new daemon adopts it without an answer too
        os.kill(supervisor, signal.SIGKILL)
        wait_for(lambda: not pid_alive(supervisor), what="the supervisor to die")
        assert {s["name"]: s["state"] for s in coop.ls()}[one] == "not answering"
    finally:
        os.kill(actor, signal.SIGCONT)
    resumed = coop.session(one)
    assert resumed["state"] != "not answering" and resumed["pid"] == actor
    echo(attach_raw(coop, one), "resumed")

    os.kill(actor, signal.SIGSTOP)  # a hung actor is killed by `kill`, not waited for
    coop.ok("kill", one, "-f")
    wait_for(lambda: not pid_alive(actor), what="the hung actor to be killed")
    assert [s["name"] for s in coop.ls()] == [two]
    echo(attach_raw(coop, two), "other")
    assert_nothing_left(coop, [])

# -- hostile input (SEC-4, IPC-6) ------------------------------------------------

DEEP = "[" * 2000  # deeper than Python's JSON parser recurses, shorter than a tty line


@pytest.mark.slow
def test_deeply_nested_json_everywhere_gets_an_error_not_a_crash(coop):
    (one,) = names(1)
    start_sessions(coop, [one])
    web = Web(coop, serve(coop))
    web_pid = track(coop, web_actor_pid(coop))
    actor = coop.session(one)["pid"]
    watcher = attach_raw(coop, one)

    cl = RawClient(coop.socket)
    cl.sock.sendall(len(DEEP).to_bytes(4, "big") + DEEP.encode())
    assert cl.recv()["ok"] is False  # a structured error, then that connection ends

    status, _, body = web.request("POST", "/api/sessions", ('{"name": ' + DEEP).encode(),
                                  {"Content-Type": "application/json"})
    assert status == 400 and b"malformed JSON body" in body

    hostile = attach_raw(coop, one)  # a control frame nobody can parse ends that client only
    hostile.sock.sendall(protocol.encode_frame(FrameType.CONTROL, DEEP.encode()))
    wait_for(hostile.closed, what="the hostile stream client to be closed")

    async def scenario():
        term = await web.term(one)
        await term.send('{"type": "resize", "x": ' + DEEP + "\n")  # not a control: typed
        await web_echo(term, "web-still")
        await term.close()

    run(scenario())
    echo(watcher, "still")
    assert pid_alive(actor) and web_actor_pid(coop) == web_pid
    assert "exited unexpectedly" not in coop.log()
    assert_nothing_left(coop, [one], web.port)


# -- a full state disk ------------------------------------------------------------


def fill(directory: Path) -> None:
    """Use up every block and every inode of the file system holding ``directory``."""
    with open(directory / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    (directory / "inodes").mkdir()
    try:
        for n in range(100_000):
            (directory / "inodes" / str(n)).touch()
    except OSError:
        pass


def one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode != 0, res.stdout
    text = res.stderr.decode().strip()
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_state_disk_gives_one_line_errors_and_no_damage(tmp_path):
    c = Coop(tmp_path, sandboxed=True)
    c.state.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,nr_inodes=100,mode=0700", "tmpfs",
                    str(c.state)], check=True)
    try:
        one, two = names(2)
        body = '[agent]\ncommand = "sh"\n[network]\nmode = "none"\n'
        start_sessions(c, [one], body)
        client = attach_raw(c, one)
        fill(c.state)

        error = one_line_error(c.run("-d", "-n", two, "-w", str(c.workspace(two, body))))
        assert "No space left on device" in error
        assert os.listdir(c.state / "sessions") == [one]  # no half-made session
        cl = RawClient(c.socket)
        answer = cl.ask({"cmd": "serve", "host": "127.0.0.1", "port": 0, "tls": True})
        assert answer["ok"] is False and "\n" not in answer["message"], answer

        echo(client, "full")  # what runs keeps running
        assert c.ok("exec", one, "--", "echo", "exec-ok") == "exec-ok\n"
        c.ok("shutdown")  # a new daemon starts on the full disk and re-adopts
        assert [s["name"] for s in c.ls()] == [one]
        echo(attach_raw(c, one), "readopted")

        os.unlink(c.state / "filler")
        subprocess.run(["rm", "-rf", str(c.state / "inodes")], check=True)
        start_sessions(c, [two], body)
        assert c.ok("exec", two, "--", "echo", "two-ok") == "two-ok\n"
        assert {s["name"] for s in c.ls()} == {one, two}
        assert_nothing_left(c, [one, two], ours=(c.state,))
    finally:
        c.cleanup()
        subprocess.run(["umount", "-l", str(c.state)], check=False)


# -- soak (short variant of bench/soak.py) --------------------------------------------


@pytest.mark.slow
def test_soak_one_minute_three_sessions_every_byte_in_order_and_flat_resources():
    res = subprocess.run([sys.executable, str(REPO / "bench" / "soak.py"), "--minutes", "1",
                          "--sessions", "3", "--web", "2"],
                         capture_output=True, text=True, timeout=240, check=False)
    print(res.stdout)  # the RSS and descriptor curves
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "PASS: no restart, every byte in order" in res.stdout


def test_hostile_field_values_get_structured_errors(coop):
    (one,) = names(1)
    start_sessions(coop, [one])
    for msg, code in [({"cmd": "create", "workspace": "/tmp\0x"}, "INVALID_COMMAND"),
                      ({"cmd": "serve", "port": 1 << 20}, "INVALID_COMMAND"),
                      ({"cmd": "serve", "port": -1}, "INVALID_COMMAND"),
                      ({"cmd": "serve", "host": "\0"}, "INVALID_COMMAND"),
                      ({"cmd": "attach", "session": one, "pty": 1 << 70}, "PTY_NOT_FOUND"),
                      ({"cmd": "kill", "session": "../../x"}, "SESSION_NOT_FOUND"),
                      ({"cmd": "exec", "session": one, "argv": [1, None]}, "INVALID_COMMAND")]:
        answer = RawClient(coop.socket).ask(msg)  # a refused hand-off ends its connection
        assert answer["ok"] is False and answer["error"] == code, (msg, answer)
        assert "\n" not in answer["message"]
    echo(attach_raw(coop, one, cols=1 << 40, rows=-5), "odd-size")  # clamped, not fatal
    assert "crashed" not in coop.log() and "internal error" not in coop.log()
    assert_nothing_left(coop, [])
