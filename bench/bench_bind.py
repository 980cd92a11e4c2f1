"""submit_sm/s through ONE bind (window 100), with delivery receipts, against the simulator in a
separate process; and the same with TCP_NODELAY off, to show why the gateway sets it.

Run: ``python -m bench.bench_bind`` (or ``python bench/bench_bind.py``) from the repo root.
Options: ``--messages N`` per run (default 20,000), ``--runs R`` (default 5), ``--window W``
(default 100), ``--driver task|callback``, ``--peer-nagle`` (also disable TCP_NODELAY in the
simulator, i.e. a carrier that leaves Nagle on, as Kannel and Jasmin do).

What is timed: from the first submit_sm to the moment every submit_sm_resp AND every receipt has
arrived (and every deliver_sm has been answered), through a ``CarrierPool`` of one transceiver
bind. ``--driver task`` (default) feeds it the way the dispatcher does: a task that calls
``pool.pick()`` and sleeps in ``pool.wait_capacity()`` when the window is full. ``--driver
callback`` refills the window from the event callback itself (the ceiling of the connection
layer, without the task switch). Receipts are answered at once from the callback. The simulator
(``python -m gateway smsc-sim --quiet``) runs in its own process on its own core; it sustains
well above these rates (bench/bench_simulator.py), so the figure is the gateway side's. Medians
over the runs; the first (warm-up) run is discarded. Each run also reports the submit_sm →
submit_sm_resp latency (p50 / p99 / max).

What it showed (2-core VM, loopback, 20,000 per run; see the closing note of issue 2):
- gateway as built (TCP_NODELAY, one write per loop iteration): ~42,000 submit_sm/s, p50 2 ms;
  Nagle on changes nothing measurable *because* of the coalesced write;
- ``--write-per-pdu`` (how Kannel/Jasmin write): TCP_NODELAY on ~39,000/s; Nagle on 2,230/s with
  43 ms median latency: the delayed-ACK stall, at Kannel's published ~2,300/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/bench_bind.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config import CarrierConfig, Secret
from gateway.log import configure_logging
from gateway.smpp.connection import Connection
from gateway.smpp.pool import CarrierPool
from gateway.smpp.session import DeliverSmReceived, Event, RequestFailed, RequestTimedOut, SubmitResponse

FIELDS: dict[str, Any] = {
    "source_addr_ton": 5, "source_addr_npi": 0, "source_addr": "Brand",
    "dest_addr_ton": 1, "dest_addr_npi": 1, "destination_addr": "8613800138000",
    "registered_delivery": 1, "data_coding": 0,
    "short_message": b"Your verification code is 123456. Valid for 5 minutes.",
}

# Started with `python -c`: the simulator with TCP_NODELAY forced off on its sockets (a peer that
# leaves Nagle on). Only for --peer-nagle; the real simulator always sets it.
_NAGLE_SIM = """
import socket, sys
_orig = socket.socket.setsockopt
def setsockopt(self, level, opt, value, *rest):
    if level == socket.IPPROTO_TCP and opt == socket.TCP_NODELAY:
        value = 0
    return _orig(self, level, opt, value, *rest)
socket.socket.setsockopt = setsockopt
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""


def write_per_pdu() -> None:
    """Benchmark-only: flush after every submit/respond, i.e. one write (and one TCP segment) per
    PDU, as Kannel and Jasmin do, instead of the gateway's one write per loop iteration."""
    submit, respond = Connection.submit, Connection.respond

    def submit_now(self: Connection, *a: Any, **kw: Any) -> int:
        seq = submit(self, *a, **kw)
        self._flush()
        return seq

    def respond_now(self: Connection, *a: Any, **kw: Any) -> bool:
        ok = respond(self, *a, **kw)
        self._flush()
        return ok

    Connection.submit = submit_now  # type: ignore[method-assign]
    Connection.respond = respond_now  # type: ignore[method-assign]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_simulator(port: int, peer_nagle: bool, receipt_delay: float = 0.0
                    ) -> subprocess.Popen[bytes]:
    args = ["smsc-sim", "--port", str(port), "--quiet", "--receipt-delay", str(receipt_delay)]
    cmd = ([sys.executable, "-c", _NAGLE_SIM, *args] if peer_nagle
           else [sys.executable, "-m", "gateway", *args])
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("simulator did not start")


async def one_run(port: int, messages: int, window: int, nodelay: bool, driver: str
                  ) -> tuple[float, list[float]]:
    """Seconds for ``messages`` submits with all responses and receipts, over one bind; and the
    submit_sm → submit_sm_resp latency of each (seconds)."""
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    latencies: list[float] = []
    state = {"responses": 0, "receipts": 0, "errors": 0, "sent": 0}
    done = loop.create_future()
    pool: CarrierPool

    def maybe_done() -> None:
        if state["responses"] == messages and state["receipts"] == messages and not done.done():
            done.set_result(None)

    def on_event(conn: Connection, ev: Event) -> None:
        cls = ev.__class__
        if cls is SubmitResponse:
            state["responses"] += 1
            latencies.append(clock() - ev.context)  # type: ignore[attr-defined]
            if ev.command_status:  # type: ignore[attr-defined]
                state["errors"] += 1
            if driver == "callback" and state["sent"] < messages:
                conn.submit(FIELDS, clock())
                state["sent"] += 1
            maybe_done()
        elif cls is DeliverSmReceived:
            conn.respond(ev.seq)  # type: ignore[attr-defined]
            state["receipts"] += 1
            maybe_done()
        elif cls is RequestTimedOut or cls is RequestFailed:
            state["errors"] += 1

    cfg = CarrierConfig(name="bench", host="127.0.0.1", port=port, system_id="bench",
                        password=Secret("bench"), window=window, binds=1, response_timeout_s=30)
    pool = CarrierPool(cfg, on_event, nodelay=nodelay)
    pool.start()
    if not await pool.wait_ready(10):
        raise SystemExit("no bind")
    t0 = time.perf_counter()
    if driver == "callback":
        conn = pool.pick()
        assert conn is not None
        while state["sent"] < min(window, messages):
            conn.submit(FIELDS, clock())
            state["sent"] += 1
    else:
        while state["sent"] < messages:
            conn = pool.pick()
            if conn is None:
                await pool.wait_capacity()
                continue
            conn.submit(FIELDS, clock())
            state["sent"] += 1
    await asyncio.wait_for(done, 120)
    elapsed = time.perf_counter() - t0
    await pool.stop(1.0)
    if state["errors"]:
        raise SystemExit(f"{state['errors']} errors")
    return elapsed, latencies


async def bench(args: argparse.Namespace) -> None:
    modes = [("TCP_NODELAY on (gateway default)", True), ("TCP_NODELAY off (Nagle)", False)]
    print(f"one bind, window {args.window}, {args.messages:,} submit_sm + receipts per run, "
          f"{args.runs} runs (+1 warm-up), driver={args.driver}, "
          f"peer Nagle {'on' if args.peer_nagle else 'off'}, receipt delay {args.receipt_delay} s"
          f"{', one write per PDU' if args.write_per_pdu else ''}")
    for label, nodelay in modes:
        rates: list[float] = []
        p50: list[float] = []
        p99: list[float] = []
        worst = 0.0
        for i in range(args.runs + 1):
            elapsed, lat = await one_run(args.port, args.messages, args.window, nodelay,
                                         args.driver)
            if i:
                rates.append(args.messages / elapsed)
                q = statistics.quantiles(lat, n=100)
                p50.append(q[49])
                p99.append(q[98])
                worst = max(worst, max(lat))
        print(f"  {label:34s} median {statistics.median(rates):9,.0f} submit_sm/s "
              f"(min {min(rates):,.0f}, max {max(rates):,.0f}); response latency "
              f"p50 {statistics.median(p50) * 1e3:.1f} ms, p99 {statistics.median(p99) * 1e3:.1f} ms, "
              f"max {worst * 1e3:.1f} ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--driver", choices=("task", "callback"), default="task")
    parser.add_argument("--peer-nagle", action="store_true",
                        help="also turn TCP_NODELAY off in the simulator")
    parser.add_argument("--receipt-delay", type=float, default=0.0, metavar="S",
                        help="simulator sends each receipt this long after the response")
    parser.add_argument("--write-per-pdu", action="store_true",
                        help="one write per PDU (as Kannel/Jasmin) instead of one per loop iteration")
    parser.add_argument("--port", type=int, default=0, help="simulator port (default: a free one)")
    args = parser.parse_args()
    if args.write_per_pdu:
        write_per_pdu()
    configure_logging("warning")
    args.port = args.port or free_port()
    sim = start_simulator(args.port, args.peer_nagle, args.receipt_delay)
    try:
        asyncio.run(bench(args))
    finally:
        sim.terminate()
        sim.wait(5)


if __name__ == "__main__":
    main()
