"""SB-4 through the real sandbox: the namespace side of "veth" and "proxy"
(the helpers themselves are tested in test_network.py and test_proxy.py).
No packet leaves the sandbox's own namespace except to slirp4netns."""

from __future__ import annotations

import socket

from tests import sandbox_fixture
from tests.sandbox_fixture import lines, python_in_sandbox, sh

sandbox_user, box = sandbox_fixture.sandbox_user, sandbox_fixture.box  # fixtures

CONNECT = """
import errno, socket, sys
for host, port in [a.split(':') for a in sys.argv[1:]]:
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, int(port)))
        print(host, 'CONNECTED')
    except OSError as e:
        print(host, errno.errorcode.get(e.errno, 'timeout'))
"""


def connect_argv(*targets: str) -> list[str]:
    return python_in_sandbox(CONNECT) + list(targets)


def test_veth_blocks_private_ranges_and_host_loopback_and_the_routes_stay(box):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0)
    port = listener.getsockname()[1]
    try:
        results = box.run([
            sh("cat /etc/resolv.conf; grep -c '^tap0' /proc/net/route; "
               "ip route show type prohibit | cut -d' ' -f2 | sort"),
            {"do": "exec", "argv": connect_argv("10.1.2.3:80", "192.168.1.1:80",
                                                "169.254.169.254:80", f"198.18.0.2:{port}")},
            sh("ip route del prohibit 10.0.0.0/8 && echo DELETED; "
               "ip route add default via 198.18.0.2 dev tap0 table 100 && echo ADDED; "
               "ip -6 route show type prohibit | wc -l"),
        ], network="veth")
        try:
            listener.accept()
            reached_host = True
        except BlockingIOError:
            reached_host = False
    finally:
        listener.close()
    assert "error" not in results[-1], results
    out = lines(results[1]["stdout"])
    assert out[0] == "nameserver 198.18.0.3"
    assert int(out[1]) >= 2  # the link and the default route
    assert out[2:] == ["10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12",
                       "192.168.0.0/16"]
    probes = dict(line.split() for line in lines(results[2]["stdout"]))
    assert probes["10.1.2.3"] == probes["192.168.1.1"] == probes["169.254.169.254"] == "EACCES"
    assert probes["198.18.0.2"] != "CONNECTED" and not reached_host
    after = lines(results[3]["stdout"])
    assert "DELETED" not in after and "ADDED" not in after
    assert after[-1] == "2"  # fc00::/7 and fe80::/10


def test_proxy_mode_serves_the_sandboxes_own_loopback_port_from_outside(box):
    ask = ("import os, socket; from urllib.parse import urlsplit\n"
           "url = urlsplit(os.environ['HTTPS_PROXY'])\n"
           "s = socket.create_connection((url.hostname, url.port), timeout=10)\n"
           "s.sendall(b'CONNECT blocked.example:443 HTTP/1.1\\r\\nHost: blocked.example:443\\r\\n\\r\\n')\n"
           "print(s.recv(100).split(b'\\r\\n')[0].decode())\n")
    results = box.run([sh("env | grep -i _proxy= | sort; tail -n +3 /proc/net/dev | cut -d: -f1"),
                       {"do": "exec", "argv": python_in_sandbox(ask)}, {"do": "describe"}],
                      network="proxy", allow=["allowed.example"])
    env = lines(results[1]["stdout"])
    url = "http://127.0.0.1:3128"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        assert f"{name}={url}" in env and f"{name.lower()}={url}" in env
    assert env[-1] == "lo"
    assert lines(results[2]["stdout"]) == ["HTTP/1.1 403 Forbidden"]
    assert any("denied blocked.example:443" in event for event in results[2]["events"])
    assert results[3]["network"] == "proxy on 127.0.0.1:3128, allow allowed.example"


def test_host_network_mode_shares_the_hosts_interfaces(box):
    inside = lines(box.exec("tail -n +3 /proc/net/dev | cut -d: -f1", network="host")["stdout"])
    with open("/proc/net/dev") as f:
        outside = [line.split(":")[0].strip() for line in f.readlines()[2:]]
    assert sorted(inside) == sorted(outside)
