"""IMG-3: layer extraction semantics and hostile layers (real tarballs, real files)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from coop.image.layers import LayerError, Limits, extract
from tests.image_fixture import (TempUser, busybox_members, compress, directory, file, hardlink,
                                 opaque, run_in, snapshot, special, symlink, tar_bytes, whiteout)

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def target(tmp_path):
    """A rootfs dir with a canary dir next to it that must never change."""
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "secret").write_text("host data")
    root = tmp_path / "rootfs"
    root.mkdir()
    before = snapshot(tmp_path / "canary")
    yield root
    assert snapshot(tmp_path / "canary") == before


def apply(root: Path, members, how: str = "gzip", **kwargs):
    return extract(io.BytesIO(compress(tar_bytes(members), how)), root, digest=DIGEST, **kwargs)


@pytest.mark.parametrize("how", ["gzip", "none", "zstd"])
def test_busybox_layer_runs_in_every_compression(target, how):
    stats = apply(target, busybox_members(), how)
    assert stats.files == 2 and stats.links == len(busybox_members()) - 6
    done = run_in(target, "echo hello from $(readlink /bin/sh)")
    assert done.stdout == "hello from busybox\n", done.stderr


def test_whiteout_removes_lower_file_and_opaque_hides_lower_dir(target):
    apply(target, busybox_members() + [
        directory("data"), file("data/keep", b"1"), file("data/gone", b"2"),
        directory("data/sub"), file("data/sub/deep", b"3"),
        directory("opq"), file("opq/lower-a", b"a"), directory("opq/lower-dir"),
        file("opq/lower-dir/x", b"x"),
    ])
    apply(target, [
        whiteout("data/gone"), whiteout("data/sub"),
        directory("opq"), file("opq/upper-before", b"u1"), opaque("opq"),
        file("opq/upper-after", b"u2"), whiteout("missing/nothing"),
    ])
    assert sorted(os.listdir(target / "data")) == ["keep"]
    assert sorted(os.listdir(target / "opq")) == ["upper-after", "upper-before"]
    assert not any(name.startswith(".wh.") for _, _, names in os.walk(target) for name in names)
    assert run_in(target, "cat /data/keep /opq/upper-after").stdout == "1u2"


def test_symlink_chain_resolves_inside_rootfs(target):
    apply(target, busybox_members() + [
        symlink("usr/bin/echo", "../../bin/link1"), symlink("bin/link1", "/bin/link2"),
        symlink("bin/link2", "busybox"), symlink("etc/hostfile", "/etc/passwd"),
    ])
    done = run_in(target, "/usr/bin/echo chained; cat /etc/hostfile")
    assert done.stdout == "chained\nroot:x:0:0:root:/root:/bin/sh\n"  # the image's, not the host's


def test_modes_owners_times_and_replacements(target):
    apply(target, [
        directory("ro", 0o555), file("ro/f", b"x", 0o444),
        file("suid", b"#!", 0o4755, uid=123, gid=456),
        directory("was-dir"), file("was-dir/x"), file("was-file", b"old"),
        file("a", b"same inode"), hardlink("b", "a"),
    ])
    assert int(os.stat(target / "ro").st_mtime) == 1_700_000_000  # set after its entries
    apply(target, [file("was-dir", b"now a file"), directory("was-file"),
                   file("ro/g", b"added under a 0555 dir")])
    assert stat.S_IMODE(os.stat(target / "ro").st_mode) == 0o555
    st = os.stat(target / "suid")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and (st.st_uid, st.st_gid) == (123, 456)
    assert int(os.stat(target / "ro" / "f").st_mtime) == 1_700_000_000
    assert (target / "was-dir").read_bytes() == b"now a file" and (target / "was-file").is_dir()
    assert os.stat(target / "a").st_ino == os.stat(target / "b").st_ino
    assert (target / "ro" / "g").read_bytes() == b"added under a 0555 dir"


def test_devices_and_fifos_are_skipped(target):
    stats = apply(target, [special("dev-null", tarfile.CHRTYPE), special("blk", tarfile.BLKTYPE),
                           special("fifo", tarfile.FIFOTYPE), file("ok", b"1")])
    assert stats.skipped == 3 and os.listdir(target) == ["ok"]


HOSTILE = {
    "dotdot": ([file("../../etc/x", b"pwn")], "'..'"),
    "dotdot-inner": ([directory("a"), file("a/../../x", b"pwn")], "'..'"),
    "absolute": ([file("/abs", b"pwn")], "absolute"),
    "through-symlink-to-root": ([symlink("esc", "/"), file("esc/tmp/x", b"pwn")], "symlink"),
    "through-symlink-out": ([symlink("up", "../canary"), file("up/secret", b"pwn")], "symlink"),
    "through-inner-symlink": ([directory("real"), symlink("alias", "real"),
                               file("alias/x", b"pwn")], "symlink"),
    "symlink-then-dir-over": ([symlink("d", "../canary"), directory("d/sub")], "symlink"),
    "hardlink-host-path": ([hardlink("pw", "/etc/passwd")], "absolute"),
    "hardlink-dotdot": ([hardlink("pw", "../canary/secret")], "'..'"),
    "hardlink-through-symlink": ([symlink("esc", "../canary"), hardlink("pw", "esc/secret")],
                                 "symlink"),
    "hardlink-missing": ([hardlink("pw", "not/there")], "not a file in the rootfs"),
    "whiteout-dotdot": ([file(".wh..."), ], "invalid whiteout"),
    "file-below-file": ([file("f", b"1"), file("f/x", b"2")], "not a directory"),
    "too-deep": ([file("d/" * 200 + "f", b"1")], "deeper than 128"),
    "absurd-mtime": ([file("t", b"1", mtime=10**30)], "t: "),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layer_is_refused_and_nothing_escapes(target, case):
    members, reason = HOSTILE[case]
    with pytest.raises(LayerError) as err:
        apply(target, members)
    message = str(err.value)
    assert DIGEST in message and reason in message and "\n" not in message
    assert not (target.parent / "x").exists() and not (target.parent / "etc").exists()


def test_symlink_to_root_cannot_redirect_a_later_layer(target):
    apply(target, [symlink("etc", "/etc")])
    with pytest.raises(LayerError, match="symlink"):
        apply(target, [file("etc/passwd", b"pwn")])
    apply(target, [file("etc", b"replacing the link itself is fine")])
    assert (target / "etc").read_bytes() == b"replacing the link itself is fine"


def test_writing_over_an_existing_symlink_replaces_it(target, tmp_path):
    apply(target, [symlink("f", "../canary/secret")])
    apply(target, [file("f", b"inside")])
    assert not (target / "f").is_symlink() and (target / "f").read_bytes() == b"inside"


def _sparse_bomb() -> bytes:
    """A GNU sparse member declaring 2 GiB of real size in a few bytes."""
    info = tarfile.TarInfo("bomb")
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = 512
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    realsize = 2 << 30
    # one sparse entry (offset 0, numbytes 512) at 386, isextended=0, realsize at 483
    header[386:398] = b"%011o\0" % 0
    header[398:410] = b"%011o\0" % 512
    header[482] = 0
    header[483:495] = b"%011o\0" % realsize
    header[148:156] = b" " * 8
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header) + b"x" * 512 + b"\0" * 1024


def test_sparse_bomb_is_refused(target):
    with pytest.raises(LayerError, match="sparse"):
        extract(io.BytesIO(_sparse_bomb()), target, digest=DIGEST)
    assert os.listdir(target) == []


def test_declared_size_without_data_is_truncation(target):
    info = tarfile.TarInfo("big")
    info.size = 2 << 30
    blob = info.tobuf(format=tarfile.PAX_FORMAT) + b"y" * 4096
    with pytest.raises(LayerError, match="big: unexpected end of data"):
        extract(io.BytesIO(blob), target, digest=DIGEST)


def test_size_limits(target):
    limits = Limits(max_member_bytes=1000, max_layer_bytes=1500)
    with pytest.raises(LayerError, match="over the per-file limit"):
        apply(target, [file("one", b"x" * 1001)], limits=limits)
    with pytest.raises(LayerError, match="exceeds the limit"):
        apply(target, [file("a", b"x" * 800), file("b", b"x" * 800)], limits=limits)


def test_garbage_is_one_line_error(target):
    with pytest.raises(LayerError) as err:
        extract(io.BytesIO(b"\x1f\x8b" + b"not really gzip" * 100), target, digest=DIGEST)
    assert DIGEST in str(err.value) and "\n" not in str(err.value)


UNPRIVILEGED_SCRIPT = """
import io, os, sys
sys.path.insert(0, {repo!r})
from coop.image.layers import extract
from tests.image_fixture import *
root = {root!r}
os.mkdir(root)
extract(io.BytesIO(compress(tar_bytes([directory("ro", 0o555), file("ro/f", b"1", 0o444),
    file("suid", b"x", 0o4755, uid=0, gid=0), special("null", b"3")]), "gzip")),
    root, digest="sha256:" + "0" * 64)
extract(io.BytesIO(tar_bytes([whiteout("ro/f"), file("ro/g", b"2")])), root,
    digest="sha256:" + "1" * 64)
print(sorted(os.listdir(root)), sorted(os.listdir(root + "/ro")))
"""


def test_unprivileged_extraction(unprivileged_user):
    """No chown, devices skipped, setuid kept, 0555 lower dirs still take whiteouts."""
    root = unprivileged_user.home / "rootfs"
    repo = str(Path(__file__).resolve().parent.parent)
    done = unprivileged_user.run([unprivileged_user.PYTHON, "-c", UNPRIVILEGED_SCRIPT.format(
        repo=repo, root=str(root))])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['ro', 'suid'] ['g']"
    st = os.stat(root / "suid")
    assert st.st_uid == unprivileged_user.uid and st.st_mode & stat.S_ISUID
    # directories stay writable for their owner so later layers can add to them
    assert stat.S_IMODE(os.stat(root / "ro").st_mode) == 0o755


@pytest.fixture
def unprivileged_user():
    user = TempUser.create()
    try:
        yield user
    finally:
        user.delete()


def _children() -> set[str]:
    pid = os.getpid()
    found = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        found |= set(Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
    return found


def test_zstd_leaves_no_child_process(target):
    before = _children()
    apply(target, [file("a", b"1")], "zstd")
    assert _children() == before and (target / "a").read_bytes() == b"1"
