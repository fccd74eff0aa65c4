// The compose box (WEB-5): a native textarea, so IME, dictation, autocorrect
// and paste all work, whose text reaches the PTY in one piece on send.

import {h, icon} from "./dom.js";

export class ComposeBox {
  /** send(text) → true when the text went out (then the box is cleared). */
  constructor(container, {send}) {
    this._send = send;
    this.textarea = h("textarea", {
      class: "compose-text", rows: "2", placeholder: "Type a message; Send types it into the terminal",
      "aria-label": "Message to type into the terminal", autocapitalize: "sentences",
      enterkeyhint: "send",
    });
    this.textarea.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.submit();
      }
    });
    this.form = h("form", {class: "compose", hidden: true, onsubmit: (event) => {
      event.preventDefault();
      this.submit();
    }},
    this.textarea,
    h("button", {type: "submit", class: "btn btn-primary compose-send", "aria-label": "Send"}, icon("send"),
      h("span", {class: "btn-text"}, "Send")));
    container.append(this.form);
  }

  get open() {
    return !this.form.hidden;
  }

  toggle(open = !this.open) {
    this.form.hidden = !open;
    if (open) this.textarea.focus();
    return open;
  }

  submit() {
    const text = this.textarea.value;
    if (!text) return;
    if (this._send(text)) this.textarea.value = "";
  }
}
