"""Units of the web server: auth decisions, uploads, URL parameters, event mapping,
certificates, addresses, the directory browser and the page export (WEB-3…WEB-6,
SEC-2, BYD-4, BYD-8)."""

from __future__ import annotations

import re
import stat
import subprocess

import pytest

from coop import hostaddrs, page, tlscert, uploads, webapi
from coop.actors.web import attach_request
from coop.http import RequestParser
from coop.webauth import Access, Auth, same_origin, without_token
from coop.wsclient import browser_control, browser_event, refusal


def request(target="/", headers=()):
    head = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:8888\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    [req] = RequestParser().feed((head + "\r\n").encode())
    return req


# -- webauth ------------------------------------------------------------------------


def test_token_from_query_bearer_or_cookie():
    auth = Auth("full-token", "watch-token")
    assert auth.access(request("/?token=full-token")) is Access.FULL
    assert auth.access(request("/", [("Authorization", "Bearer full-token")])) is Access.FULL
    assert auth.access(request("/", [("Authorization", "bearer watch-token")])) is Access.READ_ONLY
    assert auth.access(request("/", [("Cookie", "a=b; coop_token=watch-token")])) is Access.READ_ONLY
    assert auth.access(request("/?token=watch-token", [("Cookie", "coop_token=full-token")])) \
        is Access.FULL
    for bad in [request("/"), request("/?token="), request("/?token=full-token2"),
                request("/?token=FULL-TOKEN"), request("/", [("Authorization", "Basic full-token")]),
                request("/", [("Cookie", "coop_tokenx=full-token")]),
                request("/?token=%ff%fe")]:
        assert auth.access(bad) is None
    assert Auth("only").access(request("/?token=watch-token")) is None


def test_cookie_flags_and_token_free_redirect():
    auth = Auth("t/k=n")
    req = request("/x?a=1&token=t%2Fk%3Dn&b=%20")
    assert auth.set_cookie(req, secure=False) == \
        "coop_token=t%2Fk%3Dn; Path=/; HttpOnly; SameSite=Strict"
    assert auth.set_cookie(req, secure=True).endswith("; Secure")
    assert auth.access(request("/", [("Cookie", "coop_token=t%2Fk%3Dn")])) is Access.FULL
    assert without_token(req) == "/x?a=1&b=%20"
    assert without_token(request("/?token=a&tok%65n=b")) == "/"


@pytest.mark.parametrize("origin,host,scheme,same", [
    ("http://127.0.0.1:8888", "127.0.0.1:8888", "http", True),
    ("http://LOCALHOST", "localhost:80", "http", True),
    ("https://host", "host:443", "https", True),
    ("https://127.0.0.1:8888", "127.0.0.1:8888", "http", False),
    ("http://127.0.0.1:8889", "127.0.0.1:8888", "http", False),
    ("http://evil.example:8888", "127.0.0.1:8888", "http", False),
    ("null", "127.0.0.1:8888", "http", False),
    ("http://127.0.0.1:99999", "127.0.0.1:8888", "http", False),
    ("http://127.0.0.1:8888/path", "127.0.0.1:8888", "http", False),
    ("", "127.0.0.1:8888", "http", False),
])
def test_same_origin(origin, host, scheme, same):
    head = f"GET /ws HTTP/1.1\r\nHost: {host}\r\n" + (f"Origin: {origin}\r\n" if origin else "")
    [req] = RequestParser().feed((head + "\r\n").encode())
    assert same_origin(req, scheme) is same


# -- uploads --------------------------------------------------------------------------


@pytest.mark.parametrize("given,name", [
    ("shot.png", "shot.png"), ("../../etc/passwd", "passwd"), ("..", "upload"),
    (".bashrc", "bashrc"), ("a b;c$(x).txt", "a_b_c_x_.txt"), ("C:\\Users\\me\\x.log", "x.log"),
    ("", "upload"), ("ünï.txt", "_n_.txt"), ("x" * 300 + ".tar.gz", "x" * 117 + ".gz"),
])
def test_safe_name(given, name):
    assert uploads.safe_name(given) == name


def test_store_never_follows_or_overwrites(tmp_path):
    import io

    ws = tmp_path / "ws"
    ws.mkdir()
    assert uploads.store(str(ws), "a.txt", io.BytesIO(b"one")) == "a.txt"
    assert uploads.store(str(ws), "a.txt", io.BytesIO(b"two")) == "a-2.txt"
    target = tmp_path / "target"
    (ws / ".coop-uploads" / "b.txt").symlink_to(target)
    assert uploads.store(str(ws), "b.txt", io.BytesIO(b"three")) == "b-2.txt"
    assert not target.exists()
    assert (ws / ".coop-uploads" / "a.txt").read_bytes() == b"one"
    (ws / ".coop-uploads").rename(ws / "kept")
    (ws / ".coop-uploads").symlink_to(tmp_path)
    with pytest.raises(uploads.UploadError, match="not a plain directory"):
        uploads.store(str(ws), "c.txt", io.BytesIO(b"four"))
    assert not (tmp_path / "c.txt").exists()


# -- /ws parameters and browser events --------------------------------------------------


def test_attach_request_from_query():
    assert attach_request({"session": "proj", "pty": "2", "offset": "123", "cols": "80",
                           "rows": "24"}) == {"cmd": "attach", "session": "proj", "pty": 2,
                                              "offset": 123, "cols": 80, "rows": 24}
    assert attach_request({"session": "a.b-c", "offset": ""}) == \
        {"cmd": "attach", "session": "a.b-c", "pty": 0}
    for bad in [{}, {"session": "../x"}, {"session": "Proj"}, {"session": "p", "pty": "-1"},
                {"session": "p", "pty": "1e3"}, {"session": "p", "cols": "0"},
                {"session": "p", "rows": "٣"}, {"session": "p", "offset": "99999999999999999999"}]:
        with pytest.raises(ValueError):
            attach_request(bad)


def test_browser_events_and_controls():
    assert browser_event({"event": "pty_exited", "pty": 1, "code": 3}) == \
        {"type": "exited", "pty": 1, "code": 3}
    assert browser_event({"event": "pty_restarting", "pty": 0, "delay_ms": 1000}) == \
        {"type": "restarting", "pty": 0, "delay_ms": 1000}
    assert browser_event({"event": "attached", "ok": True, "session": "s", "pty": 0,
                          "offset": 5}) == {"type": "attached", "session": "s", "pty": 0, "offset": 5}
    assert browser_event({"event": "lag", "dropped": 9, "offset": 4})["type"] == "lag"
    assert browser_event({"ok": True}) is None
    assert browser_control('{"type":"resize","cols":80,"rows":24}') == \
        {"type": "resize", "cols": 80, "rows": 24}
    for text in ["ls\r", '{"type":"input"}', "{not json", "[1]", ""]:
        assert browser_control(text) is None
    assert refusal({"ok": False, "error": "PTY_NOT_FOUND", "message": "no pty 3"}) == (4404, "no pty 3")
    assert refusal({"ok": False, "error": "INTERNAL", "message": "é" * 100})[0] == 4500
    assert len(refusal({"error": "INTERNAL", "message": "é" * 100})[1].encode()) <= 123


# -- certificate -------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["auto", None], ids=["openssl", "cryptography"])
def test_certificate_is_made_once_private_and_fingerprinted(tmp_path, tool):
    directory = tmp_path / "tls"
    cert, key = tlscert.ensure(directory, ["192.0.2.7"], openssl=tool)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    text = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-text", "-fingerprint",
                           "-sha256"], capture_output=True, text=True, check=True).stdout
    assert "IP Address:192.0.2.7" in text and "DNS:localhost" in text
    assert re.search(r"Fingerprint=([0-9A-F:]+)", text).group(1) == tlscert.fingerprint(cert.read_text())
    before = cert.read_bytes()
    assert tlscert.ensure(directory, openssl=tool) == (cert, key)
    assert cert.read_bytes() == before
    tlscert.server_context(cert, key)
    key.write_text("garbage")
    with pytest.raises(tlscert.CertificateError, match="remove that directory"):
        tlscert.server_context(cert, key)


# -- addresses, directories, export ------------------------------------------------------


def test_host_addresses_match_ip_addr():
    listed = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=False).stdout
    expected = [a for a in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)", listed) if not a.startswith("127.")]
    assert sorted(hostaddrs.ipv4_addresses()) == sorted(set(expected))


def test_list_dirs_under_home_only(tmp_path, monkeypatch):
    home = tmp_path / "home"
    for d in ("b", "A", ".git", "c/d"):
        (home / d).mkdir(parents=True)
    (home / "f").write_text("")
    (home / "out").symlink_to(tmp_path)
    (home / "loop").symlink_to(home / "loop")
    monkeypatch.setenv("HOME", str(home))
    listing = webapi.list_dirs(None)
    assert listing["dirs"] == ["A", "b", "c", ".git"] and listing["parent"] is None
    assert webapi.list_dirs("~/c")["dirs"] == ["d"]
    assert webapi.list_dirs(str(home / "c"))["parent"] == str(home)
    for outside in ["..", "/", "out", "c/../.."]:
        with pytest.raises(webapi.ApiError) as info:
            webapi.list_dirs(outside)
        assert info.value.status == 403
    with pytest.raises(webapi.ApiError) as info:
        webapi.list_dirs("f")
    assert info.value.status == 400


def test_export_www_copies_the_page_with_its_vendor_files(tmp_path):
    files = page.export_www(tmp_path / "site")
    assert tmp_path / "site" / "index.html" in files
    for name in page.REQUIRED:
        assert (tmp_path / "site" / name).read_bytes() == (page.WWW / name).read_bytes()
    assert not any(p.name.startswith(".") for p in files)
    assert all(p.is_file() for p in files)
    with pytest.raises(page.ExportError, match="incomplete"):
        page.export_www(tmp_path / "again", source=tmp_path / "empty")
    (tmp_path / "plain").write_text("")
    with pytest.raises(page.ExportError, match="not a directory"):
        page.export_www(tmp_path / "plain")
