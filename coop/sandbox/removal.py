"""Removing a tree a build step left with subordinate owners (IMG-5).

An unprivileged user's build step runs with its ``/etc/subuid`` range as ids
1..N (``coop.sandbox.idmap``), so a rootfs can hold directories owned by a
uid the user is not: the user cannot empty them. Root of a user namespace
with the same mapping can, because every owner in the tree is mapped there.
The plain removal stays the fast path; the namespace is made only when it
fails with EACCES/EPERM and the user has such a range.
"""

from __future__ import annotations

import os
import subprocess

from coop.image import tree

MAP_TIMEOUT = 10.0


def remove(path: os.PathLike | str) -> None:
    """Remove ``path`` and everything below it; a missing path is fine."""
    try:
        tree.remove(path)
        return
    except PermissionError:
        from coop.sandbox.build import build_ids  # only on the slow path

        ids = build_ids()
        if not ids.helpers:
            raise
    _remove_as_mapped_root(os.path.abspath(path), ids)


def _remove_as_mapped_root(path: str, ids) -> None:
    """Fork a child into a fresh user namespace, map it like a build step (by
    newuidmap/newgidmap from here, as the kernel requires), and let it remove
    ``path``. Its error, if any, comes back as one line."""
    from coop.sandbox import syscalls  # ctypes: kept off the fast path of `coop init`

    report_r, report_w = os.pipe()  # child -> parent: "unshared", then its error text
    go_r, go_w = os.pipe()  # parent -> child: the maps are written (EOF: give up)
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        os.close(go_w)
        _child(path, report_w, go_r, syscalls)  # never returns
    os.close(report_w)
    os.close(go_r)
    try:
        failure = _answer_child(pid, report_r, go_w, ids)
    finally:
        os.close(go_w)
        with os.fdopen(report_r, "rb") as report:
            error = report.read().decode(errors="replace").strip()
        _, status = os.waitpid(pid, 0)
    if failure or error or os.waitstatus_to_exitcode(status) != 0:
        raise PermissionError(f"cannot remove {path}: {failure or error or 'removal failed'}")


def _answer_child(pid: int, report_r: int, go_w: int, ids) -> str:
    """Wait for the child's namespace, write its maps; the reason when that fails."""
    if os.read(report_r, 1) != b"u":
        return ""  # the child failed before unsharing ("e"); the rest of its report says why
    for argv in ids.helper_argv(pid):
        try:
            res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, timeout=MAP_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{argv[0]}: {exc}"
        if res.returncode != 0:
            lines = res.stderr.decode(errors="replace").strip().splitlines() or ["?"]
            return f"{argv[0]} failed: {lines[-1]}"
    os.write(go_w, b"g")
    return ""


def _child(path: str, report_w: int, go_r: int, syscalls) -> None:
    code, unshared = 1, False
    try:
        syscalls.unshare(syscalls.CLONE_NEWUSER)
        unshared = True
        os.write(report_w, b"u")
        if os.read(go_r, 1) == b"g":
            tree.remove(path)
            code = 0
    except BaseException as exc:  # noqa: BLE001 — never unwind into the caller's code
        try:
            os.write(report_w, (b"" if unshared else b"e") +
                     str(exc).encode(errors="replace")[:4096])
        except BaseException:  # noqa: BLE001
            pass
    os._exit(code)
