// The xterm.js wrapper: one terminal that fits its panel, reports size
// changes, and hands typed input out as strings or bytes.

import {Terminal} from "./vendor/xterm.mjs";
import {FitAddon} from "./vendor/addon-fit.mjs";
import {adoptInlineStyles} from "./styles.js";

// Calm, legible palettes; the dark one is the default theme of the page.
const THEMES = {
  dark: {
    background: "#0e1116", foreground: "#d5dae3", cursor: "#e6b450", cursorAccent: "#0e1116",
    selectionBackground: "#2c3a52",
    black: "#1b2029", red: "#ef6b73", green: "#8fcf7a", yellow: "#e6c06a",
    blue: "#6cb1f2", magenta: "#c49cf0", cyan: "#5ccfc8", white: "#c7ccd6",
    brightBlack: "#5d6675", brightRed: "#ff8c93", brightGreen: "#a9e596", brightYellow: "#f2d58a",
    brightBlue: "#8cc6ff", brightMagenta: "#d7b8ff", brightCyan: "#7fe3dc", brightWhite: "#f1f4f8",
  },
  light: {
    background: "#fbfbf9", foreground: "#26292f", cursor: "#b26b00", cursorAccent: "#fbfbf9",
    selectionBackground: "#cfe0f7",
    black: "#26292f", red: "#c4343e", green: "#3e8a2f", yellow: "#9a6a00",
    blue: "#2864b8", magenta: "#8a44b8", cyan: "#1f8a86", white: "#8d939c",
    brightBlack: "#5a606b", brightRed: "#d9505a", brightGreen: "#4f9f3f", brightYellow: "#b07d0c",
    brightBlue: "#3b7bd4", brightMagenta: "#9f5ccc", brightCyan: "#2ea19c", brightWhite: "#b4b9c1",
  },
};

const FONT = '"JetBrains Mono", "Cascadia Mono", "SF Mono", ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", "Liberation Mono", monospace';

export class TerminalView {
  constructor(parent, {theme = "dark", readOnly = false, compact = false} = {}) {
    this.element = document.createElement("div");
    this.element.className = "term";
    parent.append(this.element);
    this.term = new Terminal({
      fontFamily: FONT,
      fontSize: compact ? 12 : 13,
      lineHeight: 1.15,
      scrollback: 10000,
      cursorBlink: !readOnly,
      disableStdin: readOnly,
      macOptionIsMeta: true,
      theme: THEMES[theme],
    });
    this._fitter = new FitAddon();
    this.term.loadAddon(this._fitter);
    this._styles = adoptInlineStyles(this.element);
    this.term.open(this.element);
    this._frame = 0;
    this._observer = new ResizeObserver(() => this._scheduleFit());
    this._observer.observe(this.element);
    // xterm measures its cells after open(); the first fit waits for a frame (or a
    // moment, in a background tab without frames) so attaching can carry the real size
    this.ready = new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        cancelAnimationFrame(this._frame);
        this._fit();
        resolve();
      };
      const timer = setTimeout(done, 100);
      this._frame = requestAnimationFrame(done);
    });
  }

  /** fn(string | Uint8Array) for every keystroke, paste or terminal report. */
  onInput(fn) {
    const text = this.term.onData((data) => fn(data));
    // onBinary carries raw bytes (some mouse reports) as a string of char codes
    const binary = this.term.onBinary((data) => fn(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
    return () => {
      text.dispose();
      binary.dispose();
    };
  }

  /** fn(KeyboardEvent) sees each key first; returning false keeps it from the terminal. */
  interceptKeys(fn) {
    this.term.attachCustomKeyEventHandler(fn);
  }

  /** fn(cols, rows) after the terminal grid changed size. */
  onResize(fn) {
    const sub = this.term.onResize(({cols, rows}) => fn(cols, rows));
    return () => sub.dispose();
  }

  get cols() {
    return this.term.cols;
  }

  get rows() {
    return this.term.rows;
  }

  /** DEC modes the key bar needs to send the right sequences. */
  get modes() {
    return this.term.modes;
  }

  /** Terminal bytes; xterm decodes UTF-8 itself, across chunk boundaries. */
  write(bytes) {
    this.term.write(bytes);
  }

  /** Forget screen and history (a replay that restarts the stream follows). */
  reset() {
    this.term.reset();
  }

  focus() {
    this.term.focus();
  }

  setTheme(name) {
    this.term.options.theme = THEMES[name];
  }

  /** The buffer as logical lines (wrapped rows joined), for tests and debugging. */
  lines() {
    const buffer = this.term.buffer.active;
    const out = [];
    for (let i = 0; i < buffer.length; i++) {
      const line = buffer.getLine(i);
      const text = line.translateToString(true);
      if (line.isWrapped && out.length) out[out.length - 1] += text;
      else out.push(text);
    }
    while (out.length && out[out.length - 1] === "") out.pop();
    return out;
  }

  dispose() {
    cancelAnimationFrame(this._frame);
    this._observer.disconnect();
    this.term.dispose();
    this._styles.disconnect();
    this.element.remove();
  }

  _scheduleFit() {
    cancelAnimationFrame(this._frame);
    this._frame = requestAnimationFrame(() => this._fit());
  }

  _fit() {
    if (!this.element.isConnected || this.element.clientWidth === 0) return;
    const size = this._fitter.proposeDimensions();
    if (!size || !size.cols || !size.rows) return;
    if (size.cols !== this.term.cols || size.rows !== this.term.rows) this.term.resize(size.cols, size.rows);
  }
}
