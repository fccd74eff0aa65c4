"""Session actor: one process per session, sole owner of its PTYs and clients.

It listens on ``~/.coop/sessions/<name>/actor.sock`` (0600) for the
supervisor, the web and the tunnel actors. Client connections arrive by
SCM_RIGHTS (``adopt``) and are served here directly, so terminal bytes never
pass through another coop process. The actor outlives the supervisor
(DMN-4): a new supervisor finds it again through its socket.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shlex
import shutil
import signal
import socket
import time

from coop import coopfile, fdpass, protocol, unixsocket
from coop.clients import ExecClient, StreamClient
from coop.console import Console
from coop.filter import InputFilter
from coop.launcher import LaunchError, Launcher
from coop.log import log, set_actor
from coop.paths import Paths
from coop.protocol import ErrorCode

CRASH_WINDOW = 2.0  # DMN-7: an agent exiting this soon after start counts as a crash
CRASH_LIMIT = 5
RECORDING_TIMEOUT = 10.0  # how long a kill waits for the recorders to write what they hold


def exit_status_text(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"code {code}"


class Session:
    def __init__(self, paths: Paths, name: str, workspace: str, table: dict, created: int,
                 launcher: Launcher):
        self.paths = paths
        self.name = name
        self.workspace = workspace
        self.table = table
        self.created = created
        self.launcher = launcher
        self.consoles: dict[int, Console] = {}
        self.execs: dict[int, ExecClient] = {}
        self.crashes = 0
        self.stopping = False
        self.done = asyncio.Event()
        self._restart: asyncio.TimerHandle | None = None
        self._early_exits: dict[int, int] = {}
        launcher.on_exit = self._on_exit

    # -- environment --------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """SB-5 environment; ``$NAME`` values expanded only now (CF-4). An image's
        ``Env`` replaces the defaults (PATH, TERM, LANG), never coop's own variables."""
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "TERM": "xterm-256color",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            **getattr(self.launcher, "image_env", {}),  # only the sandbox's has one
            "HOME": self.launcher.home,
            "USER": self.launcher.user,
            "COOP_SESSION": self.name,
            "COOP_WORKSPACE": self.workspace,
            "COOP_CREATED": str(self.created),
            "IS_SANDBOX": "1",
        }
        env.update(self.launcher.extra_env())
        env.update(coopfile.expand_env(self.table.get("env", {}), os.environ))
        return env

    @property
    def cwd(self) -> str:
        return self.launcher.workdir

    def make_filter(self) -> InputFilter:
        cfg = self.table.get("input_filter", {})
        extra = [s.encode("utf-8", "surrogateescape") for s in cfg.get("block_sequences", [])]
        return InputFilter(extra_sequences=extra,
                           ctrl_c_debounce_ms=cfg.get("ctrl_c_debounce_ms", 500))

    # -- PTYs ---------------------------------------------------------------

    async def start(self) -> None:
        await self.launcher.start()
        agent = self._console(0, "agent", coopfile.agent_argv(self.table))
        self.consoles[0] = agent
        await self._spawn(agent)

    def _console(self, ident: int, role: str, argv: list[str]) -> Console:
        cfg = self.table.get("session", {})
        console = Console(ident, role, argv, self.scrollback_bytes,
                          cfg.get("attention_quiet_ms", 3000), self._attention)
        if cfg.get("record"):
            console.start_recording(self.recordings)
        return console

    @property
    def recordings(self):
        return self.paths.session_dir(self.name) / "rec"

    def _attention(self, console: Console, state: str) -> None:
        """BYD-2: tell clients; run the user's hook with the session name only."""
        console.broadcast({"event": "attention", "pty": console.id, "state": state})
        log(f"pty {console.id} is {state}")
        hook = self.table.get("session", {}).get("on_attention", "")
        if state == "waiting" and hook and console.role == "agent":
            command = hook.replace("{session}", shlex.quote(self.name))
            asyncio.ensure_future(self._run_hook(command))

    async def _run_hook(self, command: str) -> None:
        try:
            proc = await asyncio.create_subprocess_shell(
                command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
            code = await asyncio.wait_for(proc.wait(), 30)
            if code:
                log(f"on_attention hook exited with code {code}")
        except (OSError, asyncio.TimeoutError) as exc:
            log(f"on_attention hook failed: {exc}")

    @property
    def scrollback_bytes(self) -> int:
        return self.table.get("session", {}).get("scrollback_bytes", 1 << 20)

    async def _spawn(self, console: Console) -> None:
        child = await self.launcher.spawn(console.argv, self.environment(), self.cwd, *console.size)
        console.attach_process(child)
        log(f"started pty {console.id} ({console.role}) pid {child.pid}")
        self._registered(child.pid)

    async def spawn_shell(self, command: str | None, size) -> Console:
        ident = 1
        while ident in self.consoles:
            ident += 1
        argv = ["/bin/sh", "-c", command] if command else [self.launcher.shell]
        console = self._console(ident, "shell", argv)
        if size:
            console.size = size
        self.consoles[ident] = console
        try:
            await self._spawn(console)
        except BaseException:
            del self.consoles[ident]
            raise
        return console

    def _on_exit(self, pid: int, code: int) -> None:
        ex = self.execs.pop(pid, None)
        if ex is not None:
            ex.process_exited(code)
            return
        for console in self.consoles.values():
            if console.pid == pid:
                self._console_exited(console, code)
                return
        # a process that exits at once can be reported before its spawn() has
        # returned to us: keep the news until the pid is registered
        self._early_exits[pid] = code
        while len(self._early_exits) > 64:
            del self._early_exits[next(iter(self._early_exits))]

    def _registered(self, pid: int) -> None:
        """A spawned pid now has its owner; deliver an exit that came first."""
        code = self._early_exits.pop(pid, None)
        if code is not None:
            self._on_exit(pid, code)

    def _console_exited(self, console: Console, code: int) -> None:
        ran_for = time.monotonic() - console.started_at
        console.process_exited(code)
        log(f"pty {console.id} exited ({exit_status_text(code)})")
        console.notice(f"process exited ({exit_status_text(code)})")
        console.broadcast(console.exit_event())
        if self.stopping:
            return
        if console.role == "shell":  # DMN-8: shells are never restarted
            console.end_clients()
            console.close()
            del self.consoles[console.id]
            return
        cfg = self.table.get("session", {})
        self.crashes = self.crashes + 1 if ran_for < CRASH_WINDOW else 0
        if not cfg.get("auto_restart", True):
            console.end_clients()
            return
        if self.crashes >= CRASH_LIMIT:
            console.notice(f"agent exited {CRASH_LIMIT} times within {CRASH_WINDOW:.0f} s of "
                           "starting; not restarting (attach to try again)")
            log("agent crash loop; restarts stopped")
            console.end_clients()
            return
        delay = cfg.get("restart_delay_ms", 1000)
        console.state = "restarting"
        console.notice(f"restarting in {delay} ms...")
        console.broadcast({"event": "pty_restarting", "pty": console.id, "delay_ms": delay})
        self._restart = asyncio.get_running_loop().call_later(
            delay / 1000, lambda: asyncio.ensure_future(self._restart_agent(console)))

    async def _restart_agent(self, console: Console) -> None:
        self._restart = None
        if self.stopping or console.child is not None:
            return
        try:
            await self._spawn(console)
        except LaunchError as exc:
            console.notice(f"restart failed: {exc}")
            console.state = "exited"
            console.end_clients()

    # -- clients ------------------------------------------------------------

    async def adopt(self, msg: dict, fd: int) -> None:
        """Take over a client connection handed over by another actor."""
        sock = socket.socket(fileno=fd)
        request = msg.get("request") or {}
        kind = msg.get("kind", "local")
        rest = base64.b64decode(msg.get("rest", "") or "")
        cmd = request.get("cmd")
        loop = asyncio.get_running_loop()
        if cmd == "exec":
            await self._adopt_exec(sock, request, rest)
            return
        size = None
        if isinstance(request.get("cols"), int) and isinstance(request.get("rows"), int):
            if 0 < request["cols"] < 10000 and 0 < request["rows"] < 10000:
                size = (request["cols"], request["rows"])
        try:
            if cmd == "shell":
                console = await self.spawn_shell(request.get("command"), size)
            else:
                console = self.consoles.get(request.get("pty", 0))
                if console is None:
                    raise protocol.ProtocolError(
                        ErrorCode.PTY_NOT_FOUND, f"session {self.name} has no pty {request.get('pty')}")
                if console.role == "agent" and console.child is None and console.state == "exited":
                    self.crashes = 0  # attaching to a stopped agent starts it again
                    await self._spawn(console)
        except protocol.ProtocolError as exc:
            await self._refuse(sock, exc.answer(), msg.get("dialect"))
            return
        except LaunchError as exc:
            await self._refuse(sock, protocol.error(ErrorCode.SANDBOX_FAILED, str(exc)),
                               msg.get("dialect"))
            return
        if request.get("record"):
            console.start_recording(self.recordings)
        filtered = kind in ("web", "tunnel")
        if msg.get("dialect") == "websocket":  # a browser, upgraded by the web actor
            from coop.wsclient import WebSocketClient as client_class
        else:
            client_class = StreamClient
        client = client_class(kind, self, console, size, filtered=filtered,
                              read_only=bool(msg.get("read_only")))
        await loop.connect_accepted_socket(lambda: client, sock)
        offset = request.get("offset") if isinstance(request.get("offset"), int) else None
        answer = {"ok": True, "session": self.name, "pty": console.id}
        client.answer(answer)
        console.add_client(client, offset,
                           announce=lambda start: client.event({"event": "attached", **answer,
                                                                "offset": start}))
        log(f"attached {kind} client to pty {console.id}")
        if rest:
            client.data_received(rest)

    async def _adopt_exec(self, sock: socket.socket, request: dict, rest: bytes) -> None:
        argv = request.get("argv")
        if not argv or not all(isinstance(a, str) for a in argv):
            await self._refuse(sock, protocol.error(ErrorCode.INVALID_COMMAND,
                                                    "exec: argv must be a non-empty list of strings"))
            return
        try:
            child = await self.launcher.spawn_piped(argv, self.environment(), self.cwd)
        except LaunchError as exc:
            await self._refuse(sock, protocol.error(ErrorCode.SANDBOX_FAILED, str(exc)))
            return
        client = ExecClient(self, child)
        self.execs[child.pid] = client
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: client, sock)
        transport.write(protocol.encode_message({"ok": True, "session": self.name, "pid": child.pid}))
        if not request.get("stdin", True):
            client._close_stdin()
        if rest:
            client.data_received(rest)
        log(f"exec pid {child.pid}")
        self._registered(child.pid)

    async def _refuse(self, sock: socket.socket, answer: dict, dialect: str | None = None) -> None:
        """Answer an error in the client's own dialect, then close."""
        if dialect == "websocket":  # the reason travels in a close frame
            from coop import websocket, wsclient

            data = websocket.Connection().send_close(*wsclient.refusal(answer))
        else:
            data = protocol.encode_message(answer)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_sendall(sock, data), 5)
        except (OSError, asyncio.TimeoutError):
            pass
        sock.close()

    def client_gone(self, client) -> None:
        log(f"detached {client.kind} client from pty {client.console.id}")

    def detach_all(self) -> None:
        """DMN-3: the daemon shuts down; clients are told and closed, PTYs stay."""
        for console in self.consoles.values():
            console.broadcast({"event": "detached"})
            console.end_clients()

    # -- lifecycle ----------------------------------------------------------

    async def kill(self, force: bool) -> None:
        self.stopping = True
        if self._restart:
            self._restart.cancel()
        for console in self.consoles.values():
            console.broadcast({"event": "pty_exited", "pty": console.id, "code": None,
                               "reason": "session killed"})
            console.end_clients()
        await self.launcher.stop(0 if force else 5.0)
        recordings = [end for console in self.consoles.values() if (end := console.close())]
        if recordings:  # complete on disk when the kill returns
            await asyncio.wait(recordings, timeout=RECORDING_TIMEOUT)
        log("killed")
        self.done.set()

    def info(self) -> dict:
        clients = {"local": 0, "web": 0, "tunnel": 0}
        for console in self.consoles.values():
            for c in console.clients:
                clients[c.kind] = clients.get(c.kind, 0) + 1
        agent = self.consoles.get(0)
        return {
            "name": self.name,
            "workspace": self.workspace,
            "pid": os.getpid(),
            "created": self.created,
            "state": agent.display_state if agent else "starting",
            "ptys": [c.info() for c in sorted(self.consoles.values(), key=lambda c: c.id)],
            "local_clients": clients["local"],
            "web_clients": clients["web"],
            "tunnel_clients": clients["tunnel"],
            "network": self.table.get("network", {}).get("mode"),
            "workdir": self.launcher.workdir,
            "launcher": self.launcher.describe(),
        }


class ActorServer:
    """The actor's control socket: requests from the supervisor, web and tunnel."""

    def __init__(self, session: Session, sock: socket.socket):
        self.session = session
        self.sock = sock

    async def serve(self) -> None:
        await fdpass.serve_requests(self.sock, self._dispatch, self.session.done)

    async def _dispatch(self, msg: dict, fds: list[int]) -> dict | None:
        cmd = msg.get("cmd")
        s = self.session
        if cmd == "adopt":
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                return protocol.error(ErrorCode.INVALID_COMMAND, "adopt needs one fd")
            if s.stopping:
                os.close(fds[0])
                return protocol.error(ErrorCode.SESSION_NOT_FOUND, f"session {s.name} is stopping")
            await s.adopt(msg, fds[0])
            return protocol.ok()
        for fd in fds:
            os.close(fd)
        if cmd == "info":
            return protocol.ok(session=s.info())
        if cmd == "kill":
            await s.kill(bool(msg.get("force")))
            return protocol.ok()
        if cmd == "detach_all":
            s.detach_all()
            return protocol.ok()
        if cmd == "spawn_shell":  # a new shell PTY nobody is attached to yet (web API)
            command = msg.get("command") if isinstance(msg.get("command"), str) else None
            try:
                console = await s.spawn_shell(command, None)
            except LaunchError as exc:
                return protocol.error(ErrorCode.SANDBOX_FAILED, str(exc))
            return protocol.ok(pty=console.id)
        return protocol.error(ErrorCode.INVALID_COMMAND, f"unknown actor command {cmd!r}")


def make_launcher(paths: Paths, name: str, workspace: str, table: dict,
                  allow_paths: list[str]) -> Launcher:
    """The sandbox for every user-facing session; the host launcher only when a
    test asks for it with COOP_UNSANDBOXED=1."""
    if os.environ.get("COOP_UNSANDBOXED") == "1":
        from coop.launcher import HostLauncher

        return HostLauncher(workspace)
    from coop.sandbox.launcher import launcher_for_session

    return launcher_for_session(paths, name, workspace, table, allow_paths)


async def run(paths: Paths, name: str, workspace: str, table: dict, created: int,
              ready_fd: int, allow_paths: list[str] = ()) -> None:
    """Actor main: start the session, report readiness, serve until killed."""
    set_actor(name)
    loop = asyncio.get_running_loop()
    session_dir = paths.session_dir(name)
    sock = None

    def ready(answer: dict) -> None:
        nonlocal ready_fd
        if ready_fd >= 0:
            os.write(ready_fd, protocol.encode_message(answer))
            os.close(ready_fd)
            ready_fd = -1

    try:
        session_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        sock = unixsocket.listen(str(paths.actor_socket(name)))
        launcher = make_launcher(paths, name, workspace, table, list(allow_paths))
        session = Session(paths, name, workspace, table, created, launcher)
        await session.start()
    except LaunchError as exc:
        log(f"failed to start: {exc}")
        ready(protocol.error(ErrorCode.SANDBOX_FAILED, str(exc)))
        remove_session_files(paths, name)
        return
    except Exception as exc:
        log(f"failed to start: {exc!r}")
        ready(protocol.error(ErrorCode.INTERNAL, f"session failed to start: {exc}"))
        remove_session_files(paths, name)
        return
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(session.kill(False)))
    log(f"created (workspace {workspace})")
    ready(protocol.ok(session=name, pid=os.getpid()))
    await ActorServer(session, sock).serve()
    sock.close()
    remove_session_files(paths, name)


def remove_session_files(paths: Paths, name: str) -> None:
    """Remove the session directory except what must outlive it (persist, rec); the
    actor socket goes first, so a socket left behind means the actor died unclean.
    The supervisor may run this for a dead actor at the same time: nothing missing is an error."""
    d = paths.session_dir(name)
    try:
        os.unlink(paths.actor_socket(name))
    except FileNotFoundError:
        pass
    try:
        entries = list(os.scandir(d))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.name in ("persist", "rec"):  # kept across sessions (SB-2, BYD-3)
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
    try:
        d.rmdir()
    except OSError:
        pass
