"""Secrets: MQTT credentials and TLS work against a secured Mosquitto, a wrong credential fails
clearly and backs off, and no password (carrier, MQTT) ever shows in what the daemon writes.

The broker is a Mosquitto of the test's own (tests/faults/secure.py): a plain anonymous listener
for the test's probe, a password listener, TLS listeners (test CA; a certificate naming only a
host name; one that requires a client certificate). Certificates are made with the `openssl` CLI.

- Credentials in each form the contract allows (`password`, `password_env`, `password_file`):
  the gateway connects and a message is delivered.
- A wrong MQTT password: the daemon (a subprocess) stays up, logs what is wrong (not authorised)
  without the password, retries with growing delays (no tight loop), /healthz says 503; restarted
  with the right one, it connects and delivers.
- TLS: the test CA → delivered; another CA → a clear certificate error, never connected;
  `server_hostname`, `insecure` and a client certificate work as config/gateway.example.yaml says.
- Never in the output: a daemon with distinctive carrier and MQTT passwords goes through bind
  refusals, reloads (valid and broken), /status, /metrics, `smsgw status`, `smsgw check-config`
  on broken files; nothing it wrote (stdout, stderr, its SQLite files, its MQTT messages) holds a
  password or a full phone number.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.secure import NAMED_HOST, Pki, SecureBroker, make_pki
from tests.fixtures.services import free_port
from tests.integration.conftest import (
    PYTHON,
    REPO,
    GatewaySetup,
    Probe,
    full_numbers_in,
    healthz,
    http_get,
    until,
)

pytestmark = pytest.mark.faults

MQTT_USER = "smsgw-gw"
MQTT_PASSWORD = "Mq-pw-7Hx2Lz9Qv4"  # distinctive: grepped for in everything the daemon writes
TO = "+8613800138000"


# ------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def secure_broker(tmp_path: Path, pki: Pki) -> Iterator[SecureBroker]:
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    b = SecureBroker(port=free_port(), workdir=workdir, pki=pki, users={MQTT_USER: MQTT_PASSWORD})
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
async def gw_setup(tmp_path: Path, secure_broker: SecureBroker) -> AsyncIterator[GatewaySetup]:
    s = GatewaySetup(tmp_path, secure_broker, f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        yield s
    finally:
        await s.close()


def use_mqtt(s: GatewaySetup, port: int, **options: Any) -> None:
    """Point the gateway at `port` of the broker with these extra `mqtt:` options."""
    s.extra["mqtt"] = {"host": "127.0.0.1", "port": port, "topic_prefix": "sms",
                       "client_id": s.client_id, **options}


async def one_carrier(s: GatewaySetup, **carrier: Any) -> None:
    s.add_carrier("alpha", **carrier)
    s.route("", "alpha")
    await s.start_sim("alpha", **({"password": carrier["password"]} if "password" in carrier else {}))


async def delivered(s: GatewaySetup, p: Probe, msg_id: str, timeout: float = 20) -> None:
    await p.send(msg_id, TO, "over a secured broker")
    await s.wait_status(p, [msg_id], "delivered", timeout)


async def connected_and_delivers(s: GatewaySetup, tag: str) -> None:
    """The in-process gateway subscribes (within 10 s) and a message goes end to end."""
    await s.start_gateway()
    async with s.probe() as p:
        await delivered(s, p, tag)


async def never_connects(s: GatewaySetup, problem: re.Pattern[str], seconds: float = 3) -> str:
    """The in-process gateway does not subscribe, stays up, and logs `problem`; the log text."""
    gw = await s.start_gateway(wait_ready=False)
    await until(lambda: problem.search(s.log_stream.getvalue()) is not None, 10,
                f"a log line matching {problem.pattern}")
    await asyncio.sleep(seconds)
    assert gw.ingress is not None and not gw.ingress.subscribed.is_set()
    assert not gw.stopping.is_set()
    assert await healthz(s.http_port) == 503
    return s.log_stream.getvalue()


# ---------------------------------------------------------------------- MQTT credentials

@pytest.mark.parametrize("form", ["password", "password_env", "password_file"])
async def test_mqtt_credentials_in_each_form(gw_setup: GatewaySetup, secure_broker: SecureBroker,
                                             form: str, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    s = gw_setup
    secret: dict[str, str] = {"password": MQTT_PASSWORD}
    if form == "password_env":
        monkeypatch.setenv("SMSGW_TEST_MQTT_PASSWORD", MQTT_PASSWORD)
        secret = {"password_env": "SMSGW_TEST_MQTT_PASSWORD"}
    elif form == "password_file":
        (tmp_path / "mqtt.password").write_text(MQTT_PASSWORD + "\n")
        secret = {"password_file": str(tmp_path / "mqtt.password")}
    use_mqtt(s, secure_broker.auth_port, username=MQTT_USER, **secret)
    await one_carrier(s)
    await connected_and_delivers(s, f"cred-{form}")
    assert MQTT_PASSWORD not in s.all_logs()


def retry_delays(log: str, who: str) -> list[float]:
    """The `retry in X s` delays `who` ("ingress" / "ingress-otp" / "events") logged, in order."""
    return [float(m) for m in re.findall(
        rf"{who}: MQTT connection lost or refused \(.*?\); retry in ([0-9.]+)s", log)]


async def test_wrong_mqtt_password_fails_clearly_backs_off_and_recovers(
        gw_setup: GatewaySetup, secure_broker: SecureBroker, tmp_path: Path) -> None:
    s = gw_setup
    wrong = "Wrong-pw-3Kd8Rf5Zq"
    pw_file = tmp_path / "mqtt.password"
    pw_file.write_text(wrong + "\n")
    use_mqtt(s, secure_broker.auth_port, username=MQTT_USER, password_file=str(pw_file))
    await one_carrier(s)
    s.spawn_daemon()
    await s.wait_daemon_ready(status=503)  # /healthz answers: up, but not subscribed
    await asyncio.sleep(7)

    log = s.daemon_log(10**7)
    assert s.daemon is not None and s.daemon.poll() is None, "the daemon must not exit"
    assert await healthz(s.http_port) == 503
    refusals = [line for line in log.splitlines() if "MQTT connection lost or refused" in line]
    assert refusals, log[-3000:]
    assert all(re.search(r"(?i)not authori[sz]ed|bad user name or password", line)
               for line in refusals), refusals[:3]
    assert wrong not in log and MQTT_PASSWORD not in log
    # The broker's own count agrees: a handful of refused connections, not a flood.
    at_broker = secure_broker.log_text().count("disconnected, not authorised")
    assert 2 <= at_broker <= 24, at_broker  # three clients: ingress, ingress-otp, events
    for who in ("ingress", "ingress-otp", "events"):
        delays = retry_delays(log, who)
        # 7 s of refusals: backing off from 0.25 s (doubling, +-25 %) allows at most ~6 attempts;
        # a tight loop would make hundreds. The delays grow.
        assert 2 <= len(delays) <= 8, (who, delays)
        assert delays[-1] > 2 * delays[0], (who, delays)

    # SIGTERM while never connected: a clean exit; then the right password: connected, delivers.
    s.kill_daemon(signal.SIGTERM)
    assert await s.wait_exit(30) == 0, s.daemon_log()
    pw_file.write_text(MQTT_PASSWORD + "\n")
    s.spawn_daemon()
    await s.wait_daemon_ready(status=200)
    async with s.probe() as p:
        await delivered(s, p, "after-fix")
    assert MQTT_PASSWORD not in s.daemon_log(10**7)


# ---------------------------------------------------------------------------------- TLS

async def test_mqtt_over_tls_with_the_test_ca(gw_setup: GatewaySetup, secure_broker: SecureBroker,
                                             pki: Pki) -> None:
    s = gw_setup
    use_mqtt(s, secure_broker.tls_port, username=MQTT_USER, password=MQTT_PASSWORD,
             tls={"ca_file": str(pki.ca)})
    await one_carrier(s)
    await connected_and_delivers(s, "tls-ca")


async def test_mqtt_tls_with_a_wrong_ca_fails_clearly(gw_setup: GatewaySetup,
                                                     secure_broker: SecureBroker, pki: Pki) -> None:
    s = gw_setup
    use_mqtt(s, secure_broker.tls_port, username=MQTT_USER, password=MQTT_PASSWORD,
             tls={"ca_file": str(pki.rogue_ca)})
    await one_carrier(s)
    log = await never_connects(s, re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"))
    assert MQTT_PASSWORD not in log


async def test_mqtt_tls_server_hostname(gw_setup: GatewaySetup, secure_broker: SecureBroker,
                                        pki: Pki) -> None:
    """A certificate naming only a host name, reached by IP: verified against `server_hostname`."""
    s = gw_setup
    use_mqtt(s, secure_broker.tls_named_port, username=MQTT_USER, password=MQTT_PASSWORD,
             tls={"ca_file": str(pki.ca), "server_hostname": NAMED_HOST})
    await one_carrier(s)
    await connected_and_delivers(s, "tls-named")


async def test_mqtt_tls_hostname_mismatch_fails_clearly(
        gw_setup: GatewaySetup, secure_broker: SecureBroker, pki: Pki) -> None:
    s = gw_setup
    use_mqtt(s, secure_broker.tls_named_port, username=MQTT_USER, password=MQTT_PASSWORD,
             tls={"ca_file": str(pki.ca)})
    await one_carrier(s)
    await never_connects(s, re.compile(r"(?i)hostname mismatch|doesn't match|not valid for"))


async def test_mqtt_tls_insecure_skips_verification(
        gw_setup: GatewaySetup, secure_broker: SecureBroker) -> None:
    """`insecure: true` (tests only, per the example config): a certificate of an unknown CA."""
    s = gw_setup
    use_mqtt(s, secure_broker.tls_port, username=MQTT_USER, password=MQTT_PASSWORD,
             tls={"insecure": True})
    await one_carrier(s)
    await connected_and_delivers(s, "tls-insecure")


async def test_mqtt_tls_client_certificate(gw_setup: GatewaySetup, secure_broker: SecureBroker,
                                           pki: Pki) -> None:
    s = gw_setup
    use_mqtt(s, secure_broker.mtls_port,
             tls={"ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
                  "key_file": str(pki.client_key)})
    await one_carrier(s)
    await connected_and_delivers(s, "tls-client-cert")


# ------------------------------------------------------------- never in what it writes

ALPHA_PW = "Qz7Kp2Xw"  # SMPP 3.4 passwords: at most 8 characters
BETA_PW = "Vb9Lm4Tr"  # refused by beta's SMSC, which expects BETA_SMSC_PW
BETA_PW_2 = "Wx5Yt8Rp"  # beta's password after the reload: refused too
BETA_SMSC_PW = "Hj3Nc8Ys"
GAMMA_PW = "Gm4Tq8Ln"
BROKEN_PW = "Hs8Kd2Wp"  # only in files `check-config` and the reload refuse
SECRETS = (ALPHA_PW, BETA_PW, BETA_PW_2, GAMMA_PW, BROKEN_PW, MQTT_PASSWORD)


def spawn_capturing(s: GatewaySetup, env: dict[str, str]) -> Path:
    """`python -m gateway run` with stdout to a file of its own (stderr to `s.daemon_logs`)."""
    path = s.write_config()
    n = len(s.daemon_logs)
    out, err = s.tmp / f"daemon-{n}.out", s.tmp / f"daemon-{n}.log"
    s.daemon_logs.append(err)
    s.daemon = subprocess.Popen(
        [PYTHON, "-m", "gateway", "run", "--config", str(path)], cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdout=out.open("wb"), stderr=err.open("wb"))
    return out


def secrets_by_form(s: GatewaySetup) -> None:
    """Carriers given `password_env` / `password_file` lose the setup's default `password`."""
    inner = s.config_doc

    def config_doc() -> dict[str, Any]:
        doc = inner()
        for carrier in doc["carriers"]:
            if "password_env" in carrier or "password_file" in carrier:
                carrier.pop("password", None)
        return doc

    s.config_doc = config_doc  # type: ignore[method-assign]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "gateway", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def broken_configs(s: GatewaySetup, d: Path) -> list[Path]:
    """Files `check-config` must refuse, each holding secrets next to its error."""
    doc = s.config_doc()
    alpha = {"name": "alpha", "host": "127.0.0.1", "port": 2775, "system_id": "gw"}
    variants: list[Any] = [
        {**doc, "carriers": [{**alpha, "port": 70000, "password": BROKEN_PW}]},
        {**doc, "carriers": [{**alpha, "password": [BROKEN_PW]}]},
        {**doc, "carriers": [{**alpha, "password": {"nested": BROKEN_PW}}]},
        {**doc, "carriers": [{**alpha, "password": BROKEN_PW, "password_env": "SMSGW_BETA_PW"}]},
        {**doc, "carriers": [{**alpha, "password": BROKEN_PW, "passwrod": BROKEN_PW}]},
        {**doc, "mqtt": {**doc["mqtt"], "password": BROKEN_PW, "password_file": "/nonexistent"}},
        {**doc, "mqtt": {**doc["mqtt"], "password": 12345678, "username": BROKEN_PW + "x"},
         "carriers": [{**alpha, "password": BROKEN_PW, "tps": "fast"}]},
    ]
    paths = []
    for i, variant in enumerate(variants):
        p = d / f"broken-{i}.yaml"
        p.write_text(json.dumps(variant, indent=2))
        paths.append(p)
    yaml_error = d / "broken-yaml.yaml"  # a YAML syntax error on the password's own line
    yaml_error.write_text("carriers:\n  - name: alpha\n    port: 2775\n"
                          f"    password: Yq3: {BROKEN_PW}\n    system_id: gw\n")
    paths.append(yaml_error)
    return paths


async def test_no_password_in_anything_the_daemon_writes(
        gw_setup: GatewaySetup, secure_broker: SecureBroker, tmp_path: Path) -> None:
    s = gw_setup
    (tmp_path / "mqtt.password").write_text(MQTT_PASSWORD + "\n")
    (tmp_path / "gamma.password").write_text(GAMMA_PW + "\n")
    env = {"SMSGW_BETA_PW": BETA_PW, "SMSGW_BETA_PW_2": BETA_PW_2}
    use_mqtt(s, secure_broker.auth_port, username=MQTT_USER,
             password_file=str(tmp_path / "mqtt.password"))
    fast = {"reconnect_s": 0.2, "reconnect_max_s": 1}
    s.add_carrier("alpha", password=ALPHA_PW, **fast)
    s.add_carrier("beta", password_env="SMSGW_BETA_PW", **fast)
    s.add_carrier("gamma", password_file=str(tmp_path / "gamma.password"), **fast)
    secrets_by_form(s)
    s.route("+86138", "alpha")
    s.route("+86139", "gamma")
    s.route("", "beta", "alpha")
    await s.start_sim("alpha", password=ALPHA_PW)
    await s.start_sim("beta", password=BETA_SMSC_PW)
    await s.start_sim("gamma", password=GAMMA_PW)
    written: dict[str, str] = {}  # what the daemon and the tools wrote, by where

    stdout = spawn_capturing(s, env)
    await s.wait_daemon_ready(status=503)  # beta cannot bind
    await until(lambda: "bind refused" in s.daemon_log(10**7), 10, "beta's bind refusal logged")
    refusals = [ln for ln in s.daemon_log(10**7).splitlines() if "bind refused" in ln]
    assert all("beta" in ln and "ESME_RINVPASWD" in ln for ln in refusals), refusals[:2]

    async with s.probe() as p:
        ids = []
        for i, to in enumerate(["+8613800138000", "+8613912345678", "+8615012345678"]):
            ids.append(f"sec-{i}")
            await p.send(f"sec-{i}", to, f"secret test {i}")
        await s.wait_status(p, ids, "delivered", 20)

        for path in ("/status", "/metrics", "/healthz", "/"):
            code, body = await http_get(s.http_port, path)
            assert code in (200, 503), (path, code)
            written[f"GET {path}"] = body.decode(errors="replace")
        status_doc = json.loads(written["GET /status"])
        assert "beta" in json.dumps(status_doc)
        for args in (["status"], ["status", "--json"]):
            r = cli(*args, "--config", str(s.config_path), env=env)
            assert r.returncode == 0, r.stderr
            written[f"smsgw {' '.join(args)}"] = r.stdout + r.stderr

        # Reload: beta's password changes (re-bound, refused again), alpha's tps changes.
        s.carriers["beta"].options["password_env"] = "SMSGW_BETA_PW_2"
        s.carriers["alpha"].options["tps"] = 500
        s.write_config()
        s.kill_daemon(signal.SIGHUP)
        await until(lambda: '"reloaded"' in s.daemon_log(10**7), 10, "the reload")
        # Reload of a broken file holding secrets: refused, the running config stays.
        good = s.config_path.read_text()
        broken = json.loads(good)
        broken["carriers"][0].update(port=70000, password=BROKEN_PW)
        s.config_path.write_text(json.dumps(broken))
        s.kill_daemon(signal.SIGHUP)
        await until(lambda: "reload_refused" in s.daemon_log(10**7), 10, "the refused reload")
        s.config_path.write_text(good)
        await p.send("sec-after-reload", "+8613800138001", "after the reloads")
        await s.wait_status(p, ["sec-after-reload"], "delivered", 20)
        written["MQTT events"] = json.dumps(p.events, ensure_ascii=False)
        written["MQTT rejected"] = json.dumps(p.rejected, ensure_ascii=False)

    for path in broken_configs(s, tmp_path):
        r = cli("check-config", "--config", str(path), env=env)
        assert r.returncode == 2, (path.name, r.stdout, r.stderr)
        assert r.stderr.strip(), path.name
        written[f"check-config {path.name}"] = r.stdout + r.stderr

    s.kill_daemon(signal.SIGTERM)
    assert await s.wait_exit(30) == 0, s.daemon_log()
    written["daemon stderr"] = s.daemon_log(10**8)
    written["daemon stdout"] = stdout.read_text(errors="replace")

    leaks = [(secret, where) for where, text in written.items() for secret in SECRETS
             if secret in text]
    assert not leaks, leaks
    numbers = [(where, full_numbers_in(text)[:3]) for where, text in written.items()
               if not where.startswith("MQTT") and full_numbers_in(text)]
    assert not numbers, numbers
    # The store's files (WAL included) hold no password either.
    for f in tmp_path.glob("gateway.db*"):
        data = f.read_bytes()
        assert not [x for x in SECRETS if x.encode() in data], f.name
    # The log says what happened (so the grep above looked at real content).
    log = written["daemon stderr"]
    assert "reloaded" in log and "reload_refused" in log and "bind refused" in log
