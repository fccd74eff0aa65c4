"""IMG-2: pulls from a real registry (docker-registry on loopback), pushed with skopeo."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest

from coop.image.cache import BlobCache
from coop.image.digest import DigestError
from coop.image.layers import extract
from coop.image.manifest import DOCKER_MANIFEST, ManifestError, Platform
from coop.image.progress import Download
from coop.image.pull import pull
from coop.image.reference import parse_source
from coop.image.registry import RegistryClient, RegistryError
from tests.image_fixture import (busybox_members, directory, file, image, opaque, run_in,
                                 symlink, tar_bytes, whiteout, write_layout)
from tests.registry_fixture import FaultyProxy, Registry

USERS = {"alice": "s3cret-pass"}
BASE = tar_bytes(busybox_members() + [
    directory("data"), file("data/keep", b"kept"), file("data/remove-me", b"x"),
    directory("opq"), file("opq/lower", b"lower")])
UPPER = tar_bytes([whiteout("data/remove-me"), directory("opq"), opaque("opq"),
                   file("opq/upper", b"upper"), directory("usr"), directory("usr/bin"),
                   symlink("usr/bin/echo", "../../bin/chain"), symlink("bin/chain", "busybox")])
APP = tar_bytes([directory("app"), file("app/data", os.urandom(300_000))])


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    arch_layer = {arch: tar_bytes([file("arch", arch.encode())]) for arch in ("amd64", "arm64")}
    return write_layout(tmp_path_factory.mktemp("layout"), {
        "v1": image([BASE, UPPER]),
        "app": image([BASE, UPPER, APP]),
        "plain": image([BASE], compression="none"),
        "multi": {"linux/amd64": image([BASE, arch_layer["amd64"]]),
                  "linux/arm64/v8": image([BASE, arch_layer["arm64"]], arch="arm64",
                                          variant="v8")},
    })


@pytest.fixture(scope="module")
def registry(layout):
    reg = Registry()
    try:
        for tag in ("v1", "app", "multi", "plain"):
            reg.push(layout, tag, "test/busybox")
        reg.push(layout, "v1", "test/docker-format", fmt="v2s2")
        yield reg
    finally:
        reg.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME with no docker credentials unless the test writes some."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("COOP_INSECURE_REGISTRIES", raising=False)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def docker_config(home: Path, registry: str, user: str, password: str, style: str) -> None:
    entry = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()} \
        if style == "auth" else {"username": user, "password": password}
    (home / ".docker").mkdir(exist_ok=True)
    (home / ".docker" / "config.json").write_text(json.dumps({"auths": {registry: entry}}))


def unpack(img, root: Path) -> Path:
    root.mkdir()
    for layer in img.layers:
        with layer.open() as reader:
            extract(reader, root, digest=layer.digest)
    return root


def source(registry_address: str, name: str):
    return parse_source(f"{registry_address}/{name}")


def test_anonymous_pull_extracts_a_runnable_rootfs(registry, home, tmp_path):
    events = []
    img = pull(source(registry.address, "test/busybox:v1"), tmp_path / "cache",
               progress=events.append)
    root = unpack(img, tmp_path / "root")
    done = run_in(root, "/usr/bin/echo ok; ls /data; ls /opq; cat /data/keep")
    assert done.stdout.split() == ["ok", "keep", "upper", "kept"], done.stderr
    assert img.config["config"]["Env"] == ["PATH=/bin"]
    downloads = [e for e in events if isinstance(e, Download)]
    assert {(e.index, e.count) for e in downloads} == {(1, 2), (2, 2)}
    assert all(e.done == e.total for e in downloads if e.done == e.total) and downloads
    for layer in img.layers:  # cached under their digests, verified
        data = BlobCache(tmp_path / "cache").path(layer.digest).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest


def test_docker_v2_schema2_and_uncompressed_layers(registry, home, tmp_path):
    client = RegistryClient(registry.address)
    body, kind = client.manifest("test/docker-format", "v1")
    assert kind == DOCKER_MANIFEST
    img = pull(source(registry.address, "test/docker-format:v1"), tmp_path / "cache")
    assert run_in(unpack(img, tmp_path / "a"), "cat /opq/upper").stdout == "upper"
    img = pull(source(registry.address, "test/busybox:plain"), tmp_path / "cache")
    assert run_in(unpack(img, tmp_path / "b"), "cat /opq/lower").stdout == "lower"


def test_multi_arch_index_resolves_to_the_platform(registry, home, tmp_path):
    ref = source(registry.address, "test/busybox:multi")
    host = pull(ref, tmp_path / "cache")  # this machine: linux/amd64 or linux/arm64
    arch = (unpack(host, tmp_path / "host") / "arch").read_text()
    assert arch in ("amd64", "arm64") and Platform("linux", arch).architecture == arch
    for wanted in ("amd64", "arm64"):
        img = pull(ref, tmp_path / "cache", platform=Platform("linux", wanted))
        assert (unpack(img, tmp_path / wanted) / "arch").read_text() == wanted
    with pytest.raises(ManifestError, match="no image for linux/s390x .offered: "
                                            "linux/amd64, linux/arm64/v8"):
        pull(ref, tmp_path / "cache", platform=Platform("linux", "s390x"))


def test_pull_by_digest_and_missing_names(registry, home, tmp_path):
    client = RegistryClient(registry.address)
    body, _ = client.manifest("test/busybox", "v1")
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    img = pull(source(registry.address, f"test/busybox@{digest}"), tmp_path / "cache")
    assert img.digest == digest
    with pytest.raises(RegistryError, match="test/busybox:nope not found"):
        pull(source(registry.address, "test/busybox:nope"), tmp_path / "cache")
    with pytest.raises(RegistryError, match="not found"):
        pull(source(registry.address, "test/busybox@sha256:" + "0" * 64), tmp_path / "cache")


def test_layers_are_shared_and_no_cache_refetches(registry, home, tmp_path):
    proxy = FaultyProxy(registry.address)
    try:
        cache = tmp_path / "cache"
        pull(source(proxy.address, "test/busybox:v1"), cache)
        first = len(proxy.blob_requests())
        assert first == 3  # config + 2 layers
        pull(source(proxy.address, "test/busybox:app"), cache)
        assert len(proxy.blob_requests()) == first + 2  # only its config and the new layer
        pull(source(proxy.address, "test/busybox:v1"), cache, no_cache=True)
        assert len(proxy.blob_requests()) == first + 2 + 3
    finally:
        proxy.close()


def test_corrupted_blob_is_refused_and_not_cached(registry, home, tmp_path):
    proxy = FaultyProxy(registry.address, corrupt=True)
    try:
        with pytest.raises(DigestError, match="does not match its digest; refused"):
            pull(source(proxy.address, "test/busybox:v1"), tmp_path / "cache")
    finally:
        proxy.close()
    blobs = tmp_path / "cache" / "blobs" / "sha256"
    assert [p.name for p in blobs.iterdir()] == []


def test_interrupted_download_resumes_with_range(registry, home, tmp_path):
    proxy = FaultyProxy(registry.address, cut_once=True)
    try:
        img = pull(source(proxy.address, "test/busybox:app"), tmp_path / "cache")
    finally:
        proxy.close()
    ranged = [rng for _, rng in proxy.blob_requests() if rng]
    assert len(ranged) == 4 and all(r.startswith("bytes=") and r != "bytes=0-" for r in ranged)
    assert run_in(unpack(img, tmp_path / "root"), "wc -c < /app/data").stdout.strip() == \
        "300000"


@pytest.fixture(scope="module")
def basic_registry(layout):
    reg = Registry(auth="basic", users=USERS)
    try:
        reg.push(layout, "v1", "private/busybox")
        yield reg
    finally:
        reg.close()


@pytest.mark.parametrize("style", ["auth", "username"])
def test_basic_auth_with_docker_config(basic_registry, home, tmp_path, style):
    ref = source(basic_registry.address, "private/busybox:v1")
    with pytest.raises(RegistryError, match="needs a login"):
        pull(ref, tmp_path / "cache")
    docker_config(home, basic_registry.address, "alice", "wrong-pass", style)
    with pytest.raises(RegistryError, match="credentials refused") as err:
        pull(ref, tmp_path / "cache")
    assert "wrong-pass" not in str(err.value)
    docker_config(home, f"http://{basic_registry.address}/v1/", "alice", USERS["alice"], style)
    img = pull(ref, tmp_path / "cache")
    assert run_in(unpack(img, tmp_path / "root"), "cat /data/keep").stdout == "kept"


@pytest.fixture(scope="module")
def token_registry(layout):
    reg = Registry(auth="token", users=USERS)
    try:
        reg.push(layout, "app", "private/app")
        yield reg
    finally:
        reg.close()


def test_bearer_token_flow_reuses_the_token(token_registry, home, tmp_path):
    ref = source(token_registry.address, "private/app:app")
    with pytest.raises(RegistryError, match="denied .no credentials"):
        pull(ref, tmp_path / "cache")
    docker_config(home, token_registry.address, "alice", USERS["alice"], "auth")
    issued = len(token_registry.issuer.requests)
    img = pull(ref, tmp_path / "cache")
    assert len(img.layers) == 3
    requests = token_registry.issuer.requests[issued:]
    assert requests == [("alice", ["repository:private/app:pull"])]  # once for 5 requests
    assert run_in(unpack(img, tmp_path / "root"), "cat /opq/upper").stdout == "upper"


def test_anonymous_bearer_token(layout, home, tmp_path):
    reg = Registry(auth="token", users=USERS, anonymous_pull=True)
    try:
        reg.push(layout, "v1", "public/busybox")
        img = pull(source(reg.address, "public/busybox:v1"), tmp_path / "cache")
        assert len(img.layers) == 2 and reg.issuer.requests[-1][0] is None
    finally:
        reg.close()


def test_https_registry_and_insecure_list(layout, home, tmp_path, monkeypatch):
    """127.0.0.2 is not a loopback *name*: HTTPS unless listed as insecure."""
    tls = Registry(host="127.0.0.2", tls=True)
    plain = Registry(host="127.0.0.2")
    try:
        tls.push(layout, "v1", "tls/busybox")
        plain.push(layout, "v1", "plain/busybox")
        with pytest.raises(RegistryError, match="TLS: CERTIFICATE_VERIFY_FAILED"):
            RegistryClient(tls.address).manifest("tls/busybox", "v1")
        (tmp_path / "ca.pem").write_bytes(tls.cert_pem)
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        img = pull(source(tls.address, "tls/busybox:v1"), tmp_path / "cache")
        assert len(img.layers) == 2
        with pytest.raises(RegistryError, match="TLS"):
            RegistryClient(plain.address).manifest("plain/busybox", "v1")
        monkeypatch.setenv("COOP_INSECURE_REGISTRIES", f"other:1, {plain.address}")
        body, _ = RegistryClient(plain.address).manifest("plain/busybox", "v1")
        assert json.loads(body)["layers"]
    finally:
        tls.close()
        plain.close()
