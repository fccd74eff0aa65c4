// BYD-2 on the page: sessions whose agent waits for input are counted in the
// title and, when allowed, announced with a browser notification.

const BASE_TITLE = "coop";

export class Attention {
  /** onOpen(name) when the user clicks a notification. */
  constructor({onOpen}) {
    this.onOpen = onOpen;
    this._waiting = null; // names waiting at the last update (null before the first)
  }

  get supported() {
    return "Notification" in window;
  }

  get permitted() {
    return this.supported && Notification.permission === "granted";
  }

  async request() {
    if (!this.supported) return false;
    return (await Notification.requestPermission()) === "granted";
  }

  /** sessions: the API list; current: the open session; notify: the user's choice. */
  update(sessions, current, notify) {
    const waiting = new Set(sessions.filter((s) => s.state === "waiting").map((s) => s.name));
    const prefix = waiting.size ? `(${waiting.size}) ` : "";
    document.title = `${prefix}${current ? `${current} · ` : ""}${BASE_TITLE}`;
    if (this._waiting && notify && this.permitted) {
      for (const name of waiting) {
        if (!this._waiting.has(name) && (document.hidden || name !== current)) this._announce(name);
      }
    }
    this._waiting = waiting;
  }

  _announce(name) {
    const note = new Notification(`${name} is waiting for input`, {
      body: "The agent stopped and looks like it wants an answer.", tag: `coop-${name}`,
    });
    note.onclick = () => {
      window.focus();
      this.onOpen(name);
      note.close();
    };
  }
}
