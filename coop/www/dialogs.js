// Modal dialogs on the native <dialog> element (focus trap and Esc for free):
// confirmation, new session with a directory browser, keyboard shortcuts.

import {h, icon, iconButton, replaceChildren} from "./dom.js";

function modal(label, ...children) {
  const dialog = h("dialog", {class: "dialog", "aria-label": label}, ...children);
  dialog.addEventListener("close", () => dialog.remove());
  // a click on the backdrop (outside the box) cancels
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close("cancel");
  });
  document.body.append(dialog);
  dialog.showModal();
  return dialog;
}

/** Ask before something destructive → Promise<boolean>. */
export function confirmDialog({title, message, confirm = "OK", danger = false}) {
  return new Promise((resolve) => {
    const dialog = modal(title,
      h("form", {method: "dialog", class: "dialog-body"},
        h("h2", {class: "dialog-title"}, title),
        h("p", {class: "dialog-text"}, message),
        h("div", {class: "dialog-actions"},
          h("button", {type: "submit", value: "cancel", class: "btn", autofocus: true}, "Cancel"),
          h("button", {type: "submit", value: "ok", class: `btn ${danger ? "btn-danger" : "btn-primary"}`,
            "data-role": "confirm"}, confirm))));
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"));
  });
}

function parentOf(path) {
  const trimmed = path.replace(/\/+$/, "");
  const cut = trimmed.lastIndexOf("/");
  return cut <= 0 ? "/" : trimmed.slice(0, cut);
}

function childOf(path, name) {
  return `${path.replace(/\/+$/, "")}/${name}`;
}

/**
 * New session: a name (optional) and a workspace picked in a directory
 * browser or typed. submit({name, workspace}) may throw; its message is shown
 * in the dialog, which stays open. Resolves to submit's answer or null.
 */
export function createSessionDialog({listDirs, submit}) {
  return new Promise((resolve) => {
    let result = null;
    const nameInput = h("input", {id: "new-name", name: "name", class: "input", autocomplete: "off",
      spellcheck: "false", placeholder: "from the folder name", pattern: "[a-z0-9._\\-]*",
      title: "lowercase letters, digits, dot, dash, underscore"});
    const pathInput = h("input", {id: "new-workspace", name: "workspace", class: "input mono", required: true,
      autocomplete: "off", spellcheck: "false", placeholder: "/home/you/project"});
    const list = h("ul", {class: "dir-list", "aria-label": "Folders"});
    const where = h("span", {class: "dir-where mono"});
    const error = h("p", {class: "form-error", role: "alert", hidden: true});
    const submitButton = h("button", {type: "submit", class: "btn btn-primary"}, "Create session");

    async function browse(path) {
      try {
        const answer = await listDirs(path);
        pathInput.value = answer.path;
        where.textContent = answer.path;
        replaceChildren(list, answer.dirs.length ? answer.dirs.map((name) => h("li", {},
          h("button", {type: "button", class: "dir", onclick: () => browse(childOf(answer.path, name))},
            icon("folder"), h("span", {}, name)))) : h("li", {class: "dir-empty"}, "No folders here"));
        error.hidden = true;
      } catch (err) {
        showError(err.message);
      }
    }

    function showError(message) {
      error.textContent = message;
      error.hidden = false;
    }

    const form = h("form", {class: "dialog-body", onsubmit: async (event) => {
      event.preventDefault();
      submitButton.disabled = true;
      try {
        result = await submit({name: nameInput.value.trim(), workspace: pathInput.value.trim()});
        dialog.close("ok");
      } catch (err) {
        showError(err.message);
      } finally {
        submitButton.disabled = false;
      }
    }},
    h("h2", {class: "dialog-title"}, "New session"),
    h("label", {class: "field", for: "new-workspace"}, h("span", {class: "field-label"}, "Workspace"), pathInput),
    h("div", {class: "dir-browser"},
      h("div", {class: "dir-bar"},
        iconButton("up", "Parent folder", () => browse(parentOf(pathInput.value || where.textContent)),
          {cls: "btn-ghost btn-small"}),
        where),
      list),
    h("label", {class: "field", for: "new-name"}, h("span", {class: "field-label"}, "Name (optional)"), nameInput),
    error,
    h("div", {class: "dialog-actions"},
      h("button", {type: "button", class: "btn", onclick: () => dialog.close("cancel")}, "Cancel"),
      submitButton));
    const dialog = modal("New session", form);
    dialog.addEventListener("close", () => resolve(result));
    browse("");
  });
}

const SHORTCUTS = [
  [["?"], "Show this help"],
  [["n"], "New session"],
  [["t"], "New shell in this session"],
  [["s"], "Split / unsplit"],
  [["[", "]"], "Previous / next tab"],
  [["j", "k"], "Next / previous session"],
  [["u"], "Upload a file"],
  [["Enter"], "Focus the terminal"],
  [["Ctrl+Shift", "← →"], "Previous / next tab, inside a terminal"],
  [["Ctrl+Shift", "↑ ↓"], "Previous / next session, inside a terminal"],
  [["Ctrl+Shift", "E"], "Leave the terminal, focus the tabs"],
];

export function helpDialog() {
  modal("Keyboard shortcuts",
    h("form", {method: "dialog", class: "dialog-body"},
      h("h2", {class: "dialog-title"}, "Keyboard shortcuts"),
      h("dl", {class: "shortcuts"}, SHORTCUTS.map(([keys, what]) => [
        h("dt", {}, keys.map((k) => h("kbd", {}, k))), h("dd", {}, what)])),
      h("p", {class: "dialog-text muted"},
        "Single-key shortcuts work when the focus is not in a terminal. Drop a file on a terminal to upload it."),
      h("div", {class: "dialog-actions"}, h("button", {type: "submit", class: "btn btn-primary", autofocus: true}, "Close"))));
}
