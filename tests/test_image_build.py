"""IMG-4, IMG-5, CF-5: building, storing and collecting rootfs, steps really executed."""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest

from coop.coopfile import build_hash, validate
from coop.image.build import (BuildError, Rootfs, ensure_rootfs, gc, plan, rootfs_for,
                              status_lines)
from coop.image.error import ImageError
from coop.image.progress import Extract, Note, Step
from tests.image_fixture import (BUSYBOX, TempUser, busybox_members, chroot_step, file, image,
                                 sha, tar_bytes, write_docker_archive, write_layout)
from tests.registry_fixture import Registry

BASE = tar_bytes(busybox_members())
EXTRA = tar_bytes([file("etc/motd", b"from layer 2\n")])


def table(image_ref: str, *, run=(), install="", packages=None) -> dict:
    return validate({"base": {"image": image_ref}, "setup": {"run": list(run)},
                     "packages": packages or {}, "agent": {"command": "sh", "install": install}})


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return write_layout(tmp_path_factory.mktemp("layout"),
                        {"latest": image([BASE, EXTRA], env=("PATH=/bin", "IMAGE_VAR=42"))})


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


class Steps:
    """A counting run_step that really runs each command in the rootfs."""

    def __init__(self, fail_on: str | None = None):
        self.commands: list[str] = []
        self.fail_on = fail_on

    def __call__(self, rootfs, command, env, *, host_lower):
        self.commands.append(command)
        if self.fail_on and self.fail_on in command:
            return chroot_step(rootfs, "exit 3", env, host_lower=host_lower)
        return chroot_step(rootfs, command, env, host_lower=host_lower)


def test_setup_and_install_run_inside_the_image(layout, state):
    events = []
    t = table(f"oci:{layout}", run=["echo hi > /etc/built", "test $IMAGE_VAR = 42"],
              install="cat /etc/motd > /installed")
    found = ensure_rootfs(t, state, progress=events.append, run_step=Steps())
    assert found.path == state / "rootfs" / build_hash(t) / "rootfs" and not found.host_lower
    assert (found.path / "etc" / "built").read_text() == "hi\n"
    assert (found.path / "installed").read_text() == "from layer 2\n"
    assert [str(e) for e in events if isinstance(e, Step)] == [
        "[1/3] echo hi > /etc/built", "[2/3] test $IMAGE_VAR = 42",
        "[3/3] cat /etc/motd > /installed"]
    assert [(e.index, e.count) for e in events if isinstance(e, Extract)] == [(1, 2), (2, 2)]
    meta = found.meta
    assert meta["image"] == f"oci:{layout}" and meta["digest"].startswith("sha256:")
    assert "IMAGE_VAR=42" in meta["env"] and meta["hash"] == build_hash(t)
    assert stat.S_IMODE(os.stat(state / "rootfs").st_mode) == 0o700
    assert rootfs_for(t, state) == found


def test_warm_ensure_is_a_noop(layout, state):
    t = table(f"oci:{layout}", run=["true"])
    steps = Steps()
    ensure_rootfs(t, state, run_step=steps)
    started = time.perf_counter()
    again = ensure_rootfs(t, state, run_step=steps)
    elapsed = time.perf_counter() - started
    print(f"\nwarm ensure_rootfs: {elapsed * 1000:.2f} ms")
    assert steps.commands == ["true"] and again.path.is_dir()


def test_failing_step_keeps_the_previous_rootfs(layout, state):
    t = table(f"oci:{layout}", run=["echo first > /marker", "true"])
    ensure_rootfs(t, state, run_step=Steps())
    failing = Steps(fail_on="true")
    with pytest.raises(BuildError) as err:
        ensure_rootfs(t, state, force=True, run_step=failing)
    assert err.value.exit_code == 3
    assert str(err.value) == ("build step [2/2] true failed with exit code 3; "
                              "the previous rootfs is unchanged")
    kept = rootfs_for(t, state)
    assert (kept.path / "marker").read_text() == "first\n"
    assert [p.name for p in (state / "rootfs").iterdir() if p.name.startswith(".build")] == []
    rebuilt = ensure_rootfs(t, state, force=True, run_step=Steps())
    assert rebuilt.meta["built"] > kept.meta["built"] and (rebuilt.path / "marker").exists()


def test_not_built_and_host_without_steps(layout, state):
    assert rootfs_for(table(f"oci:{layout}"), state) is None
    assert rootfs_for(table("host"), state) == Rootfs(None, None, True)
    assert ensure_rootfs(table("host"), state) == Rootfs(None, None, True)
    assert not (state / "rootfs").exists()
    with pytest.raises(ValueError, match="no run_step"):
        ensure_rootfs(table(f"oci:{layout}", run=["true"]), state)


def test_host_base_with_setup_builds_an_upper_layer(state):
    t = table("host", run=["echo built > /etc/coop-host-test", "test -x /usr/bin/env"])
    found = ensure_rootfs(t, state, run_step=Steps())
    assert found.host_lower and found.path.name == "rootfs"
    assert (found.path / "etc" / "coop-host-test").read_text() == "built\n"
    assert not Path("/etc/coop-host-test").exists()
    assert sorted(os.listdir(found.path)) == ["etc"]


def test_dir_source_in_place_or_copied(tmp_path, state):
    src = tmp_path / "tree"
    (src / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, src / "bin" / "busybox")
    (src / "bin" / "sh").symlink_to("busybox")
    in_place = ensure_rootfs(table(f"dir:{src}"), state)
    assert in_place.path == src
    copied = ensure_rootfs(table(f"dir:{src}", run=["/bin/busybox touch /new"]), state,
                           run_step=Steps())
    assert (copied.path / "new").exists() and not (src / "new").exists()
    assert (copied.path / "bin" / "sh").is_symlink()


def test_docker_archive_source(tmp_path, state):
    archive = write_docker_archive(tmp_path / "img.tar", [BASE, EXTRA])
    t = table(f"docker-archive:{archive}", run=['test "$FROM_ARCHIVE" = 1'])
    found = ensure_rootfs(t, state, run_step=Steps())
    assert (found.path / "etc" / "motd").read_text() == "from layer 2\n"
    assert found.meta["digest"].startswith("sha256:")


def test_concurrent_ensure_builds_once(layout, state):
    t = table(f"oci:{layout}", run=["echo once >> /count"])
    steps = Steps()
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        ensure_rootfs(t, state, run_step=steps))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 3 and steps.commands == ["echo once >> /count"]
    assert (results[0].path / "count").read_text() == "once\n"


@pytest.fixture(scope="module")
def registry(layout):
    reg = Registry()
    try:
        reg.push(layout, "latest", "build/busybox")
        yield reg
    finally:
        reg.close()


def test_two_coopfiles_two_rootfs_and_gc(registry, state, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    ref = f"{registry.address}/build/busybox:latest"
    a = ensure_rootfs(table(ref, run=["echo a > /who"]), state, run_step=Steps())
    b = ensure_rootfs(table(ref, run=["echo b > /who"]), state, run_step=Steps())
    assert a.hash != b.hash
    assert (a.path / "who").read_text() == "a\n" and (b.path / "who").read_text() == "b\n"
    blobs = state / "cache" / "oci" / "blobs" / "sha256"
    assert len(list(blobs.iterdir())) == 3 and set(a.meta["blobs"]) == set(b.meta["blobs"])
    assert gc(state, {a.hash}) == [b.hash]
    assert rootfs_for(table(ref, run=["echo a > /who"]), state) == a
    assert not b.path.exists() and len(list(blobs.iterdir())) == 3
    assert gc(state, set()) == [a.hash]
    assert list(blobs.iterdir()) == [] and not a.path.exists()


def test_plan_maps_managers_to_noninteractive_commands():
    notes = []
    packages = {"apk": ["git", "curl"], "apt": ["a", "b"], "pip": ["x>=1;y"], "brew": ["x"],
                "npm": []}
    steps = plan(table("alpine", packages=packages, run=["make"], install="npm i -g agent"),
                 notes.append)
    assert [(s.label, s.command) for s in steps] == [
        ("apk add git curl", "apk add --no-cache git curl"),
        ("apt-get install a b", "apt-get -o APT::Sandbox::User=root update && "
         "apt-get -o APT::Sandbox::User=root install -y --no-install-recommends a b"),
        ("pip install x>=1;y", "pip install 'x>=1;y'"),
        ("make", "make"), ("npm i -g agent", "npm i -g agent")]
    assert notes == ["skipping [packages].brew: unknown package manager"]
    for manager, expected in (("dnf", "dnf install -y p"), ("yum", "yum install -y p"),
                              ("pacman", "pacman -Sy --noconfirm p"), ("pip", "pip install p"),
                              ("npm", "npm install -g p"), ("apt-get", "install -y")):
        assert expected in plan(table("alpine", packages={manager: ["p"]}))[0].command


def test_status_lines(layout, state):
    t = table(f"oci:{layout}", packages={"apk": ["git"]})
    assert status_lines(table("host"), state) == [
        "rootfs: host system directories (no build needed)"]
    assert status_lines(t, state) == [f"image: oci:{layout}", "rootfs: not built (run coop init)"]
    plain = table(f"oci:{layout}")
    ensure_rootfs(plain, state)
    lines = status_lines(plain, state, now=time.time() + 2 * 3600 + 15 * 60 + 5)
    assert lines[0].startswith(f"image: oci:{layout} (sha256:")
    assert lines[1] == f"rootfs: built 2h 15m ago ({build_hash(plain)[:12]})"
    assert lines[2] == "packages: none"


BUILD_AS_USER = """
import sys
sys.path.insert(0, {repo!r})
from coop.coopfile import validate
from coop.image.build import ensure_rootfs
from coop.image.progress import Note
from tests.image_fixture import chroot_step
t = validate({{"base": {{"image": "oci:{layout}"}}, "setup": {{"run": ["echo me > /etc/who"]}},
              "agent": {{"command": "sh"}}}})
def step(rootfs, command, env, *, host_lower):
    return chroot_step(rootfs, command, env, host_lower=host_lower,
                       unshare=("--user", "--map-root-user", "--mount"))
print(ensure_rootfs(t, {state!r}, run_step=step).path)
"""


def test_unprivileged_user_builds_in_a_user_namespace():
    user = TempUser.create()
    try:
        layout = write_layout(user.home / "layout", {"latest": image([BASE, EXTRA])})
        repo = str(Path(__file__).resolve().parent.parent)
        state = user.home / "state"
        done = user.run([user.PYTHON, "-c", BUILD_AS_USER.format(
            repo=repo, layout=layout, state=str(state))], cwd=str(user.home))
        assert done.returncode == 0, done.stderr
        rootfs = Path(done.stdout.strip())
        assert (rootfs / "etc" / "who").read_text() == "me\n"
        assert os.stat(rootfs / "bin" / "busybox").st_uid == user.uid
        assert stat.S_IMODE(os.stat(state / "rootfs").st_mode) == 0o700
    finally:
        user.delete()


def test_notes_for_unknown_managers_reach_progress(layout, state):
    events = []
    ensure_rootfs(table(f"oci:{layout}", packages={"brew": ["x"]}), state,
                  progress=events.append)
    assert Note("skipping [packages].brew: unknown package manager") in events


def test_tampered_local_layout_is_refused_and_nothing_published(tmp_path, state):
    built = image([BASE, EXTRA])
    layout = write_layout(tmp_path / "layout", {"latest": built})
    blob = layout / "blobs" / "sha256" / sha(built.layers[1][1]).split(":")[1]
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # still valid gzip framing up to the trailer; the digest must catch it
    blob.write_bytes(bytes(data))
    t = table(f"oci:{layout}")
    with pytest.raises(ImageError, match="does not match"):
        ensure_rootfs(t, state)
    assert rootfs_for(t, state) is None
    assert [p.name for p in (state / "rootfs").iterdir() if not p.name.endswith(".lock")] == []
