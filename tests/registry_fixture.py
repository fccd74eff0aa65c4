"""Real OCI registries for tests: Debian's ``docker-registry`` on loopback.

Three flavours: anonymous, htpasswd (HTTP Basic) and token auth, whose
Bearer tokens come from a small issuer here that signs RS256 JWTs with a
self-signed certificate the registry trusts. A fault-injecting HTTP proxy
sits in front when a test needs corrupted or cut blob downloads. Images are
pushed with ``skopeo`` from OCI layouts made by ``tests.image_fixture``.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import http.server
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

REGISTRY_BIN = "/usr/bin/docker-registry"
SERVICE = "coop-test-registry"
ISSUER = "coop-test-issuer"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def self_signed(common_name: str, ip: str | None = None) -> tuple[bytes, bytes]:
    """(cert PEM, key PEM) of a fresh self-signed RSA certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    if ip:
        import ipaddress
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False)
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def _answers(host: str, port: int) -> bool:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=1)
        conn.request("GET", "/v2/")
        conn.getresponse().read()
        conn.close()
        return True
    except OSError:
        return False


class _Server:
    """A ThreadingHTTPServer on loopback, run in a thread, stopped on ``close``."""

    def __init__(self, handler) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class TokenIssuer(_Server):
    """Docker token-auth endpoint: grants the requested actions to known users,
    ``pull`` only to anonymous callers when ``anonymous_pull``."""

    def __init__(self, users: dict[str, str], anonymous_pull: bool = False) -> None:
        self.users = users
        self.anonymous_pull = anonymous_pull
        self.cert_pem, key_pem = self_signed("coop test token issuer")
        self.key = serialization.load_pem_private_key(key_pem, None)
        self.requests: list[tuple[str | None, list[str]]] = []
        super().__init__(_TokenHandler)

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def sign(self, account: str | None, access: list[dict]) -> str:
        der = x509.load_pem_x509_certificate(self.cert_pem).public_bytes(
            serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": account or "", "aud": SERVICE, "exp": now + 600,
                  "nbf": now - 60, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}." \
                        f"{_b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        issuer: TokenIssuer = self.server.owner
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        account = None
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if issuer.users.get(user) != password:
                self.send_response(401)
                self.end_headers()
                return
            account = user
        scopes = query.get("scope", [])
        issuer.requests.append((account, scopes))
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":", 2) if scope.count(":") >= 2 else ("", "", "")
            granted = actions.split(",") if account else (
                ["pull"] if issuer.anonymous_pull and "pull" in actions.split(",") else [])
            if kind == "repository" and granted:
                access.append({"type": kind, "name": name, "actions": granted})
        token = issuer.sign(account, access)
        body = json.dumps({"token": token, "expires_in": 600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Registry:
    """``docker-registry serve`` with storage in a temp dir; ``auth`` None/basic/token."""

    def __init__(self, *, auth: str | None = None, users: dict[str, str] | None = None,
                 host: str = "127.0.0.1", tls: bool = False, anonymous_pull: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="coop-registry-"))
        self.users = users or {}
        self.host = host
        self.port = free_port(host)
        self.issuer = None
        self.cert_pem = None
        config = {"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
                  "storage": {"filesystem": {"rootdirectory": str(self.dir / "data")},
                              "delete": {"enabled": True}},
                  "http": {"addr": f"{host}:{self.port}"}}
        if tls:
            self.cert_pem, key_pem = self_signed(host, ip=host)
            (self.dir / "tls.crt").write_bytes(self.cert_pem)
            (self.dir / "tls.key").write_bytes(key_pem)
            config["http"]["tls"] = {"certificate": str(self.dir / "tls.crt"),
                                     "key": str(self.dir / "tls.key")}
        if auth == "basic":
            lines = [subprocess.run(["htpasswd", "-Bbn", user, password], check=True,
                                    capture_output=True, text=True).stdout.strip()
                     for user, password in self.users.items()]
            (self.dir / "htpasswd").write_text("\n".join(lines) + "\n")
            config["auth"] = {"htpasswd": {"realm": "coop-test",
                                           "path": str(self.dir / "htpasswd")}}
        elif auth == "token":
            self.issuer = TokenIssuer(self.users, anonymous_pull)
            (self.dir / "issuer.pem").write_bytes(self.issuer.cert_pem)
            config["auth"] = {"token": {"realm": self.issuer.realm, "service": SERVICE,
                                        "issuer": ISSUER,
                                        "rootcertbundle": str(self.dir / "issuer.pem")}}
        (self.dir / "config.yml").write_text(json.dumps(config))  # JSON is valid YAML
        self.log = open(self.dir / "registry.log", "wb")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(self.dir / "config.yml")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_until(self._up, 15, "docker-registry to listen")
        except BaseException:
            self.close()
            raise

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError("docker-registry exited: " +
                               (self.dir / "registry.log").read_text()[-500:])
        with socket.socket() as sock:
            return sock.connect_ex((self.host, self.port)) == 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def push(self, layout: Path, tag: str, repo: str, *, fmt: str | None = None) -> None:
        """skopeo copy an OCI layout tag (all platforms) to ``repo:tag`` here."""
        argv = ["skopeo", "--insecure-policy", "copy", "--all", "-q",
                "--dest-tls-verify=false"]
        if self.users:
            user, password = next(iter(self.users.items()))
            argv.append(f"--dest-creds={user}:{password}")
        if fmt:
            argv.append(f"--format={fmt}")
        argv += [f"oci:{layout}:{tag}", f"docker://{self.address}/{repo}:{tag}"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"skopeo push failed: {done.stderr.strip()}")

    def blob_file(self, digest: str) -> Path:
        hex_ = digest.split(":", 1)[1]
        return self.dir / "data/docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if self.issuer:
            self.issuer.close()
        subprocess.run(["rm", "-rf", "--", str(self.dir)], check=False)


class FaultyProxy(_Server):
    """HTTP proxy in front of a registry: ``corrupt`` flips a byte of every blob
    body; ``cut_once`` sends half of each blob's first full download, then hangs up."""

    def __init__(self, upstream: str, *, corrupt: bool = False, cut_once: bool = False):
        self.upstream = upstream
        self.corrupt = corrupt
        self.cut_once = cut_once
        self.cut: set[str] = set()
        self.log: list[tuple[str, str | None]] = []  # (path, Range header)
        super().__init__(_ProxyHandler)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def blob_requests(self) -> list[tuple[str, str | None]]:
        return [entry for entry in self.log if "/blobs/" in entry[0]]


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    FORWARD = ("Authorization", "Accept", "Range")
    BACK = ("Content-Type", "Docker-Content-Digest", "WWW-Authenticate", "Content-Range",
            "Location", "Docker-Distribution-Api-Version")

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        proxy: FaultyProxy = self.server.owner
        proxy.log.append((self.path, self.headers.get("Range")))
        conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
        conn.request("GET", self.path, headers={k: self.headers[k] for k in self.FORWARD
                                                if self.headers.get(k)})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        blob = "/blobs/sha256:" in self.path and resp.status in (200, 206)
        if blob and proxy.corrupt and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        self.send_response(resp.status)
        for key in self.BACK:
            if resp.getheader(key):
                self.send_header(key, resp.getheader(key))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if blob and proxy.cut_once and resp.status == 200 and self.path not in proxy.cut:
            proxy.cut.add(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)
