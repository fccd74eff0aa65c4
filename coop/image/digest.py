"""Content digests (``sha256:<hex>``) and a reader that checks one while streaming.

Every blob coop uses is checked against the digest its manifest names
(IMG-2); local layouts are checked on the same single pass that extracts them.
"""

from __future__ import annotations

import hashlib
import re

from coop.image.error import ImageError

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})\Z")


class DigestError(ImageError):
    """Content does not match the digest that names it."""


def hex_of(digest: str) -> str:
    """The hex part of a ``sha256:`` digest; ValueError for anything else."""
    match = _DIGEST.match(digest or "")
    if not match:
        raise ValueError(f"unsupported or malformed digest {digest!r} (expected sha256:<64 hex>)")
    return match.group(1)


def of_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify_bytes(data: bytes, digest: str, what: str) -> None:
    if of_bytes(data) != "sha256:" + hex_of(digest):
        raise DigestError(f"{what}: content does not match {digest}")


class DigestReader:
    """File-like wrapper hashing what is read; ``finish()`` drains and checks."""

    def __init__(self, raw, digest: str, what: str) -> None:
        self._raw = raw
        self._expected = hex_of(digest)
        self._digest = digest
        self._what = what
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._hash.update(data)
        return data

    def finish(self) -> None:
        while self.read(1 << 20):
            pass
        if self._hash.hexdigest() != self._expected:
            raise DigestError(f"{self._what}: content does not match {self._digest}")
