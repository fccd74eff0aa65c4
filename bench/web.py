"""Terminal over WebSocket: coop's web server against terminado (tornado), and a bare
PTY reader as the ceiling.

    python3 bench/web.py [--mb 32] [--keys 300] [--runs 3]

Measures, on loopback, with the same Python WebSocket client (``websockets``)
for both servers and ``sh`` as the program on the PTY:
  - output throughput to one client (``cat`` of a text file);
  - keystroke echo latency, p50 and p99 (one byte in, its tty echo out);
  - aggregate throughput with 10 and with 50 clients on one PTY;
  - 9 reading clients alone, then again while a 10th never reads, and how
    much the server process grows meanwhile.
terminado runs from its own venv under ~/.cache/coop-bench (pip install).
The client is one Python process for both servers: with many clients it is
often the bottleneck, so compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import websockets

from tests.daemon import Coop
from tests.webclient import rss_kib, serve, web_actor_pid

MARKER = b"DONE-2"
COMMAND = "cat {path}; echo DONE-$((1+1))\r"
VENV = Path.home() / ".cache" / "coop-bench" / "terminado-venv"

TERMINADO_SERVER = r"""
import sys, tornado.ioloop, tornado.web
from terminado import SingleTermManager, TermSocket
manager = SingleTermManager(shell_command=["sh"])
app = tornado.web.Application([(r"/websocket", TermSocket, {"term_manager": manager})],
                              websocket_max_message_size=1 << 20)
server = app.listen(0, "127.0.0.1")
port = next(iter(server._sockets.values())).getsockname()[1]
print(port, flush=True)
tornado.ioloop.IOLoop.current().start()
"""


# -- the two dialects -------------------------------------------------------------------


class Dialect:
    """How one server frames terminal bytes on its WebSocket."""

    name: str
    origin: str | None = None

    def url(self) -> str: ...

    def payload(self, message) -> bytes | None:
        """Terminal bytes in a message from the server (None for anything else)."""

    def keys(self, data: str):
        """A message that types ``data``."""

    def handshake_path(self) -> str: ...


class CoopDialect(Dialect):
    name = "coop"

    def __init__(self, port: int, token: str):
        self.port, self.token = port, token
        self.origin = f"http://127.0.0.1:{port}"

    def handshake_path(self) -> str:
        return f"/ws?session=bench&pty=0&token={self.token}"

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.handshake_path()}"

    def payload(self, message):
        return message if isinstance(message, bytes) else None

    def keys(self, data: str):
        return data.encode()


class TerminadoDialect(Dialect):
    name = "terminado"

    def __init__(self, port: int):
        self.port = port

    def handshake_path(self) -> str:
        return "/websocket"

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/websocket"

    def payload(self, message):
        msg = json.loads(message)
        return msg[1].encode("utf-8", "surrogateescape") if msg[0] == "stdout" else None

    def keys(self, data: str):
        return json.dumps(["stdin", data])


class Reader:
    """One reading client: counts terminal bytes and watches for a marker."""

    def __init__(self, dialect: Dialect, conn):
        self.dialect, self.conn = dialect, conn
        self.bytes = 0
        self._tail = b""

    @classmethod
    async def open(cls, dialect: Dialect) -> Reader:
        conn = await websockets.connect(dialect.url(), origin=dialect.origin, max_size=None,
                                        ping_interval=None, open_timeout=30, close_timeout=1)
        reader = cls(dialect, conn)
        await reader.drain(0.3)  # the greeting, the replay and the prompt
        return reader

    async def drain(self, quiet: float) -> None:
        """Read until nothing arrives for ``quiet`` seconds."""
        while True:
            try:
                await asyncio.wait_for(self.conn.recv(), quiet)
            except TimeoutError:
                return

    async def until(self, needle: bytes, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            message = await asyncio.wait_for(self.conn.recv(), max(0.01, deadline - time.monotonic()))
            data = self.dialect.payload(message)
            if not data:
                continue
            self.bytes += len(data)
            window = self._tail + data
            if needle in window:
                self._tail = b""
                return
            self._tail = window[-len(needle):]

    async def type(self, data: str) -> None:
        await self.conn.send(self.dialect.keys(data))

    async def close(self) -> None:
        await self.conn.close()


def stalled_client(dialect: Dialect, port: int) -> socket.socket:
    """Completes the WebSocket handshake, then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    origin = f"Origin: {dialect.origin}\r\n" if dialect.origin else ""
    sock.sendall((f"GET {dialect.handshake_path()} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{origin}"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head[:100]
    return sock


# -- measurements ---------------------------------------------------------------------------


async def throughput(dialect: Dialect, clients: int, path: Path, stalled_port: int | None = None,
                     server_pid: int | None = None) -> dict:
    readers = [await Reader.open(dialect) for _ in range(clients)]
    stalled = stalled_client(dialect, stalled_port) if stalled_port else None
    rss_before = rss_kib(server_pid) if server_pid else 0
    started = time.perf_counter()
    await readers[0].type(COMMAND.format(path=path))
    await asyncio.gather(*(r.until(MARKER) for r in readers))
    elapsed = time.perf_counter() - started
    growth = (rss_kib(server_pid) - rss_before) / 1024 if server_pid else None
    total = sum(r.bytes for r in readers)
    complete = min(r.bytes for r in readers) / max(r.bytes for r in readers)
    for r in readers:
        await r.close()
    if stalled:
        stalled.close()
    return {"mbps": total / elapsed / 1e6, "complete": complete, "growth_mb": growth}


async def echo_latency(dialect: Dialect, keys: int) -> list[float]:
    reader = await Reader.open(dialect)
    samples = []
    for i in range(keys):
        if i % 50 == 0:
            await reader.type("\x15")  # Ctrl+U: keep the line short
            await reader.drain(0.05)
        key = "abcdfghjk"[i % 9]
        started = time.perf_counter()
        await reader.type(key)
        await reader.until(key.encode(), timeout=10)
        samples.append((time.perf_counter() - started) * 1000)
    await reader.type("\x15")
    await reader.close()
    return samples


def bare_pty(path: Path, keys: int, runs: int) -> dict:
    """The ceiling: the same cat and echo read straight from a PTY master (median of ``runs``)."""
    pid, master = pty.fork()
    if pid == 0:
        os.execvp("sh", ["sh"])
    try:
        def read_until(needle: bytes, count: list) -> None:
            tail = b""
            while True:
                select.select([master], [], [], 10)
                data = os.read(master, 65536)
                count[0] += len(data)
                if needle in tail + data:
                    return
                tail = (tail + data)[-len(needle):]

        while select.select([master], [], [], 0.3)[0]:  # the prompt
            os.read(master, 65536)
        rates = []
        for _ in range(runs):
            count = [0]
            started = time.perf_counter()
            os.write(master, COMMAND.format(path=path).encode())
            read_until(MARKER, count)
            rates.append(count[0] / (time.perf_counter() - started) / 1e6)
        mbps = statistics.median(rates)
        samples = []
        for i in range(keys):
            if i % 50 == 0:
                os.write(master, b"\x15")
            key = "abcdfghjk"[i % 9].encode()
            started = time.perf_counter()
            os.write(master, key)
            read_until(key, [0])
            samples.append((time.perf_counter() - started) * 1000)
        return {"mbps": mbps, "echo": samples}
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(master)


# -- servers --------------------------------------------------------------------------------


def terminado_python() -> str:
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "terminado"], check=True)
    return str(python)


def start_terminado() -> tuple[subprocess.Popen, int]:
    # stderr dropped: tornado logs a traceback for every client that goes away mid-write
    proc = subprocess.Popen([terminado_python(), "-c", TERMINADO_SERVER], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    port = int(proc.stdout.readline())
    return proc, port


async def measure(dialect: Dialect, path: Path, small: Path, tiny: Path, port: int, pid: int,
                  keys: int, runs: int) -> dict:
    """Each throughput is the median of ``runs`` after one warm-up run (the machine may be
    shared; the median keeps one disturbed run from deciding)."""
    async def median(*args, **kw) -> dict:
        await throughput(dialect, *args, **kw)
        done = sorted([await throughput(dialect, *args, **kw) for _ in range(runs)],
                      key=lambda r: r["mbps"])
        return done[len(done) // 2]

    results = {"1": await median(1, path)}
    results["echo"] = await echo_latency(dialect, keys)
    results["10"] = await median(10, small)
    results["50"] = await median(50, tiny)
    results["9"] = await median(9, small)
    results["stall"] = await median(9, small, stalled_port=port, server_pid=pid)
    return results


def text_file(directory: Path, mb: float, name: str) -> Path:
    line = (b"0123456789abcdefghijklmnopqrstuvwxyz" * 3)[:99] + b"\n"
    path = directory / name
    path.write_bytes(line * int(mb * 1e6 / len(line)))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=32, help="output to one client (MB)")
    parser.add_argument("--keys", type=int, default=300, help="keystrokes for the echo test")
    parser.add_argument("--runs", type=int, default=3, help="throughput runs (median)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="coop-bench-web-"))
    big = text_file(work, args.mb, "big.txt")
    small = text_file(work, args.mb / 4, "small.txt")
    tiny = text_file(work, args.mb / 16, "tiny.txt")

    bare = bare_pty(big, args.keys, args.runs)
    coop = Coop(work / "coop")
    terminado_proc = None
    try:
        ws = coop.workspace("bench")
        coop.ok("-d", "-w", str(ws), "-n", "bench")
        answer = serve(coop)
        coop.extra_pids.add(web_actor_pid(coop))
        session_pid = coop.session("bench")["pid"]
        coop_results = asyncio.run(measure(CoopDialect(answer["port"], answer["token"]), big, small,
                                           tiny, answer["port"], session_pid, args.keys, args.runs))
        terminado_proc, port = start_terminado()
        term_results = asyncio.run(measure(TerminadoDialect(port), big, small, tiny, port,
                                           terminado_proc.pid, args.keys, args.runs))
    finally:
        coop.cleanup()
        if terminado_proc:
            terminado_proc.kill()
            terminado_proc.wait()
    report(bare, coop_results, term_results, args)
    return 0


def report(bare: dict, coop: dict, term: dict, args) -> None:
    def pct(samples, q):
        return statistics.quantiles(samples, n=100)[q - 1]

    rows = [
        ("output, 1 client (MB/s)", bare["mbps"], coop["1"]["mbps"], term["1"]["mbps"], True),
        ("echo p50 (ms)", pct(bare["echo"], 50), pct(coop["echo"], 50), pct(term["echo"], 50), False),
        ("echo p99 (ms)", pct(bare["echo"], 99), pct(coop["echo"], 99), pct(term["echo"], 99), False),
        ("aggregate, 10 clients (MB/s)", None, coop["10"]["mbps"], term["10"]["mbps"], True),
        ("aggregate, 50 clients (MB/s)", None, coop["50"]["mbps"], term["50"]["mbps"], True),
        ("aggregate, 9 clients (MB/s)", None, coop["9"]["mbps"], term["9"]["mbps"], True),
        ("9 clients + 1 stalled (MB/s)", None, coop["stall"]["mbps"], term["stall"]["mbps"], True),
        ("server growth, stalled (MB)", None, coop["stall"]["growth_mb"],
         term["stall"]["growth_mb"], False),
    ]
    print(f"\nweb terminal benchmark: {args.mb:g} MB to one client, {args.mb / 4:g} MB to 10, "
          f"{args.mb / 16:g} MB to 50, {args.keys} keystrokes; loopback, one Python client process")
    print(f"{'':32}{'bare PTY':>10}{'coop':>10}{'terminado':>11}{'coop/terminado':>16}")
    for label, b, c, t, higher_better in rows:
        ratio = (c / t if higher_better else t / c) if c and t else float("nan")
        bare_text = f"{b:10.2f}" if b is not None else f"{'-':>10}"
        print(f"{label:32}{bare_text}{c:10.2f}{t:11.2f}{ratio:15.2f}x")
    print("(ratios: how many times better coop is; for latency and growth, terminado/coop)")
    print(f"coop/bare, 1 client: {coop['1']['mbps'] / bare['mbps']:.2f} (target ≥ 0.7)")
    for name, res in (("coop", coop), ("terminado", term)):
        print(f"{name}: 9 readers with a stalled 10th run at {res['stall']['mbps'] / res['9']['mbps']:.2f} "
              "of their rate without it (target ≥ 0.8)")
    for name, res in (("coop", coop), ("terminado", term)):
        worst = min(res[k]["complete"] for k in ("9", "10", "50", "stall"))
        print(f"{name}: slowest reading client got {worst:.1%} of the bytes of the fastest")


if __name__ == "__main__":
    raise SystemExit(main())
