"""The TFTP peers: tftp-hpa's in.tftpd and dnsmasq's TFTP server, serving a given root.

    argv = tftpd.argv("tftpd-hpa", "10.0.0.11", root, work)

  tftpd-hpa  in.tftpd 5.2 --listen (standalone; forks one process per transfer), --secure
             (paths relative to the root). RFC 2347/2348/2349 options (blksize, tsize,
             timeout); no RFC 7440 windowsize, so a window request runs lock-step.
  dnsmasq    dnsmasq --enable-tftp with DNS and DHCP off, one process, up to 512 transfers;
             caps blksize at the interface MTU - 32; no windowsize either.
atftpd (the one Debian TFTP server with windowsize) conflicts with tftpd-hpa as a package, so
tftp-hpa is the TFTP peer. Both listen on `ip` port 69 only. tftpy's server (pure Python) is
the third, for scale.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

KINDS = ("tftpd-hpa", "dnsmasq")


def argv(kind: str, ip: str, root: Path, work: Path) -> list[str]:
    if kind == "tftpd-hpa":
        return ["in.tftpd", "--foreground", "--listen", "--address", f"{ip}:69", "--secure",
                "--user", "root", str(root)]
    if kind == "dnsmasq":
        return ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--enable-tftp",
                f"--tftp-root={root}", f"--listen-address={ip}", "--bind-interfaces",
                "--user=root", "--group=root", "--tftp-max=512",
                f"--pid-file={work / 'dnsmasq-tftp.pid'}",
                f"--log-facility={work / 'dnsmasq-tftp.log'}"]
    raise ValueError(f"unknown TFTP peer {kind!r}; choose from {KINDS}")


TFTPY_SERVER = r"""
import logging, sys
import tftpy
logging.getLogger("tftpy").setLevel(logging.ERROR)
root, ip = sys.argv[1:3]
tftpy.TftpServer(root).listen(ip, 69)
"""


def tftpy_argv(python: str, ip: str, root: Path) -> list[str]:
    """tftpy's server (pure Python, one thread) on ip:69, with the interpreter that has it."""
    return [python, "-c", TFTPY_SERVER, str(root), ip]


def tftpy_python(given: str | None) -> str | None:
    """A Python with tftpy: `given`, this one, or $PROVISIONER_TEST_TFTPY_PYTHON; else None."""
    if given:
        return given
    if importlib.util.find_spec("tftpy") is not None:
        return sys.executable
    other = os.environ.get("PROVISIONER_TEST_TFTPY_PYTHON")
    return other if other and shutil.which(other) else None
