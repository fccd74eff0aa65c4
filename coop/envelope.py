"""Compact WebRTC offer and answer codes (TUN-2, TUN-3, SEC-4): sans-I/O.

A full SDP offer is far too long for a phone camera, so the daemon's offer is
reduced to what a data-channel-only connection needs (ICE ufrag/pwd, the DTLS
sha-256 fingerprint, candidates, the SCTP port and message size), packed as
a JSON array, zlib-compressed and base64url-encoded without padding. The
receiver rebuilds an SDP that aiortc and Chromium accept. The browser's
answer travels back the same way, short enough to paste (< 300 characters).

Wire layout (``coop/www/envelope.js`` mirrors it):

    offer   [1, ufrag, pwd, fingerprint, candidates, sctp_port, max_message_size,
             machine_id, hostname, secret]
    answer  [1, ufrag, pwd, fingerprint, candidates, sctp_port, max_message_size,
             setup]

``fingerprint`` is the sha-256 digest in base64url; a candidate is
``[address, port, type]`` with type ``h``/``s``/``p``/``r`` (host, srflx,
prflx, relay), UDP only (aioice neither gathers nor checks TCP candidates);
``setup`` is ``a`` (active) or ``p`` (passive). Positional, not keyed: the
keys alone would push a typical connect URL past QR version 12.

Codes arrive from the network and from pastes, so decoding trusts nothing:
a bounded decompression, strict types and patterns (no SDP injection), and
every failure is one ``EnvelopeError`` line.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import zlib
from dataclasses import dataclass, replace

VERSION = 1
MAX_CODE = 4096  # characters of base64url
MAX_JSON = 4096  # bytes after decompression: a zlib bomb stops here
MAX_CANDIDATES = 16
DEFAULT_SCTP_PORT = 5000
DEFAULT_MAX_MESSAGE_SIZE = 65536  # RFC 8841 when the attribute is absent

TYPES = {"host": "h", "srflx": "s", "prflx": "p", "relay": "r"}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
TYPE_PREFERENCE = {"host": 126, "prflx": 110, "srflx": 100, "relay": 0}  # RFC 8445 5.1.2.2
SETUPS = {"active": "a", "passive": "p"}
SETUP_NAMES = {v: k for k, v in SETUPS.items()}

_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_IP_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_MDNS = re.compile(r"[A-Za-z0-9-]{1,63}\.local")
_MACHINE_ID = re.compile(r"[0-9a-f]{16,64}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{12,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIGITS = re.compile(r"[0-9]{1,10}")
MAX_HOSTNAME = 64


class EnvelopeError(ValueError):
    """A code or SDP that cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class Candidate:
    address: str  # an IP literal, or an mDNS name ending in .local
    port: int
    type: str  # host, srflx, prflx, relay

    @property
    def mdns(self) -> bool:
        return self.address.endswith(".local")


@dataclass(frozen=True)
class Description:
    """One side of a data-channel session, reduced to what WebRTC needs."""

    ufrag: str
    pwd: str
    fingerprint: bytes  # sha-256 of the DTLS certificate, 32 bytes
    candidates: tuple[Candidate, ...]
    sctp_port: int = DEFAULT_SCTP_PORT
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    setup: str = "actpass"  # actpass in offers; active or passive in answers

    @classmethod
    def from_sdp(cls, sdp: str, setup: str | None = None) -> Description:
        """Reduce an SDP offer or answer (aiortc's or a browser's).
        ``setup`` overrides the role, e.g. for an answer that says nothing."""
        if not isinstance(sdp, str) or len(sdp) > 65536:
            raise EnvelopeError("SDP must be text of at most 64 KiB")
        attrs: dict[str, str] = {}
        candidates: list[Candidate] = []
        in_application = seen_media = False
        for line in sdp.replace("\r\n", "\n").split("\n"):
            if line.startswith("m="):
                in_application = not seen_media and line.startswith("m=application")
                seen_media = True
                continue
            if not line.startswith("a=") or (seen_media and not in_application):
                continue
            name, _, value = line[2:].partition(":")
            if name == "candidate":
                cand = _candidate_from_sdp(value)
                if cand and len(candidates) < MAX_CANDIDATES:
                    candidates.append(cand)
            elif name == "fingerprint":
                algo, _, digest = value.partition(" ")
                if algo.lower() == "sha-256":
                    attrs["fingerprint"] = digest.strip()
            else:
                attrs.setdefault(name, value.strip())
        for need in ("ice-ufrag", "ice-pwd", "fingerprint"):
            if need not in attrs:
                raise EnvelopeError(f"SDP has no {need} (sha-256) attribute")
        try:
            fingerprint = bytes.fromhex(attrs["fingerprint"].replace(":", ""))
        except ValueError:
            raise EnvelopeError("SDP fingerprint is not hex") from None
        return _checked(cls(
            ufrag=attrs["ice-ufrag"],
            pwd=attrs["ice-pwd"],
            fingerprint=fingerprint,
            candidates=tuple(candidates),
            sctp_port=_sdp_int(attrs.get("sctp-port"), DEFAULT_SCTP_PORT),
            max_message_size=_sdp_int(attrs.get("max-message-size"), DEFAULT_MAX_MESSAGE_SIZE),
            setup=setup or attrs.get("setup", "actpass"),
        ))

    def to_sdp(self) -> str:
        """A complete SDP with one data-channel m-section.

        ``a=end-of-candidates`` only when there are candidates: with none, the
        remote side is reachable only through peer-reflexive candidates (a
        browser hiding its addresses), and aioice must keep waiting for them."""
        lines = [
            "v=0",
            "o=- 1 1 IN IP4 0.0.0.0",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0",
            "a=msid-semantic:WMS *",
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
            "c=IN IP4 0.0.0.0",
            "a=mid:0",
            f"a=sctp-port:{self.sctp_port}",
            f"a=max-message-size:{self.max_message_size}",
        ]
        for i, c in enumerate(self.candidates):
            priority = (TYPE_PREFERENCE[c.type] << 24) | ((65535 - i) << 8) | 255
            related = "" if c.type == "host" else " raddr 0.0.0.0 rport 0"
            lines.append(f"a=candidate:{i + 1} 1 udp {priority} {c.address} {c.port} "
                         f"typ {c.type}{related}")
        if self.candidates:
            lines.append("a=end-of-candidates")
        lines += [
            f"a=ice-ufrag:{self.ufrag}",
            f"a=ice-pwd:{self.pwd}",
            "a=fingerprint:sha-256 " + ":".join(f"{b:02X}" for b in self.fingerprint),
            f"a=setup:{self.setup}",
        ]
        return "\r\n".join(lines) + "\r\n"

    def without_mdns(self) -> Description:
        """Drop ``.local`` candidates: resolving them costs aioice an mDNS
        timeout and they never help from another network (TUN-2)."""
        return replace(self, candidates=tuple(c for c in self.candidates if not c.mdns))


@dataclass(frozen=True)
class Offer:
    description: Description
    machine_id: str
    hostname: str
    secret: str  # one-time: proves an automatic answer post saw the envelope


# -- codes ------------------------------------------------------------------


def encode_offer(offer: Offer) -> str:
    d = _checked(offer.description)
    if d.setup != "actpass":
        raise EnvelopeError("an offer's setup role must be actpass")
    hostname = offer.hostname.encode("utf-8", "replace").decode()
    hostname = _CONTROL.sub("?", hostname)[:MAX_HOSTNAME] or "?"
    return _pack([*_common(d), _machine_id(offer.machine_id), hostname, _secret(offer.secret)])


def decode_offer(code: str) -> Offer:
    """The offer in a code or in a whole connect URL (the part after '#')."""
    items = _unpack(code, 10, "offer")
    description = _description(items, "actpass")
    hostname = items[8]
    if not isinstance(hostname, str) or not 0 < len(hostname) <= MAX_HOSTNAME \
            or _CONTROL.search(hostname):
        raise EnvelopeError(f"offer hostname must be 1-{MAX_HOSTNAME} printable characters")
    return Offer(description, _machine_id(items[7]), hostname, _secret(items[9]))


def encode_answer(description: Description) -> str:
    d = _checked(description)
    if d.setup not in SETUPS:
        raise EnvelopeError("an answer's setup role must be active or passive")
    return _pack([*_common(d), SETUPS[d.setup]])


def decode_answer(code: str) -> Description:
    items = _unpack(code, 8, "answer")
    setup = items[7]
    if not isinstance(setup, str) or setup not in SETUP_NAMES:
        raise EnvelopeError('answer setup must be "a" or "p"')
    return _description(items, SETUP_NAMES[setup])


# -- internals --------------------------------------------------------------


def _pack(items: list) -> str:
    raw = json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).rstrip(b"=").decode()


def _unpack(code: str, length: int, what: str) -> list:
    if not isinstance(code, str):
        raise EnvelopeError(f"{what} code must be text")
    code = "".join(code.split())  # terminals wrap long pastes
    code = code.rpartition("#")[2]
    if not code:
        raise EnvelopeError(f"empty {what} code")
    if len(code) > MAX_CODE:
        raise EnvelopeError(f"{what} code is too long ({len(code)} characters)")
    if not _B64URL.fullmatch(code) or len(code) % 4 == 1:
        raise EnvelopeError(f"{what} code is not base64url (copy it again, whole)")
    try:
        packed = base64.urlsafe_b64decode(code + "=" * (-len(code) % 4))
    except (binascii.Error, ValueError):
        raise EnvelopeError(f"{what} code is not base64url (copy it again, whole)") from None
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(packed, MAX_JSON + 1)
    except zlib.error:
        raise EnvelopeError(f"{what} code is damaged (not zlib data)") from None
    if len(raw) > MAX_JSON:
        raise EnvelopeError(f"{what} code expands beyond {MAX_JSON} bytes")
    if not inflater.eof or inflater.unused_data:
        raise EnvelopeError(f"{what} code is truncated or has trailing bytes")
    try:
        items = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EnvelopeError(f"{what} code does not hold JSON") from None
    if not isinstance(items, list) or not items:
        raise EnvelopeError(f"{what} code does not hold a JSON array")
    if type(items[0]) is not int or items[0] != VERSION:
        raise EnvelopeError(f"{what} code has version {json.dumps(items[0])[:16]}; "
                            f"this coop reads version {VERSION}")
    if len(items) != length:
        raise EnvelopeError(f"{what} code has {len(items)} fields, expected {length}")
    return items


def _common(d: Description) -> list:
    return [VERSION, d.ufrag, d.pwd,
            base64.urlsafe_b64encode(d.fingerprint).rstrip(b"=").decode(),
            [[c.address, c.port, TYPES[c.type]] for c in d.candidates],
            d.sctp_port, d.max_message_size]


def _description(items: list, setup: str) -> Description:
    fingerprint = items[3]
    if not isinstance(fingerprint, str) or not _B64URL.fullmatch(fingerprint) or len(fingerprint) != 43:
        raise EnvelopeError("fingerprint must be a sha-256 digest in base64url")
    cands = items[4]
    if not isinstance(cands, list) or len(cands) > MAX_CANDIDATES:
        raise EnvelopeError(f"candidates must be a list of at most {MAX_CANDIDATES}")
    candidates = []
    for c in cands:
        if not (isinstance(c, list) and len(c) == 3 and isinstance(c[0], str)
                and isinstance(c[2], str) and c[2] in TYPE_NAMES):
            raise EnvelopeError("a candidate must be [address, port, type h/s/p/r]")
        candidates.append(Candidate(c[0], c[1], TYPE_NAMES[c[2]]))
    return _checked(Description(
        ufrag=items[1], pwd=items[2],
        fingerprint=base64.urlsafe_b64decode(fingerprint + "="),
        candidates=tuple(candidates), sctp_port=items[5], max_message_size=items[6],
        setup=setup))


def _checked(d: Description) -> Description:
    """Validate every field that ends up in SDP text; normalise addresses."""
    if not _ice_chars(d.ufrag, 4):
        raise EnvelopeError("ICE ufrag must be 4-256 ice-chars")
    if not _ice_chars(d.pwd, 22):
        raise EnvelopeError("ICE pwd must be 22-256 ice-chars")
    if not isinstance(d.fingerprint, bytes) or len(d.fingerprint) != 32:
        raise EnvelopeError("fingerprint must be a 32-byte sha-256 digest")
    if not _int_in(d.sctp_port, 1, 65535):
        raise EnvelopeError("sctp-port must be 1-65535")
    if not _int_in(d.max_message_size, 0, 1 << 30):
        raise EnvelopeError("max-message-size must be 0-1073741824")
    if d.setup not in ("actpass", *SETUPS):
        raise EnvelopeError("setup must be actpass, active or passive")
    if len(d.candidates) > MAX_CANDIDATES:
        raise EnvelopeError(f"more than {MAX_CANDIDATES} candidates")
    return replace(d, candidates=tuple(_checked_candidate(c) for c in d.candidates))


def _checked_candidate(c: Candidate) -> Candidate:
    if not _int_in(c.port, 1, 65535):
        raise EnvelopeError("candidate port must be 1-65535")
    if c.type not in TYPES:
        raise EnvelopeError(f"unknown candidate type {str(c.type)[:16]!r}")
    return replace(c, address=_address(c.address))


def _address(address) -> str:
    if isinstance(address, str) and _MDNS.fullmatch(address):
        return address.lower()
    if isinstance(address, str) and _IP_CHARS.fullmatch(address):
        try:
            return str(ipaddress.ip_address(address))
        except ValueError:
            pass
    raise EnvelopeError("candidate address must be an IP address or an mDNS .local name")


def _candidate_from_sdp(value: str) -> Candidate | None:
    """A UDP component-1 candidate, or None for anything we cannot use."""
    bits = value.split()
    if len(bits) < 8 or bits[1] != "1" or bits[2].lower() != "udp" or bits[6] != "typ":
        return None
    if bits[7] not in TYPES or not _DIGITS.fullmatch(bits[5]):
        return None
    try:
        return _checked_candidate(Candidate(bits[4], int(bits[5]), bits[7]))
    except EnvelopeError:
        return None


def _machine_id(value) -> str:
    if not isinstance(value, str) or not _MACHINE_ID.fullmatch(value):
        raise EnvelopeError("machine id must be 16-64 lowercase hex digits")
    return value


def _secret(value) -> str:
    if not isinstance(value, str) or not _SECRET.fullmatch(value):
        raise EnvelopeError("tunnel secret must be 12-64 base64url characters")
    return value


def _ice_chars(value, least: int) -> bool:
    return isinstance(value, str) and least <= len(value) <= 256 and bool(_ICE_CHARS.fullmatch(value))


def _int_in(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _sdp_int(value: str | None, default: int) -> int:
    if value is None:
        return default
    if not _DIGITS.fullmatch(value):
        raise EnvelopeError(f"SDP number {value[:16]!r} is not a non-negative integer")
    return int(value)
