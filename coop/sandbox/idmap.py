"""Which ids a user namespace maps (SB-1, IMG-4), sans I/O.

A session maps uid 0 inside to the invoking user and nothing else. A build
step may need more: package managers chown files to system users (dpkg's
``_apt``, ``messagebus``), which fails with a single mapping. Root maps the
whole id range onto itself; an unprivileged user with a subordinate range in
``/etc/subuid`` and ``/etc/subgid`` gets it as ids 1..count through the
setuid helpers ``newuidmap``/``newgidmap`` (Debian package ``uidmap``).
Otherwise the single mapping is the fallback. Only the single mapping may be
written by the namespace's own process; the kernel wants every wider one
written from the parent namespace.
"""

from __future__ import annotations

from dataclasses import dataclass

FULL_RANGE = 4294967295  # every id but the invalid (uid_t)-1
Extent = tuple[int, int, int]  # (inside, outside, count), a uid_map line


@dataclass(frozen=True)
class IdMap:
    """``uid_map``/``gid_map`` contents. ``by_parent``: written from the parent
    namespace, by newuidmap/newgidmap when ``helpers``; ``deny_setgroups``:
    setgroups(2) is off inside (required before an unprivileged process
    writes its own gid_map)."""

    uids: tuple[Extent, ...]
    gids: tuple[Extent, ...]
    by_parent: bool = False
    helpers: bool = False
    deny_setgroups: bool = True

    def table(self, extents: tuple[Extent, ...]) -> str:
        return "".join(f"{inside} {outside} {count}\n" for inside, outside, count in extents)

    def helper_argv(self, pid: int) -> list[list[str]]:
        """The newuidmap and newgidmap command lines for process ``pid``."""
        return [[tool, str(pid), *(str(n) for extent in extents for n in extent)]
                for tool, extents in (("newuidmap", self.uids), ("newgidmap", self.gids))]

    def describe(self) -> str:
        extra = sum(count for inside, _, count in self.uids if inside != 0)
        if self.uids == ((0, 0, FULL_RANGE),):
            return "every uid mapped to itself"
        return f"root inside = uid {self.uids[0][1]} outside" + \
            (f", uids 1-{extra} = a subordinate range" if extra else "")


def single(uid: int, gid: int) -> IdMap:
    """Root inside = ``uid``/``gid`` outside, nothing else."""
    return IdMap(((0, uid, 1),), ((0, gid, 1),))


def subordinate_range(text: str, user: str, uid: int) -> tuple[int, int] | None:
    """``(start, count)`` of the first ``/etc/subuid``-style entry for ``user``
    (by name or number), or None."""
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if start >= 0 and count > 0:
            return start, count
    return None


def for_build(uid: int, gid: int, user: str, subuid: str, subgid: str,
              helpers_installed: bool) -> IdMap:
    """The widest mapping this user can have for a build step.

    ``subuid``/``subgid`` are the files' texts ("" when absent)."""
    if uid == 0:
        return IdMap(((0, 0, FULL_RANGE),), ((0, 0, FULL_RANGE),), by_parent=True,
                     deny_setgroups=False)
    uids = subordinate_range(subuid, user, uid)
    gids = subordinate_range(subgid, user, uid)
    if not (helpers_installed and uids and gids):
        return single(uid, gid)
    return IdMap(((0, uid, 1), (1, uids[0], uids[1])), ((0, gid, 1), (1, gids[0], gids[1])),
                 by_parent=True, helpers=True, deny_setgroups=False)
