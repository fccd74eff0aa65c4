// The recording player (BYD-3): takes the terminal panel's place and replays
// a session's recordings in a read-only terminal, with their original timing
// at 1×, 2× or 10×, at the size the PTY had (resized on "r" events).

import {h, iconButton} from "./dom.js";
import {TerminalView} from "./terminal.js";
import {Playback, parseCast, sizeOf} from "./cast.js";

const SPEEDS = [1, 2, 10];
const REDRAW_MS = 250; // the time display moves at least this often while playing

// the player's own styles, next to the page's (style-src 'self' allows a linked sheet)
if (!document.querySelector('link[href="player.css"]')) {
  document.head.append(h("link", {rel: "stylesheet", href: "player.css"}));
}

/** A terminal at the recording's size instead of its panel's. */
class ReplayView extends TerminalView {
  _fit() {}

  /** Resize once the output written before has been drawn, as the PTY was. */
  resizeAfterWrites(cols, rows) {
    this.term.write("", () => this.term.resize(cols, rows));
  }
}

function clock() {
  return performance.now();
}

function minutes(seconds) {
  const s = Math.floor(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/** "agent · 14:03 · 0:42" for the recording picker. */
function describe(rec) {
  const who = rec.pty === 0 ? "agent" : `shell ${rec.pty}`;
  const when = rec.started ? new Date(rec.started * 1000).toLocaleString([], {dateStyle: "short", timeStyle: "short"}) : rec.name;
  return `${who} · ${when} · ${minutes(rec.duration || 0)}`;
}

export class Player {
  /**
   * session: its name; recordings: the API's list (the newest is played first);
   * fetch(file) → the .cast text; covers: the elements the player hides while open
   * (its section goes after the first); onClose() once it is gone.
   */
  constructor({session, recordings, fetch, covers, theme, onClose}) {
    this.session = session;
    this.recordings = recordings;
    this._fetch = fetch;
    this._covers = covers;
    this._onClose = onClose;
    this.state = "loading"; // "loading" | "playing" | "paused" | "ended" | "failed"
    this.speed = 1;
    this.timing = {started: null, ended: null}; // clock stamps of the last run from the start
    this.playback = null;
    this._timer = 0;
    this._loads = 0;
    this._build();
    covers[0].after(this.el);
    for (const el of covers) el.hidden = true;
    this.view = new ReplayView(this.body, {theme, readOnly: true});
    this.load(recordings[recordings.length - 1].name);
  }

  _build() {
    this.picker = h("select", {class: "input player-picker", "aria-label": "Recording",
      onchange: () => this.load(this.picker.value)},
    ...this.recordings.map((rec) => h("option", {value: rec.name}, describe(rec))));
    this.playButton = h("button", {type: "button", class: "btn btn-small player-play", onclick: () => this.toggle()}, "Play");
    this.speedButtons = SPEEDS.map((speed) => h("button", {type: "button", class: "btn btn-small btn-ghost",
      "aria-pressed": String(speed === this.speed), dataset: {speed}, onclick: () => this.setSpeed(speed)}, `${speed}×`));
    this.time = h("span", {class: "player-time", "aria-live": "off"}, "0:00");
    this.progress = h("progress", {class: "player-progress", max: "1", value: "0", "aria-label": "Position"});
    this.body = h("div", {class: "pane-body player-body"});
    this.el = h("section", {class: "panes player", "aria-label": `Recordings of ${this.session}`},
      h("div", {class: "pane active"},
        h("div", {class: "player-bar"},
          h("div", {class: "player-row"},
            h("span", {class: "player-title"}, this.session),
            this.picker,
            iconButton("close", "Close the player", () => this.close(), {cls: "btn-ghost btn-small player-close"})),
          h("div", {class: "player-row"},
            this.playButton,
            h("button", {type: "button", class: "btn btn-small btn-ghost", onclick: () => this.restart()}, "Restart"),
            h("span", {class: "player-speeds", role: "group", "aria-label": "Speed"}, ...this.speedButtons),
            this.time)),
        this.progress,
        this.body));
  }

  /** Fetch one recording and play it from the start. */
  async load(file) {
    const load = ++this._loads;
    this._stop();
    this.picker.value = file;
    this._setState("loading");
    let cast;
    try {
      cast = parseCast(await this._fetch(file));
    } catch (err) {
      if (load !== this._loads || this.closed) return;
      this._setState("failed");
      this.view.reset();
      this.view.write(`\r\n  ${err.message}\r\n`);
      return;
    }
    if (load !== this._loads || this.closed) return;
    this.header = cast.header;
    this.playback = new Playback(cast.events, {speed: this.speed});
    this.restart();
  }

  toggle() {
    if (!this.playback) return;
    if (this.state === "playing") {
      this.playback.pause(clock());
      this._stop();
      this._setState("paused");
      this._drawTime();
    } else if (this.state === "ended") {
      this.restart();
    } else {
      this.playback.play(clock());
      this._setState("playing");
      this._tick();
    }
  }

  /** From the first frame, at the recording's first size. */
  restart() {
    if (!this.playback) return;
    this._stop();
    this.view.reset();
    const {width, height} = this.header;
    if (width > 0 && height > 0) this.view.resizeAfterWrites(width, height);
    const now = clock();
    this.playback.rewind(now);
    this.playback.play(now);
    this.timing = {started: now, ended: null};
    this._setState("playing");
    this._tick();
  }

  setSpeed(speed) {
    this.speed = speed;
    this.playback?.setSpeed(speed, clock());
    for (const button of this.speedButtons) button.setAttribute("aria-pressed", String(Number(button.dataset.speed) === speed));
    if (this.state === "playing") this._tick();
  }

  setTheme(theme) {
    this.view.setTheme(theme);
  }

  lines() {
    return this.view.lines();
  }

  get size() {
    return {cols: this.view.cols, rows: this.view.rows};
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this._stop();
    this.view.dispose();
    this.el.remove();
    for (const el of this._covers) el.hidden = false;
    this._onClose();
  }

  _tick() {
    this._stop();
    const now = clock();
    let text = "";
    for (const [, code, data] of this.playback.due(now)) {
      if (code === "o") {
        text += data;
      } else if (code === "r" && sizeOf(data)) {
        this.view.write(text);
        text = "";
        const {cols, rows} = sizeOf(data);
        this.view.resizeAfterWrites(cols, rows);
      }
    }
    if (text) this.view.write(text);
    this._drawTime(now);
    if (this.playback.done) {
      this.playback.pause(now);
      this.timing.ended = now;
      this._setState("ended");
      return;
    }
    this._timer = setTimeout(() => this._tick(), Math.min(this.playback.wait(now), REDRAW_MS));
  }

  _stop() {
    clearTimeout(this._timer);
    this._timer = 0;
  }

  _setState(state) {
    this.state = state;
    this.el.dataset.state = state;
    this.playButton.textContent = state === "playing" ? "Pause" : state === "ended" ? "Replay" : "Play";
    this.playButton.disabled = state === "loading" || state === "failed";
  }

  _drawTime(now = clock()) {
    const duration = this.playback?.duration || 0;
    const at = this.playback?.position(now) || 0;
    this.time.textContent = `${minutes(at)} / ${minutes(duration)}`;
    this.progress.value = duration ? at / duration : 0;
  }
}
