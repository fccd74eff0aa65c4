"""Test images made from scratch: tar layers, OCI layouts, docker-save archives.

Everything is built from the host's static busybox, so an extracted rootfs
can really run (``chroot ROOT /bin/sh``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
APPLETS = ("sh", "echo", "cat", "ls", "mkdir", "rm", "test", "true", "false", "touch",
           "readlink", "chmod", "id", "sleep", "wc")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- tar members ---------------------------------------------------------

def _info(name: str, kind: bytes, mode: int, **extra) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 1_700_000_000
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def file(name: str, data: bytes = b"", mode: int = 0o644, **extra):
    return _info(name, tarfile.REGTYPE, mode, size=len(data), **extra), data


def directory(name: str, mode: int = 0o755):
    return _info(name, tarfile.DIRTYPE, mode), None


def symlink(name: str, target: str):
    return _info(name, tarfile.SYMTYPE, 0o777, linkname=target), None


def hardlink(name: str, target: str):
    return _info(name, tarfile.LNKTYPE, 0o644, linkname=target), None


def whiteout(path: str):
    head, _, base = path.rpartition("/")
    return file(f"{head}/.wh.{base}" if head else f".wh.{base}")


def opaque(dirname: str):
    return file(f"{dirname}/.wh..wh..opq")


def special(name: str, kind: bytes):
    return _info(name, kind, 0o644, devmajor=1, devminor=3), None


def tar_bytes(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if how == "zstd":
        return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True,
                              check=True).stdout
    return data


def busybox_members():
    """A minimal runnable tree: /bin/busybox and applet symlinks, /etc, /tmp."""
    data = Path(BUSYBOX).read_bytes()
    members = [directory("bin"), file("bin/busybox", data, 0o755), directory("etc"),
               file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
               directory("tmp", 0o1777), directory("root", 0o700)]
    members += [symlink(f"bin/{applet}", "busybox") for applet in APPLETS]
    return members


# -- images --------------------------------------------------------------

@dataclass
class Built:
    """One image manifest written into a layout (or about to be)."""

    manifest_digest: str
    manifest: bytes
    config: bytes
    layers: list[tuple[str, bytes]]  # (media type, blob)


def image(layers_uncompressed: list[bytes], *, compression: str = "gzip",
          arch: str = "amd64", variant: str | None = None, env=("PATH=/bin",)) -> Built:
    media = {"gzip": LAYER_GZIP, "zstd": LAYER_ZSTD, "none": LAYER_TAR}[compression]
    blobs = [(media, compress(layer, compression)) for layer in layers_uncompressed]
    diff_ids = [sha(layer) for layer in layers_uncompressed]
    config = {"architecture": arch, "os": "linux", "config": {"Env": list(env)},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    if variant:
        config["variant"] = variant
    config_bytes = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha(config_bytes),
                   "size": len(config_bytes)},
        "layers": [{"mediaType": m, "digest": sha(b), "size": len(b)} for m, b in blobs],
    }
    manifest_bytes = json.dumps(manifest).encode()
    return Built(sha(manifest_bytes), manifest_bytes, config_bytes, blobs)


def _put(layout: Path, data: bytes) -> None:
    path = layout / "blobs" / "sha256" / sha(data).split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_layout(layout: Path, tags: dict[str, Built | dict[str, Built]]) -> Path:
    """An OCI layout; a tag maps to one image or to {"os/arch[/variant]": image} (an index)."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entries = []
    for tag, target in tags.items():
        images = target if isinstance(target, dict) else {None: target}
        descriptors = []
        for plat, built in images.items():
            for _, blob in built.layers:
                _put(layout, blob)
            _put(layout, built.config)
            _put(layout, built.manifest)
            desc = {"mediaType": OCI_MANIFEST, "digest": built.manifest_digest,
                    "size": len(built.manifest)}
            if plat:
                os_, arch, *variant = plat.split("/")
                desc["platform"] = {"os": os_, "architecture": arch}
                if variant:
                    desc["platform"]["variant"] = variant[0]
            descriptors.append(desc)
        if isinstance(target, dict):
            index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                "manifests": descriptors}).encode()
            _put(layout, index)
            desc = {"mediaType": OCI_INDEX, "digest": sha(index), "size": len(index)}
        else:
            desc = descriptors[0]
        desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        entries.append(desc)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    return layout


def write_docker_archive(path: Path, layers_uncompressed: list[bytes]) -> Path:
    """A ``docker save``-style tarball (legacy ``<id>/layer.tar`` layout)."""
    diff_ids = [sha(layer) for layer in layers_uncompressed]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/bin", "FROM_ARCHIVE=1"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_name = sha(config).split(":")[1] + ".json"
    members = [file(config_name, config)]
    names = []
    for layer in layers_uncompressed:
        name = f"{sha(layer).split(':')[1]}/layer.tar"
        names.append(name)
        members += [directory(name.split("/")[0]), file(name, layer)]
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["test:latest"],
                            "Layers": names}]).encode()
    members.append(file("manifest.json", manifest))
    path.write_bytes(tar_bytes(members))
    return path


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its type, mode and content (for canary checks)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            content = Path(path).read_bytes() if os.path.isfile(path) and \
                not os.path.islink(path) else os.readlink(path) if os.path.islink(path) else None
            found[os.path.relpath(path, root)] = (st.st_mode, content)
    return found


def run_in(root: Path, command: str) -> subprocess.CompletedProcess:
    """Run ``command`` with the rootfs's own /bin/sh, chrooted (tests run as root)."""
    return subprocess.run([CHROOT, str(root), "/bin/sh", "-c", command], capture_output=True,
                          text=True, timeout=30, env={"PATH": "/bin"})


@dataclass
class TempUser:
    """A throwaway host user with a private work dir, for unprivileged runs."""

    name: str
    uid: int
    gid: int
    home: Path

    PYTHON = "/usr/bin/python3"  # readable by everyone, unlike a root-only pyenv

    @classmethod
    def create(cls) -> "TempUser":
        import pwd
        import tempfile
        name = f"cooptest{os.getpid() % 100000}{os.urandom(2).hex()}"
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(name)
        home = Path(tempfile.mkdtemp(prefix="coop-user-"))
        os.chown(home, entry.pw_uid, entry.pw_gid)
        return cls(name, entry.pw_uid, entry.pw_gid, home)

    def run(self, argv, **kwargs) -> subprocess.CompletedProcess:
        prefix = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
        env = {"HOME": str(self.home), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
        return subprocess.run(prefix + list(argv), capture_output=True, text=True, timeout=120,
                              env=env, **kwargs)

    def delete(self) -> None:
        subprocess.run(["userdel", self.name], capture_output=True)
        subprocess.run(["rm", "-rf", "--", str(self.home)], capture_output=True)


STEP_SCRIPT = r"""
R=$COOP_STEP_ROOT; C=$COOP_STEP_CMD; LOWER_HOST=$COOP_STEP_HOST
unset COOP_STEP_ROOT COOP_STEP_CMD COOP_STEP_HOST
if [ -n "$LOWER_HOST" ]; then
    W=$(mktemp -d "$R/../.work.XXXXXX"); M=$(mktemp -d "$R/../.merged.XXXXXX")
    /usr/bin/mount -t overlay overlay -o "lowerdir=/,upperdir=$R,workdir=$W" "$M" || exit 99
    R=$M
fi
[ -d "$R/proc" ] && /usr/bin/mount -t proc proc "$R/proc"
[ -d "$R/dev" ] && /usr/bin/mount --rbind /dev "$R/dev"
[ -f "$R/etc/resolv.conf" ] && /usr/bin/mount --bind /etc/resolv.conf "$R/etc/resolv.conf"
/usr/sbin/chroot "$R" /bin/sh -c "$C"
code=$?
[ -n "$LOWER_HOST" ] && /usr/bin/umount -l "$M" && rm -rf "$W" "$M"
exit $code
"""


def chroot_step(rootfs: Path, command: str, env: dict, *, host_lower: bool,
                unshare: tuple = ("--mount", "--pid", "--fork")) -> int:
    """A test ``run_step``: the command runs with the rootfs's own /bin/sh in a
    private mount namespace (as root: proc, /dev and resolv.conf mounted in)."""
    full = dict(env, COOP_STEP_ROOT=str(rootfs), COOP_STEP_CMD=command,
                COOP_STEP_HOST="1" if host_lower else "")
    return subprocess.run(["/usr/bin/unshare", *unshare, "--propagation", "private",
                           "/bin/sh", "-c", STEP_SCRIPT], env=full, timeout=600).returncode
