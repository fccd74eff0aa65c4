"""BYD-7 limits on this machine's real cgroups, as root and as an unprivileged user.

Every process these tests limit is started by the test and sits in a session
cgroup of its own, so ``Limits.kill`` ends exactly what the test started.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from coop.sandbox.limits import Limits, kernel_version, own_cgroups

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM_PYTHON = "/usr/bin/python3"
MiB = 1 << 20

# Waits for a line on stdin (so the test can put it under its limits first),
# then forks until refused; the children live until this process exits.
FORK_UNTIL_REFUSED = textwrap.dedent("""
    import errno, os, sys
    release_r, release_w = os.pipe()
    sys.stdin.readline()
    forked = 0
    while forked < 1000:
        try:
            pid = os.fork()
        except OSError as exc:
            print(forked, errno.errorcode[exc.errno], flush=True)
            break
        if pid == 0:
            os.close(release_w)
            os.read(release_r, 1)
            os._exit(0)
        forked += 1
    else:
        print(forked, "none", flush=True)
    sys.stdin.readline()
""")


def session_name() -> str:
    return "test-" + uuid.uuid4().hex[:8]


def gated(argv: list[str]) -> subprocess.Popen:
    """Start ``argv`` behind a gate: it runs once a line is written to its stdin."""
    return subprocess.Popen(["sh", "-c", 'read gate; exec "$@"', "gate", *argv],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


@pytest.fixture
def limited():
    """Limits objects created by a test; their processes killed and cgroups removed after."""
    made: list[Limits] = []

    def make(limits: dict, **options) -> Limits:
        made.append(Limits(limits, session_name(), **options))
        return made[-1]

    yield make
    for limits in made:
        limits.kill()
        limits.cleanup()


def read(path: str) -> str:
    with open(path) as file:
        return file.read().strip()


def place_of(limits: Limits, controller: str) -> str:
    return next(p.path for p in limits.places if f"/{controller}/" in p.path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create v1 cgroups")
class TestAsRoot:
    def test_pids_limit_stops_forks_inside_only(self, limited):
        limits = limited({"pids": 32})
        proc = subprocess.Popen([sys.executable, "-c", FORK_UNTIL_REFUSED],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        limits.apply(proc.pid)
        assert read(os.path.join(place_of(limits, "pids"), "pids.max")) == "32"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        forked, error = proc.stdout.readline().split()
        assert (int(forked), error) == (31, "EAGAIN")  # 32 processes: itself and 31 children
        # The host is unaffected.
        assert subprocess.run(["true"], check=False).returncode == 0
        limits.kill()
        proc.wait(timeout=5)
        assert limits.describe() == {"pids": "enforced (cgroup v1 pids)"}
        assert limits.rlimits_for_children() == {}

    def test_memory_limit_is_written_and_a_hog_is_killed(self, limited):
        limits = limited({"memory": 64 * MiB})
        hog = gated([sys.executable, "-c",
                     "import sys; size = int(sys.argv[1]); data = b'x' * size; print(len(data))",
                     str(256 * MiB)])
        limits.apply(hog.pid)
        memory = place_of(limits, "memory")
        assert read(os.path.join(memory, "memory.limit_in_bytes")) == str(64 * MiB)
        if os.path.exists(os.path.join(memory, "memory.memsw.limit_in_bytes")):
            assert read(os.path.join(memory, "memory.memsw.limit_in_bytes")) == str(64 * MiB)
        hog.stdin.write("go\n")
        hog.stdin.flush()
        assert hog.wait(timeout=15) == -9  # the cgroup's OOM killer
        oom = read(os.path.join(memory, "memory.oom_control")).split()
        assert int(oom[oom.index("oom_kill") + 1]) == 1
        # Under the limit, the same program runs.
        small = gated([sys.executable, "-c",
                       "import sys; print(len(b'x' * int(sys.argv[1])))", str(16 * MiB)])
        limits.apply(small.pid)
        out, _ = small.communicate("go\n", timeout=15)
        assert (small.returncode, out.strip()) == (0, str(16 * MiB))
        assert limits.describe() == {"memory": "enforced (cgroup v1 memory)"}

    def test_cpu_quota_is_written_and_throttles(self, limited):
        limits = limited({"cpu": 0.2})
        spin = gated([sys.executable, "-c", textwrap.dedent("""
            import time
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                pass
            print(time.process_time())
        """)])
        limits.apply(spin.pid)
        cpu = place_of(limits, "cpu")
        assert read(os.path.join(cpu, "cpu.cfs_period_us")) == "100000"
        assert read(os.path.join(cpu, "cpu.cfs_quota_us")) == "20000"
        out, _ = spin.communicate("go\n", timeout=15)
        assert float(out) < 0.5  # about 0.2 s of CPU in 1 s; unthrottled it would be ~1 s
        assert limits.describe() == {"cpu": "enforced (cgroup v1 cpu)"}

    def test_cleanup_removes_the_session_cgroups(self):
        limits = Limits({"memory": 64 * MiB, "pids": 16, "cpu": 1.5}, session_name())
        proc = subprocess.Popen(["sleep", "60"])
        try:
            limits.apply(proc.pid)
            paths = [place.path for place in limits.places]
            assert len(paths) == 3 and all(os.path.isdir(p) for p in paths)
            assert read(os.path.join(place_of(limits, "cpu"), "cpu.cfs_quota_us")) == "150000"
            assert str(proc.pid) in read(os.path.join(place_of(limits, "pids"), "cgroup.procs"))
        finally:
            limits.kill()
            proc.wait(timeout=5)
            limits.cleanup()
        assert not any(os.path.exists(p) for p in paths)

    def test_fork_bomb_under_pids_256_leaves_the_host_usable(self, limited):
        limits = limited({"pids": 256})
        bomb = subprocess.Popen(["sh", "-c", 'read gate; exec bash -c ":(){ :|:& };:"'],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, text=True)
        limits.apply(bomb.pid)
        pids = place_of(limits, "pids")
        bomb.stdin.write("go\n")
        bomb.stdin.close()
        deadline = time.monotonic() + 20
        while int(read(os.path.join(pids, "pids.current"))) < 256 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert int(read(os.path.join(pids, "pids.current"))) == 256
        # The bomb is at its ceiling; the host still starts processes promptly.
        for _ in range(5):
            started = time.monotonic()
            assert subprocess.run(["true"], timeout=5, check=False).returncode == 0
            assert time.monotonic() - started < 1.0
        assert int(read(os.path.join(pids, "pids.events")).split()[1]) > 0  # forks refused
        limits.kill()
        assert read(os.path.join(pids, "cgroup.procs")) == ""
        bomb.wait(timeout=5)

    def test_root_without_a_cgroup_reports_honestly(self, tmp_path, limited):
        limits = limited({"memory": 64 * MiB, "pids": 100}, cgroup_root=str(tmp_path))
        limits.apply(os.getpid())  # nothing to join: the root has no hierarchies
        assert limits.describe() == {
            "memory": "not enforced: no cgroup with the memory controller",
            "pids": "not enforced: no cgroup with the pids controller; "
                    "RLIMIT_NPROC does not bind root",
        }
        assert limits.rlimits_for_children() == {}


@pytest.fixture
def unprivileged_user():
    name = "cooplim" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True)
    try:
        entry = pwd.getpwnam(name)
        yield entry.pw_uid, entry.pw_gid
    finally:
        subprocess.run(["userdel", name], check=True)


def as_user(user: tuple[int, int], argv: list[str], **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups", *argv],
        capture_output=True, text=True, cwd="/", timeout=30, check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO}, **options)


def test_unprivileged_user_gets_the_rlimit_fallback_and_an_honest_report(unprivileged_user):
    script = textwrap.dedent("""
        import json, subprocess
        from coop.sandbox.limits import Limits
        events = []
        child = subprocess.Popen(["sleep", "30"])
        limits = Limits({"memory": 64 << 20, "pids": 64, "cpu": 1.0}, "unpriv",
                        on_event=events.append)
        limits.apply(child.pid)
        child.kill()
        child.wait()
        limits.cleanup()
        print(json.dumps({"describe": limits.describe(), "events": events,
                          "rlimits": limits.rlimits_for_children(),
                          "places": [p.path for p in limits.places]}))
    """)
    done = as_user(unprivileged_user, [SYSTEM_PYTHON, "-c", script])
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    uid = unprivileged_user[0]
    assert report["describe"] == {
        "memory": f"not enforced: no writable cgroup (/sys/fs/cgroup/memory{own('memory')} "
                  f"is not delegated to uid {uid})",
        "pids": "enforced (RLIMIT_NPROC in the session's user namespace; no writable cgroup "
                f"(/sys/fs/cgroup/pids{own('pids')} is not delegated to uid {uid}))",
        "cpu": f"not enforced: no writable cgroup (/sys/fs/cgroup/cpu{own('cpu')} "
               f"is not delegated to uid {uid})",
    }
    assert report["events"] == [f"limits: memory {report['describe']['memory']}",
                                f"limits: cpu {report['describe']['cpu']}"]
    assert report["rlimits"] == {"RLIMIT_NPROC": 64}
    assert report["places"] == []


def own(controller: str) -> str:
    """This process's cgroup path in ``controller`` (the user's, for processes we start)."""
    with open("/proc/self/cgroup") as file:
        return own_cgroups(file.read())[controller].rstrip("/")


@pytest.mark.skipif(kernel_version(os.uname().release) < (5, 14),
                    reason="RLIMIT_NPROC is per user namespace since Linux 5.14")
def test_rlimit_nproc_in_a_user_namespace_counts_only_the_session(unprivileged_user):
    # What the fallback relies on: the user's other processes do not use up the budget.
    others = [subprocess.Popen(["setpriv", f"--reuid={unprivileged_user[0]}",
                                f"--regid={unprivileged_user[1]}", "--clear-groups",
                                "sleep", "30"]) for _ in range(10)]
    try:
        script = "import resource\nresource.setrlimit(resource.RLIMIT_NPROC, (20, 20))\n"
        done = as_user(unprivileged_user, ["unshare", "-Ur", SYSTEM_PYTHON, "-c",
                                           script + FORK_UNTIL_REFUSED], input="go\n")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["19", "EAGAIN"]
    finally:
        for proc in others:
            proc.kill()
            proc.wait()


def test_no_v2_controllers_on_this_hybrid_host(tmp_path):
    # Only the real (controller-less) unified hierarchy is visible: nothing to use.
    (tmp_path / "unified").symlink_to("/sys/fs/cgroup/unified")
    limits = Limits({"pids": 10}, session_name(), cgroup_root=str(tmp_path))
    if os.geteuid() == 0:
        expected = ("not enforced: no cgroup with the pids controller; "
                    "RLIMIT_NPROC does not bind root")
    else:
        expected = "enforced (RLIMIT_NPROC in the session's user namespace; " \
                   "no cgroup with the pids controller)"
    limits.apply(os.getpid())
    assert limits.describe() == {"pids": expected}
    assert limits.places == []


def test_v2_layout_writes(tmp_path):
    """What is written on a v2 host, on a directory tree laid out like one, with
    the control files the kernel would provide (v2 controllers cannot be had on
    this hybrid machine, so enforcement itself is proven by the v1 tests)."""
    own_dir = tmp_path / "user.slice" / "coop.scope"
    session = own_dir / "coop" / "s1"
    session.mkdir(parents=True)
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (own_dir / "cgroup.controllers").write_text("cpu memory pids\n")
    for control in (own_dir / "cgroup.subtree_control", own_dir / "coop" / "cgroup.subtree_control",
                    *(session / name for name in ("memory.max", "pids.max", "cpu.max",
                                                  "cgroup.procs"))):
        control.write_text("")
    (tmp_path / "self_cgroup").write_text("0::/user.slice/coop.scope\n")
    limits = Limits({"memory": 4 << 30, "pids": 1024, "cpu": 2.0}, "s1",
                    cgroup_root=str(tmp_path), self_cgroup=str(tmp_path / "self_cgroup"))
    limits.apply(4242)
    assert (session / "memory.max").read_text() == str(4 << 30)
    assert not (session / "memory.swap.max").exists()  # optional, and never created
    assert (session / "pids.max").read_text() == "1024"
    assert (session / "cpu.max").read_text() == "200000 100000"
    assert (session / "cgroup.procs").read_text() == "4242"
    for level in (own_dir, own_dir / "coop"):
        assert (level / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert limits.describe() == {name: f"enforced (cgroup v2 {name})"
                                 for name in ("memory", "pids", "cpu")}
    assert len(limits.places) == 1


def test_own_cgroups_parses_hybrid_and_v2_lines():
    text = "4:memory:/a/b\n2:cpu,cpuacct:/\n1:name=systemd:/x\n0::/user.slice\n"
    assert own_cgroups(text) == {"memory": "/a/b", "cpu": "/", "cpuacct": "/",
                                 "name=systemd": "/x", "": "/user.slice"}


def test_session_names_that_are_not_one_path_component_are_refused():
    for bad in ("", ".", "..", "a/b"):
        with pytest.raises(ValueError):
            Limits({}, bad)
