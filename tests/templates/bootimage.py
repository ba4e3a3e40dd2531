"""A minimal bootable image for the QEMU tests: Debian's static busybox, our /init and udhcpc
script from the shipped templates, and the virtio modules of the cloud kernel."""

from __future__ import annotations

import subprocess
from pathlib import Path

from provisioner.images.build.kernel import KernelTree
from provisioner.images.build.kmod import DEFAULT_NET_MODULES, modules_with_deps
from provisioner.images.format import compress, cpio
from provisioner.render.environment import Renderer

#: The image's own /sbin/init: prove the overlay's token arrived, then end QEMU.
SBIN_INIT = b"#!/bin/sh\necho image-init-reached token=$(cat /etc/provisioner/token)\npoweroff -f\n"


def minimal_image(kernel: KernelTree) -> bytes:
    """A busybox initramfs with our /init, udhcpc script and virtio modules; its /sbin/init
    prints a marker and powers off, so QEMU ends on its own."""
    renderer = Renderer()
    applets = subprocess.run(["/bin/busybox", "--list-full"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.split()
    entries = [cpio.file("bin/busybox", Path("/bin/busybox").read_bytes(), 0o755),
               cpio.chardev("dev/console", 5, 1)]
    entries += [cpio.symlink(a, "/bin/busybox") for a in applets
                if a not in ("bin/busybox", "sbin/init")]
    modules = modules_with_deps(kernel.modules_root, DEFAULT_NET_MODULES)
    for module in modules:
        rel = module.relative_to(kernel.root).as_posix()
        entries.append(cpio.file(rel, module.read_bytes()))
    order = "".join(f"/{m.relative_to(kernel.root).as_posix()}\n" for m in modules)
    entries += [
        cpio.file("etc/provisioner/modules.order", order.encode()),
        cpio.file("init", renderer.render("image/init.sh.j2", {"name": "t"}).encode(), 0o755),
        cpio.file("etc/provisioner/udhcpc.script",
                  renderer.render("image/udhcpc.script.j2", {}).encode(), 0o755),
        cpio.file("sbin/init", SBIN_INIT, 0o755),
    ]
    return compress.xz_bytes(cpio.pack(entries))
