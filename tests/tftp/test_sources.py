"""sources.py against a real directory tree: what is served, what is refused, and that nothing
outside the root is ever opened (every os.open is recorded and checked)."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from provisioner.errors import NotFound
from provisioner.tftp.paths import ForbiddenPath
from provisioner.tftp.sources import BytesSource, FileSource, SourceResolver

CONTENT = bytes(range(256)) * 40 + b"tail"  # 10244 bytes


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """root/ with boot.bin, sub/nested.bin and an empty directory; outside/ next to it."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (root / "emptydir").mkdir()
    outside.mkdir()
    (root / "boot.bin").write_bytes(CONTENT)
    (root / "sub" / "nested.bin").write_bytes(b"nested")
    (outside / "secret").write_bytes(b"secret")
    return root, outside


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every path sources.py passes to os.open, in order."""
    seen: list[str] = []
    real_open: Callable[..., int] = os.open

    def recording_open(path: str | os.PathLike[str], flags: int, *args: int) -> int:
        seen.append(os.fspath(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", recording_open)  # the module sources.py uses
    yield seen


def assert_all_inside(opened: list[str], root: Path) -> None:
    real_root = root.resolve()
    for path in opened:
        assert Path(path).resolve().is_relative_to(real_root), f"opened {path} outside the root"


def test_regular_file_size_and_pread(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    source = SourceResolver(root).open(("boot.bin",), "10.0.0.2")
    try:
        assert isinstance(source, FileSource)
        assert source.size == len(CONTENT)
        assert source.read(0, 512) == CONTENT[:512]
        # pread at any offset, out of order, and short at the end of the file
        assert source.read(10000, 512) == CONTENT[10000:]
        assert source.read(512, 100) == CONTENT[512:612]
        assert source.read(len(CONTENT), 512) == b""
    finally:
        source.close()
    source.close()  # closing twice is harmless


def test_nested_file(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    source = SourceResolver(root).open(("sub", "nested.bin"), "10.0.0.2")
    try:
        assert source.read(0, 100) == b"nested"
    finally:
        source.close()


def test_missing_file_is_not_found(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    resolver = SourceResolver(root)
    with pytest.raises(NotFound):
        resolver.open(("nope.bin",), "10.0.0.2")
    with pytest.raises(NotFound):
        resolver.open(("nodir", "nope.bin"), "10.0.0.2")
    with pytest.raises(NotFound):  # a file used as a directory
        resolver.open(("boot.bin", "x"), "10.0.0.2")
    with pytest.raises(NotFound):
        resolver.open((), "10.0.0.2")


def test_directory_is_not_found(tree: tuple[Path, Path], opened: list[str]) -> None:
    root, _ = tree
    resolver = SourceResolver(root)
    for path in (("emptydir",), ("sub",)):
        with pytest.raises(NotFound):
            resolver.open(path, "10.0.0.2")
    assert opened == []


def test_symlink_inside_root_is_served(tree: tuple[Path, Path], opened: list[str]) -> None:
    root, _ = tree
    (root / "alias.bin").symlink_to("boot.bin")
    (root / "sub" / "up.bin").symlink_to("../boot.bin")
    (root / "abs.bin").symlink_to(root / "sub" / "nested.bin")
    (root / "subdir-link").symlink_to("sub")
    resolver = SourceResolver(root)
    for path, expected in ((("alias.bin",), CONTENT), (("sub", "up.bin"), CONTENT),
                           (("abs.bin",), b"nested"), (("subdir-link", "nested.bin"), b"nested")):
        source = resolver.open(path, "10.0.0.2")
        try:
            assert source.read(0, 1 << 16) == expected
        finally:
            source.close()
    assert_all_inside(opened, root)


@pytest.mark.parametrize("absolute", [True, False], ids=["absolute", "relative"])
def test_symlink_leading_outside_is_forbidden(tree: tuple[Path, Path], opened: list[str],
                                              absolute: bool) -> None:
    root, outside = tree
    target = outside / "secret" if absolute else Path("..") / "outside" / "secret"
    (root / "escape").symlink_to(target)
    (root / "sub" / "escape2").symlink_to(target if absolute else Path("..") / target)
    resolver = SourceResolver(root)
    for path in (("escape",), ("sub", "escape2")):
        with pytest.raises(ForbiddenPath) as info:
            resolver.open(path, "10.0.0.2")
        assert info.value.reason == "outside_root"
    assert opened == []


def test_symlink_to_missing_target_outside_is_not_opened(tree: tuple[Path, Path],
                                                          opened: list[str]) -> None:
    root, outside = tree
    (root / "dangling").symlink_to(outside / "does-not-exist")
    with pytest.raises((NotFound, ForbiddenPath)):
        SourceResolver(root).open(("dangling",), "10.0.0.2")
    assert opened == []


def test_symlink_loop_is_forbidden(tree: tuple[Path, Path], opened: list[str]) -> None:
    root, _ = tree
    (root / "loop-a").symlink_to("loop-b")
    (root / "loop-b").symlink_to("loop-a")
    (root / "self").symlink_to("self")
    resolver = SourceResolver(root)
    for path in (("loop-a",), ("self",), ("loop-a", "x")):
        with pytest.raises(ForbiddenPath):
            resolver.open(path, "10.0.0.2")
    assert opened == []


def test_file_under_symlinked_directory_outside(tree: tuple[Path, Path],
                                                opened: list[str]) -> None:
    root, outside = tree
    (root / "linkdir").symlink_to(outside)
    (root / "sub" / "reldir").symlink_to(Path("..") / ".." / "outside")
    resolver = SourceResolver(root)
    for path in (("linkdir", "secret"), ("sub", "reldir", "secret")):
        with pytest.raises(ForbiddenPath) as info:
            resolver.open(path, "10.0.0.2")
        assert info.value.reason == "outside_root"
    assert opened == []


def test_root_given_through_a_symlink(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    via = root.parent / "root-link"
    via.symlink_to(root)
    source = SourceResolver(via).open(("boot.bin",), "10.0.0.2")
    try:
        assert source.size == len(CONTENT)
    finally:
        source.close()


def _open_bounded(resolver: SourceResolver, path: tuple[str, ...],
                  unblock: Callable[[], None]) -> BaseException | None:
    """resolver.open in a thread, bounded to 5 s: a FIFO opened for reading would block."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            resolver.open(path, "10.0.0.2").close()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        unblock()
        thread.join(5)
        pytest.fail(f"opening {'/'.join(path)} blocked")
    return outcome[0]


def test_fifo_is_refused_without_blocking(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    fifo = root / "pipe"
    os.mkfifo(fifo)

    def unblock() -> None:  # a writer releases a reader stuck in open()
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)

    outcome = _open_bounded(SourceResolver(root), ("pipe",), unblock)
    assert isinstance(outcome, NotFound)


def test_fifo_behind_symlink_is_refused(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    os.mkfifo(root / "pipe")
    (root / "pipe-link").symlink_to("pipe")

    def unblock() -> None:
        os.close(os.open(root / "pipe", os.O_WRONLY | os.O_NONBLOCK))

    outcome = _open_bounded(SourceResolver(root), ("pipe-link",), unblock)
    assert isinstance(outcome, NotFound)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device needs root")
def test_device_node_is_refused_unopened(tree: tuple[Path, Path], opened: list[str]) -> None:
    root, _ = tree
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # like /dev/null
    with pytest.raises(NotFound):
        SourceResolver(root).open(("null",), "10.0.0.2")
    assert opened == []


def test_unix_socket_is_refused(tree: tuple[Path, Path]) -> None:
    import socket

    root, _ = tree
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(root / "sock"))
        with pytest.raises(NotFound):
            SourceResolver(root).open(("sock",), "10.0.0.2")
    finally:
        sock.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_forbidden(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "boot.bin").chmod(0)
    with pytest.raises(ForbiddenPath) as info:
        SourceResolver(root).open(("boot.bin",), "10.0.0.2")
    assert info.value.reason == "unreadable"


def test_providers_are_tried_before_files(tree: tuple[Path, Path], opened: list[str]) -> None:
    root, _ = tree
    calls: list[tuple[tuple[str, ...], str]] = []

    def decline(path: tuple[str, ...], client_ip: str) -> bytes | None:
        calls.append((path, client_ip))
        return None

    def per_client(path: tuple[str, ...], client_ip: str) -> bytes | None:
        if path in (("boot.bin",), ("01-aa-bb-cc-dd-ee-ff.ipxe",)):
            return f"#!ipxe\necho {client_ip}\n".encode()
        return None

    resolver = SourceResolver(root, [decline, per_client])
    source = resolver.open(("boot.bin",), "10.0.0.7")  # shadows the file of the same name
    assert isinstance(source, BytesSource)
    assert source.size == len(b"#!ipxe\necho 10.0.0.7\n")
    assert source.read(0, 7) == b"#!ipxe\n"
    assert source.read(7, 100) == b"echo 10.0.0.7\n"
    assert source.read(100, 100) == b""
    source.close()
    assert opened == []
    assert calls == [(("boot.bin",), "10.0.0.7")]

    rendered = resolver.open(("01-aa-bb-cc-dd-ee-ff.ipxe",), "10.0.0.8")
    assert rendered.read(0, 100).endswith(b"10.0.0.8\n")
    # a path no provider serves falls through to the root
    fallback = resolver.open(("sub", "nested.bin"), "10.0.0.7")
    try:
        assert isinstance(fallback, FileSource)
        assert fallback.read(0, 100) == b"nested"
    finally:
        fallback.close()
    with pytest.raises(NotFound):
        resolver.open(("nothing-here",), "10.0.0.7")


def test_provider_returning_empty_bytes_serves_an_empty_file(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    resolver = SourceResolver(root, [lambda path, ip: b""])
    source = resolver.open(("anything",), "10.0.0.2")
    assert source.size == 0
    assert source.read(0, 512) == b""


def test_file_sources_do_not_leak_descriptors(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    resolver = SourceResolver(root)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        resolver.open(("boot.bin",), "10.0.0.2").close()
        with pytest.raises(NotFound):
            resolver.open(("emptydir",), "10.0.0.2")
    assert len(os.listdir("/proc/self/fd")) <= before
