"""The browser page in real headless Chromium against a real daemon and ``coop serve``:
WEB-3 (token to cookie), WEB-5 (page), WEB-6 (transport), BYD-1 (resume), BYD-2 (waiting
badge), BYD-4 (read-only), BYD-8 (upload). Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
import subprocess

import pytest
from playwright.sync_api import sync_playwright

from tests.browser.harness import (
    DESKTOP,
    PHONE,
    TOKEN,
    PageWatch,
    focus_terminal,
    js,
    launch,
    lines,
    screenshot,
    start_serve,
    type_into,
    wait_js,
    wait_line,
    wait_open,
)
from tests.daemon import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def driver():
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(driver):
    b = launch(driver)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def workspace(coop):
    """Session "proj" with `sh` as its agent."""
    ws = coop.workspace("proj")
    coop.ok("-d", cwd=ws)
    return ws


@pytest.fixture
def served(coop, workspace):
    return start_serve(coop)


@pytest.fixture
def open_page(browser, served):
    """open_page(viewport=DESKTOP, link=None, tolerate=None, **context options) → a page on
    the coop link; every page must finish its test without script errors (but those
    matching the regular expression ``tolerate``)."""
    opened = []

    def open_(viewport=DESKTOP, link=None, tolerate=None, **options):
        context = browser.new_context(viewport=viewport, **options)
        page = context.new_page()
        opened.append((context, PageWatch(page, tolerate)))
        page.goto(link or served.link)
        return page

    try:
        yield open_
        errors = [e for _, watch in opened for e in watch.errors]
        assert errors == []
    finally:
        for context, _ in opened:
            context.close()


def notice(page, kind: str, text: str, timeout: float = 10) -> str:
    """The text of a visible notice of that kind containing text."""
    expr = (f"[...document.querySelectorAll('.notice-{kind} .notice-text')].map(n => n.textContent)"
            f".find(t => t.includes({text!r})) || null")
    return wait_js(page, expr, timeout, what=f"{kind} notice with {text!r}")


def new_shell(page) -> int:
    before = js(page, "[...document.querySelectorAll('.tab')].length")
    page.click("#new-shell")
    wait_js(page, f"document.querySelectorAll('.tab').length > {before}")
    pty = js(page, "Number(document.querySelector('.tab[aria-selected=\"true\"]').dataset.pty)")
    assert pty > 0
    wait_open(page, pty)
    return pty


# -- WEB-3: the token becomes a cookie and leaves the address bar -------------------------


def test_token_link_sets_cookie_and_lists_sessions(open_page, served, browser):
    page = open_page()
    assert page.url == served.base + "/"
    cookie = next(c for c in page.context.cookies() if c["name"] == "coop_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    wait_open(page, 0)
    item = page.locator("[data-session='proj']")
    wait_for(lambda: "1 web" in item.inner_text(), what="web client counted in the list")
    text = item.inner_text()
    assert "proj" in text and "…/home/proj" in text
    assert js(page, "document.querySelector('[data-session=proj] .session-open').getAttribute('aria-current')") == "true"
    stored = js(page, "JSON.stringify(localStorage) + JSON.stringify(sessionStorage)")
    assert TOKEN not in stored and "coop_token" not in stored
    stranger = browser.new_context()
    try:
        assert stranger.new_page().goto(served.base + "/").status == 403
    finally:
        stranger.close()


# -- WEB-5 + FLT: typing into the agent, blocked exits ------------------------------------


def test_agent_tab_echoes_input_and_blocks_exit(open_page, coop):
    page = open_page()
    wait_open(page, 0)
    tabs = js(page, "[...document.querySelectorAll('.tab')].map(t => t.textContent)")
    assert tabs[0].startswith("agent")
    type_into(page, 0, "echo agent-$((6*7))\n")
    wait_line(page, 0, r"^agent-42$")

    type_into(page, 0, "exit\n")
    assert "blocked" in notice(page, "warn", "blocked")
    wait_line(page, 0, "Blocked from web")
    page.click(".notice-warn [aria-label='Dismiss']")
    focus_terminal(page, 0)
    page.keyboard.press("Control+d")
    notice(page, "warn", "blocked")
    assert js(page, "document.querySelector('.pane[data-pty=\"0\"]').classList.contains('flash')")

    type_into(page, 0, "echo still-$((1+1))\n")
    wait_line(page, 0, r"^still-2$")
    assert coop.session("proj")["state"] in ("running", "waiting")


# -- WEB-5: shells, split view, sizes that follow the window -------------------------------


def stty_follows(page, pty: int) -> dict:
    size = js(page, f"window.coopDebug.size({pty})")
    type_into(page, pty, "stty size\n")
    wait_line(page, pty, rf"^{size['rows']} {size['cols']}$")
    return size


def wait_size_change(page, pty: int, old: dict) -> dict:
    return wait_js(page, f"(() => {{ const s = window.coopDebug.size({pty});"
                         f" return s && (s.cols !== {old['cols']} || s.rows !== {old['rows']}) && s; }})()",
                   what="terminal size change")


def test_shell_tab_split_view_and_resizes(open_page, coop):
    page = open_page()
    wait_open(page, 0)
    shell = new_shell(page)
    tabs = js(page, "[...document.querySelectorAll('.tab')].map(t => t.dataset.pty)")
    assert tabs == ["0", str(shell)]
    assert any(p["id"] == shell and p["role"] == "shell" for p in coop.session("proj")["ptys"])

    page.click("#split-button")
    wait_js(page, "document.querySelectorAll('.pane').length === 2")
    wait_open(page, 0)
    boxes = [page.locator(f".pane[data-pty='{p}']").bounding_box() for p in (0, shell)]
    assert abs(boxes[0]["y"] - boxes[1]["y"]) < 2 and abs(boxes[0]["x"] - boxes[1]["x"]) > 300
    first = stty_follows(page, shell)

    page.set_viewport_size({"width": 1000, "height": 620})
    second = wait_size_change(page, shell, first)
    assert second["rows"] < first["rows"]
    stty_follows(page, shell)

    handle = page.locator(".split-handle").bounding_box()
    x, y = handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 160, y, steps=8)
    page.mouse.up()
    third = wait_size_change(page, shell, second)
    assert third["cols"] != second["cols"]
    stty_follows(page, shell)
    page.set_viewport_size(DESKTOP)
    wait_size_change(page, shell, third)
    screenshot(page, "desktop-split")


def test_a_poll_leaves_the_keyboard_in_the_split_pane_being_typed_in(open_page):
    """WEB-5: the session list is polled every 2 s; each poll rebuilt the split
    view's panes, which took the focus from the terminal being typed in."""
    page = open_page()
    wait_open(page, 0)
    shell = new_shell(page)
    page.click("#split-button")
    wait_js(page, "document.querySelectorAll('.pane').length === 2")
    wait_open(page, shell)
    focus_terminal(page, shell)
    in_shell = f"!!document.activeElement?.closest(\".pane[data-pty='{shell}'] .term\")"
    wait_js(page, in_shell)
    for _ in range(3):
        js(page, "window.coopDebug.refresh()")  # what the poll does, now
        assert js(page, in_shell), "a poll took the focus from the terminal"
    page.keyboard.type("echo typed-$((6 * 7))\n")
    wait_line(page, shell, r"^typed-42$")


# -- WEB-5: kill with confirmation, create from the directory browser ----------------------


def test_kill_session_asks_first(open_page, coop):
    other = coop.workspace("other")
    coop.ok("-d", cwd=other)
    page = open_page()
    wait_js(page, "document.querySelector('[data-session=other]')")
    page.click("[data-session='other'] [data-role='kill']")
    assert "Kill session other?" in page.locator("dialog[open]").inner_text()
    page.click("dialog[open] button[value='cancel']")
    wait_js(page, "!document.querySelector('dialog[open]')")
    assert "other" in [s["name"] for s in coop.ls()]

    page.click("[data-session='other'] [data-role='kill']")
    page.click("dialog[open] [data-role='confirm']")
    wait_js(page, "!document.querySelector('[data-session=other]')")
    wait_for(lambda: "other" not in [s["name"] for s in coop.ls()], what="session killed")
    assert "proj" in [s["name"] for s in coop.ls()]


def test_create_session_from_directory_browser(open_page, coop):
    coop.workspace("fresh")
    page = open_page()
    wait_open(page, 0)
    page.click("#new-session")
    wait_js(page, "[...document.querySelectorAll('dialog[open] .dir')].some(b => b.textContent === 'fresh')")
    page.locator("dialog[open] .dir", has_text="fresh").click()
    wait_js(page, "document.getElementById('new-workspace').value.endsWith('/fresh')")
    page.click("dialog[open] button[type='submit']")
    wait_js(page, "!document.querySelector('dialog[open]')")
    wait_js(page, "document.getElementById('session-title').textContent === 'fresh'")
    wait_open(page, 0)
    type_into(page, 0, "pwd\n")
    wait_line(page, 0, r"/fresh$")
    assert next(s for s in coop.ls() if s["name"] == "fresh")["workspace"].endswith("/fresh")


# -- WEB-5 on a phone: drawer, one terminal, key bar, compose, swipe -----------------------


def swipe(page, x0, x1, y):
    cdp = page.context.new_cdp_session(page)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x0, "y": y}]})
    for i in range(1, 6):
        cdp.send("Input.dispatchTouchEvent",
                 {"type": "touchMove", "touchPoints": [{"x": x0 + (x1 - x0) * i / 5, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def test_phone_layout_drawer_keys_and_compose(open_page):
    page = open_page(PHONE, is_mobile=True, has_touch=True)
    wait_open(page, 0)
    assert page.is_visible("#keybar .keys")
    assert js(page, "document.getElementById('sidebar').getBoundingClientRect().right") <= 0
    screenshot(page, "phone")

    page.click("#drawer-button")
    wait_js(page, "document.getElementById('sidebar').getBoundingClientRect().left >= 0")
    assert page.get_attribute("#drawer-button", "aria-expanded") == "true"
    screenshot(page, "phone-drawer")
    page.click("[data-session='proj'] .session-open")
    wait_js(page, "document.getElementById('sidebar').getBoundingClientRect().right <= 0")

    shell = new_shell(page)
    assert js(page, "[...document.querySelectorAll('.pane')].map(p => p.dataset.pty)") == [str(shell)]
    type_into(page, shell, "cat -v\n")
    for key in ("Escape", "Pipe", "Slash", "Tilde", "Up arrow"):
        page.click(f"#keybar [aria-label='{key}']")
    page.keyboard.press("Enter")
    wait_line(page, shell, r"^\^\[\|/~\^\[\[A$")
    page.click("#keybar [aria-label^='Control']")
    assert page.get_attribute("#keybar [aria-label^='Control']", "aria-pressed") == "true"
    page.keyboard.type("c")
    assert page.get_attribute("#keybar [aria-label^='Control']", "aria-pressed") == "false"
    wait_line(page, shell, r"\^C")
    type_into(page, shell, "echo after-$((2+3))\n")
    wait_line(page, shell, r"^after-5$")

    page.click(".tab[data-pty='0']")
    wait_js(page, "[...document.querySelectorAll('.pane')].map(p => p.dataset.pty).join() === '0'")
    swipe(page, 320, 60, 400)
    wait_js(page, f"[...document.querySelectorAll('.pane')].map(p => p.dataset.pty).join() === '{shell}'")
    wait_open(page, shell)

    page.click("#compose-toggle")
    page.fill(".compose-text", "echo composed-$((3+4))")
    page.click(".compose-send")
    wait_line(page, shell, r"^composed-7$")
    assert page.input_value(".compose-text") == ""
    screenshot(page, "phone-compose")


# -- BYD-1: reconnect and resume from the last offset ----------------------------------------


def reset_connections(port: int) -> None:
    """Destroy the server's established TCP connections (the peer sees a reset)."""
    subprocess.run(["ss", "-K", "state", "established", "(", "sport", "=", f":{port}", ")"],
                   check=True, capture_output=True)


def test_dropped_connections_resume_without_duplicate_or_missing_output(open_page, served):
    # requests cut by the reset are reported by the browser as failed loads
    page = open_page(tolerate=r"net::ERR_")
    wait_open(page, 0)
    shell = new_shell(page)
    count = 400
    type_into(page, shell, f"i=0; while [ $i -lt {count} ]; do i=$((i+1)); echo L$i; sleep 0.01; done; echo EN''D\n")
    for step in range(1, 4):
        wait_line(page, shell, rf"^L{step * count // 5}$", timeout=30)
        js(page, f"window.coopDebug.drop({shell})")
        assert js(page, f"window.coopDebug.connection({shell})") == "reconnecting"
        wait_open(page, shell)
    wait_line(page, shell, rf"^L{4 * count // 5}$", timeout=30)
    reset_connections(served.port)  # and once from the server's side, abruptly
    wait_js(page, f"window.coopDebug.stats({shell}).attached === 5", what="reconnected after the reset")
    wait_line(page, shell, r"^END$", timeout=60)
    numbered = [row for row in lines(page, shell) if re.fullmatch(r"L\d+", row)]
    assert numbered == [f"L{i}" for i in range(1, count + 1)]
    stats = js(page, f"window.coopDebug.stats({shell})")
    assert stats["resumed"] >= 4 and stats["resets"] == 0, stats


STREAM_SCENARIO = """async () => {
  // PtyStream from the served page, with a scripted channel in place of a WebSocket
  const {PtyStream} = await import("/transport.js");
  const bytes = (text) => new TextEncoder().encode(text);
  const until = async (ok) => {
    for (let i = 0; i < 100 && !ok(); i++) await new Promise((r) => setTimeout(r, 30));
  };
  const opened = [];
  const sent = [];
  let sink = null;
  const stream = new PtyStream((params, s) => {
    opened.push(params);
    sink = s;
    return {send: (b) => sent.push(new TextDecoder().decode(b)), control: (o) => sent.push(o), close() {}};
  }, {session: "s", pty: 0, cols: 80, rows: 24});
  const log = [];
  stream.onData((b) => log.push(["data", new TextDecoder().decode(b)]));
  stream.onEvent((e) => log.push([e.type, e.state ?? e.offset ?? null]));
  await until(() => sink);
  sink.event({type: "attached", offset: 100});
  sink.data(bytes("hello"));
  sink.event({type: "lag", dropped: 7, offset: 90});
  sink.data(bytes("replay"));
  const afterLag = stream.offset;
  sink.closed();
  const sentWhileDown = stream.send("lost");
  await until(() => opened.length === 2);
  sink.event({type: "attached", offset: 96});
  sink.data(bytes("more"));
  stream.send("typed");
  sink.closed();
  await until(() => opened.length === 3);
  sink.event({type: "attached", offset: 0});
  sink.data(bytes("full"));
  sink.event({type: "exited", code: 3});
  sink.closed();
  await new Promise((r) => setTimeout(r, 600));
  return {log, opened, afterLag, sentWhileDown, sent, stats: stream.stats, state: stream.state};
}"""


def test_stream_resumes_from_its_offset_and_resets_only_on_a_gap(open_page):
    """WEB-6/BYD-1 logic of PtyStream, driven event by event in the browser."""
    page = open_page()
    result = js(page, STREAM_SCENARIO)
    assert [o["offset"] for o in result["opened"]] == [None, 96, 100]
    assert result["opened"][0] | {"offset": None} == {"session": "s", "pty": 0, "cols": 80,
                                                       "rows": 24, "offset": None}
    assert result["afterLag"] == 96 and result["sentWhileDown"] is False
    assert result["sent"] == ["typed"]  # the size went with each attach request
    assert result["log"] == [
        ["attached", 100], ["connection", "open"], ["data", "hello"],
        ["lag", 90], ["reset", None], ["data", "replay"],
        ["connection", "reconnecting"], ["attached", 96], ["connection", "open"], ["data", "more"],
        ["connection", "reconnecting"], ["reset", None], ["attached", 0], ["connection", "open"],
        ["data", "full"], ["exited", None], ["connection", "ended"],
    ]
    assert result["stats"] == {"attached": 3, "resumed": 1, "resets": 2}
    assert result["state"] == "ended"


def test_key_bytes(open_page):
    """What the key bar and the sticky Ctrl send (keys.js, loaded from the served page)."""
    page = open_page()
    got = js(page, """async () => {
      const k = await import("/keys.js");
      return {
        ctrl: ["c", "C", "d", "[", "@", " ", "?", "/", "3", "|"].map((c) => k.ctrlOf(c)),
        arrows: [k.arrow("up"), k.arrow("left", true)],
        paste: [k.pasteOf("a\\nb"), k.pasteOf("x", true)],
        words: [k.shellWord("/workspace/.coop-uploads/a.png"), k.shellWord("/w/it's here.txt")],
      };
    }""")
    assert got["ctrl"] == ["\x03", "\x03", "\x04", "\x1b", "\x00", "\x00", "\x7f", "\x1f", "\x1b", None]
    assert got["arrows"] == ["\x1b[A", "\x1bOD"]
    assert got["paste"] == ["a\rb", "\x1b[200~x\x1b[201~"]
    assert got["words"] == ["/workspace/.coop-uploads/a.png", "'/w/it'\\''s here.txt'"]


def test_a_stalled_browser_gets_a_lag_notice_and_a_redrawn_screen(open_page):
    """PTY-2 seen from the page: while the renderer is busy the browser stops reading, the
    daemon drops this client's output, then sends "lag" and a replay to draw from."""
    page = open_page()
    wait_open(page, 0)
    type_into(page, 0, "sleep 1; seq 1 3000000; echo EN''D\n")
    js(page, "() => { const end = Date.now() + 6000; while (Date.now() < end) {} }")
    rows = wait_line(page, 0, r"^END$", timeout=60)
    assert rows[rows.index("END") - 1] == "3000000"
    assert "fell behind" in notice(page, "info", "fell behind")
    assert js(page, "window.coopDebug.stats(0).resets") >= 1


# -- BYD-8: uploads by picker, drop and paste ------------------------------------------------


def uploaded(workspace, name):
    path = workspace / ".coop-uploads" / name
    return path.read_bytes() if path.exists() else None


def test_upload_picker_drop_and_paste(open_page, workspace):
    page = open_page()
    wait_open(page, 0)
    payload = bytes(range(256)) * 64
    page.set_input_files("#file-input", files=[{"name": "shot.png", "mimeType": "image/png", "buffer": payload}])
    text = notice(page, "ok", "shot.png")
    wait_for(lambda: uploaded(workspace, "shot.png") == payload, what="picked file in the workspace")
    in_sandbox = re.search(r": (\S+)", text).group(1)
    assert in_sandbox.endswith("/.coop-uploads/shot.png")
    page.locator(".notice-ok", has_text="shot.png").get_by_role("button", name="Insert path").click()
    wait_line(page, 0, re.escape(in_sandbox))

    js(page, """() => {
      const dt = new DataTransfer();
      dt.items.add(new File(["dropped bytes"], "drop.txt", {type: "text/plain"}));
      const target = document.querySelector(".pane .term");
      for (const type of ["dragenter", "dragover", "drop"]) {
        target.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: dt}));
      }
    }""")
    wait_for(lambda: uploaded(workspace, "drop.txt") == b"dropped bytes", what="dropped file in the workspace")
    notice(page, "ok", "drop.txt")

    focus_terminal(page, 0)
    js(page, """() => {
      const dt = new DataTransfer();
      dt.items.add(new File(["pasted bytes"], "paste.txt", {type: "text/plain"}));
      document.activeElement.dispatchEvent(new ClipboardEvent("paste", {bubbles: true, cancelable: true, clipboardData: dt}));
    }""")
    wait_for(lambda: uploaded(workspace, "paste.txt") == b"pasted bytes", what="pasted file in the workspace")
    notice(page, "ok", "paste.txt")


# -- BYD-2: a waiting agent is badged and counted in the title ------------------------------


def test_waiting_session_is_badged_and_counted_in_title(open_page):
    page = open_page()
    wait_open(page, 0)
    type_into(page, 0, "printf 'ready?\\a '\n")
    wait_js(page, "document.querySelector('[data-session=proj] .badge-waiting')", timeout=20,
            what="waiting badge")
    assert page.title().startswith("(1) ")
    type_into(page, 0, "echo busy\n")


# -- BYD-4: read-only viewers --------------------------------------------------------------


def test_read_only_link_shows_without_controls_and_discards_input(browser, coop, workspace):
    served = start_serve(coop, "--read-only-token")
    viewer_context = browser.new_context(viewport=DESKTOP)
    owner_context = browser.new_context(viewport=DESKTOP)
    try:
        viewer = viewer_context.new_page()
        watch = PageWatch(viewer)
        viewer.goto(served.read_only_link)
        wait_open(viewer, 0)
        wait_js(viewer, "!document.getElementById('readonly-badge').hidden", what="view-only badge")
        for control in ("#new-session", "#new-shell", "#upload-button", "[data-role='kill']"):
            assert not viewer.is_visible(control), control
        owner = owner_context.new_page()
        owner.goto(served.link)
        wait_open(owner, 0)
        type_into(viewer, 0, "echo viewer-$((1+1))\n")
        type_into(owner, 0, "echo owner-$((1+2))\n")
        wait_line(viewer, 0, r"^owner-3$")
        assert not any("viewer-2" in row for row in lines(owner, 0) + lines(viewer, 0))
        assert watch.errors == []
    finally:
        viewer_context.close()
        owner_context.close()


def test_terminal_renders_under_a_strict_style_policy(driver, served):
    """xterm.js themes itself through <style> elements; under ``style-src 'self'`` (no
    'unsafe-inline') the browser ignores them and the page mirrors them into
    constructable stylesheets instead."""
    # a document fulfilled by the test has no address space: let it reach loopback
    browser = launch(driver, "--disable-features=LocalNetworkAccessChecks")
    try:
        page = browser.new_page(viewport=DESKTOP)
        watch = PageWatch(page)
        violations = []
        page.on("console", lambda m: "inline style" in m.text and violations.append(m.text))

        def strict(route):
            response = route.fetch()
            headers = dict(response.headers)
            headers["content-security-policy"] = re.sub(
                r"style-src[^;]*", "style-src 'self'", headers["content-security-policy"])
            route.fulfill(response=response, headers=headers)

        page.goto(served.link)  # sets the cookie; the redirect it answers is not routed
        page.route(served.base + "/", strict)
        page.goto(served.base + "/")
        wait_open(page, 0)
        type_into(page, 0, "printf '\\033[31mred\\033[0m\\n'\n")
        wait_line(page, 0, r"^red$")
        assert violations, "the strict policy was not in force"
        # the buffer has the line; the renderer draws it on the next animation frame
        wait_js(page, "[...document.querySelectorAll('.xterm-rows span')].some((s) => s.textContent === 'red')",
                what="the red span drawn")
        style = js(page, """() => {
          const rows = document.querySelector('.xterm-rows');
          const red = [...rows.querySelectorAll('span')].find((s) => s.textContent === 'red');
          return {text: getComputedStyle(rows).color, red: red ? getComputedStyle(red).color : null,
                  cell: rows.firstElementChild.getBoundingClientRect().height};
        }""")
        assert (style["text"], style["red"]) == ("rgb(213, 218, 227)", "rgb(239, 107, 115)")
        assert style["cell"] > 10
        assert watch.errors == []
    finally:
        browser.close()


# -- WEB-5: remembered layout and theme, shortcut overlay -------------------------------------


def test_layout_and_theme_are_remembered(open_page):
    page = open_page()
    wait_open(page, 0)
    new_shell(page)
    page.click("#split-button")
    wait_js(page, "document.querySelectorAll('.pane').length === 2")
    page.click("#theme-toggle")
    assert js(page, "document.documentElement.dataset.theme") == "light"
    screenshot(page, "desktop-light")
    page.reload()
    wait_js(page, "document.querySelectorAll('.pane').length === 2", what="split restored")
    assert js(page, "document.documentElement.dataset.theme") == "light"
    assert TOKEN not in js(page, "JSON.stringify(localStorage)")


def test_question_mark_opens_shortcuts_only_outside_terminals(open_page):
    page = open_page()
    wait_open(page, 0)
    page.click("#session-title")
    page.keyboard.press("?")
    wait_js(page, "document.querySelector('dialog[open]')?.textContent.includes('Keyboard shortcuts')")
    page.keyboard.press("Escape")
    wait_js(page, "!document.querySelector('dialog[open]')")
    type_into(page, 0, "echo 'q?'\n")
    wait_line(page, 0, r"^q\?$")
    assert not js(page, "document.querySelector('dialog[open]')")
    screenshot(page, "desktop")
