"""The kickstart subset: every directive, and every error with its line number."""

from __future__ import annotations

import pytest

from provisioner.errors import ImageBuildError
from provisioner.images.build.kickstart import (
    Base,
    FileCopy,
    Kickstart,
    KickstartError,
    RootPw,
    Script,
    SshKey,
    User,
    parse,
)

HASH = "$6$saltsalt$Jc0ZbWv3oLxZ3bJMWwV9l1tWfV9U0cMq1N6oR6dC3x9o2mE7Jx0d2r3.5mSxQZk2y0A1b2c3d4e5f6"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@lab"

FULL = f"""\
# a compute image
base debootstrap bookworm http://deb.debian.org/debian
kernel linux-image-cloud-amd64
modules virtio_blk
modules e1000 virtio_blk  # duplicates are dropped
rootpw --iscrypted {HASH}
user --name=ops --uid=1001 --groups=sudo,adm --shell=/bin/bash --iscrypted --password={HASH}
user --name=svc
sshkey --username=ops "{KEY}"
timezone Europe/Paris
services --enabled=ssh,munge --disabled=apt-daily.timer

%packages
openssh-server munge  # comment
  slurmd \\
  libc6:amd64
%end

%post --interpreter=/bin/bash
echo "hello" > /etc/motd \\
  && true
%end
%post --nochroot
cp /etc/hosts "$IMAGE_ROOT/etc/hosts"
%end
%files
site/motd /etc/motd 0644
"my dir/x" /opt/x
%end
"""


def test_every_directive() -> None:
    ks = parse(FULL, source="compute.ks")
    assert ks == Kickstart(
        base=Base("debootstrap", suite="bookworm", mirror="http://deb.debian.org/debian"),
        packages=("openssh-server", "munge", "slurmd", "libc6:amd64"),
        rootpw=RootPw(HASH),
        users=(User("ops", 1001, ("sudo", "adm"), HASH, "/bin/bash"), User("svc")),
        sshkeys=(SshKey("ops", KEY),),
        timezone="Europe/Paris",
        services_enabled=("ssh", "munge"),
        services_disabled=("apt-daily.timer",),
        kernel="linux-image-cloud-amd64",
        modules=("virtio_blk", "e1000"),
        posts=(Script('echo "hello" > /etc/motd \\\n  && true\n', 19, False, "/bin/bash"),
               Script('cp /etc/hosts "$IMAGE_ROOT/etc/hosts"\n', 23, True, "/bin/sh")),
        files=(FileCopy("site/motd", "/etc/motd", 0o644, 27),
               FileCopy("my dir/x", "/opt/x", None, 28)),
        source="compute.ks",
    )


@pytest.mark.parametrize(("line", "base"), [
    ("base busybox", Base("busybox")),
    ("base debootstrap bookworm", Base("debootstrap", suite="bookworm")),
    ("base tarball /srv/rootfs.tar.gz", Base("tarball", path="/srv/rootfs.tar.gz")),
    ("base oci ./layout", Base("oci", path="./layout")),
    ("base \\\n  busybox", Base("busybox")),
])
def test_bases(line: str, base: Base) -> None:
    assert parse(line).base == base


def test_minimal_defaults() -> None:
    ks = parse("base busybox\n")
    assert (ks.packages, ks.rootpw, ks.users, ks.kernel, ks.modules, ks.posts) == (
        (), None, (), None, (), ())


def test_rootpw_lock() -> None:
    assert parse("base busybox\nrootpw --lock").rootpw == RootPw(None, locked=True)
    assert parse(f"base busybox\nrootpw --lock --iscrypted {HASH}").rootpw == RootPw(HASH, True)


ERRORS = [
    ("", 1, "missing required `base` directive"),
    ("# nothing\n\n", 2, "missing required `base` directive"),
    ("base busybox\nbase busybox", 2, "duplicate base (first at line 1)"),
    ("base", 1, "base: expected busybox"),
    ("base ubuntu", 1, "base: expected busybox"),
    ("base busybox extra", 1, "base busybox: expected 0 argument(s), got 1"),
    ("base debootstrap", 1, "base debootstrap: expected 1 to 2 argument(s), got 0"),
    ("base tarball", 1, "base tarball: expected 1 argument(s), got 0"),
    ("base busybox\nnetwork --bootproto=dhcp", 2, "unknown directive 'network'"),
    ("base busybox\nrootpw secret", 2, "plain-text passwords are refused"),
    ("base busybox\nrootpw --plaintext secret", 2, "plain-text passwords are refused"),
    ("base busybox\nrootpw --iscrypted", 2, "rootpw: expected 1 argument(s), got 0"),
    ("base busybox\nrootpw --iscrypted secret", 2, "rootpw: not a crypt(3) hash"),
    ("base busybox\nrootpw", 2, "rootpw: give --iscrypted HASH or --lock"),
    ("base busybox\nrootpw --lock\nrootpw --lock", 3, "duplicate rootpw (first at line 2)"),
    ("base busybox\nrootpw --lock --lock", 2, "rootpw: option --lock given twice"),
    ("base busybox\nrootpw --bogus", 2, "rootpw: unknown option --bogus"),
    ("base busybox\nuser", 2, "user: --name must be a valid user name"),
    ("base busybox\nuser --name=Bad!", 2, "user: --name must be a valid user name"),
    ("base busybox\nuser --name=a\nuser --name=a", 3, "user: a defined twice"),
    ("base busybox\nuser --name=a --password=x", 2, "user: plain-text passwords are refused"),
    ("base busybox\nuser --name=a --iscrypted", 2, "user: --iscrypted needs --password=HASH"),
    ("base busybox\nuser --name=a --iscrypted --password=x", 2, "user: not a crypt(3) hash"),
    ("base busybox\nuser --name=a --uid=abc", 2, "user: --uid must be a number"),
    ("base busybox\nuser --name=a --shell=bash", 2, "user: --shell must be an absolute path"),
    ("base busybox\nuser --name=a --groups=ok,B@d", 2, "invalid group name 'B@d'"),
    ("base busybox\nuser --name=a --uid", 2, "user: option --uid needs a value"),
    ("base busybox\nuser --name=a extra", 2, "user: expected 0 argument(s), got 1"),
    ("base busybox\nsshkey 'ssh-rsa AAAA x'", 2, "sshkey: --username=NAME is required"),
    ("base busybox\nsshkey --username=a", 2, "sshkey: expected 1 argument(s), got 0"),
    ("base busybox\nsshkey --username=a ssh-rsa AAAA", 2, "expected 1 argument(s), got 2"),
    ("base busybox\nsshkey --username=a 'not a key'", 2, "sshkey: not an OpenSSH public key"),
    ("base busybox\ntimezone", 2, "timezone: expected 1 argument(s), got 0"),
    ("base busybox\ntimezone 'Europe/Paris;rm'", 2, "timezone: invalid zone"),
    ("base busybox\ntimezone UTC\ntimezone UTC", 3, "duplicate timezone (first at line 2)"),
    ("base busybox\nservices", 2, "services: give --enabled=a,b and/or --disabled=c"),
    ("base busybox\nservices --enabled=a --disabled=a", 2, "services: a both enabled and disabled"),
    ("base busybox\nservices --enabled='a b'", 2, "invalid service name 'a b'"),
    ("base busybox\nservices --enabled=a\nservices --enabled=b", 3, "duplicate services"),
    ("base busybox\nkernel", 2, "kernel: expected 1 argument(s), got 0"),
    ("base busybox\nkernel a\nkernel b", 3, "duplicate kernel (first at line 2)"),
    ("base busybox\nmodules", 2, "modules: expected at least one module name"),
    ("base busybox\nmodules 'virtio net'", 2, "modules: invalid module name"),
    ("base busybox\nkernel 'unterminated", 2, "cannot split line: No closing quotation"),
    ("base busybox\n\n%packages\nvim\n", 3, "%packages has no matching %end"),
    ("base busybox\n%post\necho\n%packages\n%end", 2, "%post has no matching %end"),
    ("base busybox\n%end", 2, "%end without an open section"),
    ("base busybox\n%pre\n%end", 2, "unknown section %pre"),
    ("base busybox\n%packages --ignoremissing\n%end", 2, "%packages: expected 0 argument(s)"),
    ("base busybox\n%packages\n%end\n%packages\n%end", 4, "duplicate %packages (first at line 2)"),
    ("base busybox\n%packages\nvim\nBad_Name\n%end", 4, "%packages: invalid package name"),
    ("base busybox\n%post --log=/x\n%end", 2, "%post: unknown option --log"),
    ("base busybox\n%post --interpreter=sh\n%end", 2, "--interpreter must be an absolute path"),
    ("base busybox\n%post extra\n%end", 2, "%post: expected 0 argument(s), got 1"),
    ("base busybox\n%files\na\n%end", 3, "%files: expected 2 to 3 argument(s), got 1"),
    ("base busybox\n%files\na etc/x\n%end", 3, "%files: destination must be absolute"),
    ("base busybox\n%files\na /x 999\n%end", 3, "%files: mode must be octal like 0644"),
    ("base busybox\n%files\n\na /x \\\n 0644 extra\n%end", 4, "expected 2 to 3 argument(s), got 4"),
]


@pytest.mark.parametrize(("text", "line", "message"), ERRORS)
def test_errors_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(KickstartError) as info:
        parse(text, source="image.ks")
    err = info.value
    assert (err.source, err.line) == ("image.ks", line)
    assert message in err.detail
    assert str(err) == f"image.ks:{line}: {err.detail}"
    assert "\n" not in str(err)


def test_kickstart_error_is_an_image_build_error_with_exit_code_2() -> None:
    with pytest.raises(ImageBuildError) as info:
        parse("bogus")
    assert info.value.exit_code == 2
    assert str(info.value) == "<kickstart>:1: unknown directive 'bogus'"


def test_post_body_is_kept_verbatim() -> None:
    text = "base busybox\n%post\n  # not a comment to us\nprintf '%s\\n' x \\\n%end\n"
    (script,) = parse(text).posts
    assert script.body == "  # not a comment to us\nprintf '%s\\n' x \\\n"
    assert script.line == 2


def test_comment_and_blank_lines_are_ignored_and_lines_count() -> None:
    with pytest.raises(KickstartError) as info:
        parse("# c\n\n   \nbase busybox  # inline\n\\\n\nbogus\n")
    assert info.value.line == 7
