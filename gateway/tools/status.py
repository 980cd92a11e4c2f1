"""`smsgw status`: binds, windows, rates and queue depths, read from the running daemon's /status.

Exit 0 with a readable table (or the JSON with --json); exit 1 when the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import http.client
import sys
from typing import Any

import orjson

from gateway.config import ConfigError, load_config


def fetch_status(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/status")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"/status answered {resp.status}")
        doc: dict[str, Any] = orjson.loads(body)
        return doc
    finally:
        conn.close()


def render(doc: dict[str, Any]) -> str:
    lines = [f"uptime {doc.get('uptime_s', 0)}s"]
    lines.append("")
    lines.append(f"{'carrier':<12} {'binds':>7} {'window':>9} {'tps':>7} {'rate':>8} {'state':<10} "
                 f"{'submitted':>10}")
    for name, c in doc.get("carriers", {}).items():
        t = c.get("throttle") or {}
        rate = t.get("rate", t.get("current_rate"))
        lines.append(
            f"{name:<12} {c.get('binds_up', 0):>3}/{c.get('binds_configured', 0):<3} "
            f"{c.get('window_in_use', 0):>4}/{c.get('window_size', 0):<4} "
            f"{c.get('tps_configured', 0):>7g} {(rate if rate is not None else 0):>8.1f} "
            f"{str(t.get('state', '-')):<10} {c.get('submitted_parts', 0) or 0:>10}")
    lines.append("")
    depth = doc.get("queue_depth", {})
    lines.append("queue depth  " + "  ".join(f"{p} {n}" for p, n in depth.items()))
    ingress = doc.get("ingress") or {}
    if ingress:
        lines.append(f"ingress      received {ingress.get('received', 0)}  "
                     f"acked {ingress.get('acked', 0)}  lag {ingress.get('lag', 0)}")
    lines.append(f"events pending {doc.get('events_pending', 0)}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    host, port = cfg.http.listen.host, cfg.http.listen.port
    try:
        doc = fetch_status(host, port)
    except (OSError, ValueError) as exc:
        print(f"smsgw status: cannot reach the daemon at http://{host}:{port}/status: {exc}",
              file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render(doc))
    return 0
