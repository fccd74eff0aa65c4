// Asciicast v2 recordings on the page (BYD-3): parsing, and a playback
// timeline that says which events are due at a given moment. No timers and
// no DOM: the player drives it with its own clock (milliseconds).

export class CastError extends Error {}

/** The text of a .cast file → {header, events: [[seconds, code, data]]}. A half-written
 *  last line (the session may still be recording) is left out. */
export function parseCast(text) {
  if (!text) throw new CastError("Nothing of this recording is on disk yet: it is written every few seconds.");
  const lines = text.split("\n");
  let header = null;
  try {
    header = JSON.parse(lines[0]);
  } catch {
    // reported below
  }
  if (!header || header.version !== 2) throw new CastError("This is not an asciicast v2 recording.");
  const events = [];
  const last = lines.length - 1;
  for (let i = 1; i <= last; i++) {
    if (!lines[i]) continue;
    let event;
    try {
      event = JSON.parse(lines[i]);
    } catch {
      if (i === last) break;
      throw new CastError(`Line ${i + 1} of the recording is not JSON.`);
    }
    if (Array.isArray(event) && typeof event[0] === "number" && typeof event[1] === "string"
        && typeof event[2] === "string") events.push(event);
  }
  return {header, events};
}

/** An "r" event's "COLSxROWS" → {cols, rows}, or null. */
export function sizeOf(data) {
  const match = /^(\d{1,4})x(\d{1,4})$/.exec(data);
  return match ? {cols: Number(match[1]), rows: Number(match[2])} : null;
}

/** Where a replay is: recording time advances with the clock times the speed while playing. */
export class Playback {
  constructor(events, {speed = 1} = {}) {
    this.events = events;
    this.speed = speed;
    this.index = 0; // the next event to hand out
    this._base = 0; // recording seconds at _since
    this._since = null; // clock reading when play began; null while paused
  }

  get duration() {
    return this.events.length ? this.events[this.events.length - 1][0] : 0;
  }

  get playing() {
    return this._since !== null;
  }

  get done() {
    return this.index >= this.events.length;
  }

  /** Recording seconds at clock reading now (never past the end). */
  position(now) {
    return Math.min(this._at(now), this.duration);
  }

  play(now) {
    if (!this.playing) this._since = now;
  }

  pause(now) {
    this._base = this.position(now);
    this._since = null;
  }

  setSpeed(speed, now) {
    if (this.playing) {
      this._base = this.position(now);
      this._since = now;
    }
    this.speed = speed;
  }

  /** Back to the start; keeps playing if it was. */
  rewind(now) {
    this.index = 0;
    this._base = 0;
    if (this.playing) this._since = now;
  }

  /** The events due by now, in order, each handed out once. */
  due(now) {
    const t = this._at(now);
    const out = [];
    while (this.index < this.events.length && this.events[this.index][0] <= t) out.push(this.events[this.index++]);
    return out;
  }

  /** Milliseconds until the next event is due; null while paused or at the end. */
  wait(now) {
    if (!this.playing || this.done) return null;
    return Math.max(0, ((this.events[this.index][0] - this._at(now)) * 1000) / this.speed);
  }

  _at(now) {
    return this._since === null ? this._base : this._base + ((now - this._since) / 1000) * this.speed;
  }
}
