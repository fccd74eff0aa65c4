// The open session: PTY tabs (agent pinned first) and the terminal panes,
// side by side and resizable on wide screens, one at a time on phones.
//
// A pane exists only while it is visible: hidden PTYs hold no stream, so
// they never hold the PTY's size down (PTY-4) or cost bandwidth.

import {h, icon, iconButton} from "./dom.js";
import {TerminalView} from "./terminal.js";
import {notify} from "./notices.js";

const MIN_FRACTION = 0.15; // no split pane shrinks below this share of the width
const SWIPE_PX = 60;

function ptyLabel(pty) {
  return pty.role === "agent" ? "agent" : `shell ${pty.id}`;
}

function ordered(ptys) {
  return [...ptys].sort((a, b) => (a.role === "agent" ? -1 : b.role === "agent" ? 1 : a.id - b.id));
}

class Pane {
  constructor(bench, pty) {
    this.bench = bench;
    this.pty = pty;
    this.title = h("span", {class: "pane-title"});
    this.status = h("div", {class: "pane-status", role: "status", hidden: true});
    this.body = h("div", {class: "pane-body"});
    this.el = h("div", {class: "pane", role: "tabpanel", id: `pane-${pty}`, dataset: {pty}},
      h("div", {class: "pane-head"}, this.title,
        iconButton("close", "Close this pane", () => bench.unsplit(pty), {cls: "btn-ghost btn-small pane-close"})),
      this.body, this.status);
    this.el.addEventListener("focusin", () => bench.activate(pty));
  }

  /** Create terminal and stream; the element must be in the document to measure. */
  async start() {
    const bench = this.bench;
    this.view = new TerminalView(this.body, {theme: bench.theme, readOnly: bench.readOnly, compact: bench.narrow});
    await this.view.ready;
    if (this.disposed) return;
    this.stream = bench.transport.attachPty(bench.session.name, this.pty, {cols: this.view.cols, rows: this.view.rows});
    this.stream.onData((bytes) => this.view.write(bytes));
    this.stream.onEvent((event) => this._event(event));
    this.view.onResize((cols, rows) => this.stream.resize(cols, rows));
    this.view.onInput((data) => {
      if (!bench.readOnly) this.stream.send(bench.filterInput(data));
    });
    this.view.interceptKeys((event) => bench.terminalKey(event));
  }

  setLabel(text) {
    this.title.textContent = text;
    this.el.setAttribute("aria-label", text);
  }

  _event(event) {
    switch (event.type) {
      case "reset":
        this.view.reset();
        break;
      case "connection":
        this._showState(event.state);
        break;
      case "blocked":
        notify("Input blocked: the agent cannot be exited from the web. Use a local terminal.",
          {kind: "warn", key: "blocked"});
        this.el.classList.remove("flash");
        void this.el.offsetWidth; // restart the animation
        this.el.classList.add("flash");
        break;
      case "lag":
        notify(`This connection fell behind; ${event.dropped ?? "some"} bytes were skipped and the screen was redrawn.`,
          {kind: "info", key: "lag"});
        break;
      case "exited":
        this.exitCode = event.code;
        this.bench.onSessionEvent();
        break;
      case "attached":
      case "attention":
      case "restarting":
        this.bench.onSessionEvent();
        break;
      case "detached":
        notify("The server detached this terminal; reconnecting.", {key: "detached"});
        break;
    }
  }

  _showState(state) {
    this.el.dataset.connection = state;
    if (state === "open" || state === "closed") {
      this.status.hidden = true;
      return;
    }
    const ended = state === "ended";
    const text = ended
      ? `Process exited${this.exitCode === undefined || this.exitCode === null ? "" : ` (code ${this.exitCode})`}`
      : "Connection lost — reconnecting…";
    this.status.replaceChildren(h("span", {class: ended ? "" : "spinner", "aria-hidden": "true"}), h("span", {}, text),
      ended ? null : h("button", {type: "button", class: "btn btn-small", onclick: () => this.stream.retry()}, "Retry now"));
    this.status.hidden = false;
  }

  dispose() {
    this.disposed = true;
    this.stream?.close();
    this.view?.dispose();
    this.el.remove();
  }
}

export class Workbench {
  /**
   * tabs, panes: container elements. filterInput(data) lets the key bar's
   * sticky Ctrl modify typed input; terminalKey(KeyboardEvent) → false to keep
   * a key from the terminal (page shortcuts); onChange() after any layout change;
   * onSessionEvent() when a stream tells of a change the session list shows (a client
   * attached, the agent waits for input (BYD-2), exited or restarts).
   */
  constructor({tabs, panes, transport, theme, filterInput, terminalKey, onChange, onSessionEvent}) {
    this.tabsEl = tabs;
    this.panesEl = panes;
    this.transport = transport;
    this.theme = theme;
    this.filterInput = filterInput;
    this.terminalKey = terminalKey;
    this.onChange = onChange;
    this.onSessionEvent = onSessionEvent;
    this.readOnly = false;
    this.narrow = false;
    this.session = null;
    this.layout = null;
    this.panes = new Map(); // pty id → Pane
    this._handles = []; // the drag handle after pane i: kept, so a poll that changes nothing rebuilds nothing
    this._swipeFrom = null;
    panes.addEventListener("touchstart", (e) => this._touchStart(e), {passive: true});
    panes.addEventListener("touchend", (e) => this._touchEnd(e), {passive: true});
    tabs.addEventListener("keydown", (e) => this._tabKey(e));
  }

  /** Show a session with its remembered layout (mutated in place as the user works). */
  open(session, layout) {
    if (this.session?.name !== session.name) this.close();
    this.session = session;
    this.layout = layout;
    this.update(session);
  }

  close() {
    for (const pane of this.panes.values()) pane.dispose();
    this.panes.clear();
    this.session = null;
    this.layout = null;
    this._tabsSignature = "";
    this.tabsEl.replaceChildren();
    this.panesEl.replaceChildren();
  }

  /** New session info from a poll: PTYs came or went. */
  update(session) {
    this.session = session;
    const L = this.layout;
    const ids = new Set(session.ptys.map((p) => p.id));
    const kept = L.panes.map((pty, i) => [pty, L.sizes[i] ?? 1]).filter(([pty]) => ids.has(pty) || pty === 0);
    L.panes = kept.length ? kept.map(([pty]) => pty) : [0];
    L.sizes = kept.length ? normalise(kept.map(([, size]) => size)) : [1];
    if (!L.panes.includes(L.active)) L.active = L.panes[0];
    this._renderTabs();
    this._renderPanes();
  }

  get active() {
    return this.panes.get(this.layout?.active) || null;
  }

  get split() {
    return !this.narrow && (this.layout?.panes.length || 0) > 1;
  }

  /** Show pty: focus its pane, or put it in the active pane. */
  select(pty) {
    const L = this.layout;
    if (!L) return;
    if (!L.panes.includes(pty)) L.panes[L.panes.indexOf(L.active)] = pty;
    L.active = pty;
    this._changed();
    this.active?.view.focus();
  }

  /** The pane holding pty becomes the active one (it got focus). */
  activate(pty) {
    if (!this.layout || this.layout.active === pty) return;
    this.layout.active = pty;
    this._renderTabs();
    this._markActive();
    this.onChange();
  }

  /** Move to the next (+1) or previous (-1) tab. */
  step(delta) {
    const ids = this._ptys().map((p) => p.id);
    if (!ids.length) return;
    const at = ids.indexOf(this.layout.active);
    this.select(ids[(at + delta + ids.length) % ids.length]);
  }

  /** Add a pane for pty (or the first PTY not on screen) → false if there is none. */
  addPane(pty = null) {
    const L = this.layout;
    pty ??= this._ptys().map((p) => p.id).find((id) => !L.panes.includes(id));
    if (pty === undefined || L.panes.includes(pty)) return false;
    const order = this._ptys().map((p) => p.id);
    L.panes = [...L.panes, pty].sort((a, b) => order.indexOf(a) - order.indexOf(b));
    L.sizes = L.panes.map(() => 1 / L.panes.length);
    L.active = pty;
    this._changed();
    this.active?.view.focus();
    return true;
  }

  unsplit(pty) {
    const L = this.layout;
    if (L.panes.length < 2) return;
    const at = L.panes.indexOf(pty);
    L.panes.splice(at, 1);
    L.sizes.splice(at, 1);
    L.sizes = normalise(L.sizes);
    if (L.active === pty) L.active = L.panes[Math.max(0, at - 1)];
    this._changed();
  }

  /** Send input to the active PTY → false when it could not go out. */
  send(data) {
    const pane = this.active;
    return Boolean(pane && !this.readOnly && pane.stream?.send(data));
  }

  paneAt(element) {
    const el = element?.closest?.(".pane");
    return el ? this.panes.get(Number(el.dataset.pty)) : null;
  }

  setTheme(theme) {
    this.theme = theme;
    for (const pane of this.panes.values()) pane.view.setTheme(theme);
  }

  setNarrow(narrow) {
    if (this.narrow === narrow) return;
    this.narrow = narrow;
    if (this.layout) this._renderPanes();
  }

  setReadOnly(readOnly) {
    if (this.readOnly === readOnly) return;
    this.readOnly = readOnly;
    // terminals are built read-only or not: rebuild the visible ones
    for (const pane of this.panes.values()) pane.dispose();
    this.panes.clear();
    if (this.layout) this._renderPanes();
  }

  _ptys() {
    return this.session ? ordered(this.session.ptys) : [];
  }

  _changed() {
    this._renderTabs();
    this._renderPanes();
    this.onChange();
  }

  _renderTabs() {
    const L = this.layout;
    const visible = this._visible();
    const ptys = this._ptys();
    // rebuilt only on change, so a focused tab keeps its focus across polls
    const signature = JSON.stringify([ptys, L.active, visible]);
    if (signature === this._tabsSignature) return;
    this._tabsSignature = signature;
    const hadFocus = this.tabsEl.contains(document.activeElement);
    this.tabsEl.replaceChildren(...ptys.map((pty) => {
      const selected = pty.id === L.active;
      const shown = visible.includes(pty.id);
      return h("button", {
        type: "button", role: "tab", class: `tab tab-${pty.role}${shown ? " shown" : ""}`,
        "aria-selected": String(selected), "aria-controls": shown ? `pane-${pty.id}` : undefined,
        tabindex: selected ? "0" : "-1", title: pty.command || ptyLabel(pty),
        dataset: {pty: pty.id, state: pty.state}, onclick: () => this.select(pty.id),
      }, icon(pty.role === "agent" ? "agent" : "terminal"), h("span", {class: "tab-label"}, ptyLabel(pty)),
      pty.state === "exited" ? h("span", {class: "tab-exited"}, "exited") : null);
    }));
    if (hadFocus) this.tabsEl.querySelector('[aria-selected="true"]')?.focus();
  }

  _tabKey(event) {
    if (event.key !== "ArrowRight" && event.key !== "ArrowLeft") return;
    event.preventDefault();
    this.step(event.key === "ArrowRight" ? 1 : -1);
    this.tabsEl.querySelector('[aria-selected="true"]')?.focus();
  }

  _visible() {
    const L = this.layout;
    return this.narrow ? [L.active] : L.panes;
  }

  _renderPanes() {
    const L = this.layout;
    const visible = this._visible();
    for (const [pty, pane] of this.panes) {
      if (!visible.includes(pty)) {
        pane.dispose();
        this.panes.delete(pty);
      }
    }
    const fresh = [];
    const children = [];
    visible.forEach((pty, i) => {
      if (i) children.push(this._handles[i - 1] ??= this._handle(i - 1));
      let pane = this.panes.get(pty);
      if (!pane) {
        pane = new Pane(this, pty);
        this.panes.set(pty, pane);
        fresh.push(pane);
      }
      const info = this.session.ptys.find((p) => p.id === pty);
      pane.setLabel(info ? ptyLabel(info) : `pty ${pty}`);
      pane.el.style.flexGrow = String(visible.length > 1 ? L.sizes[i] : 1);
      children.push(pane.el);
    });
    const current = [...this.panesEl.children];
    if (current.length !== children.length || current.some((el, i) => el !== children[i])) {
      // moving the focused terminal out of the document and back blurs it
      const focused = this.panesEl.contains(document.activeElement) ? document.activeElement : null;
      this.panesEl.replaceChildren(...children);
      if (focused?.isConnected) focused.focus({preventScroll: true});
    }
    this.panesEl.classList.toggle("split", visible.length > 1);
    this._markActive();
    for (const pane of fresh) pane.start();
  }

  _markActive() {
    for (const [pty, pane] of this.panes) pane.el.classList.toggle("active", pty === this.layout.active);
  }

  /** A drag handle between pane i and i+1; arrows move it from the keyboard too. */
  _handle(i) {
    const handle = h("div", {class: "split-handle", role: "separator", tabindex: "0",
      "aria-orientation": "vertical", "aria-label": "Resize panes"});
    const move = (delta) => {
      const sizes = this.layout.sizes;
      const pair = sizes[i] + sizes[i + 1];
      const left = Math.min(Math.max(sizes[i] + delta, MIN_FRACTION), pair - MIN_FRACTION);
      sizes[i] = left;
      sizes[i + 1] = pair - left;
      const els = [...this.panesEl.querySelectorAll(":scope > .pane")];
      els[i].style.flexGrow = String(sizes[i]);
      els[i + 1].style.flexGrow = String(sizes[i + 1]);
    };
    handle.addEventListener("pointerdown", (event) => {
      event.preventDefault();
      handle.setPointerCapture(event.pointerId);
      handle.classList.add("dragging");
      let x = event.clientX;
      const width = this.panesEl.clientWidth || 1;
      const onMove = (e) => {
        move((e.clientX - x) / width);
        x = e.clientX;
      };
      const onUp = () => {
        handle.classList.remove("dragging");
        handle.removeEventListener("pointermove", onMove);
        handle.removeEventListener("pointerup", onUp);
        handle.removeEventListener("pointercancel", onUp);
        this.onChange();
      };
      handle.addEventListener("pointermove", onMove);
      handle.addEventListener("pointerup", onUp);
      handle.addEventListener("pointercancel", onUp);
    });
    handle.addEventListener("keydown", (event) => {
      const delta = {ArrowLeft: -0.05, ArrowRight: 0.05}[event.key];
      if (!delta) return;
      event.preventDefault();
      move(delta);
      this.onChange();
    });
    return handle;
  }

  _touchStart(event) {
    const t = event.touches[0];
    this._swipeFrom = this.narrow && event.touches.length === 1 ? {x: t.clientX, y: t.clientY} : null;
  }

  _touchEnd(event) {
    const from = this._swipeFrom;
    this._swipeFrom = null;
    const t = event.changedTouches[0];
    if (!from || !t) return;
    const dx = t.clientX - from.x;
    const dy = t.clientY - from.y;
    if (Math.abs(dx) > SWIPE_PX && Math.abs(dx) > 2 * Math.abs(dy)) this.step(dx < 0 ? 1 : -1);
  }
}

function normalise(sizes) {
  const total = sizes.reduce((a, b) => a + b, 0) || 1;
  return sizes.map((s) => s / total);
}
