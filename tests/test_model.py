"""The pure model: MAC forms, RFC 1123 names, settings validation and effective resolution."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.errors import ValidationError
from provisioner.nodes.model import (
    REDACTED,
    BootEvent,
    Effective,
    Group,
    Lease,
    MacAddress,
    Node,
    NodeState,
    SettingValue,
    check_hostname,
    check_power,
    check_setting,
    effective_settings,
    effective_values,
    parse_enum,
    redact,
    setting_values,
)

MAC = MacAddress("52:54:00:12:34:56")


@pytest.mark.parametrize("text", ["52:54:00:12:34:56", "52-54-00-12-34-56", "5254.0012.3456",
                                  "525400123456", "52:54:00:12:34:56 ",
                                  "52-54-00-12-34-56".upper()])
def test_mac_forms_are_canonicalised(text: str) -> None:
    assert MacAddress(text).value == "52:54:00:12:34:56"


@pytest.mark.parametrize("text", ["", "52:54:00:12:34", "52:54-00:12:34:56", "5254.0012.345g",
                                  "52:54:00:12:34:56:78", "gg:54:00:12:34:56", "5254:0012:3456"])
def test_bad_macs_name_the_field_and_the_forms(text: str) -> None:
    with pytest.raises(ValidationError, match=r"^mac: .*aa:bb:cc:dd:ee:ff"):
        MacAddress(text)


@given(st.binary(min_size=6, max_size=6))
def test_mac_bytes_roundtrip(raw: bytes) -> None:
    mac = MacAddress.from_bytes(raw)
    assert mac.packed == raw
    assert MacAddress(mac.dashed) == mac


@pytest.mark.parametrize("name", ["node001", "a", "n-1", "1node", "x" * 63, "NODE7"])
def test_valid_hostnames(name: str) -> None:
    assert check_hostname(name) == name.lower()


@pytest.mark.parametrize("name", ["", "-node", "node-", "no_de", "node.example", "x" * 64,
                                  "nöde", "node\n"])
def test_invalid_hostnames_quote_rfc1123(name: str) -> None:
    with pytest.raises(ValidationError, match="RFC 1123"):
        check_hostname(name)


def test_node_validates_every_field() -> None:
    with pytest.raises(ValidationError, match=r"^ip: "):
        Node(MAC, "n1", ip="10.0.0.300")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"^groups: "):
        Node(MAC, "n1", groups=("a", "a"))
    with pytest.raises(ValidationError, match=r"^groups: "):
        Node(MAC, "n1", groups=("Bad Name",))
    with pytest.raises(ValidationError, match=r"^settings\.power_driver: .*ipmi"):
        Node(MAC, "n1", settings={"power_driver": "telnet"})
    with pytest.raises(ValidationError, match=r"^settings\.callback_timeout: .*int"):
        Node(MAC, "n1", settings={"callback_timeout": "soon"})
    with pytest.raises(ValidationError, match=r"^state: .*discovered"):
        parse_enum(NodeState, "asleep", "state")


def test_settings_are_coerced_from_strings() -> None:
    node = Node(MAC, "n1", settings={"callback_timeout": "60", "discovery": "yes"})
    assert node.settings == {"callback_timeout": 60, "discovery": True}


def test_effective_settings_layer_defaults_groups_in_order_then_node() -> None:
    groups = {
        "base": Group("base", {"kernel_args": "quiet", "console": "ttyS0", "image": "base"}),
        "gpu": Group("gpu", {"kernel_args": "nomodeset"}),
    }
    node = Node(MAC, "n1", groups=("base", "gpu", "deleted"), image="gpu-image",
                settings={"console": "ttyS1"})
    resolved = effective_settings(node, groups, {"kernel_args": "", "callback_timeout": 600})
    assert {k: (e.value, e.source) for k, e in resolved.items()} == {
        "callback_timeout": (600, "default"),
        "console": ("ttyS1", "node"),
        "image": ("gpu-image", "node"),
        "kernel_args": ("nomodeset", "group:gpu"),
    }


def test_groups_apply_in_the_nodes_order_not_by_name_or_by_catalogue_order() -> None:
    groups = {"alpha": Group("alpha", {"console": "ttyS0"}),
              "zeta": Group("zeta", {"console": "ttyS1"})}
    for order in (("zeta", "alpha"), ("alpha", "zeta")):
        node = Node(MAC, "n1", groups=order)
        resolved = effective_settings(node, groups, {"console": "tty0"})
        assert resolved["console"] == Effective(groups[order[-1]].settings["console"],
                                                f"group:{order[-1]}")
    node = Node(MAC, "n1", groups=("zeta", "alpha"), settings={"console": "ttyAMA0"})
    assert effective_values(node, groups, {})["console"] == "ttyAMA0"
    assert effective_values(Node(MAC, "n1"), groups, {"console": "tty0"}) == {"console": "tty0"}


_KEYS = ["console", "kernel_args", "scheduler_partition", "callback_timeout"]
_LAYER = st.dictionaries(st.sampled_from(_KEYS), st.sampled_from(["a", "b", "c"]), max_size=3)


def _value(key: str, text: str) -> SettingValue:
    return len(text) * 10 if key == "callback_timeout" else text


@given(defaults=_LAYER, group_layers=st.lists(_LAYER, min_size=0, max_size=4),
       own=_LAYER, order=st.permutations(range(4)), missing=st.sets(st.integers(0, 3)))
def test_effective_settings_take_each_key_from_the_closest_layer(
        defaults: dict[str, str], group_layers: list[dict[str, str]], own: dict[str, str],
        order: list[int], missing: set[int]) -> None:
    """For every key: the node's value if it has one, else the last of its groups (in its
    order) that has one, else the default; a group the node names but that is gone is
    skipped. Written as a search from the node down, not as the layering itself."""
    groups = {f"g{i}": Group(f"g{i}", {k: _value(k, v) for k, v in layer.items()})
              for i, layer in enumerate(group_layers) if i not in missing}
    node = Node(MAC, "n1", groups=tuple(f"g{i}" for i in order),
                settings={k: _value(k, v) for k, v in own.items()})
    expected: dict[str, Effective] = {}
    for key in _KEYS:
        if key in node.settings:
            expected[key] = Effective(node.settings[key], "node")
            continue
        holders = [g for g in reversed(node.groups) if g in groups and key in groups[g].settings]
        if holders:
            expected[key] = Effective(groups[holders[0]].settings[key], f"group:{holders[0]}")
        elif key in defaults:
            expected[key] = Effective(_value(key, defaults[key]), "default")
    plain = {k: _value(k, v) for k, v in defaults.items()}
    resolved = effective_settings(node, groups, plain)
    assert resolved == expected
    assert list(resolved) == sorted(resolved)
    assert effective_values(node, groups, plain) == setting_values(resolved) == {
        k: e.value for k, e in expected.items()}


def test_secrets_are_redacted() -> None:
    shown = redact(Group("g", {"power_password": "hunter2", "power_user": "admin"}).settings)
    assert shown == {"power_password": REDACTED, "power_user": "admin"}


def test_lease_activity_uses_the_given_clock() -> None:
    lease = Lease(ipaddress.IPv4Address("10.0.0.5"), MAC, expires=100.0)
    assert lease.active(now=99.0) and not lease.active(now=100.0)
    assert not Lease(lease.ip, MAC, 100.0, state="released").active(now=0.0)


def test_boot_event_kind_is_snake_case() -> None:
    assert BootEvent(MAC, "dhcp_offered", 1.0).kind == "dhcp_offered"
    with pytest.raises(ValidationError, match=r"^kind: "):
        BootEvent(MAC, "DHCP offered", 1.0)


@given(st.text(min_size=1, max_size=40))
def test_settings_that_reach_a_script_stay_on_one_safe_line(text: str) -> None:
    """Whatever is accepted for a setting rendered into iPXE or a kernel command line holds no
    line break, no quote and no iPXE expansion; anything else is refused naming the key."""
    for key in ("console", "kernel_args", "bootfile", "ipxe_script", "scheduler_features"):
        try:
            value = check_setting(key, text)
        except ValidationError as exc:
            assert exc.field == f"settings.{key}" and "is not allowed in" in exc.rule
            continue
        assert isinstance(value, str)
        assert not set(value) & set("\n\r\"'${};&|#\\`<>")


def test_other_settings_only_need_one_printable_line() -> None:
    assert check_setting("power_address", "rack 4 slot 7") == "rack 4 slot 7"
    assert check_setting("power_password", "p@ss w;rd\"$") == "p@ss w;rd\"$"
    with pytest.raises(ValidationError, match=r"settings.power_password: character '\\n'"):
        check_setting("power_password", "pw\nx")


def test_redfish_over_plain_http_needs_power_insecure() -> None:
    plain = {"power_driver": "redfish", "power_address": "HTTP://bmc"}
    with pytest.raises(ValidationError, match="power_insecure=true"):
        check_power(plain)
    check_power({**plain, "power_insecure": True})
    check_power({**plain, "power_address": "https://bmc"})
    check_power({**plain, "power_driver": "ipmi"})  # only Redfish speaks http
    assert check_setting("power_insecure", "yes") is True
