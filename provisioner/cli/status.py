"""`provisioner status`: what the CLI talks to (the settings chosen by the rule in target.py, the
data dir, the store, the appliance's API, the scheduler) and whether each answers."""

from __future__ import annotations

from dataclasses import dataclass

import typer

from provisioner.cli.common import JSON_OPTION, print_fields, print_json, state, store_missing
from provisioner.cli.target import Target
from provisioner.errors import ProvisionerError
from provisioner.store import open_store


@dataclass(frozen=True)
class Check:
    answers: bool
    detail: str
    verdict: str = ""  # default: "answers" or "NOT ANSWERING"

    def text(self) -> str:
        return f"{self.said} ({self.detail})"

    @property
    def said(self) -> str:
        return self.verdict or ("answers" if self.answers else "NOT ANSWERING")

    def to_dict(self) -> dict[str, object]:
        return {"answers": self.answers, "verdict": self.said, "detail": self.detail}


def status(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Which settings, data dir, store, appliance API and scheduler the CLI uses, and whether
    each answers. The settings are, first that applies: -c/--config, $PROVISIONER_CONFIG, a
    lab that is up (DATA_DIR/lab/lab.toml), /etc/provisioner/provisioner.toml, the defaults."""
    target = state(ctx).target
    settings = target.settings
    store, api, scheduler = _store(target), _http(target, target.api_url), \
        _http(target, target.scheduler_url)
    endpoint = (str(settings.store_path) if settings.store.backend == "sqlite"
                else ",".join(settings.store.endpoints))
    if as_json:
        print_json({"config": settings.source, "chosen_by": target.reason,
                    "data_dir": str(settings.data_dir), "lab_namespace": target.namespace,
                    "store": {"backend": settings.store.backend, "endpoint": endpoint,
                              **store.to_dict()},
                    "api": {"url": target.api_url, **api.to_dict()},
                    "scheduler": {"url": target.scheduler_url, **scheduler.to_dict()}})
        return
    print_fields([("settings", settings.source), ("chosen by", target.reason),
                  ("data dir", settings.data_dir),
                  ("store", f"{settings.store.backend} {endpoint}: {store.text()}"),
                  ("api", f"{target.api_url}: {api.text()}"),
                  ("scheduler", f"{target.scheduler_url}: {scheduler.text()}"),
                  ("lab", f"namespace {target.namespace} (requests go from inside it)"
                   if target.namespace else None)])


def _store(target: Target) -> Check:
    if store_missing(target):
        return Check(False, "nothing was added with these settings", "not created yet")

    async def probe() -> str:
        store = open_store(target.settings)
        try:
            result = await store.status()
        finally:
            await store.close()
        return f"revision {result.revision}, {result.keys} keys"

    try:
        return Check(True, target.run(probe, timeout=15))
    except (ProvisionerError, OSError, TimeoutError) as exc:
        return Check(False, str(exc) or type(exc).__name__)


def _http(target: Target, url: str) -> Check:
    import httpx  # not at the top: every CLI verb would pay for it

    def probe() -> httpx.Response:
        return httpx.get(f"{url}/healthz", timeout=3.0)

    try:
        response = target.call(probe, timeout=10)
    except (httpx.HTTPError, OSError, TimeoutError) as exc:
        return Check(False, str(exc) or type(exc).__name__)
    return Check(response.status_code == 200, f"GET /healthz: HTTP {response.status_code}")
