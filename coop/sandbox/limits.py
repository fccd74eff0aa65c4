"""Per-session resource limits (BYD-7): memory, pids, cpu.

Each limited session gets its own cgroup, created below the cgroup this
process already lives in (so every limit that already binds coop keeps
binding the session, and an unprivileged user needs only that subtree to
be delegated): ``<own cgroup>/coop/<session>``. Cgroup v2 is used where it
has the controller; on hybrid hosts the controller's v1 hierarchy is used.

Where no cgroup can be had, ``pids`` falls back to RLIMIT_NPROC, which the
init sets on the processes it starts, and memory/cpu are reported as not
enforced: ``describe`` always says what holds and why.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

CONTROLLER = {"memory": "memory", "pids": "pids", "cpu": "cpu"}
CPU_PERIOD_US = 100_000
CPU_MIN_QUOTA_US = 1_000  # the kernel refuses smaller quotas
# Since Linux 5.14 RLIMIT_NPROC counts the processes of a uid per user
# namespace, so in the session's namespace it counts the session's alone.
NPROC_PER_USERNS = (5, 14)
SETTLE_TIMEOUT = 2.0

EventCallback = Callable[[str], None]


class Unavailable(Exception):
    """No cgroup can carry this limit; the message says why."""


@dataclass(frozen=True)
class Place:
    """Where one controller of the session lives."""

    version: int  # 1 or 2
    parent: str  # <own cgroup>/coop, created if missing
    path: str  # <own cgroup>/coop/<session>


def own_cgroups(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` → {controller: path}; the v2 path is under ""."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def cgroup_files(resource_name: str, version: int, value: float) -> list[tuple[str, str, bool]]:
    """The (file, content, required) writes that set one limit, in order."""
    if resource_name == "memory":
        if version == 2:
            return [("memory.max", str(int(value)), True), ("memory.swap.max", "0", False)]
        return [("memory.limit_in_bytes", str(int(value)), True),
                ("memory.memsw.limit_in_bytes", str(int(value)), False)]
    if resource_name == "pids":
        return [("pids.max", str(int(value)), True)]
    quota = max(CPU_MIN_QUOTA_US, round(value * CPU_PERIOD_US))
    if version == 2:
        return [("cpu.max", f"{quota} {CPU_PERIOD_US}", True)]
    return [("cpu.cfs_period_us", str(CPU_PERIOD_US), True), ("cpu.cfs_quota_us", str(quota), True)]


def kernel_version(release: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


class Limits:
    """The limits of one session: ``apply`` once to the init, ``cleanup`` after."""

    def __init__(self, limits: dict, session: str, cgroup_root: str = "/sys/fs/cgroup",
                 on_event: EventCallback = lambda message: None, *,
                 self_cgroup: str = "/proc/self/cgroup") -> None:
        if not session or "/" in session or session in (".", ".."):
            raise ValueError(f"session name {session!r} cannot name a cgroup")
        self.wanted = {name: value for name, value in limits.items() if value is not None}
        unknown = set(self.wanted) - set(CONTROLLER)
        if unknown:
            raise ValueError(f"unknown limits: {', '.join(sorted(unknown))}")
        self.session = session
        self.root = cgroup_root
        self.on_event = on_event
        with open(self_cgroup) as file:
            self.own = own_cgroups(file.read())
        self.status = {name: "not applied yet" for name in self.wanted}
        self.places: list[Place] = []
        self.nproc: int | None = None

    def apply(self, pid: int) -> None:
        """Put ``pid`` (the sandbox init, before it has children) under every limit."""
        for name, value in self.wanted.items():
            try:
                place = self._place(CONTROLLER[name])
                self._create(place)
                for file, content, required in cgroup_files(name, place.version, value):
                    self._write(place.path, file, content, required)
                self._write(place.path, "cgroup.procs", str(pid), True)
                self.status[name] = f"enforced (cgroup v{place.version} {CONTROLLER[name]})"
            except (Unavailable, OSError) as exc:
                reason = str(exc) if isinstance(exc, Unavailable) else _oserror_text(exc)
                self.status[name] = self._fallback(name, value, reason)
            if self.status[name].startswith("not enforced"):
                self.on_event(f"limits: {name} {self.status[name]}")

    def rlimits_for_children(self) -> dict:
        """Resource limits the init sets on every process it starts."""
        return {"RLIMIT_NPROC": self.nproc} if self.nproc is not None else {}

    def describe(self) -> dict:
        return dict(self.status)

    def kill(self) -> None:
        """SIGKILL every process in the session's cgroups until they are empty;
        forking stops first (pids.max 0), so even a fork bomb cannot outrun it."""
        for place in self.places:
            for file, content in (("cgroup.kill", "1"), ("pids.max", "0")):
                if os.path.exists(os.path.join(place.path, file)):
                    self._write(place.path, file, content, True)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            pids = {pid for place in self.places for pid in _procs(place.path)}
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
        raise OSError(f"processes survive in cgroup {self.places[0].path}")

    def cleanup(self) -> None:
        """Remove the session's cgroups (once its processes are gone)."""
        for place in self.places:
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while True:
                try:
                    os.rmdir(place.path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:  # EBUSY while the last exits are accounted
                    if time.monotonic() > deadline:
                        self.on_event(f"limits: cannot remove {place.path}: {_oserror_text(exc)}")
                        break
                    time.sleep(0.01)
            try:
                os.rmdir(place.parent)  # only succeeds once no session uses it
            except OSError:
                pass
        self.places = []

    @classmethod
    def left_behind(cls, session: str, **options) -> "Limits":
        """The cgroups a session's actor created but, killed, never removed: call
        ``kill()`` and ``cleanup()`` on the result (the supervisor buries it)."""
        found = cls({}, session, **options)
        for controller in sorted(set(CONTROLLER.values())):
            try:
                place = found._place(controller)
            except Unavailable:
                continue
            if os.path.isdir(place.path) and place not in found.places:
                found.places.append(place)
        return found

    def _place(self, controller: str) -> Place:
        """The cgroup for ``controller``: its v1 hierarchy if mounted, else v2."""
        for entry in sorted(os.listdir(self.root)) if os.path.isdir(self.root) else []:
            mount = os.path.join(self.root, entry)
            if controller in entry.split(",") and os.path.isfile(os.path.join(mount, "tasks")):
                return self._session_place(1, mount, self.own.get(controller))
        for mount in (self.root, os.path.join(self.root, "unified")):
            if os.path.isfile(os.path.join(mount, "cgroup.controllers")):
                place = self._session_place(2, mount, self.own.get(""))
                own = os.path.dirname(place.parent)
                if controller not in _read(own, "cgroup.controllers").split():
                    raise Unavailable(f"no cgroup with the {controller} controller")
                return place
        raise Unavailable(f"no cgroup with the {controller} controller")

    def _session_place(self, version: int, mount: str, own: str | None) -> Place:
        if own is None:
            raise Unavailable(f"this process has no cgroup in {mount}")
        parent = os.path.join(mount + own.rstrip("/"), "coop")
        return Place(version, parent, os.path.join(parent, self.session))

    def _create(self, place: Place) -> None:
        if place in self.places:
            return
        own = os.path.dirname(place.parent)
        if not os.access(own, os.W_OK):
            raise Unavailable(f"no writable cgroup ({own} is not delegated to uid {os.getuid()})")
        os.makedirs(place.path, exist_ok=True)
        self.places.append(place)
        if place.version == 2:
            self._enable_controllers(own, place.parent)

    def _enable_controllers(self, own: str, parent: str) -> None:
        """Hand the wanted v2 controllers down to ``parent``'s children."""
        available = _read(own, "cgroup.controllers").split()
        wanted = " ".join(f"+{CONTROLLER[name]}" for name in self.wanted
                          if CONTROLLER[name] in available)
        for cgroup in (own, parent):
            try:
                self._write(cgroup, "cgroup.subtree_control", wanted, True)
            except OSError as exc:
                raise Unavailable(
                    f"cannot enable controllers in {cgroup}: {_oserror_text(exc)} (a cgroup"
                    " with processes cannot pass them on; start coop in a delegated cgroup"
                    " of its own)") from None

    @staticmethod
    def _write(cgroup: str, file: str, content: str, required: bool) -> None:
        """One write to an existing control file (cgroupfs files are never created)."""
        path = os.path.join(cgroup, file)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, content.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            if required or not isinstance(exc, FileNotFoundError):
                raise OSError(exc.errno, f"cannot write {content!r} to {path}: "
                              f"{exc.strerror}") from None

    def _fallback(self, name: str, value: float, reason: str) -> str:
        if name != "pids":
            return f"not enforced: {reason}"
        if os.getuid() == 0:
            return f"not enforced: {reason}; RLIMIT_NPROC does not bind root"
        self.nproc = int(value)
        if kernel_version(os.uname().release) >= NPROC_PER_USERNS:
            return f"enforced (RLIMIT_NPROC in the session's user namespace; {reason})"
        self.nproc += _tasks_of_uid(os.getuid())
        return f"enforced (RLIMIT_NPROC, shared with every process of uid {os.getuid()}; {reason})"


def _read(cgroup: str, file: str) -> str:
    try:
        with open(os.path.join(cgroup, file)) as handle:
            return handle.read()
    except OSError:
        return ""


def _procs(cgroup: str) -> set[int]:
    return {int(line) for line in _read(cgroup, "cgroup.procs").split()}


def _oserror_text(exc: OSError) -> str:
    if exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return exc.strerror or str(exc)


def _tasks_of_uid(uid: int) -> int:
    """Threads owned by ``uid`` now: what an old kernel counts against its RLIMIT_NPROC."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                continue
    return count

