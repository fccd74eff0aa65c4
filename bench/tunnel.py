"""Tunnel benchmark (issue 6): the DataChannel path next to the WebSocket path.

Runs a real daemon and a Python WebRTC peer playing the browser inside a
network namespace made for the run (root needed; nothing leaves the machine).

    python3 bench/tunnel.py [--keys 300] [--mib 8]

Prints: answer → control channel open and → first terminal byte (p50 of a few
tunnels; the latter also in headless Chromium on the connect page), keystroke
echo p50/p99 over the DataChannel and over `coop serve`'s WebSocket in the same
run, echo while another PTY floods the same tunnel, and output throughput over
both paths.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from coop import websocket  # noqa: E402 (after the sys.path set-up)
from tests.daemon import Coop  # noqa: E402 (after the sys.path set-up)
from tests.tunnel_peer import BrowserPeer, IpcClient, private_network  # noqa: E402 (after the sys.path set-up)

END = b"BENCH-END"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float) -> str:
    return f"{value * 1000:.2f} ms"


class WebSocketTerminal:
    """A browser tab's ``/ws`` connection, minus the browser."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.ws = websocket.Connection(is_client=True)
        self.output = bytearray()

    @classmethod
    async def open(cls, port: int, token: str, session: str, pty: int) -> WebSocketTerminal:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /ws?session={session}&pty={pty}&token={token} HTTP/1.1\r\n"
                      f"Host: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"no WebSocket upgrade: {head[:200]!r}")
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(self.ws.send_binary(data))

    async def read_until(self, needle: bytes, start: int, timeout: float = 60) -> int:
        while (pos := self.output.find(needle, start)) < 0:
            data = await asyncio.wait_for(self.reader.read(1 << 20), timeout)
            if not data:
                raise EOFError("websocket closed")
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, websocket.Binary):
                    self.output += event.data
        return pos + len(needle)

    def close(self) -> None:
        self.writer.close()


async def echo_times(send, read_until, output, keys: int) -> list[float]:
    """Type one key at a time and wait for the terminal to echo it."""
    times = []
    for i in range(keys):
        key = b"abcdefghijklmnopqrstuvwxyz"[i % 26:i % 26 + 1]
        start = len(output())
        t0 = time.perf_counter()
        send(key)
        await read_until(key, start)
        times.append(time.perf_counter() - t0)
        if i % 50 == 49:
            send(b"\x15")  # Ctrl+U: keep the line short
    send(b"\x15")
    return times


async def connect_tunnel(coop: Coop) -> tuple[IpcClient, BrowserPeer, dict]:
    ipc = await IpcClient.connect(coop.socket)
    info = await ipc.ask({"cmd": "tunnel", "no_stun": True})
    peer = BrowserPeer()
    answer = await peer.answer(info["envelope"])
    t0 = time.monotonic()  # PtyStream stamps its first byte with this clock
    await ipc.ask({"cmd": "tunnel_answer", "tunnel": info["tunnel"], "answer": answer})
    await asyncio.wait_for(peer.control_open.wait(), 30)
    info["open_s"] = time.monotonic() - t0
    stream = await peer.attach("bench", 0)
    while stream.first_byte_at is None:
        await asyncio.sleep(0.001)
    info["first_byte_s"] = stream.first_byte_at - t0
    info["stream"] = stream
    return ipc, peer, info


async def browser_first_bytes(ipc: IpcClient, port: int, count: int) -> tuple[list[float], list[float]]:
    """The connect page in headless Chromium, served by ``coop serve``: answer ready in
    the page -> first terminal byte in the page (the automatic answer post, ICE, DTLS,
    SCTP, ``ls``, attach), as the page's RtcTransport stamps them; also answer ready ->
    control channel open."""
    from playwright.async_api import async_playwright

    from tests.browser.harness import CHROMIUM, CHROMIUM_ARGS

    opens, firsts = [], []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for _ in range(count):
                info = await ipc.ask({"cmd": "tunnel", "no_stun": True,
                                      "connect_url": f"http://127.0.0.1:{port}"})
                context = await browser.new_context()
                page = await context.new_page()
                await page.goto(info["url"])
                deadline = time.monotonic() + 30
                probe = "window.coopDebug?.transport.timing.firstByte ? window.coopDebug.transport.timing : null"
                while (timing := await page.evaluate(probe)) is None:
                    if time.monotonic() > deadline:
                        raise RuntimeError("no terminal byte in Chromium within 30 s")
                    await asyncio.sleep(0.01)
                opens.append((timing["connected"] - timing["answered"]) / 1000)
                firsts.append((timing["firstByte"] - timing["answered"]) / 1000)
                await context.close()
                await ipc.ask({"cmd": "tunnel_close", "tunnel": info["tunnel"]})
        finally:
            await browser.close()
    return opens, firsts


async def main(args) -> None:
    with tempfile.TemporaryDirectory(prefix="coop-bench-tunnel-") as tmp, private_network():
        coop = Coop(Path(tmp))
        try:
            coop.ok("-d", "-n", "bench", cwd=coop.workspace("bench"))
            await measure(coop, args)
        finally:
            coop.cleanup()


async def measure(coop: Coop, args) -> None:
    # -- answer → control open → first terminal byte ----------------------------
    opens, firsts = [], []
    for _ in range(args.tunnels):
        ipc, peer, info = await connect_tunnel(coop)
        opens.append(info["open_s"])
        firsts.append(info["first_byte_s"])
        await peer.close()
        ipc.close()
    print(f"answer applied -> control channel open: p50 {ms(statistics.median(opens))}")
    print(f"answer applied -> first terminal byte:  p50 {ms(statistics.median(firsts))} "
          f"(control open, attach, replay)")

    ipc, peer, info = await connect_tunnel(coop)
    agent = info["stream"]
    await asyncio.sleep(0.2)  # let the prompt's replay settle before timing keys

    async def dc_read(key, start):
        await agent.read_until(key, timeout=30, start=start)

    dc = await echo_times(agent.send, dc_read, lambda: agent.output, args.keys)
    print(f"keystroke echo over the DataChannel:    p50 {ms(percentile(dc, 0.5))}  "
          f"p99 {ms(percentile(dc, 0.99))}  ({args.keys} keys)")

    web = await IpcClient.connect(coop.socket)
    token = "bench-token-0123456789abcdef0123"
    served = await web.ask({"cmd": "serve", "host": "127.0.0.1", "port": args.port,
                            "token": token})
    ws = None
    if served.get("ok"):
        ws = await WebSocketTerminal.open(args.port, token, "bench", 0)

        async def ws_read(key, start):
            await ws.read_until(key, start)

        await asyncio.sleep(0.2)
        wst = await echo_times(ws.send, ws_read, lambda: ws.output, args.keys)
        print(f"keystroke echo over the WebSocket:      p50 {ms(percentile(wst, 0.5))}  "
              f"p99 {ms(percentile(wst, 0.99))}  ({args.keys} keys)")
    else:
        print(f"WebSocket path unavailable: {served.get('message')}")

    # -- throughput ---------------------------------------------------------------
    producer = (f"yes \"$(printf %099d 0)\" | head -c {args.mib << 20}; echo BENCH-\"\"END; "
                "exec cat")
    shell = await peer.request({"cmd": "shell", "session": "bench", "command": producer})
    t0 = time.perf_counter()
    stream = await peer.attach("bench", shell["pty"])
    await stream.read_until(END, timeout=300)
    elapsed = time.perf_counter() - t0
    print(f"output throughput over the DataChannel: {len(stream.output) / elapsed / 2**20:.1f} MiB/s "
          f"({len(stream.output) >> 20} MiB in {elapsed:.2f} s)")
    if ws is not None:
        shell = await peer.request({"cmd": "shell", "session": "bench", "command": producer})
        t0 = time.perf_counter()
        flow = await WebSocketTerminal.open(args.port, token, "bench", shell["pty"])
        await flow.read_until(END, 0, timeout=300)
        elapsed = time.perf_counter() - t0
        print(f"output throughput over the WebSocket:   "
              f"{len(flow.output) / elapsed / 2**20:.1f} MiB/s")
        flow.close()

    # -- echo on one channel while another floods the same tunnel (TUN-4) --------
    flood = await peer.request({"cmd": "shell", "session": "bench", "command": "exec yes"})
    flooding = await peer.attach("bench", flood["pty"])
    await flooding.read_until(b"y\r\n", timeout=30)
    busy = await echo_times(agent.send, dc_read, lambda: agent.output, max(50, args.keys // 3))
    received = len(flooding.output)
    print(f"echo while another PTY floods:          p50 {ms(percentile(busy, 0.5))}  "
          f"p99 {ms(percentile(busy, 0.99))}  (flood received {received >> 20} MiB meanwhile)")
    await peer.request({"cmd": "kill", "session": "bench", "force": True})
    if ws is not None:
        ws.close()
        coop.ok("-d", "-n", "chromium", cwd=coop.workspace("chromium"))
        try:  # last: Chromium's tunnels linger in the tunnel actor for a while
            opens, firsts = await browser_first_bytes(ipc, args.port, args.tunnels)
            print(f"Chromium: answer -> control channel open: p50 {ms(statistics.median(opens))}; "
                  f"-> first terminal byte: p50 {ms(statistics.median(firsts))} "
                  f"(connect page from coop serve, automatic answer)")
        except (ImportError, OSError, RuntimeError) as exc:
            print(f"Chromium path unavailable: {exc}")
    await peer.close()
    ipc.close()
    web.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--mib", type=int, default=8)
    parser.add_argument("--tunnels", type=int, default=5)
    parser.add_argument("--port", type=int, default=18931)
    asyncio.run(main(parser.parse_args()))
