"""End-to-end benchmark: publisher → Mosquitto → daemon (SQLite WAL, FULL) → SMSC simulator with
receipts → events on MQTT; throughput, OTP latency under a marketing flood, CPU and memory.

Run from the repo root: ``.venv/bin/python -m bench.bench_e2e`` (``--quick`` for a smoke run).
Options: ``--messages N`` marketing messages per run (default 50,000), ``--backlog LIST`` messages
already queued in the store before each run (default ``0,10000,1000000``), ``--repeat R`` runs per
backlog, medians reported (default 3), ``--otp-interval S`` (default 0.05), ``--binds`` /
``--window`` of the carrier (default 1 / 100), ``--tps`` cap of the carrier (default none: with
``--rate`` above it, marketing queues in the store and drains while the OTPs come), ``--profile py-spy|pyinstrument`` (record the
daemon of the first run of each backlog, SVG/HTML kept in ``--keep DIR``), ``--keep DIR`` (keep
the logs and configs of the runs there).

Every part is a process of its own, as in production: a Mosquitto of the bench's own on a free
port; the SMSC simulator (``gateway.smpp.simulator.SmscSimulator``, receipts at once, run by this
file with ``--role sim`` so that it can time the OTPs it receives); the daemon (``python -m
gateway run --config ...``, SQLite in a temp dir: WAL, synchronous=FULL, the default); and the
publisher (``--role publish``): MQTT 3.1.1 over a raw socket, QoS 1, a window of 1,000 publishes
in flight, so that the publisher's own cost (it is not the gateway's) stays small beside paho's.
This process counts the events on ``{prefix}/events/#`` (QoS 0, raw socket too) as a consumer of
the gateway would.

One run: N marketing messages (one GSM part each, all different numbers) are published as fast
as the broker takes them; meanwhile one OTP every ``--otp-interval`` seconds, until the flood is
submitted. Reported (the rate is the count over the time from the first publish to the last event
of that status):

- accepted/s, submitted/s, delivered/s: from the events on MQTT (OTPs included);
- OTP latency: publish (publisher's CLOCK_MONOTONIC before the write) → submit_sm read at the
  SMSC (simulator's CLOCK_MONOTONIC), p50 / p99 over the OTPs of the run;
- receipt latency: a deliver_sm receipt written by the SMSC → its deliver_sm_resp read back
  (the gateway answers after the commit), p50 / p99;
- CPU µs per message of the daemon (utime + stime from /proc/<pid>/stat over the run, all its
  threads) and, for the record, of the broker, the simulator and the publisher;
- peak RSS of the daemon (VmHWM); the load average before the run (the machine is shared).

Backlog: before the daemon starts, the store is filled through ``Store.accept_messages`` (2,000
per call) with messages deferred by a day (``not_before``: state QUEUED, status deferred, mixed
priorities 5/25/70 %), so they are real queued rows in every index the dispatcher reads, but none
becomes due during the run. The filled database is built once per size and copied for each run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/bench_e2e.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PREFIX = "bench"
FLOOD_TEXT = "Big sale this weekend: 30% off everything in store, show this SMS at the till. Ref "
OTP_RE = re.compile(rb"OTP(\d+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# A minimal MQTT 3.1.1 client (bench only): CONNECT, PUBLISH QoS 0/1, PUBACK, SUBSCRIBE.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id: str) -> bytes:
    body = _str("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _str(client_id)
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: bytes, pid: int, payload: bytes) -> bytes:
    body_len = 2 + len(topic) + 2 + len(payload)
    return b"".join((b"\x32", _varint(body_len), struct.pack("!H", len(topic)), topic,
                     struct.pack("!H", pid), payload))


def subscribe_packet(pid: int, topic: str, qos: int) -> bytes:
    body = struct.pack("!H", pid) + _str(topic) + bytes([qos])
    return b"\x82" + _varint(len(body)) + body


class MqttLite(asyncio.Protocol):
    """Splits the incoming stream into packets and hands (type byte, body) to `on_packet`."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, n = 0, len(buf)
        while n - pos >= 2:
            length, shift, i, complete = 0, 0, pos + 1, False
            while i < n and i < pos + 5:
                b = buf[i]
                length |= (b & 0x7F) << shift
                shift += 7
                i += 1
                if not b & 0x80:
                    complete = True
                    break
            if not complete or i + length > n:
                break
            self.on_packet(buf[pos], bytes(buf[i:i + length]))
            pos = i + length
        del buf[:pos]

    def on_packet(self, kind: int, body: bytes) -> None:
        if kind == 0x20 and not self.connack.done():
            self.connack.set_result(None)


async def mqtt_connect(port: int, proto: MqttLite, client_id: str) -> MqttLite:
    loop = asyncio.get_running_loop()
    await loop.create_connection(lambda: proto, "127.0.0.1", port)
    assert proto.transport is not None
    proto.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    proto.transport.write(connect_packet(client_id))
    await asyncio.wait_for(proto.connack, 10)
    return proto


# ---------------------------------------------------------------------------------------------
# Role "publish": the flood and the OTPs (a process of its own).


class Publisher(MqttLite):
    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window
        self.in_flight = 0
        self.acked = 0
        self.room = asyncio.Event()
        self.next_pid = 0

    def pid(self) -> int:
        self.next_pid = self.next_pid % 65535 + 1
        return self.next_pid

    def on_packet(self, kind: int, body: bytes) -> None:
        if kind == 0x40:
            self.in_flight -= 1
            self.acked += 1
            if self.in_flight < self.window // 2:
                self.room.set()
        else:
            super().on_packet(kind, body)


async def publish_role(args: argparse.Namespace) -> None:
    import orjson

    pub = await mqtt_connect(args.mqtt_port, Publisher(1000), f"bench-pub-{os.getpid()}")
    assert pub.transport is not None
    topic = f"{args.prefix}/submit".encode()
    otp_topic = f"{args.prefix}/submit/otp".encode() if args.otp_topic else topic
    run = args.run_id
    otp_sent: dict[str, float] = {}
    flood_done = asyncio.Event()
    stop_otp = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), stop_otp.set)  # a line (or EOF) on stdin: stop the OTPs

    def doc(i: int) -> bytes:
        return orjson.dumps({"id": f"{run}-m{i}", "to": f"+86138{i % 100_000_000:08d}",
                             "text": f"{FLOOD_TEXT}{i}", "priority": "marketing"})

    async def otps() -> None:
        k = 0
        while not stop_otp.is_set():
            payload = orjson.dumps({"id": f"{run}-otp{k}", "to": f"+86139{k % 100_000_000:08d}",
                                    "text": f"Your code is {k % 1_000_000:06d} OTP{k}",
                                    "priority": "otp"})
            pkt = publish_packet(otp_topic, pub.pid(), payload)
            pub.in_flight += 1
            otp_sent[str(k)] = time.monotonic()
            pub.transport.write(pkt)  # type: ignore[union-attr]
            k += 1
            try:
                await asyncio.wait_for(stop_otp.wait(), args.otp_interval)
            except TimeoutError:
                pass

    t0 = time.monotonic()
    otp_task = asyncio.create_task(otps())
    i = 0
    while i < args.messages:
        room = pub.window - pub.in_flight
        if room <= 0:
            pub.room.clear()
            await pub.room.wait()
            continue
        if args.rate > 0:  # paced: no more than `rate` messages/s since t0
            allowed = int(args.rate * (time.monotonic() - t0)) + 1 - i
            if allowed <= 0:
                await asyncio.sleep(0.002)
                continue
            room = min(room, allowed)
        chunk = []
        for j in range(i, min(args.messages, i + room)):
            chunk.append(publish_packet(topic, pub.pid(), doc(j)))
        pub.in_flight += len(chunk)
        i += len(chunk)
        pub.transport.write(b"".join(chunk))
        await asyncio.sleep(0)
    while pub.in_flight > 0:
        pub.room.clear()
        await asyncio.wait_for(pub.room.wait(), 60)
    t_flood = time.monotonic()
    flood_done.set()
    print(json.dumps({"flood_published": t_flood}), flush=True)
    await otp_task
    while pub.in_flight > 0:
        pub.room.clear()
        await asyncio.wait_for(pub.room.wait(), 60)
    pub.transport.close()
    print(json.dumps({"t0": t0, "t_flood": t_flood, "otp_sent": otp_sent}), flush=True)


# ---------------------------------------------------------------------------------------------
# Role "sim": the SMSC simulator, timing the OTPs it receives.


def sim_role(args: argparse.Namespace) -> None:
    from gateway.smpp.simulator import SmscSimulator

    otp_seen: dict[str, float] = {}
    receipt_sent: dict[int, float] = {}  # id(queued deliver_sm) → when it went out
    receipt_rtt: list[float] = []  # deliver_sm → deliver_sm_resp, seconds

    class TimingSimulator(SmscSimulator):
        def _pump(self, account: Any, now: float) -> None:  # noqa: ANN401
            queue = account.queue
            head = list(itertools.islice(queue, 0, 1000))
            before = len(queue)
            super()._pump(account, now)
            t = time.monotonic()
            for item in head[:before - len(queue)]:
                receipt_sent[id(item)] = t

        def _handle(self, conn: Any, events: list[Any], now: float) -> None:  # noqa: ANN401
            t = None
            for ev in events:
                if getattr(ev, "command_id", None) == 0x80000005:  # deliver_sm_resp
                    sent = receipt_sent.pop(id(ev.context), None)
                    if sent is not None:
                        t = t or time.monotonic()
                        receipt_rtt.append(t - sent)
            super()._handle(conn, events, now)

        def _on_submit(self, conn: Any, ev: Any, now: float) -> None:  # noqa: ANN401
            sm = ev.pdu.fields.get("short_message", b"")
            if b"OTP" in sm:
                m = OTP_RE.search(sm)
                if m is not None:
                    otp_seen.setdefault(m.group(1).decode(), time.monotonic())
            super()._on_submit(conn, ev, now)

    async def serve() -> None:
        sim = TimingSimulator("127.0.0.1", args.sim_port, system_id="bench", password="bench",
                              receipt_delay=0.0, window=args.sim_window, quiet=True)
        await sim.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print(json.dumps({"ready": True}), flush=True)
        while not stop.is_set():
            print(json.dumps({"submits": sim.submits, "receipts_acked": sim.receipts_acked,
                              "t": time.monotonic()}), flush=True)
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except TimeoutError:
                pass
        await sim.stop()
        rtt = sorted(receipt_rtt)
        q = statistics.quantiles(rtt, n=100) if len(rtt) >= 2 else [0.0] * 99
        print(json.dumps({"otp_seen": otp_seen, "submits": sim.submits,
                          "receipt_p50_ms": q[49] * 1e3, "receipt_p99_ms": q[98] * 1e3,
                          "receipts_acked": sim.receipts_acked}), flush=True)

    asyncio.run(serve())


# ---------------------------------------------------------------------------------------------
# The orchestrator.


class EventCounter(MqttLite):
    """Counts `{prefix}/events/#` by status, with the time of the last one of each."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self.last: dict[str, float] = {}
        self.suback: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_packet(self, kind: int, body: bytes) -> None:
        if kind & 0xF0 == 0x30:
            i = body.find(b'"status":"')
            if i >= 0:
                j = body.index(b'"', i + 10)
                status = body[i + 10:j].decode()
                self.counts[status] = self.counts.get(status, 0) + 1
                self.last[status] = time.monotonic()
        elif kind == 0x90 and not self.suback.done():
            self.suback.set_result(None)
        else:
            super().on_packet(kind, body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_s(pid: int) -> float:
    """utime + stime of every thread of `pid`, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_s(pid: int) -> dict[int, float]:
    """utime + stime of each thread of `pid` (by tid), seconds."""
    out: dict[int, float] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(task)] = proc_cpu_s_path(f"/proc/{pid}/task/{task}/stat")
        except (OSError, IndexError, ValueError):
            continue
    return out


def proc_cpu_s_path(path: str) -> float:
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def gateway_config(work: Path, mqtt_port: int, sim_port: int, http_port: int,
                   args: argparse.Namespace) -> Path:
    doc = {
        "shutdown_timeout_s": 5,
        "log_level": "warning",
        "store": {"url": f"sqlite:///{work}/gateway.db"},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "topic_prefix": PREFIX,
                 "client_id": f"smsgw-bench-{os.getpid()}"},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "carriers": [{"name": "alpha", "host": "127.0.0.1", "port": sim_port,
                      "system_id": "bench", "password": "bench", "binds": args.binds,
                      "window": args.window, "tps": args.tps, "response_timeout_s": 10}],
        "routes": [{"prefix": "", "carriers": ["alpha"]}],
    }
    path = work / "gateway.yaml"
    path.write_text(json.dumps(doc, indent=2))
    return path


async def build_backlog(db: Path, n: int) -> None:
    """N deferred messages through the Store API (2,000 per call, 4 calls at once)."""
    from gateway.model import Priority, Status
    from gateway.queue.store import NewMessage, Store

    store = await Store.open(f"sqlite:///{db}", sqlite_synchronous="NORMAL")
    now = time.time()
    due = now + 86_400
    try:
        async def chunk(start: int, end: int) -> None:
            rows = []
            for i in range(start, end):
                x = (i * 7919) % 100
                prio = Priority.OTP if x < 5 else Priority.TRANSACTIONAL if x < 30 \
                    else Priority.MARKETING
                rows.append(NewMessage(id=f"bk{i}", to=f"+86137{i % 100_000_000:08d}",
                                       text=f"{FLOOD_TEXT}{i}", parts=1, created_at=now,
                                       priority=prio, due_at=due, expire_at=due + 3 * 86_400,
                                       status=Status.DEFERRED, reason="not_before"))
            await store.accept_messages(rows)

        step = 2000
        starts = list(range(0, n, step))
        for k in range(0, len(starts), 4):
            await asyncio.gather(*(chunk(s, min(n, s + step)) for s in starts[k:k + 4]))
    finally:
        await store.close()


@dataclass
class RunResult:
    backlog: int
    messages: int
    accepted_s: float
    submitted_s: float
    delivered_s: float
    otp_p50_ms: float
    otp_p99_ms: float
    otps: int
    cpu_us: float
    rss_mib: float
    load: float
    others_us: dict[str, float] = field(default_factory=dict)
    threads_us: list[float] = field(default_factory=list)  # main thread first, then by CPU
    # deliver_sm (receipt) → its deliver_sm_resp at the SMSC: the gateway answers only after
    # the commit, so this is its commit latency for receipts (a bind's window / this = ceiling)
    receipt_p50_ms: float = 0.0
    receipt_p99_ms: float = 0.0


def thread_us(pid: int, threads: dict[int, float], total: int) -> list[float]:
    main = threads.pop(pid, 0.0)
    return [main / total * 1e6] + sorted((c / total * 1e6 for c in threads.values() if c > 0),
                                         reverse=True)


class Proc:
    """A child process whose stdout lines are JSON, read into a queue."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.latest: dict[str, Any] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            self.latest.update(doc)
            await self.lines.put(doc)

    async def wait_for(self, key: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            doc = await asyncio.wait_for(self.lines.get(), max(0.01, deadline - time.monotonic()))
            if key in doc:
                return doc


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


async def spawn_role(role: str, *extra: str, stdin: int | None = None) -> Proc:
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "bench.bench_e2e", "--role", role, *extra, cwd=ROOT, env=env(),
        stdout=asyncio.subprocess.PIPE, stdin=stdin)
    return Proc(proc)


async def wait_http(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /healthz HTTP/1.0\r\n\r\n")
            data = await r.read()
            w.close()
            if b" 200 " in data.split(b"\r\n", 1)[0]:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"daemon not ready after {timeout}s")


async def one_run(args: argparse.Namespace, backlog: int, template: Path | None, run_no: int,
                  profile: str | None) -> RunResult:
    from tests.fixtures.services import running_broker

    work = Path(tempfile.mkdtemp(prefix="smsgw-e2e-"))
    daemon: asyncio.subprocess.Process | None = None
    sim: Proc | None = None
    profiler: subprocess.Popen[bytes] | None = None
    try:
        with running_broker(work / "broker") as broker:
            broker_pid = broker.process.pid  # type: ignore[union-attr]
            if template is not None:
                shutil.copy(template, work / "gateway.db")
            sim_port, http_port = free_port(), free_port()
            sim = await spawn_role("sim", "--sim-port", str(sim_port),
                                   "--sim-window", str(args.sim_window))
            await sim.wait_for("ready", 20)
            cfg = gateway_config(work, broker.port, sim_port, http_port, args)
            daemon = await asyncio.create_subprocess_exec(
                PYTHON, "-m", "gateway", "run", "--config", str(cfg), cwd=ROOT, env=env(),
                stdout=subprocess.DEVNULL, stderr=open(work / "daemon.log", "wb"))
            await wait_http(http_port, 120)
            counter = EventCounter()
            await mqtt_connect(broker.port, counter, f"bench-events-{os.getpid()}")
            assert counter.transport is not None
            counter.transport.write(subscribe_packet(1, f"{PREFIX}/events/#", 0))
            await asyncio.wait_for(counter.suback, 10)
            if profile:
                profiler = start_profiler(profile, daemon.pid, work, args)
            load = os.getloadavg()[0]
            pids = {"broker": broker_pid, "sim": sim.proc.pid}
            cpu0 = proc_cpu_s(daemon.pid)
            threads0 = thread_cpu_s(daemon.pid)
            others0 = {k: proc_cpu_s(p) for k, p in pids.items()}
            run_id = f"r{os.getpid()}x{run_no}"
            pub = await spawn_role("publish", "--mqtt-port", str(broker.port), "--messages",
                                   str(args.messages), "--otp-interval", str(args.otp_interval),
                                   "--rate", str(args.rate),
                                   *(["--otp-topic"] if args.otp_topic else []),
                                   "--run-id", run_id, "--prefix", PREFIX,
                                   stdin=asyncio.subprocess.PIPE)
            pids["publisher"] = pub.proc.pid
            others0["publisher"] = 0.0
            await pub.wait_for("flood_published", args.timeout)
            # OTPs keep coming until the flood is submitted (the sim has seen every part).
            await until(lambda: sim.latest.get("submits", 0) >= args.messages, args.timeout,
                        "the flood to be submitted", sim)
            assert pub.proc.stdin is not None
            pub.proc.stdin.write(b"stop\n")
            await pub.proc.stdin.drain()
            report = await pub.wait_for("otp_sent", 30)
            pub_cpu = 0.0
            with open(f"/proc/{pub.proc.pid}/stat") as f:  # still a zombie-less child until wait
                parts = f.read().rsplit(")", 1)[1].split()
                pub_cpu = (int(parts[11]) + int(parts[12])) / CLK_TCK
            await pub.proc.wait()
            total = args.messages + len(report["otp_sent"])
            await until(lambda: counter.counts.get("delivered", 0) >= total, args.timeout,
                        "every message to be delivered (events)", counter)
            cpu = proc_cpu_s(daemon.pid) - cpu0
            threads = {t: c - threads0.get(t, 0.0) for t, c in thread_cpu_s(daemon.pid).items()}
            others = {k: proc_cpu_s(p) - others0[k] for k, p in pids.items() if k != "publisher"}
            others["publisher"] = pub_cpu
            rss = proc_status_kib(daemon.pid, "VmHWM") / 1024
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(60)
                profiler = None
            sim.proc.send_signal(signal.SIGTERM)
            sim_report = await sim.wait_for("otp_seen", 20)
            t0 = report["t0"]
            lat = sorted((sim_report["otp_seen"][k] - t) * 1e3
                         for k, t in report["otp_sent"].items() if k in sim_report["otp_seen"])
            missing = len(report["otp_sent"]) - len(lat)
            if missing:
                print(f"  warning: {missing} OTPs not seen at the SMSC", flush=True)
            q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [lat[0] if lat else 0] * 99

            def rate(status: str) -> float:
                return counter.counts.get(status, 0) / max(1e-9, counter.last[status] - t0)

            bad = {k: v for k, v in counter.counts.items()
                   if k not in ("accepted", "submitted", "delivered")}
            if bad:
                print(f"  warning: unexpected events {bad}", flush=True)
            return RunResult(backlog, total, rate("accepted"), rate("submitted"),
                             rate("delivered"), q[49], q[98], len(lat), cpu / total * 1e6, rss,
                             load, {k: v / total * 1e6 for k, v in others.items()},
                             thread_us(daemon.pid, threads, total),
                             receipt_p50_ms=sim_report.get("receipt_p50_ms", 0.0),
                             receipt_p99_ms=sim_report.get("receipt_p99_ms", 0.0))
    finally:
        if profiler is not None:
            profiler.kill()
        if daemon is not None and daemon.returncode is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(daemon.wait(), 30)
            except TimeoutError:
                daemon.kill()
        if sim is not None and sim.proc.returncode is None:
            sim.proc.kill()
            await sim.proc.wait()
        if args.keep:
            dest = Path(args.keep) / f"backlog{backlog}-run{run_no}"
            dest.mkdir(parents=True, exist_ok=True)
            for name in ("daemon.log", "gateway.yaml", "profile.svg", "profile.html",
                         "profile.txt"):
                if (work / name).exists():
                    shutil.copy(work / name, dest / name)
        shutil.rmtree(work, ignore_errors=True)


def start_profiler(kind: str, pid: int, work: Path, args: argparse.Namespace
                   ) -> subprocess.Popen[bytes]:
    pyspy = str(Path(PYTHON).with_name("py-spy"))
    if kind in ("py-spy", "py-spy-gil"):
        extra = ["--gil"] if kind == "py-spy-gil" else []
        return subprocess.Popen([pyspy, "record", "--pid", str(pid), "--rate", "200",
                                 "--format", "raw", "--output", str(work / "profile.txt"),
                                 "--nonblocking", *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    raise SystemExit(f"unknown profiler {kind}")


async def until(cond: Any, timeout: float, what: str, source: Any) -> None:  # noqa: ANN401
    deadline = time.monotonic() + timeout
    last_progress = time.monotonic()
    last = None
    while not cond():
        now = time.monotonic()
        state = getattr(source, "counts", None) or getattr(source, "latest", None)
        snapshot = json.dumps(state, sort_keys=True, default=str)
        if snapshot != last:
            last, last_progress = snapshot, now
        if now > deadline or now - last_progress > 30:
            raise SystemExit(f"timed out waiting for {what}: {snapshot}")
        await asyncio.sleep(0.02)


def median_row(rows: list[RunResult]) -> dict[str, float]:
    keys = ("accepted_s", "submitted_s", "delivered_s", "otp_p50_ms", "otp_p99_ms", "cpu_us",
            "rss_mib", "load", "receipt_p50_ms", "receipt_p99_ms")
    out = {k: statistics.median(getattr(r, k) for r in rows) for k in keys}
    for k in rows[0].others_us:
        out[k] = statistics.median(r.others_us[k] for r in rows)
    return out


def print_header() -> None:
    print(f"{'backlog':>9} {'accepted/s':>10} {'submitted/s':>11} {'delivered/s':>11} "
          f"{'OTP p50':>8} {'OTP p99':>8} {'rcpt p50/p99':>15} {'gw CPU/msg':>10} {'gw RSS':>8} "
          f"{'load':>5}   "
          "CPU/msg of broker, sim, publisher", flush=True)


def print_row(label: str, r: dict[str, float]) -> None:
    print(f"{label:>9} {r['accepted_s']:>10,.0f} {r['submitted_s']:>11,.0f} "
          f"{r['delivered_s']:>11,.0f} {r['otp_p50_ms']:>6.1f}ms {r['otp_p99_ms']:>6.1f}ms "
          f"{r['receipt_p50_ms']:>6.1f}/{r['receipt_p99_ms']:>5.1f}ms "
          f"{r['cpu_us']:>8.0f}µs {r['rss_mib']:>5.0f}MiB {r['load']:>5.2f}   "
          f"{r.get('broker', 0):.0f} / {r.get('sim', 0):.0f} / {r.get('publisher', 0):.0f} µs",
          flush=True)


async def orchestrate(args: argparse.Namespace) -> None:
    backlogs = [int(x) for x in args.backlog.split(",") if x.strip()]
    pace = f"at {args.rate:,.0f}/s" if args.rate > 0 else "as fast as the broker takes them"
    print(f"end to end: {args.messages:,} marketing messages ({pace}) + 1 OTP every "
          f"{args.otp_interval * 1e3:.0f} ms per run; carrier binds={args.binds} "
          f"tps={args.tps or 'uncapped'} "
          f"window={args.window}, receipts at once; SQLite WAL synchronous=FULL; "
          f"{args.repeat} run(s) per backlog, medians; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f} at start", flush=True)
    tmpl_dir = Path(tempfile.mkdtemp(prefix="smsgw-e2e-backlog-"))
    try:
        print_header()
        for backlog in backlogs:
            template = None
            if backlog:
                template = tmpl_dir / f"backlog{backlog}.db"
                t0 = time.perf_counter()
                await build_backlog(template, backlog)
                for suffix in ("-wal", "-shm"):
                    Path(str(template) + suffix).unlink(missing_ok=True)
                print(f"  (backlog of {backlog:,} built in {time.perf_counter() - t0:.0f} s, "
                      f"{template.stat().st_size / 2**20:,.0f} MiB)", flush=True)
            rows = []
            for run_no in range(args.repeat):
                prof = args.profile if run_no == 0 else None
                r = await one_run(args, backlog, template, run_no, prof)
                rows.append(r)
                if args.verbose:
                    print_row(f"({run_no})", median_row([r]))
                    print("           daemon CPU µs/msg by thread (main first): "
                          + ", ".join(f"{x:.0f}" for x in r.threads_us), flush=True)
            print_row(f"{backlog:,}", median_row(rows))
            if template is not None:
                template.unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmpl_dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--backlog", default="0,10000,1000000",
                    help="comma-separated sizes of the queued backlog (default 0,10000,1000000)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--otp-interval", type=float, default=0.05)
    ap.add_argument("--rate", type=float, default=0.0,
                    help="publish the flood at this many messages/s (default 0: as fast as the "
                         "broker takes them)")
    ap.add_argument("--tps", type=float, default=0.0,
                    help="cap the carrier at this many parts/s (default 0: no cap); below --rate, "
                         "marketing queues in the store and drains behind the cap while the OTPs "
                         "come (OTP latency 'while the flood drains')")
    ap.add_argument("--binds", type=int, default=1)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--sim-window", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 3,000 messages, backlog 0 and 10,000, one run each")
    ap.add_argument("--profile", choices=("py-spy", "py-spy-gil"), default=None,
                    help="record the daemon during the first run of each backlog (--keep DIR)")
    ap.add_argument("--otp-topic", action="store_true",
                    help="publish the OTPs on {prefix}/submit/otp (the gateway's OTP lane, a "
                         "session of its own) instead of {prefix}/submit behind the flood")
    ap.add_argument("--keep", default=None, metavar="DIR", help="keep logs/configs/profiles")
    ap.add_argument("--verbose", "-v", action="store_true", help="print every run")
    # Internal: the child processes.
    ap.add_argument("--role", choices=("publish", "sim"), help=argparse.SUPPRESS)
    ap.add_argument("--mqtt-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--sim-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--run-id", default="r", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default=PREFIX, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "publish":
        asyncio.run(publish_role(args))
        return
    if args.role == "sim":
        sim_role(args)
        return
    if args.quick:
        args.messages, args.repeat = 3_000, 1
        if args.backlog == ap.get_default("backlog"):
            args.backlog = "0,10000"
    asyncio.run(orchestrate(args))


if __name__ == "__main__":
    main()
