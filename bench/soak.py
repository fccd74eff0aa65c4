"""Soak: many sessions, each with one local and several web clients, under continuous
output and input, while clients connect and drop every second (SEC-4, PTY-1, PTY-2).

    python3 bench/soak.py                                   # 1 minute, 3 sessions × (1 + 2)
    python3 bench/soak.py --minutes 3 --sessions 5 --web 3
    python3 bench/soak.py --minutes 10 --sessions 20        # the full variant (5 web clients)

Every agent prints numbered lines (``S <n>``) at ``--rate`` lines per second and echoes
each input line ``I <client> <k>`` as ``E <client> <k>``; every long-lived client types
one input line per ``--input-every`` seconds. Checked: no actor restarts (same pids, no
crash in the log), every long-lived client sees every output line and every echo in
order with no lag event, its own inputs all come back, RSS and open file descriptors of
the supervisor, the web actor and every session actor stay flat after warm-up.
Prints one row per sample (the curves) and a verdict; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import websockets  # noqa: E402

from coop import protocol  # noqa: E402
from coop.protocol import FrameDecoder, FrameType  # noqa: E402
from tests.daemon import Coop, pid_alive  # noqa: E402
from tests.webclient import children, serve  # noqa: E402

AGENT = r"""
import os, select, sys, termios, time
attrs = termios.tcgetattr(0)
attrs[3] &= ~termios.ECHO
termios.tcsetattr(0, termios.TCSANOW, attrs)
period, pad = 1 / float(sys.argv[1]), b"x" * int(sys.argv[2])
n, due, pending = 0, time.monotonic(), b""
while True:
    if select.select([0], [], [], max(0.0, due - time.monotonic()))[0]:
        data = os.read(0, 65536)
        if not data:
            break
        *lines, pending = (pending + data).split(b"\n")
        echoed = b"".join(b"E " + line[2:] + b"\n" for line in lines if line.startswith(b"I "))
        if echoed:
            os.write(1, echoed)
    now = time.monotonic()
    while due <= now:
        os.write(1, b"S %d %s\n" % (n, pad))
        n, due = n + 1, due + period
"""
COOPFILE = """[agent]
command = "{python} soak_agent.py {rate} {pad}"
[network]
mode = "none"
[session]
scrollback_bytes = 65536
"""


class Stream:
    """Terminal bytes of one client, checked line by line: ``S`` numbers consecutive,
    each sender's ``E`` numbers consecutive, from the first whole line on."""

    def __init__(self):
        self.tail = b""
        self.first = True  # a replay may begin mid-line: the first line is not checked
        self.last_s: int | None = None
        self.last_e: dict[int, int] = {}
        self.lines = 0
        self.bytes = 0
        self.errors: list[str] = []

    def feed(self, data: bytes) -> None:
        self.bytes += len(data)
        *lines, self.tail = (self.tail + data).split(b"\n")
        for line in lines:
            if self.first:
                self.first = False
                continue
            self.lines += 1
            fields = line.rstrip(b"\r").split(b" ")
            try:
                if fields[0] == b"S":
                    self._next("S", None, int(fields[1]))
                elif fields[0] == b"E":
                    self._next("E", int(fields[1]), int(fields[2]))
                else:
                    self.errors.append(f"unexpected line {line[:40]!r}")
            except (IndexError, ValueError):
                self.errors.append(f"malformed line {line[:40]!r}")

    def _next(self, kind: str, sender: int | None, number: int) -> None:
        last = self.last_s if kind == "S" else self.last_e.get(sender)
        if last is not None and number != last + 1:
            self.errors.append(f"{kind} {sender or ''} {last} then {number}")
        if kind == "S":
            self.last_s = number
        else:
            self.last_e[sender] = number


class Client:
    """One long-lived client; ``kind`` is ``local`` (IPC stream) or ``web`` (WebSocket)."""

    def __init__(self, cid: int, session: str, kind: str):
        self.cid, self.session, self.kind = cid, session, kind
        self.stream = Stream()
        self.sent = 0
        self.events: list[dict] = []

    def label(self) -> str:
        return f"{self.session}/{self.kind}#{self.cid}"

    def event(self, obj: dict) -> None:
        self.events.append(obj)
        if (obj.get("type") or obj.get("event")) in ("lag", "detached", "exited", "pty_exited"):
            self.stream.errors.append(f"event {obj}")

    def next_input(self) -> bytes:
        line = b"I %d %d\n" % (self.cid, self.sent)
        self.sent += 1
        return line


class LocalConnection:
    """An IPC stream client attached to PTY 0 (what ``coop attach`` does)."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()

    @classmethod
    async def open(cls, socket_path: Path, session: str) -> LocalConnection:
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        conn = cls(reader, writer)
        writer.write(protocol.encode_message(protocol.hello()) + protocol.encode_message(
            {"cmd": "attach", "session": session, "pty": 0, "cols": 200, "rows": 50}))
        return conn

    async def frames(self):
        answers = 0
        while data := await self.reader.read(1 << 16):
            for payload in self.decoder.feed(data):
                if answers < 2:  # handshake and attach answers come first
                    answers += 1
                    answer = json.loads(payload)
                    if not answer.get("ok"):
                        raise ConnectionError(f"refused: {answer}")
                    continue
                kind, body = protocol.split_stream_frame(payload)
                yield (body, None) if kind == FrameType.DATA else (None, json.loads(body))

    def send(self, data: bytes) -> None:
        self.writer.write(protocol.encode_frame(FrameType.DATA, data))

    def close(self, abrupt: bool = False) -> None:
        if abrupt:
            self.writer.transport.abort()
        else:
            self.writer.close()


class WebConnection:
    """A browser-like WebSocket client of ``coop serve`` (token in a header)."""

    def __init__(self, conn):
        self.conn = conn

    @classmethod
    async def open(cls, port: int, token: str, session: str) -> WebConnection:
        origin = f"http://127.0.0.1:{port}"
        conn = await websockets.connect(
            f"ws://127.0.0.1:{port}/ws?session={session}&pty=0&cols=200&rows=50",
            origin=origin, additional_headers={"Authorization": f"Bearer {token}"},
            max_size=None, ping_interval=None, compression=None, open_timeout=20)
        return cls(conn)

    async def frames(self):
        with contextlib.suppress(websockets.ConnectionClosedOK):
            async for message in self.conn:
                yield (message, None) if isinstance(message, bytes) else (None, json.loads(message))

    def send(self, data: bytes) -> None:
        asyncio.ensure_future(self.conn.send(data))

    def close(self, abrupt: bool = False) -> None:
        if abrupt:
            self.conn.transport.abort()
        else:
            asyncio.ensure_future(self.conn.close())


class Soak:
    def __init__(self, args, coop: Coop):
        self.args = args
        self.coop = coop
        self.sessions = [f"soak{i}" for i in range(args.sessions)]
        self.clients: list[Client] = []
        self.connections: dict[int, object] = {}
        self.port = self.token = None
        self.churn = {"opened": 0, "failed": 0}
        self.failures: list[str] = []
        self.stop = asyncio.Event()

    # -- set-up -------------------------------------------------------------------

    def start(self) -> None:
        body = COOPFILE.format(python=sys.executable, rate=self.args.rate, pad=self.args.pad)
        for name in self.sessions:
            ws = self.coop.workspace(name, body)
            (ws / "soak_agent.py").write_text(AGENT)
            self.coop.ok("-d", "-n", name, "-w", str(ws))
        answer = serve(self.coop)
        assert answer.get("ok"), answer
        self.port, self.token = answer["port"], answer["token"]

    def actors(self) -> dict[str, int]:
        supervisor = self.coop.daemon_pid()
        sessions = {s["name"]: s["pid"] for s in self.coop.ls()}
        others = children(supervisor) - set(sessions.values())
        found = {"supervisor": supervisor, **{f"session {n}": p for n, p in sessions.items()}}
        found.update({f"web {pid}": pid for pid in others})
        return found

    async def open(self, kind: str, session: str):
        if kind == "local":
            return await LocalConnection.open(self.coop.socket, session)
        return await WebConnection.open(self.port, self.token, session)

    # -- clients --------------------------------------------------------------------

    async def long_lived(self, client: Client) -> None:
        conn = await self.open(client.kind, client.session)
        self.connections[client.cid] = conn
        try:
            async for data, event in conn.frames():
                if data is not None:
                    client.stream.feed(data)
                elif event.get("type") != "attention" and event.get("event") != "attention":
                    client.event(event)
        except (OSError, ConnectionError, websockets.ConnectionClosed) as exc:
            if not self.stop.is_set():
                client.stream.errors.append(f"connection lost: {exc!r}")
        if not self.stop.is_set():
            client.stream.errors.append("connection ended early")

    async def typist(self) -> None:
        while not self.stop.is_set():
            for client in self.clients:
                conn = self.connections.get(client.cid)
                if conn:
                    conn.send(client.next_input())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.args.input_every)

    async def churner(self) -> None:
        """One client a second connects, reads one line, and drops (abruptly or cleanly)."""
        rng = random.Random(1)
        while not self.stop.is_set():
            asyncio.ensure_future(self.one_churn(rng.choice(["local", "web"]),
                                                 rng.choice(self.sessions), rng.random() < 0.5))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)

    async def one_churn(self, kind: str, session: str, abrupt: bool) -> None:
        self.churn["opened"] += 1
        try:
            conn = await asyncio.wait_for(self.open(kind, session), 20)
            stream = Stream()
            async with asyncio.timeout(20):
                async for data, _ in conn.frames():
                    stream.feed(data or b"")
                    if stream.lines >= 1:
                        break
            conn.close(abrupt)
        except (OSError, ConnectionError, TimeoutError, websockets.WebSocketException) as exc:
            self.churn["failed"] += 1
            self.failures.append(f"churn {kind} client of {session}: {exc!r}")

    # -- sampling -------------------------------------------------------------------

    async def run(self) -> list[dict]:
        cid = 0
        for session in self.sessions:
            for kind in ["local"] + ["web"] * self.args.web:
                self.clients.append(Client(cid, session, kind))
                cid += 1
        tasks = [asyncio.ensure_future(self.long_lived(c)) for c in self.clients]
        tasks += [asyncio.ensure_future(self.typist()), asyncio.ensure_future(self.churner())]
        actors = self.actors()
        samples = []
        started = time.monotonic()
        duration = self.args.minutes * 60
        every = self.args.sample or max(2.0, duration / 24)
        print(header(actors), flush=True)
        while (elapsed := time.monotonic() - started) < duration:
            samples.append(self.sample(elapsed, actors))
            print(row(samples[-1], actors), flush=True)
            await asyncio.sleep(min(every, max(0.1, duration - elapsed)))
        samples.append(self.sample(time.monotonic() - started, actors))
        print(row(samples[-1], actors), flush=True)
        await asyncio.sleep(3)  # echoes of the last inputs
        self.stop.set()
        for conn in self.connections.values():
            conn.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.actors() != actors:
            self.failures.append(f"actors changed: {actors} → {self.actors()}")
        return samples

    def sample(self, elapsed: float, actors: dict[str, int]) -> dict:
        sample = {"t": elapsed, "rss": {}, "fds": {}, "bytes": sum(c.stream.bytes for c in self.clients)}
        for name, pid in actors.items():
            if not pid_alive(pid):
                self.failures.append(f"{name} (pid {pid}) died at {elapsed:.0f}s")
                continue
            sample["rss"][name] = rss_kib(pid)
            sample["fds"][name] = len(os.listdir(f"/proc/{pid}/fd"))
        return sample

    # -- verdict --------------------------------------------------------------------

    def verdict(self, samples: list[dict], actors: dict[str, int]) -> list[str]:
        problems = list(self.failures)
        for client in self.clients:
            stream = client.stream
            problems += [f"{client.label()}: {e}" for e in stream.errors[:5]]
            if client.sent and stream.last_e.get(client.cid) != client.sent - 1:
                problems.append(f"{client.label()}: sent {client.sent} inputs, last echo seen "
                                f"{stream.last_e.get(client.cid)}")
            if stream.last_s is None:
                problems.append(f"{client.label()}: no output at all")
        warm = [s for s in samples if s["t"] >= self.args.warmup * samples[-1]["t"]]
        for name in actors:
            rss = [s["rss"][name] for s in warm if name in s["rss"]]
            fds = [s["fds"][name] for s in warm if name in s["fds"]]
            if len(rss) < 2:
                continue
            growth = slope([s["t"] for s in warm if name in s["rss"]], rss) * (warm[-1]["t"] - warm[0]["t"])
            if growth > max(1024, 0.05 * rss[0]):
                problems.append(f"{name}: RSS grows {growth:.0f} KiB after warm-up ({rss})")
            if max(fds) > fds[0] + 2 * self.args.churn_allowance:
                problems.append(f"{name}: descriptors grow after warm-up ({fds})")
        return problems


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope: RSS growth per second, robust to one noisy sample."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def short(name: str) -> str:
    return name.replace("session ", "").replace("supervisor", "sup")


def header(actors: dict[str, int]) -> str:
    sessions = [n for n in actors if n.startswith("session")]
    others = [n for n in actors if not n.startswith("session")]
    return ("   t(s)  " + "  ".join(f"{short(n):>14}" for n in others)
            + f"  {'sessions (' + str(len(sessions)) + ')':>26}  {'client MB':>9}\n"
            + "         " + "  ".join(f"{'RSS KiB/fds':>14}" for _ in others)
            + f"  {'RSS KiB min..max/fds sum':>26}")


def row(sample: dict, actors: dict[str, int]) -> str:
    sessions = [n for n in actors if n.startswith("session") and n in sample["rss"]]
    others = [n for n in actors if not n.startswith("session")]
    cells = [f"{sample['rss'].get(n, 0):>9}/{sample['fds'].get(n, 0):<4}" for n in others]
    rss = [sample["rss"][n] for n in sessions] or [0]
    fds = sum(sample["fds"][n] for n in sessions)
    return (f"{sample['t']:7.0f}  " + "  ".join(cells)
            + f"  {min(rss):>10}..{max(rss):<8}/{fds:<5}  {sample['bytes'] / 1e6:9.1f}")


async def amain(args, coop: Coop) -> int:
    soak = Soak(args, coop)
    soak.start()
    actors = soak.actors()
    samples = await soak.run()
    problems = soak.verdict(samples, actors)
    lines = sum(c.stream.lines for c in soak.clients)
    print(f"\n{len(soak.sessions)} sessions × (1 local + {args.web} web) clients, "
          f"{samples[-1]['t']:.0f} s: {lines} lines and {samples[-1]['bytes'] / 1e6:.1f} MB "
          f"received, {sum(c.sent for c in soak.clients)} inputs typed, "
          f"{soak.churn['opened']} churn clients ({soak.churn['failed']} failed)")
    log = coop.log()
    for bad in ("exited unexpectedly", "actor crashed", "internal error", "Traceback"):
        if bad in log:
            problems.append(f"daemon log mentions {bad!r}")
    print("PASS: no restart, every byte in order, memory and descriptors flat" if not problems
          else "FAIL:\n  " + "\n  ".join(problems[:40]))
    return 0 if not problems else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--web", type=int, default=None,
                    help="web clients per session (default 2, or 5 with 20 sessions)")
    ap.add_argument("--rate", type=float, default=50, help="output lines per second per agent")
    ap.add_argument("--pad", type=int, default=60, help="bytes of padding per output line")
    ap.add_argument("--input-every", type=float, default=0.5, help="seconds between inputs")
    ap.add_argument("--sample", type=float, default=0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=0.25, help="share of the run not judged")
    ap.add_argument("--churn-allowance", type=int, default=2,
                    help="descriptors a churn client may hold at sampling time")
    ap.add_argument("--sandboxed", action="store_true", help="sessions in the real sandbox")
    args = ap.parse_args()
    if args.web is None:
        args.web = 5 if args.sessions >= 20 else 2
    with tempfile.TemporaryDirectory(prefix="coop-soak-") as tmp:
        coop = Coop(Path(tmp), sandboxed=args.sandboxed, idle_timeout=600)
        try:
            return asyncio.run(amain(args, coop))
        finally:
            coop.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
