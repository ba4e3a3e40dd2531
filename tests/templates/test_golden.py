"""Golden-file tests of every shipped template, for a BIOS node and a UEFI node.

A diff fails the test. After an intended template change regenerate the files and review the
diff: `UPDATE_GOLDEN=1 .venv/bin/pytest tests/templates -q`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from provisioner.render.environment import SHIPPED, Renderer
from tests.templates.cases import OTHER_HEAD, bios_context, noimage_context, uefi_context

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
#: Templates rendered at image build time, with image variables only (no node).
BUILD_VARS: dict[str, Any] = {"name": "compute"}
CONTEXTS: dict[str, Callable[[], Any]] = {"bios": bios_context, "uefi": uefi_context}


def shipped_templates() -> list[str]:
    return sorted(p.relative_to(SHIPPED).as_posix() for p in SHIPPED.rglob("*") if p.is_file())


def golden_name(case: str, template: str) -> str:
    return f"{case}__{template.removesuffix('.j2').replace('/', '__')}.txt"


def cases() -> list[tuple[str, str]]:
    out = []
    for template in shipped_templates():
        if template.startswith(("kickstart/compute", "image/")):
            out.append(("build", template))
        else:
            out += [("bios", template), ("uefi", template)]
    return [*out, ("noimage", "ipxe/boot.ipxe.j2")]


def variables(case: str) -> dict[str, Any]:
    if case == "build":
        return BUILD_VARS
    if case == "noimage":
        return noimage_context().variables()
    return dict(CONTEXTS[case]().variables())


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
        return
    assert path.exists(), f"no golden file {path}; run with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"{name} differs from golden; review, then UPDATE_GOLDEN=1"


@pytest.mark.parametrize(("case", "template"), cases())
def test_template_matches_golden(case: str, template: str) -> None:
    text = Renderer().render(template, variables(case), node=f"golden-{case}")
    check(golden_name(case, template), text)


def test_every_golden_file_has_a_template() -> None:
    """A golden file left behind by a deleted template is an error too."""
    expected = {golden_name(case, template) for case, template in cases()}
    assert {p.name for p in GOLDEN.glob("*.txt")} <= expected


def test_bios_and_uefi_differ_where_the_node_does() -> None:
    renderer = Renderer()
    bios = renderer.render("ipxe/boot.ipxe.j2", bios_context().variables())
    uefi = renderer.render("ipxe/boot.ipxe.j2", uefi_context().variables())
    for script in (bios, uefi):
        assert script.startswith("#!ipxe\n")
        # Debian's iPXE on UEFI loses unnamed initrds: both must be named on the command line.
        assert "initrd=image.cpio.xz initrd=overlay.cpio.xz" in script
        assert "initrd --name image.cpio.xz ${prov-image} || goto " in script
        assert "initrd --name overlay.cpio.xz ${prov-overlay} || goto " in script
        assert "boot || goto retry" in script
    assert "console=ttyS0,115200" in bios and "panic=-1" not in bios
    assert "console=ttyS1,57600 panic=30 panic=-1 quiet" in uefi
    assert "/boot/images/compute/3/vmlinuz" in bios and "/boot/images/compute/4/vmlinuz" in uefi


def test_a_failed_fetch_tries_the_other_heads_before_it_counts() -> None:
    """The UEFI case has one other head: each fetch that fails goes to it, and only a failure
    there too goes to the retry; one head alone (BIOS) goes to the retry at once."""
    bios = Renderer().render("ipxe/boot.ipxe.j2", bios_context().variables())
    uefi = Renderer().render("ipxe/boot.ipxe.j2", uefi_context().variables()).splitlines()
    assert "kernel ${prov-kernel} ${prov-args} || goto retry" in bios and "-1" not in bios
    other = OTHER_HEAD[0] + "/boot"
    for step, command, url, after in (
            ("kernel", "kernel", f"{other}/images/compute/4/vmlinuz ${{prov-args}}", "image"),
            ("image", "initrd --name image.cpio.xz", f"{other}/images/compute/4/image.cpio.xz",
             "overlay"),
            ("overlay", "initrd --name overlay.cpio.xz",
             f"{other}/nodes/52:54:00:00:00:02/overlay.cpio.xz", "boot")):
        first = uefi.index(f"{command} ${{prov-{step}}}" + (" ${prov-args}" if step == "kernel"
                                                             else "") + f" || goto {step}-1")
        assert uefi[first + 1] == f"goto {after}"  # fetched from our head: on to the next step
        assert uefi[first + 2] == f":{step}-1"
        assert uefi[first + 4] == f"{command} {url} || goto retry"
