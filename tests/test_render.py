"""The Jinja environment: errors name template, line and node; the sandbox holds; site
templates override shipped ones; secrets never reach templates."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from provisioner.errors import RenderError, TemplateNotFound
from provisioner.nodes.model import Firmware, MacAddress, Node
from provisioner.render.environment import BootContext, Renderer, mode_of, shquote
from tests.templates.cases import API, BOOT, bios_context, noimage_context, uefi_context


def site(tmp_path: Path, files: dict[str, str]) -> Renderer:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Renderer(tmp_path)


def test_undefined_variable_names_template_line_and_node(tmp_path: Path) -> None:
    renderer = site(tmp_path, {"t/undef.j2": "one\ntwo\n{{ missing }}\n"})
    with pytest.raises(RenderError) as info:
        renderer.render("t/undef.j2", {}, node="node007")
    assert str(info.value) == (
        "t/undef.j2:3: undefined variable: 'missing' is undefined (node node007)")


def test_undefined_attribute_of_a_variable(tmp_path: Path) -> None:
    renderer = site(tmp_path, {"t/attr.j2": "{{ node.name }}\n{{ node.rack }}\n"})
    with pytest.raises(RenderError, match=r"^t/attr\.j2:2: undefined variable: .*rack.*"
                                          r"\(node n1\)$"):
        renderer.render("t/attr.j2", {"node": {"name": "n1"}}, node="n1")


def test_syntax_error_names_template_and_line(tmp_path: Path) -> None:
    renderer = site(tmp_path, {"t/syntax.j2": "ok\n{% if %}\n{% endif %}\n"})
    with pytest.raises(RenderError, match=r"^t/syntax\.j2:2: syntax error: .* \(node n2\)$"):
        renderer.render("t/syntax.j2", {}, node="n2")


def test_error_in_an_included_template_names_the_included_one(tmp_path: Path) -> None:
    renderer = site(tmp_path, {"t/outer.j2": "a\n{% include 't/inner.j2' %}\n",
                               "t/inner.j2": "x\ny\n{{ nothing }}\n"})
    with pytest.raises(RenderError, match=r"^t/inner\.j2:3: undefined variable"):
        renderer.render("t/outer.j2", {}, node="n3")


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ node.__class__.__subclasses__() }}",
])
def test_sandbox_refuses_python_internals(tmp_path: Path, source: str) -> None:
    renderer = site(tmp_path, {"t/escape.j2": f"line one\n{source}\n"})
    with pytest.raises(RenderError) as info:
        renderer.render("t/escape.j2", {"node": {"name": "x"}}, node="evil")
    message = str(info.value)
    assert message.startswith("t/escape.j2:2: ") and message.endswith("(node evil)")
    assert "sandbox" in message or "undefined" in message


def test_sandbox_refuses_unsafe_callable(tmp_path: Path) -> None:
    renderer = site(tmp_path, {"t/call.j2": "{{ f.__globals__ }}{{ ().__class__.__base__ }}"})
    with pytest.raises(RenderError, match="sandbox"):
        renderer.render("t/call.j2", {"f": shquote}, node="evil")


def test_node_data_is_never_template_source(tmp_path: Path) -> None:
    """A node name or setting holding Jinja syntax comes out as text, not evaluated."""
    renderer = site(tmp_path, {"t/echo.j2": "{{ value }}"})
    assert renderer.render("t/echo.j2", {"value": "{{ 7*7 }}"}) == "{{ 7*7 }}"


def test_missing_template(tmp_path: Path) -> None:
    with pytest.raises(TemplateNotFound, match=r"^nope\.j2: no such template .*\(node n4\)$"):
        Renderer(tmp_path).render("nope.j2", {}, node="n4")


def test_a_failure_fails_one_node_only(tmp_path: Path) -> None:
    renderer = site(tmp_path, {"t/name.j2": "{{ node.name }}"})
    with pytest.raises(RenderError):
        renderer.render("t/name.j2", {"node": {}}, node="bad")
    assert renderer.render("t/name.j2", {"node": {"name": "good"}}, node="good") == "good"


def test_runtime_error_in_a_template_is_a_render_error(tmp_path: Path) -> None:
    renderer = site(tmp_path, {"t/div.j2": "\n\n{{ 1 // zero }}"})
    with pytest.raises(RenderError, match=r"^t/div\.j2:3: ZeroDivisionError"):
        renderer.render("t/div.j2", {"zero": 0}, node="n5")


def test_line_break_in_a_kernel_argument_is_refused() -> None:
    variables = uefi_context().variables()
    variables["kernel_args"] = "quiet\nchain http://evil/x.ipxe"
    with pytest.raises(RenderError, match=r"^ipxe/boot\.ipxe\.j2:\d+: ValueError: .*line break"):
        Renderer().render("ipxe/boot.ipxe.j2", variables, node="node002")


def test_site_file_overrides_shipped_file_in_the_tree(tmp_path: Path) -> None:
    renderer = site(tmp_path, {"overlay/etc/hostname.j2": "site-{{ node.name }}\n",
                               "overlay/etc/motd.j2": "{#- mode: 0640 -#}\nwelcome\n"})
    tree = renderer.render_tree("overlay/", bios_context().variables(), node="node001")
    assert tree["etc/hostname"].text == "site-node001\n"
    assert tree["etc/motd"] == ("welcome\n", 0o640)
    shipped = Renderer().render_tree("overlay/", bios_context().variables())
    assert set(tree) == set(shipped) | {"etc/motd"}
    assert tree["etc/resolv.conf"] == shipped["etc/resolv.conf"]


def test_site_override_of_a_single_template(tmp_path: Path) -> None:
    renderer = site(tmp_path, {"ipxe/boot.ipxe.j2": "#!ipxe\necho site {{ node.name }}\n"})
    assert renderer.render("ipxe/boot.ipxe.j2", bios_context().variables()) == (
        "#!ipxe\necho site node001\n")


def test_mode_comment() -> None:
    assert mode_of("{#- mode: 0755 -#}\n#!/bin/sh\n") == 0o755
    assert mode_of("{# mode: 600 #}\n") == 0o600
    assert mode_of("#!/bin/sh\n{#- mode: 0755 -#}\n") == 0o644
    tree = Renderer().render_tree("overlay/", bios_context().variables())
    assert tree["root/.ssh/authorized_keys"].mode == 0o600
    assert tree["etc/hostname"].mode == 0o644
    init = Renderer().render("image/init.sh.j2", {})
    assert init.startswith("#!/bin/sh\n") and Renderer().mode("image/init.sh.j2") == 0o755


def test_digest_follows_the_sources(tmp_path: Path) -> None:
    renderer = site(tmp_path, {"t/outer.j2": "{% include 't/inner.j2' %}", "t/inner.j2": "a"})
    before, tree_before = renderer.digest("t/outer.j2"), renderer.digest("t/")
    assert before == renderer.digest("t/outer.j2")
    (tmp_path / "t/inner.j2").write_text("b")
    assert renderer.digest("t/outer.j2") != before
    assert renderer.digest("t/") != tree_before
    assert Renderer().digest("overlay/") != Renderer().digest("ipxe/")


def test_site_edit_is_seen_without_restart(tmp_path: Path) -> None:
    renderer = site(tmp_path, {"t/x.j2": "one"})
    assert renderer.render("t/x.j2", {}) == "one"
    path = tmp_path / "t/x.j2"
    path.write_text("two")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    assert renderer.render("t/x.j2", {}) == "two"


def test_secrets_and_power_settings_never_reach_templates() -> None:
    ctx = bios_context(token="tok-123")
    variables = ctx.variables()
    assert "power_password" not in variables["settings"]
    assert "power_driver" not in variables["settings"]
    assert "tok-123" not in repr(variables) and "tok-123" not in repr(ctx)
    assert "hunter2" not in repr(variables) and "hunter2" not in repr(ctx)
    assert "token" not in variables
    assert ctx.token == "tok-123"
    tree = Renderer().render_tree("overlay/", variables)
    assert not any("tok-123" in f.text or "hunter2" in f.text for f in tree.values())


def test_boot_context_urls_and_defaults() -> None:
    variables = uefi_context().variables()
    assert variables["urls"]["kernel"] == f"{BOOT}/boot/images/compute/4/vmlinuz"
    assert variables["urls"]["overlay"] == f"{BOOT}/boot/nodes/52:54:00:00:00:02/overlay.cpio.xz"
    assert variables["urls"]["callback"] == f"{API}/node/v1/booted"
    assert variables["scheduler"]["features"] == ["gpu", "ib"]
    assert variables["network"]["mode"] == "dhcp"
    bios = bios_context().variables()
    assert bios["network"]["netmask"] == "255.255.255.0"
    assert bios["settings"]["scheduler_partition"] == "batch"
    empty = noimage_context().variables()
    assert empty["image"] is None and empty["urls"]["kernel"] == ""
    assert empty["console"] == "ttyS0,115200"


def test_extra_variables_do_not_shadow_the_context() -> None:
    node = Node(mac=MacAddress("52:54:00:00:00:09"), name="n9", firmware=Firmware.IPXE)
    ctx = BootContext.for_node(node, {"kernel_args": "quiet"},
                               boot_base=BOOT, api_base=API, image_name="compute",
                               extra={"node": "spoofed", "rack": "r12"})
    variables = ctx.variables()
    assert variables["node"]["name"] == "n9" and variables["rack"] == "r12"
    assert variables["urls"]["image"].endswith("/compute/current/image.cpio.xz")


def test_shquote_keeps_hostile_values_one_word(tmp_path: Path) -> None:
    """node.env is sourced by sh: a setting with quotes and $(...) must come out as data."""
    node = Node(mac=MacAddress("52:54:00:00:00:0a"), name="n10")
    hostile = "a'b $(touch pwned) `id` \"q\""
    ctx = BootContext.for_node(node, {"scheduler_partition": hostile}, boot_base=BOOT,
                               api_base=API)
    env = Renderer().render("overlay/etc/provisioner/node.env.j2", ctx.variables())
    (tmp_path / "node.env").write_text(env)
    result = subprocess.run(
        ["busybox", "sh", "-c", '. ./node.env; printf %s "$PROVISIONER_PARTITION"'],
        cwd=tmp_path, capture_output=True, text=True, check=True, timeout=10)
    assert result.stdout == hostile
    assert not (tmp_path / "pwned").exists()


def test_error_line_with_a_relative_site_dir(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "site/t").mkdir(parents=True)
    (tmp_path / "site/t/undef.j2").write_text("\n{{ missing }}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RenderError, match=r"^t/undef\.j2:2: undefined variable"):
        Renderer(Path("site")).render("t/undef.j2", {}, node="n")
