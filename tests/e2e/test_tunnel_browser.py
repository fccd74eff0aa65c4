"""The page over the tunnel in real headless Chromium (TUN-1, TUN-3, TUN-5, TUN-6, WEB-6).

The daemon, `coop serve`, a static copy of the page and the browser all run inside a
network namespace the test makes (a veth pair carrying 198.18.0.1, tests/tunnel_peer.py):
the offer carries that address, Chromium reaches it, and nothing leaves the machine
(every tunnel is made with --no-stun). Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from tests.browser.harness import (
    DESKTOP,
    PHONE,
    PageWatch,
    js,
    launch,
    screenshot,
    start_serve,
    type_into,
    wait_js,
    wait_line,
    wait_open,
)
from tests.daemon import wait_for
from tests.tunnel_peer import private_network

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

# a failed automatic answer post on a static site is logged by Chromium as a console error
POST_REFUSED = r"Failed to load resource: the server responded with a status of 501"
# so is the server's Cross-Origin-Opener-Policy on a plain-http LAN origin, which it ignores
COOP_IGNORED = r"Cross-Origin-Opener-Policy header has been ignored"


@pytest.fixture
def netns():
    with private_network() as address:
        yield address


def start_daemon(coop, connect_timeout: float = 60) -> None:
    """A daemon inside the namespace, with session "proj" running sh."""
    coop.env["COOP_TUNNEL_TIMEOUT"] = str(connect_timeout)
    coop.ok("-d", cwd=coop.workspace("proj"))


@pytest.fixture
def browser(netns):
    """Chromium inside the namespace (the driver starts there, so the browser does)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def open_page(browser):
    """open_page(url, viewport, tolerate) → a page; none may end its test with script errors."""
    opened = []

    def open_(url, viewport=DESKTOP, tolerate=None):
        context = browser.new_context(viewport=viewport)
        page = context.new_page()
        opened.append(PageWatch(page, tolerate))
        page.goto(url)
        return page

    yield open_
    errors = [e for watch in opened for e in watch.errors]
    assert errors == [], errors


def start_cli(coop, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "coop", "tunnel", "--no-stun", "--no-qr", *args],
                            env=coop.env, cwd=coop.home, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    coop.procs.append(proc)
    return proc


def read_line(proc: subprocess.Popen, timeout: float = 30) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output from coop tunnel"
    return proc.stdout.readline().decode().strip()


@pytest.fixture
def static_site(coop, tmp_path):
    """`coop www export` served by a plain static server that maps /connect to
    connect.html (as common static hosts do) and answers no POST (501)."""
    site = tmp_path / "site"
    coop.ok("www", "export", str(site))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?")[0] == "/connect":
                self.path = "/connect.html"
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Handler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def dashboard(page, coop) -> str:
    """The dashboard's text, once it lists this daemon's machine (TUN-6)."""
    machine_id = (coop.state / "machine_id").read_text().strip()
    wait_js(page, f"document.querySelector('#machine-list [data-machine=\"{machine_id}\"]') !== null",
            what="the machine in the dashboard")
    return page.locator("#machine-list").text_content()


def new_shell(page) -> int:
    before = js(page, "document.querySelectorAll('.tab').length")
    page.click("#new-shell")
    wait_js(page, f"document.querySelectorAll('.tab').length > {before}")
    pty = js(page, "Number(document.querySelector('.tab[aria-selected=\"true\"]').dataset.pty)")
    wait_open(page, pty)
    return pty


def use_the_page(page, coop) -> None:
    """WEB-6: the normal UI over the DataChannels."""
    wait_open(page, 0, timeout=60)  # covers the page's own retry of a lost attach
    item = page.locator("[data-session='proj']")
    wait_for(lambda: "1 phone" in item.inner_text(), what="the tunnel client in the session list")
    assert js(page, "[...document.querySelectorAll('.tab')].map(t => t.textContent)")[0].startswith("agent")
    type_into(page, 0, "echo tun-$((6*7))\n")
    wait_line(page, 0, r"^tun-42$")
    type_into(page, 0, "exit\n")  # FLT-1 over the tunnel too
    wait_line(page, 0, "Blocked from web")
    assert coop.session("proj")["state"] in ("running", "waiting")

    shell = new_shell(page)
    type_into(page, shell, "echo shell-$((3*3))\n")
    wait_line(page, shell, r"^shell-9$")
    assert any(p["id"] == shell and p["role"] == "shell" for p in coop.session("proj")["ptys"])


# -- the public routes (TUN-3) -------------------------------------------------


def fetch(url: str, method: str = "GET", body: dict | bytes | None = None, headers=None):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_connect_page_is_public_and_the_answer_route_needs_the_tunnel_secret(netns, coop):
    start_daemon(coop)
    base = start_serve(coop).base
    status, headers, _ = fetch(base + "/connect")
    assert (status, headers["Location"]) == (308, "/connect/")
    status, headers, body = fetch(base + "/connect/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"] and b"app.js" in body
    for asset in ("app.js", "rtc.js", "connect.js", "connect.css", "envelope.js", "vendor/xterm.mjs"):
        assert fetch(f"{base}/connect/{asset}")[0] == 200, asset
        assert fetch(f"{base}/{asset}")[0] == 403, asset  # outside /connect/: the token, as ever
    for sneaky in ("/connect/../api/sessions", "/connect/%2e%2e/api/sessions", "/connect/.pins",
                   "/connectx", "/api/sessions", "/"):
        assert fetch(base + sneaky)[0] in (403, 404), sneaky

    answer_url = base + "/api/tunnel/answer"
    json_type = {"Content-Type": "application/json"}
    assert fetch(answer_url)[0] == 405
    assert fetch(answer_url, "POST", b"{not json", json_type)[0] == 400
    assert fetch(answer_url, "POST", {"answer": "x"}, json_type)[0] == 400
    status, _, body = fetch(answer_url, "POST", {"answer": "x", "secret": "y" * 12}, json_type)
    assert status == 400 and json.loads(body)["error"] == "INVALID_COMMAND"  # no tunnel at all

    cli = start_cli(coop, "--connect-url", base)
    url = read_line(cli)
    assert url.startswith(base + "/connect#")
    status, _, body = fetch(answer_url, "POST", {"answer": "x", "secret": "y" * 12}, json_type)
    assert (status, json.loads(body)["error"]) == (403, "PERMISSION_DENIED")
    foreign = {**json_type, "Origin": "http://evil.example"}
    assert fetch(answer_url, "POST", {"answer": "x", "secret": "y" * 12}, foreign)[0] == 403
    listing = json.loads(coop.ok("ls", "--json"))["sessions"]
    assert [s["name"] for s in listing] == ["proj"]
    cli.terminate()  # SIGTERM: exits like Ctrl+C
    cli.wait(15)


def test_export_carries_the_connect_page(coop, tmp_path):
    out = tmp_path / "site"
    coop.ok("www", "export", str(out))
    assert (out / "connect.html").read_bytes() == (out / "index.html").read_bytes()
    assert not (out / "connect.html").is_symlink()
    for name in ("rtc.js", "connect.js", "connectscreen.js", "machines.js", "connect.css"):
        assert (out / name).is_file(), name


# -- Chromium over the tunnel --------------------------------------------------


# rtc.js in the page: IPC-5 frames split across DataChannel messages at every byte still
# decode to the same frames; IPC event names become the WebSocket path's names
FRAMES_CUT_ANYWHERE = """
(async () => {
  const {encodeFrame, FrameReader, browserEvent} = await import("./rtc.js");
  const bytes = (text) => new TextEncoder().encode(text);
  const frames = [[0, bytes("hello")], [1, bytes('{"event":"pty_exited","code":3}')], [0, bytes("")]];
  const wire = new Uint8Array(frames.flatMap(([type, payload]) => [...encodeFrame(type, payload)]));
  const want = JSON.stringify(frames.map(([t, p]) => [t, [...p]]));
  const bad = [];
  for (let cut = 0; cut <= wire.length; cut++) {
    const reader = new FrameReader();
    const got = [...reader.feed(wire.slice(0, cut)), ...reader.feed(wire.slice(cut))];
    if (JSON.stringify(got.map(([t, p]) => [t, [...p]])) !== want) bad.push(cut);
  }
  const event = browserEvent({event: "pty_exited", ok: true, pty: 0, code: 3});
  if (JSON.stringify(event) !== '{"type":"exited","pty":0,"code":3}') bad.push(event);
  if (browserEvent({ok: true}) !== null) bad.push("detach answer");
  return bad;
})()
"""


@pytest.mark.slow
def test_page_from_coop_serve_answers_by_itself_and_runs_the_ui(netns, coop, open_page):
    start_daemon(coop)
    # served on the namespace's LAN address, as for a phone: not a secure context
    served = start_serve(coop, "-H", netns)
    base = f"http://{netns}:{served.port}"
    cli = start_cli(coop)
    url = read_line(cli)
    assert url.startswith(base + "/connect#"), url
    page = open_page(url, tolerate=COOP_IGNORED)
    use_the_page(page, coop)
    assert read_line(cli).startswith("connected")
    assert page.url == base + "/connect/"  # the single-use offer left the address bar
    assert js(page, "window.isSecureContext") is False
    assert not page.context.cookies()  # no token was ever involved

    # BYD-1 resume over a fresh DataChannel, with the PtyStream of the WebSocket path
    page.click(".tab[data-pty='0']")
    wait_open(page, 0)
    before = js(page, "window.coopDebug.stats(0)")
    js(page, "window.coopDebug.drop(0)")
    wait_js(page, f"window.coopDebug.stats(0).attached > {before['attached']}")
    wait_open(page, 0)
    assert js(page, "window.coopDebug.stats(0)")["resumed"] > before["resumed"]
    type_into(page, 0, "echo again-$((2+2))\n")
    wait_line(page, 0, r"^again-4$")
    message = js(page, "window.coopDebug.transport.upload('proj', new Blob(['x'])).catch((e) => e.message)")
    assert "not available over the tunnel" in message
    assert js(page, FRAMES_CUT_ANYWHERE) == []
    timing = js(page, "window.coopDebug.transport.timing")
    print(f"answer -> first terminal byte in Chromium: {timing['firstByte'] - timing['answered']:.0f} ms")
    screenshot(page, "tunnel-desktop")

    # TUN-6: the machine is remembered; a reload shows it, not connected
    page.reload()
    text = dashboard(page, coop)
    assert f"{socket.gethostname()}not connected" in text and "last seen just now" in text
    assert "scan the new code" in text
    screenshot(page, "tunnel-dashboard")
    # TUN-5: the browser left, so the tunnel ended
    assert cli.wait(timeout=60) == 0
    assert "tunnel closed" in cli.stderr.read().decode()


@pytest.mark.slow
def test_page_from_a_static_export_shows_the_code_to_paste(netns, coop, open_page, static_site):
    start_daemon(coop)
    cli = start_cli(coop, "--connect-url", static_site)
    url = read_line(cli)
    assert url.startswith(static_site + "/connect#")
    page = open_page(url, viewport=PHONE, tolerate=POST_REFUSED)
    code = wait_js(page, "document.querySelector('#answer-code')?.value || null", timeout=60,
                   what="the answer code")
    assert len(code) < 300 and re.fullmatch(r"[A-Za-z0-9_-]+", code)
    assert "coop tunnel" in page.locator("#answer-help").inner_text()
    screenshot(page, "tunnel-answer-code")
    delivered = coop.run("tunnel", "--answer", code)
    assert delivered.returncode == 0 and b"connected" in delivered.stdout, delivered.stderr
    use_the_page(page, coop)
    screenshot(page, "tunnel-phone")

    cli.send_signal(signal.SIGINT)  # TUN-5: Ctrl+C ends the tunnel; the page says so
    assert cli.wait(timeout=30) == 0
    wait_js(page, "document.querySelector('#connect-status')?.textContent.includes('closed')",
            timeout=40, what="the closed notice")
    assert "scan the new code" in page.locator("#connect-status").text_content()
    assert socket.gethostname() in dashboard(page, coop)
    screenshot(page, "tunnel-closed")
    page.click(f"#machine-list [aria-label='Forget {socket.gethostname()}']")
    wait_js(page, "document.querySelector('#machine-list [data-machine]') === null")
    assert "No machines yet" in page.locator("#machine-list").inner_text()


@pytest.mark.slow
def test_an_answer_from_a_browser_that_left_fails_with_exit_6(netns, coop, open_page, static_site):
    start_daemon(coop, connect_timeout=8)
    cli = start_cli(coop, "--connect-url", static_site)
    page = open_page(read_line(cli), tolerate=POST_REFUSED)
    code = wait_js(page, "document.querySelector('#answer-code')?.value || null", timeout=60,
                   what="the answer code")
    page.context.close()  # the browser is gone before its answer arrives
    delivered = coop.run("tunnel", "--answer", code)
    assert delivered.returncode == 6, delivered
    assert cli.wait(timeout=30) == 6
    err = cli.stderr.read().decode()
    assert "tunnel failed" in err and "coop serve" in err and "forward a port" in err, err
