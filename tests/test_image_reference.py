"""IMG-1/IMG-2 sans-I/O parts: references, sources, platforms, challenges, credentials."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coop.image.auth import Credentials, docker_credentials, parse_challenge
from coop.image.manifest import (Descriptor, ManifestError, Platform, host_platform,
                                 media_type_of, select_platform)
from coop.image.reference import Reference, parse, parse_source
from coop.image.registry import plain_http_allowed

HEX = "a" * 64


@pytest.mark.parametrize("text, expected", [
    ("alpine", ("docker.io", "library/alpine", "latest", None)),
    ("alpine:3.20", ("docker.io", "library/alpine", "3.20", None)),
    ("node:22-alpine", ("docker.io", "library/node", "22-alpine", None)),
    ("org/img", ("docker.io", "org/img", "latest", None)),
    ("docker.io/alpine", ("docker.io", "library/alpine", "latest", None)),
    ("index.docker.io/library/x:1", ("docker.io", "library/x", "1", None)),
    ("ghcr.io/org/img:tag", ("ghcr.io", "org/img", "tag", None)),
    ("localhost/a", ("localhost", "a", "latest", None)),
    ("localhost:5000/a/b:t", ("localhost:5000", "a/b", "t", None)),
    ("registry:5000/name@sha256:" + HEX, ("registry:5000", "name", None, "sha256:" + HEX)),
    ("host.example:443/a/b/c:v1@sha256:" + HEX, ("host.example:443", "a/b/c", "v1",
                                                  "sha256:" + HEX)),
    ("[::1]:5000/img", ("[::1]:5000", "img", "latest", None)),
    ("a_b/c__d/e-f.g:T_1.x-2", ("docker.io", "a_b/c__d/e-f.g", "T_1.x-2", None)),
])
def test_parse(text, expected):
    ref = parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected


def test_pin_and_api_host():
    assert parse("alpine").api_host == "registry-1.docker.io"
    assert parse("ghcr.io/a/b").api_host == "ghcr.io"
    assert parse("a:1@sha256:" + HEX).pin == "sha256:" + HEX
    assert parse("a:1").pin == "1"


@pytest.mark.parametrize("text, reason", [
    ("", "empty"), (" alpine", "spaces"), ("Alpine", "invalid name component"),
    ("a//b", "invalid name component ''"), ("a:", "invalid tag"), ("a:-x", "invalid tag"),
    ("a:" + "x" * 129, "invalid tag"), ("a@sha256:abc", "digest must be"),
    ("a@md5:" + HEX, "digest must be"), ("bad_host.x:99999999/a", "invalid registry host"),
    ("ex.com:port/a", "invalid registry host"), ("a/" * 130 + "b", "longer than 255"),
    ("a/b-", "invalid name component"), ("a b", "invalid name component"),
])
def test_parse_errors(text, reason):
    with pytest.raises(ValueError, match=reason) as err:
        parse(text)
    assert "\n" not in str(err.value)


# no "." in components: in a first component it would mark a registry host
_component = st.from_regex(r"[a-z0-9]{1,5}(?:[_-][a-z0-9]{1,5}){0,2}", fullmatch=True)
_references = st.builds(
    lambda host, path, tag, digest: (f"{host}/" if host else "") + "/".join(path)
    + (f":{tag}" if tag else "") + (f"@sha256:{digest}" if digest else ""),
    st.one_of(st.none(), st.from_regex(r"[a-z]{1,8}\.[a-z]{2,5}(?::[0-9]{1,5})?",
                                       fullmatch=True), st.just("localhost:5000")),
    st.lists(_component, min_size=1, max_size=3),
    st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)),
    st.one_of(st.none(), st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
)


@given(_references)
def test_parse_roundtrips(text):
    ref = parse(text)
    assert parse(str(ref)) == ref
    assert ref.tag or ref.digest


@given(st.text(max_size=40))
def test_parse_never_crashes(text):
    try:
        ref = parse(text)
    except ValueError:
        return
    assert isinstance(ref, Reference)


@pytest.mark.parametrize("image, kind, path, tag", [
    ("host", "host", None, None),
    ("oci:/srv/layout", "oci", "/srv/layout", None),
    ("oci:/srv/layout:v2", "oci", "/srv/layout", "v2"),
    ("oci:./rel:dir:tag", "oci", "./rel:dir", "tag"),
    ("docker-archive:/tmp/img.tar", "docker-archive", "/tmp/img.tar", None),
    ("dir:/srv/root", "dir", "/srv/root", None),
])
def test_parse_source_local_forms(image, kind, path, tag):
    source = parse_source(image)
    assert (source.kind, source.path, source.tag) == (kind, path, tag)
    assert str(source) == image


def test_parse_source_registry_and_errors():
    source = parse_source("alpine:3.20")
    assert source.kind == "registry" and source.reference.repository == "library/alpine"
    for bad, reason in (("oci:", "needs a path"), ("dir:", "needs a path"),
                        ("oci:/x:bad tag", "invalid tag"), ("HOST", "invalid name")):
        with pytest.raises(ValueError, match=reason):
            parse_source(bad)


def test_host_platform_mapping():
    assert host_platform("x86_64") == Platform("linux", "amd64")
    assert host_platform("aarch64") == Platform("linux", "arm64", "v8")
    assert host_platform("armv7l") == Platform("linux", "arm", "v7")
    assert host_platform("riscv64") == Platform("linux", "riscv64")


def _entry(name, os_="linux", arch="amd64", variant=None):
    return Descriptor("m", "sha256:" + name * 64, 1, Platform(os_, arch, variant))


def test_select_platform_variants():
    entries = [_entry("1", arch="arm", variant="v6"), _entry("2", arch="arm", variant="v7"),
               _entry("3", arch="arm64"), _entry("4", arch="arm64", variant="v8"),
               _entry("5", os_="windows"), _entry("6", os_="unknown", arch="unknown")]
    assert select_platform(entries, Platform("linux", "arm", "v7"), "x").digest[7] == "2"
    assert select_platform(entries, Platform("linux", "arm64", "v8"), "x").digest[7] == "4"
    assert select_platform(entries[:3], Platform("linux", "arm64", "v8"), "x").digest[7] == "3"
    assert select_platform(entries[3:4], Platform("linux", "arm64"), "x").digest[7] == "4"
    with pytest.raises(ManifestError, match=r"no image for linux/amd64 \(offered: linux/arm/v6"):
        select_platform(entries[:4], Platform("linux", "amd64"), "x")


def test_media_type_detection():
    assert media_type_of(b'{"manifests": []}', None, "x").endswith("index.v1+json")
    assert media_type_of(b'{"layers": []}', None, "x").endswith("manifest.v1+json")
    with pytest.raises(ManifestError, match="unsupported manifest type"):
        media_type_of(b'{"schemaVersion": 1, "fsLayers": []}', None, "x")
    with pytest.raises(ManifestError, match="not valid JSON"):
        media_type_of(b"\xff", None, "x")


def test_parse_challenge():
    c = parse_challenge('Bearer realm="https://auth.example/token",service="reg",'
                        'scope="repository:a/b:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token", "service": "reg",
                        "scope": "repository:a/b:pull,push"}
    assert parse_challenge('Basic realm="x \\"y\\""').params == {"realm": 'x "y"'}
    assert parse_challenge("Basic").params == {}
    with pytest.raises(ValueError):
        parse_challenge("   ")


def test_plain_http_rules():
    assert plain_http_allowed("localhost:5000") and plain_http_allowed("127.0.0.1")
    assert plain_http_allowed("[::1]:80")
    assert not plain_http_allowed("127.0.0.2:5000", insecure="")
    assert not plain_http_allowed("registry.example", insecure="")
    assert plain_http_allowed("registry.example:5000", insecure="a, registry.example:5000")
    assert plain_http_allowed("reg.lan:5000", insecure="reg.lan")
    assert not plain_http_allowed("reg.lan:5000", insecure="reg.lan:6000")


def test_docker_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    assert docker_credentials("r.example") is None
    (tmp_path / ".docker").mkdir()
    config = tmp_path / ".docker" / "config.json"
    config.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw:with:colons").decode()},
        "r.example:5000": {"username": "u", "password": "p"},
        "https://q.example/v2/": {"auth": base64.b64encode(b"q:qp").decode()},
        "broken.example": {"auth": "!!!"},
    }}))
    assert docker_credentials("registry-1.docker.io") == Credentials("hub", "pw:with:colons")
    assert docker_credentials("r.example:5000") == Credentials("u", "p")
    assert docker_credentials("q.example") == Credentials("q", "qp")
    assert docker_credentials("broken.example") is None
    assert "pw:with" not in repr(docker_credentials("docker.io"))
    config.write_text("not json")
    assert docker_credentials("r.example:5000") is None
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "config.json").write_text(json.dumps(
        {"auths": {"e.example": {"username": "e", "password": "ep"}}}))
    assert docker_credentials("e.example") == Credentials("e", "ep")
