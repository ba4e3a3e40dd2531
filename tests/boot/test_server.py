"""The boot-plane HTTP server against real clients: curl (a subprocess), httpx, and raw sockets.

The server runs in the test's own event loop on 127.0.0.1, port 0; clients that are processes
(curl) are awaited with asyncio subprocesses so that the loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from provisioner.boot.httpcore import HttpRequest
from provisioner.boot.server import BootHttpServer, Reply

IMAGE = "/boot/images/rocky/9.4/image.cpio.xz"
SECRET = b"root:x:0:0:do-not-serve-me\n"
CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is needed (Debian package curl)")


@dataclass
class Images:
    root: Path
    image: bytes
    kernel: bytes
    extra: Path

    @property
    def image_sha(self) -> str:
        return hashlib.sha256(self.image).hexdigest()


@dataclass
class Boot:
    server: BootHttpServer
    url: str
    images: Images

    @property
    def port(self) -> int:
        return self.server.address[1]


@pytest.fixture
def images(tmp_path: Path) -> Images:
    root = tmp_path / "images"
    version = root / "rocky" / "9.4"
    version.mkdir(parents=True)
    image, kernel = os.urandom(3 * 1024 * 1024 + 17), os.urandom(64 * 1024)
    (version / "image.cpio.xz").write_bytes(image)
    (version / "vmlinuz").write_bytes(kernel)
    older = root / "rocky" / "9.3"  # a version whose manifest does not list its kernel
    older.mkdir()
    extra = older / "vmlinuz"
    extra.write_bytes(b"extra\n")
    manifest = {"files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                          for name, data in (("image.cpio.xz", image), ("vmlinuz", kernel))}}
    (version / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (version / "passwd").symlink_to("/etc/passwd")
    (version / "secret").symlink_to(tmp_path / "secret.txt")
    (version / "subdir").mkdir()
    return Images(root, image, kernel, extra)


async def render_ipxe(request: HttpRequest, client: str) -> Reply:
    name = request.path.removeprefix("/boot/ipxe/")
    if name != "menu.ipxe":
        return Reply(b"no such script\n", status=404)
    return Reply(f"#!ipxe\necho hello {client}\n".encode())


@pytest.fixture
async def boot(images: Images) -> AsyncIterator[Boot]:
    server = BootHttpServer(images.root)
    server.route("/boot/ipxe/", render_ipxe)
    await server.start("127.0.0.1", 0)
    try:
        yield Boot(server, f"http://127.0.0.1:{server.address[1]}", images)
    finally:
        await server.close()


@pytest.fixture
async def client(boot: Boot) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=boot.url, trust_env=False, timeout=10) as http:
        yield http


@dataclass
class CurlResult:
    status: int
    headers: dict[str, str]
    body: bytes


async def curl(url: str, *args: str, tmp: Path) -> CurlResult:
    """Run curl (bounded to 10 s), return the last response's status, headers and body."""
    assert CURL is not None
    out = tmp / f"curl-{os.urandom(4).hex()}"
    proc = await asyncio.create_subprocess_exec(
        CURL, "-sS", "--noproxy", "*", "--max-time", "10", "-D", "-", "-o", str(out), *args, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, stderr.decode()
    blocks = [b for b in stdout.decode("latin-1").split("\r\n\r\n") if b.strip()]
    lines = blocks[-1].split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = out.read_bytes() if out.exists() else b""
    return CurlResult(int(lines[0].split()[1]), headers, body)


async def raw(boot: Boot, data: bytes, *, read_timeout: float = 5) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", boot.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), read_timeout)
    finally:
        writer.close()
        await writer.wait_closed()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


# -- whole files, HEAD -------------------------------------------------------------------------


async def test_get_full_with_curl(boot: Boot, tmp_path: Path) -> None:
    got = await curl(boot.url + IMAGE, tmp=tmp_path)
    assert got.status == 200
    assert int(got.headers["content-length"]) == len(boot.images.image)
    assert hashlib.sha256(got.body).hexdigest() == boot.images.image_sha
    assert got.headers["etag"] == f'"{boot.images.image_sha}"'
    assert got.headers["accept-ranges"] == "bytes"
    assert got.headers["content-type"] == "application/octet-stream"


async def test_get_full_with_httpx(boot: Boot, client: httpx.AsyncClient) -> None:
    response = await client.get("/boot/images/rocky/9.4/vmlinuz")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(boot.images.kernel))
    assert response.content == boot.images.kernel


async def test_head_has_headers_and_no_body(boot: Boot, client: httpx.AsyncClient,
                                            tmp_path: Path) -> None:
    response = await client.head(IMAGE)
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(boot.images.image))
    assert response.headers["etag"] == f'"{boot.images.image_sha}"'
    assert response.content == b""
    got = await curl(boot.url + IMAGE, "-I", tmp=tmp_path)
    assert got.status == 200
    assert got.headers["content-length"] == str(len(boot.images.image))
    # On the wire: the head and nothing after it, even though the connection stays open.
    answer = await raw(boot, f"HEAD {IMAGE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                       .encode())
    assert answer.endswith(b"\r\n\r\n")
    assert status_of(answer) == 200
    assert boot.server.counters["bytes"] == 0  # HEAD sends no file


# -- ranges ----------------------------------------------------------------------------------


async def test_single_range(boot: Boot, tmp_path: Path) -> None:
    size = len(boot.images.image)
    got = await curl(boot.url + IMAGE, "-r", "100-199", tmp=tmp_path)
    assert got.status == 206
    assert got.headers["content-range"] == f"bytes 100-199/{size}"
    assert got.headers["content-length"] == "100"
    assert got.body == boot.images.image[100:200]


async def test_suffix_and_open_ranges(boot: Boot, client: httpx.AsyncClient) -> None:
    size = len(boot.images.image)
    response = await client.get(IMAGE, headers={"Range": "bytes=-500"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {size - 500}-{size - 1}/{size}"
    assert response.content == boot.images.image[-500:]
    response = await client.get(IMAGE, headers={"Range": f"bytes={size - 10}-"})
    assert response.status_code == 206
    assert response.content == boot.images.image[-10:]
    response = await client.get(IMAGE, headers={"Range": f"bytes=0-{size * 2}"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 0-{size - 1}/{size}"
    assert len(response.content) == size


@pytest.mark.parametrize("range_header", [
    "bytes={size}-",  # starts at the end
    "bytes=" + ",".join(["0-0"] * 100),  # far more ranges than anyone needs
    "bytes=abc",  # malformed
    "bytes=5-2",
    "bytes=-0",
    "bytes=" + "9" * 5000 + "-",  # more digits than int() takes
])
async def test_range_refused(boot: Boot, client: httpx.AsyncClient, range_header: str) -> None:
    size = len(boot.images.image)
    response = await client.get(IMAGE, headers={"Range": range_header.format(size=size)})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{size}"
    assert len(response.content) < 200
    assert boot.server.counters["range_refused"] == 1
    assert boot.server.counters["bytes"] == 0


async def test_three_ranges_get_the_whole_file(boot: Boot, tmp_path: Path) -> None:
    got = await curl(boot.url + IMAGE, "-r", "0-9,20-29,40-49", tmp=tmp_path)
    assert got.status == 200
    assert "content-range" not in got.headers
    assert hashlib.sha256(got.body).hexdigest() == boot.images.image_sha


async def test_unknown_range_unit_is_ignored(client: httpx.AsyncClient, boot: Boot) -> None:
    response = await client.get("/boot/images/rocky/9.4/vmlinuz",
                                headers={"Range": "items=0-1"})
    assert response.status_code == 200
    assert response.content == boot.images.kernel


# -- validators --------------------------------------------------------------------------------


async def test_if_none_match_with_manifest_etag(boot: Boot, client: httpx.AsyncClient,
                                                tmp_path: Path) -> None:
    etag = f'"{boot.images.image_sha}"'
    response = await client.get(IMAGE, headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert response.headers["etag"] == etag
    assert response.content == b""
    response = await client.get(IMAGE, headers={"If-None-Match": f'"nope", W/{etag}'})
    assert response.status_code == 304
    got = await curl(boot.url + IMAGE, "-H", f"If-None-Match: {etag}", tmp=tmp_path)
    assert got.status == 304
    assert got.body == b""
    response = await client.get(IMAGE, headers={"If-None-Match": '"something-else"'})
    assert response.status_code == 200
    assert len(response.content) == len(boot.images.image)
    assert boot.server.counters["bytes"] == len(boot.images.image)


async def test_if_range(boot: Boot, client: httpx.AsyncClient) -> None:
    etag = f'"{boot.images.image_sha}"'
    response = await client.get(IMAGE, headers={"Range": "bytes=0-9", "If-Range": '"older"'})
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == boot.images.image_sha
    response = await client.get(IMAGE, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert response.status_code == 206
    assert response.content == boot.images.image[:10]


async def test_etag_falls_back_without_manifest_entry(boot: Boot,
                                                      client: httpx.AsyncClient) -> None:
    info = boot.images.extra.stat()
    response = await client.get("/boot/images/rocky/9.3/vmlinuz")
    assert response.status_code == 200
    assert response.content == b"extra\n"
    assert response.headers["etag"] == f'"{info.st_size:x}-{info.st_mtime_ns:x}"'
    # and a manifest that is not JSON changes nothing but the ETag's source
    (boot.images.root / "rocky" / "9.4" / "manifest.json").write_text("{not json")
    response = await client.head("/boot/images/rocky/9.4/vmlinuz")
    assert response.status_code == 200
    assert response.headers["etag"].startswith(f'"{len(boot.images.kernel):x}-')


# -- confinement -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/boot/images/../secret.txt",
    "/boot/images/rocky/9.4/../../../secret.txt",
    "/boot/images/rocky/../../secret.txt",
    "/boot/images/%2e%2e/%2e%2e/secret.txt",
    "/boot/images/rocky/9.4/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
    "/boot/images/rocky/%2E%2E/..%2fsecret.txt",
    "/boot/images/rocky/9.4/passwd",  # symlink to /etc/passwd
    "/boot/images/rocky/9.4/secret",  # symlink out of the image directory
    "/boot/images/rocky/9.4/subdir",  # a directory
    "/boot/images/rocky/9.4/",
    "/boot/images/rocky/9.4/.hidden",
    "/boot/images/rocky/9.4/manifest.json/x",
    "/boot/images//etc/passwd",
    "/boot/images/rocky/9.4/nonexistent",
    "/boot/elsewhere",
    "/",
])
async def test_paths_outside_the_images_are_404(boot: Boot, tmp_path: Path, path: str) -> None:
    got = await curl(boot.url + path, "--path-as-is", tmp=tmp_path)
    assert got.status == 404
    assert b"root:" not in got.body
    assert len(got.body) < 300
    assert boot.server.counters["files"] == 0
    assert boot.server.counters["not_found"] == 1


@pytest.mark.parametrize("path", ["/boot/images/rocky/9.4/image.cpio.xz%00",
                                  "/boot/images/rocky/9.4/%ff", "/boot/%0d%0a"])
async def test_undecodable_paths_are_400(boot: Boot, path: str) -> None:
    answer = await raw(boot, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status_of(answer) == 400
    assert boot.server.counters["http_400"] == 1


# -- refusals ----------------------------------------------------------------------------------


async def test_post_is_405_with_allow(boot: Boot, client: httpx.AsyncClient,
                                      tmp_path: Path) -> None:
    response = await client.request("POST", IMAGE)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    got = await curl(boot.url + IMAGE, "-X", "DELETE", tmp=tmp_path)
    assert got.status == 405
    assert got.headers["allow"] == "GET, HEAD"


async def test_request_body_is_413(boot: Boot) -> None:
    answer = await raw(boot, f"GET {IMAGE} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
                       "hello".encode())
    assert status_of(answer) == 413
    assert b"Connection: close" in answer
    answer = await raw(boot, b"PUT /boot/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert status_of(answer) == 413
    assert boot.server.counters["http_413"] == 2
    assert boot.server.counters["bytes"] == 0


async def test_huge_header_is_431(boot: Boot, tmp_path: Path) -> None:
    got = await curl(boot.url + IMAGE, "-H", "X-Big: " + "a" * 9 * 1024, tmp=tmp_path)
    assert got.status == 431
    answer = await raw(boot, b"GET / HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 70 + b"\r\n")
    assert status_of(answer) == 431
    assert boot.server.counters["http_431"] == 2


async def test_garbage_is_400_and_the_server_carries_on(boot: Boot,
                                                        client: httpx.AsyncClient) -> None:
    answer = await raw(boot, os.urandom(512).replace(b"\r\n\r\n", b"") + b"\x00\xff\r\n\r\n")
    assert status_of(answer) == 400
    answer = await raw(boot, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")  # TLS
    assert status_of(answer) == 400
    answer = await raw(boot, b"GET / HTTP/2.0\r\n\r\n")
    assert status_of(answer) == 505
    # half a request, then the client goes away: nothing to answer, nothing breaks
    _, writer = await asyncio.open_connection("127.0.0.1", boot.port)
    writer.write(b"GET /boot/images/rocky/9.4/vmlinuz HTTP/1.1\r\nHo")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    response = await client.get("/boot/images/rocky/9.4/vmlinuz")
    assert response.status_code == 200
    assert response.content == boot.images.kernel
    assert boot.server.counters["http_400"] == 2
    assert boot.server.counters["http_505"] == 1


# -- connections -------------------------------------------------------------------------------


async def test_keep_alive_reuses_the_connection(boot: Boot, client: httpx.AsyncClient) -> None:
    ports = []
    for path in (IMAGE, "/boot/images/rocky/9.4/vmlinuz", "/boot/ipxe/menu.ipxe"):
        response = await client.get(path)
        assert response.status_code == 200
        ports.append(response.extensions["network_stream"].get_extra_info("client_addr")[1])
    assert len(set(ports)) == 1, ports
    assert response.headers["connection"] == "keep-alive"


async def test_pipelined_requests_and_http10_close(boot: Boot) -> None:
    one = b"GET /boot/images/rocky/9.3/vmlinuz HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /boot/images/rocky/9.3/vmlinuz HTTP/1.0\r\n\r\n"
    answer = await raw(boot, one + one + last)  # the 1.0 request without keep-alive closes
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert answer.count(b"\r\n\r\nextra\n") == 3
    assert answer.endswith(b"Connection: close\r\n\r\nextra\n")


async def test_route_handler_reply(boot: Boot, client: httpx.AsyncClient,
                                   tmp_path: Path) -> None:
    response = await client.get("/boot/ipxe/menu.ipxe")
    assert response.status_code == 200
    assert response.text == "#!ipxe\necho hello 127.0.0.1\n"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["content-length"] == str(len(response.content))
    head = await client.head("/boot/ipxe/menu.ipxe")
    assert head.status_code == 200
    assert head.content == b""
    got = await curl(boot.url + "/boot/ipxe/other.ipxe", tmp=tmp_path)
    assert got.status == 404
    assert got.body == b"no such script\n"


async def test_counters(boot: Boot, client: httpx.AsyncClient) -> None:
    size = len(boot.images.image)
    await client.get(IMAGE)  # 1 file, size bytes
    await client.get(IMAGE, headers={"Range": "bytes=0-99"})  # 1 file, 100 bytes
    await client.head(IMAGE)  # 1 file, no bytes
    await client.get(IMAGE, headers={"Range": "bytes=abc"})  # refused
    await client.get("/boot/images/rocky/9.4/passwd")  # not found
    await client.get("/boot/ipxe/menu.ipxe")  # rendered
    await raw(boot, b"nonsense\r\n\r\n")  # 400, not counted as a request
    assert dict(boot.server.counters) == {
        "requests": 6, "files": 3, "bytes": size + 100, "range_refused": 1, "not_found": 1,
        "http_400": 1}
