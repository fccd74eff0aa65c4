"""Test harness: real daemons on a temporary HOME, driven through the real CLI.

Each ``Coop`` owns one state directory and socket; ``cleanup`` kills every
session, shuts the daemon down and ends any process it started, by pid.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (no sleep-as-sync)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Coop:
    def __init__(self, root: Path, *, sandboxed: bool = False, idle_timeout: float = 60):
        self.root = root
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.state = self.home / ".coop"
        self.socket = self.state / "sock"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "COOP_IDLE_TIMEOUT": str(idle_timeout),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "LANG": "C.UTF-8",
        }
        if not sandboxed:
            self.env["COOP_UNSANDBOXED"] = "1"
        self.procs: list[subprocess.Popen] = []
        self.extra_pids: set[int] = set()

    def workspace(self, name: str = "proj", coopfile: str | None = 'command = "sh"') -> Path:
        ws = self.home / name
        ws.mkdir(parents=True, exist_ok=True)
        if coopfile is not None:
            body = coopfile if coopfile.lstrip().startswith("[") else f"[agent]\n{coopfile}\n"
            (ws / "coop.toml").write_text(body)
        return ws

    def run(self, *args: str, cwd: Path | None = None, input: bytes | None = None,
            timeout: float = 30, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "coop", *args], cwd=cwd or self.home,
                              env={**self.env, **(env or {})}, input=input,
                              capture_output=True, timeout=timeout)

    def ok(self, *args: str, **kw) -> str:
        res = self.run(*args, **kw)
        assert res.returncode == 0, f"coop {' '.join(args)} → {res.returncode}: {res.stderr.decode()}"
        return res.stdout.decode()

    def ls(self) -> list[dict]:
        return json.loads(self.ok("ls", "--json"))["sessions"]

    def session(self, name: str) -> dict:
        return next(s for s in self.ls() if s["name"] == name)

    def daemon_pid(self) -> int | None:
        try:
            return int((self.state / "daemon.pid").read_text())
        except (OSError, ValueError):
            return None

    def spawn_pty(self, *args: str, cwd: Path | None = None, cols: int = 80, rows: int = 24) -> "PtyProc":
        return PtyProc([sys.executable, "-m", "coop", *args], env=self.env, cwd=cwd or self.home,
                       cols=cols, rows=rows, owner=self)

    def log(self) -> str:
        try:
            return (self.state / "logs" / "daemon.log").read_text()
        except OSError:
            return ""

    def cleanup(self) -> None:
        pids = set(self.extra_pids)
        try:
            for s in self.ls():
                pids.add(s["pid"])
        except Exception:
            pass
        if os.path.exists(self.socket):
            try:
                self.run("kill", "--all", "-f", timeout=30)
                self.run("shutdown", timeout=15)
            except Exception:
                pass
        dpid = self.daemon_pid()
        if dpid:
            pids.add(dpid)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for pid in pids:
            if pid and pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


class PtyProc:
    """A process on a real PTY (a user's terminal), with timeout-bounded reads."""

    def __init__(self, argv, env, cwd, cols=80, rows=24, owner: Coop | None = None):
        import fcntl
        import struct
        import termios

        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     cwd=cwd, start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.buf = b""
        if owner:
            owner.procs.append(self.proc)

    def read_until(self, needle: bytes, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {needle!r}; got {self.buf[-500:]!r}")
            r, _, _ = select.select([self.master], [], [], left)
            if r:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    data = b""
                if not data:
                    if needle not in self.buf:
                        raise AssertionError(f"EOF waiting for {needle!r}; got {self.buf[-500:]!r}")
                    break
                self.buf += data
        return self.buf

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("process did not exit")
            r, _, _ = select.select([self.master], [], [], 0.05)
            if r:
                try:
                    self.buf += os.read(self.master, 65536)
                except OSError:
                    pass
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def readable_copy() -> str:
    """A copy of the coop package that other users can read (the clone may sit in
    a directory only root can enter); the caller removes it."""
    import shutil
    import tempfile

    src = tempfile.mkdtemp(prefix="coop-src-")
    os.chmod(src, 0o755)
    shutil.copytree(REPO / "coop", Path(src) / "coop",
                    ignore=shutil.ignore_patterns("__pycache__", "vendor"))
    for root, dirs, files in os.walk(src):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    return src


def coop_as(user: str, home: str, src: str, *args: str, cwd=None, timeout: float = 60):
    """Run the CLI as ``user`` with Debian's python (root's pyenv is out of reach)."""
    env = ["env", "-i", f"HOME={home}", "PATH=/usr/bin:/bin", f"PYTHONPATH={src}",
           "COOP_IDLE_TIMEOUT=30", "LANG=C.UTF-8"]
    return subprocess.run(["runuser", "-u", user, "--", *env, "/usr/bin/python3", "-m", "coop",
                           *args], cwd=cwd or home, capture_output=True, timeout=timeout,
                          check=False)
