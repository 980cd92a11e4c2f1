"""`smsgw demo` (`make demo`): see messages flow on one machine, with nothing to set up.

Starts what the demo config needs and is not there yet (a Mosquitto broker on the configured
port; an SMSC simulator per carrier, with the carrier's credentials and a short receipt delay),
runs the daemon in the same process, sends one OTP and prints its events, then keeps running
(Ctrl-C stops it) so that `smsgw send --config config/demo.yaml ...` can be tried from another
terminal. Logs at warning level go to stderr; everything else to ./var/demo/gateway.log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from gateway.config import ConfigError, load_config
from gateway.daemon import Gateway
from gateway.log import configure_logging
from gateway.smpp.simulator import SmscSimulator

DEMO_TO = "+8613800138000"
DEMO_TEXT = "您的验证码是 123456，5分钟内有效。"


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _start_broker(port: int) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        print("smsgw demo: no MQTT broker on the configured port and no mosquitto binary "
              "(apt-get install mosquitto)", file=sys.stderr)
        return None
    conf = Path(tempfile.mkdtemp(prefix="smsgw-demo-")) / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        if _listening("127.0.0.1", port):
            return proc
        if proc.poll() is not None:
            break
        import time
        time.sleep(0.05)
    print(f"smsgw demo: could not start mosquitto on port {port}", file=sys.stderr)
    return None


async def _demo(cfg_path: str, once: bool) -> int:
    cfg = load_config(cfg_path)
    sims: list[SmscSimulator] = []
    for c in cfg.carriers:
        if c.host in ("127.0.0.1", "localhost") and not _listening(c.host, c.port):
            sim = SmscSimulator(c.host, c.port, system_id=c.system_id, password=c.password.get(),
                                receipt_delay=0.5, quiet=True)
            await sim.start()
            sims.append(sim)
            print(f"  carrier simulator {c.name:<8} listening on {c.host}:{c.port}")
    gw = Gateway(cfg, cfg_path)
    await gw.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(gw.reload()))
    try:
        for _ in range(100):
            if not gw.carriers_down() and gw.ingress and gw.ingress.subscribed.is_set():
                break
            await asyncio.sleep(0.1)
        print(f"  gateway ready: http://{cfg.http.listen.host}:{cfg.http.listen.port}/status\n")
        print(f"sending an OTP to {DEMO_TO}:")
        cmd = [sys.executable, "-m", "gateway", "send", "--config", cfg_path, "--to", DEMO_TO,
               "--text", DEMO_TEXT, "--priority", "otp", "--id", f"demo-{uuid.uuid4().hex[:8]}",
               "--wait", "10"]
        proc = await asyncio.create_subprocess_exec(*cmd)
        code = await proc.wait()
        print()
        if once:
            return code
        print("The gateway keeps running (Ctrl-C stops it). From another terminal:\n"
              f"  .venv/bin/smsgw send --config {cfg_path} --to {DEMO_TO} "
              '--text "Your order has shipped" --wait 10\n'
              f"  .venv/bin/smsgw status --config {cfg_path}\n")
        await stop.wait()
        return 0
    finally:
        await gw.stop()
        for sim in sims:
            await sim.stop()


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    Path("var/demo").mkdir(parents=True, exist_ok=True)
    log_file = open("var/demo/gateway.log", "a", encoding="utf-8")  # noqa: SIM115
    configure_logging("info", stream=log_file)
    print("smsgw demo")
    broker = None
    if not _listening(cfg.mqtt.host, cfg.mqtt.port):
        broker = _start_broker(cfg.mqtt.port)
        if broker is None:
            return 1
        print(f"  started mosquitto on {cfg.mqtt.host}:{cfg.mqtt.port}")
    else:
        print(f"  using the MQTT broker on {cfg.mqtt.host}:{cfg.mqtt.port}")
    try:
        return asyncio.run(_demo(args.config, args.once))
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=5)
