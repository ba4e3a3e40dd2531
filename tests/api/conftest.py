"""An API over a started inventory, with one bearer token per role and a clock moved by hand."""

from __future__ import annotations

import json
import lzma
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from provisioner.api.app import create_app
from provisioner.api.context import ApiContext
from provisioner.config import Settings, load_settings
from provisioner.images.format.catalog import ImageCatalog, ImageVersion, describe_files
from provisioner.inventory.repository import Inventory
from provisioner.security.tokens import Role
from provisioner.store.base import KeyValueStore
from provisioner.store.memory import MemoryStore


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Api:
    client: httpx.AsyncClient
    ctx: ApiContext
    bearer: dict[str, str]
    clock: Clock

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.bearer[role]}"}

    @property
    def viewer(self) -> dict[str, str]:
        return self.auth("viewer")

    @property
    def operator(self) -> dict[str, str]:
        return self.auth("operator")

    @property
    def admin(self) -> dict[str, str]:
        return self.auth("admin")


def api_settings(tmp_path: Path, **env: str) -> Settings:
    return load_settings(env={"PROVISIONER_DATA_DIR": str(tmp_path),
                              "PROVISIONER_STORE_BACKEND": "memory",
                              "PROVISIONER_API_MAX_BODY": "65536", **env})


async def open_api(store: KeyValueStore, settings: Settings) -> tuple[Api, Inventory]:
    inventory = Inventory(store)
    await inventory.start()
    clock = Clock()
    ctx = ApiContext.build(settings, inventory, clock=clock)
    bearer = {}
    for role in Role:
        _, secret = await ctx.api_tokens.create(role, f"{role.label}-token", clock())
        bearer[role.label] = secret
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(ctx)),
                               base_url="http://api")
    return Api(client, ctx, bearer, clock), inventory


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    found, inventory = await open_api(MemoryStore(), api_settings(tmp_path))
    try:
        yield found
    finally:
        await found.client.aclose()
        await inventory.stop()


@pytest.fixture
async def store_api(store: KeyValueStore, tmp_path: Path) -> AsyncIterator[Api]:
    """The same API over each store backend (memory, sqlite, a real etcd)."""
    found, inventory = await open_api(store, api_settings(tmp_path))
    try:
        yield found
    finally:
        await found.client.aclose()
        await inventory.stop()


def publish_image(catalog: ImageCatalog, name: str) -> ImageVersion:
    """A small real image version (a stand-in kernel and an xz initramfs), published and
    made current."""
    staging = catalog.new_staging(name)
    (staging / "vmlinuz").write_bytes(b"kernel " * 100)
    (staging / "image.cpio.xz").write_bytes(lzma.compress(b"070701", check=lzma.CHECK_CRC32))
    (staging / "manifest.json").write_text(json.dumps(
        {"files": describe_files(staging), "kernel_release": "6.1.0-test",
         "created": "2026-11-24T21:00:00Z"}))
    return catalog.publish(staging, name, activate=True)
