"""WebSocket echo server for conformance and interop tests: ``python3 tests/ws_echo.py PORT``
(port 0 picks a free one); tests start it with :func:`running`.

A thin asyncio shell around coop.http and coop.websocket, not part of the
product. Prints ``listening on HOST:PORT`` once it accepts connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from coop import http, websocket

HOST = "127.0.0.1"
MAX_MESSAGE = 64 << 20  # Autobahn 9.x sends 16 MiB messages
READ_SIZE = 1 << 16


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        leftover = await _handshake(reader, writer)
        if leftover is not None:
            await _echo(reader, writer, leftover)
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
    """Refuse requests until one upgrades; return the bytes that followed it, or None."""
    parser = http.RequestParser()
    while data := await reader.read(READ_SIZE):
        for event in parser.feed(data):
            if isinstance(event, http.ParseError):
                writer.write(http.render_response(event.status, body=event.message.encode()))
                return None
            if isinstance(event, http.Continue):
                writer.write(http.CONTINUE_RESPONSE)
                continue
            error = websocket.check_upgrade(event)
            if error is not None:
                body = error.message.encode()
                writer.write(http.render_response(error.status, error.headers, body))
                continue
            writer.write(websocket.handshake_response(event.headers.get("sec-websocket-key")))
            return parser.leftover
        if parser.stopped:
            return None
    return None


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> None:
    connection = websocket.Connection(max_message=MAX_MESSAGE)
    while True:
        connection.receive_data(data)
        for event in connection.events():
            if isinstance(event, websocket.Text):
                writer.write(connection.send_text(event.data))
            elif isinstance(event, websocket.Binary):
                writer.write(connection.send_binary(event.data))
            writer.write(connection.data_to_send())
        writer.write(connection.data_to_send())
        await writer.drain()
        if connection.closed:
            return
        data = await reader.read(READ_SIZE)
        if not data:
            return


async def main(port: int) -> None:
    server = await asyncio.start_server(_serve, HOST, port)
    print(f"listening on {HOST}:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))


@contextlib.contextmanager
def running(timeout: float = 10.0) -> Iterator[int]:
    """Run this server in a child process on a free loopback port; yield the port."""
    process = subprocess.Popen([sys.executable, __file__, "0"], stdout=subprocess.PIPE)
    try:
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        line = process.stdout.readline().decode() if ready else ""
        if not line.startswith("listening on "):
            raise RuntimeError(f"echo server did not start: {line!r}")
        yield int(line.rsplit(":", 1)[1])
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
