"""IMG-4 end to end on a real distribution: a debootstrapped Debian rootfs gets an
``[packages].apt`` package installed by a build step, from the machine's own apt mirror."""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import time

import pytest

from coop.coopfile import validate
from coop.image.build import ensure_rootfs
from tests.image_fixture import chroot_step, run_in


def apt_mirror() -> tuple[str, str]:
    """(mirror URL, suite) of the first Debian main archive this machine's apt uses."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        text = open(path).read()
        for stanza in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(\S+)", stanza, re.M)
            if uris and suites and "security" not in suites.group(1):
                return uris.group(1), suites.group(1)
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        try:
            lines = open(path).read().splitlines()
        except OSError:
            continue
        for line in lines:
            match = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)\s+main", line)
            if match and "security" not in match.group(2):
                return match.group(1), match.group(2)
    raise RuntimeError("no Debian mirror found in /etc/apt/sources.list*")


@pytest.mark.slow
def test_debian_rootfs_installs_an_apt_package(tmp_path):
    assert shutil.which("debootstrap"), "apt-get install debootstrap"
    mirror, suite = apt_mirror()
    base = tmp_path / "debian"
    started = time.monotonic()
    subprocess.run(["debootstrap", "--variant=minbase", suite, str(base), mirror], check=True,
                   capture_output=True, timeout=1200)
    bootstrapped = time.monotonic()
    table = validate({"base": {"image": f"dir:{base}"}, "packages": {"apt": ["hello"]},
                      "agent": {"command": "bash"}})
    found = ensure_rootfs(table, tmp_path / "state", run_step=chroot_step)
    built = time.monotonic()
    print(f"\ndebootstrap {bootstrapped - started:.0f} s, build (copy + apt) "
          f"{built - bootstrapped:.0f} s")
    assert run_in(found.path, "hello").stdout == "Hello, world!\n"
    assert not (base / "usr" / "bin" / "hello").exists()  # the dir: source is never changed
