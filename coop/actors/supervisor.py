"""Supervisor: the daemon's root process (ARCHITECTURE.md).

Owns ``~/.coop/sock``: checks each peer's uid, does the handshake and
answers commands. It keeps the session table (name → actor socket) and
forks one session actor per session. For ``attach``, ``shell`` and ``exec``
it hands the client's connection to the session actor by SCM_RIGHTS and
steps out. It holds no PTY and no terminal byte, so a SIGKILL loses nothing:
the next supervisor re-adopts the running actors through their sockets.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import gc
import os
import re
import signal
import socket
import struct
import sys
import time

from coop import __version__, coopfile, fdpass, protocol, unixsocket
from coop.log import log, set_actor
from coop.paths import Paths, home
from coop.protocol import ErrorCode, ProtocolError
from coop.unixsocket import SocketPathError

HANDSHAKE_TIMEOUT = 10.0
ACTOR_TIMEOUT = 10.0
KILL_GRACE = 5.0  # DMN-9: SIGTERM, then SIGKILL after this
KILL_TIMEOUT = 10.0  # beyond the grace: the actor is hung and is killed itself
PR_SET_PDEATHSIG = 1


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def session_name_for(workspace: str, taken) -> str:
    """DMN-5: basename, lowercased, outside [a-z0-9._-] → '-', -2/-3… on collision."""
    base = re.sub(r"[^a-z0-9._-]", "-", os.path.basename(workspace.rstrip("/")).lower())
    base = base.strip(".") or "session"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def end_with_parent(parent: int) -> None:
    """SIGTERM this process when ``parent`` dies. The web and tunnel actors hold a
    port, tokens and a socket that only their supervisor can stop; a SIGKILLed
    supervisor must not leave them serving (SEC-4). Session actors outlive it (DMN-4)."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class Supervisor:
    def __init__(self, paths: Paths):
        self.paths = paths
        self.sessions: dict[str, dict] = {}  # name → {"workspace", "pid"}
        self.clients = 0
        self.started = time.time()
        self.idle_since = time.monotonic()
        self.idle_timeout = float(os.environ.get("COOP_IDLE_TIMEOUT", "30"))
        self.stopping = asyncio.Event()
        self.listener: socket.socket | None = None
        self.children: set[int] = set()
        self.pending: set[str] = set()  # names being created
        self.web: dict | None = None  # {"pid", "info", "config"} of the web actor
        self.tunnel_pid: int | None = None  # the tunnel actor, hosting every tunnel

    # -- start-up -----------------------------------------------------------

    def bind(self) -> socket.socket:
        return unixsocket.listen(str(self.paths.socket), backlog=128)

    async def readopt(self) -> None:
        """DMN-3/DMN-4: find running session actors through their sockets."""
        try:
            entries = list(os.scandir(self.paths.sessions))
        except FileNotFoundError:
            return
        for entry in entries:
            sock_path = self.paths.actor_socket(entry.name)
            if not os.path.lexists(sock_path):
                continue
            try:
                answer = await fdpass.ask(str(sock_path), {"cmd": "info"}, timeout=3)
            except ConnectionRefusedError:
                self._bury(entry.name)
                continue
            except asyncio.TimeoutError:  # alive but slow: adopt it, learn the rest later
                self.sessions[entry.name] = {"workspace": None, "pid": None, "created": None}
                log(f"re-adopted session {entry.name} (its actor is not answering yet)")
                continue
            except OSError as exc:
                log(f"cannot reach the actor of {entry.name}: {exc}")
                continue
            info = answer.get("session") or {}
            if info.get("name") == entry.name:
                self._remember(info)
                log(f"re-adopted session {entry.name} (actor pid {info.get('pid')})")

    def _remember(self, info: dict) -> None:
        self.sessions[info["name"]] = {"workspace": info.get("workspace"), "pid": info.get("pid"),
                                       "created": info.get("created")}

    # -- serving ------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.listener = self.bind()
        self.paths.pidfile.write_text(f"{os.getpid()}\n")
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        await self.readopt()
        log(f"daemon {__version__} started, pid {os.getpid()}, {len(self.sessions)} session(s)")
        accept_task = asyncio.ensure_future(self._accept_loop())
        idle_task = asyncio.ensure_future(self._idle_loop())
        await self.stopping.wait()
        accept_task.cancel()
        idle_task.cancel()
        await self.shutdown()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.listener)
            except OSError as exc:
                log(f"accept failed: {exc}")
                await asyncio.sleep(0.1)
                continue
            try:
                uid = peer_uid(conn)
            except OSError:
                conn.close()
                continue
            if uid != os.getuid():
                log(f"refused connection from uid {uid}")
                conn.close()
                continue
            asyncio.ensure_future(self._client(conn))

    async def _idle_loop(self) -> None:
        """DMN-2: exit after the idle timeout with nothing to do."""
        while True:
            await asyncio.sleep(min(1.0, max(0.05, self.idle_timeout / 10)))
            if (self.sessions or self.clients or self.pending or self.web
                    or self.tunnel_pid in self.children):
                self.idle_since = time.monotonic()
            elif time.monotonic() - self.idle_since >= self.idle_timeout:
                await self.refresh()
                if not self.sessions:
                    log("idle; exiting")
                    self.stopping.set()
                    return

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)
                if self.web and self.web["pid"] == pid and not self.stopping.is_set():
                    log("web server exited unexpectedly; restarting it")
                    config = self.web["config"]
                    self.web = None
                    asyncio.ensure_future(self._start_web(config))
                for name, entry in list(self.sessions.items()):
                    if entry["pid"] == pid and os.path.lexists(self.paths.actor_socket(name)):
                        self._bury(name)

    def _bury(self, name: str) -> None:
        """A session actor died without cleaning up (SIGKILL, crash): the session is
        over (DMN-9); remove what it left in the state dir, keeping persist and rec."""
        from coop.actors.session import remove_session_files

        self.sessions.pop(name, None)
        remove_session_files(self.paths, name)
        asyncio.get_running_loop().run_in_executor(None, bury_cgroups, name)
        log(f"session {name}: its actor died; removed its files")

    async def _client(self, conn: socket.socket) -> None:
        """One client connection in command mode (IPC-2, IPC-3, IPC-4, IPC-6)."""
        self.clients += 1
        loop = asyncio.get_running_loop()
        decoder = protocol.FrameDecoder()
        handed_off = False
        greeted = False
        try:
            while True:
                frames = []
                while not frames:
                    timeout = None if greeted else HANDSHAKE_TIMEOUT
                    data = await asyncio.wait_for(loop.sock_recv(conn, 65536), timeout)
                    if not data:
                        return
                    try:
                        frames = decoder.feed(data)
                    except ProtocolError as exc:
                        await loop.sock_sendall(conn, protocol.encode_message(exc.answer()))
                        return
                for i, payload in enumerate(frames):
                    try:
                        msg = protocol.decode_json(payload)
                        if not greeted:
                            answer = protocol.check_hello(msg)
                            greeted = True
                        else:
                            cmd, msg = protocol.check_command(msg)
                            if cmd in ("attach", "shell", "exec"):
                                rest = b"".join(protocol.encode_raw(f) for f in frames[i + 1:])
                                rest += decoder.take_rest()
                                handed_off = await self._hand_off(conn, msg, rest)
                                if handed_off:
                                    return
                                continue
                            answer = await self._command(cmd, msg)
                    except ProtocolError as exc:
                        await loop.sock_sendall(conn, protocol.encode_message(exc.answer()))
                        if exc.code in (ErrorCode.VERSION_MISMATCH,) or not greeted:
                            return
                        continue
                    await loop.sock_sendall(conn, protocol.encode_message(answer))
        except (OSError, asyncio.TimeoutError):
            pass
        except Exception as exc:  # IPC-6: never let one client take the daemon down
            log(f"internal error serving a client: {exc!r}")
            try:
                await loop.sock_sendall(conn, protocol.encode_message(
                    protocol.error(ErrorCode.INTERNAL, f"internal error: {exc}")))
            except OSError:
                pass
        finally:
            self.clients -= 1
            self.idle_since = time.monotonic()
            conn.close()

    # -- commands -----------------------------------------------------------

    async def _command(self, cmd: str, msg: dict) -> dict:
        if cmd == "ls":
            await self.refresh()
            return protocol.ok(sessions=await self._infos())
        if cmd == "create":
            return await self.create(msg)
        if cmd == "kill":
            return await self.kill(msg)
        if cmd == "status":
            await self.refresh()
            web = self.web["info"] if self.web else None
            return protocol.ok(daemon={"pid": os.getpid(), "version": __version__,
                                       "started": int(self.started),
                                       "socket": str(self.paths.socket),
                                       "web": web and {"host": web["host"], "port": web["port"],
                                                       "urls": web.get("urls", [])}},
                               sessions=await self._infos())
        if cmd == "serve":
            return await self.serve_web(msg)
        if cmd == "serve_stop":
            return protocol.ok(stopped=self.stop_web())
        if cmd.startswith("tunnel"):
            return await self.tunnel_request(msg)
        if cmd == "shutdown":
            asyncio.get_running_loop().call_soon(self.stopping.set)
            return protocol.ok()
        return protocol.error(ErrorCode.INVALID_COMMAND, f"unknown command {cmd!r}")

    def find(self, ref: str) -> str:
        """DMN-5: a session by name, or by workspace path when ``ref`` has a '/'."""
        if "/" in ref:
            target = os.path.realpath(ref)
            for name, entry in self.sessions.items():
                if entry["workspace"] == target:
                    return name
        elif ref in self.sessions:
            return ref
        raise ProtocolError(ErrorCode.SESSION_NOT_FOUND, f"no session {ref!r} (see coop ls)")

    async def _ask(self, name: str, msg: dict, fds=(), timeout: float = ACTOR_TIMEOUT) -> dict:
        try:
            return await fdpass.ask(str(self.paths.actor_socket(name)), msg, list(fds), timeout)
        except ConnectionRefusedError:  # a socket nobody listens on: the actor died
            self._bury(name)
            raise ProtocolError(ErrorCode.SESSION_NOT_FOUND, f"session {name!r} is gone") from None
        except asyncio.TimeoutError:  # busy or stopped, not gone: it stays in the table
            raise ProtocolError(ErrorCode.INTERNAL,
                                f"session {name!r} is not answering (its actor is busy or "
                                "stopped)") from None
        except OSError:
            self.sessions.pop(name, None)
            raise ProtocolError(ErrorCode.SESSION_NOT_FOUND, f"session {name!r} is gone") from None

    async def refresh(self) -> None:
        """Drop sessions whose actor no longer answers (killed, crashed)."""
        for name in list(self.sessions):
            if not os.path.exists(self.paths.actor_socket(name)):
                self.sessions.pop(name, None)

    async def _infos(self) -> list[dict]:
        """Every session's own answer; one that does not answer in time is listed
        ``not answering`` rather than left out (``kill --all`` must still reach it)."""
        names = sorted(self.sessions)
        answers = await asyncio.gather(*(self._ask(n, {"cmd": "info"}, timeout=3) for n in names),
                                       return_exceptions=True)
        infos = []
        for name, answer in zip(names, answers):
            if isinstance(answer, dict) and answer.get("ok"):
                self._remember(answer["session"])
                infos.append(answer["session"])
            elif name in self.sessions:
                entry = self.sessions[name]
                infos.append({"name": name, "workspace": entry["workspace"] or "?",
                              "pid": entry["pid"], "created": entry["created"] or int(self.started),
                              "state": "not answering", "ptys": [], "local_clients": 0,
                              "web_clients": 0, "tunnel_clients": 0})
        return infos

    async def create(self, msg: dict) -> dict:
        if "\0" in msg["workspace"]:
            return protocol.error(ErrorCode.INVALID_COMMAND, "workspace: a path has no NUL byte")
        workspace = os.path.realpath(msg["workspace"])
        if not os.path.isdir(workspace):
            return protocol.error(ErrorCode.INVALID_COMMAND, f"workspace {workspace} is not a directory")
        try:
            table = coopfile.validate(msg.get("coopfile") or {}, source="coop.toml")
        except coopfile.CoopfileError as exc:
            return protocol.error(ErrorCode.INVALID_COOPFILE, str(exc))
        name = msg.get("name")
        taken = set(self.sessions) | self.pending
        if name is None:
            name = session_name_for(workspace, taken)
        elif not NAME_RE.match(name):
            return protocol.error(ErrorCode.INVALID_COMMAND,
                                  f"invalid session name {name!r}: use a-z, 0-9, '.', '_', '-'")
        elif name in taken:
            return protocol.error(ErrorCode.SESSION_EXISTS, f"session {name!r} already exists")
        allow_paths = [p for p in msg.get("allow_paths") or [] if isinstance(p, str)]
        refusal = self._check_start(workspace, table, allow_paths)
        if refusal:
            return refusal
        self.pending.add(name)
        try:
            answer = await self._fork_actor(name, workspace, table, allow_paths)
        finally:
            self.pending.discard(name)
        if answer.get("ok"):
            self._remember({"name": name, "workspace": workspace, "pid": answer.get("pid")})
        return answer

    def _check_start(self, workspace: str, table: dict, allow_paths: list[str]) -> dict | None:
        """Refuse before forking what the sandbox would refuse (SB-3, CF-5)."""
        if os.environ.get("COOP_UNSANDBOXED") == "1":
            return None
        from coop.image.build import rootfs_for
        from coop.sandbox.source import check_source
        from coop.sandbox.syscalls import SandboxError

        try:
            check_source(workspace, str(home()), allow_paths, [str(self.paths.state)])
        except SandboxError as exc:
            return protocol.error(ErrorCode.PERMISSION_DENIED, str(exc))
        if rootfs_for(table, self.paths.state) is None:
            return protocol.error(ErrorCode.ROOTFS_NOT_BUILT,
                                  f"the rootfs for image {table['base']['image']!r} is not built "
                                  "(or the Coopfile changed); run: coop init")
        return None

    async def _fork_actor(self, name: str, workspace: str, table: dict,
                          allow_paths: list[str]) -> dict:
        from coop.actors import session as session_actor

        created = int(time.time())
        _pid, answer = await self.spawn_actor(
            lambda ready: session_actor.run(self.paths, name, workspace, table, created, ready,
                                            allow_paths),
            f"session {name}")
        return answer

    async def spawn_actor(self, main, what: str, timeout: float = 30,
                          bound: bool = False) -> tuple[int, dict]:
        """Fork an actor running ``main(ready_fd)`` on a fresh event loop; it
        reports readiness (an IPC answer) over a pipe. A ``bound`` actor ends
        with this supervisor."""
        r, w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the actor: a fresh loop, none of the supervisor's fds
            try:
                gc.freeze()  # never collect the parent's objects (their fds are not ours)
                os.setsid()
                os.closerange(3, w)
                os.closerange(w + 1, 1 << 16)
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                if bound:
                    end_with_parent(parent)
                asyncio.events._set_running_loop(None)
                loop = asyncio.new_event_loop()
                asyncio.set_event_loop(loop)
                loop.run_until_complete(main(w))
            except BaseException as exc:  # noqa: BLE001 - the child must never return
                log(f"{what}: actor crashed: {exc!r}")
            finally:
                os._exit(0)
        os.close(w)
        self.children.add(pid)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb", 0))
        try:
            head = await asyncio.wait_for(reader.readexactly(4), timeout)
            body = await asyncio.wait_for(reader.readexactly(struct.unpack(">I", head)[0]), 5)
            return pid, protocol.decode_json(body)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ProtocolError):
            return pid, protocol.error(ErrorCode.INTERNAL, f"{what} failed to start (see coop logs)")
        finally:
            transport.close()

    # -- web actor (WEB-1) --------------------------------------------------

    async def serve_web(self, msg: dict) -> dict:
        if self.web and self.web["pid"] in self.children:
            return protocol.ok(**self.web["info"], already=True)
        config = {k: msg[k] for k in ("host", "port", "token", "read_only_token", "tls") if k in msg}
        if not 0 <= (config.get("port") or 0) <= 65535:
            return protocol.error(ErrorCode.INVALID_COMMAND, "port: expected 0 to 65535")
        if "\0" in (config.get("host") or "") + (config.get("token") or ""):
            return protocol.error(ErrorCode.INVALID_COMMAND, "host and token have no NUL byte")
        return await self._start_web(config)

    async def _start_web(self, config: dict) -> dict:
        from coop.actors import web

        pid, answer = await self.spawn_actor(lambda ready: web.run(self.paths, config, ready),
                                             "web server", bound=True)
        if not answer.get("ok"):
            return answer
        info = {k: v for k, v in answer.items() if k != "ok"}
        # a restarted web actor keeps the same address and tokens
        self.web = {"pid": pid, "info": info,
                    "config": {**config, "host": info["host"], "port": info["port"],
                               "token": info["token"],
                               **({"read_only_token": info["read_only_token"]}
                                  if info.get("read_only_token") else {})}}
        log(f"web server on {info['host']}:{info['port']} (pid {pid})")
        return answer

    # -- tunnel actor (TUN-1) ------------------------------------------------

    async def tunnel_request(self, msg: dict) -> dict:
        """Forward a tunnel command to the tunnel actor, starting it on demand.
        Only that actor imports aiortc (it is heavy). The actor exits when it
        has had no tunnel for a while; a ``tunnel`` request racing that exit
        starts a new one."""
        answer = await self._ask_tunnel_actor(msg)
        if answer is None and msg["cmd"] == "tunnel":
            self.tunnel_pid = None
            answer = await self._ask_tunnel_actor(msg)
        return answer or protocol.error(ErrorCode.INTERNAL, "the tunnel actor did not answer")

    async def _ask_tunnel_actor(self, msg: dict) -> dict | None:
        if self.tunnel_pid not in self.children:
            if msg["cmd"] != "tunnel":
                return protocol.error(ErrorCode.INVALID_COMMAND, "no tunnel is running")
            from coop.actors import tunnel

            pid, answer = await self.spawn_actor(lambda ready: tunnel.run(self.paths, ready),
                                                 "tunnel", bound=True)
            if not answer.get("ok"):
                return answer
            self.tunnel_pid = pid
        try:
            return await fdpass.ask(str(self.paths.tunnel_socket), msg, timeout=30)
        except (OSError, asyncio.TimeoutError):
            return None

    def stop_tunnels(self) -> None:
        if self.tunnel_pid in self.children:
            try:
                os.kill(self.tunnel_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop_web(self) -> bool:
        web, self.web = self.web, None
        if web and web["pid"] in self.children:
            try:
                os.kill(web["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
            log("web server stopped")
            return True
        return False

    async def kill(self, msg: dict) -> dict:
        name = self.find(msg["session"])
        force = bool(msg.get("force"))
        try:
            answer = await self._ask(name, {"cmd": "kill", "force": force},
                                     timeout=KILL_TIMEOUT + (0 if force else KILL_GRACE))
        except ProtocolError as exc:
            pid = self.sessions.get(name, {}).get("pid")
            if exc.code != ErrorCode.INTERNAL or not pid:
                raise
            log(f"session {name}: its actor did not answer the kill; killing the actor")
            try:
                os.kill(pid, signal.SIGKILL)  # the sandbox's init ends with its actor
            except ProcessLookupError:
                pass
            self._bury(name)
            return protocol.ok()
        self.sessions.pop(name, None)
        return answer

    async def _hand_off(self, conn: socket.socket, msg: dict, rest: bytes) -> bool:
        """Pass the client's connection to the session actor (SCM_RIGHTS)."""
        loop = asyncio.get_running_loop()
        try:
            name = self.find(msg["session"])
            fd = os.dup(conn.fileno())
            try:
                answer = await self._ask(name, {"cmd": "adopt", "kind": "local", "request": msg,
                                                "rest": base64.b64encode(rest).decode()}, [fd])
            finally:
                os.close(fd)
        except ProtocolError as exc:
            await loop.sock_sendall(conn, protocol.encode_message(exc.answer()))
            return False
        if not answer.get("ok"):
            await loop.sock_sendall(conn, protocol.encode_message(answer))
            return False
        return True

    async def shutdown(self) -> None:
        """DMN-3: detach every client, leave sessions running, remove socket and pid."""
        log("shutting down")
        self.stop_web()
        self.stop_tunnels()
        await asyncio.gather(*(self._ask(n, {"cmd": "detach_all"}, timeout=3)
                               for n in list(self.sessions)), return_exceptions=True)
        for path in (self.paths.socket, self.paths.pidfile):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if self.listener:
            self.listener.close()


def bury_cgroups(name: str) -> None:
    """Kill what is left in a dead session's cgroups (BYD-7) and remove them."""
    from coop.sandbox.limits import Limits

    try:
        left = Limits.left_behind(name, on_event=log)
        if left.places:
            left.kill()
            left.cleanup()
            log(f"session {name}: removed the cgroups it left behind")
    except (OSError, ValueError) as exc:
        log(f"session {name}: cannot remove its cgroups: {exc}")


def lock_daemon(paths: Paths) -> int | None:
    """DMN-1: one daemon per state dir; the loser of the race returns None."""
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def preload_actor_code() -> None:
    """Import what forked session actors run, then freeze the heap, so every
    actor shares these pages with the supervisor instead of copying them
    (idle actor PSS). aiortc stays out: only the tunnel actor imports it."""
    import coop.actors.session  # noqa: F401
    import coop.wsclient  # noqa: F401

    if os.environ.get("COOP_UNSANDBOXED") != "1":
        import coop.sandbox.launcher  # noqa: F401
    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the detached daemon process."""
    argv = sys.argv[1:] if argv is None else argv
    paths = Paths.default(argv[0] if argv else None)
    set_actor("daemon")
    paths.ensure_state()
    lock = lock_daemon(paths)
    if lock is None:
        return 0  # another daemon won the race; clients will find it
    preload_actor_code()
    sup = Supervisor(paths)
    try:
        asyncio.run(sup.serve())
    except SocketPathError as exc:
        log(f"cannot start: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    os.chdir(home() if os.path.isdir(home()) else "/")
    raise SystemExit(main())
