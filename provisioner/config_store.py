"""The `[store]` settings: which backend holds the appliance's state, and how etcd is reached
(endpoints, TLS, auth). The files they name are read when the store opens (store/)."""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.errors import ConfigError

STORE_BACKENDS = ("sqlite", "memory", "etcd")


@dataclass(frozen=True)
class StoreSettings:
    backend: str = "sqlite"
    #: sqlite file; empty means DATA_DIR/store.db
    path: str = ""
    endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    namespace: str = ""
    timeout: float = 2.0
    #: etcd TLS: the CA that signed etcd's certificate (empty with https:// endpoints: the
    #: system's CAs), and our client certificate and key when etcd runs --client-cert-auth.
    #: Setting ca or cert turns TLS on. The key must be readable by its owner only.
    ca: str = ""
    cert: str = ""
    key: str = ""
    #: etcd auth (`etcdctl user add`, `etcdctl auth enable`): the user and its password, from a
    #: file readable by its owner only (password_file) or PROVISIONER_STORE_PASSWORD; a password
    #: written in this file is allowed but shown by nothing.
    user: str = ""
    password: str = ""
    password_file: str = ""


def check_store(store: StoreSettings) -> None:
    if store.backend not in STORE_BACKENDS:
        raise ConfigError(f"store.backend: {store.backend!r} is not one of "
                          f"{', '.join(STORE_BACKENDS)}")
    if store.timeout <= 0:
        raise ConfigError("store.timeout: must be more than 0 seconds")
    if store.backend == "etcd" and not store.endpoints:
        raise ConfigError("store.endpoints: the etcd backend needs at least one HOST:PORT")
    _check_store_security(store)


def _check_store_security(store: StoreSettings) -> None:
    """The shape of the etcd TLS and auth settings (the files are read when the store opens)."""
    if bool(store.cert) != bool(store.key):
        raise ConfigError("store.cert and store.key go together: the client certificate and "
                          "its private key, or neither")
    if store.password and store.password_file:
        raise ConfigError("store.password and store.password_file: give one, not both")
    if (store.password or store.password_file) and not store.user:
        raise ConfigError("store.password needs store.user (the etcd user name)")
    if store.user and not (store.password or store.password_file):
        raise ConfigError(f"store.user {store.user!r} needs store.password_file (or "
                          "PROVISIONER_STORE_PASSWORD)")
