"""coop.image.tree: what a session can leave behind is removed, nothing else.

The removals run in a child process with only 32 descriptors allowed, as
root and as an unprivileged user (for whom directory modes really bind)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from coop.image import tree
from tests import sandbox_fixture

sandbox_user = sandbox_fixture.sandbox_user  # fixture
DEPTH = 5000

REMOVE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
from coop.image import tree
tree.remove(sys.argv[1])
"""


def remove_in_child(path: str, user=None) -> subprocess.CompletedProcess:
    """``tree.remove(path)`` in a fresh interpreter (as ``user`` when given)."""
    prefix = [] if user is None else ["setpriv", f"--reuid={user.pw_uid}",
                                      f"--regid={user.pw_gid}", "--clear-groups"]
    return subprocess.run([*prefix, sandbox_fixture.PYTHON, "-c", REMOVE, path],
                          env={"PYTHONPATH": sandbox_fixture.ROOT, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120, check=False)


def dig(base: str, depth: int, owner: tuple[int, int], mode_every: int) -> None:
    """``base/d/d/.../d`` ``depth`` levels deep, a file every 100 levels, all of
    it ``owner``'s; every ``mode_every``-th directory ends up read-only (0555)
    or closed (0000)."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    modes: list[tuple[int, int]] = []  # (directory fd, mode) to apply on the way out
    try:
        for level in range(depth):
            if level % 100 == 0:
                file = os.open(f"f{level}", os.O_WRONLY | os.O_CREAT, 0o444, dir_fd=fd)
                os.fchown(file, *owner)
                os.close(file)
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.fchown(child, *owner)
            if level % mode_every == 0:
                modes.append((os.dup(child), 0o555 if level % (2 * mode_every) else 0o000))
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
        for held, mode in reversed(modes):
            os.fchmod(held, mode)
            os.close(held)


@pytest.fixture
def world(sandbox_user):
    """victim/ (root's, never to be touched) and doomed/, the user's, in its home."""
    base = Path(tempfile.mkdtemp(prefix="tree-", dir=sandbox_user.pw_dir))
    os.chmod(base, 0o755)
    victim = base / "victim"
    victim.mkdir()
    (victim / "keep").write_text("precious")
    doomed = base / "doomed"
    doomed.mkdir()
    owner = (sandbox_user.pw_uid, sandbox_user.pw_gid)
    for link, target in (("link-to-dir", victim), ("link-to-file", victim / "keep")):
        os.symlink(target, doomed / link)
        os.lchown(doomed / link, *owner)
    os.chown(base, *owner)
    os.chown(doomed, *owner)
    dig(str(doomed), DEPTH, owner, mode_every=1000)
    try:
        yield victim, doomed
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(base)], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", str(base)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("who", ["root", "user"])
def test_a_5000_deep_tree_with_closed_dirs_and_symlinks_goes_and_nothing_else(
        world, sandbox_user, who):
    victim, doomed = world
    done = remove_in_child(str(doomed), sandbox_user if who == "user" else None)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not os.path.lexists(doomed)
    assert (victim / "keep").read_text() == "precious"


def test_a_missing_path_is_fine(tmp_path):
    tree.remove(tmp_path / "nothing")
    assert sorted(os.listdir(tmp_path)) == []


def test_a_single_file_or_symlink_is_removed_without_following(tmp_path):
    (tmp_path / "target").write_text("stays")
    os.symlink(tmp_path / "target", tmp_path / "link")
    tree.remove(tmp_path / "link")
    assert sorted(os.listdir(tmp_path)) == ["target"]
    tree.remove(tmp_path / "target")
    assert os.listdir(tmp_path) == []
