"""IMG-4, SB-1: build steps in the real sandbox — the rootfs writable as /, host
network, fresh /proc, minimal /dev, private /tmp, the host's resolv.conf, the
exit code — as root and as unprivileged users (with and without a subuid range)."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from coop.image.layers import extract
from coop.sandbox import mounts
from coop.sandbox.build import run_build_step, run_step
from coop.sandbox.mounts import SKELETON, Bind, File, Overlay, Tmpfs
from coop.sandbox.syscalls import SandboxError
from tests.image_fixture import TempUser, busybox_members, tar_bytes

REPO = Path(__file__).resolve().parent.parent
ENV = {"PATH": "/bin", "FOO": "a b"}


def make_rootfs(path: Path) -> Path:
    path.mkdir(parents=True)
    extract(io.BytesIO(tar_bytes(busybox_members())), path, digest="sha256:test")
    return path


def step(rootfs: Path, command: str, *, host_lower: bool = False) -> tuple[int, str]:
    """Run a step, its output captured through ``on_output``."""
    out = bytearray()
    code = asyncio.run(run_build_step(rootfs, command, ENV, host_lower=host_lower,
                                      on_output=out.extend))
    return code, out.decode()


@pytest.fixture
def rootfs(tmp_path):
    return make_rootfs(tmp_path / "build" / "rootfs")


# -- the plan ------------------------------------------------------------------


def test_build_plan_of_an_image_binds_the_rootfs_as_root():
    ops = mounts.build_plan("/b/rootfs", None, "nameserver 1.1.1.1\n")
    assert ops[0] == Bind("/", "/b/rootfs")
    assert ops[1] == File("/etc/resolv.conf", "nameserver 1.1.1.1\n")
    assert Tmpfs("/tmp", 0o1777) in ops and mounts.Proc("/proc") in ops
    assert mounts.build_plan("/b/rootfs", None, None)[1] == mounts.Proc("/proc")


def test_build_plan_over_the_host_makes_the_rootfs_each_overlays_upper():
    host = {"usr": None, "etc": None, "bin": "usr/bin"}
    ops = mounts.build_plan("/b/rootfs", host, None)
    assert ops[1] == Overlay("/", (SKELETON,), "rootfs", upper="/b/rootfs")
    assert ops[2:4] == [Overlay("/usr", ("/usr",), "usr", upper="/b/rootfs/usr"),
                        Overlay("/etc", ("/etc",), "etc", upper="/b/rootfs/etc")]
    assert ops[4] == Tmpfs("/run", 0o755)
    assert "/b/rootfs/usr" in mounts.host_sources(ops)


# -- as root ---------------------------------------------------------------------


def test_the_rootfs_is_a_writable_root_with_fresh_kernel_mounts(rootfs):
    resolv = Path("/etc/resolv.conf").read_text()
    code, out = step(rootfs, 'echo "$FOO"; pwd; echo $$; id -u; ls /dev | tr "\\n" " "; echo; '
                             "ls /proc | grep -c '^[0-9]'; stat -f -c %T /tmp; "
                             "echo kept > /etc/built; echo gone > /tmp/scratch; "
                             "cat /etc/resolv.conf; cat /proc/self/uid_map; exit 7")
    lines = out.splitlines()
    assert code == 7
    assert lines[:4] == ["a b", "/", "2", "0"]  # env, cwd, PID 2 under the init, root
    assert lines[4].split() == sorted(["fd", "full", "null", "ptmx", "pts", "random", "shm",
                                       "stderr", "stdin", "stdout", "tty", "urandom", "zero"])
    assert int(lines[5]) == 4  # the init, sh, ls and grep: nothing of the host
    assert lines[6] == "tmpfs"
    assert "\n".join(lines[7:-1]) == resolv.rstrip("\n")
    assert lines[-1].split() == ["0", "0", "4294967295"]
    assert (rootfs / "etc" / "built").read_text() == "kept\n"
    assert not (rootfs / "tmp" / "scratch").exists()
    assert not (rootfs / "etc" / "resolv.conf").exists()  # the mount point went again
    assert sorted(p.name for p in rootfs.parent.iterdir()) == ["rootfs"]  # no scratch left


def test_an_image_resolv_conf_is_covered_not_changed(rootfs):
    (rootfs / "etc" / "resolv.conf").write_text("nameserver 192.0.2.1\n")
    code, out = step(rootfs, "cat /etc/resolv.conf")
    assert code == 0 and out == Path("/etc/resolv.conf").read_text()
    assert (rootfs / "etc" / "resolv.conf").read_text() == "nameserver 192.0.2.1\n"


def test_host_network_is_shared(rootfs):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"from the host")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code, out = step(rootfs, "readlink /proc/self/ns/net; "
                                 f"busybox wget -q -O - http://127.0.0.1:{server.server_port}/")
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0
    assert out.splitlines() == [os.readlink("/proc/self/ns/net"), "from the host"]


def test_exit_codes_signals_and_leftover_processes(rootfs):
    assert step(rootfs, "true") == (0, "")
    assert step(rootfs, "kill -TERM $$")[0] == 128 + 15
    code, out = step(rootfs, "exec /nonexistent")
    assert code == 127 and "nonexistent" in out
    started = time.monotonic()
    code, out = step(rootfs, "sleep 1000 & echo left-running")
    assert (code, out) == (0, "left-running\n")  # the init's exit ended the sleep
    assert time.monotonic() - started < 5


def test_output_goes_to_the_callers_stdio_by_default(rootfs, capfd):
    assert run_step(rootfs, "echo to-out; echo to-err >&2", ENV, host_lower=False) == 0
    captured = capfd.readouterr()
    assert captured.out == "to-out\n" and captured.err == "to-err\n"


def test_a_rootfs_without_sh_exits_127_with_a_reason(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = step(empty, "true")
    assert code == 127 and "/bin/sh" in out


def test_a_missing_rootfs_is_one_line(tmp_path):
    with pytest.raises(SandboxError, match="not a directory"):
        step(tmp_path / "missing", "true")


def pid_namespace_members(ns: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def test_cancelling_a_step_kills_it_and_cleans_up(rootfs):
    started_file = rootfs / "root" / "started"

    async def main():
        task = asyncio.ensure_future(run_build_step(
            rootfs, "readlink /proc/self/ns/pid > /root/started; sleep 1000", ENV,
            host_lower=False, on_output=lambda data: None))
        deadline = time.monotonic() + 10
        while not started_file.exists() or not started_file.read_text():
            assert time.monotonic() < deadline, "the step never started"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 10
    assert pid_namespace_members(started_file.read_text().strip()) == []
    assert sorted(p.name for p in rootfs.parent.iterdir()) == ["rootfs"]


def test_host_lower_writes_a_delta_over_the_host(tmp_path):
    delta = tmp_path / "build" / "rootfs"
    delta.mkdir(parents=True)
    victim = next(name for name in ("hostname", "hosts", "passwd") if Path(f"/etc/{name}").exists())
    code, out = step(delta, "echo built > /etc/coop-build-test; test -x /usr/bin/env && echo env; "
                            f"rm /etc/{victim}; echo runtime > /run/x; echo home > /root/r; "
                            "stat -f -c %T /run", host_lower=True)
    assert (code, out) == (0, "env\ntmpfs\n")
    assert (delta / "etc" / "coop-build-test").read_text() == "built\n"
    whiteout = os.lstat(delta / "etc" / victim)
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert Path(f"/etc/{victim}").exists() and not Path("/etc/coop-build-test").exists()
    assert (delta / "root" / "r").read_text() == "home\n"
    assert sorted(os.listdir(delta)) == ["etc", "root"]  # untouched system dirs left no upper
    code, out = step(delta, f"cat /etc/coop-build-test; test -e /etc/{victim} || echo deleted",
                     host_lower=True)
    assert (code, out) == (0, "built\ndeleted\n")  # a second step sees the first one's delta


# -- as unprivileged users ---------------------------------------------------------

AS_USER = """
import asyncio, json, sys
sys.path.insert(0, {repo!r})
from coop.sandbox.build import build_ids, run_build_step
out = bytearray()
code = asyncio.run(run_build_step({rootfs!r}, {command!r}, {{"PATH": "/bin"}},
                                  host_lower={host_lower!r}, on_output=out.extend))
print(json.dumps({{"code": code, "out": out.decode(), "ids": build_ids().describe()}}))
"""


def run_as(user: TempUser, rootfs: Path, command: str, host_lower: bool = False) -> dict:
    done = user.run([user.PYTHON, "-c", AS_USER.format(repo=str(REPO), rootfs=str(rootfs),
                                                       command=command, host_lower=host_lower)],
                    cwd=str(user.home))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def user_rootfs(user: TempUser) -> Path:
    rootfs = make_rootfs(user.home / "build" / "rootfs")
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(user.home / "build")],
                   check=True)
    return rootfs


@pytest.fixture
def user():
    created = TempUser.create()
    try:
        yield created
    finally:
        created.delete()


@pytest.fixture
def system_user():
    """A system account: useradd gives it no subordinate ids."""
    created = TempUser.create()
    subprocess.run(["userdel", created.name], check=True, capture_output=True)
    subprocess.run(["useradd", "--system", "--no-create-home", "--uid", str(created.uid),
                    "--shell", "/usr/sbin/nologin", created.name], check=True,
                   capture_output=True)
    try:
        yield created
    finally:
        created.delete()


def subordinate_start(name: str) -> int | None:
    for line in Path("/etc/subuid").read_text().splitlines():
        if line.split(":")[0] == name:
            return int(line.split(":")[1])
    return None


def test_user_with_a_subuid_range_can_chown_to_system_users(user):
    start = subordinate_start(user.name)
    assert start is not None, "useradd gave the test user no /etc/subuid range"
    rootfs = user_rootfs(user)
    result = run_as(user, rootfs, "cat /proc/self/uid_map; stat -c %u /bin/busybox; "
                                  "echo x > /etc/owned && chown 100:100 /etc/owned && echo chowned")
    assert result["code"] == 0, result["out"]
    lines = result["out"].splitlines()
    assert lines[0].split() == ["0", str(user.uid), "1"]
    assert lines[1].split() == ["1", str(start), "65536"]
    assert lines[2:] == ["0", "chowned"]  # the user's files are root's inside
    assert os.stat(rootfs / "etc" / "owned").st_uid == start + 99
    assert "subordinate range" in result["ids"]


def test_user_without_a_range_falls_back_to_the_single_mapping(system_user):
    rootfs = user_rootfs(system_user)
    result = run_as(system_user, rootfs, "cat /proc/self/uid_map; echo x > /etc/built; "
                                         "chown 100 /etc/built 2>/dev/null || echo refused")
    assert result["code"] == 0, result["out"]
    lines = result["out"].splitlines()
    assert lines[0].split() == ["0", str(system_user.uid), "1"] and lines[1:] == ["refused"]
    assert (rootfs / "etc" / "built").stat().st_uid == system_user.uid
    assert result["ids"] == f"root inside = uid {system_user.uid} outside"


def test_user_over_the_host_keeps_host_files_read_only(user):
    delta = user.home / "build" / "rootfs"
    delta.mkdir(parents=True)
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(user.home / "build")],
                   check=True)
    result = run_as(user, delta, "echo built > /etc/coop-user-test && echo new-ok; "
                                 "{ echo x >> /etc/passwd; } 2>/dev/null || echo host-ro",
                    host_lower=True)
    assert (result["code"], result["out"]) == (0, "new-ok\nhost-ro\n")
    assert (delta / "etc" / "coop-user-test").read_text() == "built\n"
    assert (delta / "etc" / "coop-user-test").stat().st_uid == user.uid
