"""Real TFTP clients against `provisioner serve` across a veth between two network namespaces.

tftp-hpa's `tftp` (lock-step, 512-byte blocks, no options), atftp (blksize 1468 and RFC 7440
windowsize 8) and tftpy (blksize 1468) fetch a 4 MiB random file and the sha256 must match;
traversal, symlinks out of the root, missing files, uploads and malformed datagrams get the
right ERROR and leave the server serving; the fetch is recorded as a `tftp_served` event on the
node whose reserved IP is the client's. Fixtures: tests/tftp/conftest.py (`tftp_lab`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from typing import Any

import pytest

from provisioner.inventory.repository import Inventory
from provisioner.nodes.model import BootEvent, MacAddress
from provisioner.store.sqlite import SqliteStore
from tests.tftp.conftest import BIG_SIZE, MAC, OpenWatch, TftpLab, rrq, sha256_file

pytestmark = pytest.mark.netns

OP_DATA, OP_ERROR, OP_OACK = 3, 5, 6

# tftpy client, run with a Python that has tftpy inside the client namespace. It records the
# size of every DATA payload and the OACK's options through packethook.
TFTPY_CLIENT = r"""
import json, logging, sys
import tftpy
logging.getLogger("tftpy").setLevel(logging.ERROR)
host, name, out, blksize = sys.argv[1:5]
sizes, oack = [], {}
def hook(pkt):
    if hasattr(pkt, "data"):
        sizes.append(len(pkt.data))
    else:
        oack.update({k: str(v) for k, v in pkt.options.items()})
client = tftpy.TftpClient(host, 69, options={"blksize": int(blksize)})
client.download(name, out, packethook=hook, timeout=5)
print(json.dumps({"blocks": len(sizes), "max": max(sizes), "oack": oack}))
"""


def _opcode(reply: dict[str, Any] | None) -> int | None:
    return None if reply is None else int(reply["hex"][:4], 16)


def _error_code(reply: dict[str, Any] | None) -> int | None:
    if reply is None or _opcode(reply) != OP_ERROR:
        return None
    return int(reply["hex"][4:8], 16)


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}{result.stderr}"


def _tftpy_python() -> str | None:
    if importlib.util.find_spec("tftpy") is not None:
        return sys.executable
    other = os.environ.get("PROVISIONER_TEST_TFTPY_PYTHON")
    return other if other and shutil.which(other) else None


def test_tftp_hpa_binary_fetch(tftp_lab: TftpLab) -> None:
    out = tftp_lab.fresh_output("hpa.bin")
    result = tftp_lab.tftp_hpa(f"get big.bin {out}", "-v", timeout=60)
    assert out.exists(), _output(result)
    assert sha256_file(out) == tftp_lab.big_sha256, _output(result)
    # verbose mode reports the byte count it received
    assert re.search(rf"Received {BIG_SIZE} bytes", result.stdout + result.stderr), \
        _output(result)


def test_tftp_hpa_nested_path_and_leading_slash(tftp_lab: TftpLab) -> None:
    for remote in ("sub/nested.txt", "/sub/nested.txt", "sub//./nested.txt"):
        out = tftp_lab.fresh_output("nested.txt")
        result = tftp_lab.tftp_hpa(f"get {remote} {out}")
        assert out.exists() and out.read_bytes() == b"nested\n", f"{remote}: {_output(result)}"


def test_atftp_blksize_1468_windowsize_8(tftp_lab: TftpLab) -> None:
    out = tftp_lab.fresh_output("atftp.bin")
    result = tftp_lab.client(["atftp", "--trace", "--option", "blksize 1468",
                              "--option", "windowsize 8", "--get", "-r", "big.bin",
                              "-l", str(out), tftp_lab.server_ip, "69"], timeout=60)
    assert result.returncode == 0, _output(result)[-3000:]
    assert sha256_file(out) == tftp_lab.big_sha256
    trace = result.stdout + result.stderr
    oack = re.search(r"received OACK <([^>]*)>", trace)
    assert oack, trace[:3000]
    accepted = dict(re.findall(r"(\w+)[:=]\s*(\d+)", oack.group(1)))
    assert accepted.get("blksize") == "1468" and accepted.get("windowsize") == "8", oack.group(0)
    # atftp acknowledges once per window: with 4 MiB / 1468 = 2858 blocks, about 358 ACKs
    acks = len(re.findall(r"sent ACK", trace))
    assert 0 < acks < 2858 // 4, f"{acks} ACKs for a window of 8"


def test_atftp_concurrent_windowed_fetches(tftp_lab: TftpLab) -> None:
    outs = [tftp_lab.fresh_output(f"conc{i}.bin") for i in range(4)]
    results: list[subprocess.CompletedProcess[str] | None] = [None] * len(outs)

    def fetch(i: int) -> None:
        results[i] = tftp_lab.client(["atftp", "--option", "blksize 1468", "--option",
                                      "windowsize 16", "--get", "-r", "big.bin", "-l",
                                      str(outs[i]), tftp_lab.server_ip, "69"], timeout=60)

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(len(outs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    for out, result in zip(outs, results, strict=True):
        assert result is not None and result.returncode == 0, \
            _output(result) if result else "no result"
        assert sha256_file(out) == tftp_lab.big_sha256


def test_tftpy_client_blksize_1468(tftp_lab: TftpLab) -> None:
    python = _tftpy_python()
    if python is None:
        pytest.skip("tftpy is not installed (pip install tftpy, or set "
                    "PROVISIONER_TEST_TFTPY_PYTHON to a Python that has it)")
    out = tftp_lab.fresh_output("tftpy.bin")
    result = tftp_lab.client([python, "-c", TFTPY_CLIENT, tftp_lab.server_ip, "big.bin",
                              str(out), "1468"], timeout=60)
    assert result.returncode == 0, _output(result)[-3000:]
    assert sha256_file(out) == tftp_lab.big_sha256
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    assert stats["oack"] == {"blksize": "1468"}, stats
    assert stats["max"] == 1468 and stats["blocks"] == BIG_SIZE // 1468 + 1, stats


def test_traversal_and_outside_symlinks_get_error_2(tftp_lab: TftpLab) -> None:
    watch = OpenWatch(tftp_lab.outside)
    try:
        for remote in ("../outside/secret", "escape", "escape-rel", "linkdir/secret"):
            out = tftp_lab.fresh_output("refused.txt")
            result = tftp_lab.tftp_hpa(f"get {remote} {out}")
            assert "Error code 2" in result.stdout + result.stderr, f"{remote}: {_output(result)}"
            assert not out.exists() or out.read_bytes() == b"", remote
        names = [b"../outside/secret", b"sub/../../outside/secret", b"..\\outside\\secret",
                 b"/../outside/secret", b"escape", b"escape-rel", b"linkdir/secret",
                 b"sub/\x01secret", str(tftp_lab.outside / "secret").encode()]
        replies = tftp_lab.probe(*(rrq(name) for name in names))
        for name, reply in zip(names, replies, strict=True):
            # an absolute path is taken relative to the root: not there, so ERROR 1
            expected = {1} if name.startswith(str(tftp_lab.outside).encode()) else {2}
            assert _error_code(reply) in expected, (name, reply)
        opened = watch.events()
    finally:
        watch.close()
    assert opened == [], f"something outside the root was opened or read: {opened}"
    tftp_lab.alive()


def test_missing_file_gets_error_1(tftp_lab: TftpLab) -> None:
    out = tftp_lab.fresh_output("missing.bin")
    result = tftp_lab.tftp_hpa(f"get no-such-file.bin {out}")
    assert "Error code 1" in result.stdout + result.stderr, _output(result)
    replies = tftp_lab.probe(rrq(b"no-such-file.bin"), rrq(b"sub"), rrq(b"sub/nope"))
    assert [_error_code(r) for r in replies] == [1, 1, 1], replies


def test_write_request_is_refused(tftp_lab: TftpLab) -> None:
    local = tftp_lab.scratch / "upload.txt"
    local.write_bytes(b"should never land on the server\n")
    result = tftp_lab.tftp_hpa(f"put {local} uploaded.txt")
    assert "Error code 2" in result.stdout + result.stderr, _output(result)
    wrq = b"\x00\x02small.txt\x00octet\x00"
    assert [_error_code(r) for r in tftp_lab.probe(wrq)] == [2]
    assert not (tftp_lab.root / "uploaded.txt").exists()
    assert (tftp_lab.root / "small.txt").read_bytes() == b"hello from the TFTP root\n"


def test_malformed_datagrams_then_good_fetch(tftp_lab: TftpLab) -> None:
    garbage = [
        b"",                                   # zero-length
        os.urandom(64),                        # garbage
        b"\x00\x01small.txt",                  # RRQ without the NUL after the filename
        b"\x00\x01small.txt\x00octet",         # RRQ without the NUL after the mode
        b"\x00\x01small.txt\x00nonsense\x00",  # unknown mode
        b"\x00\x01\xff\xfe\x00octet\x00",      # non-ASCII filename (killed tftpy's server)
        b"\x00\x03\x00\x01data",               # DATA to the server port
        b"\x00\x04\x00\x01",                   # ACK to the server port
        b"\x00\x09",                           # unknown opcode
        b"\x00\x01" + b"a" * 600 + b"\x00octet\x00",  # oversized name
    ]
    replies = tftp_lab.probe(*garbage, timeout=0.5)
    for datagram, reply in zip(garbage, replies, strict=True):
        assert reply is None or _opcode(reply) == OP_ERROR, (datagram[:20], reply)
    tftp_lab.alive()

    # Options that are out of range or not plain ASCII digits are left out of the OACK: with no
    # option left the transfer starts with DATA 1 at 512 bytes, otherwise the OACK lacks them.
    odd = [rrq(b"small.txt", blksize=b"abc"), rrq(b"small.txt", blksize=b"0"),
           rrq(b"small.txt", blksize=b"99999999999999999999"),
           rrq(b"small.txt", blksize=b"\xd9\xa1\xd9\xa4"),  # Arabic-Indic digits
           rrq(b"small.txt", blksize=b"abc", tsize=b"0")]
    replies = tftp_lab.probe(*odd)
    for reply in replies[:4]:
        assert _opcode(reply) == OP_DATA, reply
        assert reply is not None and bytes.fromhex(reply["hex"])[4:] == \
            b"hello from the TFTP root\n"
    last = replies[4]
    assert _opcode(last) == OP_OACK, last
    assert last is not None and bytes.fromhex(last["hex"])[2:] == b"tsize\x0025\x00", last
    tftp_lab.alive()

    out = tftp_lab.fresh_output("after-garbage.bin")
    result = tftp_lab.client(["atftp", "--option", "blksize 1468", "--get", "-r", "big.bin",
                              "-l", str(out), tftp_lab.server_ip, "69"], timeout=60)
    assert result.returncode == 0, _output(result)
    assert sha256_file(out) == tftp_lab.big_sha256


def test_unknown_tid_gets_error_5(tftp_lab: TftpLab) -> None:
    # A datagram to a transfer socket from another port: ERROR 5 to the stranger only.
    script = r"""
import socket, struct, sys
server = sys.argv[1]
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.settimeout(2)
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.settimeout(2)
a.sendto(b"\x00\x01big.bin\x00octet\x00", (server, 69))
data, addr = a.recvfrom(2000)
b.sendto(b"\x00\x04\x00\x01", addr)
reply, _ = b.recvfrom(2000)
a.sendto(b"\x00\x05\x00\x00done\x00", addr)
print(data[:4].hex(), reply[:4].hex())
"""
    result = tftp_lab.client([sys.executable, "-c", script, tftp_lab.server_ip])
    assert result.returncode == 0, _output(result)
    assert result.stdout.split() == ["00030001", "00050005"], result.stdout


async def test_fetch_is_recorded_as_tftp_served_event(tftp_lab: TftpLab) -> None:
    out = tftp_lab.fresh_output("event.bin")
    result = tftp_lab.client(["atftp", "--option", "blksize 1468", "--option", "windowsize 4",
                              "--get", "-r", "big.bin", "-l", str(out), tftp_lab.server_ip,
                              "69"], timeout=60)
    assert result.returncode == 0, _output(result)
    store = SqliteStore(tftp_lab.data_dir / "store.db")
    try:
        inventory = Inventory(store)
        served: list[BootEvent] = []
        for _ in range(50):  # the server records the event just after the last ACK
            events = await inventory.list_events(MacAddress(MAC))
            served = [e for e in events if e.kind == "tftp_served"
                      and e.detail.get("file") == "big.bin"
                      and e.detail.get("bytes") == BIG_SIZE]
            if served:
                break
            await asyncio.sleep(0.1)
        assert served, f"no tftp_served event with {BIG_SIZE} bytes: {events}\n{tftp_lab.log()}"
        detail = served[-1].detail
        assert detail["duration"] > 0 and detail["retransmits"] >= 0, detail
        kinds = {e.kind for e in events}
        assert kinds <= {"tftp_served", "tftp_failed"}, kinds
    finally:
        await store.close()


def test_server_still_up_and_log_clean(tftp_lab: TftpLab) -> None:
    tftp_lab.alive()
    log = tftp_lab.log()
    assert "Traceback" not in log, log
