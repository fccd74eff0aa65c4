"""Safe extraction of image layer tarballs into a rootfs directory (IMG-3).

A layer is untrusted input. Every member is created relative to directory
file descriptors opened with ``O_NOFOLLOW``, so nothing is ever written
through a symlink and no name can leave the target: absolute names, ``..``
components, parents that are symlinks (even ones that would resolve inside)
and hard links to anything not already inside the target are refused with a
``LayerError``. Whiteouts and opaque directories are applied; device nodes
and FIFOs are skipped; ownership is set only when running as root. GNU sparse
members are refused (image tools never write them, and they are the classic
way to declare gigabytes in a few bytes), and declared sizes are capped.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import tarfile
import threading
import zlib
from dataclasses import dataclass

from coop.image.error import ImageError
from coop.image.tree import remove_at

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_MAX_CACHED_DIRS = 256
MAX_DEPTH = 128
MAX_NAME = 4096


class LayerError(ImageError):
    """A layer cannot be applied safely; the message names layer and member."""


@dataclass(frozen=True)
class Limits:
    """Caps on declared sizes, checked before a byte of the member is written."""

    max_member_bytes: int = 8 << 30
    max_layer_bytes: int = 64 << 30


@dataclass
class Stats:
    files: int = 0
    dirs: int = 0
    links: int = 0
    whiteouts: int = 0
    skipped: int = 0
    bytes: int = 0


def split_name(name: str) -> tuple[str, ...]:
    """Archive name -> path components; ValueError if it could leave the root
    (or nest deeper than any real image, which would make cleanup recursive without end)."""
    if name.startswith("/"):
        raise ValueError("absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ValueError("path contains '..'")
    if "\0" in name:
        raise ValueError("path contains a NUL byte")
    if len(parts) > MAX_DEPTH or len(name) > MAX_NAME:
        raise ValueError(f"path deeper than {MAX_DEPTH} levels or longer than {MAX_NAME} bytes")
    return parts


class _Extractor:
    def __init__(self, target: os.PathLike | str, digest: str, limits: Limits,
                 privileged: bool) -> None:
        self.digest = digest
        self.limits = limits
        self.privileged = privileged
        self.root_fd = os.open(target, _DIR_FLAGS)
        self.dirs: dict[tuple[str, ...], int] = {}
        self.created: set[tuple[str, ...]] = set()
        self.deferred: dict[tuple[str, ...], tarfile.TarInfo] = {}
        self.stats = Stats()

    def close(self) -> None:
        for fd in self.dirs.values():
            os.close(fd)
        self.dirs.clear()
        os.close(self.root_fd)

    # -- directory fds ---------------------------------------------------

    def _dir(self, parts: tuple[str, ...], create: bool) -> int | None:
        """fd of the directory at ``parts``; None when missing and not ``create``."""
        if not parts:
            return self.root_fd
        cached = self.dirs.get(parts)
        if cached is not None:
            return cached
        parent = self._dir(parts[:-1], create)
        if parent is None:
            return None
        name = parts[-1]
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(name, 0o755, dir_fd=parent)
            self.created.add(parts)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                raise ValueError(f"parent {'/'.join(parts)} is {kind}") from None
            raise
        self.dirs[parts] = fd
        return fd

    def _forget(self, parts: tuple[str, ...]) -> None:
        """Drop cached fds at or below ``parts`` (it was just removed)."""
        n = len(parts)
        for key in [k for k in self.dirs if k[:n] == parts]:
            os.close(self.dirs.pop(key))

    def _remove(self, parent_fd: int, parts: tuple[str, ...]) -> bool:
        """Remove whatever is at ``parts``; False when nothing was there."""
        self._forget(parts)
        try:
            remove_at(parent_fd, parts[-1])
        except FileNotFoundError:
            return False
        return True

    def _existing(self, parent_fd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    # -- metadata --------------------------------------------------------

    def _mode(self, member: tarfile.TarInfo) -> int:
        mode = member.mode & 0o7777
        if member.isdir() and not self.privileged:
            mode |= 0o700  # we must still write below it; inside, uid 0 ignores modes anyway
        return mode

    def _apply_fd(self, fd: int, member: tarfile.TarInfo) -> None:
        if self.privileged:
            os.fchown(fd, member.uid, member.gid)  # before chmod: chown clears setuid
        os.fchmod(fd, self._mode(member))
        mtime = int(member.mtime) * 1_000_000_000
        os.utime(fd, ns=(mtime, mtime))

    # -- members ---------------------------------------------------------

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if len(self.dirs) > _MAX_CACHED_DIRS:
            self._forget(())
        parts = split_name(member.name)
        if not parts:
            return
        name = parts[-1]
        if name.startswith(WHITEOUT):
            self._whiteout(parts)
            return
        if member.isreg():
            self._check_size(member)
        parent = self._dir(parts[:-1], create=True)
        if member.isdir():
            self._directory(parent, parts, member)
        elif member.isreg():
            self._file(tar, parent, parts, member)
        elif member.issym():
            self._symlink(parent, parts, member)
        elif member.islnk():
            self._hardlink(parent, parts, member)
        else:
            self.stats.skipped += 1  # devices, FIFOs: never created (IMG-3)
            return
        self.created.add(parts)

    def _whiteout(self, parts: tuple[str, ...]) -> None:
        parent = self._dir(parts[:-1], create=False)
        self.stats.whiteouts += 1
        if parent is None:
            return
        if parts[-1] == OPAQUE:
            for child in os.listdir(parent):
                path = parts[:-1] + (child,)
                if path not in self.created:
                    self._remove(parent, path)
            return
        hidden = parts[-1][len(WHITEOUT):]
        if hidden in ("", ".", ".."):
            raise ValueError(f"invalid whiteout name {parts[-1]!r}")
        self._remove(parent, parts[:-1] + (hidden,))

    def _check_size(self, member: tarfile.TarInfo) -> None:
        if member.issparse():
            raise ValueError("GNU sparse members are not accepted in image layers")
        if member.size > self.limits.max_member_bytes:
            raise ValueError(f"declares {member.size} bytes, over the per-file limit of "
                             f"{self.limits.max_member_bytes}")
        if self.stats.bytes + member.size > self.limits.max_layer_bytes:
            raise ValueError(f"layer content exceeds the limit of {self.limits.max_layer_bytes}"
                             " bytes")
        self.stats.bytes += member.size

    def _replace(self, parent: int, parts: tuple[str, ...]) -> None:
        if self._existing(parent, parts[-1]) is not None:
            self._remove(parent, parts)

    def _directory(self, parent: int, parts, member) -> None:
        st = self._existing(parent, parts[-1])
        if st is None or not stat.S_ISDIR(st.st_mode):
            if st is not None:
                self._remove(parent, parts)
            os.mkdir(parts[-1], 0o700, dir_fd=parent)
        self.deferred[parts] = member
        self.stats.dirs += 1

    def _file(self, tar, parent: int, parts, member) -> None:
        self._replace(parent, parts)
        fd = os.open(parts[-1], _FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            src = tar.extractfile(member)
            written = 0
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            if written != member.size:
                raise ValueError(f"truncated: {written} of {member.size} bytes")
            self._apply_fd(fd, member)
        finally:
            os.close(fd)
        self.stats.files += 1

    def _symlink(self, parent: int, parts, member) -> None:
        self._replace(parent, parts)
        os.symlink(member.linkname, parts[-1], dir_fd=parent)
        name = parts[-1]
        if self.privileged:
            os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        mtime = int(member.mtime) * 1_000_000_000
        os.utime(name, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)
        self.stats.links += 1

    def _hardlink(self, parent: int, parts, member) -> None:
        try:
            source = split_name(member.linkname)
        except ValueError as exc:
            raise ValueError(f"hard link target {member.linkname!r}: {exc}") from None
        if source == parts:
            return
        self._replace(parent, parts)
        src_parent = self._dir(source[:-1], create=False) if source else None
        st = self._existing(src_parent, source[-1]) if src_parent is not None else None
        if st is None or stat.S_ISDIR(st.st_mode):
            raise ValueError(f"hard link to {member.linkname!r}, which is not a file in the"
                             " rootfs")
        os.link(source[-1], parts[-1], src_dir_fd=src_parent, dst_dir_fd=parent,
                follow_symlinks=False)
        self.stats.links += 1

    def finish(self) -> None:
        """Directory modes and times last: adding entries changes them."""
        for parts in sorted(self.deferred, key=len, reverse=True):
            fd = self._dir(parts, create=False)
            if fd is not None:
                self._apply_fd(fd, self.deferred[parts])


class _Prepended:
    """Reader returning ``head`` and then the rest of ``raw`` (after a magic sniff)."""

    def __init__(self, head: bytes, raw) -> None:
        self._head = head
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._raw.read(size)
        if size < 0:
            data, self._head = self._head + self._raw.read(), b""
            return data
        data, self._head = self._head[:size], self._head[size:]
        return data


class _Zstd:
    """``zstd -dc`` as a stream: a thread feeds ``raw`` in, tarfile reads out."""

    def __init__(self, raw) -> None:
        try:
            self.proc = subprocess.Popen(["zstd", "-dcq"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE)
        except FileNotFoundError:
            raise ValueError("zstd-compressed layer needs the zstd program") from None
        self.stdout = self.proc.stdout
        self._thread = threading.Thread(target=self._pump, args=(raw,), daemon=True)
        self._thread.start()

    def _pump(self, raw) -> None:
        try:
            while chunk := raw.read(_CHUNK):
                self.proc.stdin.write(chunk)
        except OSError:
            pass  # the reader stopped early (end of archive or an error)
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def close(self) -> None:
        self.stdout.close()
        self.proc.kill()
        self.proc.wait()
        self._thread.join()


def extract(raw, target: os.PathLike | str, *, digest: str, limits: Limits = Limits(),
            privileged: bool | None = None) -> Stats:
    """Apply one layer blob (``raw``: binary reader, gzip, zstd or plain tar) onto ``target``.

    Raises LayerError naming ``digest`` and the offending member. ``raw`` may be
    left partly unread (after the end-of-archive marker).
    """
    if privileged is None:
        privileged = os.geteuid() == 0
    ex = _Extractor(target, digest, limits, privileged)
    current = "(archive)"
    zstd = None
    try:
        head = raw.read(4)
        stream = _Prepended(head, raw)
        if head == ZSTD_MAGIC:
            zstd = _Zstd(stream)
            stream = zstd.stdout
        with tarfile.open(fileobj=stream, mode="r|*", bufsize=_CHUNK) as tar:
            for member in tar:
                current = member.name
                ex.member(tar, member)
        current = "(directory metadata)"
        ex.finish()
        return ex.stats
    except (ValueError, OverflowError, OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LayerError(f"layer {digest}: {current}: {reason}") from None
    finally:
        ex.close()
        if zstd is not None:
            zstd.close()
