"""Which settings, and so which store, appliance and scheduler, a CLI command talks to.

One rule, the first that applies:

1. `-c/--config PATH`;
2. $PROVISIONER_CONFIG;
3. a lab that is up: DATA_DIR/lab/lab.toml when DATA_DIR/lab/state.json is there and its
   network namespace exists (DATA_DIR: $PROVISIONER_DATA_DIR, else the data_dir of
   /etc/provisioner/provisioner.toml, else ~/.local/share/provisioner); not for `serve` and
   `scheduler serve`, which run servers rather than talk to them;
4. /etc/provisioner/provisioner.toml when present;
5. the built-in defaults.

A lab's settings (by rule 3, or a lab.toml named by 1 or 2) are read as the lab's own
processes read them, without the PROVISIONER_* variables: PROVISIONER_DATA_DIR says where the
lab is, it must not move the lab's store somewhere else. A lab's appliance, scheduler and etcd
listen only inside its namespace, so the CLI's requests to them are made from inside it.
`provisioner status` prints what this rule chose.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from provisioner.config import SYSTEM_CONFIG, Settings, load_settings
from provisioner.errors import ConfigError, StoreUnavailable
from provisioner.lab.labconfig import lab_env

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    settings: Settings
    #: which rule chose the settings, in words (shown by `provisioner status`)
    reason: str
    #: where `provisioner lab ...` keeps its lab: DATA_DIR/lab
    lab_root: Path
    #: the lab's network namespace when the settings are a lab's (requests go from inside it)
    namespace: str | None = None

    @property
    def api_url(self) -> str:
        """Where the appliance's API answers: [api] public_url, else its listen address."""
        api = self.settings.api
        if api.public_url:
            return api.public_url.rstrip("/")
        host = "127.0.0.1" if api.listen in ("", "0.0.0.0", "::") else api.listen
        return f"http://{host}:{api.port}"

    @property
    def scheduler_url(self) -> str:
        return self.settings.scheduler.client_url

    def call(self, fn: Callable[[], T], timeout: float | None = 60.0) -> T:
        """Run `fn` where the target's servers are reachable: inside the lab's namespace for
        a lab, here otherwise."""
        if self.namespace is None:
            return fn()
        from provisioner.lab.netns import Namespace

        try:
            with Namespace(self.namespace) as ns:
                return ns.call(fn, timeout)
        except BrokenExecutor:  # the thread could not join the namespace
            raise ConfigError(f"cannot enter the lab's network namespace {self.namespace}: "
                              "that needs root (or use -c with other settings)") from None
        except TimeoutError:
            raise StoreUnavailable(f"no answer in time from the lab in network namespace "
                                   f"{self.namespace}; see `provisioner lab status`") from None

    def run(self, factory: Callable[[], Awaitable[T]], timeout: float | None = 300.0) -> T:
        """Run a coroutine to completion, where `call` would."""
        async def main() -> T:
            return await factory()
        return self.call(lambda: asyncio.run(main()), timeout)


def resolve(config: Path | None, env: Mapping[str, str] | None = None, *,
            serving: bool = False) -> Target:
    """Apply the rule in this module's docstring. `serving`: for `serve` and `scheduler
    serve`, which are servers rather than clients of one, rule 3 does not apply (a lab's
    servers are started with -c)."""
    env = os.environ if env is None else env
    if config is not None:
        return _from_file(config, "--config", env)
    if env.get("PROVISIONER_CONFIG"):
        return _from_file(Path(env["PROVISIONER_CONFIG"]), "$PROVISIONER_CONFIG", env)
    system = SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None
    host = load_settings(system, env={k: v for k, v in env.items() if k != "PROVISIONER_CONFIG"})
    lab_root = host.data_dir / "lab"
    namespace = None if serving else _lab_up(lab_root)
    if namespace is not None:
        settings = load_settings(lab_root / "lab.toml", env=lab_env(env))
        return Target(settings, f"the lab that is up under {lab_root}", lab_root, namespace)
    reason = (f"{system} exists (and no -c, $PROVISIONER_CONFIG or lab that is up)" if system
              else f"no -c, no $PROVISIONER_CONFIG, no lab up under {lab_root}, no {SYSTEM_CONFIG}")
    return Target(host, reason, lab_root)


def _from_file(path: Path, how: str, env: Mapping[str, str]) -> Target:
    namespace = _lab_up(path.parent) if path.name == "lab.toml" else None
    if namespace is not None:
        settings = load_settings(path, env=lab_env(env))
        return Target(settings, f"{how} (a lab's settings)", path.parent, namespace)
    settings = load_settings(path, env=env)
    return Target(settings, how, settings.data_dir / "lab")


def _lab_up(root: Path) -> str | None:
    """The namespace of the lab under `root` when it is up (its state file is there and its
    namespace exists), else None."""
    from provisioner.lab.netns import namespace_exists
    from provisioner.lab.state import load_state

    if not (root / "state.json").is_file():
        return None
    try:
        state = load_state(root)
    except (ConfigError, OSError):
        return None  # an unreadable state file (or not ours to read): `lab status` says so
    if state is None or not namespace_exists(state.namespace):
        return None
    return state.namespace
