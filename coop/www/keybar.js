// The row of keys phones lack (WEB-5): Esc, Tab, a sticky Ctrl, arrows and
// a few symbols that hide deep in touch keyboards.

import {h} from "./dom.js";
import {arrow, ctrlOf} from "./keys.js";

const KEYS = [
  {label: "Esc", name: "Escape", send: () => "\x1b"},
  {label: "Tab", name: "Tab", send: () => "\t"},
  {label: "Ctrl", name: "Control (applies to the next key)", sticky: true},
  {label: "←", name: "Left arrow", send: (app) => arrow("left", app)},
  {label: "↑", name: "Up arrow", send: (app) => arrow("up", app)},
  {label: "↓", name: "Down arrow", send: (app) => arrow("down", app)},
  {label: "→", name: "Right arrow", send: (app) => arrow("right", app)},
  {label: "|", name: "Pipe", send: () => "|"},
  {label: "/", name: "Slash", send: () => "/"},
  {label: "~", name: "Tilde", send: () => "~"},
  {label: "-", name: "Dash", send: () => "-"},
];

export class KeyBar {
  /** send(data) delivers to the focused PTY; appMode() tells whether the
   *  terminal wants application cursor keys. */
  constructor(container, {send, appMode, extra = []}) {
    this._send = send;
    this._appMode = appMode;
    this.ctrl = false;
    this._ctrlButton = null;
    const buttons = KEYS.map((key) => {
      const button = h("button", {
        type: "button", class: "key", "aria-label": key.name, title: key.name,
        "aria-pressed": key.sticky ? "false" : undefined,
        onclick: () => (key.sticky ? this.setCtrl(!this.ctrl) : this.press(key.send(this._appMode()))),
      }, key.label);
      if (key.sticky) this._ctrlButton = button;
      return button;
    });
    container.append(h("div", {class: "keybar-row"},
      h("div", {class: "keys", role: "toolbar", "aria-label": "Terminal keys"}, buttons),
      extra.length ? h("div", {class: "keys-extra"}, extra) : null));
    // Keys must not take focus away from the terminal, or the phone keyboard closes.
    container.addEventListener("pointerdown", (event) => {
      if (event.target.closest("button")) event.preventDefault();
    });
  }

  setCtrl(on) {
    this.ctrl = on;
    this._ctrlButton.setAttribute("aria-pressed", String(on));
    this._ctrlButton.classList.toggle("on", on);
  }

  press(data) {
    this._send(this.apply(data));
  }

  /** Input from anywhere passes through here so the sticky Ctrl modifies the next key. */
  apply(data) {
    if (!this.ctrl || typeof data !== "string") return data;
    this.setCtrl(false);
    return ctrlOf(data) ?? data;
  }
}
