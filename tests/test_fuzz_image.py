"""Hostile registry and layout answers (IMG-1, IMG-2, SEC-4): the image parsers raise
their documented error and nothing else, whatever a registry or a tarball sends."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coop.image.auth import parse_challenge
from coop.image.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    ManifestError,
    Platform,
    image_env,
    load_config,
    media_type_of,
    parse_index,
    parse_manifest,
    select_platform,
)
from coop.image.reference import parse, parse_source
from tests.fuzzing import Recipe, fuzz

DIGEST = "sha256:" + "0123456789abcdef" * 4
TYPES = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST, "text/html", ""]
WANTED = [Platform("linux", "amd64"), Platform("linux", "arm64", "v8"),
          Platform("linux", "arm", "v7"), Platform("linux", "arm64")]
JUNK = (None, True, 0, -1, 2 ** 64, 1.5, "", "x", DIGEST, "linux", [], {})


def descriptor(r: Recipe):
    if r.chance(10):
        return r.json(JUNK)
    desc = {"mediaType": r.choice(TYPES), "digest": r.choice([DIGEST, DIGEST[:-1], "md5:00", ""]),
            "size": r.choice([0, 1234, -1, True, 2 ** 70, 1.5, "12"])}
    if r.chance(2):
        desc["platform"] = r.choice([
            {"os": "linux", "architecture": "amd64"},
            {"os": "linux", "architecture": "arm64", "variant": r.choice(["v8", "", None, "v9"])},
            {"os": "linux", "architecture": "arm", "variant": r.choice(["v6", "v7"])},
            {"os": r.json(JUNK), "architecture": r.json(JUNK)},
            r.json(JUNK),
        ])
    if r.chance(4):
        desc["annotations"] = r.json(JUNK, ("org.opencontainers.image.ref.name", "x"))
    for key in ("mediaType", "size"):
        if r.chance(12):
            desc[key] = r.json(JUNK)
    if r.chance(12):
        del desc[r.choice(list(desc))]
    return desc


def document(r: Recipe) -> bytes:
    """A manifest, index or config, mostly well formed, with junk where the recipe says."""
    doc = {"schemaVersion": r.choice([2, 1, "2"])}
    if r.chance(2):
        doc["mediaType"] = r.choice(TYPES + [5, None])
    shape = r.pick(3)
    if shape == 0:
        doc["config"] = descriptor(r)
        doc["layers"] = [descriptor(r) for _ in range(r.pick(4))] if r.pick(6) else r.json(JUNK)
    elif shape == 1:
        doc["manifests"] = [descriptor(r) for _ in range(r.pick(5))] if r.pick(6) else r.json(JUNK)
    else:
        doc["config"] = {"Env": [r.choice(["A=1", "B", "=", 5, None]) for _ in range(r.pick(3))],
                         "Cmd": r.json(JUNK)}
    if r.chance(8):
        doc[r.choice(["config", "layers", "manifests"])] = r.json(JUNK)
    body = json.dumps(doc if r.pick(10) else r.json(JUNK)).encode()
    return r.mangle(body) if r.chance(3) else body


def check_document(data: bytes, header_type: str, wanted: Platform) -> None:
    for parse_one in (lambda: media_type_of(data, header_type, "img"),
                      lambda: parse_manifest(data, "img"),
                      lambda: select_platform(parse_index(data, "img"), wanted, "img"),
                      lambda: image_env(load_config(data, "img"))):
        try:
            parse_one()
        except ManifestError as exc:
            assert "\n" not in str(exc) and str(exc).startswith("img")


@pytest.mark.slow
@fuzz()
@given(st.binary(max_size=120))
def test_fuzz_manifest_index_and_config_raise_only_manifest_error(data):
    r = Recipe(data)
    wanted, header = r.choice(WANTED), r.choice(TYPES)
    check_document(document(r), header, wanted)


def test_non_string_digest_is_a_manifest_error():
    with pytest.raises(ManifestError):
        parse_manifest(b'{"layers": [], "config": {"digest": 5, "size": 1}}', "img")


@pytest.mark.parametrize("config", [b'{"config": [1]}', b'{"config": {"Env": 5}}'])
def test_config_of_the_wrong_shape_has_no_env(config):
    assert image_env(load_config(config, "img")) == []


def test_deeply_nested_manifest_is_a_manifest_error():
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(b"[" * 100_000, "img")


REFERENCE_PARTS = ["alpine", "library/", "registry.example:5000/", "[::1]:5000/", "localhost/",
                   ":3.20", "@" + DIGEST, "@sha256:", ":", "/", "//", "..", "__", "-", "A",
                   "oci:", "docker-archive:", "dir:", "host", " ", "\n", "é", "x" * 130, "."]


@pytest.mark.slow
@fuzz()
@given(st.binary(max_size=12))
def test_fuzz_references_raise_only_value_error(data):
    r = Recipe(data)
    text = "".join(r.choice(REFERENCE_PARTS) for _ in range(len(data)))
    try:
        ref = parse(text)
    except ValueError as exc:
        assert "\n" not in str(exc).replace("\\n", "")
    else:
        assert parse(str(ref)) == ref
    try:
        parse_source(text)
    except ValueError:
        pass


CHALLENGE_PARTS = ["Bearer", "Basic", " ", "realm=", '"', "\\", ",", "=", "service", "x",
                   "scope=repository:a:pull", "\t", "é"]


@pytest.mark.slow
@fuzz()
@given(st.binary(max_size=16))
def test_fuzz_auth_challenges_raise_only_value_error(data):
    r = Recipe(data)
    header = "".join(r.choice(CHALLENGE_PARTS) for _ in range(len(data)))
    try:
        challenge = parse_challenge(header)
    except ValueError:
        assert not header.strip()
    else:
        assert challenge.scheme == challenge.scheme.lower()
        assert all(isinstance(v, str) for v in challenge.params.values())
