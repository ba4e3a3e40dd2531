"""Every external program the code, the tests, the benches and the scripts start comes from a
Debian package that scripts/setup.sh installs (or one every Debian system has).

The programs are found by reading the source, not by a list kept by hand: in Python, the first
element of an argv list given to a call (subprocess.run, Popen, a namespace's spawn, ...) or
assigned to an argv/cmd variable, a `shutil.which("name")`, the names a loop checks with which(),
and absolute /usr/bin, /usr/sbin paths; in the shell scripts, the word in command position.
Each name must be in PROGRAMS (program -> package) or in NOT_PROGRAMS (a word the scan finds that
is not an external program, such as a provisioner subcommand). A new program in a test therefore
fails here until its package is named, and setup.sh installs it.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("provisioner", "tests", "bench", "scripts")

#: program -> the Debian package that ships it
PROGRAMS = {
    "apt-cache": "apt", "apt-get": "apt", "atftp": "atftp", "bash": "bash",
    "busybox": "busybox-static",
    "cat": "coreutils", "chroot": "coreutils", "cpio": "cpio", "curl": "curl", "cut": "coreutils",
    "debootstrap": "debootstrap", "depmod": "kmod", "dhclient": "isc-dhcp-client",
    "dirname": "coreutils", "dnsmasq": "dnsmasq-base", "dpkg": "dpkg", "dpkg-deb": "dpkg",
    "dpkg-query": "dpkg",
    "etcd": "etcd-server", "etcdctl": "etcd-client", "file": "file", "grep": "grep",
    "id": "coreutils", "in.tftpd": "tftpd-hpa", "ip": "iproute2", "ipmi_sim": "openipmi",
    "ipmitool": "ipmitool", "kea-dhcp4": "kea-dhcp4-server", "kill": "procps",
    "modinfo": "kmod", "modprobe": "kmod", "mount": "mount", "munged": "munge",
    "mungekey": "munge", "nginx": "nginx", "openssl": "openssl",
    "systemd-analyze": "systemd", "useradd": "passwd", "env": "coreutils", "perfdhcp": "kea-admin",
    "pgrep": "procps", "prometheus": "prometheus", "ps": "procps", "python3": "python3",
    "qemu-system-x86_64": "qemu-system-x86", "scontrol": "slurm-client", "srun": "slurm-client",
    "slurmctld": "slurmctld", "sh": "dash", "sleep": "coreutils", "sort": "coreutils",
    "ss": "iproute2", "systemctl": "systemd", "tail": "coreutils", "tar": "tar",
    "taskset": "util-linux", "tftp": "tftp-hpa", "touch": "coreutils", "tr": "coreutils",
    "true": "coreutils",
    "umount": "mount", "update-rc.d": "init-system-helpers", "vagrant": "vagrant",
    "xz": "xz-utils", "zstd": "zstd",
}
#: packages every Debian 12 system has (Essential: yes, or apt itself); systemd is there
#: wherever systemctl is called (bench/http.py calls it only when systemd runs)
BASE = {"apt", "bash", "coreutils", "dash", "dpkg", "grep", "init-system-helpers", "mount",
        "tar", "util-linux", "python3", "systemd"}
#: words the scan finds that are not external programs
NOT_PROGRAMS = {
    "scheduler", "serve",  # `provisioner scheduler serve` (bench/api.py): our own CLI
    "provisioner", "pytest", "ruff", "mypy", "lint-imports",  # .venv, from pyproject.toml
}
#: shell words in command position that are builtins or keywords, not programs
SHELL_WORDS = {"if", "then", "else", "elif", "fi", "for", "in", "do", "done", "while", "case",
               "esac", "function", "return", "local", "echo", "cd", "set", "export", "exit",
               "command", "true", "false", "[", "[[", "]]", "]", "{", "}", "!", "time",
               "shift", "read", "printf", "test", "source", ".", "wait", "trap", "unset"}
ARGV_CALLS = {"run", "Popen", "check_output", "check_call", "call", "spawn", "command",
              "client", "create_subprocess_exec", "exec"}
BIN_PATH = re.compile(r"^/(?:usr/)?s?bin/([\w.+-]+)$")


def _const(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _argv0(node: ast.AST) -> str | None:
    """The program of an argv list literal: its first element, a string constant (the last
    part of an absolute path)."""
    if isinstance(node, ast.List) and node.elts and (first := _const(node.elts[0])):
        return first.rsplit("/", 1)[-1] if first.startswith("/") else first
    return None


def _calls_which(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and _func_name(n) == "which" for n in ast.walk(node))


def _func_name(call: ast.Call) -> str:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return str(name).lstrip("_")


def _python_programs(tree: ast.AST) -> Iterator[tuple[str, int]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _func_name(node)
            first = _const(node.args[0]) if node.args else None
            if name in ("which", "create_subprocess_exec", "execvp") and first:
                yield first, node.lineno
            for arg in node.args:
                program = _argv0(arg)
                # an argv given to a process starter, or any list that reads like one
                # (`Server(name, ip, ["in.tftpd", "--foreground", ...])`)
                if program and (name in ARGV_CALLS or _looks_like_argv(arg)):
                    yield program, node.lineno
        elif isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            program = _argv0(node.value)
            if program and any(re.search("argv|cmd|command", t) for t in targets):
                yield program, node.lineno
        elif isinstance(node, (ast.For, ast.comprehension)) and any(
                _calls_which(n) for n in (node.body if isinstance(node, ast.For) else node.ifs)):
            if isinstance(node.iter, (ast.Tuple, ast.List)):
                for elt in node.iter.elts:
                    if (value := _const(elt)) is not None:
                        yield value, getattr(node, "lineno", 0)
        elif (value := _const(node)) is not None and (match := BIN_PATH.match(value)):
            yield match.group(1), getattr(node, "lineno", 0)


def _looks_like_argv(node: ast.AST) -> bool:
    assert isinstance(node, ast.List)
    second = _const(node.elts[1]) if len(node.elts) > 1 else None
    first = _const(node.elts[0]) or ""
    return bool(second and second.startswith("-") and not first.startswith("-"))


def _shell_programs(text: str) -> Iterator[tuple[str, int]]:
    # arrays (NAME=(a b c), across lines) hold data, not commands; keep the line numbers
    text = re.sub(r"\w+=\([^)]*\)", lambda m: "\n" * m.group(0).count("\n"), text)
    functions = set(re.findall(r"^\s*([\w-]+)\(\)\s*\{", text, re.MULTILINE))
    for number, raw in enumerate(text.splitlines(), 1):
        code = re.sub(r"(^|\s)#.*", "", raw)
        # a quoted string is text unless it holds a command substitution or a pipe
        code = re.sub(r'"[^"]*"', lambda m: m.group(0) if re.search(r"\$\(|\|", m.group(0))
                      else '""', code)
        for part in re.split(r"&&|\|\||[;|(]|\$\(|\bthen\b|\bdo\b|\belse\b", code):
            words = [w for w in part.split() if w not in ("$SUDO", "sudo", "!")]
            while words and "=" in words[0] and not words[0].startswith("="):
                words = words[1:]  # VAR=value before a command
            if words:
                word = words[0].strip("\"'")
                if (re.fullmatch(r"[a-z][\w.+-]*", word) and word not in SHELL_WORDS
                        and word not in functions):
                    yield word, number


@functools.cache
def scanned_programs() -> dict[str, list[str]]:
    """program -> where it is started (file:line), over every scanned file."""
    found: dict[str, list[str]] = {}
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix == ".py":
                programs = _python_programs(ast.parse(path.read_text(), str(path)))
            elif path.suffix == ".sh":
                programs = _shell_programs(path.read_text())
            else:
                continue
            for program, line in programs:
                found.setdefault(program, []).append(f"{path.relative_to(ROOT)}:{line}")
    return found


def setup_packages() -> set[str]:
    """The DEBIAN_PACKAGES array of scripts/setup.sh."""
    text = (ROOT / "scripts" / "setup.sh").read_text()
    match = re.search(r"^DEBIAN_PACKAGES=\(([^)]*)\)", text, re.MULTILINE)
    assert match, "scripts/setup.sh has no DEBIAN_PACKAGES=(...)"
    return set(match.group(1).split())


def test_the_scan_finds_the_programs_it_must() -> None:
    found = scanned_programs()
    # one of each way a program is started: argv to a namespace client, a which() loop,
    # an absolute path default, a spawn in a bench, a shell script
    for program in ("perfdhcp", "slurmctld", "etcd", "dnsmasq", "vagrant", "in.tftpd",
                    "apt-get", "dpkg-query"):
        assert program in found, program


def test_every_program_started_is_known() -> None:
    unknown = {p: where[:3] for p, where in scanned_programs().items()
               if p not in PROGRAMS and p not in NOT_PROGRAMS}
    assert not unknown, ("programs started but not in PROGRAMS (program -> Debian package) "
                         f"nor NOT_PROGRAMS: {unknown}")


def test_every_program_comes_from_a_package_setup_installs() -> None:
    listed = setup_packages()
    used = {p for p in scanned_programs() if p in PROGRAMS}
    missing = {p: PROGRAMS[p] for p in used if PROGRAMS[p] not in listed | BASE}
    assert not missing, f"scripts/setup.sh's DEBIAN_PACKAGES lacks: {missing}"


def test_the_servers_the_benches_need_are_listed() -> None:
    for package in ("kea-dhcp4-server", "dnsmasq-base", "nginx-light", "tftpd-hpa", "prometheus",
                    "nftables", "iptables", "libpcap0.8", "vagrant", "vagrant-libvirt",
                    "etcd-server", "slurmctld"):
        assert package in setup_packages(), package


def _spellings(path: str) -> set[str]:
    """A program's path as dpkg may have recorded it (merged /usr: /bin/x is /usr/bin/x)."""
    real = os.path.realpath(path)
    return {path, real, re.sub(r"^/usr/", "/", path), re.sub(r"^/usr/", "/", real)}


def _owners(paths: set[str]) -> dict[str, set[str]]:
    """path -> the packages dpkg says own it, in one dpkg-query call."""
    result = subprocess.run(["dpkg-query", "-S", *sorted(paths)], capture_output=True,
                            text=True, check=False, timeout=120)
    owners: dict[str, set[str]] = {}
    for line in result.stdout.splitlines():
        packages, _, path = line.partition(": ")
        owners.setdefault(path.strip(), set()).update(
            p.strip().split(":")[0] for p in packages.split(","))
    return owners


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian system")
def test_the_table_names_the_package_dpkg_knows() -> None:
    """Where a program is installed, the package in PROGRAMS is the one that ships it: the
    table cannot drift from Debian."""
    installed = {p: path for p in PROGRAMS if (path := shutil.which(p)) is not None}
    owned = _owners({s for path in installed.values() for s in _spellings(path)})
    wrong = {}
    for program, path in sorted(installed.items()):
        owners = set().union(*(owned.get(s, set()) for s in _spellings(path)))
        if owners and PROGRAMS[program] not in owners:
            wrong[program] = (PROGRAMS[program], sorted(owners))
    assert not wrong, f"program: (table says, dpkg says): {wrong}"
