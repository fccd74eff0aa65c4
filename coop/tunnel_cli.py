"""``coop tunnel`` (TUN-1, TUN-3, TUN-5): the terminal side of a tunnel.

Asks the daemon for a tunnel, prints the connect URL and its QR code, takes
the browser's answer code at a prompt (the page may also return it by itself
through ``coop serve``, or another terminal may run ``coop tunnel --answer
CODE``), and stays until Ctrl+C or the tunnel ends. Blocking I/O only: the
WebRTC work happens in the daemon's tunnel actor.
"""

from __future__ import annotations

import select
import signal
import socket
import sys
import time

from coop.client import ClientError

EXIT_TUNNEL_FAILED = 6
POLL = 0.2
ADVICE = "try `coop serve` on the LAN, or forward a port"


def add_arguments(parser) -> None:
    """The ``coop tunnel`` options (TUN-1, TUN-3)."""
    parser.add_argument("--stun", action="append", default=[], metavar="URL",
                        help="STUN server (repeatable; default: common public ones)")
    parser.add_argument("--no-stun", action="store_true",
                        help="offer host addresses only (LAN, VPN, port forwarding)")
    parser.add_argument("--no-qr", action="store_true", help="print the URL without a QR code")
    parser.add_argument("--connect-url", metavar="URL",
                        help="base of the connect page (default: the running coop serve)")
    parser.add_argument("--answer", metavar="CODE",
                        help="give the answer code to the waiting tunnel and wait until it connects")


def run_tunnel(app) -> int:
    a = app.args
    conn = app.connect()
    if a.answer:
        return _deliver(conn, a.answer)
    request = {"cmd": "tunnel"}
    if a.no_stun:
        request["no_stun"] = True
    elif a.stun:
        request["stun"] = a.stun
    connect_url = a.connect_url or web_url(conn)
    if connect_url:
        request["connect_url"] = connect_url
    info = conn.request(request)
    tunnel = info["tunnel"]
    show_offer(info, qr=not a.no_qr)
    previous = signal.signal(signal.SIGHUP, _interrupt)  # a closed terminal is a Ctrl+C
    try:
        return _follow(conn, tunnel)
    except KeyboardInterrupt:
        _close(conn, tunnel)
        print("\ntunnel closed", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGHUP, previous)


def show_offer(info: dict, qr: bool) -> None:
    from coop.cli import print_qr

    if info.get("url"):
        print(info["url"], flush=True)
        if qr:
            print_qr(info["url"])
    else:
        print("offer code (open the connect page of `coop serve` or of a `coop www export` "
              "site and paste it there, or pass --connect-url):")
        print(info["envelope"], flush=True)


def web_url(conn) -> str | None:
    """TUN-1: the running ``coop serve``, as a base for the connect page."""
    web = conn.request({"cmd": "status"})["daemon"].get("web")
    if not web:
        return None
    host = web["host"]
    if host in ("0.0.0.0", "::", ""):
        host = _outbound_address() or socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{web['port']}"


def _outbound_address() -> str | None:
    """The address other machines most likely reach us on (no packet is sent:
    connecting a UDP socket only picks a route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
        except OSError:
            return None


def _close(conn, tunnel: str) -> None:
    try:
        conn.request({"cmd": "tunnel_close", "tunnel": tunnel})
    except (ClientError, OSError):
        pass


def _deliver(conn, code: str) -> int:
    """``--answer``: the pasted code goes to the (only) waiting tunnel, which
    another ``coop tunnel`` is showing; report how its connection ends up."""
    tunnel = conn.request({"cmd": "tunnel_answer", "answer": code})["tunnel"]
    if not _connected(conn, tunnel):
        return EXIT_TUNNEL_FAILED
    print("connected", flush=True)
    return 0


def _connected(conn, tunnel: str) -> bool:
    """Wait for the connection; False (and the reason printed) when it failed."""
    while True:
        state = _state(conn, tunnel)
        if state["state"] == "connected":
            return True
        if state["state"] in ("failed", "closed"):
            reason = state.get("reason") or f"no connection; {ADVICE}"
            print(f"coop: tunnel failed: {reason}", file=sys.stderr)
            return False
        time.sleep(POLL)


def _follow(conn, tunnel: str) -> int:
    if sys.stdin.isatty():
        _prompt(conn, tunnel)
    if not _connected(conn, tunnel):
        return EXIT_TUNNEL_FAILED
    print("connected (Ctrl+C closes the tunnel)", flush=True)
    state = {"state": "connected"}
    while state["state"] == "connected":
        time.sleep(1)
        state = _state(conn, tunnel)
    print(f"tunnel closed: {state.get('reason') or state['state']}", file=sys.stderr)
    return 0


def _prompt(conn, tunnel: str) -> None:
    """Read answer codes until one is accepted, or until the page has
    answered by itself (the tunnel no longer waits)."""
    print("paste the answer code: ", end="", flush=True)
    while _state(conn, tunnel)["state"] == "waiting":
        ready, _, _ = select.select([sys.stdin], [], [], 0.5)
        if not ready:
            continue
        line = sys.stdin.readline()
        if not line:
            return  # end of input: keep waiting for an automatic answer
        if not line.strip():
            continue
        try:
            conn.request({"cmd": "tunnel_answer", "tunnel": tunnel, "answer": line.strip()})
            return
        except ClientError as exc:
            print(f"coop: {exc}", file=sys.stderr)
            print("paste the answer code: ", end="", flush=True)
    print()


def _state(conn, tunnel: str) -> dict:
    try:
        return conn.request({"cmd": "tunnel_status", "tunnel": tunnel})
    except ClientError as exc:  # the tunnel actor is gone: so is the tunnel
        return {"state": "closed", "reason": str(exc)}


def _interrupt(signum, frame):
    raise KeyboardInterrupt
