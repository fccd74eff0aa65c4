"""The blob cache: verified blobs by digest, shared by every image (IMG-2).

Layout: ``<root>/blobs/sha256/<hex>`` (complete, verified) and ``<hex>.partial``
(a download in progress, kept for resuming; its flock serialises concurrent
downloads of the same blob). A blob only appears under its final name after
its digest was checked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from coop.image.digest import hex_of


class BlobCache:
    def __init__(self, root: os.PathLike | str) -> None:
        self.root = Path(root)
        self.dir = self.root / "blobs" / "sha256"

    def path(self, digest: str) -> Path:
        return self.dir / hex_of(digest)

    def partial(self, digest: str) -> Path:
        return self.dir / (hex_of(digest) + ".partial")

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    @contextlib.contextmanager
    def downloading(self, digest: str):
        """Yield the partial file (r/w, exclusively locked) for ``digest``."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.partial(digest), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "r+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield handle

    def commit(self, handle, digest: str) -> Path:
        """Publish a verified partial file under its digest."""
        handle.flush()
        os.fsync(handle.fileno())
        final = self.path(digest)
        os.replace(self.partial(digest), final)
        return final

    def discard(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.partial(digest))

    def prune(self, keep: set[str]) -> list[str]:
        """Remove complete blobs not in ``keep`` and unlocked partial files."""
        removed = []
        if not self.dir.is_dir():
            return removed
        wanted = {hex_of(d) for d in keep}
        for entry in os.scandir(self.dir):
            name = entry.name
            if name.endswith(".partial"):
                self._remove_partial(entry.path)
            elif name not in wanted:
                os.unlink(entry.path)
                removed.append("sha256:" + name)
        return removed

    def _remove_partial(self, path: str) -> None:
        with open(path, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # someone is downloading it right now
            os.unlink(path)
