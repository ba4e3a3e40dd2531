"""The HTTP peer: nginx (Debian nginx-light) serving a directory, started with its own config.

    conf = nginx.write_config(prefix, ip, port, root); argv = nginx.argv(binary, prefix, conf)

One worker process (provisioner's boot server is one process, one thread), sendfile and
tcp_nopush on, access log off, a kept-alive connection not closed after 1,000 requests (the
API benchmark sends more on one), `daemon off` with the master in the foreground so it is
stopped by PID with its worker; pid, logs and temp files under `prefix`, never /run or /var.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

MAIN = """\
daemon off;
master_process on;
{user}worker_processes 1;
{open_files}pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    keepalive_requests 100000;
    client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp; uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
{servers}}}
"""
SERVER = """\
    server {{
        listen {ip}:{port};
        root {root};
    }}
"""


def config_text(prefix: Path, servers: str, *, as_root: bool = False, connections: int = 1024,
                open_files: int = 0) -> str:
    """The whole nginx.conf around `servers` (server blocks, indented as SERVER is): one
    worker, the settings above, pid, logs and temp files under `prefix`. `as_root`: the
    worker runs as root too, for a root it could not read as nobody (a bench's private 0700
    work directory); `open_files`: its file limit, for many connections."""
    return MAIN.format(prefix=prefix, servers=servers, connections=connections,
                       user="user root;\n" if as_root else "",
                       open_files=f"worker_rlimit_nofile {open_files};\n" if open_files else "")


def binary() -> str:
    found = shutil.which("nginx")
    if found is None:
        raise SystemExit("nginx not found (apt-get install nginx-light; then "
                         "`systemctl disable --now nginx`: the benchmark starts its own)")
    return found


def write_config(prefix: Path, ip: str, port: int, root: Path, *, as_root: bool = False) -> Path:
    """nginx.conf under `prefix` for one server: `root` on ip:port."""
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(config_text(prefix, SERVER.format(ip=ip, port=port, root=root),
                                as_root=as_root))
    return conf


def argv(nginx: str, prefix: Path, conf: Path) -> list[str]:
    return [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]


def version(nginx: str) -> str:
    done = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10,
                          check=False)
    return done.stderr.strip().removeprefix("nginx version: ")
