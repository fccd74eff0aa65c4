// What the page remembers between visits (WEB-5): theme, the open session and
// each session's layout. Never the token: that lives only in the cookie.

const KEY = "coop.ui.v1";

const DEFAULTS = {
  theme: "dark",
  current: null, // name of the open session
  sidebar: 272, // sidebar width in px (desktop)
  notify: false, // browser notifications for sessions waiting for input (BYD-2)
  layouts: {}, // session name → {panes: [pty ids], sizes: [fractions], active: pty id}
};

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(KEY) || "{}");
    return {...DEFAULTS, ...saved, layouts: {...(saved.layouts || {})}};
  } catch {
    return {...DEFAULTS, layouts: {}};
  }
}

export const prefs = load();

export function savePrefs() {
  try {
    localStorage.setItem(KEY, JSON.stringify(prefs));
  } catch {
    // private mode or full storage: the page still works, it just forgets
  }
}

/** The layout of a session, created on first use. */
export function layoutOf(name) {
  if (!prefs.layouts[name]) prefs.layouts[name] = {panes: [0], sizes: [1], active: 0};
  return prefs.layouts[name];
}

/** Forget layouts of sessions that no longer exist. */
export function pruneLayouts(names) {
  const alive = new Set(names);
  for (const name of Object.keys(prefs.layouts)) if (!alive.has(name)) delete prefs.layouts[name];
}
