"""The sandbox's init (SB-1, SB-6): PID 1 of the session's namespaces.

``start`` clones the init straight from the session actor (or the CLI, for a
build step) into new user, mount, PID, UTS, IPC (and net) namespaces: one
process, no interpreter start, and an ordinary child for the caller to reap.
The init closes everything it inherited, maps uid 0 inside to the invoking
uid (or asks its parent to write a wider map, IMG-4: ``coop.sandbox.idmap``),
builds the mount table, ``pivot_root``s and then runs code already in memory
(nothing may be imported after ``pivot_root``: with an OCI rootfs the host's
Python files are gone; hence the imports below, ``array`` included, which
``socket.recv_fds`` imports lazily). It serves the launcher over a
socketpair: length-prefixed JSON (``coop.protocol``), descriptors by
SCM_RIGHTS.

Build mode (``InitConfig.command``, IMG-4): the same init and mounts, but it
runs that one command and exits with its code.

Capability policy: the init keeps root of the sandbox's own user namespace
(it owns the mount, network, PID and UTS namespaces). Every process it starts
enters a *nested* user + mount + UTS namespace (the jail), made by the first
one and kept by the init for all later ones, so it lives as long as the
session: the
nested mount namespace is a copy made into a less privileged user namespace,
so the kernel locks every mount coop made (no remount of a read-only mount,
no unmount that would reveal what lies below), and root there holds no
capability over the sandbox's network namespace (no CAP_NET_ADMIN: routes,
firewall and loopback stay as coop set them), nor over its PID namespace.
"""

from __future__ import annotations

import array  # noqa: F401  (socket.send_fds/recv_fds import it lazily)
import fcntl
import gc
import os
import resource
import selectors
import signal
import socket
import struct
import termios
import time
from dataclasses import dataclass

from coop.launcher import exec_child, reset_signals, set_winsize
from coop.protocol import FrameDecoder, ProtocolError, decode_json, encode_message
from coop.sandbox import idmap, network, syscalls, userns
from coop.sandbox.mounts import MountTable, Op
from coop.sandbox.syscalls import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    SandboxError,
)

PROXY_PORT = 3128
MAX_FDS = 8  # per message; a spawn carries at most three
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_JAIL_NAMESPACES = (("user", CLONE_NEWUSER), ("mnt", CLONE_NEWNS), ("uts", CLONE_NEWUTS))
_JAIL_FLAGS = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWUTS


@dataclass
class InitConfig:
    """Everything the forked child needs."""

    name: str
    ops: list[Op]
    state_dir: str
    sock: socket.socket
    network: str
    uid: int
    gid: int
    command: dict | None = None  # build mode: {"argv", "env", "cwd"} run once by the init
    ids: idmap.IdMap | None = None  # None: root inside = uid/gid, nothing else
    output: int = -1  # build mode: the init's (and so the command's) stdout and stderr


# -- the start (the caller's side) -------------------------------------------------


def start(cfg: InitConfig) -> int:
    """Clone the init; its pid (in the caller's PID namespace). Raises SandboxError."""
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC
    if cfg.network != "host":
        flags |= CLONE_NEWNET
    pid = userns.clone(flags, cfg.uid)
    if pid == 0:
        _init_main(cfg)  # never returns
    return pid


def _close_all_but(keep: int) -> None:
    """Drop every descriptor inherited from the caller but stdio and ``keep``."""
    os.closerange(3, keep)  # close_range(2): no per-fd work
    os.closerange(keep + 1, 1 << 30)


def _write_id_maps(pid: str, ids: idmap.IdMap) -> None:
    files = [("setgroups", "deny")] if ids.deny_setgroups else []
    files += [("uid_map", ids.table(ids.uids)), ("gid_map", ids.table(ids.gids))]
    for name, text in files:
        path = f"/proc/{pid}/{name}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise syscalls.failure("write", path, exc.errno) from None


def _mapped_by_launcher(sock: socket.socket) -> None:
    """Ask the launcher (in the parent namespace) to write our id maps; wait."""
    sock.sendall(encode_message({"t": "map"}))
    decoder = FrameDecoder()
    while True:
        data = sock.recv(4096)
        if not data:
            raise SandboxError("the launcher went away while mapping ids")
        for body in decoder.feed(data):
            answer = decode_json(body)
            if answer.get("op") != "mapped":
                raise SandboxError(answer.get("message", "id mapping failed"))
            return


def _report_failure(sock: socket.socket, exc: BaseException) -> None:
    message = str(exc) if isinstance(exc, SandboxError) else f"sandbox init: {exc!r}"
    try:
        sock.sendall(encode_message({"t": "error", "message": message}))
    except OSError:
        pass


# -- the init (PID 1) --------------------------------------------------------------


def _init_main(cfg: InitConfig) -> None:
    # A collection would touch (and so copy) every object inherited from the
    # caller; the init only ever needs its own.
    gc.freeze()
    try:
        # The caller's end goes: the init goes (its socket's EOF would end it anyway).
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG")
        signal.set_wakeup_fd(-1)
        reset_signals()
        if cfg.output >= 0:
            os.dup2(cfg.output, 1)
            os.dup2(cfg.output, 2)
        _close_all_but(cfg.sock.fileno())
        ids = cfg.ids or idmap.single(cfg.uid, cfg.gid)
        if ids.by_parent:
            _mapped_by_launcher(cfg.sock)
        else:
            _write_id_maps("self", ids)
        MountTable(cfg.state_dir).run(cfg.ops)
        syscalls.sethostname(cfg.name)
        fds = []
        if cfg.network != "host":
            _loopback_up()
        if cfg.command is not None:
            _run_once(cfg.command)  # never returns
        if cfg.network == "veth":
            try:
                network.block_private_ranges_in_current_netns()
            except OSError as exc:
                raise SandboxError(f"veth: {exc.strerror or exc}") from None
            # for slirp4netns, which joins them from outside
            fds += [os.open(f"/proc/self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
                    for kind in ("user", "net")]
        if cfg.network == "proxy":
            fds.append(_proxy_listener())
        # Not even a process of the same uid may ptrace the init or read its fds.
        syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")
        init = Init(cfg.sock)
        init.send({"t": "ready", "proxy_port": PROXY_PORT if cfg.network == "proxy" else None},
                  fds)
        for fd in fds:
            os.close(fd)
    except BaseException as exc:  # noqa: BLE001 — report, never unwind into the caller's code
        _report_failure(cfg.sock, exc)
        os._exit(1)
    init.serve()


def _run_once(command: dict) -> None:
    """Build mode: run ``command`` (stdin /dev/null, stdout/stderr inherited) and
    exit with its code; PID 1 exiting kills whatever it left running."""
    pid = os.fork()
    if pid == 0:
        try:
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            reset_signals()
        except OSError as exc:
            os.write(2, f"coop: build step: /dev/null: {exc.strerror}\n".encode())
            os._exit(127)
        exec_child(command["argv"], command["env"], command["cwd"])
    while True:
        done, status = os.wait()
        if done == pid:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            request = struct.pack("16sH22x", b"lo", 0)
            (flags,) = struct.unpack_from("16xH", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))
            fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))
        except OSError as exc:
            raise syscalls.failure("ioctl", "SIOCSIFFLAGS lo up", exc.errno) from None


def _proxy_listener() -> int:
    """The egress proxy's port on the sandbox's own loopback, served outside."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", PROXY_PORT))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise syscalls.failure("bind", f"127.0.0.1:{PROXY_PORT}", exc.errno) from None
    return sock.detach()


class Init:
    """PID 1's loop: requests in, processes started, exits reported, orphans reaped."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.jail: list[tuple[int, int]] = []  # (fd, CLONE_*) of the nested namespaces
        self.children: set[int] = set()
        self.decoder = FrameDecoder()
        self.fds: list[int] = []  # received, not yet claimed by a message
        self.selector = selectors.DefaultSelector()
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)  # as PID 1: ignored from inside
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        self.selector.register(self.sock, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)

    def send(self, obj: dict, fds: list[int] = ()) -> None:
        data = encode_message(obj)
        try:
            if fds:
                sent = socket.send_fds(self.sock, [data], list(fds))
                data = data[sent:]
            self.sock.sendall(data)
        except OSError:
            pass  # the launcher is gone; its EOF ends the loop

    def serve(self) -> None:
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.sock:
                    self._read()
                else:
                    self._drain_wakeups()
            self._reap()

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _read(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, 65536, MAX_FDS)
        except InterruptedError:
            return
        except OSError:
            data, fds = b"", []
        for fd in fds:  # recv_fds ignores MSG_CMSG_CLOEXEC (Python 3.11)
            os.set_inheritable(fd, False)
        self.fds += fds
        if not data:
            self.shutdown(5.0)
        try:
            for body in self.decoder.feed(data):
                self._handle(decode_json(body))
        except ProtocolError:
            self.shutdown(0)

    def _take_fds(self, count: int) -> list[int]:
        taken, self.fds = self.fds[:count], self.fds[count:]
        return taken

    def _handle(self, msg: dict) -> None:
        op = msg.get("op")
        if op == "spawn":
            self._spawn(msg, pty=True)
        elif op == "spawn_piped":
            self._spawn(msg, pty=False)
        elif op == "signal":
            if msg.get("pid") in self.children:
                self._signal(msg["pid"], msg["sig"])
        elif op == "stop":
            self.shutdown(float(msg.get("grace", 5.0)))

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        """Its process group; the process alone if it has not reached setsid() yet."""
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        except OSError:
            pass

    def _spawn(self, msg: dict, pty: bool) -> None:
        stdio = self._take_fds(0 if pty else 3)
        master = -1
        pid = -1
        try:
            if pty:
                master, slave = os.openpty()
                set_winsize(master, msg["cols"], msg["rows"])
                stdio = [slave, slave, slave]
            if len(stdio) != 3:
                raise SandboxError("spawn_piped without three descriptors")
            pid = self._fork_child(msg, stdio, pty)
        except (OSError, SandboxError, KeyError, TypeError) as exc:
            self.send({"t": "spawned", "id": msg.get("id"), "error": str(exc)})
        finally:
            for fd in set(stdio):
                os.close(fd)
        if pid > 0:
            self.children.add(pid)
            self.send({"t": "spawned", "id": msg["id"], "pid": pid, "pty": pty},
                      [master] if pty else [])
        if master >= 0:
            os.close(master)

    def _fork_child(self, msg: dict, stdio: list[int], pty: bool) -> int:
        """Start the process. The first one is born in the nested namespaces (the
        jail) and waits until the init holds them; later ones join them."""
        sync = () if self.jail else os.pipe() + os.pipe()
        pid = syscalls.clone(0 if self.jail else _JAIL_FLAGS)
        if pid == 0:
            self._child(msg, stdio, pty, sync)
        if sync:
            made_r, made_w, hold_r, hold_w = sync
            os.close(made_w)
            os.close(hold_r)
            try:
                answer = os.read(made_r, 4096).decode(errors="replace")
                if answer != "ok":
                    raise SandboxError(answer or "the first process died making its namespaces")
                self.jail = [(os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC),
                              flag) for name, flag in _JAIL_NAMESPACES]
            finally:
                os.close(made_r)
                os.close(hold_w)
        return pid

    def _child(self, msg: dict, stdio: list[int], pty: bool, sync: tuple) -> None:
        """In the forked child: enter the jail, take the terminal, exec."""
        try:
            if sync:
                self._make_jail(*sync)
            for fd, flag in self.jail:
                syscalls.setns(fd, flag, "nested sandbox namespace")
            os.setsid()
            if pty:
                fcntl.ioctl(stdio[0], termios.TIOCSCTTY, 0)
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
            for name, value in msg.get("rlimits", {}).items():
                resource.setrlimit(getattr(resource, name), (value, value))
            signal.set_wakeup_fd(-1)
            reset_signals()
            exec_child(msg["argv"], msg["env"], msg["cwd"])
        except BaseException as exc:  # noqa: BLE001
            try:
                os.write(2, f"coop: cannot start {msg.get('argv')}: {exc}\r\n".encode())
            except OSError:
                pass
        os._exit(127)

    @staticmethod
    def _make_jail(made_r: int, made_w: int, hold_r: int, hold_w: int) -> None:
        os.close(made_r)
        os.close(hold_w)
        try:
            # Non-dumpable (inherited from the init) would make our /proc files
            # root's, closing uid_map to us and /proc/PID/ns to the init.
            syscalls.prctl(syscalls.PR_SET_DUMPABLE, 1, "PR_SET_DUMPABLE")
            _write_id_maps("self", idmap.single(0, 0))
        except SandboxError as exc:
            os.write(made_w, str(exc).encode()[:4000])
            raise
        os.write(made_w, b"ok")
        os.read(hold_r, 1)  # EOF once the init has opened our namespaces
        os.close(made_w)
        os.close(hold_r)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.children:
                self.children.discard(pid)
                self.send({"t": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status)})

    def shutdown(self, grace: float) -> None:
        """SB-6: TERM to every process, ``grace`` seconds, KILL, reap, exit."""
        self.selector.unregister(self.sock)
        self._kill_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        self._reap()
        while self._has_children() and time.monotonic() < deadline:
            self.selector.select(max(0.0, deadline - time.monotonic()))
            self._drain_wakeups()
            self._reap()
        self._kill_all(signal.SIGKILL)
        while self._has_children():
            self.selector.select(0.1)
            self._drain_wakeups()
            self._reap()
        os._exit(0)

    @staticmethod
    def _kill_all(sig: int) -> None:
        try:
            os.kill(-1, sig)  # from PID 1: every process of the namespace but itself
        except ProcessLookupError:
            pass

    def _has_children(self) -> bool:
        """Whether any child is left, without reaping (exits are reported by _reap)."""
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return True
