"""The sandbox's pure parts: SB-3 source checks, SB-9 detection, syscall
error lines, the mount plan, the no-symlink walk, spec validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from coop import coopfile
from coop.launcher import LaunchError
from coop.paths import Paths
from coop.sandbox import mounts, syscalls, userns
from coop.sandbox.launcher import SandboxSpec, launcher_for_session
from coop.sandbox.mounts import SKELETON, Bind, File, Overlay, Proc, ReadOnly, Skeleton, Symlink
from coop.sandbox.source import check_source
from coop.sandbox.syscalls import SandboxError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -- SB-3 -------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    (home / "project").mkdir(parents=True)
    (home / ".coop").mkdir()
    return home


def test_a_directory_inside_home_is_accepted_resolved(home):
    (home / "link").symlink_to(home / "project")
    assert check_source(str(home / "link"), str(home), []) == str(home / "project")


def test_a_workspace_outside_home_is_rejected(home, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(SandboxError) as info:
        check_source(str(tmp_path / "elsewhere"), str(home), [])
    assert str(info.value) == (f"{tmp_path}/elsewhere is outside your home directory {home}; "
                               f"pass --allow-path {tmp_path}/elsewhere to mount it anyway")


def test_a_symlink_into_etc_is_judged_by_its_target(home):
    (home / "sneaky").symlink_to("/etc")
    with pytest.raises(SandboxError, match=r"sneaky \(resolves to /etc\) is outside your home"):
        check_source(str(home / "sneaky"), str(home), [])


def test_home_itself_and_anything_holding_coops_state_are_rejected(home):
    with pytest.raises(SandboxError, match="is your home directory itself"):
        check_source(str(home), str(home), [])
    with pytest.raises(SandboxError, match="contains .*coop's own state"):
        check_source(str(home), str(home), [str(home)], [str(home / ".coop")])


def test_allow_path_admits_a_directory_outside_home(home, tmp_path):
    (tmp_path / "data" / "set").mkdir(parents=True)
    assert check_source(str(tmp_path / "data" / "set"), str(home), [str(tmp_path / "data")]) \
        == str(tmp_path / "data" / "set")


def test_a_missing_workspace_is_not_a_directory(home):
    with pytest.raises(SandboxError, match="not a directory"):
        check_source(str(home / "nope"), str(home), [])


# -- SB-9 -------------------------------------------------------------------------------


def reader(values: dict[str, str]):
    return lambda path: values.get(path)


@pytest.mark.parametrize("path, value, name", [
    ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
     "kernel.apparmor_restrict_unprivileged_userns=1"),
    ("/proc/sys/kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone=0"),
    ("/proc/sys/user/max_user_namespaces", "0", "user.max_user_namespaces=0"),
])
def test_each_blocking_setting_is_named_with_the_ways_out(path, value, name):
    with pytest.raises(SandboxError) as info:
        userns.check_userns(reader({path: value}), uid=1000)
    message = str(info.value)
    assert f"({name})" in message and "sudo sysctl -w" in message
    assert "\n" not in message
    if "apparmor" in name:
        assert "AppArmor profile" in message and "userns" in message


def test_hosts_that_allow_user_namespaces_pass():
    userns.check_userns(reader({}), uid=1000)
    userns.check_userns(reader({"/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "0",
                                "/proc/sys/kernel/unprivileged_userns_clone": "1",
                                "/proc/sys/user/max_user_namespaces": "15000"}), uid=1000)


def test_root_is_only_stopped_by_a_zero_namespace_limit():
    userns.check_userns(reader({"/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1",
                                "/proc/sys/kernel/unprivileged_userns_clone": "0"}), uid=0)
    with pytest.raises(SandboxError, match="user.max_user_namespaces=0"):
        userns.check_userns(reader({"/proc/sys/user/max_user_namespaces": "0"}), uid=0)


def _refused_clone(setup: str) -> subprocess.CompletedProcess:
    """Run userns.clone(CLONE_NEWUSER) inside a throw-away user namespace
    where ``setup`` (Python) makes the kernel refuse a nested one."""
    code = ("import os; from coop.sandbox import userns, syscalls\n" + setup + "\n"
            "try:\n    pid = userns.clone(syscalls.CLONE_NEWUSER, 1000)\n"
            "    os._exit(0) if pid == 0 else print('cloned', os.waitpid(pid, 0))\n"
            "except syscalls.SandboxError as e:\n    print(e.errno, e)\n")
    return subprocess.run(["unshare", "-Ur", sys.executable, "-c", code], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=30,
                          check=False)


def test_a_real_enospc_from_clone_names_the_limit():
    out = _refused_clone("open('/proc/sys/user/max_user_namespaces', 'w').write('0')")
    assert out.stdout.startswith("28 this host forbids user namespaces "
                                 "(user.max_user_namespaces=0)"), out


def test_a_real_eperm_from_clone_says_user_namespaces_are_not_allowed(tmp_path):
    out = _refused_clone(f"os.chroot({str(tmp_path)!r})")  # chrooted: the kernel says EPERM
    assert out.stdout.startswith("1 this host does not allow unprivileged user namespaces"), out
    assert "AppArmor profile" in out.stdout and "sysctl" in out.stdout


# -- clone(2) -----------------------------------------------------------------------------

CLONE_SCRIPT = """
import os, sys, threading
from coop.sandbox import syscalls
if sys.argv[1] == "threaded":
    stop = threading.Event()
    threading.Thread(target=stop.wait).start()
r, w = os.pipe()
pid = syscalls.clone(syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWPID)
if pid == 0:
    os.write(w, f"{os.getpid()} {threading.active_count()}".encode())
    os._exit(7)
os.close(w)
print(os.read(r, 100).decode(), os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
if sys.argv[1] == "threaded":
    stop.set()
"""


@pytest.mark.parametrize("threads", ["single", "threaded"])
def test_clone_starts_pid_1_of_a_new_namespace_that_the_caller_reaps(threads):
    """SB-1: the init is born as PID 1, runs Python on (with a live thread in the
    caller too: the interpreter's fork hooks leave the child one thread) and is
    the caller's child to reap."""
    out = subprocess.run([sys.executable, "-c", CLONE_SCRIPT, threads], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=30,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "7"]


# -- syscall error lines ----------------------------------------------------------------


def test_mount_failure_names_call_paths_and_errno():
    with pytest.raises(SandboxError) as info:
        syscalls.mount("tmpfs", "/nonexistent/coop-x", "tmpfs")
    assert str(info.value) == "mount(tmpfs → /nonexistent/coop-x): ENOENT (No such file or directory)"
    assert info.value.errno == 2


def test_other_syscall_failures_have_the_same_shape():
    cases = [
        (lambda: syscalls.umount2("/nonexistent/coop-x"),
         "umount2(/nonexistent/coop-x): ENOENT (No such file or directory)"),
        (lambda: syscalls.pivot_root("/nonexistent/a", "/nonexistent/b"),
         "pivot_root(/nonexistent/a, /nonexistent/b): ENOENT (No such file or directory)"),
        (lambda: syscalls.setns(987654, syscalls.CLONE_NEWNS, "/proc/1/ns/mnt"),
         "setns(/proc/1/ns/mnt): EBADF (Bad file descriptor)"),
        (lambda: syscalls.prctl(987654, 0, "bogus"), "prctl(bogus): EINVAL (Invalid argument)"),
        (lambda: syscalls.mount(None, "/nonexistent/x", None, label="a label"),
         "mount(a label): ENOENT (No such file or directory)"),
    ]
    for call, message in cases:
        with pytest.raises(SandboxError) as info:
            call()
        assert str(info.value) == message


def test_an_unknown_errno_still_makes_one_line():
    assert str(syscalls.failure("open", "/x", 9999)) == "open(/x): errno 9999 (Unknown error 9999)"


# -- the mount plan ---------------------------------------------------------------------

HOST = {"usr": None, "bin": "usr/bin", "lib": "usr/lib", "etc": None, "opt": None}


def test_the_host_plan_recreates_links_and_overlays_each_system_dir():
    ops = mounts.plan(None, "/home/u/p", "/workspace", [".claude"], ["/s/persist/.claude"], HOST)
    skeleton = ops[0]
    assert isinstance(skeleton, Skeleton)
    assert ("bin", "usr/bin") in skeleton.links and ("lib", "usr/lib") in skeleton.links
    names = [name for name, _ in skeleton.dirs]
    assert {"usr", "etc", "opt", "proc", "dev", "tmp", "root", "run", "var"} <= set(names)
    assert not {"home/u", "mnt", "bin"} & set(names)
    assert ops[1] == Overlay("/", (SKELETON,), "rootfs")
    assert ops[2:5] == [Overlay("/usr", ("/usr",), "usr"), Overlay("/etc", ("/etc",), "etc"),
                        Overlay("/opt", ("/opt",), "opt")]
    assert Proc("/proc") in ops and ReadOnly("/proc/sys") in ops
    assert Symlink("/dev/ptmx", "pts/ptmx") in ops
    assert ops[-2:] == [Bind("/workspace", "/home/u/p"), Bind("/root/.claude", "/s/persist/.claude")]
    assert mounts.host_sources(ops) == ["/usr", "/etc", "/opt", "/dev/null", "/dev/zero",
                                        "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
                                        "/home/u/p", "/s/persist/.claude"]


def test_a_directory_rootfs_is_the_only_lower_layer():
    ops = mounts.plan("/images/alpine", "/w", "/src", [], [])
    assert ops[0] == Overlay("/", ("/images/alpine",), "rootfs")
    assert not any(isinstance(op, Skeleton) for op in ops)
    assert ops[-1] == Bind("/src", "/w")


def test_a_build_delta_sits_on_top_of_the_host():
    ops = mounts.plan("/built/abc", "/w", "/workspace", [], [], HOST,
                      files={"/etc/resolv.conf": "nameserver 198.18.0.3\n"},
                      is_dir=lambda path: path == "/built/abc/usr")
    assert Overlay("/", ("/built/abc", SKELETON), "rootfs") in ops
    assert Overlay("/usr", ("/built/abc/usr", "/usr"), "usr") in ops
    assert Overlay("/etc", ("/etc",), "etc") in ops
    assert File("/etc/resolv.conf", "nameserver 198.18.0.3\n") in ops


def test_host_entries_reads_links_as_links(tmp_path):
    (tmp_path / "usr").mkdir()
    (tmp_path / "bin").symlink_to("usr/bin")
    (tmp_path / "home").mkdir()
    assert mounts.host_entries(str(tmp_path)) == {"usr": None, "bin": "usr/bin"}


# -- walking without symlinks -----------------------------------------------------------


@pytest.fixture
def base_fd(tmp_path):
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def test_open_beneath_creates_what_is_missing(tmp_path, base_fd):
    os.close(mounts.open_beneath(base_fd, "a/b/c", "dir"))
    os.close(mounts.open_beneath(base_fd, "a/b/f", "file"))
    assert (tmp_path / "a/b/c").is_dir() and (tmp_path / "a/b/f").is_file()


def test_open_beneath_refuses_every_symlink(tmp_path, base_fd):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for rel in ("link", "link/below"):
        with pytest.raises(SandboxError, match="/link is a symlink"):
            mounts.open_beneath(base_fd, rel, "dir", label="target")
    assert list((tmp_path / "real").iterdir()) == []


def test_open_beneath_refuses_dotdot_and_wrong_kinds(tmp_path, base_fd):
    (tmp_path / "file").write_text("")
    with pytest.raises(SandboxError, match="contains .."):
        mounts.open_beneath(base_fd, "a/../../etc", "dir")
    with pytest.raises(SandboxError, match="/file is not a directory"):
        mounts.open_beneath(base_fd, "file", "dir")
    with pytest.raises(SandboxError, match="/missing does not exist"):
        mounts.open_beneath(base_fd, "missing")


# -- the spec ---------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("network", "vet", "network mode 'vet': expected one of none, host, veth, proxy"),
    ("rootfs", "images/x", "rootfs 'images/x': expected \"host\" or an absolute path"),
    ("workspace_path", "/", "workspace path '/': expected an absolute path below /"),
    ("workspace_path", "/proc", "workspace path '/proc': expected an absolute path below /"),
    ("persist", ["../.ssh"], "persist dir '../.ssh': expected a relative path without .."),
    ("persist", ["/abs"], "persist dir '/abs': expected a relative path without .."),
])
def test_a_spec_the_mount_table_cannot_express_is_refused(field, value, message):
    spec = SandboxSpec(name="s", rootfs="host", state_dir="/s", workspace="/w")
    setattr(spec, field, value)
    with pytest.raises(SandboxError) as info:
        spec.check()
    assert str(info.value) == message


def test_a_forbidden_user_namespace_stops_start_before_anything_exists(tmp_path):
    """SB-9 end to end: inside a user namespace whose limit for nested ones is
    0, start() fails with the setting named and creates nothing."""
    (tmp_path / "ws").mkdir()
    spec = {"name": "s", "rootfs": "host", "state_dir": str(tmp_path / "state"),
            "workspace": str(tmp_path / "ws")}
    script = ("echo 0 > /proc/sys/user/max_user_namespaces && exec "
              f"{sys.executable} {ROOT}/tests/sandbox_driver.py")
    out = subprocess.run(["unshare", "-Ur", "sh", "-c", script],
                         input=json.dumps({"spec": spec, "steps": []}), capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=30,
                         check=True)
    error = json.loads(out.stdout)[0]["error"]
    assert error.startswith("this host forbids user namespaces (user.max_user_namespaces=0)")
    assert not (tmp_path / "state").exists()


# -- a Coopfile table becomes a sandbox -------------------------------------------------


def test_a_coopfile_table_becomes_the_sandbox_spec(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "proj").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    paths = Paths.default(socket=str(tmp_path / "sock"))
    table = coopfile.validate({
        "agent": {"command": "claude"}, "workspace": {"path": "/src"},
        "network": {"mode": "proxy", "allow": ["*.example.org"]},
        "session": {"persist": [".claude"]}, "limits": {"memory": "1G", "pids": 64}})
    launcher = launcher_for_session(paths, "demo", str(home / "proj"), table)
    assert launcher.spec == SandboxSpec(
        name="demo", rootfs="host", state_dir=str(home / ".coop/sessions/demo"),
        workspace=str(home / "proj"), workspace_path="/src", persist=[".claude"],
        network="proxy", allow=["*.example.org"],
        limits={"memory": 1 << 30, "pids": 64, "cpu": None})
    assert (launcher.home, launcher.user, launcher.workdir) == ("/root", "root", "/src")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(SandboxError, match="outside your home directory"):
        launcher_for_session(paths, "demo", str(elsewhere), table)
    assert launcher_for_session(paths, "demo", str(elsewhere), table,
                                allow_paths=[str(elsewhere)]).spec.workspace == str(elsewhere)
    with pytest.raises(SandboxError, match="coop's own state"):
        launcher_for_session(paths, "demo", str(tmp_path), table, allow_paths=[str(tmp_path)])


def test_an_image_without_a_built_rootfs_says_to_run_coop_init(tmp_path, monkeypatch):
    (tmp_path / "proj").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    table = coopfile.validate({"agent": {"command": "sh"}, "base": {"image": "alpine:3.20"}})
    with pytest.raises(LaunchError, match="rootfs is not built yet; run `coop init`"):
        launcher_for_session(Paths.default(socket=str(tmp_path / "sock")), "s",
                             str(tmp_path / "proj"), table)
