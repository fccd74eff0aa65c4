"""Pull + extract time of a ~50 MB multi-layer image from a local registry:
coop's stdlib client against ``skopeo copy`` + ``umoci unpack``.

    python3 bench/image_pull.py [--runs 3] [--mb 50]

Starts Debian's docker-registry on 127.0.0.1, pushes a generated image with
skopeo, then times cold pulls (empty cache) of each tool; prints medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coop.image.layers import extract  # noqa: E402
from coop.image.pull import pull  # noqa: E402
from coop.image.reference import parse_source  # noqa: E402
from tests.image_fixture import (busybox_members, directory, file, image, tar_bytes,  # noqa: E402
                                 write_layout)
from tests.registry_fixture import Registry  # noqa: E402


def make_layers(total_mb: int, count: int = 4) -> list[bytes]:
    """Busybox plus ``count`` layers of incompressible files, small and large."""
    per_layer = total_mb * 1_000_000 // count
    layers = [tar_bytes(busybox_members())]
    for n in range(count):
        members = [directory(f"data{n}")]
        small = per_layer // 2 // 400
        members += [file(f"data{n}/small-{i:04}", os.urandom(small)) for i in range(400)]
        members += [file(f"data{n}/large", os.urandom(per_layer // 2))]
        layers.append(tar_bytes(members))
    return layers


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def coop_pull(ref: str, work: Path) -> None:
    img = pull(parse_source(ref), work / "cache")
    root = work / "rootfs"
    root.mkdir()
    for layer in img.layers:
        with layer.open() as reader:
            extract(reader, root, digest=layer.digest)


def coop_extract_only(ref: str, cache: Path, work: Path) -> None:
    img = pull(parse_source(ref), cache)  # warm: every blob already cached
    root = work / "rootfs"
    root.mkdir()
    for layer in img.layers:
        with layer.open() as reader:
            extract(reader, root, digest=layer.digest)


def skopeo_umoci(ref: str, work: Path) -> None:
    subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false",
                    f"docker://{ref}", f"oci:{work / 'layout'}:bench"], check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{work / 'layout'}:bench",
                    str(work / "bundle")], check=True, capture_output=True)


def fresh(tmp: Path, name: str) -> Path:
    path = tmp / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mb", type=int, default=50)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="coop-bench-"))
    registry = None
    try:
        layers = make_layers(args.mb)
        built = image(layers)
        size = sum(len(blob) for _, blob in built.layers)
        write_layout(tmp / "src", {"bench": built})
        registry = Registry()
        registry.push(tmp / "src", "bench", "bench/image")
        ref = f"{registry.address}/bench/image:bench"
        results: dict[str, list[float]] = {"coop pull + extract": [],
                                           "skopeo copy + umoci unpack": [],
                                           "coop extract only (warm cache)": []}
        have_umoci = shutil.which("umoci") is not None
        for _ in range(args.runs):
            results["coop pull + extract"].append(
                timed(lambda: coop_pull(ref, fresh(tmp, "coop"))))
            if have_umoci:
                results["skopeo copy + umoci unpack"].append(
                    timed(lambda: skopeo_umoci(ref, fresh(tmp, "umoci"))))
            results["coop extract only (warm cache)"].append(
                timed(lambda: coop_extract_only(ref, tmp / "coop" / "cache",
                                                fresh(tmp, "warm"))))
        print(f"image: {len(built.layers)} layers, {size / 1e6:.1f} MB compressed, "
              f"{sum(map(len, layers)) / 1e6:.1f} MB uncompressed; {args.runs} runs, "
              f"{os.cpu_count()} CPUs")
        for name, times in results.items():
            if times:
                print(f"  {name:34} median {statistics.median(times):6.2f} s   "
                      f"(min {min(times):.2f}, max {max(times):.2f})")
            else:
                print(f"  {name:34} not measured (umoci not installed)")
    finally:
        if registry:
            registry.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
