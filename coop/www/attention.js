// BYD-2 on the page: sessions whose agent waits for input are counted in the
// title and, when allowed, announced with a browser notification.
//
// Only agents are announced (as the on_attention hook does): an idle shell at
// its prompt is "waiting" too, and a notice for every shell would be noise. The
// list polling and the "attention" events of open terminals (which refresh the
// list at once) both end up in update().

const BASE_TITLE = "coop";
const KEEP_SHOWN = 50;

export class Attention {
  /** onOpen(name, pty) when the user clicks a notification; isShown(name, pty) → whether
   *  that terminal is on screen (then it needs no notification). */
  constructor({onOpen, isShown}) {
    this.onOpen = onOpen;
    this.isShown = isShown;
    this.shown = []; // every notification made: {title, session, pty, note} (tests, debugging)
    this._waiting = null; // "name/pty" keys of agents waiting at the last update (null before the first)
  }

  get supported() {
    return "Notification" in window;
  }

  get permitted() {
    return this.supported && Notification.permission === "granted";
  }

  get denied() {
    return this.supported && Notification.permission === "denied";
  }

  /** Ask the browser once, from a user gesture; true when notifications may be shown. */
  async request() {
    if (!this.supported) return false;
    return (await Notification.requestPermission()) === "granted";
  }

  /** sessions: the API list; current: the open session; notify: the user's choice. */
  update(sessions, current, notify) {
    const agents = sessions.filter((s) => s.state === "waiting").map((s) =>
      ({name: s.name, pty: (s.ptys.find((p) => p.role === "agent") || {id: 0}).id}));
    const prefix = agents.length ? `(${agents.length}) ` : "";
    document.title = `${prefix}${current ? `${current} · ` : ""}${BASE_TITLE}`;
    const waiting = new Set(agents.map(({name, pty}) => `${name}/${pty}`));
    if (this._waiting && notify && this.permitted) {
      const watched = !document.hidden && document.hasFocus();
      for (const {name, pty} of agents) {
        if (!this._waiting.has(`${name}/${pty}`) && !(watched && this.isShown(name, pty))) this._announce(name, pty);
      }
    }
    this._waiting = waiting;
  }

  _announce(name, pty) {
    const title = `${name} is waiting for input`;
    const note = new Notification(title, {
      body: "The agent stopped and looks like it wants an answer.", tag: `coop-${name}`,
    });
    note.onclick = () => {
      window.focus();
      this.onOpen(name, pty);
      note.close();
    };
    this.shown = [...this.shown.slice(1 - KEEP_SHOWN), {title, session: name, pty, note}];
  }
}
