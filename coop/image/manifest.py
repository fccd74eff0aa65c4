"""Sans-I/O OCI / Docker v2 manifests, indexes and platform choice (IMG-2).

Registries, OCI layouts and docker archives all end in the same shape: a
config blob and an ordered list of layer blobs. This module turns manifest
JSON into that shape and picks the host's entry out of a multi-arch index.
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass, field

from coop.image.digest import hex_of
from coop.image.error import ImageError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)
REF_NAME = "org.opencontainers.image.ref.name"

_ARCH = {  # platform.machine() -> (GOARCH, variant)
    "x86_64": ("amd64", None), "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "i386": ("386", None), "i686": ("386", None),
    "ppc64le": ("ppc64le", None), "s390x": ("s390x", None), "riscv64": ("riscv64", None),
}


class ManifestError(ImageError):
    """A manifest or index is malformed or has nothing for this platform."""


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def host_platform(machine: str | None = None) -> Platform:
    """The platform to pull for this machine (``linux/amd64``, ``linux/arm64/v8``…)."""
    machine = machine or _platform.machine()
    arch, variant = _ARCH.get(machine, (machine, None))
    return Platform("linux", arch, variant)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]


def _descriptor(obj, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: descriptor is not an object")
    digest, size = obj.get("digest"), obj.get("size")
    if not isinstance(digest, str):
        raise ManifestError(f"{where}: descriptor has no digest string")
    try:
        hex_of(digest)
    except ValueError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where}: descriptor {digest} has no valid size")
    plat = obj.get("platform")
    platform = None
    if isinstance(plat, dict):
        platform = Platform(str(plat.get("os", "")), str(plat.get("architecture", "")),
                            plat.get("variant") or None)
    annotations = obj.get("annotations") if isinstance(obj.get("annotations"), dict) else {}
    return Descriptor(str(obj.get("mediaType", "")), digest, size, platform, annotations)


def _load(data: bytes, what: str) -> dict:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ManifestError(f"{what}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"{what}: not a JSON object")
    return doc


def media_type_of(data: bytes, header_type: str | None, what: str) -> str:
    """The manifest's media type, from its body when present, else the header."""
    doc = _load(data, what)
    kind = doc.get("mediaType") or header_type or ""
    if not kind and "manifests" in doc:
        kind = OCI_INDEX
    elif not kind and "layers" in doc:
        kind = OCI_MANIFEST
    if kind not in MANIFEST_TYPES + INDEX_TYPES:
        raise ManifestError(f"{what}: unsupported manifest type {kind or 'unknown'!r}")
    return kind


def parse_manifest(data: bytes, what: str) -> Manifest:
    doc = _load(data, what)
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ManifestError(f"{what}: manifest has no layer list")
    return Manifest(
        config=_descriptor(doc.get("config"), what),
        layers=tuple(_descriptor(layer, what) for layer in layers),
    )


def parse_index(data: bytes, what: str) -> tuple[Descriptor, ...]:
    doc = _load(data, what)
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise ManifestError(f"{what}: index has no manifest list")
    return tuple(_descriptor(entry, what) for entry in entries)


def _variant_score(wanted: Platform, offered: Platform) -> int | None:
    """Lower is better; None means it does not run here."""
    if offered.variant == wanted.variant:
        return 0
    if offered.variant is None:
        return 1
    if wanted.architecture == "arm64" and offered.variant == "v8" and wanted.variant is None:
        return 0
    return None


def select_platform(entries, wanted: Platform, what: str) -> Descriptor:
    """The index entry for ``wanted``; ManifestError listing what is offered."""
    best, best_score = None, None
    for entry in entries:
        plat = entry.platform
        if plat is None or plat.os != wanted.os or plat.architecture != wanted.architecture:
            continue
        score = _variant_score(wanted, plat)
        if score is not None and (best_score is None or score < best_score):
            best, best_score = entry, score
    if best is None:
        offered = ", ".join(sorted({str(e.platform) for e in entries if e.platform})) or "none"
        raise ManifestError(f"{what}: no image for {wanted} (offered: {offered})")
    return best


def load_config(data: bytes, what: str) -> dict:
    """An image config blob as a dict (``{}`` parts are tolerated, non-objects are not)."""
    return _load(data, f"{what}: image config")


def image_env(config: dict) -> list[str]:
    """The ``Env`` list of an image config (``KEY=value`` strings)."""
    inner = config.get("config")
    env = inner.get("Env") if isinstance(inner, dict) else None
    if not isinstance(env, list):
        return []
    return [item for item in env if isinstance(item, str) and "=" in item]
