"""Secured brokers for the secrets tests: a throw-away PKI made with the `openssl` CLI, and a
Mosquitto of the test's own with one listener per security setting.

`SecureBroker` listeners (`per_listener_settings true`, so each has its own rules):

- `port`: plain, anonymous: the test's probe publishes and listens here;
- `auth_port`: plain, username + password from a `mosquitto_passwd` file, no anonymous clients;
- `tls_port`: TLS with a certificate for 127.0.0.1 signed by the test CA, password required;
- `tls_named_port`: TLS with a certificate naming only `broker.smsgw.test` (no IP), password
  required: reachable at 127.0.0.1 only with `server_hostname` set;
- `mtls_port`: TLS that requires a client certificate signed by the test CA (no password).

The probe and the gateway share one broker (one session store), so what the gateway publishes
on a secured listener reaches the probe on the plain one.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.fixtures.services import MOSQUITTO, Broker, free_port, wait_port

OPENSSL = "openssl"
MOSQUITTO_PASSWD = "mosquitto_passwd"
NAMED_HOST = "broker.smsgw.test"


@dataclass(frozen=True)
class Pki:
    """Files of a test PKI: `ca`, a server certificate for 127.0.0.1, one for NAMED_HOST only, a
    client certificate, and a second CA (`rogue_ca`) that signed none of them."""

    ca: Path
    server_cert: Path
    server_key: Path
    named_cert: Path
    named_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN=smsgw test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _make_leaf(d: Path, name: str, cn: str, san: str, usage: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext.name, cwd=d)


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    _make_ca(d, "ca")
    _make_ca(d, "rogue")
    _make_leaf(d, "server", "127.0.0.1", "IP:127.0.0.1,DNS:localhost", "serverAuth")
    _make_leaf(d, "named", NAMED_HOST, f"DNS:{NAMED_HOST}", "serverAuth")
    _make_leaf(d, "client", "smsgw-client", "DNS:smsgw-client", "clientAuth")
    for key in d.glob("*.key"):
        key.chmod(0o644)  # mosquitto may read them as another user
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "named.pem", d / "named.key",
               d / "client.pem", d / "client.key", d / "rogue.pem")


@dataclass
class SecureBroker(Broker):
    """A Broker (same start/stop/restart) whose config has the listeners of the module docstring."""

    pki: Pki | None = None
    users: dict[str, str] = field(default_factory=dict)
    auth_port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    tls_named_port: int = field(default_factory=free_port)
    mtls_port: int = field(default_factory=free_port)

    def start(self) -> None:
        assert self.pki is not None
        pw = self.workdir / "passwd"
        pw.unlink(missing_ok=True)
        for i, (user, password) in enumerate(self.users.items()):
            subprocess.run([MOSQUITTO_PASSWD, "-b", *(["-c"] if i == 0 else []), str(pw), user,
                            password], check=True, capture_output=True, timeout=10)
        pw.chmod(0o644)
        k = self.pki
        tls = f"cafile {k.ca}\n"
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            "per_listener_settings true\n"
            + ("user root\n" if os.geteuid() == 0 else "")
            + "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            "max_inflight_messages 1000\n"
            "max_queued_messages 1000000\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"listener {self.auth_port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n"
            f"listener {self.tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n"
            f"{tls}certfile {k.server_cert}\nkeyfile {k.server_key}\n"
            f"listener {self.tls_named_port} 127.0.0.1\nallow_anonymous false\n"
            f"password_file {pw}\n{tls}certfile {k.named_cert}\nkeyfile {k.named_key}\n"
            f"listener {self.mtls_port} 127.0.0.1\nallow_anonymous true\n"
            f"{tls}certfile {k.server_cert}\nkeyfile {k.server_key}\n"
            "require_certificate true\nuse_identity_as_username true\n"
        )
        log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115 - the process keeps it
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log,
                                        stderr=subprocess.STDOUT)
        for port in (self.port, self.auth_port, self.tls_port, self.tls_named_port, self.mtls_port):
            wait_port(port)

    def log_text(self) -> str:
        return (self.workdir / "mosquitto.log").read_text(errors="replace")
