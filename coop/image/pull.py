"""Getting a base image's config and verified layer blobs from any source (IMG-1/2).

Registry images are downloaded into the shared blob cache (several layers
at once); local layouts and archives are read in place and checked on the
same pass that extracts them. Either way the caller gets an ``Image`` whose
layers open as readers that fail on a digest mismatch.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

from coop.image.cache import BlobCache
from coop.image.digest import DigestReader
from coop.image.manifest import Platform, host_platform, load_config
from coop.image.progress import Download, Progress, ignore
from coop.image.reference import Source

DOWNLOAD_WORKERS = 3


@dataclass(frozen=True)
class Layer:
    digest: str
    open: Callable[[], ContextManager]  # yields a binary reader


@dataclass(frozen=True)
class Image:
    name: str
    digest: str  # manifest digest; config digest for docker archives
    config: dict
    config_digest: str
    layers: tuple[Layer, ...]


@contextlib.contextmanager
def _checked(handle, digest: str, what: str):
    """Yield a reader over ``handle`` that raises DigestError at the end on mismatch."""
    with handle:
        reader = DigestReader(handle, digest, what)
        yield reader
        reader.finish()


def _from_registry(source: Source, cache: BlobCache, no_cache: bool, progress: Progress,
                   platform: Platform) -> Image:
    from coop.image.registry import RegistryClient  # http.client only when pulling

    ref = source.reference
    client = RegistryClient(ref.api_host)
    resolved = client.resolve(ref, platform)
    manifest = resolved.manifest
    config_path = client.fetch_blob(ref.repository, manifest.config, cache, refetch=no_cache)
    config = load_config(config_path.read_bytes(), str(ref))
    count = len(manifest.layers)
    lock = threading.Lock()

    def fetch(index: int) -> Path:
        blob = manifest.layers[index]

        def report(done: int, total: int) -> None:
            with lock:
                progress(Download(index + 1, count, blob.digest, done, total))

        return client.fetch_blob(ref.repository, blob, cache, progress=report, refetch=no_cache)

    with ThreadPoolExecutor(max_workers=DOWNLOAD_WORKERS) as pool:
        paths = list(pool.map(fetch, range(count)))
    layers = tuple(Layer(blob.digest, lambda p=path: open(p, "rb"))
                   for blob, path in zip(manifest.layers, paths))
    return Image(str(ref), resolved.digest, config, manifest.config.digest, layers)


def _from_layout(source: Source, platform: Platform) -> Image:
    from coop.image.layout import OciLayout

    layout = OciLayout(source.path)
    digest, manifest = layout.resolve(source.tag, platform)
    layers = tuple(
        Layer(blob.digest, lambda b=blob: _checked(open(layout.blob_path(b.digest), "rb"),
                                                   b.digest, f"{layout.name}: layer"))
        for blob in manifest.layers)
    return Image(str(source), digest, layout.config(manifest), manifest.config.digest, layers)


def _from_archive(source: Source) -> Image:
    from coop.image.archive import DockerArchive

    archive = DockerArchive(source.path)
    try:
        digest, config, members = archive.resolve()
    finally:
        archive.close()

    @contextlib.contextmanager
    def opener(member):
        again = DockerArchive(source.path)
        try:
            with _checked(again.open_layer(member), member.digest,
                          f"{again.name}: {member.member}") as reader:
                yield reader
        finally:
            again.close()

    layers = tuple(Layer(m.digest, lambda m=m: opener(m)) for m in members)
    return Image(str(source), digest, config, digest, layers)


def pull(source: Source, cache_root: Path, *, no_cache: bool = False,
         progress: Progress = ignore, platform: Platform | None = None) -> Image:
    """Config and layers of an image ``source`` (kind registry, oci or docker-archive)."""
    platform = platform or host_platform()
    if source.kind == "registry":
        return _from_registry(source, BlobCache(cache_root), no_cache, progress, platform)
    if source.kind == "oci":
        return _from_layout(source, platform)
    if source.kind == "docker-archive":
        return _from_archive(source)
    raise ValueError(f"{source}: not an image source that can be pulled")
