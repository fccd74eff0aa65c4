// Short notices in a corner (blocked input, lag, errors, finished uploads).
// Repeats of the same notice refresh one toast instead of stacking.

import {h, iconButton} from "./dom.js";

const shown = new Map(); // key → {el, timer}

/** notify("text", {kind: "info"|"ok"|"warn"|"error", key, timeout, action: {label, run}}) */
export function notify(message, {kind = "info", key = message, timeout = 5000, action = null} = {}) {
  const region = document.getElementById("notices");
  dismiss(key);
  const el = h("div", {class: `notice notice-${kind}`, role: kind === "error" || kind === "warn" ? "alert" : "status",
    dataset: {key}},
  h("span", {class: "notice-text"}, message),
  action && h("button", {type: "button", class: "btn btn-small btn-primary", onclick: () => {
    action.run();
    dismiss(key);
  }}, action.label),
  iconButton("close", "Dismiss", () => dismiss(key), {cls: "btn-ghost btn-small"}));
  region.append(el);
  const timer = timeout ? setTimeout(() => dismiss(key), timeout) : 0;
  shown.set(key, {el, timer});
}

export function dismiss(key) {
  const entry = shown.get(key);
  if (!entry) return;
  clearTimeout(entry.timer);
  entry.el.remove();
  shown.delete(key);
}
