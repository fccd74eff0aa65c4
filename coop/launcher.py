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
from collections.abc import Callable
from dataclasses import dataclass

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


def read_ready(fd: int) -> bytes | None:
    """What a non-blocking pipe holds now: None when nothing yet, b"" at its end
    (or on a read error: either way its writer is gone)."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def reset_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD,
                signal.SIGPIPE, signal.SIGWINCH, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


class HostLauncher(Launcher):
    """Unsandboxed launcher: forks on the host. Never reached by a user path
    once the sandbox exists; kept for tests and as the reference behaviour.

    Each child is watched through a pidfd, so its exit wakes the loop (no
    SIGCHLD handler, no polling)."""

    def __init__(self, workspace: str) -> None:
        self.on_exit = lambda pid, code: None
        self.workdir = workspace
        self.home = os.environ.get("HOME", "/")
        self.user = os.environ.get("USER") or str(os.getuid())
        self.shell = os.environ.get("SHELL") or "/bin/sh"
        self._children: dict[int, int] = {}  # pid -> pidfd
        self._none_left = asyncio.Event()
        self._none_left.set()

    def _fork(self) -> int:
        """fork(2) with every signal blocked until the child has its own
        session: a signal sent in between waits (pending) instead of being
        lost or run by a handler inherited from this process. The child
        returns 0 and must call ``setsid`` then ``reset_signals``."""
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            raise
        if pid == 0:
            return 0
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        pidfd = os.pidfd_open(pid)
        self._children[pid] = pidfd
        self._none_left.clear()
        asyncio.get_running_loop().add_reader(pidfd, self._reap, pid)
        return pid

    def _reap(self, pid: int) -> None:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: its code is lost
            done, status = pid, None
        if not done:
            return
        pidfd = self._children.pop(pid)
        asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)
        if not self._children:
            self._none_left.set()
        if status is not None:
            self.on_exit(pid, os.waitstatus_to_exitcode(status))

    async def spawn(self, argv, env, cwd, cols, rows) -> PtyChild:
        master, slave = os.openpty()
        set_winsize(master, cols, rows)
        pid = self._fork()
        if pid == 0:
            try:
                os.setsid()
                reset_signals()
                os.close(master)
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
        return PtyChild(pid=pid, master_fd=master)

    async def spawn_piped(self, argv, env, cwd) -> PipedChild:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = self._fork()
        if pid == 0:
            try:
                os.setsid()
                reset_signals()
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
        return PipedChild(pid=pid, stdin_fd=in_w, stdout_fd=out_r, stderr_fd=err_r)

    def signal(self, pid: int, sig: int) -> None:
        """``sig`` to the child's process group; to the child itself while it
        has no group yet (blocked there until its ``setsid``)."""
        if pid not in self._children:
            return
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            signal.pidfd_send_signal(self._children[pid], sig)

    async def stop(self, grace: float) -> None:
        for pid in list(self._children):
            self.signal(pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self._none_left.wait(), grace)
        except TimeoutError:
            for pid in list(self._children):
                self.signal(pid, signal.SIGKILL)
            await self._none_left.wait()

    def describe(self) -> dict:
        return {"sandbox": "none (host launcher)"}
