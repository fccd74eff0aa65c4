"""HostLauncher (the unsandboxed reference launcher): signals are never lost,
stop waits on exits rather than polling, and never longer than needed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from coop.launcher import HostLauncher
from tests.daemon import pid_alive

IGNORE_TERM = ("import signal, sys, time\n"
               "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
               "print('ready', flush=True)\n"
               "time.sleep(60)\n")


class Exits:
    """``on_exit`` reports, awaitable per pid."""

    def __init__(self, launcher: HostLauncher) -> None:
        self.codes: dict[int, int] = {}
        self.changed = asyncio.Event()
        launcher.on_exit = self.record

    def record(self, pid: int, code: int) -> None:
        self.codes[pid] = code
        self.changed.set()

    async def of(self, pid: int, timeout: float = 10.0) -> int:
        async with asyncio.timeout(timeout):
            while pid not in self.codes:
                self.changed.clear()
                await self.changed.wait()
        return self.codes[pid]


async def spawn_piped(launcher: HostLauncher, argv: list[str]) -> int:
    child = await launcher.spawn_piped(argv, dict(os.environ), "/")
    for fd in (child.stdin_fd, child.stdout_fd, child.stderr_fd):
        os.close(fd)
    return child.pid


async def read_line(fd: int) -> bytes:
    """Bytes from ``fd`` up to and including the first newline."""
    loop = asyncio.get_running_loop()
    line = bytearray()
    got = loop.create_future()

    def readable() -> None:
        line.extend(os.read(fd, 1))
        if line.endswith(b"\n") and not got.done():
            got.set_result(bytes(line))

    loop.add_reader(fd, readable)
    try:
        return await asyncio.wait_for(got, 10)
    finally:
        loop.remove_reader(fd)


def test_a_signal_sent_the_moment_spawn_returns_is_never_lost():
    async def scenario() -> list[int]:
        launcher = HostLauncher("/")
        exits = Exits(launcher)
        codes = []
        for _ in range(30):
            pid = await spawn_piped(launcher, ["sleep", "60"])
            launcher.signal(pid, signal.SIGTERM)  # before the child can have run
            codes.append(await exits.of(pid))
        await launcher.stop(0)
        return codes

    assert asyncio.run(scenario()) == [-signal.SIGTERM] * 30


def test_a_pty_child_is_signalled_with_its_whole_process_group():
    async def scenario() -> tuple[int, bool]:
        launcher = HostLauncher("/")
        exits = Exits(launcher)
        child = await launcher.spawn(["sh", "-c", "sleep 60 & echo $!; wait"],
                                     dict(os.environ), "/", 80, 24)
        try:
            grandchild = int((await read_line(child.master_fd)).split()[0])
            launcher.signal(child.pid, signal.SIGTERM)
            code = await exits.of(child.pid)
            deadline = time.monotonic() + 5
            while pid_alive(grandchild) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # poll: not our child, no exit notice
            return code, pid_alive(grandchild)
        finally:
            os.close(child.master_fd)
            await launcher.stop(0)

    code, grandchild_left = asyncio.run(scenario())
    assert code == -signal.SIGTERM and not grandchild_left


def test_stop_returns_as_soon_as_the_children_are_gone():
    async def scenario() -> tuple[float, int]:
        launcher = HostLauncher("/")
        exits = Exits(launcher)
        pid = await spawn_piped(launcher, ["sleep", "60"])
        started = time.monotonic()
        await launcher.stop(30)
        return time.monotonic() - started, await exits.of(pid, 0)

    took, code = asyncio.run(scenario())
    assert code == -signal.SIGTERM and took < 5


def test_stop_kills_what_ignores_term_after_the_grace_time():
    async def scenario() -> tuple[float, int]:
        launcher = HostLauncher("/")
        exits = Exits(launcher)
        child = await launcher.spawn_piped([sys.executable, "-c", IGNORE_TERM],
                                           dict(os.environ), "/")
        os.close(child.stdin_fd)
        os.close(child.stderr_fd)
        assert await read_line(child.stdout_fd) == b"ready\n"
        os.close(child.stdout_fd)
        started = time.monotonic()
        await launcher.stop(0.5)
        return time.monotonic() - started, await exits.of(child.pid, 0)

    took, code = asyncio.run(scenario())
    assert code == -signal.SIGKILL and 0.5 <= took < 5


def test_stop_without_children_returns_at_once():
    async def scenario() -> float:
        launcher = HostLauncher("/")
        started = time.monotonic()
        await launcher.stop(30)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1
