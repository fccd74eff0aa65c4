"""The web server on real daemons: WEB-1…WEB-4, WEB-6, SEC-2, SEC-4, BYD-1, BYD-4, BYD-8.

Every test drives a real daemon (``coop`` fixture, sessions on the host
launcher) and its real web actor over loopback: curl and ``http.client`` for
HTTP, the ``websockets`` library as the browser's WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time

import pytest
import websockets

from coop import hostaddrs, websocket
from tests.daemon import Coop, pid_alive, wait_for
from tests.webclient import Web, insecure_context, rss_kib, serve, stop_serving, web_actor_pid

REQUEST_TIMEOUT = 2  # the daemon's COOP_WEB_REQUEST_TIMEOUT in these tests (slowloris)


def start_daemon(c: Coop, name: str = "proj") -> None:
    c.env["COOP_WEB_REQUEST_TIMEOUT"] = str(REQUEST_TIMEOUT)
    ws = c.workspace(name)
    c.ok("-d", "-w", str(ws))


def track_web_actor(c: Coop) -> None:
    """Let the harness end the web actor by pid even if the daemon cannot."""
    pid = web_actor_pid(c)
    if pid:
        c.extra_pids.add(pid)


@pytest.fixture
def web(coop):
    start_daemon(coop)
    server = Web(coop, serve(coop, read_only_token=True))
    track_web_actor(coop)
    return server


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=timeout, check=False)


# -- WEB-1: serving, addresses, restart --------------------------------------


def test_serve_answer_has_urls_and_random_tokens(coop):
    start_daemon(coop)
    answer = serve(coop, read_only_token=True)
    track_web_actor(coop)
    port = answer["port"]
    assert answer["urls"] == [f"http://127.0.0.1:{port}/?token={answer['token']}"]
    assert answer["read_only_urls"] == [f"http://127.0.0.1:{port}/?token={answer['read_only_token']}"]
    assert len(answer["token"]) >= 22 and answer["token"] != answer["read_only_token"]
    again = serve(coop)
    assert again["already"] and again["token"] == answer["token"] and again["port"] == port


def test_all_addresses_give_one_url_per_lan_address(coop):
    start_daemon(coop)
    answer = serve(coop, host="0.0.0.0", token="given-token")
    track_web_actor(coop)
    lan = hostaddrs.ipv4_addresses()
    listed = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=False).stdout
    expected = {m for m in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)", listed) if not m.startswith("127.")}
    assert set(lan) == expected
    port = answer["port"]
    assert answer["urls"] == [f"http://{a}:{port}/?token=given-token" for a in ["127.0.0.1", *lan]]


def test_busy_port_is_one_clear_error(coop):
    start_daemon(coop)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        answer = serve(coop, port=port)
    assert answer["ok"] is False and answer["error"] == "INVALID_COMMAND"
    assert answer["message"].startswith(f"cannot listen on 127.0.0.1:{port}: ")


def test_supervisor_restarts_a_killed_web_actor_with_same_port_and_token(web):
    pid = web_actor_pid(web.coop)

    async def scenario():
        term = await web.term()
        os.kill(pid, signal.SIGKILL)
        new = wait_for(lambda: (p := web_actor_pid(web.coop)) not in (None, pid) and p, 15,
                       what="a new web actor")
        web.coop.extra_pids.add(new)
        # the handed-off WebSocket never depended on the web actor
        await term.send(b"echo survived-$((7*6))\r")
        await term.until(b"survived-42")
        await term.close()

    run(scenario())
    wait_for(lambda: _status_or_none(web, "/api/sessions") == 200, 15, what="web server back")
    again = serve(web.coop)
    assert (again["port"], again["token"]) == (web.port, web.token)
    assert again["read_only_token"] == web.read_only_token


def _status_or_none(web: Web, path: str):
    try:
        return web.request("GET", path)[0]
    except OSError:
        return None


# -- WEB-2, SEC-2: static files ------------------------------------------------


def test_keep_alive_head_etag_and_types(web):
    auth = ["-H", f"Authorization: Bearer {web.token}"]
    base = f"http://127.0.0.1:{web.port}"
    res = curl("-v", *auth, "-o", "/dev/null", "-o", "/dev/null", f"{base}/", f"{base}/style.css")
    assert b"Re-using existing connection" in res.stderr, res.stderr.decode()
    assert res.stderr.count(b"< HTTP/1.1 200 OK") == 2

    status, headers, body = web.request("GET", "/vendor/xterm.mjs")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert body == (web_root() / "vendor/xterm.mjs").read_bytes()
    assert int(headers["Content-Length"]) == len(body)
    head = curl("-I", *auth, f"{base}/vendor/xterm.mjs").stdout.decode()
    assert f"Content-Length: {len(body)}" in head and head.startswith("HTTP/1.1 200")

    etag = headers["ETag"]
    status, headers304, body304 = web.request("GET", "/vendor/xterm.mjs",
                                              headers={"If-None-Match": etag})
    assert (status, body304, headers304["ETag"]) == (304, b"", etag)

    for path, kind in [("/", "text/html"), ("/index.html", "text/html"),
                       ("/vendor/xterm.css", "text/css"), ("/app.js", "text/javascript"),
                       ("/icon.svg", "image/svg+xml")]:
        status, headers, _ = web.request("GET", path)
        assert status == 200 and headers["Content-Type"].startswith(kind), path
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert headers["Cache-Control"] == ("no-store" if kind == "text/html" else "no-cache")
    status, headers, _ = web.request("GET", "/api/sessions")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    assert web.request("POST", "/index.html", b"x")[0] == 405
    assert web.request("GET", "/no/such/file")[0] == 404


def web_root():
    from coop.page import WWW

    return WWW


# -- WEB-3: tokens, cookie, origin ---------------------------------------------


def test_query_token_becomes_a_cookie_and_leaves_the_url(web):
    status, headers, _ = web.request("GET", f"/?a=1&token={web.token}&b=2", token=None)
    assert status == 303 and headers["Location"] == "/?a=1&b=2"
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"coop_token={web.token};")
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= {p.strip() for p in cookie.split(";")}
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    status, headers, body = web.request("GET", "/", headers={"Cookie": f"coop_token={web.token}"},
                                        token=None)
    assert status == 200 and b"<html" in body.lower()
    # API requests with ?token= are answered directly (scripts, curl)
    status, _, body = web.request("GET", f"/api/sessions?token={web.token}", token=None)
    assert status == 200 and json.loads(body)["sessions"][0]["name"] == "proj"


def test_without_a_valid_token_every_route_is_403_and_nothing_else(web, tmp_path):
    other = Coop(tmp_path / "other")
    try:
        start_daemon(other)
        foreign = serve(other)["token"]
        track_web_actor(other)
    finally:
        other.cleanup()
    credentials = [{}, {"Authorization": "Bearer " + secrets.token_urlsafe(24)},
                   {"Authorization": f"Bearer {foreign}"}, {"Cookie": f"coop_token={foreign}"},
                   {"Authorization": f"Basic {web.token}"}, {"Cookie": f"other={web.token}"}]
    routes = [("GET", "/"), ("GET", "/index.html"), ("GET", "/vendor/xterm.mjs"),
              ("HEAD", "/app.js"), ("GET", "/no/such"), ("GET", "/api/sessions"),
              ("POST", "/api/sessions"), ("DELETE", "/api/sessions/proj"),
              ("POST", "/api/sessions/proj/shell"), ("GET", "/api/dirs"),
              ("POST", "/api/sessions/proj/upload?filename=x"), ("GET", "/ws?session=proj")]
    for headers in credentials:
        for method, path in routes:
            status, _, body = web.request(method, path, b"{}" if method == "POST" else None,
                                          headers=headers, token=None)
            assert status == 403, (method, path, headers)
            assert body == (b"" if method == "HEAD" else b"forbidden\n")
        status, _, _ = web.request("GET", f"/?token={foreign}", token=None)
        assert status == 403
    for token in ["", secrets.token_urlsafe(24), foreign]:
        with pytest.raises(websockets.InvalidStatus) as info:
            run(web.term(token=token))
        assert info.value.response.status_code == 403
    assert [s["name"] for s in web.coop.ls()] == ["proj"]  # the DELETE did nothing
    log = web.coop.log()
    assert "GET /no/such → 403" in log and foreign not in log and web.token not in log


def test_websocket_upgrade_needs_same_origin(web):
    for origin in [f"http://evil.example:{web.port}", "http://127.0.0.1:1",
                   f"https://127.0.0.1:{web.port}", "null"]:
        with pytest.raises(websockets.InvalidStatus) as info:
            run(web.term(origin=origin))
        assert info.value.response.status_code == 403, origin
    upgrade = (f"GET /ws?session=proj&token={web.token} HTTP/1.1\r\nHost: 127.0.0.1:{web.port}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode()
    assert web.raw(upgrade).startswith(b"HTTP/1.1 403 ")  # no Origin at all

    async def same_origin():
        term = await web.term()
        assert term.attached == {"type": "attached", "session": "proj", "pty": 0,
                                 "offset": term.attached["offset"]}
        await term.close()

    run(same_origin())


# -- WEB-4: terminals over WebSocket -------------------------------------------


def test_attach_type_echo_and_resize(web):
    async def scenario():
        term = await web.term(cols=91, rows=33)
        await term.send(b"stty size; echo hi-$((6*7))\r")
        await term.until(b"hi-42")
        assert b"33 91" in term.data
        await term.resize(77, 22)
        await term.send("stty size\r")  # a text frame that is not JSON control is input
        await term.until(b"22 77")
        pong = await term.conn.ping(b"are you there")
        await asyncio.wait_for(pong, 10)
        await term.close()
        assert term.conn.protocol.close_rcvd.code == 1000  # the server answered the close handshake

    run(scenario())


def test_agent_exit_and_restart_reach_the_browser_as_events(web):
    async def scenario():
        term = await web.term()
        await term.send(b"kill -9 $$\r")
        exited = await term.event("exited")
        assert (exited["pty"], exited["code"]) == (0, -9)
        restarting = await term.event("restarting")
        assert restarting["delay_ms"] == 1000
        wait_for(lambda: web.coop.session("proj")["ptys"][0]["state"] == "running", 10,
                 what="the restarted agent")
        await term.send(b"echo back-$((4+4))\r")  # the same socket reaches the new agent
        await term.until(b"back-8")
        await term.close()

    run(scenario())


def test_resume_from_offset_gets_exactly_the_missed_bytes(web):
    async def scenario():
        watcher = await web.term()
        first = await web.term()
        await first.send(b"echo one-$((1+1))\r")
        await first.until(b"one-2")
        await watcher.until(b"one-2")
        offset = first.offset
        await first.close()
        typist = await web.term()
        await typist.send(b"echo missed-$((2+3)); echo end-$((3+4))\r")
        await watcher.until(b"end-7")
        resumed = await web.term(offset=offset)
        assert resumed.attached["offset"] == offset
        await resumed.until(b"end-7")
        start = offset - watcher.attached["offset"]
        # the replay may already hold the prompt after end-7 that the watcher's
        # next frame brings: compare what both have
        common = min(len(resumed.data), len(watcher.data) - start)
        assert resumed.data[:common] == watcher.data[start:start + common]
        assert b"missed-5" in resumed.data[:common] and b"end-7" in resumed.data[:common]
        assert b"one-2" not in resumed.data
        for t in (watcher, typist, resumed):
            await t.close()

    run(scenario())


def test_filter_blocks_exit_on_agent_pty_but_not_on_a_shell(web):
    async def scenario():
        agent = await web.term()
        await agent.send(b"exit\r")
        blocked = await agent.event("blocked")
        assert blocked["sequences"] == ["exit\r"]
        await agent.until(b"Blocked from web")
        await agent.send(b"\x04")
        assert (await agent.event("blocked"))["sequences"] == ["\x04"]
        await agent.send(b"echo still-$((2*2))\r")
        await agent.until(b"still-4")

        status, answer = web.api("POST", "/api/sessions/proj/shell", {})
        assert status == 201 and answer["pty"] == 1
        shell = await web.term(pty=1)
        await shell.send(b"exit 3\r")
        exited = await shell.event("exited")
        assert exited["code"] == 3 and exited["pty"] == 1
        close = await shell.closed()
        assert close.code == 1000
        await agent.close()

    run(scenario())


def test_wrong_session_or_pty_closes_with_a_reason(web):
    async def scenario():
        for session, pty, reason in [("nope", 0, "no session 'nope'"),
                                     ("proj", 7, "session proj has no pty 7")]:
            conn = await websockets.connect(web.ws_url(session, pty), origin=web.origin)
            with pytest.raises(websockets.ConnectionClosed) as info:
                await conn.recv()
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (4404, reason)

    run(scenario())
    assert web.request("GET", "/ws?session=..%2fx&token=x", headers={"Origin": web.origin})[0] in (400, 403)


def test_oversized_websocket_message_closes_only_that_client(web):
    async def scenario():
        big = await web.term()
        other = await web.term()
        await big.send(b"x" * ((1 << 20) + 1))
        assert (await big.closed()).code == 1009
        await other.send(b"echo fine-$((5*5))\r")
        await other.until(b"fine-25")
        await other.close()

    run(scenario())


# -- BYD-4: read-only links ---------------------------------------------------------


def test_read_only_token_watches_but_cannot_type_or_change_anything(web):
    ro = web.read_only_token

    async def scenario():
        full = await web.term(cols=100, rows=40)
        watcher = await web.term(token=ro, cols=20, rows=5)
        await watcher.send(b"echo ro-$((1+1))\r")
        await watcher.resize(10, 3)
        await full.send(b"stty size; echo rw-$((2+2))\r")
        await watcher.until(b"rw-4")
        await full.until(b"rw-4")
        assert b"40 100" in full.data  # the watcher's size never counted
        assert b"ro-2" not in watcher.data and b"ro-2" not in full.data
        await full.close()
        await watcher.close()

    run(scenario())
    status, answer = web.api("GET", "/api/sessions", token=ro)
    assert status == 200 and answer["read_only"] is True
    assert web.api("GET", "/api/sessions")[1]["read_only"] is False
    for method, path, body in [("POST", "/api/sessions", {"workspace": "proj"}),
                               ("DELETE", "/api/sessions/proj", None),
                               ("POST", "/api/sessions/proj/shell", {}),
                               ("GET", "/api/dirs", None),
                               ("POST", "/api/sessions/proj/upload?filename=a", {})]:
        status, answer = web.api(method, path, body, token=ro)
        assert (status, answer["error"]) == (403, "PERMISSION_DENIED"), path
    assert len(web.coop.session("proj")["ptys"]) == 1


# -- WEB-4, WEB-5: the API --------------------------------------------------------


def test_api_creates_lists_shells_and_kills_sessions(web):
    web.coop.workspace("second")
    status, answer = web.api("POST", "/api/sessions", {"workspace": "second", "name": "two"})
    assert status == 201 and answer["session"] == "two", answer
    status, answer = web.api("POST", "/api/sessions", {"workspace": "second", "name": "two"})
    assert (status, answer["error"]) == (409, "SESSION_EXISTS")
    status, answer = web.api("POST", "/api/sessions", {"workspace": "missing"})
    assert (status, answer["error"]) == (400, "INVALID_COMMAND")
    (web.coop.home / "bad").mkdir()
    (web.coop.home / "bad" / "coop.toml").write_text("[agent\n")
    status, answer = web.api("POST", "/api/sessions", {"workspace": str(web.coop.home / "bad")})
    assert (status, answer["error"]) == (400, "INVALID_COOPFILE")
    status, _, body = web.request("POST", "/api/sessions", b"{not json")
    assert status == 400 and json.loads(body)["error"] == "INVALID_COMMAND"

    status, answer = web.api("GET", "/api/sessions")
    assert sorted(s["name"] for s in answer["sessions"]) == ["proj", "two"]
    assert web.api("POST", "/api/sessions/two/shell", {"command": "sleep 30"}) == (201, {"ok": True, "pty": 1})
    assert web.api("DELETE", "/api/sessions/two?force=1") == (200, {"ok": True})
    status, answer = web.api("DELETE", "/api/sessions/two")
    assert (status, answer["error"]) == (404, "SESSION_NOT_FOUND")
    assert web.api("POST", "/api/sessions/two/shell", {})[0] == 404
    assert web.api("GET", "/api/nothing")[0] == 404
    assert web.api("PUT", "/api/sessions")[0] == 405


def test_directory_browser_stays_under_home(web, tmp_path):
    home = web.coop.home
    for d in ("alpha", "Beta", ".hidden", "alpha/inner"):
        (home / d).mkdir(parents=True, exist_ok=True)
    (home / "file.txt").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (home / "escape").symlink_to(outside)
    (home / "alias").symlink_to(home / "alpha")
    status, answer = web.api("GET", "/api/dirs")
    assert status == 200 and answer["path"] == str(home.resolve())
    assert answer["dirs"] == ["alias", "alpha", "Beta", "proj", ".coop", ".hidden"]
    assert web.api("GET", "/api/dirs?path=alpha")[1]["dirs"] == ["inner"]
    assert web.api("GET", "/api/dirs?path=alias")[1]["path"] == str((home / "alpha").resolve())
    for path in ["..", "/etc", "escape", "alpha/../..", "%2e%2e", "..%2f..%2fetc"]:
        status, answer = web.api("GET", f"/api/dirs?path={path}")
        assert (status, answer["error"]) == (403, "PERMISSION_DENIED"), path


# -- BYD-8: uploads -------------------------------------------------------------------


def test_upload_chunked_and_plain_land_in_the_workspace(web, tmp_path):
    data = os.urandom(3 << 20)
    src = tmp_path / "shot.png"
    src.write_bytes(data)
    url = f"http://127.0.0.1:{web.port}/api/sessions/proj/upload?filename=shot.png"
    auth = ["-H", f"Authorization: Bearer {web.token}"]
    res = curl(*auth, "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{src}", url)
    answer = json.loads(res.stdout)
    inside = web.coop.session("proj")["workdir"]  # where the session sees its workspace
    assert answer == {"ok": True, "path": f"{inside}/.coop-uploads/shot.png", "name": "shot.png",
                      "size": len(data)}
    uploads = web.coop.home / "proj" / ".coop-uploads"
    assert (uploads / "shot.png").read_bytes() == data
    res = curl(*auth, "--data-binary", f"@{src}", url)  # Content-Length (and Expect: 100-continue)
    assert json.loads(res.stdout)["name"] == "shot-2.png"
    assert (uploads / "shot-2.png").read_bytes() == data
    status, answer = web.api("POST", "/api/sessions/proj/upload?filename=../../.bashrc", {})
    assert status == 201 and answer["name"] == "bashrc"
    assert (uploads / "bashrc").read_bytes() == b"{}"
    assert web.api("POST", "/api/sessions/nope/upload?filename=a", {})[0] == 404


def test_upload_limit_and_planted_symlinks(web, tmp_path):
    url = f"http://127.0.0.1:{web.port}/api/sessions/proj/upload?filename=big.bin"
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate((32 << 20) + 1)
    res = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", f"Authorization: Bearer {web.token}",
               "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{big}", url)
    assert res.stdout == b"413"

    uploads = web.coop.home / "proj" / ".coop-uploads"
    uploads.mkdir()
    target = tmp_path / "target"
    (uploads / "notes.txt").symlink_to(target)
    status, answer = web.api("POST", "/api/sessions/proj/upload?filename=notes.txt", {})
    assert status == 201 and answer["name"] == "notes-2.txt"
    assert not target.exists()

    uploads.rename(web.coop.home / "proj" / "old-uploads")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    uploads.symlink_to(elsewhere)
    status, answer = web.api("POST", "/api/sessions/proj/upload?filename=a.txt", {})
    assert (status, answer["error"]) == (403, "PERMISSION_DENIED")
    assert list(elsewhere.iterdir()) == []


# -- SEC-4: hostile input --------------------------------------------------------------


def test_hostile_http_gets_clear_4xx_and_the_server_keeps_serving(web):
    host = f"Host: 127.0.0.1:{web.port}\r\n"
    auth = f"Authorization: Bearer {web.token}\r\n"
    flood = "".join(f"X-{i}: {'a' * 100}\r\n" for i in range(200))
    assert web.raw(f"GET / HTTP/1.1\r\n{host}{flood}\r\n".encode()).startswith(b"HTTP/1.1 431 ")
    assert web.raw(f"POST /api/sessions HTTP/1.1\r\n{host}{auth}Content-Length: 2000000\r\n\r\n"
                   .encode()).startswith(b"HTTP/1.1 413 ")
    assert web.raw(os.urandom(64).replace(b"\n", b"") + b"\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert web.raw(b"GET /\x00 HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert web.raw(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    for path in ["/../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/vendor/..%2fxterm.mjs",
                 "/vendor%2fxterm.mjs", "/..\\..\\etc\\passwd", "/%00", "/vendor/%2e%2e/index.html",
                 "/api/sessions/..%2f..%2fsock/shell", "/api/sessions/%2e%2e/upload",
                 "/api/../index.html", "/api/sessions/proj/../../x"]:
        answer = web.raw(f"GET {path} HTTP/1.1\r\n{host}{auth}Connection: close\r\n\r\n".encode())
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, (path, answer[:100])
        assert b"root:" not in answer
    assert web.request("GET", "/api/sessions")[0] == 200
    assert pid_alive(web.coop.daemon_pid())


def test_slowloris_is_cut_off_after_the_timeout(web):
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\n")
        answer = b""
        for i in range(40):  # a byte every 0.25 s would keep a naive server waiting forever
            try:
                sock.sendall(b"X-a: b\r\n"[:1] if i % 2 else b"X")
            except OSError:
                break
            time.sleep(0.25)  # the attack's pace, not a synchronisation
            sock.settimeout(0.01)
            try:
                answer += sock.recv(4096)
            except (TimeoutError, ConnectionResetError):
                pass
            sock.settimeout(10)
            if answer:
                break
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert REQUEST_TIMEOUT <= elapsed < REQUEST_TIMEOUT + 3
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as idle:
        idle.settimeout(REQUEST_TIMEOUT + 5)
        assert idle.recv(100) == b""  # a connection that never sends is closed too
    assert web.request("GET", "/api/sessions")[0] == 200


# -- PTY-2 over WebSocket: many clients, one stalled -------------------------------------


@pytest.mark.slow
def test_fifty_clients_get_every_byte_while_a_stalled_one_lags(web):
    session_pid = web.coop.session("proj")["pid"]
    lines = 200_000

    async def scenario():
        stalled = stalled_socket(web)
        terms = [await web.term() for _ in range(50)]
        rss_before = rss_kib(session_pid)
        await terms[0].send(f"seq 1 {lines}; echo seq-$((40+2))-done\r".encode())
        await asyncio.gather(*(t.until(b"seq-42-done", timeout=60) for t in terms))
        expected = "\r\n".join(str(i) for i in range(1, lines + 1)).encode()
        for t in terms:
            start = t.data.index(b"\r\n1\r\n2\r\n") + 2
            assert t.data[start:start + len(expected)] == expected
            assert not [e for e in t.events if e["type"] == "lag"]
        for t in terms[1:]:
            await t.close()
        # now more than the stalled client's queue and socket buffers can hold
        await terms[0].send(b"head -c 24000000 /dev/zero | tr '\\0' x; echo bulk-$((1+1))\r")
        await terms[0].until(b"bulk-2", timeout=60)
        rss_after = rss_kib(session_pid)
        assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)
        lag = read_until_lag(stalled)
        assert lag["dropped"] > 0 and isinstance(lag["offset"], int)
        stalled.close()
        await terms[0].close()

    run(scenario())


def stalled_socket(web: Web) -> socket.socket:
    """A WebSocket client that completes the handshake, then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", web.port))
    sock.sendall((f"GET /ws?session=proj&token={web.token} HTTP/1.1\r\n"
                  f"Host: 127.0.0.1:{web.port}\r\nOrigin: {web.origin}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101 ")
    return sock


def read_until_lag(sock: socket.socket, timeout: float = 60) -> dict:
    conn = websocket.Connection(is_client=True)
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = sock.recv(1 << 20)
        assert data, "closed before the lag event"
        conn.receive_data(data)
        for ev in conn.events():
            if isinstance(ev, websocket.Text) and json.loads(ev.data)["type"] == "lag":
                return json.loads(ev.data)
    raise AssertionError("no lag event")


# -- SEC-2: TLS ---------------------------------------------------------------------------


def test_tls_keeps_its_certificate_and_relays_websockets(coop):
    start_daemon(coop)
    web = Web(coop, serve(coop, tls=True, read_only_token=True))
    track_web_actor(coop)
    assert web.answer["urls"][0].startswith("https://127.0.0.1:")
    tls = coop.state / "tls"
    assert (tls / "key.pem").stat().st_mode & 0o777 == 0o600
    out = subprocess.run(["openssl", "x509", "-in", str(tls / "cert.pem"), "-noout",
                          "-fingerprint", "-sha256"], capture_output=True, text=True, check=False).stdout
    assert out.strip().split("=", 1)[1] == web.answer["fingerprint"]

    status, headers, _ = web.request("GET", f"/?token={web.token}", token=None)
    assert status == 303 and "Secure" in headers["Set-Cookie"]
    assert web.request("GET", "/vendor/xterm.css")[0] == 200

    async def scenario():
        term = await web.term(cols=90, rows=30)
        await term.send(b"stty size; echo tls-$((3*3))\r")
        await term.until(b"tls-9")
        assert b"30 90" in term.data
        await term.resize(70, 20)
        await term.send(b"stty size\r")
        await term.until(b"20 70")
        await term.send(b"exit\r")
        assert (await term.event("blocked"))["sequences"] == ["exit\r"]
        watcher = await web.term(token=web.read_only_token)
        await watcher.send(b"echo ro-$((1+1))\r")
        await term.send(b"echo rw-$((2+2))\r")
        await watcher.until(b"rw-4")
        assert b"ro-2" not in watcher.data
        conn = await websockets.connect(web.ws_url(pty=5), origin=web.origin,
                                        ssl=insecure_context())
        with pytest.raises(websockets.ConnectionClosed) as info:
            await conn.recv()
        assert info.value.rcvd.code == 4404
        await term.close()
        await watcher.close()

    run(scenario())
    assert stop_serving(coop) is True
    again = serve(coop, tls=True)
    track_web_actor(coop)
    assert again["fingerprint"] == web.answer["fingerprint"]


def test_connections_leave_no_descriptors_behind(web):
    web_pid, session_pid = web_actor_pid(web.coop), web.coop.session("proj")["pid"]

    def fds(pid):
        return len(os.listdir(f"/proc/{pid}/fd"))

    async def churn():
        for i in range(60):
            term = await web.term()
            if i % 2:
                await term.close()
            else:
                term.conn.transport.abort()  # a dropped network, no close handshake
        for _ in range(20):
            with pytest.raises(websockets.InvalidStatus):
                await web.term(token="wrong")

    before = fds(web_pid), fds(session_pid)
    run(churn())
    for _ in range(40):
        assert web.request("GET", "/api/sessions")[0] == 200
        web.raw(b"garbage\r\n\r\n")
    wait_for(lambda: (fds(web_pid), fds(session_pid)) == before, 10,
             what=f"descriptors back to {before}")
    assert web.coop.session("proj")["web_clients"] == 0


def test_pipelined_requests_are_answered_in_order(web):
    host = f"Host: 127.0.0.1:{web.port}\r\nAuthorization: Bearer {web.token}\r\n"
    answer = web.raw((f"GET /api/sessions HTTP/1.1\r\n{host}\r\n"
                      f"HEAD /app.js HTTP/1.1\r\n{host}\r\n"
                      f"GET /no/such HTTP/1.1\r\n{host}Connection: close\r\n\r\n").encode())
    statuses = re.findall(rb"HTTP/1.1 (\d{3}) ", answer)
    assert statuses == [b"200", b"200", b"404"]
    assert answer.count(b"Connection: close") == 1
