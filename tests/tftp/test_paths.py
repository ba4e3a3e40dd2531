"""Filename canonicalisation: what a client may ask for, component by component."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.errors import ProtocolError
from provisioner.tftp.paths import ForbiddenPath, canonical_path


@pytest.mark.parametrize(
    ("filename", "parts"),
    [
        ("undionly.kpxe", ("undionly.kpxe",)),
        ("/pxelinux.0", ("pxelinux.0",)),  # PXELINUX, GRUB: root-relative
        ("pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", ("pxelinux.cfg", "01-aa-bb-cc-dd-ee-ff")),
        ("boot\\x64\\wdsnbp.com", ("boot", "x64", "wdsnbp.com")),  # Windows-built loaders
        ("a//b/./c/", ("a", "b", "c")),
        ("./ipxe.efi", ("ipxe.efi",)),
        ("aa:bb:cc:dd:ee:ff.ipxe", ("aa:bb:cc:dd:ee:ff.ipxe",)),
        ("...", ("...",)),
        ("..foo", ("..foo",)),
        ("foo..", ("foo..",)),
        ("with space", ("with space",)),
    ],
)
def test_allowed(filename: str, parts: tuple[str, ...]) -> None:
    assert canonical_path(filename) == parts


@pytest.mark.parametrize(
    ("filename", "reason"),
    [
        ("..", "parent"),
        ("../etc/passwd", "parent"),
        ("a/../../etc/passwd", "parent"),
        ("a/../b", "parent"),  # refused even when it would stay inside
        ("..\\..\\windows\\win.ini", "parent"),
        ("a\\..\\b", "parent"),
        ("/../etc/passwd", "parent"),
        ("//server/share", "absolute"),
        ("\\\\server\\share", "absolute"),
        ("C:\\boot.ini", "absolute"),
        ("c:boot.ini", "absolute"),
        ("", "empty"),
        ("/", "empty"),
        ("./.", "empty"),
        ("a\0b", "control"),
        ("pxelinux.0\0../../etc/passwd", "control"),
        ("a\nb", "control"),
        ("a\tb", "control"),
        ("\x1b[31mred", "control"),
        ("a\x7fb", "control"),
        ("caf\u00e9", "not_ascii"),
        ("\u2024\u2024/etc", "not_ascii"),  # ONE DOT LEADER: looks like ".."
        ("\uff0e\uff0e/etc", "not_ascii"),  # FULLWIDTH FULL STOP
        ("x" * 256, "long"),
        ("a/" * 600, "long"),
    ],
)
def test_forbidden(filename: str, reason: str) -> None:
    with pytest.raises(ForbiddenPath) as caught:
        canonical_path(filename)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ProtocolError)
    assert caught.value.message


def test_absolute_paths_can_be_refused() -> None:
    with pytest.raises(ForbiddenPath) as caught:
        canonical_path("/pxelinux.0", strip_leading_slash=False)
    assert caught.value.reason == "absolute"
    assert canonical_path("pxelinux.0", strip_leading_slash=False) == ("pxelinux.0",)


@settings(max_examples=300)
@given(
    st.lists(
        st.sampled_from(["a", ".", "/", "\\", "..", "\0", ":", "C", "\u00e9"]), max_size=30
    ).map("".join)
)
def test_never_escapes(filename: str) -> None:
    try:
        parts = canonical_path(filename)
    except ForbiddenPath:
        return
    assert parts
    for part in parts:
        assert part not in ("", ".", "..")
        assert "/" not in part
        assert "\\" not in part
        assert "\0" not in part
