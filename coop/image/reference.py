"""Sans-I/O parsing of ``[base].image`` values (IMG-1).

An image reference follows the distribution grammar
(``[host[:port]/]path[:tag][@sha256:hex]``); the local forms ``oci:``,
``docker-archive:`` and ``dir:`` and the word ``host`` are told apart first,
so a Coopfile error can say exactly which form was malformed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"  # where the Docker Hub API actually answers
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?\Z"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
_MAX_NAME = 255


@dataclass(frozen=True)
class Reference:
    """A registry image: ``registry`` is a host[:port], ``digest`` wins over ``tag``."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        """The host that serves the distribution API for ``registry``."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def pin(self) -> str:
        """What to ask the registry's manifest endpoint for."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def _is_domain(first: str) -> bool:
    return "." in first or ":" in first or first == "localhost" or first != first.lower()


def parse(text: str) -> Reference:
    """Parse an OCI reference; raise ValueError naming what is wrong."""
    if not text or text != text.strip():
        raise ValueError(f"image reference {text!r}: empty or surrounded by spaces")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise ValueError(f"image reference {text!r}: digest must be sha256:<64 hex digits>")
    registry, path = DOCKER_HUB, rest
    first, sep, remainder = rest.partition("/")
    if sep and _is_domain(first):
        if not _DOMAIN.match(first):
            raise ValueError(f"image reference {text!r}: invalid registry host {first!r}")
        registry, path = first, remainder
        if registry in ("index.docker.io", DOCKER_HUB_API):
            registry = DOCKER_HUB
    tag = None
    last_slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > last_slash:
        path, tag = path[:colon], path[colon + 1:]
        if not _TAG.match(tag):
            raise ValueError(
                f"image reference {text!r}: invalid tag {tag!r} "
                "(letters, digits, '_', '.', '-'; at most 128)")
    components = path.split("/")
    for comp in components:
        if not _COMPONENT.match(comp):
            raise ValueError(
                f"image reference {text!r}: invalid name component {comp!r} "
                "(lowercase letters and digits, separated by '.', '_', '__' or '-')")
    if registry == DOCKER_HUB and len(components) == 1:
        path = f"library/{path}"
    if len(registry) + 1 + len(path) > _MAX_NAME:
        raise ValueError(f"image reference {text!r}: name longer than {_MAX_NAME} characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)


@dataclass(frozen=True)
class Source:
    """Where a base image comes from.

    ``kind`` is ``host``, ``oci`` (layout dir at ``path``, optional ``tag``),
    ``docker-archive`` (tarball at ``path``), ``dir`` (directory at ``path``)
    or ``registry`` (``reference``).
    """

    kind: str
    path: str | None = None
    tag: str | None = None
    reference: Reference | None = None

    def __str__(self) -> str:
        if self.kind == "host":
            return "host"
        if self.kind == "registry":
            return str(self.reference)
        return f"{self.kind}:{self.path}" + (f":{self.tag}" if self.tag else "")


def parse_source(image: str) -> Source:
    """Parse a ``[base].image`` value (IMG-1); raise ValueError naming the form.

    In ``oci:PATH:TAG`` the tag follows the last ``:`` (a tag never holds one),
    as ``coop.coopfile.check_image`` reads it.
    """
    if image == "host":
        return Source("host")
    for kind in ("oci", "docker-archive", "dir"):
        prefix = kind + ":"
        if not image.startswith(prefix):
            continue
        body = image[len(prefix):]
        tag = None
        if kind == "oci" and ":" in body:
            body, tag = body.rsplit(":", 1)
            if not _TAG.match(tag):
                raise ValueError(f"image {image!r}: invalid tag {tag!r} after the layout path")
        if not body:
            raise ValueError(f"image {image!r}: {kind}: needs a path")
        return Source(kind, path=body, tag=tag)
    return Source("registry", reference=parse(image))
