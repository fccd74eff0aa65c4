// Compact WebRTC offer and answer codes (TUN-2, TUN-3); mirrors coop/envelope.py.
//
// offer  = [1, ufrag, pwd, fingerprint, candidates, sctpPort, maxMessageSize,
//           machineId, hostname, secret]
// answer = [1, ufrag, pwd, fingerprint, candidates, sctpPort, maxMessageSize, setup]
// JSON, zlib ("deflate" streams), base64url without padding. fingerprint is the
// DTLS sha-256 digest in base64url; a candidate is [address, port, "h"|"s"|"p"|"r"],
// UDP only; setup is "a" (active) or "p" (passive).

const VERSION = 1;
const MAX_CODE = 4096;
const MAX_JSON = 4096; // a zlib bomb stops here
const MAX_CANDIDATES = 16;
const TYPES = { host: "h", srflx: "s", prflx: "p", relay: "r" };
const TYPE_NAMES = { h: "host", s: "srflx", p: "prflx", r: "relay" };
const PREFERENCE = { host: 126, prflx: 110, srflx: 100, relay: 0 };
const ICE_CHARS = /^[A-Za-z0-9+/]{4,256}$/;
const B64URL = /^[A-Za-z0-9_-]*$/;
const ADDRESS = /^(?:[0-9A-Fa-f:.]{2,45}|[A-Za-z0-9-]{1,63}\.local)$/;

export class EnvelopeError extends Error {}

/** The offer in a URL fragment (or a whole connect URL):
 *  {sdp, machineId, hostname, secret, candidates}. */
export async function decodeOffer(fragment) {
  const items = await unpack(fragment, 10, "offer");
  const [machineId, hostname, secret] = items.slice(7);
  if (typeof machineId !== "string" || !/^[0-9a-f]{16,64}$/.test(machineId)) {
    throw new EnvelopeError("machine id must be 16-64 lowercase hex digits");
  }
  if (typeof hostname !== "string" || !hostname || hostname.length > 64 || /[\x00-\x1f\x7f]/.test(hostname)) {
    throw new EnvelopeError("offer hostname must be 1-64 printable characters");
  }
  if (typeof secret !== "string" || !/^[A-Za-z0-9_-]{12,64}$/.test(secret)) {
    throw new EnvelopeError("tunnel secret must be 12-64 base64url characters");
  }
  const d = description(items, "actpass");
  return { sdp: toSdp(d), machineId, hostname, secret, candidates: d.candidates };
}

/** The short code for the browser's answer SDP (mDNS .local candidates left out:
 *  the daemon cannot resolve them, and reaches the browser peer-reflexively). */
export async function encodeAnswer(sdp) {
  const d = fromSdp(sdp);
  const setup = d.setup === "passive" ? "p" : "a";
  const cands = d.candidates.filter((c) => !c.address.endsWith(".local"));
  return pack([VERSION, d.ufrag, d.pwd, d.fingerprint, cands.map((c) => [c.address, c.port, TYPES[c.type]]),
    d.sctpPort, d.maxMessageSize, setup]);
}

// -- SDP ----------------------------------------------------------------------

function fromSdp(sdp) {
  const attrs = {};
  const candidates = [];
  let seenMedia = false;
  let inApplication = false;
  for (const line of String(sdp).split(/\r?\n/)) {
    if (line.startsWith("m=")) {
      inApplication = !seenMedia && line.startsWith("m=application");
      seenMedia = true;
      continue;
    }
    if (!line.startsWith("a=") || (seenMedia && !inApplication)) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line.slice(2) : line.slice(2, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).trim();
    if (name === "candidate") {
      const b = value.split(/\s+/);
      if (b.length >= 8 && b[1] === "1" && b[2].toLowerCase() === "udp" && b[6] === "typ" &&
          TYPES[b[7]] && /^[0-9]{1,5}$/.test(b[5]) && ADDRESS.test(b[4]) &&
          candidates.length < MAX_CANDIDATES) {
        candidates.push({ address: b[4], port: Number(b[5]), type: b[7] });
      }
    } else if (name === "fingerprint") {
      const [algo, digest] = value.split(/\s+/);
      if (algo.toLowerCase() === "sha-256") attrs.fingerprint = digest;
    } else if (!(name in attrs)) {
      attrs[name] = value;
    }
  }
  for (const need of ["ice-ufrag", "ice-pwd", "fingerprint"]) {
    if (!(need in attrs)) throw new EnvelopeError(`SDP has no ${need} (sha-256) attribute`);
  }
  const hex = attrs.fingerprint.replaceAll(":", "");
  if (!/^[0-9A-Fa-f]{64}$/.test(hex)) throw new EnvelopeError("SDP fingerprint is not a sha-256 digest");
  const digest = new Uint8Array(hex.match(/../g).map((h) => parseInt(h, 16)));
  return {
    ufrag: attrs["ice-ufrag"], pwd: attrs["ice-pwd"], fingerprint: toB64url(digest), candidates,
    sctpPort: Number(attrs["sctp-port"] || 5000),
    maxMessageSize: Number(attrs["max-message-size"] || 65536),
    setup: attrs.setup || "active",
  };
}

function toSdp(d) {
  const lines = ["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "a=msid-semantic:WMS *", "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0",
    "a=mid:0", `a=sctp-port:${d.sctpPort}`, `a=max-message-size:${d.maxMessageSize}`];
  d.candidates.forEach((c, i) => {
    const priority = PREFERENCE[c.type] * 2 ** 24 + (65535 - i) * 256 + 255;
    const related = c.type === "host" ? "" : " raddr 0.0.0.0 rport 0";
    lines.push(`a=candidate:${i + 1} 1 udp ${priority} ${c.address} ${c.port} typ ${c.type}${related}`);
  });
  if (d.candidates.length) lines.push("a=end-of-candidates");
  const digest = [...fromB64url(d.fingerprint)].map((b) => b.toString(16).padStart(2, "0").toUpperCase());
  lines.push(`a=ice-ufrag:${d.ufrag}`, `a=ice-pwd:${d.pwd}`, `a=fingerprint:sha-256 ${digest.join(":")}`,
    `a=setup:${d.setup}`);
  return lines.join("\r\n") + "\r\n";
}

// -- codes --------------------------------------------------------------------

function description(items, setup) {
  const [, ufrag, pwd, fingerprint, cands, sctpPort, maxMessageSize] = items;
  const check = (ok, message) => { if (!ok) throw new EnvelopeError(message); };
  check(typeof ufrag === "string" && ICE_CHARS.test(ufrag), "ICE ufrag must be 4-256 ice-chars");
  check(typeof pwd === "string" && ICE_CHARS.test(pwd) && pwd.length >= 22, "ICE pwd must be 22-256 ice-chars");
  check(typeof fingerprint === "string" && fingerprint.length === 43 && B64URL.test(fingerprint),
    "fingerprint must be a sha-256 digest in base64url");
  check(Array.isArray(cands) && cands.length <= MAX_CANDIDATES, `candidates must be a list of at most ${MAX_CANDIDATES}`);
  const candidates = cands.map((c) => {
    check(Array.isArray(c) && c.length === 3 && typeof c[0] === "string" && ADDRESS.test(c[0]) &&
      Number.isInteger(c[1]) && c[1] >= 1 && c[1] <= 65535 && Object.hasOwn(TYPE_NAMES, c[2]),
    "a candidate must be [address, port, type h/s/p/r]");
    return { address: c[0], port: c[1], type: TYPE_NAMES[c[2]] };
  });
  check(Number.isInteger(sctpPort) && sctpPort >= 1 && sctpPort <= 65535, "sctp-port must be 1-65535");
  check(Number.isInteger(maxMessageSize) && maxMessageSize >= 0 && maxMessageSize <= 2 ** 30,
    "max-message-size must be 0-1073741824");
  return { ufrag, pwd, fingerprint, candidates, sctpPort, maxMessageSize, setup };
}

async function pack(items) {
  const raw = new TextEncoder().encode(JSON.stringify(items));
  const stream = new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate"));
  return toB64url(new Uint8Array(await new Response(stream).arrayBuffer()));
}

async function unpack(code, length, what) {
  code = String(code).replace(/\s+/g, "");
  code = code.slice(code.lastIndexOf("#") + 1);
  if (!code) throw new EnvelopeError(`empty ${what} code`);
  if (code.length > MAX_CODE) throw new EnvelopeError(`${what} code is too long (${code.length} characters)`);
  if (!B64URL.test(code) || code.length % 4 === 1) {
    throw new EnvelopeError(`${what} code is not base64url (copy it again, whole)`);
  }
  let raw;
  try {
    raw = await inflate(fromB64url(code));
  } catch (err) {
    if (err instanceof EnvelopeError) throw err;
    throw new EnvelopeError(`${what} code is damaged (not zlib data)`);
  }
  let items;
  try {
    items = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
  } catch {
    throw new EnvelopeError(`${what} code does not hold JSON`);
  }
  if (!Array.isArray(items) || !items.length) throw new EnvelopeError(`${what} code does not hold a JSON array`);
  if (items[0] !== VERSION) throw new EnvelopeError(`${what} code has version ${JSON.stringify(items[0]).slice(0, 16)}; this page reads version ${VERSION}`);
  if (items.length !== length) throw new EnvelopeError(`${what} code has ${items.length} fields, expected ${length}`);
  return items;
}

async function inflate(bytes) {
  const reader = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate")).getReader();
  const parts = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > MAX_JSON) {
      reader.cancel().catch(() => {});
      throw new EnvelopeError(`code expands beyond ${MAX_JSON} bytes`);
    }
    parts.push(value);
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

function toB64url(bytes) {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

function fromB64url(text) {
  const bin = atob(text.replaceAll("-", "+").replaceAll("_", "/") + "=".repeat((4 - (text.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}
