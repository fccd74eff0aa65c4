// The connect page's screen (TUN-3, TUN-6): what happens with the tunnel,
// the answer code to paste when the page cannot return it by itself, and the
// dashboard of known machines. It covers the (idle) app until connected.

import {h, icon, replaceChildren} from "./dom.js";

const MINUTE = 60000;

function ago(ms, now = Date.now()) {
  const minutes = Math.floor((now - ms) / MINUTE);
  if (minutes < 1) return "just now";
  if (minutes < 60) return `${minutes} min ago`;
  if (minutes < 48 * 60) return `${Math.floor(minutes / 60)} h ago`;
  return new Date(ms).toLocaleDateString();
}

export class ConnectScreen {
  /** connect(code): a pasted connect link or offer code; forget(machineId). */
  constructor({connect, forget}) {
    if (!document.querySelector("link[href='connect.css']")) {
      document.head.append(h("link", {rel: "stylesheet", href: "connect.css"}));
    }
    this.statusEl = h("p", {class: "connect-status", id: "connect-status", role: "status", hidden: true});
    this.codeEl = h("textarea", {id: "answer-code", class: "input mono answer-code", readonly: true, rows: 3,
      spellcheck: "false", "aria-describedby": "answer-help", onfocus: (e) => e.target.select()});
    this.helpEl = h("p", {class: "muted", id: "answer-help"});
    this.copyButton = h("button", {type: "button", class: "btn btn-primary", onclick: () => this._copy()}, "Copy");
    this.answerEl = h("div", {class: "connect-answer", id: "connect-answer", hidden: true},
      h("label", {class: "field-label", for: "answer-code"}, "Answer code"),
      this.codeEl,
      h("div", {class: "connect-row"}, this.copyButton),
      this.helpEl);
    this.listEl = h("ul", {class: "machine-list", id: "machine-list", "aria-label": "Known machines"});
    const pasteInput = h("input", {id: "connect-code", name: "code", class: "input mono", required: true,
      autocomplete: "off", spellcheck: "false", placeholder: "https://…/connect#…"});
    const paste = h("form", {class: "connect-paste", onsubmit: (event) => {
      event.preventDefault();
      const code = pasteInput.value.trim();
      if (code) connect(code);
    }},
    h("label", {class: "field-label", for: "connect-code"}, "Connect link or code"),
    h("div", {class: "connect-row"}, pasteInput, h("button", {type: "submit", class: "btn"}, "Connect")));
    this.forget = forget;
    this.el = h("section", {class: "connect", id: "connect", "aria-labelledby": "connect-title"},
      h("div", {class: "connect-card"},
        h("header", {class: "connect-head"},
          h("img", {src: "icon.svg", alt: "", width: 28, height: 28, class: "brand-mark"}),
          h("h1", {id: "connect-title"}, "coop tunnel")),
        this.statusEl,
        this.answerEl,
        h("h2", {class: "connect-subtitle"}, "Machines"),
        this.listEl,
        paste));
    document.body.append(this.el);
  }

  /** kind: "busy" (with a spinner), "info", "error"; `quoted` parts of text show as code. */
  status(text, kind = "info") {
    const parts = text.split("`").map((part, i) => (i % 2 ? h("code", {}, part) : part));
    replaceChildren(this.statusEl, kind === "busy" ? h("span", {class: "spinner", "aria-hidden": "true"}) : null,
      h("span", {}, parts));
    this.statusEl.dataset.kind = kind;
    this.statusEl.setAttribute("role", kind === "error" ? "alert" : "status");
    this.statusEl.hidden = false;
  }

  /** The paste path: show the browser's answer for the `coop tunnel` prompt on hostname. */
  showAnswer(code, hostname) {
    this.codeEl.value = code;
    replaceChildren(this.helpEl, "Paste it at the ", h("code", {}, "coop tunnel"), ` prompt on ${hostname}, or run `,
      h("code", {}, "coop tunnel --answer CODE"), " there.");
    this.copyButton.hidden = !navigator.clipboard;
    this.answerEl.hidden = false;
  }

  hideAnswer() {
    this.answerEl.hidden = true;
  }

  /** The dashboard: every known machine, none connected (this page is not). */
  machines(list) {
    if (!list.length) {
      replaceChildren(this.listEl, h("li", {class: "machine-empty muted"},
        "No machines yet. Run ", h("code", {}, "coop tunnel"), " on a computer and scan its code."));
      return;
    }
    replaceChildren(this.listEl, list.map((m) => h("li", {class: "machine", dataset: {machine: m.machineId}},
      h("span", {class: "machine-mark", "aria-hidden": "true"}, icon("terminal")),
      h("div", {class: "machine-text"},
        h("div", {class: "machine-head"},
          h("strong", {class: "machine-name"}, m.hostname),
          h("span", {class: "badge"}, "not connected")),
        h("span", {class: "machine-seen muted", title: new Date(m.lastSeen).toLocaleString()}, `last seen ${ago(m.lastSeen)}`),
        h("span", {class: "machine-hint"}, "To connect, run ", h("code", {}, "coop tunnel"), ` on ${m.hostname} and scan the new code.`)),
      h("button", {type: "button", class: "btn btn-ghost btn-small", "aria-label": `Forget ${m.hostname}`,
        onclick: () => this.forget(m.machineId)}, "Forget"))));
  }

  remove() {
    this.el.remove();
  }

  async _copy() {
    try {
      await navigator.clipboard.writeText(this.codeEl.value);
      this.copyButton.textContent = "Copied";
    } catch {
      this.codeEl.focus(); // selected: the user copies it by hand
    }
  }
}
