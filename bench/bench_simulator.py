"""How many submit_sm/s *with delivery receipts* the SMSC simulator sustains on one core.

Run from the repo root: ``python -m bench.bench_simulator`` (or ``python bench/bench_simulator.py``).
Options: ``-n N`` messages per run (default 100,000), ``--window W`` (default 100), ``--runs R``
(default 3; the best is reported as the capacity, every run is printed), ``--binds B`` client
connections (default 1), ``--receipt-delay S``, ``--profile`` (runs the simulator under
pyinstrument and prints its profile at the end).

The simulator runs in a separate process (``python -m gateway.smpp.simulator``) so it has a core to
itself; this process is the ESME: it binds with our own ``Session`` (transceiver), keeps ``window``
submit_sm outstanding, answers every deliver_sm at once, and stops when every receipt has come back.
The figure is messages / (time of the last receipt - time of the first submit). The driver itself
uses a core too: on a two-core box the two processes each get one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/bench_simulator.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.smpp.session import (
    Bound,
    Closed,
    DeliverSmReceived,
    Role,
    Session,
    SessionConfig,
    SubmitResponse,
    WindowFull,
)

SUBMIT = {
    "source_addr_ton": 5, "source_addr_npi": 0, "source_addr": "Brand",
    "dest_addr_ton": 1, "dest_addr_npi": 1, "destination_addr": "8613800138000",
    "registered_delivery": 1, "data_coding": 0, "short_message": b"Your code is 123456",
}


class Totals:
    """Counts over every bind: receipts come back on any bind of the account, as from a carrier."""

    def __init__(self, expected: int, done: asyncio.Future[float]) -> None:
        self.expected = expected
        self.responses = 0
        self.errors = 0
        self.receipts = 0
        self.done = done

    def check(self) -> None:
        if self.receipts >= self.expected and self.responses >= self.expected \
                and not self.done.done():
            self.done.set_result(time.monotonic())


class Client(asyncio.Protocol):
    """A minimal ESME driver: one Session, fill the window, answer receipts, count."""

    def __init__(self, total: int, window: int, totals: Totals) -> None:
        self.session = Session(SessionConfig(system_id="bench", password="x", window=window,
                                             enquire_link_s=0, response_timeout_s=60),
                               Role.ESME, time.monotonic())
        self.total = total
        self.sent = 0
        self.totals = totals
        self.bound: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.started = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.session.bind(time.monotonic())
        transport.write(self.session.data_to_send())

    def fill(self) -> None:
        session = self.session
        now = time.monotonic()
        try:
            while self.sent < self.total:
                session.submit(SUBMIT, now)
                self.sent += 1
        except WindowFull:
            pass

    def data_received(self, data: bytes) -> None:
        session = self.session
        totals = self.totals
        for ev in session.receive_data(data, time.monotonic()):
            cls = ev.__class__
            if cls is SubmitResponse:
                totals.responses += 1
                if ev.command_status:  # type: ignore[attr-defined]
                    totals.errors += 1
            elif cls is DeliverSmReceived:
                session.respond(ev.seq)  # type: ignore[attr-defined]
                totals.receipts += 1
            elif cls is Bound:
                self.bound.set_result(None)
            elif cls is Closed:
                if not totals.done.done():
                    totals.done.set_exception(RuntimeError(ev.reason))  # type: ignore[attr-defined]
        if self.started:
            self.fill()
        out = session.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)
        totals.check()

    def start(self) -> None:
        self.started = time.monotonic()
        self.fill()
        assert self.transport is not None
        self.transport.write(self.session.data_to_send())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to see which side is the bottleneck."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_run(port: int, n: int, window: int, binds: int, sim_pid: int) -> float:
    loop = asyncio.get_running_loop()
    clients = []
    per = n // binds
    totals = Totals(per * binds, loop.create_future())
    for _ in range(binds):
        _t, client = await loop.create_connection(lambda: Client(per, window, totals),
                                                  "127.0.0.1", port)
        await asyncio.wait_for(client.bound, 5)
        clients.append(client)
    t0 = time.monotonic()
    sim_cpu0, own_cpu0 = cpu_seconds(sim_pid), time.process_time()
    for c in clients:
        c.start()
    elapsed = await asyncio.wait_for(totals.done, timeout=600) - t0
    sim_cpu, own_cpu = cpu_seconds(sim_pid) - sim_cpu0, time.process_time() - own_cpu0
    print(f"  CPU busy: simulator {sim_cpu / elapsed:.0%}, driver {own_cpu / elapsed:.0%}")
    errors = totals.errors
    for c in clients:
        assert c.transport is not None
        c.transport.close()
    if errors:
        print(f"  ({errors} submit_sm answered with an error)")
    return per * binds / elapsed


async def bench(args: argparse.Namespace) -> None:
    port = free_port()
    cmd = [sys.executable]
    if args.profile:
        cmd += ["-m", "pyinstrument", "-o", "/tmp/bench_simulator_profile.txt",
                "-m", "gateway.smpp.simulator"]
    else:
        cmd += ["-m", "gateway.smpp.simulator"]
    cmd += ["--port", str(port), "--quiet", "--window", str(args.window),
            "--receipt-delay", str(args.receipt_delay)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        await wait_listening(port)
        results = []
        for i in range(args.runs):
            rate = await one_run(port, args.n, args.window, args.binds, proc.pid)
            results.append(rate)
            print(f"run {i + 1}: {args.n} submit_sm + {args.n} receipts in "
                  f"{args.n / rate:.2f} s = {rate:,.0f} submit_sm/s with receipts", flush=True)
        print(f"best {max(results):,.0f}/s, median {sorted(results)[len(results) // 2]:,.0f}/s "
              f"(window {args.window}, {args.binds} bind(s), receipt delay {args.receipt_delay} s)")
    finally:
        proc.send_signal(2)  # SIGINT: pyinstrument writes its report on a clean exit
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if args.profile:
        print(Path("/tmp/bench_simulator_profile.txt").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--binds", type=int, default=1)
    parser.add_argument("--receipt-delay", dest="receipt_delay", type=float, default=0.0)
    parser.add_argument("--profile", action="store_true")
    asyncio.run(bench(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
