"""coop.http: request parsing under hostile input (WEB-2, SEC-4), responses and SEC-2 headers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coop.http import (
    CONTINUE_RESPONSE,
    Continue,
    ParseError,
    Request,
    RequestParser,
    etag_for,
    not_modified,
    render_response,
    safe_join,
    security_headers,
)
from tests.fuzzing import fuzz

GET = b"GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n"


def parse(data: bytes, **limits) -> list:
    return RequestParser(**limits).feed(data)


def parse_bytewise(data: bytes, **limits) -> list:
    parser = RequestParser(**limits)
    return [event for i in range(len(data)) for event in parser.feed(data[i : i + 1])]


def summary(events: list) -> list:
    """Comparable form of events (ParseError and Continue have no value equality)."""
    return [
        (e.status, e.message)
        if isinstance(e, ParseError)
        else e
        if isinstance(e, Request)
        else "continue"
        for e in events
    ]


def only_error(data: bytes, **limits) -> ParseError:
    events = parse(data, **limits)
    assert len(events) == 1 and isinstance(events[0], ParseError), events
    return events[0]


def request(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode("latin-1") + body


# -- valid requests ------------------------------------------------------------------


def test_simple_get():
    [req] = parse(GET)
    assert (req.method, req.target, req.version) == ("GET", "/index.html", "HTTP/1.1")
    assert req.headers.get("HOST") == "localhost"
    assert req.body == b"" and req.keep_alive and not req.wants_upgrade_websocket


def test_path_query_and_multi_headers():
    [req] = parse(
        request(
            "GET /api/sessions/a%20b%2Fc?token=x%2By&flag&token=last HTTP/1.1\n"
            "Host: h\nX-Multi: 1\nx-multi: 2\nAccept:  text/html \t\n\n"
        )
    )
    assert req.raw_path == "/api/sessions/a%20b%2Fc"
    assert req.path == "/api/sessions/a b/c"
    assert req.query == {"token": "last", "flag": ""}
    assert req.headers.get_all("X-MULTI") == ["1", "2"]
    assert req.headers.get("accept") == "text/html"  # optional whitespace stripped
    assert "x-multi" in req.headers and "absent" not in req.headers


def test_double_slash_origin_form_is_a_path_not_a_host():
    [req] = parse(request("GET //evil.example/x?q=1 HTTP/1.1\nHost: h\n\n"))
    assert req.raw_path == "//evil.example/x" and req.query == {"q": "1"}


def test_absolute_form_target():
    [req] = parse(request("GET http://h:8888/a/b?c=d HTTP/1.1\nHost: h:8888\n\n"))
    assert req.raw_path == "/a/b" and req.query == {"c": "d"}


def test_content_length_body_split_over_feeds():
    parser = RequestParser()
    head = request("POST /api/sessions HTTP/1.1\nHost: h\nContent-Length: 11\n\n")
    assert parser.feed(head + b"hello") == []
    assert not parser.idle
    [req] = parser.feed(b" world")
    assert req.body == b"hello world" and parser.idle


def test_chunked_body_with_extensions_and_trailers():
    data = request(
        "POST /x HTTP/1.1\nHost: h\nTransfer-Encoding: Chunked\n\n"
        "5;name=value\nhello\n1\n \nA\n0123456789\n0\nX-Check: yes\nX-Other: 2\n\n"
    )
    [req] = parse(data)
    assert req.body == b"hello 0123456789"
    assert req.trailers.get("x-check") == "yes" and len(req.trailers) == 2
    assert "x-check" not in req.headers


def test_pipelined_requests_in_one_feed():
    second = request("POST /b HTTP/1.1\nHost: h\nContent-Length: 2\n\n", b"hi")
    events = parse(GET + second + GET)
    assert [e.target for e in events] == ["/index.html", "/b", "/index.html"]
    assert events[1].body == b"hi"


def test_leading_empty_lines_are_ignored():
    assert summary(parse(b"\r\n\r\n" + GET)) == summary(parse(GET))


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        ("GET / HTTP/1.1\nHost: h\n\n", True),
        ("GET / HTTP/1.1\nHost: h\nConnection: close\n\n", False),
        ("GET / HTTP/1.1\nHost: h\nConnection: foo, Close\n\n", False),
        ("GET / HTTP/1.0\n\n", False),
        ("GET / HTTP/1.0\nConnection: keep-alive\n\n", True),
    ],
)
def test_keep_alive_semantics(head, keep_alive):
    parser = RequestParser()
    req, *rest = parser.feed(request(head) + GET)  # a closing request stops the parser
    assert req.keep_alive is keep_alive
    assert len(rest) == keep_alive and parser.stopped is not keep_alive
    assert parser.leftover == (b"" if keep_alive else GET)


def test_minor_version_above_1_is_served_as_1_1():
    [req] = parse(request("GET / HTTP/1.7\nHost: h\n\n"))
    assert req.version == "HTTP/1.1"


def test_upgrade_request_stops_parser_and_keeps_following_bytes():
    parser = RequestParser()
    head = request(
        "GET /ws HTTP/1.1\nHost: h\nUpgrade: WebSocket\nConnection: keep-alive, Upgrade\n\n"
    )
    [req] = parser.feed(head + b"\x81\x85frame")
    assert req.wants_upgrade_websocket and parser.stopped
    assert parser.leftover == b"\x81\x85frame"
    assert parser.feed(b"more") == [] and parser.leftover == b"\x81\x85frame"


def test_expect_100_continue():
    parser = RequestParser()
    head = request("PUT /f HTTP/1.1\nHost: h\nExpect: 100-continue\nContent-Length: 3\n\n")
    events = parser.feed(head)
    assert [type(e) for e in events] == [Continue]
    [req] = parser.feed(b"abc")
    assert req.body == b"abc"
    assert CONTINUE_RESPONSE == b"HTTP/1.1 100 Continue\r\n\r\n"
    no_body = request("GET / HTTP/1.1\nHost: h\nExpect: 100-continue\n\n")
    assert [type(e) for e in parse(no_body)] == [Request]


# -- hostile requests --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "status"),
    [
        # request smuggling: every ambiguous framing is refused
        (
            request("POST / HTTP/1.1\nHost: h\nContent-Length: 3\nTransfer-Encoding: chunked\n\n"),
            400,
        ),
        (request("POST / HTTP/1.1\nHost: h\nContent-Length: 3\nContent-Length: 4\n\n"), 400),
        (request("POST / HTTP/1.1\nHost: h\nContent-Length: 3\nContent-Length: 3\n\n"), 400),
        (request("POST / HTTP/1.1\nHost: h\nContent-Length: 3, 3\n\n"), 400),
        (request("POST / HTTP/1.1\nHost: h\nContent-Length: +3\n\n"), 400),
        (request("POST / HTTP/1.1\nHost: h\nContent-Length: -1\n\n"), 400),
        (request("POST / HTTP/1.1\nHost: h\nContent-Length: 0x10\n\n"), 400),
        (request("POST / HTTP/1.1\nHost: h\nContent-Length: 1\u00b2\n\n"), 400),
        (request("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked, chunked\n\n"), 400),
        (
            request(
                "POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\nTransfer-Encoding: chunked\n\n"
            ),
            400,
        ),
        (request("POST / HTTP/1.1\nHost: h\nTransfer-Encoding:\n\n"), 400),
        (request("POST / HTTP/1.0\nTransfer-Encoding: chunked\n\n"), 400),
        (request("POST / HTTP/1.1\nHost: h\nTransfer-Encoding : chunked\n\n"), 400),
        (request("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: gzip\n\n"), 501),
        (request("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: gzip, chunked\n\n"), 501),
        (request("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: xchunked\n\n"), 501),
        # malformed lines and fields
        (request("GET / HTTP/1.1\nHost: h\nX-A: 1\n folded\n\n"), 400),
        (request("GET / HTTP/1.1\nHost: h\nX-A: a\rb\n\n"), 400),
        (b"GET / HTTP/1.1\nHost: h\n\n", 400),  # bare LF
        (request("GET / HTTP/1.1\nHost: h\nX-A: a\0b\n\n"), 400),
        (request("GET /a\0b HTTP/1.1\nHost: h\n\n"), 400),
        (request("GET /a#frag HTTP/1.1\nHost: h\n\n"), 400),
        (request("G(T / HTTP/1.1\nHost: h\n\n"), 400),
        (request("GET / HTTP/1.1\nHost: h\nBad Name: v\n\n"), 400),
        (request("GET / HTTP/1.1\nHost: h\n: empty name\n\n"), 400),
        (request("GET / HTTP/1.1\nHost: h\nNoColon\n\n"), 400),
        (request("GET  / HTTP/1.1\nHost: h\n\n"), 400),
        (request("GET / HTTP/1.1 \nHost: h\n\n"), 400),
        (request("GET /\nHost: h\n\n"), 400),
        (request("GET relative HTTP/1.1\nHost: h\n\n"), 400),
        (request("GET / http/1.1\nHost: h\n\n"), 400),
        (request("GET / HTTP/1.10\nHost: h\n\n"), 400),
        (request("GET / HTTP/1.1\n\n"), 400),  # no Host
        (request("GET / HTTP/1.1\nHost: a\nHost: b\n\n"), 400),
        (request("GET / HTTP/2.0\nHost: h\n\n"), 505),
        (request("GET / HTTP/0.9\nHost: h\n\n"), 505),
        # chunked framing
        (request("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\nzz\n"), 400),
        (request("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n-1\n"), 400),
        (request("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n0x5\n"), 400),
        (request("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n 5\n"), 400),
        (request("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n\n"), 400),
        (
            request("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n11111111111111111\n"),
            400,
        ),
        (request("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n3\nabcd\n"), 400),
        (request("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n3;\0\n"), 400),
        (
            request(
                "POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n1\na\n0\nBad Trailer: x\n\n"
            ),
            400,
        ),
    ],
)
def test_rejected_requests(data, status):
    assert only_error(data).status == status
    assert summary(parse_bytewise(data)) == summary(parse(data))


def test_header_block_over_16k_is_431_before_it_ends():
    filler = "".join(f"X-Fill-{i}: {'v' * 100}\n" for i in range(200))
    parser = RequestParser()
    events = parser.feed(request("GET / HTTP/1.1\nHost: h\n" + filler))  # no blank line yet
    assert summary(events) == [(431, "header block too large")]
    assert parser.stopped and parser.feed(b"\r\n\r\n") == []


def test_one_huge_header_is_431_and_the_limit_is_exact():
    head = "GET / HTTP/1.1\nHost: h\nX-Big: {}\n\n"
    fixed = len(request(head.format("")))
    assert isinstance(parse(request(head.format("v" * (16384 - fixed))))[0], Request)
    assert only_error(request(head.format("v" * (16385 - fixed)))).status == 431
    assert only_error(request(head.format("v" * 100_000))).status == 431


def test_long_target_is_414_without_waiting_for_the_line_end():
    assert only_error(request(f"GET /{'a' * 9000} HTTP/1.1\nHost: h\n\n")).status == 414
    parser = RequestParser()
    assert summary(parser.feed(b"GET /" + b"a" * 8300)) == [(414, "request line too long")]
    [req] = parse(request(f"GET /{'a' * 8000} HTTP/1.1\nHost: h\n\n"))
    assert len(req.target) == 8001


def test_body_over_1mib_is_413_before_it_arrives():
    head = request(f"POST / HTTP/1.1\nHost: h\nContent-Length: {(1 << 20) + 1}\n\n")
    assert only_error(head).status == 413
    assert parse(request(f"POST / HTTP/1.1\nHost: h\nContent-Length: {1 << 20}\n\n")) == []
    parser = RequestParser()
    [req] = parser.feed(
        request(f"POST / HTTP/1.1\nHost: h\nContent-Length: {1 << 20}\n\n") + b"x" * (1 << 20)
    )
    assert len(req.body) == 1 << 20


def test_chunked_body_over_limit_is_413():
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    head = request("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n")
    parser = RequestParser(max_body=4096)
    events = parser.feed(head + chunk * 4)
    assert events == []
    assert summary(parser.feed(chunk)) == [(413, "request body too large")]
    assert summary(parse(head + b"ffffffffffff\r\n")) == [(413, "request body too large")]


def test_trailers_count_against_the_header_limit():
    head = request("POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n0\n")
    trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
    assert only_error(head + trailers).status == 431


def test_after_an_error_everything_is_ignored():
    parser = RequestParser()
    assert isinstance(parser.feed(b"BAD\r\n\r\n")[0], ParseError)
    assert parser.stopped and parser.feed(GET) == [] and parser.leftover == b""


def test_idle_tracks_partial_requests():
    parser = RequestParser()
    assert parser.idle
    parser.feed(b"GET / HT")
    assert not parser.idle
    parser.feed(b"TP/1.1\r\nHost: h\r\n\r\n")
    assert parser.idle


def test_bytewise_feeding_matches_whole_feeding_for_valid_streams():
    stream = (
        GET
        + request("POST /b HTTP/1.1\nHost: h\nContent-Length: 5\n\n", b"12345")
        + request("POST /c HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\nExpect: 100-continue\n\n")
        + b"2\r\nab\r\n0\r\nT: 1\r\n\r\n"
        + request("GET /d HTTP/1.1\nHost: h\nConnection: close\n\n")
    )
    whole = parse(stream)
    assert [type(e) for e in whole] == [Request, Request, Continue, Request, Request]
    assert summary(parse_bytewise(stream)) == summary(whole)


# -- fuzzing ----------------------------------------------------------------------------

VALID = [
    GET,
    request("POST /api/sessions HTTP/1.1\nHost: h\nContent-Length: 4\n\n", b"abcd"),
    request("POST /x HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n3\nabc\n0\nT: v\n\n"),
    request("GET /ws HTTP/1.1\nHost: h\nUpgrade: websocket\nConnection: Upgrade\n\n"),
    request("GET / HTTP/1.0\nConnection: keep-alive\n\n"),
]
FUZZ = fuzz()


def check_events(events: list) -> None:
    assert all(isinstance(e, Request | Continue | ParseError) for e in events)
    assert sum(isinstance(e, ParseError) for e in events) <= 1
    for event in events:
        if isinstance(event, ParseError):
            assert event.status in (400, 413, 414, 431, 501, 505)


INSERTS = [b"\r", b"\n", b"\0", b" ", b":", b";", b"%", b"\xff"]


def mutated_request(recipe: bytes) -> bytes:
    """Valid requests edited by a recipe (one hypothesis draw keeps 10,000 examples fast):
    byte 0 picks up to three requests, then each 3-byte group is one edit: insert a
    delimiter, delete, replace a byte, or duplicate a slice."""
    if not recipe:
        return VALID[0]
    picks = [recipe[0] % 6, recipe[0] // 6 % 6, recipe[0] // 36 % 6]
    data = bytearray(b"".join(VALID[i] for i in picks if i < len(VALID)) or VALID[0])
    for i in range(1, len(recipe) - 2, 3):
        kind, where, value = recipe[i] % 4, recipe[i] // 4 * 256 + recipe[i + 1], recipe[i + 2]
        at = where % (len(data) + 1)
        if kind == 0:
            data[at:at] = INSERTS[value % len(INSERTS)]
        elif kind == 1:
            del data[at : at + value % 8 + 1]
        elif kind == 2 and at < len(data):
            data[at] = value
        else:
            data[at:at] = data[at : at + value % 40 + 1]
    return bytes(data)


@pytest.mark.slow
@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_only_yield_events(data):
    split = data[0] if data else 0
    parser = RequestParser()
    check_events(parser.feed(data[:split]) + parser.feed(data[split:]))


@pytest.mark.slow
@FUZZ
@given(st.binary(min_size=1, max_size=13))
def test_fuzz_mutated_requests_split_anywhere_parse_the_same(recipe):
    data = mutated_request(recipe[1:])
    split = recipe[0] * len(data) // 255
    parser = RequestParser(max_header=512, max_body=64)
    events = parser.feed(data[:split]) + parser.feed(data[split:])
    check_events(events)
    assert summary(events) == summary(RequestParser(max_header=512, max_body=64).feed(data))


# -- responses -------------------------------------------------------------------------


def test_render_response_sets_content_length_and_reason():
    data = render_response(200, [("Content-Type", "text/plain")], b"hello")
    assert data == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    assert render_response(404).startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert render_response(599).startswith(b"HTTP/1.1 599 Unknown\r\n")


def test_head_only_keeps_length_drops_body():
    data = render_response(200, [], b"x" * 42, head_only=True)
    assert data.endswith(b"Content-Length: 42\r\n\r\n")


@pytest.mark.parametrize("status", [101, 204, 304])
def test_bodiless_statuses_have_no_length_or_body(status):
    data = render_response(status, [("ETag", '"1"')], b"ignored")
    assert b"Content-Length" not in data and data.endswith(b"\r\n\r\n")


def test_date_header_from_injected_clock():
    data = render_response(200, date=784111777)
    assert b"\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n" in data


@pytest.mark.parametrize(
    "header",
    [
        ("X-A", "v\r\nSet-Cookie: evil"),
        ("X-A", "v\nx"),
        ("X-A", "v\0"),
        ("Bad Name", "v"),
        ("X:A", "v"),
        ("Content-Length", "5"),
    ],
)
def test_render_refuses_response_splitting(header):
    with pytest.raises(ValueError):
        render_response(200, [header])


def test_security_headers():
    api = dict(security_headers(True))
    csp = api["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp and "unsafe-eval" not in csp
    assert "connect-src 'self'" in csp
    assert api["X-Content-Type-Options"] == "nosniff"
    assert api["Referrer-Policy"] == "no-referrer"
    assert api["Cache-Control"] == "no-store"
    static = dict(security_headers(False))
    assert "Cache-Control" not in static and static["Content-Security-Policy"] == csp
    render_response(200, security_headers(True))  # every value is a valid field value


# -- static files ------------------------------------------------------------------------


def test_etag_changes_with_the_file(tmp_path):
    path = tmp_path / "app.js"
    path.write_bytes(b"one")
    first = etag_for(path.stat())
    assert first == etag_for(path.stat()) and first.startswith('"') and first.endswith('"')
    path.write_bytes(b"three")
    assert etag_for(path.stat()) != first
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert etag_for(path.stat()) != etag_for(stat)


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", "abc"', True),
        ('"x",W/"abc"', True),
        ("*", True),
        ('"abcd"', False),
        ("abc", False),
        ('"a,bc"', False),
        ("", False),
    ],
)
def test_if_none_match(header, matches):
    assert not_modified(header, '"abc"') is matches


ROOT = Path("/srv/www")


@pytest.mark.parametrize(
    ("url_path", "expected"),
    [
        ("/", ROOT),
        ("/index.html", ROOT / "index.html"),
        ("/vendor/xterm.js", ROOT / "vendor/xterm.js"),
        ("//etc/passwd", ROOT / "etc/passwd"),
        ("/a%20b.txt", ROOT / "a b.txt"),
        ("/%C3%A9t%C3%A9", ROOT / "\u00e9t\u00e9"),
        ("/%252e%252e/x", ROOT / "%2e%2e/x"),  # double-encoded stays literal
        ("/%252f", ROOT / "%2f"),
        ("/..", None),
        ("/../etc/passwd", None),
        ("/a/../../etc/passwd", None),
        ("/a/./b", None),
        ("/%2e%2e/etc/passwd", None),
        ("/%2E%2e/etc/passwd", None),
        ("/.%2e/etc/passwd", None),
        ("/%2e/x", None),
        ("/a%2f..%2f..%2fetc", None),
        ("/a%2Fb", None),
        ("/a%5cb", None),
        ("/a\\..\\b", None),
        ("/a\0b", None),
        ("/a%00b", None),
        ("/a%0ab", None),
        ("/%ff", None),
        ("etc/passwd", None),
        ("", None),
    ],
)
def test_safe_join(url_path, expected):
    assert safe_join(ROOT, url_path) == expected


def test_safe_join_with_request_raw_path():
    [req] = parse(request("GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\nHost: h\n\n"))
    assert safe_join(ROOT, req.raw_path) is None
    assert req.path == "/../../etc/passwd"  # why routing must never join req.path to a directory
