"""The etcd v3 backend: the store contract on a real etcd cluster, through aetcd 1.0.

Why aetcd: it is the etcd client that works with current protobuf and grpcio (python-etcd3 0.12
needs protobuf<4, etcd3gw goes through the slower HTTP gateway). We use it for what it does well,
the generated etcd stubs and messages (the gRPC channel is ours: aetcd has no TLS and never
renews an auth token), and call the stubs directly: the
contract needs things its convenience methods hide (the response header revision of a
transaction, count-only and paginated ranges, wait-for-ready calls), and two things it lacks
entirely, a watch that survives an etcd restart and a lease keep-alive loop, are written here.
This package is the only code that imports aetcd (an import-linter contract says so).

- connection.py: endpoints, gRPC channels, the timeout and error mapping of every call, keys
  in the namespace.
- security.py: TLS (CA, client certificate) and the [store] files; auth.py: etcd auth tokens.
- store.py: `EtcdStore`, the contract's operations as etcd requests, and lease keep-alive.
- watch.py: the watch that resumes across etcd restarts.
"""

import os

# gRPC's C core logs every failed TLS handshake to stderr, a second copy of what our error says
# in one line. It reads this when grpc is first imported, hence here, before any import of it
# (an operator's own setting wins).
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from provisioner.store.etcd.security import EtcdSecurity
from provisioner.store.etcd.store import EtcdStore

__all__ = ["EtcdSecurity", "EtcdStore"]
