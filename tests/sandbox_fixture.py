"""Real sandboxes for the tests, as root (in-process) and as an unprivileged
user (the driver under ``runuser``), through ``tests/sandbox_driver.py``."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import subprocess
import tempfile
import time
from dataclasses import dataclass

import pytest

from tests import sandbox_driver

USER = f"coop-sb{os.getpid()}"  # per run: test runs in parallel never share it
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = "/usr/bin/python3"  # the user cannot reach root's pyenv interpreter


def create_user() -> pwd.struct_passwd:
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True, capture_output=True)
    return pwd.getpwnam(USER)


def delete_user() -> None:
    subprocess.run(["userdel", "-r", "-f", USER], capture_output=True, check=False)


@dataclass
class Box:
    """One test's sandbox world: ``base`` on the host holds ``ws`` and ``state``."""

    who: str  # "root" or "user"
    base: str
    uid: int
    gid: int
    home: str

    @property
    def workspace(self) -> str:
        return os.path.join(self.base, "ws")

    @property
    def state_dir(self) -> str:
        return os.path.join(self.base, "state")

    def spec(self, **overrides) -> dict:
        spec = {"name": "sbtest", "rootfs": "host", "state_dir": self.state_dir,
                "workspace": self.workspace}
        spec.update(overrides)
        return spec

    def run(self, steps: list[dict], **spec) -> list[dict]:
        """Start a sandbox, run ``steps``, stop it; one result per step (start first)."""
        scenario = {"spec": self.spec(**spec), "steps": steps}
        if self.who == "root":
            return asyncio.run(sandbox_driver.run(scenario))
        proc = subprocess.run(
            ["runuser", "-u", USER, "--", "env", "-i", f"HOME={self.home}", "PATH=/usr/bin:/bin",
             f"PYTHONPATH={ROOT}", PYTHON, os.path.join(ROOT, "tests", "sandbox_driver.py")],
            input=json.dumps(scenario), capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"driver failed: {proc.stderr[-3000:]}")
        return json.loads(proc.stdout)

    def chown(self, path: str) -> None:
        for root, dirs, files in os.walk(path):
            for name in [root] + [os.path.join(root, n) for n in dirs + files]:
                os.lchown(name, self.uid, self.gid)

    def exec(self, command: str, **spec) -> dict:
        """Run one shell command in a fresh sandbox; its exec result."""
        results = self.run([sh(command)], **spec)
        assert "error" not in results[-1], results
        return results[1]


def make_box(who: str, user: pwd.struct_passwd | None) -> Box:
    if who == "root":
        base = tempfile.mkdtemp(prefix="coop-sb-")
        box = Box("root", base, 0, 0, "/root")
    else:
        base = tempfile.mkdtemp(prefix="sb-", dir=user.pw_dir)
        box = Box("user", base, user.pw_uid, user.pw_gid, user.pw_dir)
    os.mkdir(box.workspace)
    os.chmod(base, 0o755)
    box.chown(base)
    return box


def remove_box(box: Box) -> None:
    subprocess.run(["chmod", "-R", "u+rwx", box.base], capture_output=True, check=False)
    subprocess.run(["rm", "-rf", box.base], check=True)  # iterative: copes with deep trees


def sh(command: str, **fields) -> dict:
    return {"do": "exec", "argv": ["/bin/sh", "-c", command], **fields}


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Poll until none of ``pids`` exists; the ones still there at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.01)


def lines(text: str) -> list[str]:
    """Non-empty, stripped lines, PTY carriage returns removed."""
    return [line.strip() for line in text.replace("\r", "").splitlines() if line.strip()]


def python_in_sandbox(code: str) -> list[str]:
    """argv running ``code`` with the host's system Python inside a host-rootfs sandbox."""
    return [PYTHON, "-c", code]



@pytest.fixture(scope="module")
def sandbox_user():
    """The unprivileged user, for one test module's lifetime."""
    user = create_user()
    try:
        yield user
    finally:
        delete_user()


@pytest.fixture(params=["root", "user"])
def box(request, sandbox_user):
    """Each test once as root and once as the unprivileged user."""
    box = make_box(request.param, sandbox_user)
    try:
        yield box
    finally:
        remove_box(box)
