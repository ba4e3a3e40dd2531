"""How the etcd backend proves who it is and checks who it talks to: TLS and etcd auth.

TLS: the CA that signed etcd's server certificate ([store] ca; none: the system's roots) and,
when etcd runs with --client-cert-auth, our client certificate and key ([store] cert, key).
etcd auth: a user and password ([store] user, password or password_file) exchanged for a token
(auth.py). With client certificates and no user, etcd takes the user name from the
certificate's CN instead.

The files are read once, when the store is opened: a missing or unreadable file is a
ConfigError naming the setting, not a handshake failure later. The key and the password file
must be readable by their owner only (secretfile.py).

gRPC reports a failed handshake as one long string from its C core; `explain_connect` turns the
ones we have met into a sentence naming the setting to check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]  # (grpcio ships no type hints)

from provisioner.errors import ConfigError
from provisioner.security.secretfile import read_secret_file, read_secret_text


@dataclass(frozen=True, slots=True)
class EtcdSecurity:
    """TLS material and credentials for every channel to etcd. The default: neither."""

    ca: bytes | None = None  # PEM; None with tls: the system's trusted roots
    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)
    ca_path: str = ""
    cert_path: str = ""
    user: str = ""
    password: str = field(default="", repr=False)

    @property
    def tls_files(self) -> bool:
        """A CA or a client certificate is configured (so TLS is on)."""
        return self.ca is not None or self.cert is not None

    @classmethod
    def load(cls, *, ca: str = "", cert: str = "", key: str = "", user: str = "",
             password: str = "", password_file: str = "") -> EtcdSecurity:
        """Read the files the [store] settings name (paths may be empty: not used)."""
        # (config.py checked which settings go together; these two would otherwise fail late.)
        if bool(cert) != bool(key):
            raise ConfigError("[store] cert and key go together: give both or neither")
        if password_file:
            password = read_secret_text(Path(password_file), "[store] password_file",
                                        ConfigError)
        if user and not password:
            raise ConfigError(f"[store] user {user!r} needs password_file (or password)")
        return cls(
            ca=_pem(ca, "[store] ca", "CERTIFICATE") if ca else None,
            cert=_pem(cert, "[store] cert", "CERTIFICATE") if cert else None,
            key=_key(key) if key else None,
            ca_path=ca, cert_path=cert, user=user, password=password,
        )

    def credentials(self) -> Any:
        """gRPC channel credentials: our CA (or the system's) and our certificate, if any."""
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)

    def explain_connect(self, details: str, *, tls: bool) -> str | None:
        """What a gRPC connection failure means, naming the setting to check; None if it is
        not one we recognise (the caller then shows gRPC's words)."""
        if "CERTIFICATE_VERIFY_FAILED" in details:
            why = _after(details, "CERTIFICATE_VERIFY_FAILED")
            ca = f"[store] ca ({self.ca_path})" if self.ca_path else "the system's CAs"
            return (f"etcd's server certificate is not trusted ({why}): {ca} must hold the CA "
                    "that signed etcd's --cert-file")
        if "Hostname Verification" in details or "Peer name" in details:
            return ("etcd's server certificate does not name the host in the endpoint: use a "
                    "host name or address listed in its subjectAltName")
        if any(mark in details for mark in _CLIENT_CERT_REFUSED):
            if self.cert is None:
                return ("etcd asks for a client certificate (it runs with --client-cert-auth): "
                        "set [store] cert and key")
            return (f"etcd refused the client certificate [store] cert ({self.cert_path}): it "
                    "must be signed by a CA in etcd's --trusted-ca-file and not be expired")
        if any(mark in details for mark in _NOT_TLS):
            return ("the server closed the connection during the TLS handshake: it does not "
                    "speak TLS on this port, probably; use an http:// endpoint without [store] "
                    "ca/cert, or start etcd with --cert-file and --key-file")
        if not tls and "Socket closed" in details:
            return ("etcd closed the connection at once: it probably expects TLS; give "
                    "https:// endpoints and [store] ca (and cert and key if etcd checks client "
                    "certificates)")
        if "Connection refused" in details:
            return "nothing listens there (connection refused); check that etcd is running"
        return None


# gRPC's words when the server aborts the handshake over our certificate (or its absence): the
# alert arrives after the client finished its side of a TLS 1.3 handshake, so gRPC reports it
# as a record it cannot decrypt.
_CLIENT_CERT_REFUSED = ("TSI_DATA_CORRUPTED", "BAD_CERTIFICATE", "CERTIFICATE_REQUIRED",
                        "UNKNOWN_CA", "Unwrap failed")
# ... and when a plain-text server gets our ClientHello (etcd closes the connection: "Handshake
# read failed (Socket closed)"; other servers answer bytes that are no TLS record).
_NOT_TLS = ("Handshake read failed", "WRONG_VERSION_NUMBER", "wrong version number",
            "PACKET_LENGTH_TOO_LONG", "RECORD_TOO_LARGE")


def _after(details: str, mark: str) -> str:
    rest = details.split(mark, 1)[1].lstrip(": ")
    return re.split(r": (?:OK|UNKNOWN)\b", rest, maxsplit=1)[0].strip() or mark


def _pem(path: str, what: str, kind: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror})") from None
    if f"-----BEGIN {kind}-----".encode() not in data:
        raise ConfigError(f"{what} {path} holds no PEM {kind.lower()} "
                          f"(-----BEGIN {kind}-----)")
    return data


def _key(path: str) -> bytes:
    data = read_secret_file(Path(path), "[store] key", ConfigError)
    if b"PRIVATE KEY-----" not in data:
        raise ConfigError(f"[store] key {path} holds no PEM private key")
    return data
