"""This host's own IPv4 addresses, for the LAN URLs of ``coop serve -H 0.0.0.0`` (WEB-1).

Read from the kernel (SIOCGIFADDR per interface): no network traffic, no
external command.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

SIOCGIFADDR = 0x8915


def ipv4_addresses() -> list[str]:
    """The primary IPv4 address of every interface that has one, loopback excluded."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            request = struct.pack("16sH14s", name.encode()[:15], socket.AF_INET, bytes(14))
            try:
                answer = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on this interface
                continue
            address = socket.inet_ntoa(answer[20:24])
            if not ipaddress.ip_address(address).is_loopback and address not in found:
                found.append(address)
    return found
