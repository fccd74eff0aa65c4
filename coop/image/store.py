"""Built root filesystems, one per build hash (IMG-5, CF-5).

``<root>/<hash>/rootfs/`` is the tree, ``<root>/<hash>/meta.json`` says what
built it. A build happens in ``<root>/.build-<hash>-<pid>/`` and is published
by one rename (an atomic exchange when replacing), so a reader sees either
the old rootfs or the new one, never a half-built tree. A per-hash flock
keeps two builds of the same hash apart and tells ``gc`` which staging
directories belong to a dead build. Trees go through ``coop.sandbox.removal``:
a build step may have left directories of subordinate ids in them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

from coop.sandbox import removal

_STAGING = ".build-"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@dataclass(frozen=True)
class Entry:
    hash: str
    path: Path
    meta: dict

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (renameat2); False when the kernel/libc cannot."""
    import ctypes  # only on publish: keeps `coop init` on a built hash fast

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), str(a))


class RootfsStore:
    def __init__(self, root: os.PathLike | str) -> None:
        self.root = Path(root)

    def _lock_path(self, build_hash: str) -> Path:
        return self.root / f".{build_hash}.lock"

    @contextlib.contextmanager
    def lock(self, build_hash: str, *, wait: bool = True):
        """Hold the build lock of ``build_hash``; BlockingIOError if busy and not ``wait``."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_path(build_hash), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield
        finally:
            os.close(fd)

    def find(self, build_hash: str) -> Entry | None:
        path = self.root / build_hash
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("hash") != build_hash:
            return None
        return Entry(build_hash, path, meta)

    def list(self) -> list[Entry]:
        if not self.root.is_dir():
            return []
        found = (self.find(p.name) for p in self.root.iterdir() if not p.name.startswith("."))
        return sorted((e for e in found if e), key=lambda e: e.meta.get("built", 0))

    @contextlib.contextmanager
    def staging(self, build_hash: str):
        """A fresh build directory (with an empty ``rootfs/``); removed unless published.

        Call under ``lock(build_hash)``.
        """
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = self.root / f"{_STAGING}{build_hash}-{os.getpid()}"
        removal.remove(staging)
        staging.mkdir(mode=0o700)
        (staging / "rootfs").mkdir(mode=0o755)
        try:
            yield staging
        finally:
            removal.remove(staging)

    def publish(self, staging: Path, build_hash: str, meta: dict) -> Entry:
        """Write ``meta.json`` and move ``staging`` to ``<root>/<hash>`` atomically."""
        meta = dict(meta, hash=build_hash)
        tmp = staging / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
        os.replace(tmp, staging / "meta.json")
        final = self.root / build_hash
        # After an exchange the old tree sits at ``staging`` and leaves with it.
        if not (final.exists() and _exchange(staging, final)):
            removal.remove(final)
            os.rename(staging, final)
        return Entry(build_hash, final, meta)

    def remove(self, build_hash: str) -> None:
        removal.remove(self.root / build_hash)

    def gc(self, in_use: set[str]) -> list[str]:
        """Remove every rootfs not in ``in_use`` and every dead build; return removed hashes."""
        removed = []
        for entry in self.list():
            if entry.hash in in_use:
                continue
            with contextlib.suppress(BlockingIOError), self.lock(entry.hash, wait=False):
                self.remove(entry.hash)
                removed.append(entry.hash)
        for path in self.root.glob(_STAGING + "*") if self.root.is_dir() else ():
            build_hash = path.name[len(_STAGING):].rsplit("-", 1)[0]
            with contextlib.suppress(BlockingIOError), self.lock(build_hash, wait=False):
                removal.remove(path)
        return removed
