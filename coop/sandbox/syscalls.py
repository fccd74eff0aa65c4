"""ctypes wrappers for the namespace and mount syscalls Python 3.11 lacks.

Every failure raises ``SandboxError`` with one line naming the call, its
path(s) and the errno, the way bubblewrap reports them, e.g.
``mount(overlay → /usr): EPERM (Operation not permitted)``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
import threading

from coop.launcher import LaunchError

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4

_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "armv7l": 218, "ppc64le": 203,
               "s390x": 217, "i686": 217}

_CLONE = {"x86_64": 56, "aarch64": 220, "riscv64": 220, "armv7l": 120, "ppc64le": 120,
          "s390x": 120, "i686": 120}

_libc = ctypes.CDLL(None, use_errno=True)
# Holds the GIL across the call, so the child of clone() starts out holding it.
_libc_with_gil = ctypes.PyDLL(None, use_errno=True)


class SandboxError(LaunchError):
    """A sandbox could not be built; the message is one line. ``errno`` is
    set when a syscall said why."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


def failure(call: str, detail: str, err: int) -> SandboxError:
    """``call(detail): ENAME (text)`` for errno ``err``."""
    name = errno.errorcode.get(err, f"errno {err}")
    return SandboxError(f"{call}({detail}): {name} ({os.strerror(err)})", err)


def _check(result: int, call: str, detail: str) -> None:
    if result < 0:
        raise failure(call, detail, ctypes.get_errno())


def _flag_names(flags: int, names: dict[int, str]) -> str:
    return "|".join(name for bit, name in names.items() if flags & bit) or "0"


_CLONE_NAMES = {CLONE_NEWUSER: "CLONE_NEWUSER", CLONE_NEWNS: "CLONE_NEWNS",
                CLONE_NEWPID: "CLONE_NEWPID", CLONE_NEWUTS: "CLONE_NEWUTS",
                CLONE_NEWIPC: "CLONE_NEWIPC", CLONE_NEWNET: "CLONE_NEWNET"}


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare", _flag_names(flags, _CLONE_NAMES))


def clone(flags: int) -> int:
    """A child born inside the new namespaces of ``flags``: clone(2) without a new
    stack, so it returns twice like os.fork() (0 in the child, its pid here).

    One process instead of fork + unshare + fork for a new PID namespace, and,
    when no other thread exists, none of the interpreter's after-fork work in the
    child (about 1 ms each): the sandbox init replaces everything it inherited.
    With threads, the interpreter's fork hooks run as for os.fork()."""
    number = _CLONE.get(platform.machine())
    if number is None:
        raise SandboxError(f"clone: unsupported architecture {platform.machine()}")
    word = flags | signal.SIGCHLD
    args = (0, word) if platform.machine() == "s390x" else (word, 0)  # s390: stack first
    hooks = threading.active_count() > 1
    if hooks:
        ctypes.pythonapi.PyOS_BeforeFork()
    pid = _libc_with_gil.syscall(ctypes.c_long(number), ctypes.c_ulong(args[0]),
                                 ctypes.c_ulong(args[1]), ctypes.c_ulong(0), ctypes.c_ulong(0),
                                 ctypes.c_ulong(0))
    err = ctypes.get_errno()
    if hooks:
        (ctypes.pythonapi.PyOS_AfterFork_Child if pid == 0 else ctypes.pythonapi.PyOS_AfterFork_Parent)()
    if pid < 0:
        raise failure("clone", _flag_names(flags, _CLONE_NAMES), err)
    return pid


def setns(fd: int, nstype: int, label: str) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns", label)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None, label: str | None = None) -> None:
    """mount(2); ``label`` is the ``source → target`` text for errors when the
    real paths are ``/proc/self/fd`` links that would mean nothing to a user."""
    result = _libc.mount(_bytes(source), target.encode(), _bytes(fstype), ctypes.c_ulong(flags),
                         _bytes(data))
    _check(result, "mount", label or f"{fstype or source} → {target}")


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), ctypes.c_int(flags)), "umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    number = _PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise SandboxError(f"pivot_root: unsupported architecture {platform.machine()}")
    result = _libc.syscall(ctypes.c_long(number), new_root.encode(), put_old.encode())
    _check(result, "pivot_root", f"{new_root}, {put_old}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname", name)


def prctl(option: int, value: int, label: str) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl", label)


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else text.encode()
