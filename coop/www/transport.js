// WEB-6: the one interface between the page and a coop daemon.
//
// The UI calls listSessions, createSession, killSession, spawnShell, listDirs,
// upload, attachPty, listRecordings and fetchRecording, and never learns what
// carries them. WebSocketTransport speaks HTTP + WebSocket to `coop serve`;
// RtcTransport (rtc.js) speaks the tunnel's DataChannels with the same methods
// and the same PtyStream.

export class TransportError extends Error {
  /** code: the daemon's error code (SESSION_NOT_FOUND, PERMISSION_DENIED, …),
   *  UNAUTHORIZED when the server refused us outright, NETWORK when unreachable. */
  constructor(code, message, status = 0) {
    super(message || code);
    this.code = code;
    this.status = status;
  }
}

// Delays between reconnect attempts; the last one repeats until the server is back.
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000];
// A channel that has not said "attached" by then is presumed dead (half-open network).
const ATTACH_TIMEOUT_MS = 10000;

const encoder = new TextEncoder();

/**
 * A PTY's byte stream that survives dropped connections (BYD-1).
 *
 * It counts the bytes it delivers from the offset the server announced in
 * "attached", and reconnects with `offset=` that count, so the server sends
 * exactly what was missed. When the server cannot continue from there (the
 * bytes left its scrollback, or a "lag" replay follows), the stream emits
 * {type: "reset"} first: the consumer clears its screen and the replay
 * redraws it, so output is never duplicated.
 *
 * Besides the server's events it emits {type: "connection", state} with
 * state "open" | "reconnecting" | "ended" (PTY exited, no restart) | "closed".
 *
 * `open(params, sink)` opens one channel for params {session, pty, cols, rows,
 * offset}; it calls sink.data(Uint8Array), sink.event(object) and, once,
 * sink.closed(); it returns {send(bytes), control(object), close()}.
 */
export class PtyStream {
  constructor(open, {session, pty, cols, rows, offset = null}) {
    this.session = session;
    this.pty = pty;
    this.state = "connecting";
    this._open = open;
    this._size = {cols, rows};
    this._sentSize = null;
    this._offset = offset;
    this._delivered = offset !== null; // the consumer already shows bytes up to _offset
    this._exited = false;
    this._closed = false;
    this._attempt = 0;
    this._generation = 0;
    this._channel = null;
    this._retryTimer = null;
    this._attachTimer = null;
    this._dataHandlers = new Set();
    this._eventHandlers = new Set();
    this.stats = {attached: 0, resumed: 0, resets: 0}; // for tests and debugging
    this._retryNow = () => this.state === "reconnecting" && this._connect();
    window.addEventListener("online", this._retryNow);
    queueMicrotask(() => this._connect()); // let the caller register handlers first
  }

  /** The stream offset of the next byte expected (null before the first "attached"). */
  get offset() {
    return this._offset;
  }

  /** Register fn(Uint8Array) for terminal output; returns an unsubscribe function. */
  onData(fn) {
    this._dataHandlers.add(fn);
    return () => this._dataHandlers.delete(fn);
  }

  /** Register fn(event) for control events; returns an unsubscribe function. */
  onEvent(fn) {
    this._eventHandlers.add(fn);
    return () => this._eventHandlers.delete(fn);
  }

  /** Send input (bytes or a string, sent as UTF-8). False when not connected. */
  send(data) {
    if (this.state !== "open") return false;
    this._channel.send(typeof data === "string" ? encoder.encode(data) : data);
    return true;
  }

  resize(cols, rows) {
    this._size = {cols, rows};
    this._sendSize();
  }

  /** Retry a reconnect at once instead of waiting out the backoff. */
  retry() {
    this._retryNow();
  }

  close() {
    if (this._closed) return;
    this._closed = true;
    this._stopTimers();
    window.removeEventListener("online", this._retryNow);
    this._generation++;
    this._channel?.close();
    this._channel = null;
    this._setState("closed");
  }

  /** Drop the current connection as a network failure would (tests, "reconnect now"). */
  drop() {
    if (!this._channel) return;
    const channel = this._channel;
    this._generation++;
    channel.close();
    this._lost();
  }

  _connect() {
    if (this._closed) return;
    this._stopTimers();
    const generation = ++this._generation;
    const current = (fn) => (...args) => generation === this._generation && fn(...args);
    this._sentSize = {...this._size}; // the size travels with the attach request
    this._channel = this._open(
      {session: this.session, pty: this.pty, ...this._size, offset: this._offset},
      {
        data: current((bytes) => this._receive(bytes)),
        event: current((event) => this._serverEvent(event)),
        closed: current(() => this._lost()),
      },
    );
    this._attachTimer = setTimeout(current(() => this.drop()), ATTACH_TIMEOUT_MS);
  }

  _receive(bytes) {
    if (this._offset !== null) this._offset += bytes.length;
    this._delivered = true;
    for (const fn of this._dataHandlers) fn(bytes);
  }

  _serverEvent(event) {
    switch (event.type) {
      case "attached": {
        clearTimeout(this._attachTimer);
        const known = Number.isInteger(event.offset);
        const resumed = this._delivered && known && event.offset === this._offset;
        this.stats.attached++;
        if (resumed) this.stats.resumed++;
        else if (this._delivered) this._reset();
        this._offset = known ? event.offset : null;
        this._attempt = 0;
        this._emit(event);
        this._setState("open");
        this._sendSize();
        return;
      }
      case "lag":
        this._emit(event);
        if (Number.isInteger(event.offset)) this._offset = event.offset;
        this._reset();
        return;
      case "exited":
        this._exited = true;
        break;
      case "restarting":
        this._exited = false;
        break;
    }
    this._emit(event);
  }

  _reset() {
    this.stats.resets++;
    this._delivered = false;
    this._emit({type: "reset"});
  }

  _lost() {
    this._channel = null;
    clearTimeout(this._attachTimer);
    if (this._closed) return;
    if (this._exited) {
      this._setState("ended");
      return;
    }
    this._setState("reconnecting");
    const delay = BACKOFF_MS[Math.min(this._attempt++, BACKOFF_MS.length - 1)];
    this._retryTimer = setTimeout(() => this._connect(), delay);
  }

  _sendSize() {
    const {cols, rows} = this._size;
    if (this.state !== "open" || !cols || !rows) return;
    if (this._sentSize && this._sentSize.cols === cols && this._sentSize.rows === rows) return;
    this._sentSize = {cols, rows};
    this._channel.control({type: "resize", cols, rows});
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit({type: "connection", state});
  }

  _emit(event) {
    for (const fn of this._eventHandlers) fn(event);
  }

  _stopTimers() {
    clearTimeout(this._retryTimer);
    clearTimeout(this._attachTimer);
  }
}

/** The page's transport: on the connect page (`/connect/` of `coop serve`, `connect[.html]`
 *  of an export) the tunnel's, once connected; elsewhere `coop serve`'s WebSocket. */
export async function pageTransport(url = window.location) {
  if (/\/connect(?:\/|\.html)?$/.test(url.pathname)) return (await import("./connect.js")).connect();
  return new WebSocketTransport();
}

/** The transport for `coop serve`: JSON over same-origin HTTP, PTYs over WebSocket. */
export class WebSocketTransport {
  constructor(base = window.location.href) {
    this.base = new URL("/", base);
  }

  /** → {sessions: [...], readOnly: bool} */
  async listSessions() {
    const answer = await this._request("GET", "/api/sessions");
    return {sessions: answer.sessions || [], readOnly: Boolean(answer.read_only)};
  }

  /** → {session, pid} */
  createSession({name, workspace}) {
    return this._request("POST", "/api/sessions", name ? {name, workspace} : {workspace});
  }

  async killSession(name) {
    await this._request("DELETE", `/api/sessions/${encodeURIComponent(name)}`);
  }

  /** → {pty} */
  spawnShell(name, command) {
    return this._request("POST", `/api/sessions/${encodeURIComponent(name)}/shell`,
      command ? {command} : {});
  }

  /** Directories under the user's home → {path, dirs: [names]} */
  listDirs(path = "") {
    return this._request("GET", `/api/dirs?${new URLSearchParams({path})}`);
  }

  /** Store a File/Blob in the session's workspace → {path} as seen inside the sandbox. */
  upload(name, file) {
    const query = new URLSearchParams({filename: file.name || "upload"});
    return this._request("POST", `/api/sessions/${encodeURIComponent(name)}/upload?${query}`, file);
  }

  /** A session's recordings, also after it ended (BYD-3) → [{name, pty, size, started, duration}] */
  async listRecordings(name) {
    const answer = await this._request("GET", `/api/sessions/${encodeURIComponent(name)}/recordings`);
    return answer.recordings || [];
  }

  /** One recording's asciicast v2 text. */
  async fetchRecording(name, file) {
    const path = `/api/sessions/${encodeURIComponent(name)}/recordings/${encodeURIComponent(file)}`;
    let response;
    try {
      response = await fetch(new URL(path, this.base), {credentials: "same-origin"});
    } catch {
      throw new TransportError("NETWORK", "The coop server cannot be reached.");
    }
    if (response.ok) return response.text();
    const answer = await response.json().catch(() => null);
    throw new TransportError(answer?.error || "INTERNAL", answer?.message || `Server answered ${response.status}.`,
      response.status);
  }

  /** A PtyStream for one PTY; reconnects and resumes on its own. */
  attachPty(session, pty, {cols, rows, offset = null} = {}) {
    return new PtyStream((params, sink) => this._openSocket(params, sink),
      {session, pty, cols, rows, offset});
  }

  _openSocket({session, pty, cols, rows, offset}, sink) {
    const query = new URLSearchParams({session, pty: String(pty)});
    if (offset !== null && offset !== undefined) query.set("offset", String(offset));
    if (cols && rows) {
      query.set("cols", String(cols));
      query.set("rows", String(rows));
    }
    const url = new URL(`/ws?${query}`, this.base);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    ws.onmessage = (message) => {
      if (typeof message.data !== "string") return sink.data(new Uint8Array(message.data));
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return; // a malformed control message is not worth a dropped terminal
      }
      sink.event(event);
    };
    ws.onclose = () => sink.closed();
    const open = () => ws.readyState === WebSocket.OPEN;
    return {
      send: (bytes) => open() && ws.send(bytes),
      control: (obj) => open() && ws.send(JSON.stringify(obj)),
      close: () => ws.close(),
    };
  }

  async _request(method, path, body) {
    const init = {method, credentials: "same-origin", headers: {}};
    if (body instanceof Blob) {
      init.body = body;
      init.headers["Content-Type"] = "application/octet-stream";
    } else if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(new URL(path, this.base), init);
    } catch (err) {
      throw new TransportError("NETWORK", "The coop server cannot be reached.");
    }
    let answer = null;
    try {
      answer = await response.json();
    } catch {
      // a bare 403 (no valid token) or a proxy's error page: no JSON
    }
    if (response.ok && answer && answer.ok !== false) return answer;
    if (!answer) {
      if (response.status === 403) {
        throw new TransportError("UNAUTHORIZED", "Not authorized: open the link with its token again.", 403);
      }
      throw new TransportError("INTERNAL", `Server answered ${response.status}.`, response.status);
    }
    throw new TransportError(answer.error || "INTERNAL", answer.message || answer.error, response.status);
  }
}
