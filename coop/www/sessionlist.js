// The session list (WEB-5): state, clients, the "waiting" badge (BYD-2), a
// recordings button (BYD-3) and a kill button per session. Rebuilt only when
// what it shows changed.

import {h, iconButton} from "./dom.js";

const STATE_TEXT = {
  running: "running", starting: "starting", restarting: "restarting", exited: "exited",
  waiting: "waiting for input",
};

/** The last two components of a path: enough to recognise a project. */
export function shortPath(path) {
  const parts = path.split("/").filter(Boolean);
  return parts.length > 2 ? `…/${parts.slice(-2).join("/")}` : path;
}

function clientText(s) {
  const parts = [];
  if (s.local_clients) parts.push(`${s.local_clients} local`);
  if (s.web_clients) parts.push(`${s.web_clients} web`);
  if (s.tunnel_clients) parts.push(`${s.tunnel_clients} phone`);
  return parts.length ? parts.join(" · ") : "no clients";
}

export class SessionList {
  /** onOpen(name), onKill(name), onRecordings(name) */
  constructor(list, {onOpen, onKill, onRecordings}) {
    this.list = list;
    this.onOpen = onOpen;
    this.onKill = onKill;
    this.onRecordings = onRecordings;
    this._signature = "";
  }

  render(sessions, current, readOnly) {
    const signature = JSON.stringify([sessions.map((s) => [s.name, s.state, s.workspace, s.ptys.length,
      s.local_clients, s.web_clients, s.tunnel_clients]), current, readOnly]);
    if (signature === this._signature) return;
    this._signature = signature;
    const focused = document.activeElement?.closest?.("[data-session]");
    const focusKey = focused && this.list.contains(focused)
      ? [focused.dataset.session, document.activeElement.dataset.role] : null;
    this.list.replaceChildren(...sessions.map((s) => this._item(s, s.name === current, readOnly)));
    if (focusKey) {
      const again = this.list.querySelector(`[data-session="${CSS.escape(focusKey[0])}"] [data-role="${focusKey[1]}"]`);
      again?.focus();
    }
  }

  _item(s, isCurrent, readOnly) {
    const state = s.state in STATE_TEXT ? s.state : "running";
    const shells = s.ptys.filter((p) => p.role === "shell").length;
    return h("li", {class: `session state-${state}`, dataset: {session: s.name}},
      h("button", {type: "button", class: "session-open", "aria-current": isCurrent ? "true" : undefined,
        dataset: {role: "open"}, onclick: () => this.onOpen(s.name)},
      h("span", {class: "session-line"},
        h("span", {class: "state-dot", "aria-hidden": "true"}),
        h("span", {class: "session-name"}, s.name),
        state === "waiting" ? h("span", {class: "badge badge-waiting"}, "waiting") : null),
      h("span", {class: "session-meta", title: s.workspace}, shortPath(s.workspace)),
      h("span", {class: "session-meta"},
        h("span", {class: "visually-hidden"}, `${STATE_TEXT[state] || state}, `),
        state !== "running" && state !== "waiting" ? `${STATE_TEXT[state]} · ` : "",
        shells ? `${shells} shell${shells > 1 ? "s" : ""} · ` : "", clientText(s))),
      this._recordingsButton(s.name),
      readOnly ? null : this._killButton(s.name));
  }

  _recordingsButton(name) {
    const button = iconButton("eye", `Recordings of ${name}`, () => this.onRecordings(name),
      {cls: "btn-ghost session-recordings"});
    button.dataset.role = "recordings";
    return button;
  }

  _killButton(name) {
    const button = iconButton("trash", `Kill session ${name}`, () => this.onKill(name), {cls: "btn-ghost session-kill"});
    button.dataset.role = "kill";
    return button;
  }
}
