"""Building a session rootfs from a Coopfile (IMG-4, IMG-5, CF-5).

A build gets the base image's layers onto an empty tree, then runs the
``[packages]`` installs, ``[setup].run`` and ``[agent].install`` inside it,
one shell command per step, through an injected ``run_step`` (the CLI runs
steps in a sandbox with host network; tests chroot). The result is published
under the build hash only when every step exits 0, so a failed build leaves
the previous rootfs in place.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from coop.coopfile import build_hash, needs_build
from coop.image.error import ImageError
from coop.image.progress import Extract, Note, Progress, Step, ignore
from coop.image.reference import parse_source
from coop.image.store import RootfsStore

# run_step(rootfs_dir, shell_command, env, *, host_lower) -> exit code
RunStep = Callable[..., int]

_APT = ("apt-get -o APT::Sandbox::User=root update && "
        "apt-get -o APT::Sandbox::User=root install -y --no-install-recommends {}")
INSTALL_COMMANDS = {  # manager -> (step label, shell command), {} = quoted package list
    "apk": ("apk add {}", "apk add --no-cache {}"),
    "apt": ("apt-get install {}", _APT),
    "apt-get": ("apt-get install {}", _APT),
    "dnf": ("dnf install {}", "dnf install -y {}"),
    "yum": ("yum install {}", "yum install -y {}"),
    "pacman": ("pacman -S {}", "pacman -Sy --noconfirm {}"),
    "pip": ("pip install {}", "pip install {}"),
    "npm": ("npm install -g {}", "npm install -g {}"),
}
STEP_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STEP_ENV = {"DEBIAN_FRONTEND": "noninteractive", "PIP_BREAK_SYSTEM_PACKAGES": "1",
            "HOME": "/root"}
_CONFIG_KEYS = ("Env", "WorkingDir", "User", "Entrypoint", "Cmd")


class BuildError(ImageError):
    """A build step exited non-zero; ``exit_code`` is its code."""

    def __init__(self, step: Step, exit_code: int) -> None:
        super().__init__(f"build step {step} failed with exit code {exit_code}; "
                         "the previous rootfs is unchanged")
        self.exit_code = exit_code


@dataclass(frozen=True)
class BuildStep:
    label: str
    command: str


@dataclass(frozen=True)
class Rootfs:
    """What a session mounts: ``path`` as the lower layer, with the host's system
    directories underneath it when ``host_lower`` (``path`` None: host only)."""

    hash: str | None
    path: Path | None
    host_lower: bool
    meta: dict = field(default_factory=dict)


def plan(table: dict, warn: Callable[[str], None] = lambda text: None) -> list[BuildStep]:
    """The build steps of a validated Coopfile table, in order (IMG-4)."""
    steps = []
    for manager, names in table["packages"].items():
        if not names:
            continue
        if manager not in INSTALL_COMMANDS:
            warn(f"skipping [packages].{manager}: unknown package manager")
            continue
        label, command = INSTALL_COMMANDS[manager]
        quoted = " ".join(shlex.quote(name) for name in names)
        steps.append(BuildStep(label.format(" ".join(names)), command.format(quoted)))
    steps.extend(BuildStep(command, command) for command in table["setup"]["run"])
    install = table["agent"]["install"].strip()
    if install:
        steps.append(BuildStep(install, install))
    return steps


def step_env(image_env: list[str]) -> dict[str, str]:
    env = {"PATH": STEP_PATH}
    env.update(item.split("=", 1) for item in image_env)
    env.update(STEP_ENV)
    return env


def _paths(state_dir: Path) -> tuple[RootfsStore, Path]:
    state_dir = Path(state_dir)
    return RootfsStore(state_dir / "rootfs"), state_dir / "cache" / "oci"


def _rootfs(entry) -> Rootfs:
    lower = entry.meta.get("lower")
    return Rootfs(entry.hash, Path(lower) if lower else entry.rootfs,
                  entry.meta.get("base") == "host", entry.meta)


def rootfs_for(table: dict, state_dir: Path) -> Rootfs | None:
    """The built rootfs for this Coopfile, or None (CF-5: ROOTFS_NOT_BUILT, exit 5)."""
    if not needs_build(table):
        return Rootfs(None, None, True)
    store, _ = _paths(state_dir)
    entry = store.find(build_hash(table))
    return _rootfs(entry) if entry else None


def ensure_rootfs(table: dict, state_dir: Path, *, no_cache: bool = False, force: bool = False,
                  progress: Progress = ignore, run_step: RunStep | None = None) -> Rootfs:
    """``coop init`` (build unless this hash is built) and ``coop rebuild`` (``force``)."""
    if not force:
        found = rootfs_for(table, state_dir)
        if found is not None:
            return found
    store, _ = _paths(state_dir)
    with store.lock(build_hash(table)):
        if not force:  # another process may have built it while we waited
            entry = store.find(build_hash(table))
            if entry:
                return _rootfs(entry)
        return _build_locked(table, state_dir, no_cache, progress, run_step)


def _build_locked(table: dict, state_dir: Path, no_cache: bool, progress: Progress,
                  run_step: RunStep | None) -> Rootfs:
    store, cache_root = _paths(state_dir)
    image = table["base"]["image"]
    source = parse_source(image)
    steps = plan(table, lambda text: progress(Note(text)))
    if steps and run_step is None:
        raise ValueError("this Coopfile has build steps but no run_step was given")
    digest = build_hash(table)
    meta = {"image": image, "base": source.kind, "packages": table["packages"],
            "setup": table["setup"]["run"], "install": table["agent"]["install"],
            "built": time.time(), "digest": None, "blobs": [], "env": [], "config": {}}
    with store.staging(digest) as staging:
        rootfs = staging / "rootfs"
        if source.kind in ("registry", "oci", "docker-archive"):
            _unpack(source, rootfs, cache_root, no_cache, progress, meta)
        elif source.kind == "dir":
            _from_dir(Path(source.path), rootfs, bool(steps), meta)
        env = step_env(meta["env"])
        for index, step in enumerate(steps, 1):
            event = Step(index, len(steps), step.label)
            progress(event)
            code = run_step(rootfs, step.command, env, host_lower=source.kind == "host")
            if code != 0:
                raise BuildError(event, code)
        return _rootfs(store.publish(staging, digest, meta))


def _unpack(source, rootfs: Path, cache_root: Path, no_cache: bool, progress: Progress,
            meta: dict) -> None:
    from coop.image.layers import extract
    from coop.image.manifest import image_env
    from coop.image.pull import pull

    image = pull(source, cache_root, no_cache=no_cache, progress=progress)
    for index, layer in enumerate(image.layers, 1):
        progress(Extract(index, len(image.layers), layer.digest))
        with layer.open() as reader:
            extract(reader, rootfs, digest=layer.digest)
    config = image.config.get("config") or {}
    meta.update(digest=image.digest, env=image_env(image.config),
                config={k: config[k] for k in _CONFIG_KEYS if k in config})
    if source.kind == "registry":
        meta["blobs"] = [layer.digest for layer in image.layers] + [image.config_digest]


def _from_dir(path: Path, rootfs: Path, has_steps: bool, meta: dict) -> None:
    """``dir:PATH`` is used in place; with build steps it is copied first, never changed."""
    path = path.resolve()
    if not path.is_dir():
        raise ImageError(f"dir:{path}: not a directory")
    if not has_steps:
        meta["lower"] = str(path)
        return
    import subprocess

    done = subprocess.run(["cp", "-a", "--", f"{path}/.", str(rootfs)],
                          stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise ImageError(f"dir:{path}: copying into the rootfs failed: {lines[0]}")


def gc(state_dir: Path, in_use_hashes: set[str]) -> list[str]:
    """``coop gc``: remove unused rootfs and the cached blobs only they needed."""
    from coop.image.cache import BlobCache

    store, cache_root = _paths(state_dir)
    removed = store.gc(set(in_use_hashes))
    keep = {blob for entry in store.list() for blob in entry.meta.get("blobs", [])}
    BlobCache(cache_root).prune(keep)
    return removed


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def status_lines(table: dict, state_dir: Path, now: float | None = None) -> list[str]:
    """Lines for ``coop status`` (CLI-2): image, build age, packages."""
    image = table["base"]["image"]
    if not needs_build(table):
        return ["rootfs: host system directories (no build needed)"]
    found = rootfs_for(table, state_dir)
    if found is None:
        return [f"image: {image}", "rootfs: not built (run coop init)"]
    meta = found.meta
    pinned = f" ({meta['digest'][:19]})" if meta.get("digest") else ""
    now = time.time() if now is None else now
    packages = "; ".join(f"{manager}: {', '.join(names)}"
                         for manager, names in meta.get("packages", {}).items() if names)
    return [f"image: {image}{pinned}",
            f"rootfs: built {_age(now - meta.get('built', now))} ago ({found.hash[:12]})",
            f"packages: {packages or 'none'}"]
