"""Sandbox start-up (SB-7): coop's launcher next to bubblewrap doing the same.

    python3 bench/sandbox_start.py [--runs 50] [--user NAME]

"coop" times, inside one running asyncio process (as the session actor
does), ``SandboxLauncher.start()`` plus ``spawn()`` of ``/bin/echo`` on a PTY
until its output is read from the master: create → the agent's first
instruction. "bwrap" times ``bwrap`` started from the same process with the
equivalent namespaces and mounts (system dirs read-only, /proc, /dev, /tmp,
the workspace) running ``/bin/echo`` until its output is read. Stopping is
not timed. With ``--user`` (run as root) the same is measured again as that
existing unprivileged user, through ``runuser``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from coop.sandbox.launcher import SandboxLauncher, SandboxSpec  # noqa: E402 (after the sys.path set-up)
from coop.sandbox.mounts import host_entries  # noqa: E402 (after the sys.path set-up)


async def coop_once(base: str) -> tuple[float, float]:
    """(start, start + first output) in ms."""
    spec = SandboxSpec(name="bench", rootfs="host", state_dir=f"{base}/state",
                       workspace=f"{base}/ws")
    launcher = SandboxLauncher(spec)
    exited = asyncio.Event()
    launcher.on_exit = lambda pid, code: exited.set()
    t0 = time.perf_counter()
    await launcher.start()
    t1 = time.perf_counter()
    child = await launcher.spawn(["/bin/echo", "x"], {"PATH": "/usr/bin:/bin"}, "/workspace",
                                 80, 24)
    loop = asyncio.get_running_loop()
    got = loop.create_future()
    loop.add_reader(child.master_fd, lambda: got.done() or got.set_result(None))
    await got
    t2 = time.perf_counter()
    loop.remove_reader(child.master_fd)
    os.close(child.master_fd)
    await exited.wait()
    await launcher.stop(1.0)
    return (t1 - t0) * 1000, (t2 - t0) * 1000


def bwrap_argv(base: str) -> list[str]:
    argv = ["bwrap", "--unshare-user", "--unshare-pid", "--unshare-uts", "--unshare-ipc",
            "--unshare-net", "--uid", "0", "--gid", "0", "--hostname", "bench",
            "--die-with-parent"]
    for name, link in host_entries().items():
        argv += ["--symlink", link, f"/{name}"] if link else ["--ro-bind", f"/{name}", f"/{name}"]
    return argv + ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
                   "--bind", f"{base}/ws", "/workspace", "--chdir", "/workspace",
                   "/bin/echo", "x"]


def bwrap_once(base: str) -> float:
    argv = bwrap_argv(base)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    proc.stdout.read(1)
    t1 = time.perf_counter()
    proc.stdout.read()
    proc.wait()
    return (t1 - t0) * 1000


def summary(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[max(0, round(len(values) * 0.95) - 1)]
    return f"p50 {statistics.median(values):6.1f} ms   p95 {p95:6.1f} ms"


def measure(runs: int) -> dict:
    base = tempfile.mkdtemp(prefix="coop-bench-", dir=os.path.expanduser("~"))
    os.mkdir(f"{base}/ws")
    try:
        coop_start, coop_first, bwrap = [], [], []
        for _ in range(runs):
            start, first = asyncio.run(coop_once(base))
            coop_start.append(start)
            coop_first.append(first)
            bwrap.append(bwrap_once(base))
        return {"uid": os.getuid(), "coop start()": coop_start,
                "coop create → first output": coop_first, "bwrap → first output": bwrap}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def report(result: dict) -> None:
    who = "root" if result["uid"] == 0 else f"uid {result['uid']}"
    print(f"{who}, {len(result['coop start()'])} runs each")
    for name, values in result.items():
        if name != "uid":
            print(f"  {name:28} {summary(values)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--user", help="also measure as this unprivileged user (needs root)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    result = measure(args.runs)
    if args.json:
        print(json.dumps(result))
        return
    report(result)
    if args.user:
        home = os.path.expanduser(f"~{args.user}")
        python = shutil.which("python3", path="/usr/bin:/bin")  # one the user can run
        out = subprocess.run(["runuser", "-u", args.user, "--", "env", "-i", f"HOME={home}",
                              "PATH=/usr/bin:/bin", python, str(Path(__file__).resolve()),
                              "--runs", str(args.runs), "--json"],
                             capture_output=True, text=True, check=True)
        report(json.loads(out.stdout))


if __name__ == "__main__":
    main()
