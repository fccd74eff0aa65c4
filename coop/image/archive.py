"""``docker save`` tarballs (``docker-archive:PATH``, IMG-1).

The archive's ``manifest.json`` names the config and the layer tarballs in
order. Each layer is checked against the digest it can be checked against:
its own name for ``blobs/sha256/<hex>`` entries (newer Docker), else the
config's ``rootfs.diff_ids`` (the sha256 of the uncompressed tar).
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from coop.image.digest import of_bytes
from coop.image.manifest import ManifestError, load_config

_MAX_JSON = 4 << 20
_BLOB_NAME = re.compile(r"(?:\./)?blobs/sha256/([0-9a-f]{64})\Z")


@dataclass(frozen=True)
class ArchiveLayer:
    member: str
    digest: str  # what the member's bytes must hash to


class DockerArchive:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"docker-archive:{path}"
        try:
            self.tar = tarfile.open(self.path, "r:*")
        except (OSError, tarfile.TarError) as exc:
            raise ManifestError(f"{self.name}: cannot open: {exc}") from None

    def close(self) -> None:
        self.tar.close()

    def _json(self, member: str):
        try:
            info = self.tar.getmember(member.removeprefix("./"))
        except KeyError:
            raise ManifestError(f"{self.name}: missing {member}") from None
        if not info.isreg() or info.size > _MAX_JSON:
            raise ManifestError(f"{self.name}: {member} is not a small regular file")
        return self.tar.extractfile(info).read()

    def resolve(self) -> tuple[str, dict, list[ArchiveLayer]]:
        """(config digest, config, layers) of the archive's single image."""
        try:
            entries = json.loads(self._json("manifest.json"))
        except ValueError:
            raise ManifestError(f"{self.name}: manifest.json is not JSON") from None
        if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0],
                                                                                 dict):
            raise ManifestError(f"{self.name}: expected exactly one image in manifest.json")
        entry = entries[0]
        config_bytes = self._json(str(entry.get("Config", "")))
        config = load_config(config_bytes, self.name)
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        names = entry.get("Layers")
        if not isinstance(names, list) or len(names) != len(diff_ids):
            raise ManifestError(f"{self.name}: layer list does not match the config's diff_ids")
        layers = []
        for name, diff_id in zip(names, diff_ids):
            named = _BLOB_NAME.match(str(name))
            layers.append(ArchiveLayer(str(name), f"sha256:{named.group(1)}" if named
                                       else str(diff_id)))
        return of_bytes(config_bytes), config, layers

    def open_layer(self, layer: ArchiveLayer):
        try:
            info = self.tar.getmember(layer.member.removeprefix("./"))
        except KeyError:
            raise ManifestError(f"{self.name}: missing layer {layer.member}") from None
        handle = self.tar.extractfile(info)  # follows in-archive links of repeated layers
        if handle is None:
            raise ManifestError(f"{self.name}: layer {layer.member} is not a file")
        return handle
