// xterm.js writes its cell metrics and theme into <style> elements. Under the
// server's strict CSP (style-src 'self', no 'unsafe-inline') browsers ignore
// those elements, so their text is mirrored into constructable stylesheets,
// which CSP leaves alone (they are CSSOM, not markup).

const mirrors = new Map(); // <style> element → CSSStyleSheet

function publish() {
  const ours = new Set(mirrors.values());
  const others = document.adoptedStyleSheets.filter((sheet) => !sheet.coopMirror);
  document.adoptedStyleSheets = [...others, ...ours];
}

function sync(root) {
  const present = new Set(root.querySelectorAll("style"));
  let changed = false;
  for (const el of present) {
    let sheet = mirrors.get(el);
    if (!sheet) {
      sheet = new CSSStyleSheet();
      sheet.coopMirror = true;
      mirrors.set(el, sheet);
      changed = true;
    }
    if (sheet.coopText !== el.textContent) {
      sheet.replaceSync(el.textContent);
      sheet.coopText = el.textContent;
    }
  }
  for (const el of mirrors.keys()) {
    if (!el.isConnected || (root.contains(el) && !present.has(el))) {
      mirrors.delete(el);
      changed = true;
    }
  }
  if (changed) publish();
}

/** Keep every <style> inside root applied; returns {disconnect()}. */
export function adoptInlineStyles(root) {
  const observer = new MutationObserver(() => sync(root));
  observer.observe(root, {childList: true, subtree: true, characterData: true});
  return {
    disconnect() {
      observer.disconnect();
      sync(root);
    },
  };
}
