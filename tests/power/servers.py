"""Emulated BMCs for the power tests, started on free loopback ports and stopped by PID."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import httpx

from provisioner.lab.netns import stop_process

SUSHY = Path(sys.executable).parent / "sushy-emulator"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Sushy:
    """sushy-tools' Redfish emulator with its fake driver (one system, power Off at start)
    and basic auth from an htpasswd file (bcrypt, the only digest it accepts)."""

    def __init__(self, tmp: Path, user: str, password: str, *, tls: bool = False) -> None:
        self.port = free_port()
        self.log = tmp / "sushy.log"
        (tmp / "htpasswd").write_text(
            f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}\n")
        lines = ["SUSHY_EMULATOR_FAKE_DRIVER = True",
                 "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'",
                 f"SUSHY_EMULATOR_LISTEN_PORT = {self.port}",
                 f"SUSHY_EMULATOR_STATE_DIR = '{tmp / 'state'}'",
                 f"SUSHY_EMULATOR_AUTH_FILE = '{tmp / 'htpasswd'}'"]
        scheme = "http"
        if tls:
            self._self_signed(tmp)
            lines += [f"SUSHY_EMULATOR_SSL_CERT = '{tmp / 'cert.pem'}'",
                      f"SUSHY_EMULATOR_SSL_KEY = '{tmp / 'key.pem'}'"]
            scheme = "https"
        (tmp / "sushy.conf").write_text("\n".join(lines) + "\n")
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([str(SUSHY), "--config", str(tmp / "sushy.conf")],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self._wait_ready()

    @staticmethod
    def _self_signed(tmp: Path) -> None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")],
                       check=True, capture_output=True)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sushy-emulator exited: {self.log.read_text()[-2000:]}")
            try:
                httpx.get(self.url + "/redfish/v1", verify=False, timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"sushy-emulator did not answer: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        stop_process(self.proc)


CHASSIS_SCRIPT = """#!/bin/sh
# ipmi_sim's chassis_control program: "$0 MC get power ..." / "$0 MC set power 1 ...".
dir=$(dirname "$0")
op=$2
shift 2
case $op in
get)
    for v in "$@"; do
        case $v in
        power) echo "power:$(cat "$dir/power" 2>/dev/null || echo 0)" ;;
        boot) echo "boot:default" ;;
        esac
    done ;;
set)
    while [ $# -ge 2 ]; do
        echo "$1 $2" >> "$dir/actions.log"
        [ "$1" = power ] && echo "$2" > "$dir/power"
        shift 2
    done ;;
esac
"""


class IpmiSim:
    """OpenIPMI's ipmi_sim as a BMC on a free loopback UDP port. Chassis power is a file
    written by a chassis_control script, and every action is appended to actions.log."""

    def __init__(self, tmp: Path, user: str, password: str) -> None:
        self.dir, self.port = tmp, free_port(socket.SOCK_DGRAM)
        script = tmp / "chassis.sh"
        script.write_text(CHASSIS_SCRIPT)
        script.chmod(0o755)
        (tmp / "lan.conf").write_text(f"""name "bmc"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {self.port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{script} 0x20"
  user 2 true "{user}" "{password}" admin 10 none md2 md5 straight
""")
        # mc_setbmc must come first: mc_add on a BMC not declared yet crashes ipmi_sim 1.0.13
        (tmp / "sim.emu").write_text(
            "mc_setbmc 0x20\n"
            "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
            "mc_enable 0x20\n")
        self.proc = subprocess.Popen(
            ["ipmi_sim", "-c", str(tmp / "lan.conf"), "-f", str(tmp / "sim.emu"), "-n",
             "-s", str(tmp / "state")],  # -s: its default state dir is under /usr/var
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(f"ipmi_sim exited with {self.proc.returncode}")

    def actions(self) -> list[str]:
        log = self.dir / "actions.log"
        return log.read_text().splitlines() if log.exists() else []

    def stop(self) -> None:
        stop_process(self.proc)
