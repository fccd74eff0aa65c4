"""The sandbox launcher (SB-1..SB-9): the session actor's side of the sandbox.

``start()`` clones the init (``coop.sandbox.init``) straight from the
running session actor, so no interpreter starts. Afterwards every request
goes to the init over a socketpair and every PTY master or pipe crosses it by
SCM_RIGHTS.

Process ids: ``spawn``/``spawn_piped`` return, ``signal`` takes and
``on_exit`` reports the pid *inside the sandbox* (what ``ps`` and ``$$`` show
there), never a host pid.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from coop.coopfile import parse_size
from coop.image import tree
from coop.image.build import rootfs_for
from coop.launcher import Launcher, LaunchError, PipedChild, PtyChild
from coop.log import log
from coop.paths import home
from coop.protocol import FrameDecoder, ProtocolError, decode_json, encode_message
from coop.sandbox import init as sandbox_init
from coop.sandbox import limits, mounts, network, proxy
from coop.sandbox.source import check_source
from coop.sandbox.syscalls import SandboxError
from coop.sandbox.userns import check_userns

NETWORK_MODES = ("none", "host", "veth", "proxy")
START_TIMEOUT = 10.0
REPLY_TIMEOUT = 10.0
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass
class SandboxSpec:
    """What one session's sandbox is made of."""

    name: str  # session name; also the hostname (SB-5)
    rootfs: str  # "host" or an absolute directory (dir:PATH, built images)
    state_dir: str  # ~/.coop/sessions/<name>: upper/, work/, persist/
    workspace: str  # host directory, already checked by check_source (SB-3)
    workspace_path: str = "/workspace"
    persist: list[str] = field(default_factory=list)  # dirs under /root kept across runs
    network: str = "none"  # none | host | veth | proxy
    allow: list[str] = field(default_factory=list)  # proxy allowlist
    limits: dict = field(default_factory=dict)  # {"memory": bytes, "pids": n, "cpu": cores}
    host_lower: bool = False  # rootfs is a build's delta over the host's system dirs
    rootfs_hash: str | None = None  # the build (CF-5) whose rootfs this is; None: the host
    image_env: dict[str, str] = field(default_factory=dict)  # the image config's Env

    def check(self) -> None:
        """Reject what the mount table cannot express, with one line each."""
        if self.network not in NETWORK_MODES:
            raise SandboxError(f"network mode {self.network!r}: expected one of "
                               f"{', '.join(NETWORK_MODES)}")
        if self.rootfs != "host" and not os.path.isabs(self.rootfs):
            raise SandboxError(f"rootfs {self.rootfs!r}: expected \"host\" or an absolute path")
        path = self.workspace_path
        if not path.startswith("/") or os.path.normpath(path) in ("/", "/proc", "/dev") \
                or ".." in path.split("/"):
            raise SandboxError(f"workspace path {path!r}: expected an absolute path below /")
        for rel in self.persist:
            if rel.startswith("/") or not rel.strip("/") or {".", ".."} & set(rel.split("/")):
                raise SandboxError(f"persist dir {rel!r}: expected a relative path without ..")


class SandboxLauncher(Launcher):
    """Runs a session's processes under the sandbox init."""

    def __init__(self, spec: SandboxSpec, on_event: Callable[[str], None] = lambda line: None):
        self.spec = spec
        self.on_event = on_event
        self.on_exit = lambda pid, code: None
        self.home = mounts.HOME
        self.user = "root"
        self.workdir = spec.workspace_path
        self.shell = self._pick_shell()
        self.image_env = dict(spec.image_env)
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder()
        self._fds: list[int] = []  # received, not yet claimed by a message
        self._outbox: list[tuple[bytes, list[int]]] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._ready: asyncio.Future | None = None
        self._gone: asyncio.Event | None = None
        self._children: set[int] = set()
        self._init_pid = 0  # host pid of the init, our child
        self._init_pidfd = -1  # so a late SIGKILL can never hit a recycled pid
        self._proxy_port: int | None = None
        self._network = None  # the veth handle or the egress proxy
        self._limits = None
        self._stopping = False

    def _pick_shell(self) -> str:
        base = "" if self.spec.rootfs == "host" else self.spec.rootfs
        for shell in ("/bin/bash", "/usr/bin/bash"):
            if os.path.lexists(base + shell) or (self.spec.host_lower and os.path.lexists(shell)):
                return shell
        return "/bin/sh"

    # -- start ------------------------------------------------------------------

    async def start(self) -> None:
        spec = self.spec
        check_userns()
        spec.check()
        loop = asyncio.get_running_loop()
        ops = self._prepare()
        parent, child = socket.socketpair()
        cfg = sandbox_init.InitConfig(spec.name, ops, os.path.abspath(spec.state_dir), child,
                                      spec.network, os.geteuid(), os.getegid())
        try:
            self._init_pid = sandbox_init.start(cfg)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._init_pidfd = os.pidfd_open(self._init_pid)
        parent.setblocking(False)
        self._sock = parent
        self._gone = asyncio.Event()
        self._ready = loop.create_future()
        loop.add_reader(parent, self._readable)
        try:
            ready = await asyncio.wait_for(self._ready, START_TIMEOUT)
            await self._attach(ready)
        except BaseException as exc:
            await self._teardown(0.0)
            if isinstance(exc, asyncio.TimeoutError):
                raise SandboxError(f"sandbox init did not answer within {START_TIMEOUT:g} s") \
                    from None
            raise

    def _prepare(self) -> list[mounts.Op]:
        """Fresh upper/work dirs, the persist dirs (made without following a
        symlink the session may have planted) and the mount plan."""
        spec = self.spec
        os.makedirs(spec.state_dir, mode=0o700, exist_ok=True)
        state = os.open(spec.state_dir, _DIR | os.O_NOFOLLOW)
        try:
            for rel in spec.persist:
                os.close(mounts.open_beneath(state, f"persist/{rel}", "dir", 0o700,
                                             label=f"persist dir {rel}"))
        finally:
            os.close(state)
        self._remove_scratch()  # a crashed run's
        for name in ("upper", "work", mounts.STAGE):
            os.mkdir(os.path.join(spec.state_dir, name), 0o700)
        host = mounts.host_entries() if spec.rootfs == "host" or spec.host_lower else None
        files = {"/etc/resolv.conf": f"nameserver {network.DNS_SERVER}\n"} \
            if spec.network == "veth" else None
        return mounts.plan(None if spec.rootfs == "host" else spec.rootfs, spec.workspace,
                           spec.workspace_path, spec.persist,
                           [os.path.join(spec.state_dir, "persist", rel) for rel in spec.persist],
                           host, files)

    async def _attach(self, ready: dict) -> None:
        """Limits and the host side of the network, once the init is up."""
        self._limits = limits.Limits(self.spec.limits, self.spec.name, on_event=self.on_event)
        self._limits.apply(self._init_pid)
        if self.spec.network == "veth":
            # the init's user and network namespaces, which it sent along
            self._network = await network.start_veth(tuple(self._take_fds(2)), self.on_event)
        elif self.spec.network == "proxy":
            self._proxy_port = ready["proxy_port"]
            listener = socket.socket(fileno=self._take_fds(1)[0])
            self._network = proxy.EgressProxy(listener, self.spec.allow, self.on_event)
            await self._network.start()

    def extra_env(self) -> dict[str, str]:
        if self._proxy_port is None:
            return {}
        url = f"http://127.0.0.1:{self._proxy_port}"
        env = {}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            env[name] = env[name.lower()] = url
        env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1,::1"
        return env

    # -- requests ---------------------------------------------------------------

    async def spawn(self, argv, env, cwd, cols, rows) -> PtyChild:
        reply = await self._request({"op": "spawn", "argv": argv, "env": env, "cwd": cwd,
                                     "cols": cols, "rows": rows}, [])
        master = self._take_fds(1)[0]
        os.set_blocking(master, False)
        return PtyChild(pid=reply["pid"], master_fd=master)

    async def spawn_piped(self, argv, env, cwd) -> PipedChild:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            reply = await self._request({"op": "spawn_piped", "argv": argv, "env": env,
                                         "cwd": cwd}, [in_r, out_w, err_w])
        except BaseException:
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            raise
        return PipedChild(pid=reply["pid"], stdin_fd=in_w, stdout_fd=out_r, stderr_fd=err_r)

    async def _request(self, msg: dict, fds: list[int]) -> dict:
        """Send ``msg`` (``fds`` are handed over and closed here) and await its reply."""
        if self._sock is None or self._gone.is_set():
            for fd in fds:
                os.close(fd)
            raise LaunchError("the sandbox is not running")
        ident = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        rlimits = self._limits.rlimits_for_children() if self._limits is not None else {}
        try:
            self._send({**msg, "id": ident, "rlimits": rlimits}, fds)
        except ProtocolError as exc:  # over the 1 MiB frame limit
            self._pending.pop(ident, None)
            for fd in fds:
                os.close(fd)
            raise LaunchError(f"cannot start {msg['argv'][0]}: {exc.message} "
                              "(arguments and environment too large)") from None
        try:
            reply = await asyncio.wait_for(future, REPLY_TIMEOUT)
        finally:
            self._pending.pop(ident, None)
        if "error" in reply:
            raise LaunchError(f"cannot start {msg['argv'][0] if msg.get('argv') else '?'}: "
                              f"{reply['error']}")
        self._children.add(reply["pid"])
        return reply

    def signal(self, pid: int, sig: int) -> None:
        if pid in self._children and self._sock is not None and not self._gone.is_set():
            self._send({"op": "signal", "pid": pid, "sig": int(sig)}, [])

    # -- the socketpair -----------------------------------------------------------

    def _send(self, msg: dict, fds: list[int]) -> None:
        self._outbox.append((encode_message(msg), list(fds)))
        self._flush()

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._outbox:
            data, fds = self._outbox[0]
            try:
                sent = socket.send_fds(self._sock, [data], fds) if fds else self._sock.send(data)
            except BlockingIOError:
                loop.add_writer(self._sock, self._flush)
                return
            except OSError:
                self._drop_outbox()
                return
            for fd in fds:  # the init holds its own copies now
                os.close(fd)
            if sent < len(data):
                self._outbox[0] = (data[sent:], [])
            else:
                self._outbox.pop(0)
        loop.remove_writer(self._sock)

    def _drop_outbox(self) -> None:
        for _, fds in self._outbox:
            for fd in fds:
                os.close(fd)
        self._outbox.clear()

    def _take_fds(self, count: int) -> list[int]:
        if len(self._fds) < count:
            raise LaunchError("sandbox init sent a message without its descriptor")
        taken, self._fds = self._fds[:count], self._fds[count:]
        return taken

    def _readable(self) -> bool:
        """Read and dispatch what the init sent; False when there is nothing now."""
        try:
            data, fds, _, _ = socket.recv_fds(self._sock, 65536, sandbox_init.MAX_FDS)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data, fds = b"", []
        for fd in fds:  # recv_fds ignores MSG_CMSG_CLOEXEC (Python 3.11)
            os.set_inheritable(fd, False)
        self._fds += fds
        if not data:
            self._init_gone()
            return False
        try:
            for body in self._decoder.feed(data):
                self._dispatch(decode_json(body))
        except ProtocolError as exc:
            self.on_event(f"sandbox init: {exc.message}")
            self._init_gone()
            return False
        return True

    def _dispatch(self, msg: dict) -> None:
        kind = msg.get("t")
        if kind == "exit":
            self._children.discard(msg["pid"])
            self.on_exit(msg["pid"], msg["code"])
        elif kind == "spawned":
            future = self._pending.get(msg.get("id"))
            if future is not None and not future.done():
                future.set_result(msg)
            elif "pid" in msg and msg.get("pty") and self._fds:  # its requester gave up
                os.close(self._take_fds(1)[0])
        elif kind == "ready" and self._ready is not None and not self._ready.done():
            self._ready.set_result(msg)
        elif kind == "error" and self._ready is not None and not self._ready.done():
            self._ready.set_exception(SandboxError(msg.get("message", "sandbox init failed")))

    def _init_gone(self) -> None:
        """EOF from the init: every process of the sandbox is dead."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._sock)
        loop.remove_writer(self._sock)
        self._drop_outbox()
        if self._gone.is_set():
            return
        self._gone.set()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(SandboxError("sandbox init exited during start-up"))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(LaunchError("the sandbox init exited"))
        if not self._stopping:
            self.on_event("sandbox init exited; every process of the session is gone")
        for pid in sorted(self._children):
            self.on_exit(pid, -signal.SIGKILL)
        self._children.clear()

    # -- stop ---------------------------------------------------------------------

    async def stop(self, grace: float) -> None:
        """SB-6: TERM everything, ``grace`` s, KILL; init gone; upper/work removed."""
        await self._teardown(grace)

    async def _teardown(self, grace: float) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._sock is not None and not self._gone.is_set():
            self._send({"op": "stop", "grace": grace}, [])
        if self._init_pidfd >= 0:
            if not await _exited(self._init_pidfd, grace + 5.0):
                signal.pidfd_send_signal(self._init_pidfd, signal.SIGKILL)
                await _exited(self._init_pidfd, None)
            # A zombie by now: WNOHANG collects it without blocking the loop.
            os.waitid(os.P_PIDFD, self._init_pidfd, os.WEXITED | os.WNOHANG)  # noqa: ASYNC222
            os.close(self._init_pidfd)
            self._init_pidfd = -1
        if self._sock is not None:
            while not self._gone.is_set() and self._readable():
                pass  # the exits the init reported on its way out
            self._init_gone()
            self._sock.close()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        if self._network is not None:
            await self._network.close()
            self._network = None
        if self._limits is not None:
            try:
                self._limits.kill()  # anything that outlived the init in its cgroups
            except OSError as exc:
                self.on_event(f"limits: {exc}")
            self._limits.cleanup()
            self._limits = None
        try:
            self._remove_scratch()
        except SandboxError as exc:  # the processes are gone all the same
            self.on_event(str(exc))

    def _remove_scratch(self) -> None:
        """upper/, work/ and the staging dir; persist/ stays. fd-based, never
        following a symlink the session planted. Raises SandboxError (one
        line) when the session left something that cannot be removed."""
        if not os.path.isdir(self.spec.state_dir):
            return  # never started
        for name in ("upper", "work", mounts.STAGE):
            path = os.path.join(self.spec.state_dir, name)
            try:
                tree.remove(path)
            except OSError as exc:
                raise SandboxError(f"cannot remove {path}: {exc.strerror or exc}") from None

    def describe(self) -> dict:
        spec = self.spec
        namespaces = ["user", "mount", "pid", "uts", "ipc"] + \
            ([] if spec.network == "host" else ["net"])
        info = {
            "sandbox": "namespaces: " + ", ".join(namespaces),
            "rootfs": spec.rootfs + (" (over the host's system dirs)" if spec.host_lower else ""),
            "rootfs_hash": spec.rootfs_hash,
            "workspace": f"{spec.workspace} → {spec.workspace_path}",
            "network": spec.network,
            "uid_map": f"root inside = uid {os.geteuid()} outside",
            "processes": "root of a nested user namespace: coop's mounts locked, "
                         "no capabilities over the sandbox's network",
            "init_pid": self._init_pid or None,
        }
        if spec.network == "proxy":
            info["network"] = f"proxy on 127.0.0.1:{self._proxy_port}, allow " + \
                (", ".join(spec.allow) or "nothing")
        describe_network = getattr(self._network, "describe", None)
        if callable(describe_network):
            info["network_detail"] = describe_network()
        if self._limits is not None:
            info["limits"] = self._limits.describe()
        return info


async def _exited(pidfd: int, timeout: float | None) -> bool:
    """Wait until the process behind ``pidfd`` has exited; False on timeout."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(pidfd, lambda: done.done() or done.set_result(True))
    try:
        return await asyncio.wait_for(done, timeout)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)


def launcher_for_session(paths, name: str, workspace: str, table: dict,
                         allow_paths: list[str] = ()) -> SandboxLauncher:
    """A validated Coopfile table -> the session's sandbox (SB-2..SB-5).
    ``allow_paths`` are the user's ``--allow-path`` directories (SB-3)."""
    workspace = check_source(workspace, str(home()), list(allow_paths), [str(paths.state)])
    built = rootfs_for(table, paths.state)
    if built is None:
        raise LaunchError("this Coopfile's rootfs is not built yet; run `coop init`")
    wanted = table.get("limits", {})
    memory = wanted.get("memory")
    spec = SandboxSpec(
        name=name,
        rootfs="host" if built.path is None else str(built.path),
        host_lower=built.host_lower and built.path is not None,
        rootfs_hash=built.hash,
        image_env=dict(item.split("=", 1) for item in built.meta.get("env", [])),
        state_dir=str(paths.session_dir(name)),
        workspace=workspace,
        workspace_path=table["workspace"]["path"],
        persist=list(table["session"]["persist"]),
        network=table["network"]["mode"],
        allow=list(table["network"]["allow"]),
        limits={"memory": parse_size(memory) if isinstance(memory, str) else memory,
                "pids": wanted.get("pids"), "cpu": wanted.get("cpu")},
    )
    return SandboxLauncher(spec, on_event=log)
