"""Malformed and made-up TFTP requests against the real server's port 69: random bytes, valid
requests with bytes changed, cut or added, and requests built from drawn file names, modes and
options (RFC 2347-2349, 7440 with any value). Each is waited for until the server has counted
it; what `screen_request` refuses must be counted as rejected. Then a read request from another
address transfers the whole file."""

from __future__ import annotations

import socket
import struct
import time
from collections import Counter

import pytest
from hypothesis import strategies as st

from provisioner.tftp.screening import Accepted, screen_request
from tests.fuzz.bed import (
    FUZZER,
    SERVER,
    SIZES,
    TFTP_FILE,
    TFTP_PORT,
    FuzzBed,
    mutated,
    run_examples,
)

pytestmark = pytest.mark.netns
WAIT = 10.0
#: datagrams sent before waiting until the server has counted them: 20 of at most 1500
#: bytes stay well within a socket's receive buffer, so the kernel drops none of them
BATCH = 20
READER = "127.0.0.5"  # the good client: not the fuzzer, whose transfers are capped per client
OPTION_NAMES = ["blksize", "tsize", "timeout", "windowsize", "BLKSIZE", "", "x" * 600]


def _request(opcode: int, name: bytes, mode: bytes, options: list[tuple[bytes, bytes]]) -> bytes:
    body = name + b"\0" + mode + b"\0" + b"".join(k + b"\0" + v + b"\0" for k, v in options)
    return struct.pack("!H", opcode) + body


SEEDS = [
    _request(1, TFTP_FILE.encode(), b"octet", []),
    _request(1, TFTP_FILE.encode(), b"octet", [(b"blksize", b"1428"), (b"tsize", b"0")]),
    _request(1, b"/" + TFTP_FILE.encode(), b"netascii", [(b"windowsize", b"16")]),
    _request(2, b"upload.bin", b"octet", []),
    struct.pack("!HH", 4, 1),
    struct.pack("!HH", 5, 0) + b"error\0",
]
TEXT = st.binary(max_size=40) | st.sampled_from([b"0", b"8", b"65464", b"99999999999", b"-1"])


@st.composite
def built(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from([TFTP_FILE.encode(), b"../etc/passwd", b"", b"a/../" +
                                 TFTP_FILE.encode(), b"missing"]) | st.binary(max_size=80))
    mode = draw(st.sampled_from([b"octet", b"netascii", b"mail", b"OCTET"]) |
                st.binary(max_size=12))
    options = draw(st.lists(st.tuples(st.sampled_from(OPTION_NAMES).map(str.encode) |
                                      st.binary(max_size=20), TEXT), max_size=6))
    return _request(draw(st.sampled_from([1, 1, 1, 2]) | st.integers(0, 0xFFFF)), name, mode,
                    options)


DATAGRAMS = st.one_of(st.binary(max_size=1500), mutated(SEEDS, changes=4, tail=16),
                      built())


def _rejected(counters: dict[str, int]) -> Counter[str]:
    return Counter({k: v for k, v in counters.items() if k.startswith("rejected:")})


def _read_file(name: str) -> bytes:
    """A plain RFC 1350 read with blksize 1024 (RFC 2348): OACK, then DATA blocks."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind((READER, 0))
        client.settimeout(WAIT)
        client.sendto(_request(1, name.encode(), b"octet", [(b"blksize", b"1024")]),
                      (SERVER, TFTP_PORT))
        received, block = bytearray(), 0
        while True:
            data, peer = client.recvfrom(2000)
            opcode, number = struct.unpack("!HH", data[:4])
            assert opcode in (3, 6), f"unexpected reply {data[:80]!r}"
            if opcode == 6:  # OACK: acknowledge with block 0 (RFC 2347)
                client.sendto(struct.pack("!HH", 4, 0), peer)
                continue
            if number == (block + 1) & 0xFFFF:
                received += data[4:]
                block += 1
            client.sendto(struct.pack("!HH", 4, number), peer)
            if number == block and len(data) - 4 < 1024:
                return bytes(received)


@pytest.mark.parametrize("count", SIZES)
def test_malformed_requests_are_refused_and_counted_and_a_read_still_transfers(
        bed: FuzzBed, count: int) -> None:
    counters = bed.counters("tftp")
    requests, rejected = counters.get("requests", 0), _rejected(counters)
    sent = {"requests": 0, "refused": 0}
    sender = bed.inside(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    bed.inside(lambda: sender.bind((FUZZER, 0)))

    def check(data: bytes) -> None:
        sent["requests"] += 1
        sent["refused"] += not isinstance(screen_request(data), Accepted)
        sender.sendto(data, (SERVER, TFTP_PORT))
        if sent["requests"] % BATCH == 0:
            counted(requests + sent["requests"])

    def counted(expected: int) -> None:
        deadline = time.monotonic() + WAIT
        while bed.counters("tftp").get("requests", 0) < expected:
            assert time.monotonic() < deadline, "a request was not counted"
            time.sleep(0.001)

    try:
        run_examples(bed, DATAGRAMS, check, count)
    finally:
        sender.close()
    counted(requests + sent["requests"])
    counters = bed.counters("tftp")
    assert counters["requests"] == requests + sent["requests"]
    refused = sum((_rejected(counters) - rejected).values())
    assert refused >= sent["refused"] > count // 10, (refused, sent)
    assert bed.inside(lambda: _read_file(TFTP_FILE)) == bed.tftp_payload
    bed.healthy()
