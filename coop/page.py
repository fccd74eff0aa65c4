"""The browser page shipped in ``coop/www/`` (WEB-5, WEB-6): where it lives, and
``coop www export DIR``, which copies it out as a static site (to host the
tunnel's connect page anywhere).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import coop

WWW = Path(coop.__file__).resolve().parent / "www"
REQUIRED = ("index.html", "vendor/xterm.mjs")


class ExportError(Exception):
    """The page cannot be exported; the message is one line."""


def _ignore(_directory: str, names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(".") or n == "__pycache__"]


def export_www(dest: str | Path, source: Path = WWW) -> list[Path]:
    """Copy every file of the page (vendor files included) into ``dest``, creating it;
    existing files of the same name are replaced. Returns the files written."""
    missing = [name for name in REQUIRED if not (source / name).is_file()]
    if missing:
        raise ExportError(f"the page in {source} is incomplete (missing {', '.join(missing)}); "
                          "run scripts/fetch-assets")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ExportError(f"{dest} exists and is not a directory")
    shutil.copytree(source, dest, ignore=_ignore, dirs_exist_ok=True)
    return sorted(dest / p.relative_to(source) for p in source.rglob("*")
                  if p.is_file() and not _ignore("", list(p.relative_to(source).parts)))
