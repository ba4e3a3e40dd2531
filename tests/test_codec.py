"""The storage codec: stored records round-trip, carry their format and are refused when the
format is unknown; the API's wire schema is built apart, so renaming an API field leaves the
stored bytes as they were."""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any

import pytest
from pydantic import Field

from provisioner.api import schemas
from provisioner.errors import StoreError
from provisioner.inventory import codec, keys
from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import BootEvent, Firmware, Group, Lease, MacAddress, Node, NodeState
from provisioner.store.base import KeyValueStore

MAC = MacAddress("52:54:00:00:00:01")
IP = ipaddress.IPv4Address("10.0.0.11")
NODE = Node(MAC, "node001", ip=IP, groups=("compute", "gpu"), image="compute:2",
            firmware=Firmware.UEFI, state=NodeState.READY,
            settings={"console": "ttyS0,115200", "power_password": "s3cret",
                      "callback_timeout": 90, "discovery": True},
            hardware={"cpus": 8, "disks": [{"name": "vda", "size_bytes": 1 << 30}]})
BARE = Node(MacAddress("52:54:00:00:00:02"), "node002")


@pytest.mark.parametrize("node", [NODE, BARE], ids=["full", "bare"])
def test_a_node_round_trips_and_carries_the_format(node: Node) -> None:
    raw = codec.encode_node(node)
    assert codec.decode_node(raw) == node
    assert json.loads(raw)["format"] == codec.FORMAT


@pytest.mark.parametrize("lease", [
    Lease(IP, MAC, 1_700_000_000.25),
    Lease(IP, MAC, 1_700_000_000, hostname='a "quoted" n\u00e9me', client_id="01:52:54",
          state="offered"),
    Lease(IP, MAC, float("inf"), state="declined"),
], ids=["float", "int-and-text", "infinite"])
def test_a_lease_round_trips_and_its_fast_encoding_is_the_general_one(lease: Lease) -> None:
    raw = codec.encode_lease(lease)
    assert codec.decode_lease(raw) == lease
    # the DHCP bind path's hand-written JSON must be byte for byte what dump() makes
    assert raw == codec.dump(json.loads(raw))


def test_groups_events_and_claims_round_trip() -> None:
    group = Group("compute", {"console": "ttyS1", "callback_timeout": 30}, "the workers")
    assert codec.decode_group(codec.encode_group(group)) == group
    event = BootEvent(MAC, "booted", 1234.5, {"version": "2", "facts": {"cpus": 4}})
    assert codec.decode_event(codec.encode_event(event)) == event
    assert codec.decode_claim(codec.encode_claim(MAC, 99.5)) == (MAC.value, 99.5)


def test_records_from_before_the_format_field_read_as_format_one() -> None:
    stored = json.loads(codec.encode_node(NODE))
    del stored["format"]
    assert codec.decode_node(json.dumps(stored).encode()) == NODE
    assert codec.decode_claim(b"52:54:00:00:00:01 1700000000.000") == (MAC.value, 1.7e9)


@pytest.mark.parametrize("found", [2, 0, "1", None, True])
def test_an_unknown_format_is_refused_with_a_message_that_says_why(found: Any) -> None:
    stored = json.loads(codec.encode_node(NODE)) | {"format": found}
    with pytest.raises(codec.UnknownFormat) as refused:
        codec.decode_node(json.dumps(stored).encode())
    assert isinstance(refused.value, StoreError)
    message = str(refused.value)
    assert f"format {found!r}" in message and f"reads format {codec.FORMAT} only" in message
    assert "restore the store from a backup" in message


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'{"name": "n1"}',
                                 b'{"mac": "zz", "name": "n1"}'])
def test_an_unreadable_record_is_a_store_error_naming_the_kind(raw: bytes) -> None:
    with pytest.raises(codec.RecordError, match="stored node record"):
        codec.decode_node(raw)


async def test_the_inventory_refuses_a_node_of_an_unknown_format(
        store: KeyValueStore, caplog: pytest.LogCaptureFixture) -> None:
    future = json.loads(codec.encode_node(NODE)) | {"format": codec.FORMAT + 1}
    await store.put(keys.node(MAC.value), json.dumps(future).encode())
    inv = Inventory(store)
    with pytest.raises(codec.UnknownFormat, match=f"format {codec.FORMAT + 1}"):
        await inv.get_node(MAC.value)
    with caplog.at_level(logging.WARNING):
        await inv.start()
        await inv.stop()
    assert inv.node_by_mac(MAC) is None  # the view skips it rather than guessing
    assert any("reads format" in r.getMessage() for r in caplog.records)


class RenamedNodeOut(schemas.NodeOut):
    """NodeOut with `name` renamed to `hostname` on the wire."""

    name: str = Field(exclude=True)
    hostname: str = ""

    def model_post_init(self, context: Any, /) -> None:
        self.hostname = self.name


def test_renaming_an_api_field_leaves_the_stored_form_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stored_before = codec.encode_node(NODE)
    wire_before = schemas.node_out(NODE).model_dump(mode="json")
    monkeypatch.setattr(schemas, "NodeOut", RenamedNodeOut)
    wire_after = schemas.node_out(NODE).model_dump(mode="json")
    assert "name" in wire_before and "name" not in wire_after
    assert wire_after["hostname"] == NODE.name
    assert codec.encode_node(NODE) == stored_before
    assert codec.decode_node(stored_before) == NODE


def test_the_wire_form_redacts_secrets_and_the_stored_form_keeps_them() -> None:
    wire = schemas.node_out(NODE).model_dump(mode="json")
    stored = json.loads(codec.encode_node(NODE))
    assert wire["settings"]["power_password"] != "s3cret"
    assert stored["settings"]["power_password"] == "s3cret"
    assert "format" not in wire
