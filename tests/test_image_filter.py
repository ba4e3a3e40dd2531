"""The `image` filter of the inventory: list_nodes (store reads, the CLI) and page_nodes (the
cached view, the API) select the same nodes, over every store backend."""

from __future__ import annotations

import pytest

from provisioner.inventory.repository import Inventory, image_matches
from provisioner.nodes.model import MacAddress, Node
from provisioner.store.base import KeyValueStore
from tests.image_filter import FILTERS, NODES, wanted


def test_the_shared_rule_is_the_one_image_matches_applies() -> None:
    for image in FILTERS:
        assert sorted(n for _, n, on in NODES if image_matches(on, image)) == wanted(image)
    assert wanted("compute") == ["one", "plain", "two"] and wanted("compute:2") == ["two"]


@pytest.mark.parametrize("image", FILTERS)
async def test_list_nodes_and_page_nodes_select_the_same_nodes(store: KeyValueStore,
                                                               image: str) -> None:
    inventory = Inventory(store)
    for mac, name, on in NODES:
        await inventory.add_node(Node(MacAddress(mac), name, image=on))
    await inventory.start()
    try:
        listed = sorted(n.name for n in await inventory.list_nodes(image=image))
        page, cursor = inventory.page_nodes(limit=100, image=image)
        assert listed == wanted(image)
        assert [n.name for n in page] == wanted(image) and cursor is None
    finally:
        await inventory.stop()
