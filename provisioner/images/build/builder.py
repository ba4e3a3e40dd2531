"""The image builder: a kickstart template in, a published catalog version out.

    render the kickstart (--var values) -> parse -> fetch the kernel -> inputs_sha256
      -> (same as the current version's: done, nothing built)
      -> staging IMAGES_DIR/.staging/NAME-PID-RAND/{rootfs/, out/}
      -> base, %packages, %files, users/rootpw/sshkey/timezone, %post, services
      -> kernel modules + etc/provisioner/modules.order, /init, udhcpc script
         (+ the provisioner-booted and provisioner-agent units when the image's init is systemd)
      -> cpio (fixed mtimes, sorted) -> xz (CRC32, threads do not change the bytes)
      -> out/{vmlinuz, image.cpio.xz, manifest.json, build.log} -> catalog.publish (rename)

Any failure, a full disk included, removes the staging directory and leaves the current version
serving; the error is one line naming the kickstart file and line where there is one, and the
build log of the failed attempt is kept as IMAGES_DIR/.staging/NAME.failed.log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.errors import ImageBuildError, ProvisionerError, TemplateError
from provisioner.images.build import kickstart as ks_parser
from provisioner.images.build import kmod
from provisioner.images.build.kernel import KernelTree, fetch_kernel
from provisioner.images.build.kickstart import Kickstart
from provisioner.images.build.recipe import apply_kickstart, base_dir, base_inputs, directive_line
from provisioner.images.build.rootfs import BUSYBOX, BuildLog, Where
from provisioner.images.format import archive, compress, cpio
from provisioner.images.format.catalog import (
    STAGING,
    ImageCatalog,
    ImageVersion,
    check_name,
    utc_now,
)
from provisioner.images.fsutil import describe_files, remove_tree, sha256_file
from provisioner.render.environment import Renderer

BUILDER_VERSION = "1"
INIT_TEMPLATE = "image/init.sh.j2"
UDHCPC_TEMPLATE = "image/udhcpc.script.j2"
MODULES_ORDER = "etc/provisioner/modules.order"
#: systemd units of the callback and the node agent, enabled in images whose init is systemd
#: (/init then leaves both to them; see templates/image/init.sh.j2)
UNIT_TEMPLATES = ("image/provisioner-booted.service.j2", "image/provisioner-agent.service.j2")
UNIT_DIR = "etc/systemd/system"
#: The steps a build reports progress for, in order.
STEPS = ("render", "kernel", "rootfs", "modules", "pack", "compress", "publish")

#: progress(step, fraction of the whole build done, detail)
Progress = Callable[[str, float, str], None]


@dataclass(frozen=True)
class BuildRequest:
    template: str  # a template name (kickstart/compute.ks.j2) or a path to a file
    name: str
    variables: Mapping[str, Any] = field(default_factory=dict)
    kernel: str | None = None  # overrides the kickstart's `kernel`
    force: bool = False  # build even when the inputs match the current version


@dataclass(frozen=True)
class BuildResult:
    image: ImageVersion
    cached: bool
    seconds: float


@dataclass
class _Build:
    request: BuildRequest
    source: str
    text: str
    kickstart: Kickstart
    kernel: KernelTree
    inputs: str
    step: str = "render"


class ImageBuilder:
    def __init__(self, catalog: ImageCatalog, renderer: Renderer, cache: Path, *,
                 default_kernel: str = "linux-image-cloud-amd64", xz_threads: int = 0,
                 busybox: Path = BUSYBOX, progress: Progress | None = None) -> None:
        self.catalog = catalog
        self.renderer = renderer
        self.cache = cache
        self.default_kernel = default_kernel
        self.xz_threads = xz_threads
        self.busybox = busybox
        self.progress = progress or (lambda step, done, detail: None)

    def build(self, request: BuildRequest) -> BuildResult:
        started = time.monotonic()
        self._report("render", request.template)
        build = self._prepare(request)
        current = self._current(request.name)
        if current is not None and not request.force \
                and current.manifest.get("inputs_sha256") == build.inputs:
            return BuildResult(current, True, time.monotonic() - started)
        image = self._build_and_publish(build)
        return BuildResult(image, False, time.monotonic() - started)

    # -- before anything is built ------------------------------------------------------

    def _prepare(self, request: BuildRequest) -> _Build:
        check_name(request.name)
        source, text = self.render_kickstart(request.template, request.name, request.variables)
        kickstart = ks_parser.parse(text, source=source)
        self._report("kernel", "")
        kernel = self._kernel(request, kickstart, source, text)
        inputs = self._inputs(text, source, kickstart, kernel)
        return _Build(request, source, text, kickstart, kernel, inputs)

    def render_kickstart(self, template: str, name: str,
                         variables: Mapping[str, Any]) -> tuple[str, str]:
        """(source name for errors, rendered kickstart text)."""
        values = {"name": name, **variables}
        path = Path(template)
        node = f"image {name}"
        if not path.is_file():
            return template, self.renderer.render(template, values, node=node)
        try:
            return str(path), Renderer(path.resolve().parent).render(path.name, values, node=node)
        except TemplateError as exc:
            # The renderer knows the file by its name in its directory; say which file it is.
            if exc.message.startswith(f"{path.name}:"):
                exc.message = str(path) + exc.message[len(path.name):]
                exc.args = (exc.message,)
            raise

    def _kernel(self, request: BuildRequest, kickstart: Kickstart, source: str,
                text: str) -> KernelTree:
        spec, where = request.kernel, Where("--kernel")
        if spec is None and kickstart.kernel:
            spec, where = kickstart.kernel, Where(source, directive_line(text, "kernel"))
            beside = base_dir(source) / spec  # a relative path is the kickstart's neighbour
            spec = str(beside) if not Path(spec).is_absolute() and beside.exists() else spec
        spec = spec or self.default_kernel
        try:
            return self._fetch_kernel(spec)
        except ImageBuildError as exc:
            detail = str(exc).removeprefix("kernel: ")
            raise where.error(f"kernel {spec}: {detail}") from None

    def _fetch_kernel(self, spec: str) -> KernelTree:
        """fetch_kernel, skipping apt's package resolution (about 1 s per apt-cache call here,
        where apt keeps no binary cache) while apt's lists are unchanged since the last one."""
        def report(text: str) -> None:
            self._report("kernel", text)

        if Path(spec).exists():
            return fetch_kernel(spec, self.cache, report)
        memo_path = self.cache / "kernel-resolved.json"
        state = apt_state()
        memo = _read_memo(memo_path)
        hit = memo.get(spec)
        try:
            if isinstance(hit, dict) and hit.get("apt_state") == state \
                    and Path(str(hit.get("root"))).is_dir():
                tree = fetch_kernel(str(hit["root"]), self.cache, report)
                return dataclasses.replace(tree, package_version=str(hit.get("version", "")))
        except ImageBuildError:
            pass  # the unpacked tree went away or broke: resolve again below
        tree = fetch_kernel(spec, self.cache, report)
        memo[spec] = {"apt_state": state, "root": str(tree.root), "version": tree.package_version}
        with contextlib.suppress(OSError):
            memo_path.write_text(json.dumps(memo, indent=2))
        return tree

    def _inputs(self, text: str, source: str, kickstart: Kickstart, kernel: KernelTree) -> str:
        digest = hashlib.sha256()
        parts = {
            "builder": BUILDER_VERSION,
            "kickstart": text,
            "kernel": [kernel.release, kernel.package_version, sha256_file(kernel.vmlinuz)],
            "init": self.renderer.digest("image/"),
            "base": base_inputs(kickstart, source, self.busybox),
        }
        digest.update(json.dumps(parts, sort_keys=True).encode())
        return digest.hexdigest()

    def _current(self, name: str) -> ImageVersion | None:
        try:
            return self.catalog.resolve(name)
        except ProvisionerError:
            return None

    # -- building ----------------------------------------------------------------------

    def _build_and_publish(self, build: _Build) -> ImageVersion:
        name = build.request.name
        staging = self.catalog.new_staging(name)
        out = staging / "out"
        out.mkdir()
        failed_log = self.catalog.root / STAGING / f"{name}.failed.log"
        try:
            with (out / "build.log").open("w") as handle:
                log = BuildLog(handle)
                log.step(f"build {name} from {build.source} at {utc_now()}")
                handle.write(build.text)
                self._assemble(build, staging, log)
            build.step = "publish"
            self._report("publish", name)
            image = self.catalog.publish(out, name)
            failed_log.unlink(missing_ok=True)
            return image
        except OSError as exc:
            self._keep_log(out, failed_log)
            raise self._os_error(build, exc) from None
        except BaseException:
            self._keep_log(out, failed_log)
            raise
        finally:
            remove_tree(staging)

    def _assemble(self, build: _Build, staging: Path, log: BuildLog) -> None:
        root = staging / "rootfs"
        root.mkdir(mode=0o755)
        out = staging / "out"
        build.step = "rootfs"
        self._report("rootfs", "base and kickstart")
        apply_kickstart(root, build.kickstart, build.source, build.text, log,
                        cache=self.cache, busybox=self.busybox)
        build.step = "modules"
        self._report("modules", build.kernel.release)
        modules = self._install_modules(root, build.kernel, build.kickstart, log)
        self._install_init(root, build, modules)
        build.step = "pack"
        self._report("pack", "cpio")
        cpio_path = staging / "image.cpio"
        size = archive.write_tree_file(root, cpio_path, extra=device_entries(),
                                       preserve_owner=True)
        log.step(f"cpio: {size} bytes")
        build.step = "compress"
        self._compress(cpio_path, out / "image.cpio.xz", size)
        cpio_path.unlink()
        log.step(f"xz: {(out / 'image.cpio.xz').stat().st_size} bytes")
        shutil.copyfile(build.kernel.vmlinuz, out / "vmlinuz")
        self._write_manifest(out, build, size, modules)

    def _compress(self, src: Path, dst: Path, size: int) -> None:
        """compress.xz_compress's stream (same compressor, same bytes), fed here so that the
        longest step of a big image can report how far it is."""
        comp = compress.compressor(threads=self.xz_threads)
        done = 0
        with src.open("rb") as source, dst.open("wb") as out:
            while chunk := source.read(compress.CHUNK):
                out.write(comp.compress(chunk))
                done += len(chunk)
                self._report("compress", f"{done * 100 // max(size, 1)}% of {size >> 20} MiB",
                             part=done / max(size, 1))
            out.write(comp.flush())

    def _install_modules(self, root: Path, kernel: KernelTree, kickstart: Kickstart,
                         log: BuildLog) -> list[str]:
        names = list(dict.fromkeys([*kmod.DEFAULT_NET_MODULES, *kickstart.modules]))
        paths = kmod.modules_with_deps(kernel.modules_root, names)
        installed = []
        for path in paths:
            rel = path.relative_to(kernel.modules_root)
            target = root / "lib/modules" / kernel.release / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            installed.append(f"/lib/modules/{kernel.release}/{rel.as_posix()}")
        order = root / MODULES_ORDER
        order.parent.mkdir(parents=True, exist_ok=True)
        order.write_text("".join(f"{m}\n" for m in installed))
        log.step("modules (load order): " + " ".join(Path(m).name for m in installed))
        return installed

    def _install_init(self, root: Path, build: _Build, modules: Sequence[str]) -> None:
        values = {"name": build.request.name, "kernel_release": build.kernel.release,
                  "modules": list(modules)}
        node = f"image {build.request.name}"
        for template, rel in ((INIT_TEMPLATE, "init"),
                              (UDHCPC_TEMPLATE, "etc/provisioner/udhcpc.script")):
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            target.write_text(self.renderer.render(template, values, node=node))
            target.chmod(self.renderer.mode(template) | stat.S_IXUSR)
        if runs_systemd(root):
            self._install_units(root, values, node)

    def _install_units(self, root: Path, values: Mapping[str, Any], node: str) -> None:
        """The units, enabled as `systemctl enable` would (a link in the wants directory)."""
        wants = root / UNIT_DIR / "multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        for template in UNIT_TEMPLATES:
            unit = Path(template).name.removesuffix(".j2")
            target = root / UNIT_DIR / unit
            target.unlink(missing_ok=True)
            target.write_text(self.renderer.render(template, values, node=node))
            target.chmod(self.renderer.mode(template))
            link = wants / unit
            link.unlink(missing_ok=True)
            link.symlink_to(f"/{UNIT_DIR}/{unit}")

    def _write_manifest(self, out: Path, build: _Build, cpio_size: int,
                        modules: Sequence[str]) -> None:
        files = describe_files(out)
        files["image.cpio.xz"]["cpio_size"] = cpio_size
        manifest = {
            "name": build.request.name, "version": None, "files": files,
            "kernel_release": build.kernel.release,
            "kernel_package_version": build.kernel.package_version,
            "inputs_sha256": build.inputs, "created": utc_now(),
            "source": build.source, "modules": [Path(m).name for m in modules],
            "builder_version": BUILDER_VERSION,
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    # -- failures and progress ---------------------------------------------------------

    def _os_error(self, build: _Build, exc: OSError) -> ImageBuildError:
        where = f"{self.catalog.root}" if exc.errno == errno.ENOSPC else (exc.filename or "")
        if exc.errno == errno.ENOSPC:
            return ImageBuildError(f"{where}: no space left on device during {build.step}; "
                                   "free space and build again (the current version is still "
                                   "serving)")
        return ImageBuildError(f"{build.source}: {build.step} failed: {exc.strerror or exc}"
                               f"{f' ({where})' if where else ''}")

    @staticmethod
    def _keep_log(out: Path, failed_log: Path) -> None:
        with contextlib.suppress(OSError):
            shutil.copyfile(out / "build.log", failed_log)

    def _report(self, step: str, detail: str, part: float = 0.0) -> None:
        """`part`: how much of this step is done (0..1), for the overall fraction."""
        self.progress(step, (STEPS.index(step) + min(part, 1.0)) / len(STEPS), detail)


def _read_memo(path: Path) -> dict[str, Any]:
    try:
        memo = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def apt_state() -> str:
    """A digest of what apt's answers depend on: its package lists, sources and pins."""
    digest = hashlib.sha256()
    for base in (Path("/var/lib/apt/lists"), Path("/etc/apt")):
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            with contextlib.suppress(OSError):
                st = path.stat()
                digest.update(f"{path} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def runs_systemd(root: Path) -> bool:
    """Whether the image's /sbin/init is systemd (systemd-sysv's link to it)."""
    init = root / "sbin/init"
    return init.is_symlink() and os.readlink(init).endswith("/systemd")


def device_entries() -> list[cpio.Entry]:
    """The nodes the kernel needs before /init mounts devtmpfs: its console and /dev/null."""
    return [cpio.directory("dev"), cpio.chardev("dev/console", 5, 1, 0o600),
            cpio.chardev("dev/null", 1, 3, 0o666)]

