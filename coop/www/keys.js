// The bytes a terminal key sends: pure functions, shared by the phone key bar
// and the sticky Ctrl modifier.

/** Ctrl+char as a terminal sends it, or null when Ctrl does nothing to char. */
export function ctrlOf(char) {
  if (char.length !== 1) return null;
  const c = char.toUpperCase().charCodeAt(0);
  if (c >= 0x40 && c <= 0x5f) return String.fromCharCode(c - 0x40); // @ A–Z [ \ ] ^ _
  if (char === " " || char === "2") return "\x00";
  if (char === "?" || char === "8") return "\x7f";
  if (char === "/") return "\x1f";
  if (char >= "3" && char <= "7") return String.fromCharCode(char.charCodeAt(0) - 0x33 + 0x1b); // ESC … US
  return null;
}

/** An arrow key: CSI form normally, SS3 form when the application asked for
 *  cursor-key application mode (DECCKM), as vim and less do. */
export function arrow(direction, applicationMode = false) {
  const final = {up: "A", down: "B", right: "C", left: "D"}[direction];
  return (applicationMode ? "\x1bO" : "\x1b[") + final;
}

/** Text sent as one paste: bracketed when the program asked for it, so a
 *  multi-line message is not run line by line. */
export function pasteOf(text, bracketed = false) {
  const body = text.replace(/\r?\n/g, "\r");
  return bracketed ? `\x1b[200~${body}\x1b[201~` : body;
}

/** A path as a shell word: quoted only when it has to be. */
export function shellWord(path) {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(path) ? path : `'${path.replaceAll("'", "'\\''")}'`;
}
