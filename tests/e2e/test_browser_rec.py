"""BYD-3 recordings in the web UI and BYD-2 browser notifications, in real headless Chromium
against a real daemon and ``coop serve``: the recordings API (listing, serving, refusing
paths that are not recordings), the player in the terminal panel, and a Notification for
an agent that rings the bell. Screenshot: test-artifacts/rec-player.png."""

from __future__ import annotations

import http.client
import json
import os

import pytest

from tests.browser.harness import (
    DESKTOP,
    TOKEN,
    PageWatch,
    js,
    screenshot,
    start_serve,
    wait_js,
    wait_line,
    wait_open,
)
from tests.daemon import wait_for
from tests.e2e.test_browser import browser, driver  # noqa: F401 - the module's Chromium fixtures

pytestmark = pytest.mark.slow


def agent_workspace(coop, name: str, script: str, record: bool = True):
    """A session whose agent runs ``sh -c script`` in its workspace."""
    ws = coop.workspace(name, f'[agent]\ncommand = "sh"\nargs = ["-c", {json.dumps(script)}]\n'
                              f'[session]\nrecord = {"true" if record else "false"}\n')
    return ws


def casts(coop, name: str = "proj") -> list:
    rec = coop.state / "sessions" / name / "rec"
    return sorted(rec.glob("*.cast")) if rec.is_dir() else []


def get(served, path: str, token: str | None = TOKEN, method: str = "GET"):
    """(status, content type, body) of one request sent with this exact path."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, headers=headers)
        res = conn.getresponse()
        return res.status, res.getheader("Content-Type"), res.read()
    finally:
        conn.close()


@pytest.fixture
def page_of(browser):  # noqa: F811 - the imported fixture
    """page_of(served, **context options) → a desktop page on the coop link; each must end
    its test without script errors."""
    opened = []

    def open_(served, permissions=()):
        context = browser.new_context(viewport=DESKTOP)
        if permissions:
            context.grant_permissions(list(permissions), origin=served.base)
        page = context.new_page()
        opened.append((context, PageWatch(page)))
        page.goto(served.link)
        return page

    try:
        yield open_
        assert [e for _, watch in opened for e in watch.errors] == []
    finally:
        for context, _ in opened:
            context.close()


# -- BYD-3: the API -------------------------------------------------------------------------


def test_recordings_outlive_the_session_and_read_only_links_may_watch(coop):
    ws = agent_workspace(coop, "proj", "printf 'api-text\\n\\a'; exec sleep 1000")
    coop.ok("-d", cwd=ws)
    # the bell marks the agent waiting once the session has taken (and recorded) the output
    wait_for(lambda: coop.session("proj")["state"] == "waiting", what="the agent printed")
    coop.ok("kill", "proj")
    assert all(s["name"] != "proj" for s in coop.ls())
    served = start_serve(coop, "--read-only-token")
    read_only = served.read_only_link.split("token=", 1)[1]
    [cast] = casts(coop)
    for token in (TOKEN, read_only):
        status, kind, body = get(served, "/api/sessions/proj/recordings", token)
        assert (status, kind) == (200, "application/json")
        [entry] = json.loads(body)["recordings"]
        assert entry["name"] == cast.name and entry["pty"] == 0
        assert entry["size"] == cast.stat().st_size and entry["duration"] >= 0
        assert abs(entry["started"] - cast.stat().st_mtime) < 120
        status, kind, body = get(served, f"/api/sessions/proj/recordings/{cast.name}", token)
        assert (status, kind) == (200, "application/x-asciicast")
        assert body == cast.read_bytes()
        header, *events = [json.loads(line) for line in body.decode().splitlines()]
        assert header["version"] == 2
        assert "api-text" in "".join(e[2] for e in events if e[1] == "o")
    assert get(served, "/api/sessions/proj", read_only, method="DELETE")[0] == 403
    assert get(served, "/api/sessions/proj/recordings/x", TOKEN, method="POST")[0] == 405
    assert get(served, "/api/sessions/proj/recordings", token=None)[0] == 403


def test_paths_that_are_not_recordings_are_refused(coop, tmp_path):
    ws = agent_workspace(coop, "proj", "exec sleep 1000")
    coop.ok("-d", cwd=ws)
    [real] = wait_for(lambda: casts(coop), what="a recording")
    rec = coop.state / "sessions" / "proj" / "rec"
    secret = tmp_path / "secret.cast"
    secret.write_text('{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "secret"]\n')
    (rec / "0-1-900.cast").symlink_to(secret)
    os.mkfifo(rec / "0-1-901.cast")
    (coop.state / "sessions" / "evil").mkdir()
    (coop.state / "sessions" / "evil" / "rec").symlink_to(rec)
    (coop.state / "sessions" / "alias").symlink_to(coop.state / "sessions" / "proj")
    served = start_serve(coop)

    status, _, body = get(served, "/api/sessions/proj/recordings")
    assert status == 200
    assert [r["name"] for r in json.loads(body)["recordings"]] == [real.name]
    refused = [
        "/api/sessions/proj/recordings/0-1-900.cast",  # a planted symlink
        "/api/sessions/proj/recordings/0-1-901.cast",  # a planted FIFO
        "/api/sessions/proj/recordings/../x",
        "/api/sessions/proj/recordings/%2e%2e",
        "/api/sessions/proj/recordings/..%2F..%2Fdaemon.pid",
        "/api/sessions/proj/recordings/%2e%2e%2fsock",
        "/api/sessions/proj/recordings/x.cast",
        "/api/sessions/%2e%2e/recordings",
        "/api/sessions/..%2Fsessions%2Fproj/recordings",
        "/api/sessions/ghost/recordings",
        "/api/sessions/ghost/recordings/0-1-000.cast",
        "/api/sessions/evil/recordings",  # rec/ is a symlink
        "/api/sessions/alias/recordings",  # the session directory is a symlink
        f"/api/sessions/alias/recordings/{real.name}",
    ]
    for path in refused:
        status, _, body = get(served, path)
        assert 400 <= status < 500, (path, status)
        assert b"secret" not in body and b"sleep" not in body, path


# -- BYD-3: the player ------------------------------------------------------------------------


def test_player_replays_a_recording_in_the_terminal_panel(coop, page_of):
    ws = agent_workspace(coop, "proj", "read go < go; printf '\\033[1;32mrec-hello\\033[0m\\n'; "
                                       "sleep 1.5; printf 'rec-world\\n'; exec sleep 1000")
    os.mkfifo(ws / "go")
    coop.ok("-d", cwd=ws)
    served = start_serve(coop)
    page = page_of(served)
    wait_open(page, 0)
    size = js(page, "window.coopDebug.size(0)")
    wait_for(lambda: coop.session("proj")["ptys"][0]["size"] == [size["cols"], size["rows"]],
             what="the PTY took the page's size")
    with open(ws / "go", "w") as fifo:  # the agent is waiting on it
        fifo.write("go\n")
    wait_line(page, 0, r"^rec-world$", timeout=15)
    [cast] = casts(coop)
    wait_for(lambda: "rec-world" in cast.read_text(), what="the recording flushed")
    events = [json.loads(line) for line in cast.read_text().splitlines()[1:]]
    resizes = [e[2] for e in events if e[1] == "r"]
    assert resizes[-1] == f"{size['cols']}x{size['rows']}"

    page.click("[data-session='proj'] [data-role='recordings']")
    wait_js(page, "window.coopDebug.player?.state === 'playing' || window.coopDebug.player?.state === 'ended'",
            what="the player started")
    assert js(page, "document.getElementById('panes').hidden")
    assert js(page, "document.querySelectorAll('.player-picker option').length") == 1
    page.click(".player-speeds [data-speed='10']")
    page.click(".player-bar >> text=Restart")
    # xterm.js parses a write in a later task: the last event's line follows the end
    player = wait_js(page, "window.coopDebug.player?.state === 'ended' && "
                           "window.coopDebug.player.lines.includes('rec-world') && window.coopDebug.player",
                     timeout=10, what="the replay ended with its last line shown")
    assert player["speed"] == 10
    assert "rec-hello" in player["lines"] and "rec-world" in player["lines"]
    assert player["size"] == size  # resized on the recorded "r" event
    # 10x: the recording's own time divided by ten (timers fire late, never early)
    length = events[-1][0]
    elapsed = (player["timing"]["ended"] - player["timing"]["started"]) / 1000
    assert length / 10 * 0.95 <= elapsed < length / 2, (length, elapsed)
    assert js(page, "document.querySelector('.player-speeds [data-speed=\"10\"]').getAttribute('aria-pressed')") == "true"
    assert js(page, "document.querySelector('.player-time').textContent").endswith(
        f"/ {int(length) // 60}:{int(length) % 60:02d}")
    shot = screenshot(page, "rec-player")
    assert shot.stat().st_size > 10_000

    page.click(".player-play")  # "Replay" after the end
    wait_js(page, "window.coopDebug.player.state === 'playing'")
    page.click(".player-play")
    assert js(page, "window.coopDebug.player.state") == "paused"
    page.click(".player-close")
    wait_js(page, "window.coopDebug.player === null && !document.getElementById('panes').hidden")
    wait_open(page, 0)


def test_session_without_recordings_says_how_to_record(coop, page_of):
    ws = agent_workspace(coop, "proj", "exec sleep 1000", record=False)
    coop.ok("-d", cwd=ws)
    page = page_of(start_serve(coop))
    wait_open(page, 0)
    page.click("[data-session='proj'] [data-role='recordings']")
    wait_js(page, "[...document.querySelectorAll('.notice-text')].some(n => n.textContent.includes('record = true'))",
            what="the how-to-record notice")
    assert js(page, "window.coopDebug.player") is None


# -- BYD-2: a browser notification for an agent that rings the bell ---------------------------


def test_bell_in_another_session_notifies_and_the_click_opens_its_agent(coop, page_of):
    proj = agent_workspace(coop, "proj", "exec sleep 1000", record=False)
    coop.ok("-d", cwd=proj)
    bell = agent_workspace(coop, "bell", "read x < ring; printf 'Proceed? [y/N] \\a'; read y", record=False)
    os.mkfifo(bell / "ring")
    coop.ok("-d", cwd=bell)
    served = start_serve(coop)
    page = page_of(served, permissions=["notifications"])
    # in session "bell", a shell tab is on screen; then the user moves to "proj"
    page.click("[data-session='bell'] .session-open")
    wait_open(page, 0)
    page.click("#new-shell")
    wait_js(page, "document.querySelector('.tab[aria-selected=\"true\"]')?.dataset.pty === '1'", what="shell tab")
    page.click("[data-session='proj'] .session-open")
    wait_js(page, "document.getElementById('session-title').textContent === 'proj'")
    wait_open(page, 0)
    page.click("#notify-toggle")  # the user's gesture asks for permission (granted here)
    wait_js(page, "document.getElementById('notify-toggle').getAttribute('aria-pressed') === 'true'",
            what="notifications on")
    assert js(page, "window.coopDebug.notifications") == []

    with open(bell / "ring", "w") as fifo:
        fifo.write("now\n")
    wait_for(lambda: coop.session("bell")["state"] == "waiting", what="bell is waiting")
    notes = wait_js(page, "window.coopDebug.notifications.length && window.coopDebug.notifications",
                    timeout=15, what="a notification")
    assert notes == [{"title": "bell is waiting for input", "session": "bell", "pty": 0}]
    wait_js(page, "document.querySelector('[data-session=bell] .badge-waiting')", what="waiting badge")
    assert page.title() == "(1) proj · coop"

    js(page, "window.coopDebug.clickNotification(0)")
    wait_js(page, "document.getElementById('session-title').textContent === 'bell'", what="bell opened")
    wait_js(page, "document.querySelector('.tab[aria-selected=\"true\"]')?.dataset.pty === '0'",
            what="the agent tab selected")
    wait_open(page, 0)
    wait_line(page, 0, r"Proceed\? \[y/N\]")
    assert page.title() == "(1) bell · coop"
    assert len(js(page, "window.coopDebug.notifications")) == 1
