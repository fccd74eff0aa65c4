"""The web server's self-signed certificate (SEC-2 ``--tls``).

Created once under ``~/.coop/tls/`` (``cert.pem``, ``key.pem``, 0600) and kept,
so a phone that accepted it once keeps trusting it; its SHA-256 fingerprint is
printed so the user can check what the browser shows. Made with the
``openssl`` command when present, else with the ``cryptography`` package.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import shutil
import ssl
import subprocess
from pathlib import Path

DAYS = 3650
NAMES = ["localhost"]
ADDRESSES = ["127.0.0.1", "::1"]


class CertificateError(Exception):
    """No usable certificate; the message is one line."""


def fingerprint(cert_pem: str) -> str:
    """SHA-256 of the DER certificate, as browsers show it (``AB:CD:…``)."""
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def _with_openssl(openssl: str, cert: Path, key: Path, addresses: list[str]) -> None:
    alt = ",".join([f"DNS:{n}" for n in NAMES] + [f"IP:{a}" for a in addresses])
    cmd = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
           "-sha256", "-days", str(DAYS), "-nodes", "-subj", "/CN=coop",
           "-addext", f"subjectAltName={alt}", "-keyout", str(key), "-out", str(cert)]
    res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         preexec_fn=lambda: os.umask(0o077), timeout=60, check=False)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise CertificateError(f"openssl could not create a certificate: {last}")


def _with_cryptography(cert: Path, key: Path, addresses: list[str]) -> None:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise CertificateError("--tls needs the openssl command or the cryptography package") \
            from None
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coop")])
    now = datetime.datetime.now(datetime.UTC)
    alt = [x509.DNSName(n) for n in NAMES] + [x509.IPAddress(ipaddress.ip_address(a))
                                                for a in addresses]
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(private.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=DAYS))
                   .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                   .sign(private, hashes.SHA256()))
    key_pem = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    for path, data in ((key, key_pem), (cert, certificate.public_bytes(serialization.Encoding.PEM))):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def ensure(directory: Path, addresses: list[str] = (), openssl: str | None = "auto") -> tuple[Path, Path]:
    """(cert, key) under ``directory``, created on first use. ``addresses`` (LAN IPs) join
    the certificate's names; ``openssl=None`` forces the ``cryptography`` path."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if cert.exists() and key.exists():
        return cert, key
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    new_cert, new_key = directory / "cert.pem.new", directory / "key.pem.new"
    everything = list(dict.fromkeys([*ADDRESSES, *addresses]))
    tool = shutil.which("openssl") if openssl == "auto" else openssl
    if tool:
        _with_openssl(tool, new_cert, new_key, everything)
    else:
        _with_cryptography(new_cert, new_key, everything)
    for path in (new_cert, new_key):
        os.chmod(path, 0o600)
    os.replace(new_key, key)  # the key first: a cert without its key is never left behind
    os.replace(new_cert, cert)
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise CertificateError(f"the certificate in {cert.parent} is unusable ({exc}); "
                               "remove that directory to make a new one") from None
    return ctx
