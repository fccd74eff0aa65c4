"""Local OCI image layouts (``oci:PATH[:TAG]``, IMG-1).

The tag is the ``org.opencontainers.image.ref.name`` annotation of an
``index.json`` entry. Blobs are read from ``blobs/sha256/<hex>`` and checked
against their digests like registry blobs.
"""

from __future__ import annotations

from pathlib import Path

from coop.image.digest import hex_of, verify_bytes
from coop.image.manifest import (INDEX_TYPES, REF_NAME, Descriptor, Manifest, ManifestError,
                                 Platform, load_config, media_type_of, parse_index,
                                 parse_manifest, select_platform)

_MAX_JSON = 4 << 20


class OciLayout:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"oci:{path}"
        if not (self.path / "oci-layout").is_file() or not (self.path / "index.json").is_file():
            raise ManifestError(f"{self.name}: not an OCI image layout "
                                "(no oci-layout or index.json)")

    def blob_path(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / hex_of(digest)

    def read_blob(self, desc: Descriptor) -> bytes:
        """A small blob (manifest, config), size-capped and digest-checked."""
        if desc.size > _MAX_JSON:
            raise ManifestError(f"{self.name}: blob {desc.digest} is too large for JSON")
        try:
            data = self.blob_path(desc.digest).read_bytes()
        except OSError as exc:
            raise ManifestError(f"{self.name}: blob {desc.digest}: {exc.strerror}") from None
        verify_bytes(data, desc.digest, f"{self.name}: blob")
        return data

    def _entry(self, tag: str | None) -> Descriptor:
        entries = parse_index((self.path / "index.json").read_bytes(), self.name)
        names = {e.annotations.get(REF_NAME): e for e in entries if e.annotations.get(REF_NAME)}
        if tag is not None:
            match = names.get(tag) or next(
                (e for n, e in names.items() if n.rsplit(":", 1)[-1] == tag and ":" in n), None)
            if match is None:
                raise ManifestError(f"{self.name}: no tag {tag!r} (tags: "
                                    f"{', '.join(sorted(names)) or 'none'})")
            return match
        if len(entries) == 1:
            return entries[0]
        if "latest" in names:
            return names["latest"]
        raise ManifestError(f"{self.name}: {len(entries)} images and no tag given "
                            f"(tags: {', '.join(sorted(names)) or 'none'})")

    def resolve(self, tag: str | None, platform: Platform) -> tuple[str, Manifest]:
        """(manifest digest, manifest) for ``tag`` on ``platform``."""
        entry = self._entry(tag)
        data = self.read_blob(entry)
        kind = media_type_of(data, entry.media_type, self.name)
        if kind in INDEX_TYPES:
            entry = select_platform(parse_index(data, self.name), platform, self.name)
            data = self.read_blob(entry)
            if media_type_of(data, entry.media_type, self.name) in INDEX_TYPES:
                raise ManifestError(f"{self.name}: nested indexes are not supported")
        return entry.digest, parse_manifest(data, self.name)

    def config(self, manifest: Manifest) -> dict:
        return load_config(self.read_blob(manifest.config), self.name)

