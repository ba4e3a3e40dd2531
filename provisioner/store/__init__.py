"""The revisioned key-value store and its backends; `open_store` picks one from the settings."""

from __future__ import annotations

from provisioner.config import Settings
from provisioner.store.base import KeyValueStore


def open_store(settings: Settings) -> KeyValueStore:
    """The backend the settings name. The etcd client is imported only when it is used."""
    backend = settings.store.backend
    if backend == "memory":
        from provisioner.store.memory import MemoryStore

        return MemoryStore()
    if backend == "etcd":
        from provisioner.store.etcd import EtcdStore

        etcd: KeyValueStore = EtcdStore(list(settings.store.endpoints),
                                        namespace=settings.store.namespace,
                                        timeout=settings.store.timeout)
        return etcd
    from provisioner.store.sqlite import SqliteStore

    return SqliteStore(settings.store_path, timeout=max(settings.store.timeout, 5.0))
