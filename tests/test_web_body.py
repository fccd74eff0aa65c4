"""http.RequestParser.stream_body: a per-request body limit and sink (BYD-8 uploads, SEC-4)."""

from coop import http


def upload_parser(limit=64):
    pieces = []

    def stream(request):
        return (limit, pieces.append) if request.path == "/upload" else None

    return http.RequestParser(max_body=8, stream_body=stream), pieces


def test_streamed_body_goes_to_the_sink_not_the_request():
    parser, pieces = upload_parser()
    head = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\n\r\n"
    events = parser.feed(head + b"0123456789")
    assert events == []
    [request] = parser.feed(b"abcdefghij")
    assert request.body == b""
    assert b"".join(pieces) == b"0123456789abcdefghij"


def test_chunked_streamed_body_is_bounded_by_its_own_limit():
    parser, pieces = upload_parser(limit=12)
    head = b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    events = parser.feed(head + b"a\r\n0123456789\r\n5\r\nabcde\r\n")
    assert len(events) == 1 and events[0].status == 413
    assert b"".join(pieces) == b"0123456789"


def test_other_routes_keep_the_small_limit():
    parser, pieces = upload_parser()
    [error] = parser.feed(b"POST /other HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\n")
    assert error.status == 413 and pieces == []


def test_limit_is_decided_per_request_on_one_connection():
    parser, pieces = upload_parser()
    first = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 30\r\n\r\n" + b"x" * 30
    second = b"POST /other HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nabcd"
    a, b = parser.feed(first + second)
    assert (a.body, b.body) == (b"", b"abcd")
    assert b"".join(pieces) == b"x" * 30
