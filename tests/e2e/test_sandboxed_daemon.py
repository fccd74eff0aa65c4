"""Sessions through the real daemon in the real sandbox, as root and as an
unprivileged user created here (SB-1, SB-5, SB-6, CF-4, CF-5, DMN-7)."""

import json
import os
import pwd
import shutil
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.daemon import Coop, coop_as, readable_copy, wait_for

SECRET = "s3cr3t-value-4b1e9c"
USER = f"coop-e2e{os.getpid()}"  # per run: test runs in parallel never share it


def exec_out(c: Coop, session: str, script: str) -> str:
    res = c.run("exec", session, "--", "sh", "-c", script)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode()


@pytest.fixture
def sandboxed(tmp_path):
    c = Coop(tmp_path, sandboxed=True)
    c.env["COOP_TEST_SECRET"] = SECRET
    try:
        yield c
    finally:
        c.cleanup()


def test_session_runs_in_the_sandbox(sandboxed):
    c = sandboxed
    ws = c.workspace("proj", '[agent]\ncommand = "sh"\n[network]\nmode = "none"\n'
                             '[env]\nFROM_HOST = "$COOP_TEST_SECRET"\nLITERAL = "$$HOME"\n')
    c.ok("-d", cwd=ws)
    out = exec_out(c, "proj", "cat /proc/1/cmdline | tr '\\0' ' '; echo; hostname; id -u; pwd; "
                              "echo $HOME $USER $COOP_SESSION $COOP_WORKSPACE $IS_SANDBOX $LITERAL; "
                              "test \"$FROM_HOST\" = \"$(printf %s s3cr3t-value-4b1e9c)\" && echo "
                              "secret-ok; ls /proc | grep -c '^[0-9]'")
    lines = out.splitlines()
    assert "coop" in lines[0]  # PID 1 is coop's init
    assert lines[1] == "proj"
    assert lines[2] == "0"
    assert lines[3] == "/workspace"
    assert lines[4] == f"/root root proj {ws} 1 $HOME"
    assert lines[5] == "secret-ok"
    assert int(lines[6]) < 10  # only the session's processes
    # the agent's terminal is a PTY of the session's own devpts
    from tests.e2e.test_daemon import attach_raw

    cl = attach_raw(c, "proj")
    cl.send_data(b"tty; echo t-$((2+2))\n")
    out, _ = cl.read_stream_until(b"t-4")
    assert b"/dev/pts/0" in out


def test_a_shell_that_exits_while_its_client_connects_still_ends_it(sandboxed):
    """DMN-8: a sandboxed shell's exit can be reported before its spawn has
    returned, so before its client is attached (four clients at a time make
    that likely); the client is still told and let go."""
    from tests.e2e.test_daemon import RawClient

    c = sandboxed
    ws = c.workspace("proj", '[agent]\ncommand = "sh"\n[network]\nmode = "none"\n')
    c.ok("-d", cwd=ws)

    def shells(_):
        for _ in range(50):
            sh = RawClient(c.socket)
            assert sh.ask({"cmd": "shell", "session": "proj", "command": "exit 5"})["ok"]
            assert sh.read_event("pty_exited")["code"] == 5
            assert sh.closed()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(shells, range(4)))
    wait_for(lambda: len(c.session("proj")["ptys"]) == 1, what="shells removed")


def test_secrets_never_reach_files_logs_or_ipc(sandboxed):
    c = sandboxed
    ws = c.workspace("proj", '[agent]\ncommand = "sh"\n[network]\nmode = "none"\n'
                             '[env]\nTOKEN = "$COOP_TEST_SECRET"\n')
    c.ok("-d", cwd=ws)
    assert exec_out(c, "proj", 'test -n "$TOKEN" && echo set') == "set\n"
    c.ok("shell", "proj", "-c", "true")
    assert SECRET not in c.ok("ls", "--json") and SECRET not in c.ok("status", cwd=ws)
    c.ok("kill", "proj")
    leaks = []
    for root, _dirs, files in os.walk(c.state):
        for name in files:
            p = os.path.join(root, name)
            if not stat.S_ISREG(os.lstat(p).st_mode):
                continue
            if SECRET.encode() in Path(p).read_bytes():
                leaks.append(p)
    assert leaks == []
    assert SECRET not in c.log()


def test_agent_restart_keeps_the_namespaces(sandboxed):
    c = sandboxed
    ws = c.workspace("proj", '[agent]\ncommand = "sh"\n[network]\nmode = "none"\n'
                             '[session]\nrestart_delay_ms = 10\n')
    c.ok("-d", cwd=ws)
    from tests.e2e.test_daemon import attach_raw

    cl = attach_raw(c, "proj")
    cl.send_data(b"echo ns=$(readlink /proc/self/ns/mnt); exit 3\n")
    before, _ = cl.read_stream_until(b"restarting in 10 ms")
    wait_for(lambda: c.session("proj")["ptys"][0]["state"] == "running", what="restart")
    cl.send_data(b"echo ns=$(readlink /proc/self/ns/mnt)\n")
    after, _ = cl.read_stream_until(b"]\r\n")
    ns = [line for line in before.split(b"\r\n") if line.startswith(b"ns=mnt")]
    ns2 = [line for line in after.split(b"\r\n") if line.startswith(b"ns=mnt")]
    assert ns and ns2 and ns[0] == ns2[-1]


def test_stale_rootfs_exits_5(sandboxed):
    c = sandboxed
    ws = c.workspace("proj", '[agent]\ncommand = "sh"\n[setup]\nrun = ["true"]\n')
    res = c.run("-d", cwd=ws)
    assert res.returncode == 5
    err = res.stderr.decode()
    assert "coop init" in err and err.count("\n") == 1


def test_workspace_outside_home_is_refused(sandboxed, tmp_path):
    c = sandboxed
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "coop.toml").write_text('[agent]\ncommand = "sh"\n')
    res = c.run("-d", cwd=outside)
    assert res.returncode == 1 and "home" in res.stderr.decode()
    c.ok("-d", "--allow-path", str(outside), cwd=outside)


# -- as an unprivileged user -------------------------------------------------


@pytest.fixture(scope="module")
def user_world():
    """A real unprivileged user and a copy of coop it can read."""
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True, capture_output=True)
    pw = pwd.getpwnam(USER)
    src = readable_copy()
    try:
        yield pw, src
    finally:
        subprocess.run(["pkill", "-KILL", "-u", USER], check=False, capture_output=True)
        subprocess.run(["userdel", "-r", "-f", USER], check=False, capture_output=True)
        shutil.rmtree(src, ignore_errors=True)


def as_user(pw, src, *args, cwd=None, timeout=60):
    return coop_as(USER, pw.pw_dir, src, *args, cwd=cwd, timeout=timeout)


def user_workspace(pw, network_mode: str) -> Path:
    """~/proj of the user, made by the user, with a Coopfile for ``network_mode``."""
    ws = Path(pw.pw_dir) / "proj"
    subprocess.run(["runuser", "-u", USER, "--", "mkdir", "-p", str(ws)], check=True)
    coopfile = f'[agent]\ncommand = "sh"\n[network]\nmode = "{network_mode}"\n'
    subprocess.run(["runuser", "-u", USER, "--", "sh", "-c", f"cat > {ws}/coop.toml"],
                   input=coopfile.encode(), check=True)
    return ws


def test_unprivileged_user_session(user_world):
    pw, src = user_world
    ws = user_workspace(pw, "none")
    try:
        res = as_user(pw, src, "-d", cwd=ws)
        assert res.returncode == 0, res.stderr.decode()
        res = as_user(pw, src, "exec", "proj", "--", "sh", "-c",
                      "id -u; hostname; echo hi > /workspace/f; "
                      "touch /usr/bin/x 2>/dev/null && echo wrote-usr || echo usr-ro")
        assert res.returncode == 0, res.stderr.decode()
        assert res.stdout.decode().splitlines() == ["0", "proj", "usr-ro"]
        # Seen from the host, the sandbox's root is the user and nobody else.
        status = as_user(pw, src, "status", cwd=ws).stdout.decode()
        init_pid = int(status.split("init_pid: ")[1].split()[0])
        assert Path(f"/proc/{init_pid}/uid_map").read_text().split() == \
            ["0", str(pw.pw_uid), "1"]
        assert (ws / "f").read_text() == "hi\n" and (ws / "f").stat().st_uid == pw.pw_uid
        sessions = json.loads(as_user(pw, src, "ls", "--json").stdout)["sessions"]
        assert [s["name"] for s in sessions] == ["proj"]
    finally:
        as_user(pw, src, "kill", "--all", "-f")
        as_user(pw, src, "shutdown")


# No packet is sent anywhere: the interface and routes are read, and the one
# connect goes to a prohibited range, which the kernel refuses before sending.
PROBE_NETWORK = (
    "ip -4 -o addr show dev tap0 | awk '{print $4}'; "
    "awk '$1 == \"tap0\" && $2 == \"00000000\" {print \"default via\", $3}' /proc/net/route; "
    "ip route show type prohibit | grep -c .; "
    "/usr/bin/python3 -c '"
    "import errno, socket, time\n"
    "s = socket.socket(); s.settimeout(5); t = time.monotonic()\n"
    "try:\n    s.connect((\"10.0.0.1\", 80)); print(\"CONNECTED\")\n"
    "except OSError as e:\n    print(errno.errorcode.get(e.errno, \"timeout\"), "
    "round(time.monotonic() - t, 1))'"
)


def test_unprivileged_user_session_with_veth_network(user_world):
    pw, src = user_world
    ws = user_workspace(pw, "veth")
    try:
        res = as_user(pw, src, "-d", cwd=ws)
        assert res.returncode == 0, res.stderr.decode()
        res = as_user(pw, src, "exec", "proj", "--", "sh", "-c", PROBE_NETWORK)
        assert res.returncode == 0, res.stderr.decode()
        address, route, prohibited, probe = res.stdout.decode().splitlines()
        assert address == "198.18.0.100/24"
        assert route == "default via 020012C6"  # 198.18.0.2, little-endian hex
        assert int(prohibited) == 5  # the private IPv4 ranges
        verdict, seconds = probe.split()
        assert verdict in ("EACCES", "ENETUNREACH") and float(seconds) < 1.0
    finally:
        as_user(pw, src, "kill", "--all", "-f")
        as_user(pw, src, "shutdown")


def test_instant_exits_are_never_lost(sandboxed):
    """A process may exit before its spawn has returned to the session: the
    exit must still reach exec clients and consoles (regression)."""
    c = sandboxed
    ws = c.workspace("proj", '[agent]\ncommand = "true"\n[network]\nmode = "none"\n'
                             '[session]\nauto_restart = false\n')
    c.ok("-d", cwd=ws)
    wait_for(lambda: c.session("proj")["ptys"][0]["state"] == "exited", timeout=10,
             what="the instant agent exit")
    for i in range(25):
        res = c.run("exec", "proj", "--", "sh", "-c", f"exit {i % 7}", timeout=15)
        assert res.returncode == i % 7
