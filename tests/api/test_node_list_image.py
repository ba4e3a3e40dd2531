"""`GET /api/v1/nodes?image=`: NAME selects every version, NAME:VERSION only that one, as
`provisioner node list --image` does."""

from __future__ import annotations

from tests.api.conftest import Api
from tests.image_filter import FILTERS, NODES, wanted


async def test_image_filter_selects_a_name_or_one_version(api: Api) -> None:
    for mac, name, image in NODES:
        response = await api.client.post("/api/v1/nodes", headers=api.operator,
                                         json={"mac": mac, "name": name, "image": image})
        assert response.status_code == 201, response.text
    for image in FILTERS:
        page = await api.client.get("/api/v1/nodes", headers=api.viewer,
                                    params={"image": image})
        assert page.status_code == 200, page.text
        assert [n["name"] for n in page.json()["items"]] == wanted(image), image
