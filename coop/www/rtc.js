// WEB-6 over the tunnel (TUN-4): the page's transport interface on WebRTC
// DataChannels, so the UI runs unchanged on a phone that reached the daemon
// peer to peer.
//
// `coop-control` carries JSON requests {id, cmd, …}, each answered once with
// the same id. An `attach` makes the daemon open `coop-pty-<session>-<pty>`:
// its first message is text (the attach answer with the request's id), every
// later one binary IPC-5 stream frames (length(4, BE) | type(1) | payload;
// type 0 terminal bytes, 1 JSON control). Closing the channel detaches.

import {PtyStream, TransportError} from "./transport.js";

const DATA = 0;
const CONTROL = 1;
const MAX_INPUT_FRAME = 16 << 10; // interoperable DataChannel message size
const REQUEST_TIMEOUT_MS = 30000;
const ATTACH_TIMEOUT_MS = 10000; // an attach answers at once; a lost one is retried by the PtyStream
const CREATE_TIMEOUT_MS = 130000; // a session start may build its rootfs first

// IPC event names whose browser name differs (the WebSocket path renames them the same way)
const EVENT_TYPES = {pty_exited: "exited", pty_restarting: "restarting"};

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One IPC-5 stream frame. */
export function encodeFrame(type, payload) {
  const out = new Uint8Array(5 + payload.length);
  new DataView(out.buffer).setUint32(0, payload.length + 1);
  out[4] = type;
  out.set(payload, 5);
  return out;
}

/** Splits IPC-5 stream frames out of DataChannel messages (whole or cut anywhere). */
export class FrameReader {
  constructor() {
    this._buffer = new Uint8Array(0);
  }

  /** → [[type, payload: Uint8Array], …] for every frame completed by bytes. */
  feed(bytes) {
    let buffer = bytes;
    if (this._buffer.length) {
      buffer = new Uint8Array(this._buffer.length + bytes.length);
      buffer.set(this._buffer);
      buffer.set(bytes, this._buffer.length);
    }
    const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
    const frames = [];
    let at = 0;
    while (buffer.length - at >= 4) {
      const length = view.getUint32(at);
      if (length < 1) throw new TransportError("INTERNAL", "empty stream frame from the daemon");
      if (buffer.length - at - 4 < length) break;
      frames.push([buffer[at + 4], buffer.subarray(at + 5, at + 4 + length)]);
      at += 4 + length;
    }
    this._buffer = buffer.slice(at);
    return frames;
  }
}

/** The browser form of an IPC stream event ({event: "pty_exited", …} → {type: "exited", …});
 *  null for what is not an event (the answer to a detach). */
export function browserEvent(obj) {
  if (!obj || typeof obj.event !== "string") return null;
  const {event, ok, ...fields} = obj;
  return {type: EVENT_TYPES[event] ?? event, ...fields};
}

/** The transport of a connected tunnel: `pc` with its open `coop-control` channel. */
export class RtcTransport {
  constructor(pc, control) {
    this.pc = pc;
    this.control = control;
    this.timing = {answered: null, connected: null, firstByte: null}; // performance.now() stamps
    this._next = 0;
    this._requests = new Map(); // id → {resolve, reject, timer}
    this._links = new Map(); // attach id → the PTY link waiting for or holding its channel
    control.addEventListener("message", ({data}) => this._answer(data));
    control.addEventListener("close", () => this._closed());
    pc.addEventListener("datachannel", ({channel}) => {
      if (channel.label !== "coop-control") this._adopt(channel);
    });
  }

  /** → {sessions: [...], readOnly: false} */
  async listSessions() {
    const answer = await this._request({cmd: "ls"});
    return {sessions: answer.sessions || [], readOnly: false};
  }

  /** → {session, pid} */
  createSession({name, workspace}) {
    return this._request(name ? {cmd: "create", name, workspace} : {cmd: "create", workspace},
      CREATE_TIMEOUT_MS);
  }

  async killSession(name) {
    await this._request({cmd: "kill", session: name});
  }

  /** → {pty} */
  spawnShell(name, command) {
    return this._request(command ? {cmd: "shell", session: name, command} : {cmd: "shell", session: name});
  }

  async listDirs() {
    throw new TransportError("UNSUPPORTED", "Folders cannot be browsed over the tunnel: type the workspace's full path.");
  }

  async listRecordings() {
    throw new TransportError("UNSUPPORTED", "Recordings are not available over the tunnel.");
  }

  async fetchRecording() {
    throw new TransportError("UNSUPPORTED", "Recordings are not available over the tunnel.");
  }

  async upload() {
    throw new TransportError("UNSUPPORTED", "Uploads are not available over the tunnel: use `coop serve` on the LAN for them.");
  }

  /** A PtyStream for one PTY; reconnects and resumes on its own, as over WebSocket. */
  attachPty(session, pty, {cols, rows, offset = null} = {}) {
    return new PtyStream((params, sink) => this._openPty(params, sink), {session, pty, cols, rows, offset});
  }

  // -- PTY channels ------------------------------------------------------------

  _openPty({session, pty, cols, rows, offset}, sink) {
    const id = ++this._next;
    const link = {sink, channel: null, reader: new FrameReader(), ended: false, closing: false};
    this._links.set(id, link);
    const request = {cmd: "attach", session, pty};
    if (cols && rows) Object.assign(request, {cols, rows});
    if (offset !== null && offset !== undefined) request.offset = offset;
    this._request(request, ATTACH_TIMEOUT_MS, id).catch(() => this._end(id));
    const open = () => link.channel?.readyState === "open";
    return {
      send: (bytes) => {
        if (!open()) return false;
        for (let at = 0; at < bytes.length; at += MAX_INPUT_FRAME) {
          link.channel.send(encodeFrame(DATA, bytes.subarray(at, at + MAX_INPUT_FRAME)));
        }
        return true;
      },
      control: (obj) => open() && link.channel.send(encodeFrame(CONTROL, encoder.encode(JSON.stringify(obj)))),
      close: () => {
        link.closing = true;
        link.channel?.close();
        this._end(id);
      },
    };
  }

  /** A channel the daemon opened for an attach; its first (text) message names the request. */
  _adopt(channel) {
    channel.binaryType = "arraybuffer";
    let id = null;
    channel.addEventListener("message", ({data}) => {
      if (id === null) {
        id = this._claim(channel, data);
        return;
      }
      const link = this._links.get(id);
      if (link && typeof data !== "string") this._deliver(id, link, new Uint8Array(data));
    });
    channel.addEventListener("close", () => id !== null && this._end(id));
  }

  _claim(channel, first) {
    let answer = null;
    try {
      answer = JSON.parse(first);
    } catch {
      // not an attach answer: nobody's channel
    }
    const link = this._links.get(answer?.id);
    if (!link || link.channel || link.closing) {
      channel.close(); // detaches a PTY nobody waits for any more
      return -1;
    }
    link.channel = channel;
    return answer.id;
  }

  _deliver(id, link, bytes) {
    let frames;
    try {
      frames = link.reader.feed(bytes);
    } catch {
      link.channel.close();
      this._end(id);
      return;
    }
    for (const [type, payload] of frames) {
      if (type === DATA) {
        this.timing.firstByte ??= performance.now();
        link.sink.data(payload.slice());
      } else if (type === CONTROL) {
        let event = null;
        try {
          event = browserEvent(JSON.parse(decoder.decode(payload)));
        } catch {
          // a malformed control frame is not worth a dropped terminal
        }
        if (event) link.sink.event(event);
      }
    }
  }

  /** The link is over (channel closed, attach refused, tunnel gone): tell its stream once. */
  _end(id) {
    const link = this._links.get(id);
    if (!link) return;
    this._links.delete(id);
    if (!link.ended) {
      link.ended = true;
      link.sink.closed();
    }
  }

  // -- control requests --------------------------------------------------------

  _request(msg, timeout = REQUEST_TIMEOUT_MS, id = ++this._next) {
    if (this.control.readyState !== "open") {
      return Promise.reject(new TransportError("NETWORK", "The tunnel is closed."));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._requests.delete(id);
        reject(new TransportError("NETWORK", "The daemon did not answer over the tunnel."));
      }, timeout);
      this._requests.set(id, {resolve, reject, timer});
      this.control.send(JSON.stringify({...msg, id}));
    });
  }

  _answer(data) {
    let answer;
    try {
      answer = JSON.parse(data);
    } catch {
      return;
    }
    const request = this._requests.get(answer?.id);
    if (!request) return;
    this._requests.delete(answer.id);
    clearTimeout(request.timer);
    if (answer.ok) request.resolve(answer);
    else request.reject(new TransportError(answer.error || "INTERNAL", answer.message || answer.error));
  }

  _closed() {
    for (const {reject, timer} of this._requests.values()) {
      clearTimeout(timer);
      reject(new TransportError("NETWORK", "The tunnel is closed."));
    }
    this._requests.clear();
    for (const id of [...this._links.keys()]) this._end(id);
  }
}
