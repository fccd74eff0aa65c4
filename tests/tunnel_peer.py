"""A Python WebRTC peer that plays the browser of ``coop tunnel`` (TUN-4),
and the network namespace it needs, for tests and ``bench/tunnel.py``.

aioice gathers no loopback candidates, so both peers run inside a network
namespace made here, with a veth pair carrying 198.18.0.1 (a benchmark
address): nothing ever leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import subprocess
import time

from coop import envelope, protocol
from coop.protocol import FrameDecoder, FrameType

CLONE_NEWNET = 0x40000000
# Chromium drops requests in flight (ERR_NETWORK_CHANGED) when an interface or address
# changes under it, so the namespace is settled before anyone uses it: no IPv6
# autoconfiguration on the veth pair (lo keeps ::1), and both ends' carrier is up.
NETNS_SETUP = ("echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6 && "
               "ip link set lo up && ip link add v0 type veth peer name v1 && "
               "ip addr add 198.18.0.1/24 dev v0 && ip link set v0 up && ip link set v1 up && "
               "for i in $(seq 1000); do "
               "ip -o link show up | grep -c 'state UP' | grep -qx 2 && break; sleep 0.005; done && "
               "echo ready && exec sleep 3600")


@contextlib.contextmanager
def private_network():
    """Move the calling thread (and what it starts) into a fresh network
    namespace for the duration; setns affects this thread only."""
    libc = ctypes.CDLL(None, use_errno=True)
    holder = subprocess.Popen(["unshare", "-n", "sh", "-c", NETNS_SETUP], stdout=subprocess.PIPE)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    entered = False
    try:
        if holder.stdout.readline().strip() != b"ready":
            raise RuntimeError("could not set up a network namespace (root and veth needed)")
        ns = os.open(f"/proc/{holder.pid}/ns/net", os.O_RDONLY)
        try:
            if libc.setns(ns, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            entered = True
        finally:
            os.close(ns)
        yield "198.18.0.1"
    finally:
        if entered:
            libc.setns(original, CLONE_NEWNET)
        os.close(original)
        holder.kill()
        holder.wait()


class IpcClient:
    """An asyncio IPC client of the daemon (handshake, then request/answer)."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, path) -> IpcClient:
        reader, writer = await asyncio.open_unix_connection(str(path))
        client = cls(reader, writer)
        assert (await client.ask(protocol.hello()))["ok"]
        return client

    async def ask(self, msg: dict, timeout: float = 30) -> dict:
        self.writer.write(protocol.encode_message(msg))
        head = await asyncio.wait_for(self.reader.readexactly(4), timeout)
        body = await self.reader.readexactly(int.from_bytes(head, "big"))
        return json.loads(body)

    def close(self) -> None:
        self.writer.close()


class PtyStream:
    """A ``coop-pty-*`` channel as the browser sees it."""

    def __init__(self, channel, answer: dict):
        self.channel = channel
        self.answer = answer
        self.output = bytearray()
        self.events: list[dict] = []
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self._decoder = FrameDecoder()
        self.first_byte_at: float | None = None

    def feed(self, message) -> None:
        for payload in self._decoder.feed(message):
            kind, body = protocol.split_stream_frame(payload)
            if kind == FrameType.DATA:
                if self.first_byte_at is None:
                    self.first_byte_at = time.monotonic()
                self.output += body
            else:
                self.events.append(json.loads(body))
        self._changed.set()

    def send(self, data: bytes) -> None:
        self.channel.send(protocol.encode_frame(FrameType.DATA, data))

    def control(self, obj: dict) -> None:
        self.channel.send(protocol.encode_control(obj))

    async def read_until(self, needle: bytes, timeout: float = 10, start: int = 0) -> int:
        """Wait for ``needle`` in the output after ``start``; its end offset."""
        deadline = time.monotonic() + timeout
        while (pos := self.output.find(needle, start)) < 0:
            left = deadline - time.monotonic()
            if left <= 0 or self.closed.is_set():
                raise AssertionError(f"no {needle!r} in {bytes(self.output[-300:])!r}")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
        return pos + len(needle)

    async def event(self, name: str, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events:
                if ev.get("event") == name:
                    return ev
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name} event in {self.events}")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.5)


class BrowserPeer:
    """Answers an offer code like the connect page, then speaks the channels."""

    def __init__(self):
        from aiortc import RTCConfiguration, RTCPeerConnection

        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.control = None
        self.control_open = asyncio.Event()
        self._answers: dict[int, asyncio.Future] = {}
        self._streams: dict[int, asyncio.Future] = {}
        self._next = 0
        self.pc.on("datachannel", self._on_channel)

    async def answer(self, offer_code: str) -> str:
        from aiortc import RTCSessionDescription

        offer = envelope.decode_offer(offer_code)
        await self.pc.setRemoteDescription(RTCSessionDescription(offer.description.to_sdp(),
                                                                 "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return envelope.encode_answer(envelope.Description.from_sdp(self.pc.localDescription.sdp))

    def _on_channel(self, channel) -> None:
        if channel.label == "coop-control":
            self.control = channel
            channel.on("message", self._on_control)
            self.control_open.set()
            return
        state: dict = {}

        def on_message(message):
            if "stream" not in state:
                answer = json.loads(message)
                state["stream"] = PtyStream(channel, answer)
                channel.on("close", state["stream"].closed.set)
                self._streams.setdefault(answer.get("id"), asyncio.Future()).set_result(
                    state["stream"])
            else:
                state["stream"].feed(message)

        channel.on("message", on_message)

    def _on_control(self, message) -> None:
        answer = json.loads(message)
        future = self._answers.pop(answer.get("id"), None)
        if future and not future.done():
            future.set_result(answer)

    async def request(self, msg: dict, timeout: float = 30) -> dict:
        self._next += 1
        future = asyncio.get_running_loop().create_future()
        self._answers[self._next] = future
        self.control.send(json.dumps({**msg, "id": self._next}))
        return await asyncio.wait_for(future, timeout)

    async def attach(self, session: str, pty: int = 0, **extra) -> PtyStream:
        answer = await self.request({"cmd": "attach", "session": session, "pty": pty, **extra})
        assert answer["ok"], answer
        stream = self._streams.setdefault(answer["id"], asyncio.Future())
        return await asyncio.wait_for(stream, 10)

    async def close(self) -> None:
        await self.pc.close()
