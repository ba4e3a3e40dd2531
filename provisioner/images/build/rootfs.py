"""Root filesystems for diskless images: the bases, packages, %post scripts and the build log.

Bases (the kickstart's `base` directive):
- `busybox`: Debian's busybox-static (/bin/busybox) plus one symlink per applet from
  `busybox --list-full`, a passwd/group/shadow with root, and a busybox inittab. It has no
  package manager, so a non-empty %packages is an error on it (use debootstrap for packages).
- `debootstrap SUITE [MIRROR] --variant=minbase`: the mirror defaults to the host's apt
  sources. The downloaded .debs are kept as a `--make-tarball` under the cache, so a rebuild
  does not download again; the bootstrap itself always runs.
- `tarball PATH`: unpacked with GNU tar, owners and modes kept.
- `oci PATH`: an OCI image layout directory (see images/oci.py).

Every command's output goes to the build log (`BuildLog`), and a failure raises
ImageBuildError naming the kickstart file and line (`Where`) with the last line of output.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from provisioner.errors import ImageBuildError

BUSYBOX = Path("/bin/busybox")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
COMMAND_TIMEOUT = 1800.0  # a %post or apt-get install; generous, but never forever
_MISSING_PKG = re.compile(r"(?:Unable to locate package|has no installation candidate"
                          r"|Package '?)([A-Za-z0-9.+:~-]+)")


@dataclass(frozen=True)
class Where:
    """A place in the kickstart, for errors: 'compute.ks:12: message'."""

    source: str
    line: int = 0

    def error(self, message: str) -> ImageBuildError:
        return ImageBuildError(f"{self.source}:{self.line}: {message}" if self.line
                               else f"{self.source}: {message}")


class BuildLog:
    """The build log of one version: every step and every command's output."""

    def __init__(self, handle: TextIO) -> None:
        self.handle = handle
        self.start = time.monotonic()

    def step(self, text: str) -> None:
        self.handle.write(f"== [{time.monotonic() - self.start:7.1f} s] {text}\n")
        self.handle.flush()

    def run(self, argv: Sequence[str], where: Where, what: str, *,
            env: Mapping[str, str] | None = None, cwd: Path | None = None,
            timeout: float = COMMAND_TIMEOUT) -> str:
        """Run a command, log its output, raise `where.error(what ...)` if it fails."""
        self.handle.write(f"$ {' '.join(argv)}\n")
        self.handle.flush()
        try:
            done = subprocess.run(list(argv), env=dict(env) if env is not None else None,
                                  cwd=cwd, capture_output=True, text=True, errors="replace",
                                  timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise where.error(f"{what}: {argv[0]} is not installed") from None
        except subprocess.TimeoutExpired:
            raise where.error(f"{what}: timed out after {timeout:.0f} s") from None
        output = done.stdout + done.stderr
        self.handle.write(output if output.endswith("\n") or not output else output + "\n")
        self.handle.write(f"-> exit {done.returncode} [{time.monotonic() - self.start:7.1f} s]\n")
        self.handle.flush()
        if done.returncode != 0:
            tail = (output.strip().splitlines() or ["no output"])[-1].strip()
            raise where.error(f"{what} failed (exit {done.returncode}): {tail}")
        return output


# -- bases ---------------------------------------------------------------------------------

_BASE_DIRS = {"bin": 0o755, "sbin": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "etc": 0o755,
              "proc": 0o555, "sys": 0o555, "dev": 0o755, "run": 0o755, "tmp": 0o1777,
              "root": 0o700, "home": 0o755, "var/log": 0o755, "var/run": 0o755,
              "etc/init.d": 0o755, "lib/modules": 0o755}
_INITTAB = """\
# busybox init: run rcS once, then a shell on the console, forever.
::sysinit:/etc/init.d/rcS
::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
"""
_RCS = """#!/bin/sh
# Written by the image builder: starts the services the kickstart enabled.
for service in $(cat /etc/provisioner/services 2>/dev/null); do
    /etc/init.d/"$service" start || echo "rcS: $service failed to start"
done
"""


def install_busybox(root: Path, busybox: Path = BUSYBOX) -> None:
    """The busybox base: the static binary, an applet symlink each, root's account files."""
    if not busybox.is_file():
        raise ImageBuildError(f"{busybox} is missing; install Debian's busybox-static")
    for rel, mode in _BASE_DIRS.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel).chmod(mode)
    shutil.copyfile(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
    for applet in applets:
        link = root / applet
        if applet != "bin/busybox" and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    _write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    _write(root / "etc/group", "root:x:0:\n")
    _write(root / "etc/shadow", "root:*:0:0:99999:7:::\n", 0o600)
    _write(root / "etc/inittab", _INITTAB)
    _write(root / "etc/init.d/rcS", _RCS, 0o755)


def default_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The first Debian archive URI in the host's apt sources (not the security one)."""
    texts = [p.read_text() for p in sorted((sources_dir / "sources.list.d").glob("*.sources"))]
    list_file = sources_dir / "sources.list"
    lines = list_file.read_text().splitlines() if list_file.is_file() else []
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
            return parts[1 if not parts[1].startswith("[") else 2]
    for text in texts:
        for match in re.finditer(r"^URIs:\s*(\S+)", text, re.MULTILINE):
            if "security" not in match.group(1):
                return match.group(1)
    return DEFAULT_MIRROR


def debootstrap(root: Path, suite: str, mirror: str | None, *, cache: Path, log: BuildLog,
                where: Where) -> None:
    """debootstrap --variant=minbase, downloading only when the cached debs tarball is missing."""
    mirror = mirror or default_mirror()
    key = hashlib.sha256(f"{suite} {mirror} minbase".encode()).hexdigest()[:12]
    tarball = cache / "debootstrap" / f"{suite}-minbase-{key}.tgz"
    if not tarball.is_file():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        scratch = tarball.with_name(f".{tarball.stem}-{os.getpid()}")
        partial = tarball.with_name(f".{tarball.name}.{os.getpid()}.tgz")
        try:
            log.run(["debootstrap", "--variant=minbase", f"--make-tarball={partial}", suite,
                     str(scratch), mirror], where, f"downloading {suite} from {mirror}")
            partial.rename(tarball)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            partial.unlink(missing_ok=True)
    log.run(["debootstrap", "--variant=minbase", f"--unpack-tarball={tarball}", suite,
             str(root), mirror], where, f"debootstrap {suite}")
    with contextlib.suppress(FileNotFoundError):  # cached .debs are in the tarball already
        shutil.rmtree(root / "var/cache/apt/archives/partial")


def extract_tarball(root: Path, tarball: Path, log: BuildLog, where: Where) -> None:
    if not tarball.is_file():
        raise where.error(f"base tarball {tarball} does not exist")
    log.run(["tar", "--numeric-owner", "-xpf", str(tarball), "-C", str(root)], where,
            f"unpacking {tarball.name}")


def inside_root(root: Path, rel: str, where: Where) -> Path:
    """ROOT/rel, refusing names that leave the root, also through symlinked parents."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise where.error(f"layer member {rel!r} leaves the image root")
    target = root.joinpath(*parts)
    real_root = os.path.realpath(root)
    parent = os.path.realpath(target.parent)
    if parent != real_root and not parent.startswith(real_root + "/"):
        raise where.error(f"layer member {rel!r} goes through a symlink out of the image root")
    return target


# -- working inside the root ---------------------------------------------------------------

_DEV_NODES = {"null": (1, 3, 0o666), "zero": (1, 5, 0o666), "random": (1, 8, 0o666),
              "urandom": (1, 9, 0o666), "tty": (5, 0, 0o666)}


@contextlib.contextmanager
def chroot_ready(root: Path) -> Iterator[None]:
    """/proc mounted and the basic /dev nodes present while chrooted commands run.

    Device nodes are made with mknod rather than a bind mount of the host's /dev: removing a
    failed staging tree must never be able to reach the host's devices."""
    (root / "dev").mkdir(exist_ok=True)
    for name, (major, minor, mode) in _DEV_NODES.items():
        node = root / "dev" / name
        if not node.exists() and not node.is_symlink():
            os.mknod(node, stat.S_IFCHR | mode, os.makedev(major, minor))
            node.chmod(mode)
    (root / "proc").mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")],
                             capture_output=True, timeout=30, check=False).returncode == 0
    try:
        yield
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root / "proc")], capture_output=True,
                           timeout=30, check=False)


def chroot_env() -> dict[str, str]:
    return {"PATH": CHROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive", "TERM": "dumb"}


def has_apt(root: Path) -> bool:
    return (root / "usr/bin/apt-get").exists()


def install_packages(root: Path, packages: Sequence[tuple[str, int]], source: str,
                     log: BuildLog, debs: Path | None = None) -> None:
    """apt-get install in the chroot; an unknown package names its own kickstart line.
    `debs`: a directory of .deb files kept between builds (apt downloads only what it lacks)."""
    if not packages:
        return
    where = Where(source, packages[0][1])
    policy = root / "usr/sbin/policy-rc.d"
    # Keep package scripts from starting daemons inside the build chroot (policy-rc.d(8)).
    _write(policy, "#!/bin/sh\nexit 101\n", 0o755)
    try:
        with chroot_ready(root):
            log.run(["chroot", str(root), "apt-get", "update"], where, "apt-get update",
                    env=chroot_env())
            _check_known(root, packages, source, log)
            names = [name for name, _ in packages]
            archives = root / "var/cache/apt/archives"
            copy_debs(debs, archives)
            log.run(["chroot", str(root), "apt-get", "install", "-y", "--no-install-recommends",
                     *names], where, "apt-get install", env=chroot_env())
            copy_debs(archives, debs)
            log.run(["chroot", str(root), "apt-get", "clean"], where, "apt-get clean",
                    env=chroot_env())
    finally:
        policy.unlink(missing_ok=True)
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)


def copy_debs(src: Path | None, dst: Path | None) -> None:
    """The .deb files of `src` that `dst` lacks (file names carry the version, so a name
    is one content). Copied, never linked: the image's apt-get clean must not reach the cache."""
    if src is None or dst is None or not src.is_dir():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for deb in src.glob("*.deb"):
        target = dst / deb.name
        if not target.exists():
            partial = dst / f".{deb.name}.{os.getpid()}"
            shutil.copyfile(deb, partial)
            partial.rename(target)


def _check_known(root: Path, packages: Sequence[tuple[str, int]], source: str,
                 log: BuildLog) -> None:
    names = [name for name, _ in packages]
    done = subprocess.run(["chroot", str(root), "apt-cache", "policy", *names], env=chroot_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    log.handle.write(done.stdout + done.stderr)
    known = {line[:-1] for line in done.stdout.splitlines()
             if line and not line[0].isspace() and line.endswith(":")}
    candidates = dict(re.findall(r"^(\S+):\n\s+Installed: .*\n\s+Candidate: (\S+)",
                                 done.stdout, re.MULTILINE))
    for name, line in packages:
        if name not in known or candidates.get(name) == "(none)":
            raise Where(source, line).error(f"unknown package {name!r}: not in the image's "
                                            "apt sources")


def run_post(root: Path, script: str, where: Where, log: BuildLog, *, nochroot: bool = False,
             interpreter: str = "/bin/sh", cwd: Path | None = None) -> None:
    """A %post: in the chroot with `sh -e`, or on the host with $ROOT and $IMAGE_ROOT set
    (--nochroot)."""
    log.step(f"%post at {where.source}:{where.line}{' --nochroot' if nochroot else ''}")
    if nochroot:
        env = {**chroot_env(), "PATH": os.environ.get("PATH", CHROOT_PATH), "ROOT": str(root),
               "IMAGE_ROOT": str(root)}
        script_path = root.parent / f"post-{where.line}.sh"
        _write(script_path, script, 0o700)
        try:
            log.run([interpreter, "-e", str(script_path)], where, "%post --nochroot", env=env,
                    cwd=cwd)
        finally:
            script_path.unlink(missing_ok=True)
        return
    if not (root / interpreter.lstrip("/")).exists() and not (root / interpreter.lstrip("/")) \
            .is_symlink():
        raise where.error(f"%post: the image has no {interpreter}")
    (root / "tmp").mkdir(exist_ok=True)
    script_path = root / "tmp" / f"provisioner-post-{where.line}.sh"
    _write(script_path, script, 0o700)
    try:
        with chroot_ready(root):
            log.run(["chroot", str(root), interpreter, "-e", f"/tmp/{script_path.name}"],
                    where, "%post", env=chroot_env())
    finally:
        script_path.unlink(missing_ok=True)


def copy_in(root: Path, source: Path, dest: str, where: Where, mode: int | None = None) -> None:
    """%files: copy a file or a directory tree from the build host into the image."""
    if not source.exists():
        raise where.error(f"%files: {source} does not exist")
    target = inside_root(root, dest, where)
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target, follow_symlinks=False)
        if mode is not None:
            target.chmod(mode)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
