"""Fixtures for the end-to-end tests: a broker, configs with free ports, SMSC simulators, the
gateway (in-process or as a `python -m gateway run` subprocess) and an MQTT probe.

- `broker`: a Mosquitto of the test's own (persistent sessions survive a restart of it).
- `GatewaySetup` (fixture `setup`): builds a YAML file (JSON is YAML) with free ports for HTTP
  and every carrier, starts `SmscSimulator`s on those ports over TCP (`await setup.start_sim(name)`;
  a carrier whose simulator is not started is "down"), runs the gateway in this process
  (`await setup.start_gateway()`) or as a subprocess (`setup.spawn_daemon()`), and tears every
  one of them down afterwards.
- `Probe` (from `setup.probe()`): an MQTT client that publishes submissions and records every
  event per id, MO messages and `{prefix}/rejected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.log import configure_logging
from gateway.smpp.simulator import SmscSimulator
from gateway.smpp.text import decode_parts
from tests.fixtures.services import Broker, free_port, running_broker

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
FINAL = frozenset({"delivered", "undeliverable", "expired", "failed", "rejected"})
# Run as root, Mosquitto drops to the `mosquitto` user, which cannot write its persistence file
# into pytest's 0700 tmp dirs, so sessions would not survive a broker restart.
BROKER_CONF = "user root\n"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with running_broker(tmp_path / "mosquitto", extra_conf=BROKER_CONF) as b:
        yield b


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "",
                interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}")
        await asyncio.sleep(interval)


async def http_get(port: int, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET on loopback: (status, body)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def healthz(port: int) -> int | None:
    try:
        return (await http_get(port, "/healthz"))[0]
    except (OSError, TimeoutError, IndexError, ValueError):
        return None


# --------------------------------------------------------------------------------- the probe


_PROBE_LOG = logging.getLogger("tests.probe")
_PROBE_LOG.setLevel(logging.ERROR)  # aiomqtt warns about every publish beyond 10 outstanding


class Probe:
    """Publishes submissions on `{prefix}/submit` and records what the gateway publishes."""

    def __init__(self, port: int, prefix: str = "sms") -> None:
        self.port = port
        self.prefix = prefix
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.mo: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self.client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Probe:
        self.client = aiomqtt.Client("127.0.0.1", self.port, identifier=f"probe-{os.getpid()}"
                                     f"-{id(self):x}", max_inflight_messages=1000,
                                     max_queued_incoming_messages=0, logger=_PROBE_LOG)
        await self._stack.enter_async_context(self.client)
        await self.client.subscribe(f"{self.prefix}/events/+", qos=1)
        await self.client.subscribe(f"{self.prefix}/mo", qos=1)
        await self.client.subscribe(f"{self.prefix}/rejected", qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(Exception):
            await self._stack.aclose()

    async def _read(self) -> None:
        assert self.client is not None
        events_prefix = f"{self.prefix}/events/"
        async for msg in self.client.messages:
            topic = str(msg.topic)
            doc = orjson.loads(msg.payload)  # type: ignore[arg-type]
            if topic.startswith(events_prefix):
                self.events[topic[len(events_prefix):]].append(doc)
            elif topic.endswith("/mo"):
                self.mo.append(doc)
            else:
                self.rejected.append(doc)

    async def publish(self, docs: Iterable[dict[str, Any]], chunk: int = 500) -> None:
        """QoS 1, in order; up to `chunk` publishes awaiting their PUBACK at once."""
        assert self.client is not None
        batch: list[Any] = []
        topic = f"{self.prefix}/submit"
        for doc in docs:
            batch.append(self.client.publish(topic, orjson.dumps(doc), qos=1))
            if len(batch) >= chunk:
                await asyncio.gather(*batch)
                batch = []
        if batch:
            await asyncio.gather(*batch)

    async def send(self, id: str, to: str, text: str, **fields: Any) -> None:  # noqa: A002
        await self.publish([{"id": id, "to": to, "text": text, **fields}])

    def statuses(self, id: str) -> list[str]:  # noqa: A002
        return [e["status"] for e in self.events.get(id, [])]

    def distinct(self, id: str) -> list[dict[str, Any]]:  # noqa: A002
        """Events of `id` with identical copies dropped: after a crash the gateway publishes
        again the events it may not have delivered, identical (same `at`), as CONTRACT's
        consumers deduplicate on (id, status, at)."""
        seen: set[bytes] = set()
        out = []
        for e in self.events.get(id, []):
            key = orjson.dumps(e, option=orjson.OPT_SORT_KEYS)
            if key not in seen:
                seen.add(key)
                out.append(e)
        return out

    def distinct_statuses(self, id: str) -> list[str]:  # noqa: A002
        return [e["status"] for e in self.distinct(id)]

    def last(self, id: str) -> dict[str, Any] | None:  # noqa: A002
        evs = self.events.get(id)
        return evs[-1] if evs else None

    def final(self, id: str) -> dict[str, Any] | None:  # noqa: A002
        for e in self.events.get(id, []):
            if e["status"] in FINAL:
                return e
        return None

    async def wait_status(self, ids: Iterable[str], statuses: Iterable[str] | str = FINAL,
                          timeout: float = 20.0) -> None:
        """Until every id has had an event with one of `statuses`."""
        wanted = {statuses} if isinstance(statuses, str) else set(statuses)
        pending = set(ids)

        def done() -> bool:
            for i in list(pending):
                if any(e["status"] in wanted for e in self.events.get(i, ())):
                    pending.discard(i)
            return not pending

        try:
            await until(done, timeout, interval=0.05)
        except AssertionError:
            sample = sorted(pending)[:5]
            raise AssertionError(
                f"{len(pending)} ids without {sorted(wanted)} after {timeout}s; e.g. "
                + ", ".join(f"{i}: {self.statuses(i)}" for i in sample)) from None


# --------------------------------------------------------------------------------- a clock


class TestClock:
    """A wall clock for the gateway that starts at a chosen instant and runs at real speed from
    there; `set(epoch)` jumps it (e.g. across a night, to a sending window's opening)."""

    __test__ = False  # not a test class

    def __init__(self, start: float) -> None:
        self.set(start)

    def set(self, epoch: float) -> None:
        self._base, self._mono = epoch, time.monotonic()

    def __call__(self) -> float:
        return self._base + (time.monotonic() - self._mono)


# --------------------------------------------------------------------------------- the setup


@dataclass
class Carrier:
    name: str
    port: int
    options: dict[str, Any] = field(default_factory=dict)


def sim_texts(sim: SmscSimulator, ok_only: bool = True,
              incomplete: list[str] | None = None) -> dict[str, list[str]]:
    """Texts the SMSC received, reassembled from its submit_log, by destination_addr.

    Parts of one message are grouped by (destination, UDH reference) in arrival order; a
    single-part message stands alone. Only parts answered with status 0 by default. Messages
    some of whose parts never came are an error, unless `incomplete` is given: then their
    destinations are appended to it.
    """
    by_dest: dict[str, list[str]] = defaultdict(list)
    groups: dict[tuple[str, int, int], list[bytes]] = {}
    for entry in sim.submit_log:
        if ok_only and entry.command_status != 0:
            continue
        f = entry.pdu.fields
        dest = str(f["destination_addr"])
        sm: bytes = f["short_message"]
        dc = int(f["data_coding"])
        if int(f["esm_class"]) & 0x40:
            # 8-bit concatenation IE: 05 00 03 ref total seq
            assert sm[1] == 0x00 and sm[2] == 3, sm[:6]
            ref, total = sm[3], sm[4]
            key = (dest, ref, dc)
            groups.setdefault(key, []).append(sm)
            if len(groups[key]) == total:
                by_dest[dest].append(decode_parts(groups.pop(key), dc, True))
        else:
            by_dest[dest].append(decode_parts([sm], dc, False))
    if incomplete is not None:
        incomplete.extend(dest for dest, _, _ in groups)
    else:
        assert not groups, f"incomplete multi-part messages at the SMSC: {list(groups)[:5]}"
    return by_dest


class GatewaySetup:
    """Config, simulators and the gateway of one test. See the module docstring."""

    def __init__(self, tmp_path: Path, broker: Broker, store_url: str) -> None:
        self.tmp = tmp_path
        self.broker = broker
        self.store_url = store_url
        self.http_port = free_port()
        self.carriers: dict[str, Carrier] = {}
        self.routes: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}
        self.client_id = f"smsgw-it-{os.getpid()}-{free_port()}"
        self.sims: dict[str, SmscSimulator] = {}
        self.gateway: Gateway | None = None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_logs: list[Path] = []
        self.log_stream = io.StringIO()
        self.config_path = tmp_path / "gateway.yaml"

    # -- config ---------------------------------------------------------------------------

    def add_carrier(self, name: str, **options: Any) -> Carrier:
        c = Carrier(name, free_port(), options)
        self.carriers[name] = c
        return c

    def route(self, prefix: str, *carriers: str) -> None:
        self.routes.append({"prefix": prefix, "carriers": list(carriers)})

    def config_doc(self) -> dict[str, Any]:
        carriers = []
        for c in self.carriers.values():
            doc = {"name": c.name, "host": "127.0.0.1", "port": c.port, "system_id": "gw",
                   "password": "secret", "binds": 1, "window": 20, "tps": 0,
                   "enquire_link_s": 5, "response_timeout_s": 5, "reconnect_s": 0.1,
                   "reconnect_max_s": 0.5, "connect_timeout_s": 2}
            doc.update(c.options)
            carriers.append(doc)
        doc = {
            "shutdown_timeout_s": 5,
            "store": {"url": self.store_url},
            "mqtt": {"host": "127.0.0.1", "port": self.broker.port, "topic_prefix": "sms",
                     "client_id": self.client_id},
            "http": {"listen": f"127.0.0.1:{self.http_port}"},
            "carriers": carriers,
            "routes": self.routes,
        }
        doc.update(self.extra)
        return doc

    def write_config(self) -> Path:
        self.config_path.write_text(json.dumps(self.config_doc(), indent=2, ensure_ascii=False))
        return self.config_path

    # -- simulators -----------------------------------------------------------------------

    async def start_sim(self, name: str, **options: Any) -> SmscSimulator:
        """Start (or restart, keeping its object) the SMSC of carrier `name` on its port."""
        c = self.carriers[name]
        old = self.sims.get(name)
        if old is not None:
            await old.stop()
        opts = {"system_id": "gw", "password": "secret", "submit_log_size": 1_000_000,
                "receipt_delay": 0.0, "window": 100, **options}
        sim = SmscSimulator("127.0.0.1", c.port, **opts)
        await sim.start()
        self.sims[name] = sim
        return sim

    async def stop_sim(self, name: str) -> None:
        sim = self.sims.get(name)
        if sim is not None:
            await sim.stop()

    # -- in-process gateway ---------------------------------------------------------------

    async def start_gateway(self, wait_ready: bool = True,
                            clock: Callable[[], float] | None = None) -> Gateway:
        """Run the gateway in this process; `clock` replaces its wall clock (see `TestClock`)."""
        path = self.write_config()
        cfg = load_config(str(path))
        configure_logging("info", stream=self.log_stream)
        gw = Gateway(cfg, str(path)) if clock is None else Gateway(cfg, str(path), clock=clock)
        self.gateway = gw
        await gw.start()
        if wait_ready:
            await until(lambda: gw.ingress is not None and gw.ingress.subscribed.is_set(), 10,
                        "the gateway to subscribe")
            await until(lambda: not gw.carriers_down(), 10, "every carrier to bind")
        return gw

    async def stop_gateway(self) -> None:
        gw, self.gateway = self.gateway, None
        if gw is not None:
            gw.dispatcher.halt() if gw.dispatcher is not None else None
            await gw.stop()

    # -- subprocess daemon ----------------------------------------------------------------

    def spawn_daemon(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        path = self.write_config()
        log = self.tmp / f"daemon-{len(self.daemon_logs)}.log"
        self.daemon_logs.append(log)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.daemon = subprocess.Popen(
            [PYTHON, "-m", "gateway", "run", "--config", str(path)],
            cwd=REPO, env=full_env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
        return self.daemon

    async def wait_daemon_ready(self, timeout: float = 20.0, status: int | None = None) -> None:
        """Until /healthz answers (with `status` when given)."""
        proc = self.daemon
        assert proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited with {proc.returncode}:\n{self.daemon_log()}")
            code = await healthz(self.http_port)
            if code is not None and (status is None or code == status):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"/healthz gave {code} after {timeout}s:\n{self.daemon_log()}")
            await asyncio.sleep(0.05)

    async def wait_exit(self, timeout: float = 20.0) -> int:
        proc = self.daemon
        assert proc is not None
        await until(lambda: proc.poll() is not None, timeout, "the daemon to exit")
        return int(proc.returncode)

    def kill_daemon(self, sig: int = signal.SIGKILL) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(sig)

    def daemon_log(self, tail: int = 4000) -> str:
        return "".join(p.read_text(errors="replace") for p in self.daemon_logs)[-tail:]

    def all_logs(self) -> str:
        return self.log_stream.getvalue() + "".join(
            p.read_text(errors="replace") for p in self.daemon_logs)

    async def store_statuses(self, ids: Iterable[str]) -> dict[str, Any]:
        """What the store says of these ids (a diagnostic for failures)."""
        from gateway.queue.store import Store

        store = await Store.open(self.store_url)
        try:
            return dict(await store.get_statuses(list(ids)))
        finally:
            await store.close()

    async def wait_status(self, p: Probe, ids: Iterable[str], statuses: Iterable[str] | str,
                          timeout: float) -> None:
        """`p.wait_status`, and on failure what the store says of the ids still waiting."""
        ids = list(ids)
        try:
            await p.wait_status(ids, statuses, timeout)
        except AssertionError as exc:
            wanted = {statuses} if isinstance(statuses, str) else set(statuses)
            stuck = [i for i in ids if not any(e["status"] in wanted for e in p.events.get(i, ()))]
            st = await self.store_statuses(stuck[:5])
            raise AssertionError(f"{exc}\nstore: {st}\nlogs: {self.daemon_log(1500)}") from None

    # -- probe ----------------------------------------------------------------------------

    def probe(self) -> Probe:
        return Probe(self.broker.port)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.stop_gateway()
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait(10)
        for sim in self.sims.values():
            with contextlib.suppress(Exception):
                await sim.stop()
        configure_logging("info", stream=sys.stderr)


@pytest.fixture
async def setup(tmp_path: Path, broker: Broker, db_url: str) -> AsyncIterator[GatewaySetup]:
    s = GatewaySetup(tmp_path, broker, db_url)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def sqlite_setup(tmp_path: Path, broker: Broker) -> AsyncIterator[GatewaySetup]:
    """The same on a SQLite file only (tests that add nothing when run on PostgreSQL too)."""
    s = GatewaySetup(tmp_path, broker, f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        yield s
    finally:
        await s.close()


# ------------------------------------------------------------------------------- log checks

_FULL_NUMBER = re.compile(r"(?<![\d*])\+?86\d{11}(?!\d)|(?<![\d*])1[3-9]\d{9}(?!\d)")


def full_numbers_in(text: str) -> list[str]:
    """Unmasked Chinese mobile numbers (the ones the tests send to) found in log text."""
    return _FULL_NUMBER.findall(text)
