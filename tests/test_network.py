"""SB-4 "veth" mode in a private world of namespaces.

Every experiment runs inside an outer user+network namespace made by the test
(the "host"), whose only way out is a veth pair into a second namespace (the
"world") holding an internet host (198.51.100.254) and a LAN host
(192.168.77.1). slirp4netns runs in the outer namespace, so whatever it sends
lands in the world namespace and nowhere else.
"""

from __future__ import annotations

import inspect
import json
import os
import pwd
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest

from coop.launcher import LaunchError
from coop.sandbox import network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM_PYTHON = "/usr/bin/python3"

# A one-answer HTTP server whose body names the host (no http.server: its
# bind does a reverse DNS lookup, which times out in these namespaces).
SERVE_HTTP = """
def serve(address, name, port=8080):
    class Answer(socketserver.StreamRequestHandler):
        def handle(self):
            while self.rfile.readline() not in (b"\\r\\n", b""):
                pass
            self.wfile.write(b"HTTP/1.0 200 OK\\r\\n\\r\\n" + name.encode())
    server = socketserver.ThreadingTCPServer((address, port), Answer)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]
"""


def namespaces_of(pid):
    """What a sandbox init hands its launcher for slirp4netns: its user and network namespaces."""
    return tuple(os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY) for kind in ("user", "net"))


NAMESPACES_OF = inspect.getsource(namespaces_of)  # for the scripts run in other namespaces

# Runs in the world namespace: configures its end of the veth and serves HTTP
# on the internet and LAN addresses; each answer names the host that sent it.
WORLD = textwrap.dedent("""
    import socketserver, subprocess, sys, threading
    print("in world namespace", flush=True)
    sys.stdin.readline()  # the outer side has moved ext1 in
    for cmd in ("ip link set lo up", "ip addr add 198.51.100.254/24 dev ext1",
                "ip addr add 192.168.77.1/32 dev ext1", "ip link set ext1 up",
                "ip route add default dev ext1"):
        subprocess.run(cmd.split(), check=True)
    SERVE_HTTP
    serve("198.51.100.254", "internet")
    serve("192.168.77.1", "lan")
    print("serving", flush=True)
    sys.stdin.read()
""").replace("SERVE_HTTP", SERVE_HTTP.strip())

# Runs as root of a fresh user+network namespace, like the sandbox init.
# Commands on stdin, one JSON answer per line on stdout. "lock" installs the
# routes as the init does, then re-executes itself (its source is its first
# argument) in a nested user namespace, where session processes run: root
# there, but without capabilities over the network namespace.
SANDBOX = textwrap.dedent("""
    import errno, json, os, socket, subprocess, sys
    from coop.sandbox import network
    def probe(host, port):
        try:
            with socket.create_connection((host, int(port)), timeout=3) as s:
                s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            return {"body": data.split(b"\\r\\n\\r\\n", 1)[-1].decode()}
        except OSError as exc:
            return {"error": errno.errorcode.get(exc.errno, str(exc))}
    def packet_socket():
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
            return {"ok": True}
        except OSError as exc:
            return {"error": errno.errorcode[exc.errno]}
    def route_delete():
        done = subprocess.run(["ip", "route", "del", "prohibit", "10.0.0.0/8"],
                              capture_output=True, text=True)
        return {"status": done.returncode, "stderr": done.stderr.strip()}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "lock":
            network.block_private_ranges_in_current_netns()
            os.execvp("unshare", ["unshare", "-U", "--map-root-user", sys.executable,
                                  "-c", sys.argv[1], sys.argv[1]])
        answer = {"probe": probe, "packet": packet_socket, "route-del": route_delete}[cmd](*args)
        print(json.dumps(answer), flush=True)
""")

# The host side, run in the outer namespace: builds the world, starts the
# sandbox and slirp4netns, runs the probes, prints one JSON report.
SCENARIO = textwrap.dedent("""
    import asyncio, json, os, socketserver, subprocess, sys, threading
    from coop.sandbox import network
    WORLD, SANDBOX = sys.argv[1], sys.argv[2]

    SERVE_HTTP
    NAMESPACES_OF
    def host_loopback_server():
        return serve("127.0.0.1", "host", port=0)

    def run(cmd):
        subprocess.run(cmd.split(), check=True)

    class Sandbox:
        def __init__(self):
            self.proc = subprocess.Popen(
                ["unshare", "-Un", "--map-root-user", sys.executable, "-c", SANDBOX, SANDBOX],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert json.loads(self.proc.stdout.readline()) == {"ready": True}
        def ask(self, line):
            self.proc.stdin.write(line + "\\n"); self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())
        def probes(self, loopback_port):
            return {
                "internet": self.ask("probe 198.51.100.254 8080"),
                "lan": self.ask("probe 192.168.77.1 8080"),
                "host_loopback_via_gateway": self.ask(f"probe {network.GATEWAY} {loopback_port}"),
                "own_loopback": self.ask(f"probe 127.0.0.1 {loopback_port}"),
            }

    async def experiment(report, sandbox, loopback_port):
        events = report["events"] = []
        handle = await network.start_veth(namespaces_of(sandbox.proc.pid), events.append)
        slirp = f"/proc/{handle.process.pid}"
        report["slirp_in_session_userns"] = \
            os.readlink(f"{slirp}/ns/user") == os.readlink(f"/proc/{sandbox.proc.pid}/ns/user")
        report["slirp_caps"] = [line.split()[1] for line in open(f"{slirp}/status")
                                if line.startswith("CapEff")][0]
        report["slirp_root"] = sorted(os.listdir(f"{slirp}/root"))
        report["routes"] = open(f"/proc/{sandbox.proc.pid}/net/route").read()
        report["before_lock"] = sandbox.probes(loopback_port)
        report["lock"] = sandbox.ask("lock")
        report["after_lock"] = sandbox.probes(loopback_port)
        report["packet_socket"] = sandbox.ask("packet")
        report["route_delete"] = sandbox.ask("route-del")
        report["after_route_delete"] = sandbox.ask("probe 192.168.77.1 8080")
        await handle.close()
        report["slirp_returncode"] = handle.process.returncode

    report = {}
    run("ip link set lo up")
    world = subprocess.Popen(["unshare", "-n", sys.executable, "-c", WORLD],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    sandbox = None
    try:
        assert world.stdout.readline() == "in world namespace\\n"
        run("ip link add ext0 type veth peer name ext1")
        run(f"ip link set ext1 netns {world.pid}")
        run("ip addr add 198.51.100.1/24 dev ext0")
        run("ip link set ext0 up")
        run("ip route add default via 198.51.100.254 dev ext0")
        world.stdin.write("go\\n"); world.stdin.flush()
        assert world.stdout.readline() == "serving\\n"
        loopback_port = host_loopback_server()
        sandbox = Sandbox()
        asyncio.run(experiment(report, sandbox, loopback_port))
    finally:
        for proc in (sandbox.proc if sandbox else None, world):
            if proc is not None:
                proc.kill()
                proc.wait()
    print(json.dumps(report))
""").replace("SERVE_HTTP", SERVE_HTTP.strip()).replace("NAMESPACES_OF", NAMESPACES_OF.strip())


def run_in_private_world(python: str, user: tuple[int, int] | None = None) -> dict:
    """Run SCENARIO in a fresh outer user+network namespace (as ``user`` if given)."""
    prefix = []
    if user is not None:
        prefix = ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups"]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": REPO}
    proc = subprocess.Popen(
        prefix + ["unshare", "-Urn", python, "-c", SCENARIO, WORLD, SANDBOX],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/",
        start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    return json.loads(out)


@pytest.fixture
def unprivileged_user():
    name = "coopnet" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True)
    try:
        entry = pwd.getpwnam(name)
        yield entry.pw_uid, entry.pw_gid
    finally:
        subprocess.run(["userdel", name], check=True)


def check_report(report: dict) -> None:
    # slirp4netns runs in the session's user namespace, sandboxed: an empty
    # root but /etc and /run, no capability but CAP_NET_BIND_SERVICE.
    assert report["slirp_in_session_userns"]
    assert report["slirp_caps"] == f"{1 << 10:016x}"
    assert report["slirp_root"] == ["etc", "run"]
    # slirp4netns configured the link in SUBNET with the default route via GATEWAY.
    assert "tap0\t00000000\t020012C6" in report["routes"]
    before, after = report["before_lock"], report["after_lock"]
    # The experiment is meaningful: without the routes the LAN host answers.
    assert before["internet"] == {"body": "internet"}
    assert before["lan"] == {"body": "lan"}
    # The host's loopback is never reachable (slirp4netns --disable-host-loopback).
    assert "error" in before["host_loopback_via_gateway"]
    assert "body" not in before["own_loopback"]
    # After the init's lock-down: the internet still works, the LAN is prohibited.
    assert after["internet"] == {"body": "internet"}
    assert after["lan"] == {"error": "EACCES"}
    assert "error" in after["host_loopback_via_gateway"]
    assert "body" not in after["own_loopback"]
    # Session processes can neither remove the routes nor write raw frames.
    assert report["packet_socket"] == {"error": "EPERM"}
    assert report["route_delete"]["status"] != 0
    assert "Operation not permitted" in report["route_delete"]["stderr"]
    assert report["after_route_delete"] == {"error": "EACCES"}
    # close() stopped slirp4netns cleanly, and nothing unexpected was reported.
    assert report["slirp_returncode"] is not None
    assert report["events"] == []


def test_veth_reaches_internet_not_lan_or_host_loopback():
    check_report(run_in_private_world(sys.executable))


def test_veth_works_for_an_unprivileged_user(unprivileged_user):
    check_report(run_in_private_world(SYSTEM_PYTHON, unprivileged_user))


def test_prohibit_routes_are_installed_for_every_private_range():
    script = ("from coop.sandbox import network\n"
              "network.block_private_ranges_in_current_netns()\n"
              "network.block_private_ranges_in_current_netns()\n")  # idempotent
    listing = subprocess.run(
        ["unshare", "-Urn", "sh", "-c",
         f"{sys.executable} -c '{script}' && ip -j route && ip -j -6 route"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO}, check=True)
    routes = [r for chunk in listing.stdout.split("\n") if chunk for r in json.loads(chunk)]
    prohibited = {r["dst"] for r in routes if r.get("type") == "prohibit"}
    assert prohibited == set(network.PRIVATE_RANGES)


def test_private_ranges_match_the_spec_and_exclude_the_link():
    import ipaddress
    subnet = ipaddress.ip_network(network.SUBNET)
    assert not any(subnet.overlaps(ipaddress.ip_network(r))
                   for r in network.PRIVATE_RANGES if ":" not in r)
    assert ipaddress.ip_address(network.GATEWAY) in subnet
    assert ipaddress.ip_address(network.DNS_SERVER) in subnet


def test_missing_slirp4netns_is_a_clear_launch_error(tmp_path, monkeypatch):
    import asyncio
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LaunchError) as raised:
        asyncio.run(network.start_veth(namespaces_of(os.getpid()), lambda event: None))
    assert str(raised.value) == network.MISSING_TOOL


def test_slirp4netns_failure_is_a_one_line_launch_error():
    # The "session" has a user namespace of its own but the outer network
    # namespace, which that user namespace does not own: slirp4netns cannot
    # enter it and exits before configuring anything.
    script = textwrap.dedent("""
        import asyncio, os, subprocess
        from coop.launcher import LaunchError
        from coop.sandbox import network
        NAMESPACES_OF
        async def main():
            sandbox = subprocess.Popen(["unshare", "-U", "--map-root-user", "sh", "-c",
                                        "echo ready; exec sleep 60"], stdout=subprocess.PIPE)
            try:
                assert sandbox.stdout.readline() == b"ready\\n"
                await network.start_veth(namespaces_of(sandbox.pid), print)
            except LaunchError as exc:
                print(exc)
            finally:
                sandbox.kill()
                sandbox.wait()
        asyncio.run(main())
    """).replace("NAMESPACES_OF", NAMESPACES_OF.strip())
    done = subprocess.run(["unshare", "-Urn", sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=30, check=False,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("slirp4netns failed configuring the session network: "
                           "setns(CLONE_NEWNET): Operation not permitted\n")


def test_the_failure_cause_is_the_telling_line_of_slirp4netns_stderr():
    assert network.failure_cause("sent tapfd=5 for tap0\nWARNING: Support for seccomp is "
                                 "experimental\nsetegid(0)\nparent failed\n") == "setegid(0)"
    assert network.failure_cause("child failed(1)\n") == "child failed(1)"
    assert network.failure_cause("") == "no message"


def test_slirp4netns_dying_is_reported():
    # In an outer namespace with nothing but loopback: slirp4netns reaches nothing.
    script = textwrap.dedent("""
        import asyncio, os, subprocess, sys
        from coop.sandbox import network
        NAMESPACES_OF
        async def main():
            sandbox = subprocess.Popen(["unshare", "-Un", "--map-root-user", "sh", "-c",
                                        "echo ready; exec sleep 60"], stdout=subprocess.PIPE)
            try:
                assert sandbox.stdout.readline() == b"ready\\n"
                events = []
                handle = await network.start_veth(namespaces_of(sandbox.pid), events.append)
                handle.process.kill()
                for _ in range(500):  # up to 5 s for the report
                    if events:
                        break
                    await asyncio.sleep(0.01)
                await handle.close()
                print(events)
            finally:
                sandbox.kill()
                sandbox.wait()
        asyncio.run(main())
    """).replace("NAMESPACES_OF", NAMESPACES_OF.strip())
    done = subprocess.run(["unshare", "-Urn", sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=30, check=False,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['network: slirp4netns exited unexpectedly (status -9)']"

