"""etcd with TLS client certificates and etcd auth, against a real etcd the test starts with a
PKI it generates (tests/support/etcd_server.py): the store works with the right CA, certificate
and user, through the settings and open_store() every process uses, and every wrong setting is
refused with one line naming what failed and what to check.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.store.test_contract as contract
from provisioner.config import load_settings
from provisioner.errors import ConfigError, StoreError, StoreUnavailable, ValidationError
from provisioner.store import open_store
from provisioner.store.base import KeyValueStore
from provisioner.store.etcd import EtcdSecurity, EtcdStore
from tests.support.cli import Cli
from tests.support.etcd_server import EtcdServer

pytestmark = pytest.mark.etcd

USER = "provisioner"
PASSWORD = "s3cret pass"  # a space: the file's text is taken as is, less the final newline


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd-tls"), tls=True)
    server.start()
    try:
        server.enable_auth(USER, PASSWORD)
        yield server
    finally:
        server.stop()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "etcd.pass"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def _store_settings(tmp_path: Path, server: EtcdServer, **store: str) -> Path:
    """A settings file for the etcd backend on `server` with the given [store] keys."""
    assert server.pki is not None
    lines = ['backend = "etcd"', f'endpoints = ["{server.endpoint}"]',
             f'namespace = "/tls-{uuid.uuid4().hex[:8]}"', "timeout = 2.0"]
    lines += [f"{key} = {value!r}".replace("'", '"') for key, value in store.items()]
    path = tmp_path / f"provisioner-{uuid.uuid4().hex[:6]}.toml"
    path.write_text("[store]\n" + "\n".join(lines) + "\n")
    return path


def _good(server: EtcdServer, password_file: Path) -> dict[str, str]:
    assert server.pki is not None
    return {"ca": str(server.pki.ca), "cert": str(server.pki.client_cert),
            "key": str(server.pki.client_key), "user": USER,
            "password_file": str(password_file)}


@pytest.fixture
async def tls_store(tmp_path: Path, tls_etcd: EtcdServer,
                    password_file: Path) -> AsyncIterator[KeyValueStore]:
    """The store as the appliance, the CLI and the scheduler open it: settings -> open_store."""
    config = _store_settings(tmp_path, tls_etcd, **_good(tls_etcd, password_file))
    store = open_store(load_settings(config, env={}))
    try:
        yield store
    finally:
        await store.close()


# -- (a) the right CA, certificate and user: the contract holds ------------------------------

CONTRACT = [
    contract.test_put_get_roundtrip,
    contract.test_range_is_prefix_bounded_and_sorted,
    contract.test_cas_update_requires_current_revision,
    contract.test_delete_and_delete_cas,
    contract.test_txn_with_one_failed_expectation_writes_nothing,
    contract.test_watch_sees_live_changes_under_prefix_only,
    contract.test_watch_resumes_from_a_revision,
    contract.test_lease_keepalive_extends_and_revoke_deletes,
    contract.test_status_reports_revision_and_keys,
]


@pytest.mark.parametrize("case", CONTRACT, ids=lambda case: case.__name__)
async def test_the_contract_holds_over_tls_with_auth(case: Any,
                                                     tls_store: KeyValueStore) -> None:
    await case(tls_store)


async def test_a_token_etcd_forgot_is_renewed_without_the_caller_noticing(
    tls_etcd: EtcdServer, tls_store: KeyValueStore
) -> None:
    """etcd's simple tokens live in its memory: a restart forgets every one."""
    await tls_store.put("/renew", b"1")
    tls_etcd.restart()
    revision = await tls_store.put("/renew", b"2")  # waits for etcd, re-authenticates
    found = await tls_store.get("/renew")
    assert found is not None and (found.value, found.mod_revision) == (b"2", revision)


async def test_a_watch_resumes_across_a_restart_with_a_renewed_token(
    tls_etcd: EtcdServer, tls_store: KeyValueStore
) -> None:
    start = await tls_store.put("/w/a", b"1")
    events = tls_store.watch("/w/", start)
    first = await asyncio.wait_for(anext(events), 5)
    tls_etcd.restart()  # the stream breaks and every token is gone
    revision = await tls_store.put("/w/b", b"2")  # this call re-authenticates
    second = await asyncio.wait_for(anext(events), 10)
    await events.aclose()  # type: ignore[attr-defined]
    assert (first.key, first.revision) == ("/w/a", start)
    assert (second.key, second.value, second.revision) == ("/w/b", b"2", revision)


async def test_password_auth_without_tls_renews_tokens_for_calls_and_watches(
    tmp_path: Path, password_file: Path
) -> None:
    """No client certificate to fall back on: every call and the watch need a valid token."""
    with EtcdServer(tmp_path / "etcd") as server:
        server.enable_auth(USER, PASSWORD)
        security = EtcdSecurity.load(user=USER, password_file=str(password_file))
        store = EtcdStore([server.endpoint], namespace="/auth", security=security)
        try:
            start = await store.put("/w/a", b"1")
            events = store.watch("/w/", start)
            assert (await asyncio.wait_for(anext(events), 5)).revision == start
            server.restart()  # etcd forgets every token; the watch must renew its own
            server.etcdctl(f"--user={USER}:{PASSWORD}", "put", "/auth/w/b", "2")  # another writer
            second = await asyncio.wait_for(anext(events), 10)
            assert (second.key, second.value, second.revision) == ("/w/b", b"2", start + 1)
            revision = await store.put("/w/c", b"3")
            assert (await asyncio.wait_for(anext(events), 5)).revision == revision
            await events.aclose()  # type: ignore[attr-defined]
        finally:
            await store.close()
        # A user etcd knows but whose roles do not cover the keys.
        server.etcdctl(f"--user=root:root-{PASSWORD}", "user", "add", "guest:guest-pw")
        guest = EtcdStore([server.endpoint], security=EtcdSecurity(user="guest",
                                                                    password="guest-pw"))
        error = await _refusal(guest)
        assert "user 'guest' lacks the permission" in str(error)
        assert "etcdctl role grant-permission" in str(error)
        error = await _refusal(EtcdStore([server.endpoint]))  # no user at all
        assert "authentication enabled and we gave no user" in str(error)


async def test_the_client_certificate_alone_is_the_user_when_no_user_is_set(
    tmp_path: Path, tls_etcd: EtcdServer, password_file: Path
) -> None:
    """etcd takes the user from the certificate's CN (`provisioner`) when no token is sent."""
    settings = _good(tls_etcd, password_file)
    del settings["user"], settings["password_file"]
    store = open_store(load_settings(_store_settings(tmp_path, tls_etcd, **settings), env={}))
    try:
        revision = await store.put("/cn", b"x")
        assert (await store.get("/cn")) is not None and revision > 0
    finally:
        await store.close()


# -- (b), (c) refusals: one line, naming the check ---------------------------------------------

async def _refusal(store: EtcdStore | KeyValueStore) -> StoreError:
    started = time.monotonic()
    try:
        with pytest.raises(StoreError) as caught:
            await store.get("/anything")
    finally:
        await store.close()
    assert time.monotonic() - started < 2.0 + 1.5  # the timeout, plus the probe asking why
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message and "AioRpcError" not in message
    return caught.value


def _security(server: EtcdServer, password_file: Path, **change: str) -> EtcdSecurity:
    return EtcdSecurity.load(**{**_good(server, password_file), **change})


async def test_a_server_certificate_our_ca_did_not_sign_is_refused(
    tls_etcd: EtcdServer, password_file: Path
) -> None:
    assert tls_etcd.pki is not None
    security = _security(tls_etcd, password_file, ca=str(tls_etcd.pki.other_ca))
    error = await _refusal(EtcdStore([tls_etcd.endpoint], security=security))
    assert isinstance(error, StoreUnavailable)
    assert "server certificate is not trusted" in str(error)
    assert str(tls_etcd.pki.other_ca) in str(error) and "[store] ca" in str(error)


async def test_a_client_certificate_etcd_does_not_trust_is_refused(
    tls_etcd: EtcdServer, password_file: Path
) -> None:
    assert tls_etcd.pki is not None
    security = _security(tls_etcd, password_file, cert=str(tls_etcd.pki.rogue_cert),
                         key=str(tls_etcd.pki.rogue_key))
    error = await _refusal(EtcdStore([tls_etcd.endpoint], security=security))
    assert "etcd refused the client certificate [store] cert" in str(error)
    assert str(tls_etcd.pki.rogue_cert) in str(error) and "--trusted-ca-file" in str(error)


async def test_no_client_certificate_is_refused_saying_to_set_one(
    tls_etcd: EtcdServer, password_file: Path
) -> None:
    security = _security(tls_etcd, password_file, cert="", key="")
    error = await _refusal(EtcdStore([tls_etcd.endpoint], security=security))
    assert "asks for a client certificate" in str(error) and "[store] cert and key" in str(error)


async def test_a_wrong_password_is_refused_naming_the_user(
    tls_etcd: EtcdServer, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not the password")
    wrong.chmod(0o600)
    security = _security(tls_etcd, wrong)
    error = await _refusal(EtcdStore([tls_etcd.endpoint], security=security))
    assert not isinstance(error, StoreUnavailable)
    assert "invalid user ID or password" in str(error) and "[store] user (provisioner)" in str(
        error)


async def test_plain_http_to_a_tls_etcd_is_refused_saying_it_expects_tls(
    tls_etcd: EtcdServer,
) -> None:
    error = await _refusal(EtcdStore([f"http://{tls_etcd.endpoint}"]))
    assert "probably expects TLS" in str(error) and "https://" in str(error)


async def test_tls_to_a_plain_etcd_is_refused_saying_it_does_not_speak_tls(
    etcd_server: EtcdServer, tls_etcd: EtcdServer
) -> None:
    assert tls_etcd.pki is not None
    security = EtcdSecurity.load(ca=str(tls_etcd.pki.ca))
    error = await _refusal(EtcdStore([etcd_server.endpoint], security=security))
    assert "does not speak TLS on this port" in str(error)


async def test_a_user_for_an_etcd_without_auth_is_refused(
    etcd_server: EtcdServer, password_file: Path
) -> None:
    security = EtcdSecurity.load(user=USER, password_file=str(password_file))
    error = await _refusal(EtcdStore([etcd_server.endpoint], security=security))
    assert "authentication disabled" in str(error) and "etcdctl auth enable" in str(error)


def test_the_cli_says_what_failed_in_one_line(tmp_path: Path, tls_etcd: EtcdServer,
                                              password_file: Path) -> None:
    assert tls_etcd.pki is not None
    good = _good(tls_etcd, password_file)
    env = {"PROVISIONER_STORE_BACKEND": "etcd", "PROVISIONER_STORE_ENDPOINTS": tls_etcd.endpoint,
           **{f"PROVISIONER_STORE_{k.upper()}": v for k, v in good.items()}}
    cli = Cli(tmp_path, env=env)
    assert "etcd" in cli("store", "status")
    cli.env["PROVISIONER_STORE_CA"] = str(tls_etcd.pki.other_ca)
    line = cli("store", "status", code=StoreUnavailable.exit_code)
    assert "server certificate is not trusted" in line


# -- the settings and their files ------------------------------------------------------------

def test_a_key_or_password_file_others_can_read_is_refused(
    tls_etcd: EtcdServer, password_file: Path
) -> None:
    password_file.chmod(0o644)
    with pytest.raises(ConfigError, match=r"password_file .* accessible by group or others "
                                          r"\(mode 644\); run `chmod 600"):
        _security(tls_etcd, password_file)
    password_file.chmod(0o600)
    assert tls_etcd.pki is not None
    key = tls_etcd.pki.client_key
    key.chmod(0o640)
    try:
        with pytest.raises(ConfigError, match=r"\[store\] key .* \(mode 640\)"):
            _security(tls_etcd, password_file)
    finally:
        key.chmod(0o600)


def test_missing_files_and_lone_settings_are_config_errors(tmp_path: Path,
                                                           tls_etcd: EtcdServer) -> None:
    with pytest.raises(ConfigError, match=r"\[store\] ca /nonexistent/ca.pem does not exist"):
        EtcdSecurity.load(ca="/nonexistent/ca.pem")
    with pytest.raises(ConfigError, match=r"password_file .* does not exist"):
        EtcdSecurity.load(user="u", password_file=str(tmp_path / "none"))
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        EtcdSecurity.load(ca=str(not_pem))
    cases = {"cert": "store.cert and store.key go together",
             "user": "needs store.password_file",
             "password": "needs store.user"}
    for key, message in cases.items():
        config = _store_settings(tmp_path, tls_etcd, **{key: "x"})
        with pytest.raises(ConfigError, match=message):
            load_settings(config, env={})


def test_endpoint_schemes_and_tls_settings_must_agree(tls_etcd: EtcdServer) -> None:
    assert tls_etcd.pki is not None
    security = EtcdSecurity.load(ca=str(tls_etcd.pki.ca))
    with pytest.raises(ValidationError, match="http:// endpoints with \\[store\\] ca or cert set"):
        EtcdStore([f"http://{tls_etcd.endpoint}"], security=security)
    with pytest.raises(ValidationError, match="mixes http:// and https://"):
        EtcdStore(["http://a:1", "https://b:2"])
