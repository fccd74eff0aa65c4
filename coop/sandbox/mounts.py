"""The sandbox's mount table (SB-2): a declarative list of operations, planned
on the host side and executed in order by the init before ``pivot_root``.

Like bubblewrap, the set-up is data: ``plan()`` says what goes where, and
``MountTable.run()`` does it. Every source is opened (``O_PATH``) first, those
in the session's state dir without following symlinks, and every target is
reached by walking the new root one component at a time without following
symlinks; the mount itself then goes through ``/proc/self/fd/N``. So neither a
hostile rootfs (``/root -> /etc``) nor a symlink planted in a persist dir can
redirect a mount.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from coop.sandbox.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    SandboxError,
    mount,
    pivot_root,
    umount2,
)

SKELETON = ":skeleton"  # Overlay.lower for the host rootfs: the generated top level
HOST_SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt")
HOME = "/root"

# Top-level entries of the host skeleton besides the system dirs; /var and /run
# exist but are empty, /var/tmp is sticky like the real one.
_SKELETON_DIRS = (("proc", 0o555), ("dev", 0o755), ("tmp", 0o1777), ("root", 0o700),
                  ("home", 0o755), ("run", 0o755), ("var", 0o755), ("var/tmp", 0o1777))
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")
_DEV_LINKS = (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))

_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_ST_FLAGS = {os.ST_RDONLY: MS_RDONLY, os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV,
             os.ST_NOEXEC: MS_NOEXEC, os.ST_NOATIME: 0x400, os.ST_NODIRATIME: 0x800,
             os.ST_RELATIME: 0x200000}


# -- operations ----------------------------------------------------------------


@dataclass(frozen=True)
class Skeleton:
    """Build the host rootfs' top level (dirs and symlinks) in the staging tmpfs."""

    dirs: tuple[tuple[str, int], ...]
    links: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Overlay:
    """Overlayfs at ``target``: ``lowers`` (top first) read-only, writes go to
    upper/<layer> in the session's state dir, or to the host directory
    ``upper`` when given (a build step's delta over the host); the work dir
    is always work/<layer> in the state dir."""

    target: str
    lowers: tuple[str, ...]
    layer: str
    upper: str | None = None


@dataclass(frozen=True)
class Bind:
    """Bind ``source`` at ``target``; ``target`` "/" makes it the (writable) new root."""

    target: str
    source: str
    file: bool = False


@dataclass(frozen=True)
class Tmpfs:
    target: str
    mode: int
    flags: int = MS_NOSUID | MS_NODEV


@dataclass(frozen=True)
class Proc:
    target: str


@dataclass(frozen=True)
class Devpts:
    target: str


@dataclass(frozen=True)
class Symlink:
    target: str
    text: str


@dataclass(frozen=True)
class File:
    """Put ``content`` at ``target`` (a generated /etc/resolv.conf). A symlink
    there is followed inside the new root, like the sandbox would see it."""

    target: str
    content: str


@dataclass(frozen=True)
class ReadOnly:
    """Bind ``target`` onto itself read-only; once the mount tree is locked
    (see init.py) nothing inside can make it writable again."""

    target: str


Op = Skeleton | Overlay | Bind | Tmpfs | Proc | Devpts | Symlink | File | ReadOnly


# -- the plan ------------------------------------------------------------------


def host_entries(root: str = "/") -> dict[str, str | None]:
    """The host's system dirs: name -> symlink text, or None for a real dir."""
    found: dict[str, str | None] = {}
    for name in HOST_SYSTEM_DIRS:
        path = os.path.join(root, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            found[name] = os.readlink(path)
        elif stat.S_ISDIR(st.st_mode):
            found[name] = None
    return found


def plan(rootfs: str | None, workspace: str, workspace_path: str, persist: list[str],
         persist_sources: list[str], host: dict[str, str | None] | None = None,
         files: dict[str, str] | None = None,
         is_dir: Callable[[str], bool] = os.path.isdir) -> list[Op]:
    """Every mount of a sandbox, in order.

    ``rootfs`` is the lower layer (a directory), ``host`` is ``host_entries()``
    when the host's system dirs are the (bottom) lower layer: ``rootfs`` None
    for the plain host, or a build's delta directory over the host.
    ``persist_sources`` pairs with ``persist``; ``files`` are generated
    files (path inside -> content).
    """
    ops: list[Op] = []
    if host is None:
        if rootfs is None:
            raise ValueError("a sandbox needs a rootfs or the host's system dirs")
        ops.append(Overlay("/", (rootfs,), "rootfs"))
    else:
        delta = (rootfs,) if rootfs else ()
        links = tuple((name, text) for name, text in host.items() if text is not None)
        dirs = tuple((name, 0o755) for name, text in host.items() if text is None)
        ops.append(Skeleton(dirs + _SKELETON_DIRS, links))
        ops.append(Overlay("/", delta + (SKELETON,), "rootfs"))
        for name, _ in dirs:
            top = tuple(f"{d}/{name}" for d in delta if is_dir(f"{d}/{name}"))
            ops.append(Overlay("/" + name, top + ("/" + name,), name))
    ops += [File(path, content) for path, content in (files or {}).items()]
    ops += _kernel_mounts()
    ops.append(Bind(workspace_path, workspace))
    ops += [Bind(f"{HOME}/{rel}", source) for rel, source in zip(persist, persist_sources)]
    return ops


def _kernel_mounts() -> list[Op]:
    """Fresh /proc, a minimal /dev and a private /tmp: the same in sessions and builds."""
    ops: list[Op] = [Proc("/proc")]
    ops += [ReadOnly("/proc/" + name) for name in _PROC_READ_ONLY]
    ops.append(Tmpfs("/dev", 0o755, MS_NOSUID | MS_NOEXEC))
    ops += [Bind("/dev/" + name, "/dev/" + name, file=True) for name in _DEVICES]
    ops.append(Devpts("/dev/pts"))
    ops += [Symlink("/dev/" + name, text) for name, text in _DEV_LINKS]
    ops.append(Tmpfs("/dev/shm", 0o1777))
    ops.append(Tmpfs("/tmp", 0o1777))
    return ops


def build_plan(rootfs: str, host: dict[str, str | None] | None,
               resolv_conf: str | None) -> list[Op]:
    """Every mount of a build step (IMG-4), in order.

    Without ``host``, ``rootfs`` itself is the writable root. With ``host``
    (``host_entries()``), ``rootfs`` is the build's delta: the upper dir of an
    overlay over the generated top level, and ``rootfs/<dir>`` the upper dir of
    each system dir's overlay, which is the layout ``plan`` stacks back over
    the host at run time. /run is a tmpfs there: runtime state stays out of the
    delta. ``resolv_conf`` is the host's, so that package managers resolve.
    """
    if host is None:
        ops: list[Op] = [Bind("/", rootfs)]
    else:
        links = tuple((name, text) for name, text in host.items() if text is not None)
        dirs = tuple((name, 0o755) for name, text in host.items() if text is None)
        ops = [Skeleton(dirs + _SKELETON_DIRS, links),
               Overlay("/", (SKELETON,), "rootfs", upper=rootfs)]
        ops += [Overlay("/" + name, ("/" + name,), name, upper=f"{rootfs}/{name}")
                for name, _ in dirs]
        ops.append(Tmpfs("/run", 0o755))
    if resolv_conf is not None:
        ops.append(File("/etc/resolv.conf", resolv_conf))
    return ops + _kernel_mounts()


def host_sources(ops: list[Op]) -> list[str]:
    """Host paths the launcher must open before forking."""
    paths: list[str] = []
    for op in ops:
        if isinstance(op, Overlay):
            paths += [lower for lower in op.lowers if lower != SKELETON]
            paths += [op.upper] if op.upper else []
        elif isinstance(op, Bind):
            paths.append(op.source)
    return paths


# -- walking without symlinks ----------------------------------------------------


def open_beneath(base_fd: int, rel: str, create: str | None = None, mode: int = 0o755,
                 label: str | None = None) -> int:
    """An O_PATH fd for ``rel`` under ``base_fd``, refusing every symlink on the
    way. ``create`` is None (take whatever is there but a symlink), "dir" or
    "file" (make it when missing; missing parents are made as dirs).
    Raises SandboxError naming ``label`` (default ``rel``)."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SandboxError(f"{label or rel}: path contains ..")
    fd = os.open(".", _PATH | os.O_DIRECTORY, dir_fd=base_fd)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            kind = (create if last else "dir") or "any"
            nxt = _step(fd, part, kind, create is not None, mode, label or rel,
                        "/".join(parts[: i + 1]))
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _step(fd: int, part: str, kind: str, make: bool, mode: int, label: str, walked: str) -> int:
    """Open one component: ``kind`` "dir", "file" (not a dir) or "any"."""
    for _ in range(2):
        try:
            child = os.open(part, _PATH, dir_fd=fd)
        except FileNotFoundError:
            if not make or kind == "any":
                raise SandboxError(f"{label}: /{walked} does not exist") from None
            try:
                if kind == "dir":
                    os.mkdir(part, mode, dir_fd=fd)
                else:
                    os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                     | os.O_CLOEXEC, 0o644, dir_fd=fd))
            except FileExistsError:
                pass
            except OSError as exc:
                raise SandboxError(f"{label}: cannot create /{walked}: {exc.strerror}") from None
            continue
        st_mode = os.fstat(child).st_mode
        if not stat.S_ISLNK(st_mode) and (kind == "any" or stat.S_ISDIR(st_mode) == (kind == "dir")):
            return child
        os.close(child)
        what = {True: "a symlink", False: "not a directory" if kind == "dir" else "a directory"}
        raise SandboxError(f"{label}: /{walked} is {what[stat.S_ISLNK(st_mode)]}")
    raise SandboxError(f"{label}: /{walked} keeps changing")


# -- execution -------------------------------------------------------------------


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


STAGE = "mnt"  # in the state dir: where the staging tmpfs goes, empty on the host


@dataclass
class MountTable:
    """Runs a plan inside a fresh mount namespace (an fd opened before the
    ``unshare`` names a mount of the host's namespace, which the kernel
    refuses as a mount source or target, so everything is opened here).
    ``state_dir`` holds ``upper/``, ``work/``, ``persist/`` and the empty
    ``mnt/`` the staging tmpfs covers; sources below it are opened without
    following any symlink, because the session could have planted one."""

    state_dir: str
    _state: int = field(default=-1, init=False)
    _sources: dict[str, int] = field(default_factory=dict, init=False)
    _root: int = field(default=-1, init=False)
    _skel: int = field(default=-1, init=False)

    def run(self, ops: list[Op]) -> None:
        """Execute ``ops``, then make the result the root of this mount namespace."""
        mount(None, "/", None, MS_REC | MS_PRIVATE, label="/ private")
        stage_dir = -1
        try:
            self._open_sources(ops)
            stage = open_beneath(self._state, STAGE, label="staging dir")
            try:
                mount("tmpfs", _fd_path(stage), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755",
                      label="tmpfs → staging dir")
            finally:
                os.close(stage)
            # By name from the parent, so the lookup crosses into the new tmpfs.
            stage_dir = os.open(STAGE, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                | os.O_CLOEXEC, dir_fd=self._state)
            os.mkdir("newroot", 0o755, dir_fd=stage_dir)
            for op in ops:
                getattr(self, "_" + type(op).__name__.lower())(op, stage_dir)
            self._pivot()
        finally:
            for fd in (stage_dir, self._state, self._root, self._skel, *self._sources.values()):
                if fd >= 0:
                    os.close(fd)

    def _open_sources(self, ops: list[Op]) -> None:
        try:
            self._state = os.open(self.state_dir, _PATH | os.O_DIRECTORY)
        except OSError as exc:
            raise SandboxError(f"open({self.state_dir}): {exc.strerror}") from None
        prefix = self.state_dir.rstrip("/") + "/"
        for path in host_sources(ops):
            if path in self._sources:
                continue
            if path.startswith(prefix):
                fd = open_beneath(self._state, path[len(prefix):], label=path)
            else:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError as exc:
                    raise SandboxError(f"open({path}): {exc.strerror}") from None
            self._sources[path] = fd

    def _target(self, path: str, create: str = "dir", mode: int = 0o755) -> int:
        return open_beneath(self._root, path, create, mode, label=f"mount point {path}")

    def _skeleton(self, op: Skeleton, stage_dir: int) -> None:
        os.mkdir("skeleton", 0o755, dir_fd=stage_dir)
        self._skel = os.open("skeleton", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                             dir_fd=stage_dir)
        for name, mode in op.dirs:
            os.mkdir(name, mode, dir_fd=self._skel)
            os.chmod(name, mode, dir_fd=self._skel)  # umask-proof
        for name, text in op.links:
            os.symlink(text, name, dir_fd=self._skel)

    def _overlay(self, op: Overlay, stage_dir: int) -> None:
        lowers = ":".join(_fd_path(self._skel if lower == SKELETON else self._sources[lower])
                          for lower in op.lowers)
        upper = os.dup(self._sources[op.upper]) if op.upper else \
            open_beneath(self._state, "upper/" + op.layer, "dir", label="upper dir")
        work = open_beneath(self._state, "work/" + op.layer, "dir", label="work dir")
        if op.target == "/":
            target = os.open("newroot", _PATH | os.O_DIRECTORY, dir_fd=stage_dir)
        else:
            target = self._target(op.target)
        data = (f"lowerdir={lowers},upperdir={_fd_path(upper)},"
                f"workdir={_fd_path(work)},userxattr")
        shown = ":".join("(host top level)" if lower == SKELETON else lower for lower in op.lowers)
        try:
            mount("overlay", _fd_path(target), "overlay", 0, data,
                  label=f"overlay {shown} → {op.target}")
        except SandboxError as exc:
            if exc.errno != errno.EINVAL:
                raise
            raise SandboxError(f"{exc} — the kernel refuses the overlay; ~/.coop must be on a "
                               "filesystem with user xattrs (not NFS; tmpfs since Linux 6.6)",
                               exc.errno) from None
        finally:
            for fd in (upper, work, target):
                os.close(fd)
        if op.target == "/":
            self._root = os.open("newroot", _PATH | os.O_DIRECTORY, dir_fd=stage_dir)

    def _bind(self, op: Bind, stage_dir: int) -> None:
        if op.target == "/":
            target = os.open("newroot", _PATH | os.O_DIRECTORY, dir_fd=stage_dir)
        else:
            target = self._target(op.target, "file" if op.file else "dir")
        try:
            mount(_fd_path(self._sources[op.source]), _fd_path(target), None,
                  MS_BIND | (0 if op.file else MS_REC), label=f"{op.source} → {op.target}")
        finally:
            os.close(target)
        if op.target == "/":
            self._root = os.open("newroot", _PATH | os.O_DIRECTORY, dir_fd=stage_dir)

    def _tmpfs(self, op: Tmpfs, stage_dir: int) -> None:
        self._fresh(op.target, "tmpfs", op.flags, f"mode={op.mode:o}")

    def _proc(self, op: Proc, stage_dir: int) -> None:
        self._fresh(op.target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)

    def _devpts(self, op: Devpts, stage_dir: int) -> None:
        self._fresh(op.target, "devpts", MS_NOSUID | MS_NOEXEC,
                    "newinstance,ptmxmode=0666,mode=620")

    def _fresh(self, path: str, fstype: str, flags: int, data: str | None) -> None:
        target = self._target(path)
        try:
            mount(fstype, _fd_path(target), fstype, flags, data, label=f"{fstype} → {path}")
        finally:
            os.close(target)

    def _symlink(self, op: Symlink, stage_dir: int) -> None:
        parent, name = os.path.split(op.target)
        fd = self._target(parent)
        try:
            os.symlink(op.text, name, dir_fd=fd)
        except OSError as exc:
            raise SandboxError(f"symlink({op.text} → {op.target}): {exc.strerror}") from None
        finally:
            os.close(fd)

    def _file(self, op: File, stage_dir: int) -> None:
        name = op.target.strip("/").replace("/", "_")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644,
                     dir_fd=stage_dir)
        try:
            os.write(fd, op.content.encode())
        finally:
            os.close(fd)
        source = os.open(name, _PATH, dir_fd=stage_dir)
        target = self._target(self._resolve_in_root(op.target), "file")
        try:
            mount(_fd_path(source), _fd_path(target), None, MS_BIND,
                  label=f"generated file → {op.target}")
        finally:
            os.close(source)
            os.close(target)

    def _resolve_in_root(self, path: str) -> str:
        """Follow symlinks of the last component as the sandbox would (a few hops)."""
        for _ in range(8):
            parent, name = os.path.split(path)
            fd = open_beneath(self._root, parent, "dir", label=path)
            try:
                text = os.readlink(name, dir_fd=fd)
            except OSError:  # not a symlink (or not there yet): this is the file
                return path
            finally:
                os.close(fd)
            path = os.path.normpath(text if text.startswith("/") else f"{parent}/{text}")
        raise SandboxError(f"{path}: too many levels of symbolic links in the rootfs")

    def _readonly(self, op: ReadOnly, stage_dir: int) -> None:
        try:
            target = open_beneath(self._root, op.target, label=op.target)
        except SandboxError:
            return  # this kernel has no such file: nothing to protect
        try:
            mount(_fd_path(target), _fd_path(target), None, MS_BIND | MS_REC,
                  label=f"{op.target} → {op.target}")
        finally:
            os.close(target)
        target = open_beneath(self._root, op.target, label=op.target)
        try:
            flags = os.fstatvfs(target).f_flag
            kept = sum(bit for st, bit in _ST_FLAGS.items() if flags & st)
            mount(None, _fd_path(target), None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept,
                  label=f"read-only {op.target}")
        finally:
            os.close(target)

    def _pivot(self) -> None:
        os.fchdir(self._root)
        pivot_root(".", ".")
        umount2(".", MNT_DETACH)
        os.chdir("/")
