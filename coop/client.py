"""The CLI's side of the IPC protocol: start the daemon, ask, bridge a terminal.

Blocking sockets and ``selectors`` only: ``coop ls`` must start fast, so no
asyncio here.
"""

from __future__ import annotations

import errno
import json
import os
import select
import selectors
import signal
import socket
import sys
import termios
import time
import tty

from coop import protocol
from coop.paths import Paths
from coop.protocol import FrameType

START_TIMEOUT = 2.5
RECEIVE_SIZE = 256 << 10  # a read from the session: up to four whole output frames


class ClientError(Exception):
    """A failure to show as one line, with the exit code to leave with (CLI-3)."""

    def __init__(self, message: str, code: int = 1, error: str | None = None):
        super().__init__(message)
        self.code = code
        self.error = error


EXIT_CODES = {"SESSION_NOT_FOUND": 3, "PTY_NOT_FOUND": 3, "ROOTFS_NOT_BUILT": 5,
              "INVALID_COMMAND": 2}


def raise_for(answer: dict) -> dict:
    if answer.get("ok"):
        return answer
    err = answer.get("error", "INTERNAL")
    raise ClientError(answer.get("message") or err, EXIT_CODES.get(err, 1), err)


class Connection:
    """One command-mode connection to the daemon, after the handshake."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.decoder = protocol.FrameDecoder()
        self._frames: list[bytes] = []

    def send(self, msg: dict) -> None:
        self.sock.sendall(protocol.encode_message(msg))

    def recv_payload(self) -> bytes:
        while not self._frames:
            data = self.sock.recv(65536)
            if not data:
                raise ClientError("the daemon closed the connection (see coop logs)")
            self._frames.extend(self.decoder.feed(data))
        return self._frames.pop(0)

    def recv(self) -> dict:
        return protocol.decode_json(self.recv_payload())

    def request(self, msg: dict) -> dict:
        self.send(msg)
        return raise_for(self.recv())

    def leftover(self) -> list[bytes]:
        """Frames already received after the answer (stream mode starts there)."""
        frames, self._frames = self._frames, []
        return frames

    def close(self) -> None:
        self.sock.close()


def _try_connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
        return sock
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ENOTSOCK, errno.ENOENT, errno.ECONNREFUSED):
            return None
        raise ClientError(f"cannot connect to {path}: {exc.strerror}", 4) from None


def start_daemon(paths: Paths) -> None:
    """DMN-1: double fork, new session, stdin from /dev/null, output to the log."""
    from coop.unixsocket import SocketPathError, check_socket_path

    paths.ensure_state()
    try:
        check_socket_path(str(paths.socket))
    except SocketPathError as exc:
        raise ClientError(f"cannot start the daemon: {exc}", 4) from None
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork():
                os._exit(0)
            null = os.open(os.devnull, os.O_RDONLY)
            log = os.open(paths.daemon_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.closerange(3, 1 << 16)
            os.chdir("/")
            argv = [sys.executable, "-m", "coop.actors.supervisor", str(paths.socket)]
            os.execv(sys.executable, argv)
        finally:
            os._exit(127)
    os.waitpid(pid, 0)


def connect(paths: Paths, autostart: bool = True) -> Connection:
    """Connect and shake hands (IPC-3), starting the daemon when needed."""
    path = str(paths.socket)
    sock = _try_connect(path)
    if sock is None:
        if not autostart:
            raise ClientError("the daemon is not running", 1)
        start_daemon(paths)
        deadline = time.monotonic() + START_TIMEOUT
        while sock is None and time.monotonic() < deadline:
            time.sleep(0.01)
            sock = _try_connect(path)
        if sock is None:
            raise ClientError(f"the daemon did not start within {START_TIMEOUT} s "
                              f"(see {paths.daemon_log})", 4)
    conn = Connection(sock)
    conn.send(protocol.hello())
    raise_for(conn.recv())
    return conn


# -- stream mode ------------------------------------------------------------


def parse_detach_keys(spec: str) -> bytes:
    """``ctrl-]`` (default), ``ctrl-a,d``, ``ctrl-q``… → the byte sequence."""
    out = bytearray()
    for key in spec.split(","):
        key = key.strip().lower()
        if key.startswith("ctrl-") and len(key) == 6:
            ch = key[5]
            code = ord(ch.upper()) ^ 0x40 if ch != "?" else 0x7F
            if not 0 <= code < 32 and code != 0x7F:
                raise ClientError(f"invalid detach key {key!r}", 2)
            out.append(code)
        elif len(key) == 1:
            out += key.encode()
        else:
            raise ClientError(f"invalid detach key {key!r} (use e.g. ctrl-] or ctrl-a,d)", 2)
    if not out:
        raise ClientError("empty --detach-keys", 2)
    return bytes(out)


def terminal_size(fd: int) -> tuple[int, int] | None:
    try:
        size = os.get_terminal_size(fd)
        return size.columns, size.lines
    except OSError:
        return None


class StreamEnded(Exception):
    def __init__(self, code: int, message: str | None = None):
        self.code = code
        self.message = message


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        view = view[n:]


def attach(conn: Connection, session: str, detach_keys: bytes, *, quiet: bool = False) -> int:
    """Bridge this terminal to a PTY (PTY-5). Raw mode only on a terminal; the
    terminal is restored on every exit path."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    is_tty = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if is_tty else None
    sock = conn.sock
    stop_signals = (signal.SIGTERM, signal.SIGHUP)
    old_handlers = {}

    def on_stop(signum, frame):
        raise StreamEnded(128 + signum, "interrupted")

    for sig in stop_signals:
        old_handlers[sig] = signal.signal(sig, on_stop)
    winch_r, winch_w = os.pipe()
    os.set_blocking(winch_w, False)
    old_winch = signal.signal(signal.SIGWINCH, lambda *a: None)
    old_wakeup = signal.set_wakeup_fd(winch_w)
    sel = selectors.PollSelector()  # poll, unlike epoll, accepts regular files
    buf = memoryview(bytearray(RECEIVE_SIZE))
    try:
        if is_tty:
            tty.setraw(stdin, termios.TCSANOW)
        sel.register(sock, selectors.EVENT_READ, "sock")
        sel.register(stdin, selectors.EVENT_READ, "stdin")
        sel.register(winch_r, selectors.EVENT_READ, "winch")
        for payload in conn.leftover():
            _handle_frame(payload, stdout, session)
        held = b""
        while True:
            for key, _ in sel.select():
                if key.data == "sock":
                    data = _receive(sock, buf)
                    if not data:
                        raise StreamEnded(0)
                    for payload in conn.decoder.feed(data):
                        _handle_frame(payload, stdout, session)
                elif key.data == "winch":
                    os.read(winch_r, 4096)
                    size = terminal_size(stdin)
                    if size:
                        sock.sendall(protocol.encode_control({"type": "resize", "cols": size[0],
                                                              "rows": size[1]}))
                else:
                    data = os.read(stdin, 65536)
                    if not data:  # stdin closed (a pipe): keep receiving until the end
                        sel.unregister(stdin)
                        continue
                    data, held, detach = _scan_detach(held, data, detach_keys)
                    if data:
                        sock.sendall(protocol.encode_frame(FrameType.DATA, data))
                    if detach:
                        sock.sendall(protocol.encode_control({"type": "detach"}))
                        _await_detach(conn, stdout, session, buf)
                        raise StreamEnded(0, f"[detached from {session}]")
    except StreamEnded as end:
        code, message = end.code, end.message
    except (ConnectionError, OSError) as exc:
        code, message = 1, f"coop: connection lost: {exc}"
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSAFLUSH, saved)
        signal.set_wakeup_fd(old_wakeup)
        signal.signal(signal.SIGWINCH, old_winch)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        sel.close()
        os.close(winch_r)
        os.close(winch_w)
    if message and not quiet:
        sys.stderr.write(("\r\n" if is_tty else "") + message + "\n")
    return code


def _scan_detach(held: bytes, data: bytes, keys: bytes) -> tuple[bytes, bytes, bool]:
    """Split input into bytes to send, a held partial detach sequence, and
    whether the full sequence was typed."""
    buf = held + data
    idx = buf.find(keys)
    if idx >= 0:
        return buf[:idx], b"", True
    for n in range(min(len(keys) - 1, len(buf)), 0, -1):
        if keys.startswith(buf[-n:]):
            return buf[:-n], buf[-n:], False
    return buf, b"", False


def _handle_frame(payload: bytes, stdout: int, session: str) -> None:
    kind, body = protocol.split_stream_frame(payload)
    if kind == FrameType.DATA:
        _write_all(stdout, body)
        return
    if kind != FrameType.CONTROL:
        return
    msg = json.loads(body)
    event = msg.get("event")
    if event == "detached":
        raise StreamEnded(0, f"[detached from {session}: the daemon is shutting down]")
    if event == "error":
        raise StreamEnded(1, f"coop: {msg.get('message')}")


def _await_detach(conn: Connection, stdout: int, session: str, buf: memoryview) -> None:
    """Drain frames until the daemon confirms the detach or closes."""
    conn.sock.settimeout(5)
    try:
        while True:
            data = _receive(conn.sock, buf)
            if not data:
                return
            for payload in conn.decoder.feed(data):
                kind, body = protocol.split_stream_frame(payload)
                if kind == FrameType.CONTROL and json.loads(body).get("ok"):
                    return
                if kind == FrameType.DATA:
                    _write_all(stdout, body)
    except (socket.timeout, OSError):
        return


def _receive(sock: socket.socket, buf: memoryview) -> memoryview:
    """What the session sent, in ``buf``; empty once it has closed the stream (a
    reset, too: what it sent before closing has been read by then). One buffer
    for every read: ``recv(n)`` maps, shrinks and unmaps a fresh n-byte block
    each time, even for one echoed keystroke."""
    try:
        return buf[:sock.recv_into(buf)]
    except ConnectionResetError:
        return buf[:0]


def run_exec(conn: Connection) -> int:
    """BYD-6: relay stdin, stdout and stderr; the exit code is the command's."""
    stdin, stdout, stderr = sys.stdin.fileno(), sys.stdout.fileno(), sys.stderr.fileno()
    sock = conn.sock
    sel = selectors.PollSelector()  # poll, unlike epoll, accepts regular files
    buf = memoryview(bytearray(RECEIVE_SIZE))
    sel.register(sock, selectors.EVENT_READ, "sock")
    if not os.isatty(stdin):  # a terminal's keystrokes are not a command's input
        sel.register(stdin, selectors.EVENT_READ, "stdin")
    pending = conn.leftover()
    try:
        while True:
            for payload in pending:
                kind, body = protocol.split_stream_frame(payload)
                if kind == FrameType.DATA:
                    _write_all(stdout, body)
                elif kind == FrameType.STDERR:
                    _write_all(stderr, body)
                else:
                    msg = json.loads(body)
                    if msg.get("event") == "exited":
                        code = msg.get("code")
                        return 128 - code if isinstance(code, int) and code < 0 else int(code or 0)
            pending = []
            for key, _ in sel.select():
                if key.data == "sock":
                    data = _receive(sock, buf)
                    if not data:
                        raise ClientError("the session closed the command's stream", 1)
                    pending.extend(conn.decoder.feed(data))
                else:
                    data = os.read(stdin, 65536)
                    frame = protocol.encode_frame(FrameType.DATA, data) if data else \
                        protocol.encode_control({"type": "eof"})
                    try:
                        sock.sendall(frame)
                    except (BrokenPipeError, ConnectionResetError):
                        data = b""  # the command is done with its input: its exit is on its way
                    if not data:
                        sel.unregister(stdin)
    finally:
        sel.close()
