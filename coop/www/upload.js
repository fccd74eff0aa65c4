// BYD-8 ways in for files: the picker, drag and drop onto a terminal, and
// pasting files (screenshots) while a terminal has focus. Each hands the
// files and the pane they belong to (null: the active one) to onFiles.

function hasFiles(event) {
  return [...(event.dataTransfer?.types || [])].includes("Files");
}

export function wireUploads({panes, picker, onFiles, paneAt}) {
  picker.addEventListener("change", () => {
    if (picker.files.length) onFiles([...picker.files], null);
    picker.value = "";
  });

  let target = null; // the pane element showing the drop hint
  const mark = (el) => {
    if (target === el) return;
    target?.classList.remove("drop-target");
    target = el;
    target?.classList.add("drop-target");
  };
  panes.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
    mark(event.target.closest(".pane"));
  });
  panes.addEventListener("dragleave", (event) => {
    if (!panes.contains(event.relatedTarget)) mark(null);
  });
  panes.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    mark(null);
    onFiles([...event.dataTransfer.files], paneAt(event.target));
  });

  // capture phase: runs before xterm's own paste handler, which would type the file name
  document.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])];
    if (!files.length || !panes.contains(event.target)) return;
    event.preventDefault();
    event.stopPropagation();
    onFiles(files, paneAt(event.target));
  }, true);
}
