"""OCI distribution API client on the standard library (IMG-2).

Anonymous, HTTP Basic and Bearer-token challenge flows; manifests and
indexes (OCI and Docker v2); blobs streamed into the blob cache while their
sha256 is computed, resumed with ``Range`` after a broken connection and
published only once the digest matches. HTTPS always, except for loopback
registries and those listed in ``COOP_INSECURE_REGISTRIES``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from coop.image.auth import Credentials, docker_credentials, parse_challenge
from coop.image.cache import BlobCache
from coop.image.error import ImageError
from coop.image.digest import DigestError, hex_of, of_bytes
from coop.image.manifest import (ACCEPT, INDEX_TYPES, Descriptor, Manifest, ManifestError,
                                 Platform, media_type_of, parse_index, parse_manifest,
                                 select_platform)
from coop.image.reference import Reference

LOOPBACK = ("localhost", "127.0.0.1", "[::1]", "::1")
MAX_MANIFEST_BYTES = 4 << 20
_CHUNK = 1 << 20
_REDIRECTS = 5
_TRANSIENT = (OSError, http.client.HTTPException)

BlobProgress = Callable[[int, int], None]  # (bytes done, bytes total)


class RegistryError(ImageError):
    """A registry request failed; the message is one line, without secrets."""


def _host_only(netloc: str) -> str:
    if netloc.startswith("["):
        return netloc[: netloc.index("]") + 1]
    return netloc.rsplit(":", 1)[0] if ":" in netloc else netloc


def plain_http_allowed(netloc: str, insecure: str | None = None) -> bool:
    """True for loopback hosts and ``COOP_INSECURE_REGISTRIES`` entries."""
    if _host_only(netloc) in LOOPBACK:
        return True
    listed = os.environ.get("COOP_INSECURE_REGISTRIES", "") if insecure is None else insecure
    entries = {item.strip() for item in listed.split(",") if item.strip()}
    return netloc in entries or _host_only(netloc) in entries


@dataclass(frozen=True)
class Resolved:
    """A platform manifest: its digest (the image's identity) and content."""

    digest: str
    manifest: Manifest


class RegistryClient:
    """One registry (host[:port]); tokens are cached per scope for its lifetime."""

    def __init__(self, registry: str, *, credentials: Credentials | None = None,
                 timeout: float = 60.0, retries: int = 4, backoff: float = 0.5) -> None:
        self.registry = registry
        self.credentials = credentials if credentials is not None else docker_credentials(
            registry)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        scheme = "http" if plain_http_allowed(registry) else "https"
        self.base = f"{scheme}://{registry}"
        self._tokens: dict[str, str] = {}
        self._basic = False
        self._ssl = ssl.create_default_context()

    # -- HTTP ------------------------------------------------------------

    def _open(self, url: str, headers: dict, method: str = "GET") -> http.client.HTTPResponse:
        """One request, following redirects; Authorization never leaves its host."""
        origin = urllib.parse.urlsplit(url).netloc
        for _ in range(_REDIRECTS):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme != "https" and not (
                    parts.scheme == "http" and plain_http_allowed(parts.netloc)):
                raise RegistryError(f"registry {self.registry}: refusing plain-HTTP URL "
                                    f"{parts.scheme}://{parts.netloc}")
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(parts.netloc, timeout=self.timeout,
                                                   context=self._ssl)
            else:
                conn = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
            sent = dict(headers, Connection="close", **{"User-Agent": "coop"})
            if parts.netloc != origin:
                sent.pop("Authorization", None)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            conn.request(method, path or "/", headers=sent)
            resp = conn.getresponse()
            location = resp.getheader("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                resp.read()
                resp.close()
                url = urllib.parse.urljoin(url, location)
                continue
            return resp
        raise RegistryError(f"registry {self.registry}: too many redirects "
                            f"(last to {urllib.parse.urlsplit(url).netloc})")

    def _auth_header(self, scope: str) -> dict:
        if scope in self._tokens:
            return {"Authorization": f"Bearer {self._tokens[scope]}"}
        if self._basic and self.credentials:
            return {"Authorization": self.credentials.basic_header()}
        return {}

    def _request(self, path: str, headers: dict, scope: str, what: str):
        url = self.base + path
        resp = self._open(url, {**headers, **self._auth_header(scope)})
        if resp.status != 401:
            return resp
        challenge = resp.getheader("WWW-Authenticate") or ""
        resp.read()
        resp.close()
        self._authenticate(challenge, scope, what)
        resp = self._open(url, {**headers, **self._auth_header(scope)})
        if resp.status == 401:
            resp.close()
            why = "credentials refused" if self.credentials else \
                "no credentials for it in ~/.docker/config.json"
            raise RegistryError(f"registry {self.registry}: access to {what} denied ({why})")
        return resp

    def _authenticate(self, header: str, scope: str, what: str) -> None:
        try:
            challenge = parse_challenge(header)
        except ValueError:
            raise RegistryError(f"registry {self.registry}: 401 without a usable "
                                "WWW-Authenticate challenge") from None
        if challenge.scheme == "basic":
            if not self.credentials:
                raise RegistryError(f"registry {self.registry}: {what} needs a login "
                                    "(no credentials in ~/.docker/config.json)")
            self._basic = True
            return
        if challenge.scheme != "bearer" or not challenge.params.get("realm"):
            raise RegistryError(f"registry {self.registry}: unsupported authentication "
                                f"scheme {challenge.scheme!r}")
        self._tokens[scope] = self._fetch_token(challenge.params, scope)

    def _fetch_token(self, params: dict, scope: str) -> str:
        query = {"scope": params.get("scope") or scope}
        if params.get("service"):
            query["service"] = params["service"]
        headers = {}
        if self.credentials:
            query["account"] = self.credentials.username
            headers["Authorization"] = self.credentials.basic_header()
        realm = params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        realm_host = urllib.parse.urlsplit(realm).netloc
        resp = self._open(url, headers)
        body = resp.read(1 << 20)
        resp.close()
        if resp.status != 200:
            raise RegistryError(f"registry {self.registry}: token service {realm_host} "
                                f"answered HTTP {resp.status}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"registry {self.registry}: token service {realm_host} "
                                "sent no token")
        return token

    def _with_retries(self, action, what: str):
        for attempt in range(self.retries + 1):
            try:
                return action()
            except ssl.SSLError as exc:
                raise RegistryError(f"registry {self.registry}: {what}: TLS: "
                                    f"{exc.reason or exc}") from None
            except _TRANSIENT as exc:
                if attempt == self.retries:
                    raise RegistryError(f"registry {self.registry}: {what}: "
                                        f"{exc.__class__.__name__}: {exc}") from None
                time.sleep(self.backoff * (2 ** attempt))

    # -- manifests -------------------------------------------------------

    def manifest(self, repository: str, reference: str) -> tuple[bytes, str]:
        """(body, media type) of a manifest or index, digest-checked when pinned."""
        what = f"{repository}:{reference}" if ":" not in reference else \
            f"{repository}@{reference}"

        def get():
            resp = self._request(f"/v2/{repository}/manifests/{reference}",
                                 {"Accept": ACCEPT}, _scope(repository), what)
            try:
                body = resp.read(MAX_MANIFEST_BYTES + 1)
            finally:
                resp.close()
            if resp.status >= 500:
                raise http.client.HTTPException(f"HTTP {resp.status}")
            return resp, body

        resp, body = self._with_retries(get, what)
        if resp.status == 404:
            raise RegistryError(f"registry {self.registry}: {what} not found")
        if resp.status == 429:
            raise RegistryError(f"registry {self.registry}: {what}: rate limited (HTTP 429); "
                                "try again later or log in")
        if resp.status != 200:
            raise RegistryError(f"registry {self.registry}: {what}: HTTP {resp.status}")
        if len(body) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"registry {self.registry}: {what}: manifest too large")
        pinned = reference if reference.startswith("sha256:") else \
            resp.getheader("Docker-Content-Digest")
        if pinned and pinned.startswith("sha256:") and of_bytes(body) != pinned:
            raise RegistryError(f"registry {self.registry}: {what}: manifest does not match "
                                f"its digest {pinned}")
        return body, media_type_of(body, resp.getheader("Content-Type"), what)

    def resolve(self, ref: Reference, platform: Platform) -> Resolved:
        """The platform manifest ``ref`` names (through an index if it is one)."""
        body, kind = self.manifest(ref.repository, ref.pin)
        digest = ref.digest or of_bytes(body)
        if kind in INDEX_TYPES:
            entry = select_platform(parse_index(body, str(ref)), platform, str(ref))
            body, kind = self.manifest(ref.repository, entry.digest)
            digest = entry.digest
            if kind in INDEX_TYPES:
                raise ManifestError(f"{ref}: index entry {digest} is itself an index")
        return Resolved(digest, parse_manifest(body, str(ref)))

    # -- blobs -----------------------------------------------------------

    def fetch_blob(self, repository: str, blob: Descriptor, cache: BlobCache, *,
                   progress: BlobProgress | None = None, refetch: bool = False) -> Path:
        """Download ``blob`` into ``cache`` (or find it there); return its path."""
        if not refetch and cache.has(blob.digest):
            return cache.path(blob.digest)
        with cache.downloading(blob.digest) as part:
            if not refetch and cache.has(blob.digest):
                return cache.path(blob.digest)
            if refetch:
                part.truncate(0)
            self._with_retries(lambda: self._download(repository, blob, part, progress),
                               f"blob {blob.digest}")
            got = _hash_file(part)
            if got != hex_of(blob.digest):
                part.truncate(0)
                cache.discard(blob.digest)
                raise DigestError(f"registry {self.registry}: blob {blob.digest} does not "
                                  "match its digest; refused")
            return cache.commit(part, blob.digest)

    def _download(self, repository: str, blob: Descriptor, part,
                  progress: BlobProgress | None) -> None:
        """Append the rest of ``blob`` to ``part``; a short read raises (and is resumed)."""
        have = part.seek(0, os.SEEK_END)
        if have > blob.size:
            part.truncate(0)
            have = 0
        if have == blob.size:
            return
        headers = {"Range": f"bytes={have}-"} if have else {}
        what = f"blob {blob.digest}"
        resp = self._request(f"/v2/{repository}/blobs/{blob.digest}", headers,
                             _scope(repository), what)
        try:
            if resp.status == 200 and have:
                part.truncate(0)
                part.seek(0)
                have = 0
            elif resp.status == 206:
                start = _range_start(resp.getheader("Content-Range"))
                if start != have:
                    raise RegistryError(f"registry {self.registry}: {what}: bad Content-Range")
            elif resp.status == 416:
                part.truncate(0)
                raise http.client.HTTPException("server refused to resume; starting over")
            elif resp.status == 404:
                raise RegistryError(f"registry {self.registry}: {what} not found")
            elif resp.status >= 500:
                raise http.client.HTTPException(f"HTTP {resp.status}")
            elif resp.status != 200:
                raise RegistryError(f"registry {self.registry}: {what}: HTTP {resp.status}")
            while have < blob.size:
                chunk = resp.read(min(_CHUNK, blob.size - have))
                if not chunk:
                    raise http.client.IncompleteRead(b"", blob.size - have)
                part.write(chunk)
                have += len(chunk)
                if progress:
                    progress(have, blob.size)
        finally:
            resp.close()


def _scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def _range_start(header: str | None) -> int | None:
    try:
        unit, _, spec = (header or "").partition(" ")
        return int(spec.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None


def _hash_file(handle) -> str:
    handle.flush()
    handle.seek(0)
    digest = hashlib.sha256()
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()

