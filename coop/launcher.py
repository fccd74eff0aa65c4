"""How a session starts its processes: one interface, two implementations.

The session actor never forks by itself; it asks its launcher. ``HostLauncher``
runs processes directly on the host (tests and development only); the
sandbox's launcher (``coop.sandbox.launcher.SandboxLauncher``) runs them
under the in-sandbox init. Both report exits through ``on_exit``.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import struct
import termios
from dataclasses import dataclass
from typing import Callable

ExitCallback = Callable[[int, int], None]  # (pid, exit code as waitstatus_to_exitcode)


@dataclass
class PtyChild:
    """A process on a PTY; the caller owns ``master_fd``."""

    pid: int
    master_fd: int


@dataclass
class PipedChild:
    """A process on pipes (``coop exec``); the caller owns the three fds."""

    pid: int
    stdin_fd: int
    stdout_fd: int
    stderr_fd: int


class LaunchError(Exception):
    """Starting a process or the sandbox failed; the message is one line."""


class Launcher:
    """Interface every launcher implements.

    ``home``, ``user``, ``shell`` and ``workdir`` describe the world the
    processes see (SB-5): inside a sandbox they are the in-sandbox values.
    """

    on_exit: ExitCallback
    home: str
    user: str
    shell: str
    workdir: str

    def extra_env(self) -> dict[str, str]:
        """Variables the launcher itself needs in every process (e.g. proxy)."""
        return {}

    async def start(self) -> None:
        """Prepare the environment once per session (namespaces, mounts)."""

    async def spawn(
        self, argv: list[str], env: dict[str, str], cwd: str, cols: int, rows: int
    ) -> PtyChild:
        raise NotImplementedError

    async def spawn_piped(self, argv: list[str], env: dict[str, str], cwd: str) -> PipedChild:
        raise NotImplementedError

    def signal(self, pid: int, sig: int) -> None:
        raise NotImplementedError

    async def stop(self, grace: float) -> None:
        """Kill every process of the session (TERM, ``grace`` s, KILL), release it all."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What ``coop status`` shows about this launcher (sandbox, limits)."""
        return {}


def set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def exec_child(argv: list[str], env: dict[str, str], cwd: str) -> None:
    """In a forked child: chdir and exec, or exit 127 with a one-line reason."""
    try:
        os.chdir(cwd)
    except OSError as exc:
        os.write(2, f"coop: cannot enter {cwd}: {exc.strerror}\r\n".encode())
        os._exit(127)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        os.write(2, f"coop: cannot run {argv[0]}: {exc.strerror}\r\n".encode())
    os._exit(127)


def reset_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD,
                signal.SIGPIPE, signal.SIGWINCH, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


class HostLauncher(Launcher):
    """Unsandboxed launcher: forks on the host. Never reached by a user path
    once the sandbox exists; kept for tests and as the reference behaviour."""

    def __init__(self, workspace: str) -> None:
        self.on_exit = lambda pid, code: None
        self.workdir = workspace
        self.home = os.environ.get("HOME", "/")
        self.user = os.environ.get("USER") or str(os.getuid())
        self.shell = os.environ.get("SHELL") or "/bin/sh"
        self._children: set[int] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGCHLD, self._reap)

    def _reap(self) -> None:
        for pid in list(self._children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                self._children.discard(pid)
                continue
            if done:
                self._children.discard(pid)
                self.on_exit(pid, os.waitstatus_to_exitcode(status))

    async def spawn(self, argv, env, cwd, cols, rows) -> PtyChild:
        master, slave = os.openpty()
        set_winsize(master, cols, rows)
        pid = os.fork()
        if pid == 0:
            try:
                reset_signals()
                os.close(master)
                os.setsid()
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
                for fd in (0, 1, 2):
                    os.dup2(slave, fd)
                if slave > 2:
                    os.close(slave)
                exec_child(argv, env, cwd)
            finally:
                os._exit(127)
        os.close(slave)
        os.set_blocking(master, False)
        self._children.add(pid)
        return PtyChild(pid=pid, master_fd=master)

    async def spawn_piped(self, argv, env, cwd) -> PipedChild:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                reset_signals()
                os.setsid()
                os.dup2(in_r, 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
                    os.close(fd)
                exec_child(argv, env, cwd)
            finally:
                os._exit(127)
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        self._children.add(pid)
        return PipedChild(pid=pid, stdin_fd=in_w, stdout_fd=out_r, stderr_fd=err_r)

    def signal(self, pid: int, sig: int) -> None:
        if pid in self._children:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass

    async def stop(self, grace: float) -> None:
        for pid in list(self._children):
            self.signal(pid, signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + grace
        while self._children and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
            self._reap()
        for pid in list(self._children):
            self.signal(pid, signal.SIGKILL)
        while self._children:
            await asyncio.sleep(0.01)
            self._reap()

    def describe(self) -> dict:
        return {"sandbox": "none (host launcher)"}
