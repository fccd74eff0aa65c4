"""SB-1, SB-2, SB-5, SB-6, SB-8 from inside real sandboxes, as root and as an
unprivileged user (created for the session, removed afterwards)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from coop.sandbox.launcher import SandboxLauncher, SandboxSpec
from tests import sandbox_fixture
from tests.sandbox_fixture import lines, python_in_sandbox, sh, wait_gone

sandbox_user, box = sandbox_fixture.sandbox_user, sandbox_fixture.box  # fixtures


# -- SB-8: what must stay out of sight ----------------------------------------------


def test_host_homes_root_run_and_state_are_invisible(box, sandbox_user):
    ssh = os.path.join(sandbox_user.pw_dir, ".ssh")
    os.makedirs(ssh, exist_ok=True)
    key = os.path.join(ssh, "id_coop_test")
    root_marker = "/root/.coop-sbtest-marker"
    run_marker = "/run/coop-sbtest-marker"
    for path in (key, root_marker, run_marker):
        with open(path, "w") as f:
            f.write("secret\n")
    try:
        paths = [key, ssh, root_marker, run_marker, box.state_dir, box.base,
                 sandbox_user.pw_dir, "/var/lib/dpkg", "/mnt/sandboxing", "/tmp/coop-sb"]
        result = box.exec("; ".join(f"test -e {p} && echo VISIBLE {p}" for p in paths)
                          + "; ls -A /root /home /run; echo done")
    finally:
        for path in (key, root_marker, run_marker):
            os.unlink(path)
    assert "VISIBLE" not in result["stdout"], result
    assert lines(result["stdout"]) == ["/home:", "/root:", "/run:", "done"], result


def test_only_the_sandbox_processes_are_visible_and_pid_1_is_coops_init(box):
    result = box.exec("echo parent $PPID; cat /proc/1/comm; ls /proc | grep -E '^[0-9]+$'; "
                      "echo done; for fd in /proc/1/fd/*; do readlink $fd && echo LEAK; done; "
                      "cat /proc/1/environ && echo LEAK; head -c1 /proc/1/mem && echo LEAK")
    out = lines(result["stdout"])
    assert out[0] == "parent 1"
    assert out[1].startswith("python")
    pids = sorted(int(p) for p in out[2:out.index("done")])
    assert pids[0] == 1 and len(pids) <= 4, out  # init, sh, ls (+ grep)
    assert "LEAK" not in out  # the init's socket to the session actor stays out of reach


def test_host_processes_cannot_be_signalled(box):
    victim = subprocess.Popen(["sleep", "30"])
    try:
        result = box.exec(f"kill -9 {victim.pid}; echo rc=$?")
        assert victim.poll() is None
        assert "rc=0" not in result["stdout"]
    finally:
        victim.kill()
        victim.wait()


def test_hostname_is_the_session_name_and_changing_it_stays_inside(box):
    host = socket.gethostname()
    result = box.exec("hostname; hostname renamed-inside && hostname", name="box-name")
    assert lines(result["stdout"]) == ["box-name", "renamed-inside"]
    assert socket.gethostname() == host


def test_coops_read_only_mounts_cannot_be_remounted_or_unmounted(box):
    result = box.exec(
        "mount -o remount,rw /proc/sys && echo REMOUNTED; "
        "mount -o remount,rw,bind /proc/sys && echo REMOUNTED-BIND; "
        "umount /proc/sys && echo UNMOUNTED; umount -l /proc/sys && echo UNMOUNTED-LAZY; "
        "echo 1 > /proc/sys/kernel/ns_last_pid && echo WROTE-SYSCTL; "
        "grep ' /proc/sys ' /proc/self/mountinfo")
    out = result["stdout"]
    for marker in ("REMOUNTED", "UNMOUNTED", "WROTE-SYSCTL"):
        assert marker not in out, result
    assert " ro," in out


def test_no_capability_over_the_sandbox_network_or_mounts(box):
    """Spawned processes are root of a nested user namespace only."""
    result = box.exec("ip link set lo down && echo LINK-DOWN; "
                      "ip addr add 10.9.9.9/32 dev lo && echo ADDR-ADDED; "
                      "mount -t proc proc /mnt && echo PROC-MOUNTED; id -u")
    out = result["stdout"]
    for marker in ("LINK-DOWN", "ADDR-ADDED", "PROC-MOUNTED"):
        assert marker not in out, result
    assert lines(out)[-1] == "0"


def test_inherits_no_descriptor_but_its_own(box):
    results = box.run([sh("ls /proc/self/fd"),
                       {"do": "pty", "argv": ["/bin/sh", "-c", "ls /proc/self/fd"]}])
    assert lines(results[1]["stdout"]) == ["0", "1", "2", "3"]  # 3: the listing's own
    assert lines(results[2]["output"]) == ["0  1  2  3"]


def test_lower_layer_is_never_written(box):
    marker = "/usr/share/coop-sbtest-lower"
    result = box.exec(f"echo x > {marker} && echo WROTE; cat {marker}")
    assert not os.path.exists(marker)
    if box.who == "user":  # host root's files: copy-up refused (IMG-1)
        assert "WROTE" not in result["stdout"]
    else:  # root: the write lands in the upper layer only
        assert lines(result["stdout"]) == ["WROTE", "x"]


# -- SB-2: the filesystem -------------------------------------------------------------


def test_writes_outside_workspace_vanish_and_workspace_writes_stay(box):
    writes = "echo a > /root/home-file; mkdir /newtop && echo b > /newtop/f; echo c > /tmp/t; " \
             "echo d > /var/tmp/v; echo e > /workspace/kept"
    check = "cat /root/home-file /newtop/f /tmp/t /var/tmp/v /workspace/kept 2>/dev/null"
    first = box.run([sh(writes + "; " + check), {"do": "stop"}])
    assert lines(first[1]["stdout"]) == ["a", "b", "c", "d", "e"], first
    assert first[2]["upper_left"] is False
    second = box.run([sh(check)])
    assert lines(second[1]["stdout"]) == ["e"]
    kept = os.path.join(box.workspace, "kept")
    assert Path(kept).read_text() == "e\n"
    assert os.stat(kept).st_uid == box.uid
    assert sorted(os.listdir(box.state_dir)) == []


def test_persist_dirs_survive_a_new_sandbox(box):
    persist = [".claude", ".config/gh"]
    box.run([sh("echo token > /root/.claude/state; echo gh > /root/.config/gh/hosts")],
            persist=persist)
    again = box.exec("cat /root/.claude/state /root/.config/gh/hosts", persist=persist)
    assert lines(again["stdout"]) == ["token", "gh"]
    saved = os.path.join(box.state_dir, "persist", ".claude", "state")
    assert Path(saved).read_text() == "token\n"


def test_a_planted_symlink_in_persist_is_refused_not_followed(box):
    """With ``.config`` persisted, a session can leave ``.config/gh`` as a
    symlink; once ``.config/gh`` is persisted itself, the next start must not
    mount (or create anything in) what it points to."""
    victim = os.path.join(box.base, "victim")
    os.mkdir(victim)
    box.chown(victim)
    box.run([sh(f"ln -s {victim} /root/.config/gh")], persist=[".config"])
    results = box.run([sh("true")], persist=[".config/gh"])
    assert results[0]["error"] == "persist dir .config/gh: /persist/.config/gh is a symlink"
    assert os.listdir(victim) == []


def test_cleanup_removes_planted_symlinks_without_following_them(box):
    victim = os.path.join(box.base, "victim")
    os.mkdir(victim)
    with open(os.path.join(victim, "precious"), "w") as f:
        f.write("keep\n")
    box.chown(victim)
    box.run([sh(f"ln -s {victim} /root/link; ln -s {victim}/precious /root/file-link; "
                "mkdir -p /root/locked/deep && chmod 000 /root/locked"), {"do": "stop"}])
    assert Path(victim, "precious").read_text() == "keep\n"
    assert os.listdir(box.state_dir) == []


def test_dev_is_minimal_and_tty_is_the_sandbox_pts(box):
    command = "tty; stty size; ls /dev; echo x > /dev/null; head -c 4 /dev/urandom | wc -c"
    results = box.run([{"do": "pty", "argv": ["/bin/sh", "-c", command]}])
    out = lines(results[1]["output"])
    assert out[0].startswith("/dev/pts/")
    assert out.pop(1) == "24 80"  # the size the spawn asked for
    assert set(" ".join(out[1:-1]).split()) == {
        "full", "null", "ptmx", "pts", "random", "shm", "tty", "urandom", "zero", "fd", "stdin",
        "stdout", "stderr"}
    assert out[-1] == "4"


def test_mount_namespace_outlives_the_agent(box):
    ns = "readlink /proc/self/ns/mnt"
    results = box.run([sh(ns), sh(ns), {"do": "pty", "argv": ["/bin/sh", "-c", ns]}])
    first = lines(results[1]["stdout"])
    assert first == lines(results[2]["stdout"]) == lines(results[3]["output"])
    assert first[0] != os.readlink("/proc/self/ns/mnt")


def test_exec_pipes_carry_stdin_stdout_stderr_and_the_exit_code(box):
    result = box.run([sh("tr a-z A-Z; echo oops >&2; exit 7", stdin="hello\n")])[1]
    assert (result["stdout"], result["stderr"], result["code"]) == ("HELLO\n", "oops\n", 7)


def test_network_none_has_only_loopback_and_it_is_up(box):
    code = ("import socket; s = socket.create_server(('127.0.0.1', 0)); "
            "c = socket.create_connection(s.getsockname()); print('loopback ok')")
    results = box.run([sh("tail -n +3 /proc/net/dev | cut -d: -f1"),
                       {"do": "exec", "argv": python_in_sandbox(code)}])
    assert lines(results[1]["stdout"]) == ["lo"]
    assert lines(results[2]["stdout"]) == ["loopback ok"]


# -- SB-6: the init ---------------------------------------------------------------------


def test_stop_kills_the_whole_tree_orphans_included(box):
    results = box.run([
        {"do": "background", "argv": ["/bin/sh", "-c", "sleep 1000 & sleep 1000; wait"]},
        sh("setsid sleep 1000 >/dev/null 2>&1 & echo started"),  # orphaned once sh exits
        {"do": "tree"},
        {"do": "stop", "grace": 0.5},
    ])
    pids = results[3]["pids"]
    assert len(pids) >= 5, results  # init, sh, two sleeps, the orphaned sleep
    assert wait_gone(pids) == []
    agent = results[1]["pid"]
    assert results[4]["exits"][str(agent)] == -signal.SIGTERM


def test_a_dying_session_actor_takes_the_sandbox_with_it(box):
    results = box.run([{"do": "background", "argv": ["sleep", "1000"]}, {"do": "tree"},
                       {"do": "abandon"}])
    assert wait_gone(results[2]["pids"]) == []


def test_signal_reaches_the_process_group_and_exit_is_reported(box):
    results = box.run([{"do": "background", "argv": ["sleep", "1000"]},
                       {"do": "signal", "pid": 2, "sig": signal.SIGINT}])
    assert results[2].get("code") == -signal.SIGINT, results


def test_a_missing_program_fails_in_the_child_not_the_init(box):
    results = box.run([{"do": "exec", "argv": ["/no/such/program"]}, sh("echo still here")])
    assert results[1]["code"] == 127
    assert "cannot run /no/such/program" in results[1]["stderr"]
    assert lines(results[2]["stdout"]) == ["still here"]


# -- rootfs other than the host (dir:PATH, built images) ---------------------------------


def _copy_with_libraries(binaries: list[str], root: str) -> None:
    """A tiny rootfs: the binaries and the shared libraries they load, no Python."""
    needed = set(binaries)
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
        needed.update(part for part in out.split() if part.startswith("/"))
    for path in needed:
        real = os.path.realpath(path)
        target = root + path
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(real, target)


@pytest.fixture
def tiny_rootfs(box):
    root = os.path.join(box.base, "rootfs")
    _copy_with_libraries([shutil.which(b) for b in ("sh", "ls", "cat", "readlink")], root)
    for d in ("etc", "root", "tmp"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.symlink("usr/bin", os.path.join(root, "bin"))
    box.chown(root)
    return root


def test_a_directory_rootfs_without_python_works(box, tiny_rootfs):
    """The init imports nothing after pivot_root: this rootfs has no Python."""
    results = box.run([sh("ls /; cat /etc/marker 2>/dev/null; echo > /root/x && echo ok"),
                       {"do": "pty", "argv": ["/bin/sh", "-c", "readlink /proc/self/ns/mnt"]}],
                      rootfs=tiny_rootfs)
    listing = set(" ".join(lines(results[1]["stdout"])[:-1]).split())
    assert {"usr", "proc", "dev", "tmp", "root", "workspace", "etc"} <= listing, results
    assert not ({"home", "run", "var", "opt"} & listing)
    assert lines(results[1]["stdout"])[-1] == "ok"
    assert results[2]["code"] == 0


def test_a_rootfs_symlink_cannot_redirect_a_mount(box, tiny_rootfs):
    shutil.rmtree(os.path.join(tiny_rootfs, "root"))
    os.symlink("/etc", os.path.join(tiny_rootfs, "root"))
    results = box.run([sh("true")], rootfs=tiny_rootfs, persist=[".claude"])
    assert results[0]["error"] == \
        "mount point /root/.claude: /root is a symlink", results


def test_describe_says_what_status_shows(box):
    info = box.run([{"do": "describe"}])[1]
    assert info["rootfs"] == "host"
    assert info["network"] == "none"
    assert "user" in info["sandbox"] and "net" in info["sandbox"]
    assert info["uid_map"].endswith(f"uid {box.uid} outside")
    assert isinstance(info["init_pid"], int)



# -- BYD-7: limits reach the sandbox ------------------------------------------------------


def test_a_pids_limit_binds_the_sandbox_and_is_described(box):
    spawn_many = ("(for i in $(seq 40); do sleep 100 >/dev/null 2>&1 & done) 2>/dev/null; "
                  "set -- /proc/[0-9]*; echo $#")  # builtins only: no fork left
    results = box.run([{"do": "describe"}, sh(spawn_many)], limits={"pids": 12})
    assert results[1]["limits"]["pids"].startswith("enforced"), results[1]
    assert int(lines(results[2]["stdout"])[-1]) <= 13, results  # 12 + the init


def join_pids_cgroup_of(init_pid: int, pid: int) -> str:
    """Move ``pid`` into the (v1) pids cgroup of ``init_pid``; that cgroup's path."""
    with open(f"/proc/{init_pid}/cgroup") as f:
        own = next(line.split(":", 2)[2].strip() for line in f if line.split(":")[1] == "pids")
    cgroup = f"/sys/fs/cgroup/pids{own}"
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
        f.write(str(pid))
    return cgroup


def test_stop_kills_whatever_the_sessions_cgroup_still_holds():
    """Root only (the unprivileged user gets no cgroup on this host): a host
    process put into the session's cgroup, outside its PID namespace, so the
    init's end does not take it along, dies at stop and the cgroup goes."""
    box = sandbox_fixture.make_box("root", None)
    stray = subprocess.Popen(["sleep", "60"])

    async def scenario() -> str:
        launcher = SandboxLauncher(SandboxSpec(**box.spec(limits={"pids": 50})))
        await launcher.start()
        try:
            info = launcher.describe()
            assert info["limits"]["pids"].startswith("enforced (cgroup"), info
            cgroup = join_pids_cgroup_of(info["init_pid"], stray.pid)
        finally:
            await launcher.stop(0)
        return cgroup

    try:
        cgroup = asyncio.run(scenario())
        assert stray.wait(timeout=5) == -signal.SIGKILL
        assert not os.path.exists(cgroup)
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()
        sandbox_fixture.remove_box(box)


def test_arguments_over_the_frame_limit_fail_as_a_launch_error(box):
    results = box.run([sh("true", env={"HUGE": "x" * (1 << 20)}), sh("echo fine")])
    assert results[1]["error"].startswith("cannot start /bin/sh: ")
    assert results[1]["error"].endswith("(arguments and environment too large)")
    assert lines(results[2]["stdout"]) == ["fine"]  # the sandbox is still serving


@pytest.mark.slow
def test_a_5000_deep_tree_left_in_the_writable_layer_is_removed_at_stop(box):
    dig = ("import os\nos.chdir('/root')\nfor _ in range(5000):\n"
           "    os.mkdir('d'); os.chdir('d')\nos.chmod('.', 0)\n")
    results = box.run([{"do": "exec", "argv": python_in_sandbox(dig)}, {"do": "stop"}])
    assert results[1]["code"] == 0 and "error" not in results[2], results
    assert not results[2]["upper_left"], results
    assert not any(e.startswith("cannot remove ") for e in results[2]["events"]), results
    assert os.listdir(box.state_dir) == []  # upper/, work/ and the staging dir gone
