"""Runs a sandbox scenario and prints what happened, as JSON.

The sandbox tests use it in-process as root and, through ``runuser``, as an
unprivileged user (the point of SB-1): one code path for both.

Scenario (stdin, JSON): ``{"spec": {SandboxSpec fields}, "steps": [...]}``;
each step is ``{"do": ...}``:

- ``exec`` argv, [stdin], [cwd], [env]  -> code, stdout, stderr (``coop exec`` path)
- ``pty`` argv, [input]                 -> code, output (runs to exit on a PTY)
- ``background`` argv                   -> pid (PTY child left running)
- ``tree``                              -> host pids of the init and all descendants
- ``signal`` pid, sig                   -> code of that process
- ``stop`` [grace]                      -> exits reported so far, whether upper/ remains
- ``abandon``                           -> closes the init's socket as a dying actor would
- ``start``                             -> a new launcher on the same spec
- ``describe``                          -> the launcher's describe()
A failing step's result is ``{"error": message}``; a failing start ends the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time

from coop.launcher import LaunchError, read_ready
from coop.sandbox.launcher import SandboxLauncher, SandboxSpec

TIMEOUT = 20.0
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
       "LC_ALL": "C"}


def host_tree(pid: int) -> list[int]:
    """``pid`` and every descendant, from the host's /proc."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as f:
                todo += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return found


class Runner:
    def __init__(self, spec: dict):
        self.spec = spec
        self.exits: dict[int, int] = {}
        self.events: list[str] = []
        self.launcher: SandboxLauncher | None = None
        self.masters: list[int] = []

    async def start(self) -> dict:
        self.launcher = SandboxLauncher(SandboxSpec(**self.spec), self.events.append)
        self.launcher.on_exit = lambda pid, code: self.exits.__setitem__(pid, code)
        await self.launcher.start()
        return {"ok": True}

    async def exited(self, pid: int) -> int:
        deadline = time.monotonic() + TIMEOUT
        while pid not in self.exits:
            if time.monotonic() > deadline:
                raise TimeoutError(f"process {pid} did not exit")
            await asyncio.sleep(0.005)
        return self.exits[pid]

    async def step(self, step: dict) -> dict:
        kind = step["do"]
        if kind == "start":
            return await self.start()
        if kind == "exec":
            return await self.run_piped(step)
        if kind == "pty":
            return await self.run_pty(step)
        if kind == "background":
            child = await self.launcher.spawn(step["argv"], self.env({}), "/workspace", 80, 24)
            self.masters.append(child.master_fd)  # closing it would hang the process up
            return {"pid": child.pid}
        if kind == "tree":
            return {"pids": host_tree(self.launcher.describe()["init_pid"])}
        if kind == "signal":
            self.launcher.signal(step["pid"], step["sig"])
            return {"code": await self.exited(step["pid"])}
        if kind == "stop":
            await self.launcher.stop(step.get("grace", 1.0))
            upper = os.path.join(self.spec["state_dir"], "upper")
            return {"exits": {str(pid): code for pid, code in self.exits.items()},
                    "upper_left": os.path.lexists(upper)}
        if kind == "abandon":  # the init sees EOF, as if the session actor had died
            self.launcher._sock.shutdown(socket.SHUT_RDWR)
            return {}
        if kind == "describe":
            return self.launcher.describe()
        raise ValueError(f"unknown step {kind}")

    async def run_piped(self, step: dict) -> dict:
        child = await self.launcher.spawn_piped(step["argv"], self.env(step.get("env", {})),
                                                step.get("cwd", "/workspace"))
        os.write(child.stdin_fd, step.get("stdin", "").encode())
        os.close(child.stdin_fd)
        out, err = await asyncio.gather(read_all(child.stdout_fd), read_all(child.stderr_fd))
        return {"code": await self.exited(child.pid), "stdout": out, "stderr": err,
                "pid": child.pid}

    async def run_pty(self, step: dict) -> dict:
        child = await self.launcher.spawn(step["argv"], self.env({}), "/workspace", 80, 24)
        if step.get("input"):
            os.write(child.master_fd, step["input"].encode())
        output = await read_all(child.master_fd)
        return {"code": await self.exited(child.pid), "output": output, "pid": child.pid}

    def env(self, extra: dict) -> dict:
        return {**ENV, **self.launcher.extra_env(), **extra}


async def read_all(fd: int) -> str:
    """Everything until EOF (or EIO: a PTY whose last slave is gone), within TIMEOUT."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    done = loop.create_future()

    def readable() -> None:
        data = read_ready(fd)
        if data is None:
            return
        if data:
            chunks.append(data)
        elif not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(done, TIMEOUT)
    except TimeoutError:
        raise TimeoutError(f"no end of output within {TIMEOUT:g} s") from None
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


async def run(scenario: dict) -> list[dict]:
    runner = Runner(scenario["spec"])
    results = []
    try:
        results.append(await runner.start())
        for step in scenario["steps"]:
            try:
                results.append(await runner.step(step))
            except (LaunchError, OSError, TimeoutError) as exc:
                results.append({"error": str(exc)})
    except (LaunchError, OSError) as exc:
        results.append({"error": str(exc)})
    finally:
        if runner.launcher is not None:
            await runner.launcher.stop(0)  # a no-op after a "stop" step
        for fd in runner.masters:
            os.close(fd)
    for result in results:
        result.setdefault("events", runner.events)
    return results


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.load(sys.stdin)))))
