"""The session's way out in network mode "veth" (SB-4).

A user-mode network stack (slirp4netns) runs in the host's network namespace
and gives the session's network namespace a ``tap0`` link with a default
route; it turns the session's TCP/UDP flows into ordinary host sockets, so it
works without privileges. It is started inside the session's outer user
namespace (the init's), where it is root: there ``--enable-sandbox`` can
unshare a mount namespace, pivot into an empty root and drop its
capabilities, which an unprivileged user outside any user namespace cannot
(slirp4netns fails with ``setegid(0)``), and even coop running as root lends
it no capability over the host. What the session must not reach is kept out
in three places, because no single one holds alone:

- the session's routing table gets a ``prohibit`` route for every range in
  ``PRIVATE_RANGES`` (installed by the sandbox init before any session process
  runs), so connecting there fails with EACCES instead of going to slirp4netns,
  which would happily connect to the host's LAN;
- the link's own subnet (``SUBNET``) lies outside those ranges, so no hole is
  needed for the gateway and DNS; inside it slirp4netns answers only its DNS
  forwarder and, with ``--disable-host-loopback``, does not map the gateway
  address to the host's 127.0.0.1;
- session processes run in a user namespace nested below the init's, so they
  hold no capability over the session's network namespace: they can neither
  delete those routes nor hand slirp4netns hand-made frames through a packet
  socket (the init's design, ``coop.sandbox.init``).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable

from coop.launcher import LaunchError
from coop.sandbox import syscalls

PRIVATE_RANGES: list[str] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "fe80::/10",
]

# The session's link. 198.18.0.0/15 (RFC 2544 benchmarking) is not a LAN range
# and not routed on the internet; slirp4netns puts its gateway at .2, its DNS
# forwarder at .3 and the session at .100.
SUBNET = "198.18.0.0/24"
GATEWAY = "198.18.0.2"
DNS_SERVER = "198.18.0.3"  # what the session's /etc/resolv.conf names in "veth" mode
INTERFACE = "tap0"
MTU = 65520
READY_TIMEOUT = 5.0
STOP_TIMEOUT = 2.0

# pasta (passt 2023-03, Debian 12) was tried as an alternative and dropped: in
# a test world it did not relay to a remote host and crashed when verbose.
MISSING_TOOL = ('network mode "veth" needs slirp4netns (apt-get install slirp4netns); '
                'or use mode "none" or "proxy"')

EventCallback = Callable[[str], None]


class VethHandle:
    """A running slirp4netns for one session; ``close`` stops it.

    It keeps running after the session's processes are gone, until ``close``
    or until this process dies (it exits at EOF on the pipe ``_exit_w``)."""

    def __init__(self, process: asyncio.subprocess.Process, exit_w: int,
                 on_event: EventCallback) -> None:
        self.process = process
        self._exit_w = exit_w
        self._on_event = on_event
        self._closing = False
        self._watch: asyncio.Future | None = None
        self._drain: asyncio.Future | None = None

    def running(self) -> None:
        """Once it has configured the network: keep its stderr drained so its
        logging never blocks it, and report an exit nobody asked for (a failed
        start is reported by ``start_veth`` alone)."""
        self._drain = asyncio.ensure_future(_discard(self.process.stderr))
        self._watch = asyncio.ensure_future(self._report_unexpected_exit())

    async def _report_unexpected_exit(self) -> None:
        code = await self.process.wait()
        if not self._closing:
            self._on_event(f"network: slirp4netns exited unexpectedly (status {code})")

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        os.close(self._exit_w)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        if self._watch is not None:
            await self._watch
        if self._drain is not None:
            await self._drain


async def start_veth(namespaces: tuple[int, int], on_event: EventCallback) -> VethHandle:
    """Attach slirp4netns to a session's network namespace, from inside its user
    namespace (``namespaces``: descriptors of both, taken over and closed here),
    and wait until it has configured ``tap0`` (address, default route)."""
    userns_fd, netns_fd = namespaces
    tool = shutil.which("slirp4netns")
    if tool is None:
        os.close(userns_fd)
        os.close(netns_fd)
        raise LaunchError(MISSING_TOOL)
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    argv = [
        tool, "--configure", f"--mtu={MTU}", f"--cidr={SUBNET}", "--disable-host-loopback",
        "--enable-sandbox", "--enable-seccomp", f"--ready-fd={ready_w}", f"--exit-fd={exit_r}",
        "--netns-type=path", f"/proc/self/fd/{netns_fd}", INTERFACE,
    ]
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, pass_fds=(ready_w, exit_r, netns_fd), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=lambda: syscalls.setns(userns_fd, syscalls.CLONE_NEWUSER, "session"))
    except (OSError, subprocess.SubprocessError) as exc:
        for fd in (ready_r, ready_w, exit_r, exit_w):
            os.close(fd)
        reason = exc.strerror if isinstance(exc, OSError) else \
            "cannot enter the session's user namespace"
        raise LaunchError(f"cannot start slirp4netns: {reason}") from None
    finally:
        os.close(userns_fd)
        os.close(netns_fd)
    os.close(ready_w)
    os.close(exit_r)
    handle = VethHandle(process, exit_w, on_event)
    try:
        ready = await _read_byte(ready_r, READY_TIMEOUT)
    finally:
        os.close(ready_r)
    if ready != b"1":
        await handle.close()
        detail = (await process.stderr.read(65536)).decode(errors="replace")
        reason = "timed out" if ready is None else "failed"
        raise LaunchError(f"slirp4netns {reason} configuring the session network: "
                          f"{failure_cause(detail)}")
    handle.running()
    return handle


def failure_cause(stderr: str) -> str:
    """The line of slirp4netns's stderr that says why: its last one that is
    neither a warning nor the generic "child failed(1)" / "parent failed"."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith("WARNING")
               and not line.startswith(("child failed", "parent failed"))]
    return (telling or lines or ["no message"])[-1]


async def _read_byte(fd: int, timeout: float) -> bytes | None:
    """One byte from ``fd`` (b"" at EOF), or None after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    def on_readable() -> None:
        if not got.done():
            got.set_result(os.read(fd, 1))

    loop.add_reader(fd, on_readable)
    try:
        return await asyncio.wait_for(got, timeout)
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(fd)


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


# rtnetlink, just enough to add routes (linux/netlink.h, linux/rtnetlink.h).
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
RTM_NEWROUTE = 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4
RT_SCOPE_UNIVERSE = 0
RTN_PROHIBIT = 8
RTA_DST = 1
NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTMSG = struct.Struct("=BBBBBBBBI")
RTATTR = struct.Struct("=HH")  # len, type


def prohibit_route_message(cidr: str, seq: int) -> bytes:
    """RTM_NEWROUTE for ``prohibit <cidr>`` in the main table (idempotent: replace)."""
    net = ipaddress.ip_network(cidr)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    dst = net.network_address.packed
    attr = RTATTR.pack(RTATTR.size + len(dst), RTA_DST) + dst
    body = RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC,
                      RT_SCOPE_UNIVERSE, RTN_PROHIBIT, 0) + attr
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_NEWROUTE, flags, seq, 0) + body


def netlink_error_code(reply: bytes, seq: int) -> int:
    """The errno of the NLMSG_ERROR acknowledging ``seq`` (0 = success)."""
    offset = 0
    while offset + NLMSGHDR.size <= len(reply):
        length, kind, _flags, got_seq, _pid = NLMSGHDR.unpack_from(reply, offset)
        if length < NLMSGHDR.size:
            break
        if kind == NLMSG_ERROR and got_seq == seq:
            (code,) = struct.unpack_from("=i", reply, offset + NLMSGHDR.size)
            return -code
        offset += (length + 3) & ~3
    raise OSError(f"netlink: no acknowledgement for request {seq}")


def block_private_ranges_in_current_netns() -> None:
    """Install ``prohibit`` routes for ``PRIVATE_RANGES`` in the calling
    thread's network namespace (needs CAP_NET_ADMIN there). IPv6 ranges are
    skipped only when the kernel has no IPv6 at all."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        for seq, cidr in enumerate(PRIVATE_RANGES, start=1):
            sock.send(prohibit_route_message(cidr, seq))
            code = netlink_error_code(sock.recv(65536), seq)
            if code == 0 or (code == errno.EAFNOSUPPORT and ":" in cidr):
                continue
            raise OSError(code, f"cannot add prohibit route {cidr}: {os.strerror(code)}")
