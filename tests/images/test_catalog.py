"""The image catalog on a real directory: atomic publish, current, prune, delete, import."""

from __future__ import annotations

import json
import lzma
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from provisioner.errors import ImageError, ImageNotFound, ValidationError
from provisioner.images.format.catalog import ImageCatalog, pins, split_ref
from provisioner.images.fsutil import kernel_release
from provisioner.nodes.model import Group, MacAddress, Node


def _stage(catalog: ImageCatalog, name: str, payload: bytes) -> Path:
    staging = catalog.new_staging(name)
    (staging / "vmlinuz").write_bytes(b"kernel" + payload)
    (staging / "image.cpio.xz").write_bytes(lzma.compress(payload, check=lzma.CHECK_CRC32))
    (staging / "manifest.json").write_text(json.dumps({"files": {}, "inputs_sha256": "x"}))
    return staging


def test_publish_numbers_versions_activates_and_leaves_no_staging(tmp_path: Path) -> None:
    catalog = ImageCatalog(tmp_path, keep=5)
    first = catalog.publish(_stage(catalog, "compute", b"one"), "compute")
    second = catalog.publish(_stage(catalog, "compute", b"two"), "compute", activate=True)
    assert (first.version, second.version) == ("1", "2")
    assert os.readlink(tmp_path / "compute" / "current") == "2"
    assert catalog.resolve("compute").version == "2"
    assert catalog.resolve("compute:1").manifest["version"] == "1"
    assert second.url_path("vmlinuz") == "/boot/images/compute/2/vmlinuz"
    assert [v.ref for v in catalog.list()] == ["compute:1", "compute:2"]
    assert list((tmp_path / ".staging").glob("compute-*")) == []
    assert [p.name for p in (tmp_path / "compute").iterdir() if p.name.startswith(".")] == []


def test_set_current_and_refuse_unknown(tmp_path: Path) -> None:
    catalog = ImageCatalog(tmp_path)
    for payload in (b"a", b"b"):
        catalog.publish(_stage(catalog, "img", payload), "img")
    catalog.set_current("img", "1")
    assert catalog.show("img").current == "1"
    assert catalog.resolve("img").file("vmlinuz").read_bytes() == b"kernela"
    with pytest.raises(ImageNotFound):
        catalog.set_current("img", "7")
    with pytest.raises(ImageNotFound):
        catalog.resolve("other")
    assert catalog.show("img").current == "1"


def test_publish_leaves_current_alone_unless_activated(tmp_path: Path) -> None:
    """A new version is tried with NAME:VERSION first: nodes on NAME keep the current one.
    Only a name with no current version gets its first one without asking."""
    catalog = ImageCatalog(tmp_path, keep=5)
    first = catalog.publish(_stage(catalog, "img", b"1"), "img")
    assert first.current and catalog.show("img").current == "1"
    second = catalog.publish(_stage(catalog, "img", b"2"), "img")
    assert not second.current and catalog.resolve("img").version == "1"
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.xz"
    kernel.write_bytes(b"kernel")
    initrd.write_bytes(lzma.compress(b"x", check=lzma.CHECK_CRC32))
    imported = catalog.import_pair("img", kernel, initrd)
    assert imported.version == "3" and catalog.show("img").current == "1"
    activated = catalog.import_pair("img", kernel, initrd, activate=True)
    assert activated.current and catalog.show("img").current == "4"


def test_prune_never_deletes_current_or_pinned_and_says_why(tmp_path: Path) -> None:
    catalog = ImageCatalog(tmp_path, keep=1, pinned={"img:2": {"node n1", "group gpu"}})
    for payload in (b"1", b"2", b"3"):
        catalog.publish(_stage(catalog, "img", payload), "img")
    assert catalog.last_prune is not None
    assert catalog.last_prune.kept == {"1": "current", "2": "pinned by group gpu, node n1"}
    catalog.publish(_stage(catalog, "img", b"4"), "img")
    assert catalog.last_prune.deleted == ["3"]
    assert [v.version for v in catalog.show("img").versions] == ["1", "2", "4"]
    catalog.pinned = {}  # the node and the group moved on
    done = catalog.prune("img")
    assert done.deleted == ["2"] and done.kept == {"1": "current"}
    assert done.lines() == ["pruned img:2", "kept img:1: current"]
    assert [v.version for v in catalog.show("img").versions] == ["1", "4"]
    with pytest.raises(ImageNotFound):
        catalog.prune("nosuch")


def test_pins_come_from_nodes_groups_and_defaults() -> None:
    nodes = [Node(MacAddress("52:54:00:00:00:01"), "n1", image="img:2"),
             Node(MacAddress("52:54:00:00:00:02"), "n2", settings={"image": "img:3"}),
             Node(MacAddress("52:54:00:00:00:03"), "n3", image="img")]  # follows current
    groups = [Group("gpu", {"image": "img:2"}), Group("plain")]
    assert pins(nodes, groups, {"image": "base:7"}) == {
        "img:2": {"node n1", "group gpu"}, "img:3": {"node n2"}, "base:7": {"defaults"}}


def test_prune_keeps_newest_n(tmp_path: Path) -> None:
    catalog = ImageCatalog(tmp_path, keep=2)
    for payload in (b"1", b"2", b"3"):
        catalog.publish(_stage(catalog, "img", payload), "img", activate=True)
    assert [v.version for v in catalog.show("img").versions] == ["2", "3"]
    catalog.set_current("img", "2")  # rolling back does not prune anything
    assert [v.version for v in catalog.show("img").versions] == ["2", "3"]
    catalog.publish(_stage(catalog, "img", b"4"), "img", activate=True)
    assert [v.version for v in catalog.show("img").versions] == ["3", "4"]
    assert not list((tmp_path / ".staging").glob(".trash-*"))


def test_prune_pinned_current_survives(tmp_path: Path) -> None:
    catalog = ImageCatalog(tmp_path, keep=1)
    catalog.publish(_stage(catalog, "img", b"1"), "img")
    catalog.publish(_stage(catalog, "img", b"2"), "img", activate=True)
    assert [v.version for v in catalog.show("img").versions] == ["2"]
    # A version number is never reused, even after the older ones are gone.
    catalog.publish(_stage(catalog, "img", b"3"), "img", activate=True)
    assert catalog.show("img").current == "3"


def test_delete_refuses_current_unless_forced(tmp_path: Path) -> None:
    catalog = ImageCatalog(tmp_path, keep=5)
    for payload in (b"1", b"2", b"3"):
        catalog.publish(_stage(catalog, "img", payload), "img", activate=True)
    with pytest.raises(ImageError, match="current"):
        catalog.delete("img", "3")
    with pytest.raises(ImageError, match="--force"):
        catalog.delete("img")
    assert catalog.delete("img", "1") == "deleted img:1"
    said = catalog.delete("img", "3", force=True)
    assert said == "deleted img:3; current is now img:2"
    assert catalog.resolve("img").version == "2"
    with pytest.raises(ImageNotFound):
        catalog.delete("img", "9")
    assert "deleted image img" in catalog.delete("img", force=True)
    assert catalog.names() == []


def test_import_pair_checksums_and_refuses_crc64(tmp_path: Path) -> None:
    catalog = ImageCatalog(tmp_path / "images")
    kernel = tmp_path / "bzImage"
    head = bytearray(0x1000)
    head[0x202:0x206] = b"HdrS"
    head[0x20E:0x210] = (0x400).to_bytes(2, "little")
    head[0x600:0x620] = b"6.1.0-99-test (builder@x) #1\0\0\0\0"
    kernel.write_bytes(bytes(head))
    assert kernel_release(kernel) == "6.1.0-99-test"
    good = tmp_path / "initrd.xz"
    good.write_bytes(lzma.compress(b"x" * 1000, check=lzma.CHECK_CRC32))
    image = catalog.import_pair("imported", kernel, good)
    files = image.manifest["files"]
    assert files["image.cpio.xz"]["cpio_size"] == 1000
    assert files["vmlinuz"]["size"] == 0x1000
    assert image.manifest["kernel_release"] == "6.1.0-99-test"
    assert catalog.verify(image) == []
    (image.path / "vmlinuz").write_bytes(b"tampered")
    assert catalog.verify(image) == ["vmlinuz"]
    bad = tmp_path / "initrd64.xz"
    bad.write_bytes(lzma.compress(b"x", check=lzma.CHECK_CRC64))
    with pytest.raises(ImageError, match="CRC64"):
        catalog.import_pair("imported", kernel, bad)
    assert [v.version for v in catalog.show("imported").versions] == ["1"]


def test_refs_and_names_are_validated(tmp_path: Path) -> None:
    assert split_ref("compute:12") == ("compute", "12")
    assert split_ref("compute") == ("compute", None)
    for bad in ("../x", "a/b", "Compute", "a:0", "a:x", ""):
        with pytest.raises(ValidationError):
            split_ref(bad)


def test_stale_staging_of_dead_builds_is_swept(tmp_path: Path) -> None:
    catalog = ImageCatalog(tmp_path)
    dead = tmp_path / ".staging" / "img-999999999-0123abcd"
    dead.mkdir(parents=True)
    live = catalog.new_staging("img")
    assert not dead.exists() and live.is_dir()


def test_concurrent_publishes_get_distinct_versions(tmp_path: Path) -> None:
    catalog = ImageCatalog(tmp_path, keep=20)
    stagings = [_stage(catalog, "img", str(i).encode()) for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        published = list(pool.map(lambda s: catalog.publish(s, "img", activate=True),
                                  stagings))
    assert sorted(int(p.version) for p in published) == list(range(1, 9))
    assert catalog.show("img").current == "8"  # each publish moves current under the lock
