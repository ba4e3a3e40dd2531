"""Root filesystem pieces on real trees: busybox base, OCI layers with whiteouts, accounts,
%post in a chroot and on the host, %files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from provisioner.errors import ImageBuildError
from provisioner.images.build import accounts
from provisioner.images.build.builder import BuildRequest, ImageBuilder
from provisioner.images.build.kernel import KernelTree
from provisioner.images.build.oci import apply_oci
from provisioner.images.build.rootfs import (
    BuildLog,
    Where,
    copy_debs,
    copy_in,
    default_mirror,
    install_busybox,
    run_post,
)
from provisioner.images.format.catalog import ImageCatalog
from provisioner.render.environment import Renderer
from tests.support.kernel import KERNEL_CACHE

#: debootstrap's downloaded .debs are kept here between runs (gitignored); the build still runs.
REPO_CACHE = KERNEL_CACHE.parent


@pytest.fixture
def busybox_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    install_busybox(root)
    return root


@pytest.fixture
def log(tmp_path: Path) -> BuildLog:
    return BuildLog((tmp_path / "build.log").open("w"))


def test_busybox_base_has_applets_and_accounts(busybox_root: Path) -> None:
    assert os.readlink(busybox_root / "bin/sh") == "/bin/busybox"
    for applet in ("sbin/udhcpc", "usr/bin/wget", "sbin/insmod", "sbin/init"):
        assert (busybox_root / applet).is_symlink(), applet
    assert (busybox_root / "etc/passwd").read_text().startswith("root:x:0:0:")
    assert (busybox_root / "tmp").stat().st_mode & 0o7777 == 0o1777


def test_accounts_users_keys_timezone_services(busybox_root: Path, log: BuildLog) -> None:
    where = Where("t.ks", 3)
    accounts.set_root_password(busybox_root, "$6$salt$hash")
    uid, gid = accounts.add_user(busybox_root, "alice", where, groups=["root"])
    accounts.add_ssh_key(busybox_root, "alice", "ssh-ed25519 AAAA alice@x", where)
    accounts.set_timezone(busybox_root, "UTC", where)
    accounts.enable_services(busybox_root, ["syslogd"], [], where, log)
    shadow = (busybox_root / "etc/shadow").read_text()
    assert "root:$6$salt$hash:" in shadow and "alice:!:" in shadow
    assert (uid, gid) == (1000, 1000)
    assert "root:x:0:alice" in (busybox_root / "etc/group").read_text()
    keys = busybox_root / "home/alice/.ssh/authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAA alice@x\n"
    assert keys.stat().st_uid == 1000 and keys.stat().st_mode & 0o777 == 0o600
    assert (busybox_root / "etc/localtime").is_file()
    assert (busybox_root / "etc/provisioner/services").read_text() == "syslogd\n"
    with pytest.raises(ImageBuildError, match=r"^t\.ks:3: services: no /etc/init\.d/nope"):
        accounts.enable_services(busybox_root, ["nope"], [], where, log)
    with pytest.raises(ImageBuildError, match=r"^t\.ks:3: unknown timezone"):
        accounts.set_timezone(busybox_root, "Mars/Olympus", where)
    with pytest.raises(ImageBuildError, match="no user 'bob'"):
        accounts.add_ssh_key(busybox_root, "bob", "k", where)


def test_post_in_chroot_and_nochroot(busybox_root: Path, log: BuildLog, tmp_path: Path) -> None:
    run_post(busybox_root, "echo hi > /etc/motd\nls /proc/self >/dev/null\n", Where("a.ks", 7),
             log)
    assert (busybox_root / "etc/motd").read_text() == "hi\n"
    run_post(busybox_root, 'echo host > "$ROOT/etc/issue"\n', Where("a.ks", 9), log,
             nochroot=True)
    assert (busybox_root / "etc/issue").read_text() == "host\n"
    with pytest.raises(ImageBuildError) as failed:
        run_post(busybox_root, "echo about to fail\nfalse\necho never\n", Where("a.ks", 12), log)
    assert str(failed.value) == "a.ks:12: %post failed (exit 1): about to fail"
    assert not (busybox_root / "etc/never").exists()
    assert not list((busybox_root / "tmp").iterdir())  # the script is removed
    log.handle.flush()
    assert "about to fail" in (tmp_path / "build.log").read_text()
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if str(busybox_root) in line]


def test_copy_in_refuses_missing_and_escaping(busybox_root: Path, tmp_path: Path) -> None:
    src = tmp_path / "motd"
    src.write_text("x")
    copy_in(busybox_root, src, "/etc/motd", Where("f.ks", 2), mode=0o600)
    assert (busybox_root / "etc/motd").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ImageBuildError, match=r"^f\.ks:4: %files: .* does not exist"):
        copy_in(busybox_root, tmp_path / "nope", "/x", Where("f.ks", 4))
    with pytest.raises(ImageBuildError, match="leaves the image root"):
        copy_in(busybox_root, src, "../../etc/passwd", Where("f.ks", 5))


def _layer(files: dict[str, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / digest.replace(":", "/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def test_oci_layers_apply_in_order_with_whiteouts(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    lower = _layer({"etc": None, "etc/a": b"a", "etc/b": b"b", "opt": None, "opt/x": b"x",
                    "opt/y": b"y"})
    upper = _layer({"etc/.wh.a": b"", "etc/b": b"B", "opt/.wh..wh..opq": b"", "opt/z": b"z"})
    layers = [_blob(layout, lower), _blob(layout, upper)]
    manifest = json.dumps({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "layers": [{"digest": d} for d in layers]}).encode()
    index = {"manifests": [{"digest": _blob(layout, manifest),
                            "platform": {"architecture": "amd64", "os": "linux"}}]}
    (layout / "index.json").write_text(json.dumps(index))
    root = tmp_path / "root"
    root.mkdir()
    assert apply_oci(root, layout, Where("o.ks", 1)) == layers
    assert not (root / "etc/a").exists()
    assert (root / "etc/b").read_bytes() == b"B"
    assert sorted(p.name for p in (root / "opt").iterdir()) == ["z"]
    escape = _layer({"../evil": b"x"})
    digest = _blob(layout, escape)
    manifest = json.dumps({"layers": [{"digest": digest}]}).encode()
    (layout / "index.json").write_text(json.dumps({"manifests": [
        {"digest": _blob(layout, manifest)}]}))
    with pytest.raises(ImageBuildError, match="leaves the image root"):
        apply_oci(root, layout, Where("o.ks", 1))
    assert not (tmp_path / "evil").exists()


def test_default_mirror_reads_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    assert default_mirror(tmp_path) == "http://mirror.example/debian"


DEBOOTSTRAP_KS = """\
base debootstrap bookworm
%packages
netbase
%end
user --name=hpc --groups=users
%post
echo built > /etc/provisioner-built
%end
"""


@pytest.mark.slow
def test_debootstrap_minbase_image(tmp_path: Path, kernel: KernelTree) -> None:
    """The one debootstrap build: minbase from the host's mirror (debs cached under .cache, the
    bootstrap itself runs every time), a package, /init's busybox applets; then an unknown
    package on a tarball of that rootfs names its kickstart line."""
    catalog = ImageCatalog(tmp_path / "images")
    builder = ImageBuilder(catalog, Renderer(), REPO_CACHE)
    kickstart = tmp_path / "minbase.ks"
    kickstart.write_text(DEBOOTSTRAP_KS)
    image = builder.build(BuildRequest(str(kickstart), "minbase",
                                       kernel=str(kernel.root))).image
    root = tmp_path / "unpacked"
    root.mkdir()
    unpack = f"xz -dc {image.file('image.cpio.xz')} | busybox cpio -idm"
    subprocess.run(["sh", "-ec", unpack], cwd=root, check=True, capture_output=True,
                   timeout=300)
    assert (root / "etc/debian_version").read_text().startswith("12")
    assert (root / "etc/protocols").is_file()  # from netbase, installed by %packages
    assert (root / "etc/provisioner-built").read_text() == "built\n"
    assert "hpc:x:1000:1000:" in (root / "etc/passwd").read_text()
    assert os.readlink(root / "sbin/udhcpc") == "/bin/busybox"  # /init needs it; minbase lacks it
    assert not (root / "usr/bin/mount").is_symlink()  # the image's own tools are kept
    assert not (root / "sbin/init").exists()
    assert (root / "init").stat().st_mode & 0o111

    tarball = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "--numeric-owner", "-cf", str(tarball), "-C", str(root), "."],
                   check=True, capture_output=True, timeout=300)
    shutil.rmtree(root)
    bad = tmp_path / "bad.ks"
    bad.write_text(f"base tarball {tarball}\n%packages\nnetbase\nno-such-package-xyz\n%end\n")
    with pytest.raises(ImageBuildError) as failed:
        builder.build(BuildRequest(str(bad), "minbase", kernel=str(kernel.root)))
    assert str(failed.value) == (f"{bad}:4: unknown package 'no-such-package-xyz': not in the "
                                 "image's apt sources")
    assert catalog.show("minbase").current == image.version


def test_debs_are_copied_both_ways_never_linked(tmp_path: Path) -> None:
    """The .deb cache of %packages: what the image's archive lacks comes from the cache before
    apt-get install, and what apt fetched goes back after it, as copies."""
    cache, archives = tmp_path / "cache", tmp_path / "root/var/cache/apt/archives"
    cache.mkdir()
    (cache / "a_1_amd64.deb").write_bytes(b"a")
    copy_debs(cache, archives)
    assert (archives / "a_1_amd64.deb").read_bytes() == b"a"
    (archives / "b_2_amd64.deb").write_bytes(b"b")
    (archives / "lock").write_bytes(b"")
    copy_debs(archives, cache)
    assert sorted(p.name for p in cache.iterdir()) == ["a_1_amd64.deb", "b_2_amd64.deb"]
    assert (cache / "b_2_amd64.deb").stat().st_ino != (archives / "b_2_amd64.deb").stat().st_ino
    copy_debs(None, archives)  # no cache configured: nothing to do
