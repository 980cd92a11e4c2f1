"""Operations: systemd notify protocol, /metrics, /status, SIGHUP reloads and the status page.

Every test runs against real parts: a Mosquitto of its own, two `SmscSimulator` carriers in this
process on free TCP ports, a SQLite store in the test's tmp dir, and the daemon either as a
`python -m gateway run` subprocess (what systemd starts) or in-process (for the browser test).

- `test_systemd_notify_metrics_and_status`: NOTIFY_SOCKET is a datagram socket of the test's own
  and WATCHDOG_USEC=1000000: READY=1, WATCHDOG=1 and, after SIGTERM, STOPPING=1 arrive in that
  order and the exit code is 0; /metrics parses with prometheus_client's parser; /status agrees
  with what the simulators saw.
- `test_sighup_reload`: a route change moves new traffic without rebinding (binds counted at the
  simulators), a tps change shows in /status, an invalid file is refused and logged
  (`reload_refused`) and the old config keeps running.
- `test_status_page_in_chromium`: GET / in headless Chromium (Debian's `chromium`): the page
  renders the carriers from /status (DOM dump) and a screenshot is taken. With
  SMSGW_UPDATE_SCREENSHOT=1 the screenshot is also copied to docs/status-page.png.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.log import configure_logging
from gateway.smpp.simulator import SmscSimulator
from tests.fixtures.services import Broker, free_port, running_broker

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)
TO = "+8613800138000"


# ------------------------------------------------------------------------------------ helpers


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def get_json(port: int, path: str) -> dict[str, Any]:
    status, _, body = await http_get(port, path)
    assert status == 200, (path, status, body[:300])
    doc: dict[str, Any] = orjson.loads(body)
    return doc


@pytest.fixture
def ops_broker(tmp_path: Path) -> Iterator[Broker]:
    # As root, Mosquitto drops to its own user, which cannot write into pytest's 0700 tmp dirs.
    extra = "user root\n" if os.geteuid() == 0 else ""
    with running_broker(tmp_path / "mosquitto", extra_conf=extra) as b:
        yield b


class Ops:
    """A config with free ports, two simulated carriers and the daemon of one test."""

    def __init__(self, tmp: Path, broker: Broker) -> None:
        self.tmp = tmp
        self.broker = broker
        self.http_port = free_port()
        self.path = tmp / "gateway.yaml"
        self.ports = {"alpha": free_port(), "beta": free_port()}
        self.carrier_opts: dict[str, dict[str, Any]] = {"alpha": {}, "beta": {}}
        self.routes: list[dict[str, Any]] = [{"prefix": "", "carriers": ["alpha", "beta"]}]
        self.sims: dict[str, SmscSimulator] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr = tmp / "daemon.stderr"
        self.send_config = tmp / "send.yaml"
        self.client_id = f"smsgw-ops-{os.getpid()}-{self.http_port}"

    def doc(self) -> dict[str, Any]:
        carriers = []
        for name, port in self.ports.items():
            c = {"name": name, "host": "127.0.0.1", "port": port, "system_id": "gw",
                 "password": "secret", "binds": 1, "window": 10, "tps": 0, "enquire_link_s": 5,
                 "response_timeout_s": 5, "reconnect_s": 0.1, "reconnect_max_s": 0.5,
                 "connect_timeout_s": 2}
            c.update(self.carrier_opts[name])
            carriers.append(c)
        return {
            "shutdown_timeout_s": 3,
            "store": {"url": f"sqlite:///{self.tmp / 'gateway.db'}"},
            "mqtt": {"host": "127.0.0.1", "port": self.broker.port, "topic_prefix": "sms",
                     "client_id": self.client_id},
            "http": {"listen": f"127.0.0.1:{self.http_port}"},
            "carriers": carriers,
            "routes": self.routes,
        }

    def write(self, text: str | None = None) -> Path:
        # JSON is YAML. Write-then-rename, as an operator's editor or config management would.
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text if text is not None else json.dumps(self.doc(), indent=2))
        tmp.replace(self.path)
        return self.path

    async def start_sims(self, **per_carrier: dict[str, Any]) -> None:
        for name, port in self.ports.items():
            sim = SmscSimulator("127.0.0.1", port, system_id="gw", password="secret",
                                receipt_delay=0.0, **per_carrier.get(name, {}))
            await sim.start()
            self.sims[name] = sim

    def spawn(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.write()
        # `send` reads only mqtt: from its config; a copy, since tests break the live file.
        shutil.copyfile(self.path, self.send_config)
        full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            if env is None or k not in env:
                full.pop(k, None)
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "gateway", "run", "--config", str(self.path)], cwd=REPO, env=full,
            stdout=subprocess.DEVNULL, stderr=open(self.stderr, "wb"))
        return self.proc

    def log(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        return out

    async def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            with contextlib.suppress(OSError, TimeoutError, IndexError, ValueError):
                if (await http_get(self.http_port, "/healthz", 2))[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"/healthz not 200 after {timeout}s:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.05)

    async def send(self, text: str, wait: float = 10) -> tuple[int, list[str]]:
        """`python -m gateway send --wait`: (exit code, stdout lines)."""
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "gateway", "send", "--config", str(self.send_config), "--to", TO,
            "--text", text, "--wait", str(wait), cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), wait + 20)
        lines = out.decode().splitlines()
        assert proc.returncode is not None
        if proc.returncode != 0:
            print(out.decode(), err.decode(), self.log()[-3000:], sep="\n")
        return proc.returncode, lines

    def sighup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    async def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        await until(lambda: self.proc is not None and self.proc.poll() is not None, timeout,
                    "the daemon to exit after SIGTERM")
        return int(self.proc.returncode)

    async def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for sim in self.sims.values():
            with contextlib.suppress(Exception):
                await sim.stop()


@pytest.fixture
async def ops(tmp_path: Path, ops_broker: Broker) -> AsyncIterator[Ops]:
    o = Ops(tmp_path, ops_broker)
    try:
        yield o
    finally:
        await o.close()


def submitted_carrier(lines: list[str]) -> str | None:
    for line in lines:
        status, _, rest = line.partition(" ")
        if status == "submitted":
            carrier: str | None = json.loads(rest).get("carrier")
            return carrier
    return None


# ------------------------------------------------------------------- systemd, /metrics, /status


class NotifySocket:
    """What systemd does for Type=notify: a datagram socket whose path goes in NOTIFY_SOCKET."""

    def __init__(self) -> None:
        # A short directory: AF_UNIX paths are limited to 107 bytes, pytest's tmp paths are long.
        self.dir = tempfile.mkdtemp(prefix="smsgw-sd-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []  # (arrival, state), read as they arrive
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self.drain)

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))
        return [m for _, m in self.messages]

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


async def test_systemd_notify_metrics_and_status(ops: Ops) -> None:
    await ops.start_sims()
    notify = NotifySocket()
    try:
        t0 = time.monotonic()
        ops.spawn({"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
        await until(lambda: "READY=1" in notify.drain(), 20, f"READY=1 ({ops.log()[-2000:]})")
        # READY=1 means /healthz answers (carriers bound or not).
        status, _, _ = await http_get(ops.http_port, "/healthz")
        assert status in (200, 503)
        await until(lambda: "WATCHDOG=1" in notify.drain(), 3, "WATCHDOG=1")
        await ops.wait_healthy()

        code, lines = await ops.send("ops check 1")
        assert code == 0, lines
        assert lines[-1].startswith("delivered"), lines

        # /status: every field the page and `smsgw status` use, and what the simulators saw.
        doc = await get_json(ops.http_port, "/status")
        for key in ("uptime_s", "carriers", "queue_depth", "ingress", "events_pending", "dispatch"):
            assert key in doc, key
        assert set(doc["queue_depth"]) == {"otp", "transactional", "marketing"}
        assert {"received", "acked", "lag"} <= set(doc["ingress"])
        assert doc["ingress"]["received"] >= 1 and doc["ingress"]["lag"] == 0
        assert set(doc["carriers"]) == {"alpha", "beta"}
        for name, c in doc["carriers"].items():
            sim = ops.sims[name]
            for key in ("binds_up", "binds_configured", "window_in_use", "window_size",
                        "tps_configured", "throttle"):
                assert key in c, (name, key)
            assert c["binds_configured"] == 1
            assert c["binds_up"] == sim.active_binds == 1, (name, c, sim.active_binds)
            assert sim.binds == 1  # bound once, never re-bound
            assert c["window_size"] == 10 and 0 <= c["window_in_use"] <= c["window_size"]
            assert c["throttle"]["state"] in ("normal", "throttled", "paused")
        # The route prefers alpha: it took the message, as its simulator saw.
        assert ops.sims["alpha"].submits == 1 and ops.sims["beta"].submits == 0
        assert doc["carriers"]["alpha"]["submitted_parts"] == 1

        # /metrics: Prometheus text, parsed by prometheus_client's own parser.
        st, headers, body = await http_get(ops.http_port, "/metrics")
        assert st == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        messages = {s.labels["status"]: s.value for s in families["smsgw_messages"].samples
                    if s.name == "smsgw_messages_total"}
        assert messages["delivered"] >= 1 and messages["accepted"] >= 1, messages
        binds_up = {s.labels["carrier"]: s.value for s in families["smsgw_binds_up"].samples}
        assert binds_up == {"alpha": 1.0, "beta": 1.0}
        depth = {s.labels["priority"] for s in families["smsgw_queue_depth"].samples}
        assert depth == {"otp", "transactional", "marketing"}
        final = families["smsgw_messages_final"]
        assert {s.labels["priority"] for s in final.samples} >= {"otp", "transactional",
                                                                  "marketing"}
        by_prio = {(x.labels["status"], x.labels["priority"]): x.value for x in final.samples
                   if x.name == "smsgw_messages_final_total"}
        assert by_prio[("delivered", "transactional")] == 1, by_prio
        assert by_prio[("delivered", "otp")] == 0 and ("delivered", "unknown") not in by_prio
        # The latency histograms, OTP a series of its own: the message was observed once in
        # each (accepted → submitted, submitted → delivered) under its priority.
        for family in ("smsgw_submit_latency_seconds", "smsgw_delivery_latency_seconds"):
            counts = {x.labels["priority"]: x.value for x in families[family].samples
                      if x.name == family + "_count"}
            assert counts == {"otp": 0, "transactional": 1, "marketing": 0}, (family, counts)
        receipts = {x.labels["state"]: x.value
                    for x in families["smsgw_receipts_by_state"].samples}
        assert receipts == {"DELIVRD": 1}, receipts
        responses = {x.labels["command_status"]: x.value
                     for x in families["smsgw_submit_responses"].samples}
        assert responses.get("ESME_ROK") == 1, responses
        assert not re.search(rb"secret", body)  # no password in /metrics or /status

        # SIGTERM: STOPPING=1, then exit 0.
        code = await ops.stop()
        assert code == 0, ops.log()[-3000:]
        msgs = notify.drain()
        assert "STOPPING=1" in msgs, msgs
        first = {m: msgs.index(m) for m in ("READY=1", "WATCHDOG=1", "STOPPING=1")}
        assert first["READY=1"] < first["WATCHDOG=1"] < first["STOPPING=1"], msgs
        # STOPPING=1 is the last state change (watchdog pings may follow until the loop ends).
        assert all(m == "WATCHDOG=1" for m in msgs[first["STOPPING=1"] + 1:]), msgs
        # Pings every WATCHDOG_USEC/2 = 0.5 s: at least one per second of uptime after READY.
        ready_at = next(t for t, m in notify.messages if m == "READY=1")
        stop_at = next(t for t, m in notify.messages if m == "STOPPING=1")
        pings = [t for t, m in notify.messages if m == "WATCHDOG=1" and ready_at <= t <= stop_at]
        assert len(pings) >= int(stop_at - ready_at), (len(pings), stop_at - ready_at)
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert not gaps or max(gaps) < 1.0, gaps  # never a whole WATCHDOG_USEC without a ping
        assert time.monotonic() - t0 < 45
    finally:
        notify.close()


# ------------------------------------------------------------------------------------- reload


async def test_sighup_reload(ops: Ops) -> None:
    await ops.start_sims()
    ops.routes = [{"prefix": "", "carriers": ["alpha"]}]
    ops.spawn()
    await ops.wait_healthy()
    alpha, beta = ops.sims["alpha"], ops.sims["beta"]
    await until(lambda: alpha.active_binds == 1 and beta.active_binds == 1, 10, "both bound")

    code, lines = await ops.send("before reload")
    assert code == 0 and submitted_carrier(lines) == "alpha", lines
    assert (alpha.submits, beta.submits) == (1, 0)
    binds_before = (alpha.binds, beta.binds)
    attempts_before = (alpha.bind_attempts, beta.bind_attempts)
    assert binds_before == (1, 1)

    def reloads() -> int:
        return sum(1 for e in ops.log_events() if e.get("event") == "reloaded")

    # 1. Route change: new traffic goes to beta; neither carrier is re-bound.
    ops.routes = [{"prefix": "", "carriers": ["beta"]}]
    ops.write()
    ops.sighup()
    await until(lambda: reloads() == 1, 5, "the reload to apply")
    code, lines = await ops.send("after route change")
    assert code == 0 and submitted_carrier(lines) == "beta", lines
    assert (alpha.submits, beta.submits) == (1, 1)
    assert (alpha.binds, beta.binds) == binds_before
    assert (alpha.bind_attempts, beta.bind_attempts) == attempts_before
    assert alpha.active_binds == 1 and beta.active_binds == 1

    # 2. tps change (and a window change) apply live: /status shows them, no re-bind.
    ops.carrier_opts["beta"] = {"tps": 7, "window": 4}
    ops.write()
    ops.sighup()

    async def beta_status() -> dict[str, Any]:
        return (await get_json(ops.http_port, "/status"))["carriers"]["beta"]

    deadline = time.monotonic() + 5
    while (b := await beta_status())["tps_configured"] != 7:
        assert time.monotonic() < deadline, f"tps not applied within 5 s: {b}"
        await asyncio.sleep(0.1)
    assert b["throttle"]["tps"] == 7, b
    assert b["window_size"] == 4, b
    assert (alpha.binds, beta.binds) == binds_before

    # 3. An invalid file is refused with a logged reason; the running config stays (neither the
    #    valid-looking tps change in it nor the route back to alpha is applied).
    bad = ops.doc()
    bad["carriers"][1].update(port=70000, tps=1)
    bad["routes"] = [{"prefix": "", "carriers": ["alpha"]}]
    ops.write(json.dumps(bad))
    ops.sighup()
    await until(lambda: any(e.get("event") == "reload_refused" for e in ops.log_events()), 5,
                "reload_refused in the log")
    refused = [e for e in ops.log_events() if e.get("event") == "reload_refused"]
    assert refused[0]["level"] == "error", refused
    assert any("carriers[1].port" in str(e.get("problem")) for e in refused), refused
    assert reloads() == 2
    b = await beta_status()
    assert b["tps_configured"] == 7 and b["binds_up"] == 1, b
    code, lines = await ops.send("after invalid reload")
    assert code == 0 and submitted_carrier(lines) == "beta", lines
    assert (alpha.submits, beta.submits) == (1, 2)
    assert (alpha.binds, beta.binds) == binds_before

    # 4. A change under `mqtt:` cannot apply live: the rest applies, a warning says so.
    changed = ops.doc()
    changed["mqtt"]["keepalive"] = 17
    ops.write(json.dumps(changed))
    ops.sighup()
    await until(lambda: reloads() == 3, 5, "the third reload")
    restart = [e for e in ops.log_events() if e.get("event") == "reload_needs_restart"]
    assert len(restart) == 1 and restart[0]["sections"] == ["mqtt"], restart

    assert await ops.stop() == 0, ops.log()[-3000:]
    # Clean shutdown unbinds every session.
    assert alpha.active_binds == 0 and beta.active_binds == 0


# ------------------------------------------------------------------------------- status page


async def _run(*cmd: str, timeout: float = 60) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err


def _chromium(profile: Path, *extra: str) -> list[str]:
    assert CHROMIUM is not None
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
            f"--user-data-dir={profile}", "--window-size=1200,800", *extra]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
async def test_status_page_in_chromium(tmp_path: Path, ops_broker: Broker) -> None:
    o = Ops(tmp_path, ops_broker)
    # Something worth looking at: alpha with 2 binds, beta allowing one of its 2, both with a
    # low tps cap so that messages queue up and are being sent while the page is looked at.
    o.carrier_opts = {"alpha": {"binds": 2, "tps": 8, "window": 10},
                      "beta": {"binds": 2, "tps": 4, "window": 5}}
    o.routes = [{"prefix": "+86", "carriers": ["alpha", "beta"]},
                {"prefix": "", "carriers": ["beta"]}]
    await o.start_sims(beta={"max_binds": 1})
    o.write()
    log_stream = open(tmp_path / "gateway.log", "w")  # noqa: SIM115
    configure_logging("info", stream=log_stream)
    gw = Gateway(load_config(str(o.path)), str(o.path))
    try:
        await gw.start()
        assert gw.http is not None
        if "/" not in gw.http.routes:  # until the daemon routes it itself
            from gateway import web

            gw.http.routes["/"] = web.index
        await until(lambda: o.sims["alpha"].active_binds == 2 and o.sims["beta"].active_binds == 1,
                    10, "binds")
        # Some traffic, so that counters and rates are not all zero.
        async with aiomqtt.Client("127.0.0.1", ops_broker.port,
                                  identifier=f"ops-page-{os.getpid()}") as client:
            for i in range(150):
                prio = ("otp", "transactional", "marketing", "marketing", "marketing")[i % 5]
                to = f"+86138001{i:05d}" if i % 4 else f"+8529123{i:04d}"  # beta: Hong Kong
                await client.publish("sms/submit", orjson.dumps(
                    {"id": f"page-{i}", "to": to, "text": f"hello {i}", "priority": prio}), qos=1)
        await until(lambda: o.sims["alpha"].submits + o.sims["beta"].submits >= 20, 15,
                    "the traffic to reach the carriers")

        st, headers, body = await http_get(o.http_port, "/")
        assert st == 200 and headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in headers["content-security-policy"]
        assert b"/status" in body or b'fetch("status"' in body
        assert not re.search(rb"""(src|href)=["']?(https?:)?//""", body)  # nothing external

        # One Chromium run: the DOM after the script ran, and a screenshot. The page measures
        # rates over >= 1 s of the daemon's clock; under a virtual-time budget polls follow each
        # other as fast as /status answers, so the budget is large enough for a few seconds of
        # real polling (the "sending now" figures), about 3 s in all.
        url = f"http://127.0.0.1:{o.http_port}/"
        shot = tmp_path / "status-page.png"
        code, dom, err = await _run(*_chromium(tmp_path / "profile", "--dump-dom",
                                               f"--screenshot={shot}",
                                               "--virtual-time-budget=600000", url))
        assert code == 0, err.decode(errors="replace")[-2000:]
        page = dom.decode()
        # Rendered from /status by the script (these are not in the static HTML).
        assert "alpha" in page and "beta" in page, page[-3000:]
        assert "127.0.0.1:" + str(o.ports["alpha"]) in page
        assert "2 / 2" in page and "1 / 2" in page  # binds up / configured
        assert "partly bound" in page
        assert "waiting for /status…</td>" not in page  # the placeholder row was replaced
        assert re.search(r'<div id="banner" style="display: none;?"', page), "error banner shown"
        assert shot.exists() and shot.stat().st_size > 10_000, err.decode()[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("SMSGW_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(shot, REPO / "docs" / "status-page.png")
    finally:
        with contextlib.suppress(Exception):
            if gw.dispatcher is not None:
                gw.dispatcher.halt()
            await gw.stop()
        configure_logging("info", stream=sys.stderr)
        log_stream.close()
        await o.close()


def test_status_page_is_package_data() -> None:
    """`pip install .` must ship gateway/web/index.html (setuptools skips non-.py files unless
    pyproject.toml lists them), or `/` fails on an installed service."""
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    data = cfg.get("tool", {}).get("setuptools", {}).get("package-data", {})
    patterns = data.get("gateway.web", []) + [p for p in data.get("gateway", [])
                                             if p.startswith("web/")]
    assert any(p in ("*.html", "web/*.html", "*", "web/*") for p in patterns), (
        'pyproject.toml needs [tool.setuptools.package-data] "gateway.web" = ["*.html"]')


# ------------------------------------------------------------------------------- systemd unit

UNIT = REPO / "systemd" / "smsgw.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_file_matches_the_daemon() -> None:
    s = _unit_settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"] and s["WatchdogSec"] == ["30"]
    assert "smsgw run --config" in s["ExecStart"][0]
    assert s["StateDirectory"] == ["smsgw"] and s["ConfigurationDirectory"] == ["smsgw"]
    assert s["DynamicUser"] == ["yes"]
    # TimeoutStopSec must leave room for shutdown_timeout_s plus unbind and the event flush.
    example = load_config(str(REPO / "config" / "gateway.example.yaml"))
    assert int(s["TimeoutStopSec"][0]) >= example.shutdown_timeout_s + 10


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed "
                    "(apt-get install -y systemd)")
def test_unit_file_verifies_and_is_hardened() -> None:
    assert SYSTEMD_ANALYZE is not None
    verify = subprocess.run([SYSTEMD_ANALYZE, "verify", str(UNIT)], capture_output=True,
                            text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    sec = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager",
                          str(UNIT)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", sec.stdout)
    assert m, sec.stdout[-2000:] + sec.stderr
    assert float(m.group(1)) <= 2.0, sec.stdout
