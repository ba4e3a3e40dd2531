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
        from provisioner.store.etcd import EtcdSecurity, EtcdStore

        # Every etcd connection (appliance, CLI, scheduler, lab) is opened here, so TLS and auth
        # apply to all of them. The files are read now: a bad one fails at start-up.
        conf = settings.store
        security = EtcdSecurity.load(ca=conf.ca, cert=conf.cert, key=conf.key, user=conf.user,
                                     password=conf.password, password_file=conf.password_file)
        etcd: KeyValueStore = EtcdStore(list(conf.endpoints), namespace=conf.namespace,
                                        timeout=conf.timeout, security=security)
        return etcd
    from provisioner.store.sqlite import SqliteStore

    return SqliteStore(settings.store_path, timeout=max(settings.store.timeout, 5.0))
