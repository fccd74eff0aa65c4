"""SB-9: find out, before starting anything, whether this host lets us create
a user namespace, and if not say which setting forbids it and how to get out.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from coop.sandbox import syscalls
from coop.sandbox.syscalls import CLONE_NEWUSER, SandboxError

Reader = Callable[[str], "str | None"]

# (sysctl name, /proc/sys path, value that blocks, applies to root too)
_BLOCKERS = (
    ("user.max_user_namespaces", "/proc/sys/user/max_user_namespaces", "0", True),
    ("kernel.unprivileged_userns_clone", "/proc/sys/kernel/unprivileged_userns_clone", "0",
     False),
    ("kernel.apparmor_restrict_unprivileged_userns",
     "/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1", False),
)


def read_sysctl(path: str) -> str | None:
    """The value of a /proc/sys file, or None when this kernel has no such knob."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def blocking_setting(read: Reader = read_sysctl, uid: int | None = None) -> tuple[str, str] | None:
    """``(name, value)`` of the first sysctl that forbids user namespaces to ``uid``."""
    uid = os.geteuid() if uid is None else uid
    for name, path, bad, for_root in _BLOCKERS:
        if uid == 0 and not for_root:
            continue
        if read(path) == bad:
            return name, bad
    return None


def denied_message(setting: tuple[str, str] | None) -> str:
    """One line naming the setting and the two ways out."""
    if setting is None:
        return ("this host does not allow unprivileged user namespaces (unshare: EPERM), "
                "which coop's sandbox needs: allow them for coop with an AppArmor profile "
                "(userns rule) or enable them with sysctl "
                "(kernel.apparmor_restrict_unprivileged_userns=0, "
                "kernel.unprivileged_userns_clone=1, user.max_user_namespaces>0)")
    name, value = setting
    fix = {"user.max_user_namespaces": "15000"}.get(name, "1" if value == "0" else "0")
    sysctl = f"run `sudo sysctl -w {name}={fix}`"
    if name != "kernel.apparmor_restrict_unprivileged_userns":
        return (f"this host forbids user namespaces ({name}={value}), which coop's sandbox "
                f"needs: {sysctl} (an AppArmor profile does not lift this setting)")
    return (f"this host forbids unprivileged user namespaces ({name}={value}), which coop's "
            f"sandbox needs: install an AppArmor profile that allows coop to create user "
            f"namespaces (a `userns,` rule for the python3 that runs coop), or {sysctl}")


def check_userns(read: Reader = read_sysctl, uid: int | None = None) -> None:
    """Raise SandboxError naming the blocking setting, if there is one."""
    setting = blocking_setting(read, uid)
    if setting is not None:
        raise SandboxError(denied_message(setting))


def clone(flags: int, uid: int, read: Reader = read_sysctl) -> int:
    """``syscalls.clone``; when the kernel refuses the user namespace (EPERM from a
    policy, ENOSPC from a zero limit), the SB-9 message instead of the errno."""
    try:
        return syscalls.clone(flags)
    except SandboxError as exc:
        if flags & CLONE_NEWUSER and exc.errno in (errno.EPERM, errno.ENOSPC):
            raise SandboxError(denied_message(blocking_setting(read, uid)), exc.errno) from None
        raise
