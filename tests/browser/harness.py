"""Real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, against a real
``coop serve``. Playwright only drives the browser: ``playwright install`` is never needed.

The page exposes ``window.coopDebug`` (terminal rows, stream state, a connection drop);
expressions are evaluated over CDP, which the page's CSP does not restrict, so polling
is done from Python rather than with ``wait_for_function`` (that one needs eval).
"""

from __future__ import annotations

import json
import re
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.daemon import REPO, Coop, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / "test-artifacts"
TOKEN = "browser-test-token-0123456789abcdef"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    """A running ``coop serve``: its base URL and the links it printed."""

    port: int
    proc: subprocess.Popen
    urls: list[str] = field(default_factory=list)
    read_only_urls: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def link(self) -> str:
        return next(u for u in self.urls if u.startswith(self.base))

    @property
    def read_only_link(self) -> str:
        return next(u for u in self.read_only_urls if u.startswith(self.base))


def start_serve(coop: Coop, *extra: str) -> Served:
    """``coop serve`` in the foreground, as a user runs it; the Coop fixture ends it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "coop", "serve", "-p", str(port), "--token", TOKEN, *extra],
                            cwd=coop.home, env=coop.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    coop.procs.append(proc)
    served = Served(port, proc)
    out = b""
    deadline = time.monotonic() + 20
    while b"Ctrl+C" not in out:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(left, 0))
        chunk = proc.stdout.read1(65536) if ready else b""
        if not chunk:
            raise AssertionError(f"coop serve did not start: {out!r} {proc.stderr.read1(65536) if proc.poll() is not None else b''!r}")
        out += chunk
    text = out.decode()
    lines = text.splitlines()
    ro_at = next((i for i, line in enumerate(lines) if line.startswith("watch-only")), len(lines))
    served.urls = [u for u in re.findall(r"https?://\S+", "\n".join(lines[:ro_at]))]
    served.read_only_urls = [u for u in re.findall(r"https?://\S+", "\n".join(lines[ro_at:]))]
    return served


def launch(playwright, *extra_args: str):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])


class PageWatch:
    """Collects script errors: a page that throws fails its test. ``tolerate``: a regular
    expression for console errors a test provokes on purpose."""

    def __init__(self, page, tolerate: str | None = None):
        self.errors: list[str] = []
        self.tolerate = re.compile(tolerate) if tolerate else None
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, message):
        # xterm.js writes <style> elements, which a strict CSP reports; the page mirrors
        # them into constructable stylesheets, so the report is expected noise.
        if message.type != "error" or "inline style" in message.text:
            return
        if not (self.tolerate and self.tolerate.search(message.text)):
            self.errors.append(f"console: {message.text}")


def js(page, expr: str, *args):
    return page.evaluate(expr, *args)


def wait_js(page, expr: str, timeout: float = 10, what: str | None = None):
    return wait_for(lambda: page.evaluate(expr), timeout=timeout, interval=0.05, what=what or expr)


def lines(page, pty: int) -> list[str]:
    return page.evaluate("(pty) => window.coopDebug.lines(pty) || []", pty)


def wait_line(page, pty: int, pattern: str, timeout: float = 10) -> list[str]:
    """Until a row of the terminal showing pty matches the regular expression."""
    rx = re.compile(pattern)
    return wait_for(lambda: (rows := lines(page, pty)) and any(rx.search(r) for r in rows) and rows,
                    timeout=timeout, interval=0.05, what=f"{pattern!r} in pty {pty}: {lines(page, pty)[-8:]}")


def wait_open(page, pty: int, timeout: float = 15) -> None:
    wait_js(page, f"window.coopDebug && window.coopDebug.connection({pty}) === 'open'", timeout,
            what=f"pty {pty} connected")


def focus_terminal(page, pty: int) -> None:
    page.click(f".pane[data-pty='{pty}'] .term")


def type_into(page, pty: int, text: str) -> None:
    focus_terminal(page, pty)
    page.keyboard.type(text)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def api(served: Served, method: str, path: str, body: dict | None = None) -> dict:
    """The JSON API with the bearer token, as a script would call it."""
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(served.base + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as res:
        return json.loads(res.read())
