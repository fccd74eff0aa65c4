"""`coop exec`'s client side (BYD-6): the command's exit code survives the
session closing the stream before the client has sent its stdin's end."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLIENT = """
import socket, sys
from coop import protocol
from coop.client import Connection, run_exec
ours, session = socket.socketpair()
session.sendall(protocol.encode_control({"event": "exited", "code": 5}))
session.close()  # done with the stream; the client's eof frame can no longer be sent
sys.exit(run_exec(Connection(ours)))
"""


def test_exit_code_arrives_although_the_stdin_eof_cannot_be_sent():
    done = subprocess.run([sys.executable, "-c", CLIENT], stdin=subprocess.DEVNULL,
                          capture_output=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=30,
                          check=False)
    assert (done.returncode, done.stderr) == (5, b"")
