"""The kickstart subset that describes a diskless image. Pure: text in, frozen dataclasses out.

Format (one directive per line; `#` starts a comment; a trailing backslash continues a line;
arguments are split like a shell does, so quote values that hold spaces):

    base busybox | debootstrap SUITE [MIRROR] | tarball PATH | oci PATH   (exactly one)
    kernel PACKAGE_OR_PATH               Debian package (default linux-image-cloud-amd64),
                                         a .deb or an unpacked tree
    modules NAME [NAME...]               extra kernel modules, loaded with their dependencies
                                         (repeatable)
    rootpw --iscrypted HASH | --lock     crypt(3) hash only (mkpasswd -m sha-512)
    user --name=NAME [--uid=N] [--groups=a,b] [--shell=PATH] [--iscrypted --password=HASH]
    sshkey --username=NAME "ssh-ed25519 AAAA... comment"
    timezone ZONE                        e.g. Europe/Paris
    services [--enabled=a,b] [--disabled=c,d]
    %packages                            package names, any number per line, until %end
    %post [--nochroot] [--interpreter=/bin/sh]
                                         a script run inside the rootfs (outside with
                                         --nochroot, where $IMAGE_ROOT names it), until %end
    %files                               lines `SRC DEST [MODE]` (DEST absolute, MODE octal)
    %end

Single-valued directives (base, kernel, rootpw, timezone, services, %packages) may appear once.
Unknown directives and options are errors, never ignored; plain-text passwords are refused. Every
error is a `KickstartError` whose text is `SOURCE:LINE: message`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from provisioner.errors import ImageBuildError

SECTIONS = ("%packages", "%post", "%files")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.:-]*$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_MODULE = re.compile(r"^[A-Za-z0-9_-]+$")
_SERVICE = re.compile(r"^[A-Za-z0-9_.@:-]+$")
_ZONE = re.compile(r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$")
_CRYPT = re.compile(r"^\$[0-9a-z]+\$[^\s:]+$")
_SSH_KEY = re.compile(r"^(ssh-|ecdsa-|sk-)\S+ [A-Za-z0-9+/=]+( .*)?$")


class KickstartError(ImageBuildError):
    """The kickstart file is invalid; fix the named line."""

    exit_code = 2

    def __init__(self, source: str, line: int, message: str) -> None:
        self.source = source
        self.line = line
        self.detail = message
        super().__init__(f"{source}:{line}: {message}")


@dataclass(frozen=True)
class Base:
    kind: str  # busybox | debootstrap | tarball | oci
    suite: str | None = None
    mirror: str | None = None
    path: str | None = None


@dataclass(frozen=True)
class RootPw:
    password_hash: str | None  # None: no password (login only with a key, or locked)
    locked: bool = False


@dataclass(frozen=True)
class User:
    name: str
    uid: int | None = None
    groups: tuple[str, ...] = ()
    password_hash: str | None = None
    shell: str | None = None


@dataclass(frozen=True)
class SshKey:
    username: str
    key: str


@dataclass(frozen=True)
class Script:
    body: str
    line: int  # of the %post header, for error messages when the script fails
    nochroot: bool = False
    interpreter: str = "/bin/sh"


@dataclass(frozen=True)
class FileCopy:
    src: str
    dest: str
    mode: int | None = None
    line: int = 0


@dataclass(frozen=True)
class Kickstart:
    base: Base
    packages: tuple[str, ...] = ()
    rootpw: RootPw | None = None
    users: tuple[User, ...] = ()
    sshkeys: tuple[SshKey, ...] = ()
    timezone: str | None = None
    services_enabled: tuple[str, ...] = ()
    services_disabled: tuple[str, ...] = ()
    kernel: str | None = None
    modules: tuple[str, ...] = ()
    posts: tuple[Script, ...] = ()
    files: tuple[FileCopy, ...] = ()
    source: str = "<kickstart>"


Options = dict[str, str | bool]


@dataclass
class _State:
    """What the parser has collected so far (mutable; frozen into a Kickstart at the end)."""

    source: str
    seen: dict[str, int] = field(default_factory=dict)  # single-valued name -> first line
    base: Base | None = None
    rootpw: RootPw | None = None
    timezone: str | None = None
    kernel: str | None = None
    services: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    packages: list[str] = field(default_factory=list)
    users: list[User] = field(default_factory=list)
    sshkeys: list[SshKey] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    posts: list[Script] = field(default_factory=list)
    files: list[FileCopy] = field(default_factory=list)

    def error(self, line: int, message: str) -> KickstartError:
        return KickstartError(self.source, line, message)

    def once(self, name: str, line: int) -> None:
        if name in self.seen:
            raise self.error(line, f"duplicate {name} (first at line {self.seen[name]})")
        self.seen[name] = line


def _split(state: _State, line: int, text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise state.error(line, f"cannot split line: {exc}") from None


def _options(state: _State, line: int, name: str, args: list[str], *, flags: tuple[str, ...] = (),
             valued: tuple[str, ...] = ()) -> tuple[Options, list[str]]:
    """Split `--flag`, `--opt=value`/`--opt value` and positional arguments; refuse the unknown."""
    opts: Options = {}
    positional: list[str] = []
    it = iter(args)
    for arg in it:
        if not arg.startswith("--"):
            positional.append(arg)
            continue
        key, eq, value = arg[2:].partition("=")
        if key in opts:
            raise state.error(line, f"{name}: option --{key} given twice")
        if key in flags and not eq:
            opts[key] = True
        elif key in valued:
            opts[key] = value if eq else next(it, "")
            if opts[key] == "":
                raise state.error(line, f"{name}: option --{key} needs a value")
        else:
            raise state.error(line, f"{name}: unknown option --{key}")
    return opts, positional


def _want(state: _State, line: int, name: str, args: list[str], bounds: tuple[int, int]) -> None:
    low, high = bounds
    if not low <= len(args) <= high:
        want = str(low) if low == high else f"{low} to {high}"
        raise state.error(line, f"{name}: expected {want} argument(s), got {len(args)}")


def _crypt(state: _State, line: int, name: str, value: str) -> str:
    if not _CRYPT.match(value):
        raise state.error(line, f"{name}: not a crypt(3) hash (make one with mkpasswd -m sha-512)")
    return value


def _names(state: _State, line: int, what: str, value: str, rule: re.Pattern[str]) -> list[str]:
    names = [v for v in value.split(",") if v]
    for n in names:
        if not rule.match(n):
            raise state.error(line, f"invalid {what} name {n!r}")
    return names


def _base(state: _State, line: int, args: list[str]) -> None:
    state.once("base", line)
    kinds = {"busybox": (0, 0), "debootstrap": (1, 2), "tarball": (1, 1), "oci": (1, 1)}
    if not args or args[0] not in kinds:
        raise state.error(line, "base: expected busybox, debootstrap SUITE [MIRROR], "
                                "tarball PATH or oci PATH")
    _want(state, line, f"base {args[0]}", args[1:], kinds[args[0]])
    rest = args[1:]
    if args[0] == "debootstrap":
        state.base = Base("debootstrap", suite=rest[0], mirror=rest[1] if len(rest) > 1 else None)
    elif args[0] in ("tarball", "oci"):
        state.base = Base(args[0], path=rest[0])
    else:
        state.base = Base("busybox")


def _rootpw(state: _State, line: int, args: list[str]) -> None:
    state.once("rootpw", line)
    opts, rest = _options(state, line, "rootpw", args, flags=("iscrypted", "lock", "plaintext"))
    if opts.get("plaintext") or (rest and not opts.get("iscrypted")):
        raise state.error(line, "rootpw: plain-text passwords are refused; use `rootpw "
                                "--iscrypted HASH` (mkpasswd -m sha-512) or `rootpw --lock`")
    _want(state, line, "rootpw", rest, (1 if opts.get("iscrypted") else 0, 1))
    if not rest and not opts.get("lock"):
        raise state.error(line, "rootpw: give --iscrypted HASH or --lock")
    digest = _crypt(state, line, "rootpw", rest[0]) if rest else None
    state.rootpw = RootPw(digest, locked=bool(opts.get("lock")))


def _user(state: _State, line: int, args: list[str]) -> None:
    opts, rest = _options(state, line, "user", args, flags=("iscrypted", "plaintext"),
                          valued=("name", "uid", "groups", "password", "shell"))
    _want(state, line, "user", rest, (0, 0))
    name = str(opts.get("name", ""))
    if not _USER.match(name):
        raise state.error(line, f"user: --name must be a valid user name, got {name!r}")
    if any(u.name == name for u in state.users):
        raise state.error(line, f"user: {name} defined twice")
    password = opts.get("password")
    if password and not opts.get("iscrypted"):
        raise state.error(line, "user: plain-text passwords are refused; use "
                                "--iscrypted --password=HASH (mkpasswd -m sha-512)")
    if opts.get("iscrypted") and not password:
        raise state.error(line, "user: --iscrypted needs --password=HASH")
    uid = str(opts.get("uid", ""))
    if uid and not (uid.isdigit() and int(uid) < 2**31):
        raise state.error(line, f"user: --uid must be a number, got {uid!r}")
    shell = opts.get("shell")
    if isinstance(shell, str) and not shell.startswith("/"):
        raise state.error(line, f"user: --shell must be an absolute path, got {shell!r}")
    groups = _names(state, line, "group", str(opts.get("groups", "")), _USER)
    digest = _crypt(state, line, "user", password) if isinstance(password, str) else None
    state.users.append(User(name, int(uid) if uid else None, tuple(groups), digest,
                            shell if isinstance(shell, str) else None))


def _sshkey(state: _State, line: int, args: list[str]) -> None:
    opts, rest = _options(state, line, "sshkey", args, valued=("username",))
    _want(state, line, "sshkey", rest, (1, 1))
    username = str(opts.get("username", ""))
    if not _USER.match(username):
        raise state.error(line, "sshkey: --username=NAME is required")
    if not _SSH_KEY.match(rest[0]):
        raise state.error(line, "sshkey: not an OpenSSH public key (quote the whole key)")
    state.sshkeys.append(SshKey(username, rest[0]))


def _timezone(state: _State, line: int, args: list[str]) -> None:
    state.once("timezone", line)
    _want(state, line, "timezone", args, (1, 1))
    if not _ZONE.match(args[0]):
        raise state.error(line, f"timezone: invalid zone {args[0]!r}")
    state.timezone = args[0]


def _services(state: _State, line: int, args: list[str]) -> None:
    state.once("services", line)
    opts, rest = _options(state, line, "services", args, valued=("enabled", "disabled"))
    _want(state, line, "services", rest, (0, 0))
    if not opts:
        raise state.error(line, "services: give --enabled=a,b and/or --disabled=c")
    enabled = _names(state, line, "service", str(opts.get("enabled", "")), _SERVICE)
    disabled = _names(state, line, "service", str(opts.get("disabled", "")), _SERVICE)
    both = sorted(set(enabled) & set(disabled))
    if both:
        raise state.error(line, f"services: {', '.join(both)} both enabled and disabled")
    state.services = (tuple(enabled), tuple(disabled))


def _kernel(state: _State, line: int, args: list[str]) -> None:
    state.once("kernel", line)
    _want(state, line, "kernel", args, (1, 1))
    state.kernel = args[0]


def _modules(state: _State, line: int, args: list[str]) -> None:
    if not args:
        raise state.error(line, "modules: expected at least one module name")
    for name in args:
        if not _MODULE.match(name):
            raise state.error(line, f"modules: invalid module name {name!r}")
        if name not in state.modules:
            state.modules.append(name)


DIRECTIVES = {"base": _base, "rootpw": _rootpw, "user": _user, "sshkey": _sshkey,
              "timezone": _timezone, "services": _services, "kernel": _kernel,
              "modules": _modules}


def _logical(lines: list[str], start: int, end: int | None = None) -> tuple[str, int]:
    """Join a line ending in a backslash with the next ones (up to `end`); return (text, index
    after it)."""
    parts = []
    i = start
    stop = len(lines) if end is None else end
    while i < stop:
        text = lines[i]
        i += 1
        if not text.endswith("\\") or text.endswith("\\\\"):
            parts.append(text)
            break
        parts.append(text[:-1])
    return " ".join(parts), i


def _section_end(state: _State, lines: list[str], start: int, name: str) -> int:
    """Index of the %end closing the section opened at `start`."""
    for i in range(start + 1, len(lines)):
        word = lines[i].strip().split(maxsplit=1)[0] if lines[i].strip() else ""
        if word == "%end":
            return i
        if word in SECTIONS:
            break  # a new section began: the previous one was never closed
    raise state.error(start + 1, f"{name} has no matching %end")


def _packages(state: _State, body: list[tuple[int, str]]) -> None:
    for line, text in body:
        for name in _split(state, line, text):
            if not _PACKAGE.match(name):
                raise state.error(line, f"%packages: invalid package name {name!r}")
            if name not in state.packages:
                state.packages.append(name)


def _files(state: _State, body: list[tuple[int, str]]) -> None:
    for line, text in body:
        args = _split(state, line, text)
        if not args:
            continue
        _want(state, line, "%files", args, (2, 3))
        if not args[1].startswith("/"):
            raise state.error(line, f"%files: destination must be absolute, got {args[1]!r}")
        mode = None
        if len(args) == 3:
            if not re.fullmatch(r"[0-7]{3,4}", args[2]):
                raise state.error(line, f"%files: mode must be octal like 0644, got {args[2]!r}")
            mode = int(args[2], 8)
        state.files.append(FileCopy(args[0], args[1], mode, line))


def _joined(lines: list[str], start: int, end: int) -> list[tuple[int, str]]:
    out = []
    i = start
    while i < end:
        text, nxt = _logical(lines, i, end)
        out.append((i + 1, text))
        i = nxt
    return out


def _section(state: _State, lines: list[str], start: int) -> int:
    """Parse the section whose header is lines[start]; return the index after its %end."""
    line = start + 1
    header = _split(state, line, lines[start])
    name, args = header[0], header[1:]
    if name == "%end":
        raise state.error(line, "%end without an open section")
    if name not in SECTIONS:
        raise state.error(line, f"unknown section {name}")
    end = _section_end(state, lines, start, name)
    if name == "%post":
        opts, rest = _options(state, line, name, args, flags=("nochroot",),
                              valued=("interpreter",))
        _want(state, line, name, rest, (0, 0))
        interpreter = str(opts.get("interpreter", "/bin/sh"))
        if not interpreter.startswith("/"):
            raise state.error(line, "%post: --interpreter must be an absolute path")
        body = "".join(f"{text}\n" for text in lines[start + 1 : end])
        state.posts.append(Script(body, line, bool(opts.get("nochroot")), interpreter))
        return end + 1
    _want(state, line, name, args, (0, 0))
    if name == "%packages":
        state.once("%packages", line)
        _packages(state, _joined(lines, start + 1, end))
    else:
        _files(state, _joined(lines, start + 1, end))
    return end + 1


def _finish(state: _State, last_line: int) -> Kickstart:
    if state.base is None:
        raise state.error(max(last_line, 1), "missing required `base` directive")
    return Kickstart(
        base=state.base, packages=tuple(state.packages), rootpw=state.rootpw,
        users=tuple(state.users), sshkeys=tuple(state.sshkeys), timezone=state.timezone,
        services_enabled=state.services[0], services_disabled=state.services[1],
        kernel=state.kernel, modules=tuple(state.modules), posts=tuple(state.posts),
        files=tuple(state.files), source=state.source)


def parse(text: str, *, source: str = "<kickstart>") -> Kickstart:
    """Parse kickstart `text`; `source` names the file in error messages."""
    state = _State(source)
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("%"):
            i = _section(state, lines, i)
            continue
        line = i + 1
        logical, i = _logical(lines, i)
        args = _split(state, line, logical)
        if not args:
            continue
        handler = DIRECTIVES.get(args[0])
        if handler is None:
            raise state.error(line, f"unknown directive {args[0]!r}")
        handler(state, line, args[1:])
    return _finish(state, len(lines))
