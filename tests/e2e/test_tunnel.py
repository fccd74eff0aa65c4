"""The WebRTC tunnel end to end (TUN-1 … TUN-5, SEC-3, SEC-4): a real daemon and
a Python peer playing the browser, both inside a test-made network namespace."""

import asyncio
import base64
import json
import os
import signal
import stat
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from coop.client import ClientError, connect
from coop.envelope import decode_answer, decode_offer
from coop.paths import Paths
from tests.daemon import pid_alive
from tests.tunnel_peer import BrowserPeer, IpcClient, private_network

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@pytest.fixture
def netns():
    with private_network() as address:
        yield address


@pytest.fixture
def tunnel_coop(netns, coop):
    """A daemon started inside the namespace, with one session running sh."""
    coop.env["COOP_TUNNEL_TIMEOUT"] = "3"
    coop.ok("-d", cwd=coop.workspace("proj"))
    return coop


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def open_tunnel(coop, ipc=None) -> tuple[IpcClient, dict]:
    ipc = ipc or await IpcClient.connect(coop.socket)
    info = await ipc.ask({"cmd": "tunnel", "no_stun": True})
    assert info["ok"], info
    return ipc, info


async def connected_peer(coop) -> tuple[IpcClient, dict, BrowserPeer]:
    ipc, info = await open_tunnel(coop)
    peer = BrowserPeer()
    code = await peer.answer(info["envelope"])
    applied = await ipc.ask({"cmd": "tunnel_answer", "tunnel": info["tunnel"], "answer": code})
    assert applied == {"ok": True, "tunnel": info["tunnel"], "state": "connecting"}
    await asyncio.wait_for(peer.control_open.wait(), 10)
    await wait_state(ipc, info["tunnel"], "connected")
    return ipc, info, peer


async def wait_state(ipc, tunnel, state, timeout=15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = await ipc.ask({"cmd": "tunnel_status", "tunnel": tunnel})
        if status.get("state") == state:
            return status
        assert time.monotonic() < deadline, f"tunnel never {state}: {status}"
        await asyncio.sleep(0.05)


def test_browser_peer_lists_attaches_types_is_filtered_and_opens_a_shell(tunnel_coop):
    async def scenario():
        ipc, info, peer = await connected_peer(tunnel_coop)
        assert info["url"] == ""  # no connect URL asked for
        listing = await peer.request({"cmd": "ls"})
        assert [s["name"] for s in listing["sessions"]] == ["proj"]

        agent = await peer.attach("proj", 0, cols=100, rows=30)
        assert agent.channel.label == "coop-pty-proj-0"
        assert agent.answer["ok"] and agent.answer["pty"] == 0
        agent.send(b"echo tun-$((6*7))\r")
        await agent.read_until(b"tun-42")
        agent.send(b"exit\r")  # FLT-1: a tunnel client may not end the agent
        blocked = await agent.event("blocked")
        assert blocked["sequences"]
        agent.send(b"echo still-$((2+3))\r")
        await agent.read_until(b"still-5")
        status = (await peer.request({"cmd": "ls"}))["sessions"][0]
        assert status["state"] == "running" and status["tunnel_clients"] == 1

        shell = await peer.request({"cmd": "shell", "session": "proj"})
        assert shell["ok"] and shell["pty"] == 1, shell
        sh = await peer.attach("proj", shell["pty"])
        assert sh.channel.label == "coop-pty-proj-1"
        sh.send(b"echo shell-$((3*3)); exit\r")  # unfiltered: not the agent PTY
        await sh.read_until(b"shell-9")
        await asyncio.wait_for(sh.closed.wait(), 10)  # the shell exited: channel closed

        agent.control({"type": "detach"})
        await asyncio.wait_for(agent.closed.wait(), 10)
        await wait_for_async(lambda: peer.request({"cmd": "ls"}),
                             lambda a: a["sessions"][0]["tunnel_clients"] == 0)
        await peer.close()
        closed = await wait_state(ipc, info["tunnel"], "closed")
        assert "disconnected" in closed["reason"] or "closed" in closed["reason"]
        ipc.close()

    run(scenario())


async def wait_for_async(ask, check, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        answer = await ask()
        if check(answer):
            return answer
        assert time.monotonic() < deadline, f"condition never met: {answer}"
        await asyncio.sleep(0.05)


def test_control_channel_refuses_bad_requests_and_keeps_serving(tunnel_coop):
    async def scenario():
        ipc, _, peer = await connected_peer(tunnel_coop)
        answers = []
        peer.control.on("message", lambda m: answers.append(m))
        for bad in ("not json", "[1,2]", '{"cmd": "exec", "session": "proj", "argv": ["id"]}',
                    '{"cmd": "shutdown"}', '{"cmd": "attach"}', "x" * 100_000):
            peer.control.send(bad)
        peer.control.send(b"\x00binary")
        await wait_for_async(lambda: asyncio.sleep(0.05, len(answers)), lambda n: n >= 7)
        assert all('"ok": false' in a for a in answers), answers
        assert any("not available over a tunnel" in a for a in answers)
        missing = await peer.request({"cmd": "attach", "session": "nope"})
        assert missing["error"] == "SESSION_NOT_FOUND"
        traversal = await peer.request({"cmd": "shell", "session": "../../x"})
        assert traversal["error"] == "SESSION_NOT_FOUND"
        no_pty = await peer.request({"cmd": "attach", "session": "proj", "pty": 9})
        assert no_pty["error"] == "PTY_NOT_FOUND"
        assert (await peer.request({"cmd": "ls"}))["ok"]
        assert tunnel_coop.ls()[0]["name"] == "proj"  # the daemon shrugged it all off
        await peer.close()
        ipc.close()

    run(scenario())


def test_create_and_kill_over_the_tunnel(tunnel_coop):
    ws = tunnel_coop.workspace("other", 'command = "sh"')

    async def scenario():
        ipc, _, peer = await connected_peer(tunnel_coop)
        created = await peer.request({"cmd": "create", "workspace": str(ws), "name": "other"})
        assert created["ok"] and created["session"] == "other", created
        pty = await peer.attach("other")
        pty.send(b"echo other-$((5*5))\r")
        await pty.read_until(b"other-25")
        assert (await peer.request({"cmd": "kill", "session": "other", "force": True}))["ok"]
        await asyncio.wait_for(pty.closed.wait(), 10)
        names = [s["name"] for s in (await peer.request({"cmd": "ls"}))["sessions"]]
        assert names == ["proj"]
        await peer.close()
        ipc.close()

    run(scenario())


def test_answer_rules_and_hostile_answers(tunnel_coop):
    async def scenario():
        ipc, info = await open_tunnel(tunnel_coop)
        tunnel = info["tunnel"]
        not_array = base64.urlsafe_b64encode(zlib.compress(b'"hello"')).decode().rstrip("=")
        for bad, message in (("%%%", "not base64url"), (not_array, "JSON array"),
                             ("A" * 5000, "too long")):
            answer = await ipc.ask({"cmd": "tunnel_answer", "tunnel": tunnel, "answer": bad})
            assert answer["error"] == "INVALID_COMMAND" and message in answer["message"], answer
        peer = BrowserPeer()
        code = await peer.answer(info["envelope"])
        wrong = await ipc.ask({"cmd": "tunnel_answer", "answer": code, "secret": "x" * 12})
        assert wrong["error"] == "PERMISSION_DENIED"
        secret = decode_offer(info["envelope"]).secret
        right = await ipc.ask({"cmd": "tunnel_answer", "answer": code, "secret": secret})
        assert right["ok"] and right["tunnel"] == tunnel
        again = await ipc.ask({"cmd": "tunnel_answer", "tunnel": tunnel, "answer": code})
        assert again["error"] == "INVALID_COMMAND" and "not waiting" in again["message"]
        await wait_state(ipc, tunnel, "connected")
        nobody = await ipc.ask({"cmd": "tunnel_answer", "answer": code})
        assert "no tunnel is waiting" in nobody["message"]
        unknown = await ipc.ask({"cmd": "tunnel_status", "tunnel": "feedbeef"})
        assert unknown["error"] == "INVALID_COMMAND"
        closed = await ipc.ask({"cmd": "tunnel_close", "tunnel": tunnel})
        assert closed["state"] == "closed"
        await wait_for_async(lambda: asyncio.sleep(0, peer.pc.connectionState),
                             lambda s: s in ("closed", "failed"), timeout=40)
        await peer.close()
        ipc.close()

    run(scenario(), timeout=90)


def tunnel_actor_pid(coop) -> int | None:
    out = subprocess.run(["ss", "-xlpn"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if str(coop.state / "tunnel.sock") in line and "pid=" in line:
            return int(line.split("pid=")[1].split(",")[0])
    return None


def test_several_tunnels_at_once_and_shutdown_closes_them(tunnel_coop):
    async def scenario():
        first = await connected_peer(tunnel_coop)
        second = await connected_peer(tunnel_coop)
        assert first[1]["tunnel"] != second[1]["tunnel"]
        streams = [await peer.attach("proj") for _, _, peer in (first, second)]
        streams[0].send(b"echo both-$((1+1))\r")
        for stream in streams:  # both tunnels watch the same agent PTY
            await stream.read_until(b"both-2")
        actor = tunnel_actor_pid(tunnel_coop)
        assert actor and pid_alive(actor)
        result = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "coop", "shutdown", env=tunnel_coop.env)
        assert await result.wait() == 0
        for ipc, _, peer in (first, second):
            await wait_for_async(lambda p=peer: asyncio.sleep(0, p.pc.connectionState),
                                 lambda s: s in ("closed", "failed"), timeout=40)
            await peer.close()
            ipc.close()
        await wait_for_async(lambda: asyncio.sleep(0, pid_alive(actor)), lambda a: not a)
        assert not (tunnel_coop.state / "tunnel.sock").exists()
        assert tunnel_coop.ls()[0]["name"] == "proj"  # sessions outlive the daemon (DMN-3)

    run(scenario(), timeout=120)


def start_cli(coop, *args) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "coop", "tunnel", *args], env=coop.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    coop.procs.append(proc)
    return proc


def test_cli_prints_the_offer_and_exits_6_when_nobody_connects(tunnel_coop):
    cli = start_cli(tunnel_coop, "--no-stun", "--no-qr", "--connect-url", "http://198.18.0.1:8888")
    url = cli.stdout.readline().strip()
    assert url.startswith("http://198.18.0.1:8888/connect#"), url
    peer_code = {}

    async def answer_then_vanish():
        peer = BrowserPeer()
        peer_code["code"] = await peer.answer(url)
        await peer.close()  # an answer from a peer that is no longer there

    run(answer_then_vanish())
    deliver = start_cli(tunnel_coop, "--answer", peer_code["code"])
    out, err = deliver.communicate(timeout=30)
    assert deliver.returncode == 6, (out, err)
    assert cli.wait(timeout=30) == 6
    err = cli.stderr.read()
    assert "no connection within 3 s" in err and "coop serve" in err, err
    assert len(err.strip().splitlines()) == 1


def test_cli_connects_and_ctrl_c_closes_the_tunnel(tunnel_coop):
    cli = start_cli(tunnel_coop, "--no-stun", "--no-qr")
    assert "offer code" in cli.stdout.readline()
    code = cli.stdout.readline().strip()

    async def scenario():
        peer = BrowserPeer()
        answer = await peer.answer(code)
        deliver = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "coop", "tunnel", "--answer", answer, env=tunnel_coop.env,
            stdout=asyncio.subprocess.PIPE)
        out, _ = await deliver.communicate()
        assert deliver.returncode == 0 and b"connected" in out
        await asyncio.wait_for(peer.control_open.wait(), 10)
        assert (await peer.request({"cmd": "ls"}))["ok"]
        return peer

    async def closed(peer):
        await wait_for_async(lambda: asyncio.sleep(0, peer.pc.connectionState),
                             lambda s: s in ("closed", "failed"), timeout=40)
        await peer.close()

    loop = asyncio.new_event_loop()
    try:
        peer = loop.run_until_complete(scenario())
        assert cli.stdout.readline().startswith("connected")
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=15) == 0
        loop.run_until_complete(asyncio.wait_for(closed(peer), 60))
    finally:
        loop.close()


# -- a real browser: coop/www/envelope.js in headless Chromium ----------------

WWW = Path(__file__).resolve().parents[2] / "coop" / "www"

# Runs in the page: answer the offer like the connect page, then use the channels.
BROWSER_SIDE = """
async ([offerCode]) => {
  const env = await import("/envelope.js");
  const offer = await env.decodeOffer("http://coop.test/connect#" + offerCode);
  const pc = new RTCPeerConnection();
  window.coop = { pc, offer, control: null, ptys: {} };
  pc.ondatachannel = ({ channel }) => {
    channel.binaryType = "arraybuffer";
    if (channel.label === "coop-control") { window.coop.control = channel; return; }
    const pty = { answer: null, text: "", buf: new Uint8Array(0), channel };
    channel.onmessage = ({ data }) => {
      if (typeof data === "string") { pty.answer = JSON.parse(data); window.coop.ptys[pty.answer.id] = pty; return; }
      const joined = new Uint8Array(pty.buf.length + data.byteLength);
      joined.set(pty.buf); joined.set(new Uint8Array(data), pty.buf.length);
      let at = 0;
      while (joined.length - at >= 4) {
        const len = new DataView(joined.buffer).getUint32(at);
        if (joined.length - at - 4 < len) break;
        if (joined[at + 4] === 0) pty.text += new TextDecoder().decode(joined.slice(at + 5, at + 4 + len));
        at += 4 + len;
      }
      pty.buf = joined.slice(at);
    };
  };
  await pc.setRemoteDescription({ type: "offer", sdp: offer.sdp });
  await pc.setLocalDescription(await pc.createAnswer());
  if (pc.iceGatheringState !== "complete") {
    await new Promise((done) => pc.addEventListener("icegatheringstatechange",
      () => pc.iceGatheringState === "complete" && done()));
  }
  const answer = await env.encodeAnswer(pc.localDescription.sdp);
  return { answer, secret: offer.secret, hostname: offer.hostname, machineId: offer.machineId };
}
"""

USE_CHANNELS = """
async () => {
  const until = async (test, what) => {
    for (let i = 0; i < 400; i++) { const v = test(); if (v) return v; await new Promise((r) => setTimeout(r, 25)); }
    throw new Error("timed out waiting for " + what);
  };
  const control = await until(() => window.coop.control?.readyState === "open" && window.coop.control, "control");
  const answers = {};
  control.onmessage = ({ data }) => { const a = JSON.parse(data); answers[a.id] = a; };
  control.send(JSON.stringify({ id: 1, cmd: "ls" }));
  const ls = await until(() => answers[1], "ls");
  control.send(JSON.stringify({ id: 2, cmd: "attach", session: "proj", pty: 0, cols: 80, rows: 24 }));
  const pty = await until(() => window.coop.ptys[2]?.channel.readyState === "open" && window.coop.ptys[2], "pty");
  const keys = new TextEncoder().encode("echo chrome-$((6*7))\\r");
  const frame = new Uint8Array(5 + keys.length);
  new DataView(frame.buffer).setUint32(0, keys.length + 1);
  frame.set(keys, 5);
  pty.channel.send(frame);
  await until(() => pty.text.includes("chrome-42"), "echo");
  return { sessions: ls.sessions.map((s) => s.name), attach: pty.answer, label: pty.channel.label };
}
"""

HOSTILE_IN_PAGE = """
async ([codes]) => {
  const env = await import("/envelope.js");
  const out = [];
  for (const code of codes) {
    try { await env.decodeOffer(code); out.push("accepted"); }
    catch (err) { out.push((err instanceof env.EnvelopeError ? "" : "OTHER ") + err.message); }
  }
  return out;
}
"""


@pytest.fixture
def chromium_page():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("no chromium on this machine")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            files = {"/": ("text/html", "<!doctype html><title>coop test</title>"),
                     "/envelope.js": ("text/javascript", (WWW / "envelope.js").read_text())}

            def serve(route):
                path = "/" + route.request.url.split("/", 3)[3]
                kind, body = files.get(path, ("text/plain", ""))
                route.fulfill(status=200 if path in files else 404, content_type=kind, body=body)

            page.route("http://coop.test/**", serve)
            page.goto("http://coop.test/")
            yield page
        finally:
            browser.close()


@pytest.mark.slow
def test_chromium_connects_with_envelope_js_through_the_automatic_path(tunnel_coop, chromium_page):
    conn = connect(Paths(state=tunnel_coop.state, socket=tunnel_coop.socket), autostart=False)
    info = conn.request({"cmd": "tunnel", "no_stun": True})
    got = chromium_page.evaluate(BROWSER_SIDE, [info["envelope"]])
    assert got["hostname"] and len(got["machineId"]) == 16
    assert len(got["answer"]) < 300, got["answer"]
    answer = decode_answer(got["answer"])  # envelope.js and envelope.py agree
    assert answer.setup == "active" and not any(c.mdns for c in answer.candidates)
    # what the web actor does with the page's automatic post (TUN-3)
    applied = conn.request({"cmd": "tunnel_answer", "answer": got["answer"],
                            "secret": got["secret"]})
    assert applied["tunnel"] == info["tunnel"]
    deadline = time.monotonic() + 15
    while conn.request({"cmd": "tunnel_status", "tunnel": info["tunnel"]})["state"] != "connected":
        assert time.monotonic() < deadline, "Chromium never connected"
        time.sleep(0.05)
    used = chromium_page.evaluate(USE_CHANNELS)
    assert used["sessions"] == ["proj"]
    assert used["label"] == "coop-pty-proj-0" and used["attach"]["ok"]


def test_envelope_js_refuses_hostile_offers(netns, chromium_page):
    bomb = base64.urlsafe_b64encode(zlib.compress(b"[1," + b" " * 3_000_000 + b"]")).decode()
    wrong_fp = base64.urlsafe_b64encode(zlib.compress(json.dumps(
        [1, "abcd", "p" * 22, "zz", [], 5000, 65536, "0123456789abcdef", "h", "s" * 12]).encode()
    )).decode().rstrip("=")
    injected = base64.urlsafe_b64encode(zlib.compress(json.dumps(
        [1, "abcd\r\na=x", "p" * 22, "A" * 43, [], 5000, 65536, "0123456789abcdef", "h",
         "s" * 12]).encode())).decode().rstrip("=")
    out = chromium_page.evaluate(HOSTILE_IN_PAGE, [["%%%", "AAAAAAAA", bomb.rstrip("="),
                                                    wrong_fp, injected, "", "A" * 5000]])
    assert out == ["offer code is not base64url (copy it again, whole)",
                   "offer code is damaged (not zlib data)",
                   "code expands beyond 4096 bytes",
                   "fingerprint must be a sha-256 digest in base64url",
                   "ICE ufrag must be 4-256 ice-chars",
                   "empty offer code",
                   "offer code is too long (5000 characters)"], out


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.slow
def test_a_flooding_pty_channel_does_not_stall_another(tunnel_coop):
    """TUN-4: `yes` on one channel; keys on the agent's channel still echo
    promptly, and the tunnel actor's memory stays bounded."""
    async def scenario():
        ipc, _, peer = await connected_peer(tunnel_coop)
        agent = await peer.attach("proj", 0)
        agent.send(b"echo ready-$((1+1))\r")
        await agent.read_until(b"ready-2")
        flood = await peer.request({"cmd": "shell", "session": "proj", "command": "exec yes"})
        flooding = await peer.attach("proj", flood["pty"])
        await flooding.read_until(b"y\r\n")
        actor = tunnel_actor_pid(tunnel_coop)
        rss_before = rss_kib(actor)
        times = []
        for i in range(20):
            start, key = len(agent.output), b"abcdefghijklmnopqrst"[i:i + 1]
            t0 = time.monotonic()
            agent.send(key)
            await agent.read_until(key, start=start, timeout=10)
            times.append(time.monotonic() - t0)
        received = len(flooding.output)
        await flooding.read_until(b"y\r\n", start=received)  # still flowing
        print("echo times behind the flood:", " ".join(f"{t:.3f}" for t in times))
        # a lost SCTP chunk costs a retransmission timeout (>= 1 s) now and then;
        # an unbounded queue behind `yes` would cost ever more seconds instead
        assert sorted(times)[len(times) // 2] < 0.5 and max(times) < 8, times
        assert rss_kib(actor) - rss_before < 64 << 10  # not buffering the flood
        await peer.request({"cmd": "kill", "session": "proj", "force": True})
        await peer.close()
        ipc.close()

    run(scenario())


def test_tunnel_socket_is_private_and_never_a_symlink(tunnel_coop, tmp_path):
    sock = tunnel_coop.state / "tunnel.sock"
    os.symlink(tmp_path / "elsewhere", sock)
    conn = connect(Paths(state=tunnel_coop.state, socket=tunnel_coop.socket), autostart=False)
    with pytest.raises(ClientError, match="symlink"):
        conn.request({"cmd": "tunnel", "no_stun": True})
    assert not (tmp_path / "elsewhere").exists()
    os.unlink(sock)
    info = conn.request({"cmd": "tunnel", "no_stun": True})
    assert info["envelope"] and stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    conn.request({"cmd": "tunnel_close", "tunnel": info["tunnel"]})


def test_only_the_tunnel_actor_imports_aiortc(tunnel_coop):
    """The CLI never loads aiortc; the supervisor imports the actor module, but
    aiortc loads only in the forked actor."""
    probe = ("import sys, coop.cli, coop.client, coop.tunnel_cli, coop.envelope, "
             "coop.actors.supervisor, coop.actors.tunnel; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiortc', 'aioice', 'av')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
    conn = connect(Paths(state=tunnel_coop.state, socket=tunnel_coop.socket), autostart=False)
    info = conn.request({"cmd": "tunnel", "no_stun": True})
    actor = tunnel_actor_pid(tunnel_coop)
    with open(f"/proc/{actor}/maps") as f:
        assert "libavcodec" in f.read()  # aiortc's media stack: the marker works
    with open(f"/proc/{tunnel_coop.daemon_pid()}/maps") as f:
        assert "libavcodec" not in f.read()
    conn.request({"cmd": "tunnel_close", "tunnel": info["tunnel"]})


class StunResponder(asyncio.DatagramProtocol):
    """A STUN server inside the test's namespace: every binding request learns
    it is at 198.18.0.77:40000 (a pretend NAT)."""

    def connection_made(self, transport):
        self.transport = transport
        self.requests = 0

    def datagram_received(self, data, addr):
        from aioice import stun

        request = stun.parse_message(data)
        response = stun.Message(message_method=stun.Method.BINDING,
                                message_class=stun.Class.RESPONSE,
                                transaction_id=request.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = ("198.18.0.77", 40000)
        self.requests += 1
        self.transport.sendto(bytes(response), addr)


def test_offer_carries_a_server_reflexive_candidate_from_the_given_stun(tunnel_coop, netns):
    async def scenario():
        transport, responder = await asyncio.get_running_loop().create_datagram_endpoint(
            StunResponder, local_addr=(netns, 3478))
        try:
            ipc = await IpcClient.connect(tunnel_coop.socket)
            bad = await ipc.ask({"cmd": "tunnel", "stun": ["http://x"]})
            assert bad["error"] == "INVALID_COMMAND"
            info = await ipc.ask({"cmd": "tunnel", "stun": [f"stun:{netns}:3478"]})
            assert info["ok"], info
            candidates = decode_offer(info["envelope"]).description.candidates
            assert ("198.18.0.77", 40000, "srflx") in [(c.address, c.port, c.type)
                                                       for c in candidates]
            assert responder.requests >= 1
            ipc.close()
        finally:
            transport.close()

    run(scenario())
