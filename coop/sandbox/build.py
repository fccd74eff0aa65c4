"""Build steps in the sandbox (IMG-4): one shell command with a rootfs as a
writable ``/``.

The command runs as root of a fresh user, mount, PID, UTS and IPC namespace
set on the host's network, with the mounts of ``mounts.build_plan`` (the
rootfs itself as ``/``, or the host's system dirs under the rootfs as the
overlay's upper dir), fresh /proc, a minimal /dev, a private /tmp and the
host's resolv.conf. Its stdin is /dev/null; its stdout and stderr are the
caller's, so output streams live to the terminal, or go to ``on_output``.

The init is that of the sessions (``coop.sandbox.init`` in
build mode). Ids: see ``coop.sandbox.idmap``; a map wider than one id is
written here (by newuidmap/newgidmap when unprivileged), because the kernel
takes it only from the parent user namespace.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from coop.image import tree
from coop.launcher import read_ready
from coop.protocol import FrameDecoder, ProtocolError, decode_json, encode_message
from coop.sandbox import idmap, mounts
from coop.sandbox import init as sandbox_init
from coop.sandbox.syscalls import SandboxError
from coop.sandbox.userns import check_userns

HOSTNAME = "coop-build"
MAP_TIMEOUT = 10.0
RESOLV_CONF = "/etc/resolv.conf"

OutputCallback = Callable[[bytes], None]


def build_ids(uid: int | None = None, gid: int | None = None) -> idmap.IdMap:
    """This user's widest id map for build steps (reads /etc/subuid, /etc/subgid)."""
    uid = os.geteuid() if uid is None else uid
    gid = os.getegid() if gid is None else gid
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    texts = []
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            texts.append(Path(path).read_text())
        except OSError:
            texts.append("")
    helpers = bool(shutil.which("newuidmap") and shutil.which("newgidmap"))
    return idmap.for_build(uid, gid, user, texts[0], texts[1], helpers)


async def run_build_step(rootfs_dir: os.PathLike | str, command: str, env: dict[str, str], *,
                         host_lower: bool, on_output: OutputCallback | None = None) -> int:
    """Run ``/bin/sh -c command`` in ``rootfs_dir`` (cwd ``/``, environment ``env``)
    and return its exit code (128+N for signal N). Raises SandboxError (one
    line) when the sandbox itself cannot be made."""
    check_userns()
    rootfs = os.path.abspath(rootfs_dir)
    if not os.path.isdir(rootfs):
        raise SandboxError(f"{rootfs}: not a directory")
    scratch = os.path.join(os.path.dirname(rootfs), f".{os.path.basename(rootfs)}.step")
    host = mounts.host_entries() if host_lower else None
    missing_resolv = host is None and not os.path.lexists(rootfs + RESOLV_CONF)
    made: list[str] = []  # upper dirs made here, removed again if the step left them empty
    try:
        _prepare(rootfs, scratch, host, made)
        cfg = sandbox_init.InitConfig(
            HOSTNAME, mounts.build_plan(rootfs, host, _host_resolv_conf()), scratch, None,
            "host", os.geteuid(), os.getegid(),
            command={"argv": ["/bin/sh", "-c", command], "env": dict(env), "cwd": "/"},
            ids=build_ids())
        return await _Step(cfg, on_output).run()
    finally:
        tree.remove(scratch)
        for path in made:
            try:
                os.rmdir(path)
            except OSError:
                pass
        if missing_resolv:
            _remove_mount_point(rootfs + RESOLV_CONF)


def run_step(rootfs_dir: os.PathLike | str, shell_command: str, env: dict[str, str], *,
             host_lower: bool) -> int:
    """``coop.image.build.RunStep``: a build step with output on this process's stdio."""
    return asyncio.run(run_build_step(rootfs_dir, shell_command, env, host_lower=host_lower))


def _prepare(rootfs: str, scratch: str, host: dict | None, made: list[str]) -> None:
    """A fresh scratch dir (work dirs, staging mount) next to the rootfs, and the
    missing upper dirs of the host's system dirs (appended to ``made``)."""
    tree.remove(scratch)  # a killed step's
    os.mkdir(scratch, 0o700)
    os.mkdir(os.path.join(scratch, mounts.STAGE), 0o700)
    for name, link in (host or {}).items():
        path = os.path.join(rootfs, name)
        if link is None and not os.path.lexists(path):
            os.mkdir(path, 0o755)
            made.append(path)


def _host_resolv_conf() -> str | None:
    try:
        with open(RESOLV_CONF, encoding="utf-8", errors="replace") as f:
            return f.read(65536)
    except OSError:
        return None


def _remove_mount_point(path: str) -> None:
    """The empty file the resolv.conf bind needed, unless the step wrote one."""
    try:
        if os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path) == 0:
            os.unlink(path)
    except OSError:
        pass


def _write_maps(pid: int, ids: idmap.IdMap) -> None:
    """Root's way: write another process's id maps directly (a /proc write, instant)."""
    for name, extents in (("uid_map", ids.uids), ("gid_map", ids.gids)):
        path = f"/proc/{pid}/{name}"
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, ids.table(extents).encode())
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, path) from None
        finally:
            os.close(fd)


class _Step:
    """One run of the build init: clone it, answer its id-map request, relay
    output, wait for its exit."""

    def __init__(self, cfg: sandbox_init.InitConfig, on_output: OutputCallback | None):
        self.cfg = cfg
        self.on_output = on_output
        self.decoder = FrameDecoder()
        self.error: str | None = None
        self.tasks: set[asyncio.Task] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair()
        out_r, out_w = os.pipe() if self.on_output else (-1, -1)
        self.cfg.sock = child
        self.cfg.output = out_w
        try:
            pid = sandbox_init.start(self.cfg)  # the step ends with its caller (PDEATHSIG)
        except BaseException:
            parent.close()
            if out_r >= 0:
                os.close(out_r)
            raise
        finally:
            child.close()
            if out_w >= 0:
                os.close(out_w)
        pidfd = os.pidfd_open(pid)
        self.pid = pid
        self.sock = parent
        parent.setblocking(False)
        exited = loop.create_future()
        loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
        loop.add_reader(parent, self._readable)
        output_done = loop.create_future()
        if out_r >= 0:
            os.set_blocking(out_r, False)
            loop.add_reader(out_r, self._relay, out_r, output_done)
        else:
            output_done.set_result(None)
        try:
            await exited
            await output_done  # EOF: every process of the step is gone
            while self._readable():
                pass
        except BaseException:
            # PID 1 killed: its whole PID namespace goes with it
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            raise
        finally:
            loop.remove_reader(pidfd)
            loop.remove_reader(parent)
            if out_r >= 0:
                loop.remove_reader(out_r)
                os.close(out_r)
            for task in self.tasks:
                task.cancel()
            _, status = os.waitpid(pid, 0)  # noqa: ASYNC222 — exited, or killed just now
            os.close(pidfd)
            parent.close()
        if self.error:
            raise SandboxError(self.error)
        return os.waitstatus_to_exitcode(status)

    def _relay(self, fd: int, done: asyncio.Future) -> None:
        data = read_ready(fd)
        if data is None:
            return
        if data:
            self.on_output(data)
        elif not done.done():
            asyncio.get_running_loop().remove_reader(fd)
            done.set_result(None)

    def _readable(self) -> bool:
        """Handle what the init sent; False when nothing more is there now."""
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.sock)
            return False
        try:
            for body in self.decoder.feed(data):
                self._dispatch(decode_json(body))
        except ProtocolError as exc:
            self.error = f"build sandbox: {exc.message}"
        return True

    def _dispatch(self, msg: dict) -> None:
        if msg.get("t") == "error":
            self.error = str(msg.get("message", "the build sandbox failed"))
        elif msg.get("t") == "map":
            task = asyncio.ensure_future(self._map_ids())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _map_ids(self) -> None:
        """Write the init's id maps from outside its user namespace."""
        ids = self.cfg.ids
        answer = {"op": "mapped"}
        if not ids.helpers:
            try:
                _write_maps(self.pid, ids)
            except OSError as exc:
                answer = {"op": "failed", "message": f"{exc.filename}: {exc.strerror}"}
        for argv in ids.helper_argv(self.pid) if ids.helpers else ():
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE)
            except OSError as exc:
                answer = {"op": "failed", "message": f"{argv[0]}: {exc.strerror}"}
                break
            try:
                _, err = await asyncio.wait_for(proc.communicate(), MAP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                answer = {"op": "failed", "message": f"{argv[0]}: no answer in {MAP_TIMEOUT:g} s"}
                break
            if proc.returncode != 0:
                reason = (err.decode(errors="replace").strip().splitlines() or ["?"])[-1]
                answer = {"op": "failed", "message": f"{argv[0]} failed: {reason}"}
                break
        try:
            self.sock.sendall(encode_message(answer))
        except OSError:
            pass  # the init is gone; its exit tells the rest
