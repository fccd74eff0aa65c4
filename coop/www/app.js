// The coop page: wires the transport, the session list, the workbench of
// terminals, the phone key bar and the dialogs together.

import {pageTransport, TransportError} from "./transport.js";
import {h, icon} from "./dom.js";
import {prefs, savePrefs, layoutOf, pruneLayouts} from "./prefs.js";
import {SessionList, shortPath} from "./sessionlist.js";
import {Workbench} from "./workbench.js";
import {KeyBar} from "./keybar.js";
import {ComposeBox} from "./compose.js";
import {Attention} from "./attention.js";
import {Player} from "./player.js";
import {wireUploads} from "./upload.js";
import {notify, dismiss} from "./notices.js";
import {confirmDialog, createSessionDialog, helpDialog} from "./dialogs.js";
import {pasteOf, shellWord} from "./keys.js";

const POLL_MS = 2000;
const POLL_HIDDEN_MS = 6000;
const narrowQuery = window.matchMedia("(max-width: 767.98px)");
const $ = (id) => document.getElementById(id);

const transport = await pageTransport();
const state = {sessions: [], readOnly: false, loaded: false, locked: false, pollTimer: 0};

// -- building blocks ------------------------------------------------------------

const sessionList = new SessionList($("session-list"), {onOpen: openSession, onKill: killSession,
  onRecordings: openRecordings});

const bench = new Workbench({
  tabs: $("tabs"),
  panes: $("panes"),
  transport,
  theme: prefs.theme,
  filterInput: (data) => keyBar.apply(data),
  terminalKey,
  onChange: () => {
    savePrefs();
    renderHeader();
  },
  onSessionEvent: () => refresh(),
});

const keyBar = new KeyBar($("keybar"), {
  send: (data) => bench.send(data),
  appMode: () => Boolean(bench.active?.view.modes.applicationCursorKeysMode),
  extra: [
    h("button", {type: "button", class: "key key-icon mutating", "aria-label": "Compose a message",
      title: "Compose a message", "aria-pressed": "false", id: "compose-toggle", onclick: toggleCompose}, icon("compose")),
  ],
});

const compose = new ComposeBox($("keybar"), {
  send: (text) => {
    const modes = bench.active?.view.modes;
    const sent = bench.send(pasteOf(text, Boolean(modes?.bracketedPasteMode))) && bench.send("\r");
    if (!sent) notify("Not connected: the message is kept.", {kind: "warn", key: "compose"});
    return sent;
  },
});

let player = null; // the recording player, while open (BYD-3)

const attention = new Attention({
  onOpen: (name, pty) => {
    openSession(name);
    if (prefs.current === name) bench.select(pty);
  },
  isShown: (name, pty) => !player && bench.session?.name === name && bench.panes.has(pty),
});

wireUploads({panes: $("panes"), picker: $("file-input"), paneAt: (el) => bench.paneAt(el), onFiles: uploadFiles});

// -- sessions -------------------------------------------------------------------

function current() {
  return state.sessions.find((s) => s.name === prefs.current) || null;
}

let loading = null; // the list request in flight
let queued = null; // a refresh asked for while one was in flight

/** Fetch the session list and render; concurrent calls share one follow-up
 *  request, so each caller sees data fetched after it asked. */
function refresh() {
  if (!loading) {
    loading = load().finally(() => (loading = null));
    return loading;
  }
  queued ??= loading.then(() => {
    queued = null;
    return refresh();
  });
  return queued;
}

async function load() {
  clearTimeout(state.pollTimer);
  try {
    const answer = await transport.listSessions();
    dismiss("offline");
    state.sessions = answer.sessions;
    state.loaded = true;
    setReadOnly(answer.readOnly || state.readOnly);
    render();
  } catch (err) {
    if (err.code === "UNAUTHORIZED") {
      state.locked = true;
      showLocked();
      return;
    }
    notify("The coop server is unreachable; retrying.", {kind: "error", key: "offline", timeout: 0});
  } finally {
    clearTimeout(state.pollTimer);
    if (!state.locked) state.pollTimer = setTimeout(refresh, document.hidden ? POLL_HIDDEN_MS : POLL_MS);
  }
}

function render() {
  const sessions = state.sessions;
  pruneLayouts(sessions.map((s) => s.name));
  if (!current()) prefs.current = sessions[0]?.name ?? null;
  const session = current();
  if (session) bench.open(session, layoutOf(session.name));
  else bench.close();
  savePrefs();
  sessionList.render(sessions, prefs.current, state.readOnly);
  attention.update(sessions, prefs.current, prefs.notify);
  $("empty").hidden = Boolean(session) || !state.loaded;
  $("session-empty").hidden = sessions.length > 0 || !state.loaded;
  document.body.classList.toggle("has-session", Boolean(session));
  renderHeader();
}

function renderHeader() {
  const session = current();
  $("session-title").textContent = session ? session.name : "coop";
  $("session-path").textContent = session ? shortPath(session.workspace) : "";
  $("session-path").title = session ? session.workspace : "";
  const stateEl = $("session-state");
  stateEl.textContent = session ? session.state : "";
  stateEl.dataset.state = session?.state || "";
  stateEl.hidden = !session;
  const split = $("split-button");
  split.setAttribute("aria-pressed", String(bench.split));
  split.replaceChildren(icon(bench.split ? "unsplit" : "split"));
  split.setAttribute("aria-label", bench.split ? "Show one terminal" : "Split view");
  split.title = split.getAttribute("aria-label");
}

function openSession(name) {
  if (!state.sessions.some((s) => s.name === name)) return;
  player?.close();
  prefs.current = name;
  render();
  closeDrawer();
  bench.active?.view.focus();
}

function stepSession(delta) {
  const names = state.sessions.map((s) => s.name);
  if (!names.length) return;
  const at = names.indexOf(prefs.current);
  openSession(names[(at + delta + names.length) % names.length]);
}

async function newSession() {
  if (state.readOnly) return;
  const created = await createSessionDialog({
    listDirs: (path) => transport.listDirs(path),
    submit: ({name, workspace}) => transport.createSession({name, workspace}),
  });
  if (!created) return;
  prefs.current = created.session;
  await refresh();
  bench.active?.view.focus();
}

// -- recordings (BYD-3) -------------------------------------------------------------

async function openRecordings(name) {
  let recordings;
  try {
    if (!transport.listRecordings) throw new TransportError("UNSUPPORTED", "Recordings are not available over the tunnel.");
    recordings = await transport.listRecordings(name);
  } catch (err) {
    notify(err.message, {kind: "error", key: "recordings"});
    return;
  }
  if (!recordings.length) {
    notify(`${name} has no recordings: set record = true under [session] in its coop.toml.`, {key: "recordings"});
    return;
  }
  player?.close();
  player = new Player({
    session: name, recordings, theme: prefs.theme,
    fetch: (file) => transport.fetchRecording(name, file),
    covers: [$("panes"), $("keybar"), $("tabs")],
    onClose: () => {
      player = null;
      bench.active?.view.focus();
    },
  });
  closeDrawer();
}

async function killSession(name) {
  const ok = await confirmDialog({
    title: `Kill session ${name}?`,
    message: "The agent and every shell in it are stopped. The workspace files stay.",
    confirm: "Kill session",
    danger: true,
  });
  if (!ok) return;
  await mutate(() => transport.killSession(name));
  notify(`Session ${name} was killed.`, {kind: "ok"});
  await refresh();
}

async function newShell() {
  const session = current();
  if (!session || state.readOnly) return null;
  const answer = await mutate(() => transport.spawnShell(session.name));
  if (!answer) return null;
  await refresh();
  return answer.pty;
}

async function toggleSplit() {
  if (!bench.layout) return;
  if (bench.split) {
    bench.layout.panes = [bench.layout.active];
    bench.layout.sizes = [1];
    bench.update(current());
    savePrefs();
    renderHeader();
    return;
  }
  if (bench.addPane()) return;
  const pty = await newShell();
  if (pty !== null) bench.addPane(pty);
}

/** Run a mutating API call; errors become notices, 403 turns the page read-only. */
async function mutate(call) {
  try {
    return await call();
  } catch (err) {
    if (err.code === "PERMISSION_DENIED") setReadOnly(true);
    notify(err.message, {kind: "error"});
    return null;
  }
}

function setReadOnly(readOnly) {
  if (state.readOnly === readOnly) return;
  state.readOnly = readOnly;
  document.documentElement.toggleAttribute("data-readonly", readOnly);
  $("readonly-badge").hidden = !readOnly;
  bench.setReadOnly(readOnly);
}

function showLocked() {
  document.body.replaceChildren(h("main", {class: "locked"},
    h("h1", {}, "coop"),
    h("p", {}, "This page needs its link with the token. Open the URL that `coop serve` printed."),
  ));
}

// -- uploads (BYD-8) --------------------------------------------------------------

async function uploadFiles(files, pane) {
  const session = current();
  if (!session || state.readOnly) return;
  const target = pane || bench.active;
  for (const file of files) {
    const key = `upload-${file.name}`;
    notify(`Uploading ${file.name}…`, {key, timeout: 0});
    const answer = await mutate(() => transport.upload(session.name, file));
    dismiss(key);
    if (!answer) continue;
    notify(`${file.name} is in the workspace: ${answer.path}`, {
      kind: "ok", key, timeout: 20000,
      action: {label: "Insert path", run: () => {
        const sent = target?.stream?.send(`${shellWord(answer.path)} `);
        if (sent) target.view.focus();
        else notify("Not connected: the path was not typed.", {kind: "warn"});
      }},
    });
  }
}

// -- chrome: theme, drawer, sidebar width, compose ----------------------------------

function applyTheme() {
  document.documentElement.dataset.theme = prefs.theme;
  const toggle = $("theme-toggle");
  const next = prefs.theme === "dark" ? "light" : "dark";
  toggle.replaceChildren(icon(next === "light" ? "sun" : "moon"));
  toggle.setAttribute("aria-label", `Switch to ${next} theme`);
  toggle.title = toggle.getAttribute("aria-label");
  bench.setTheme(prefs.theme);
  player?.setTheme(prefs.theme);
}

function toggleTheme() {
  prefs.theme = prefs.theme === "dark" ? "light" : "dark";
  savePrefs();
  applyTheme();
}

async function toggleNotify() {
  prefs.notify = !prefs.notify && (attention.permitted || (await attention.request()));
  savePrefs();
  renderNotify();
  if (prefs.notify) notify("You will be notified when an agent waits for input.", {kind: "ok"});
  else if (attention.denied) notify("Notifications are blocked for this page in the browser's site settings.", {kind: "warn"});
}

function renderNotify() {
  const button = $("notify-toggle");
  button.hidden = !attention.supported;
  button.setAttribute("aria-pressed", String(prefs.notify));
  button.setAttribute("aria-label", prefs.notify ? "Stop notifications" : "Notify me when an agent waits");
  button.title = button.getAttribute("aria-label");
}

function openDrawer() {
  document.body.classList.add("drawer-open");
  $("drawer-button").setAttribute("aria-expanded", "true");
  $("scrim").hidden = false;
  $("session-list").querySelector("button")?.focus();
}

function closeDrawer() {
  if (!document.body.classList.contains("drawer-open")) return;
  document.body.classList.remove("drawer-open");
  $("drawer-button").setAttribute("aria-expanded", "false");
  $("scrim").hidden = true;
}

function toggleCompose() {
  const open = compose.toggle();
  $("compose-toggle").setAttribute("aria-pressed", String(open));
}

function applySidebarWidth() {
  document.documentElement.style.setProperty("--sidebar-width", `${prefs.sidebar}px`);
}

function wireSidebarResizer() {
  const handle = $("sidebar-resizer");
  const set = (px) => {
    prefs.sidebar = Math.round(Math.min(Math.max(px, 200), 480));
    applySidebarWidth();
  };
  handle.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    handle.setPointerCapture(event.pointerId);
    const onMove = (e) => set(e.clientX);
    const onUp = () => {
      handle.removeEventListener("pointermove", onMove);
      handle.removeEventListener("pointerup", onUp);
      savePrefs();
    };
    handle.addEventListener("pointermove", onMove);
    handle.addEventListener("pointerup", onUp);
  });
  handle.addEventListener("keydown", (event) => {
    const delta = {ArrowLeft: -16, ArrowRight: 16}[event.key];
    if (!delta) return;
    event.preventDefault();
    set(prefs.sidebar + delta);
    savePrefs();
  });
}

// -- keyboard ------------------------------------------------------------------------

/** Keys inside a terminal: Ctrl+Shift+arrows move between tabs and sessions. */
function terminalKey(event) {
  if (event.type !== "keydown" || !event.ctrlKey || !event.shiftKey) return true;
  const action = {
    ArrowLeft: () => bench.step(-1), ArrowRight: () => bench.step(1),
    ArrowUp: () => stepSession(-1), ArrowDown: () => stepSession(1),
    KeyE: () => $("tabs").querySelector('[aria-selected="true"]')?.focus(),
  }[event.code];
  if (!action) return true;
  event.preventDefault();
  action();
  return false;
}

function typingInto(target) {
  return target.closest?.(".term, input, textarea, select, [contenteditable]") || document.querySelector("dialog[open]");
}

function pageKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || typingInto(event.target)) return;
  const mutating = state.readOnly ? {} : {
    n: newSession, t: async () => {
      const pty = await newShell();
      if (pty !== null) bench.select(pty);
    }, u: () => $("file-input").click(),
  };
  const action = {
    "?": helpDialog, s: toggleSplit, "[": () => bench.step(-1), "]": () => bench.step(1),
    j: () => stepSession(1), k: () => stepSession(-1), Enter: () => bench.active?.view.focus(),
    Escape: closeDrawer, ...mutating,
  }[event.key];
  if (!action) return;
  event.preventDefault();
  action();
}

// -- start ---------------------------------------------------------------------------

function decorate() {
  for (const el of document.querySelectorAll("[data-icon]")) el.prepend(icon(el.dataset.icon));
}

function start() {
  decorate();
  applyTheme();
  applySidebarWidth();
  renderNotify();
  bench.setNarrow(narrowQuery.matches);
  narrowQuery.addEventListener("change", (e) => {
    bench.setNarrow(e.matches);
    if (!e.matches) closeDrawer();
    renderHeader();
  });
  $("new-session").addEventListener("click", newSession);
  $("empty-new-session").addEventListener("click", newSession);
  $("new-shell").addEventListener("click", async () => {
    const pty = await newShell();
    if (pty !== null) bench.select(pty);
  });
  $("split-button").addEventListener("click", toggleSplit);
  $("upload-button").addEventListener("click", () => $("file-input").click());
  $("theme-toggle").addEventListener("click", toggleTheme);
  $("notify-toggle").addEventListener("click", toggleNotify);
  $("help-button").addEventListener("click", helpDialog);
  $("drawer-button").addEventListener("click", () => (document.body.classList.contains("drawer-open") ? closeDrawer() : openDrawer()));
  $("scrim").addEventListener("click", closeDrawer);
  wireSidebarResizer();
  document.addEventListener("keydown", pageKey);
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) return;
    refresh();
    for (const pane of bench.panes.values()) pane.stream?.retry();
  });
  refresh();
}

// For tests and curious users: read what a terminal shows, drop its connection.
window.coopDebug = {
  transport,
  pane: (pty) => bench.panes.get(pty) || null,
  lines: (pty) => bench.panes.get(pty)?.view.lines() ?? null,
  size: (pty) => {
    const view = bench.panes.get(pty)?.view;
    return view ? {cols: view.cols, rows: view.rows} : null;
  },
  connection: (pty) => bench.panes.get(pty)?.stream?.state ?? null,
  offset: (pty) => bench.panes.get(pty)?.stream?.offset ?? null,
  stats: (pty) => bench.panes.get(pty)?.stream?.stats ?? null,
  drop: (pty) => bench.panes.get(pty)?.stream?.drop(),
  refresh,
  // BYD-2: notifications made (headless browsers show none), and a click on one
  get notifications() {
    return attention.shown.map(({title, session, pty}) => ({title, session, pty}));
  },
  clickNotification: (i) => attention.shown[i]?.note.dispatchEvent(new Event("click")),
  // BYD-3: the recording player, while open
  get player() {
    return player && {state: player.state, speed: player.speed, size: player.size, timing: player.timing,
      lines: player.lines()};
  },
};

start();
