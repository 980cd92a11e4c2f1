"""Prometheus metrics (text format 0.0.4): counters kept here, gauges read from /status at scrape.

Counters that only grow (messages by final status) live in this module's registry; everything
that describes the present (binds up, window in use, queue depth, throttle rate) is read from the
daemon's status document when /metrics is scraped, so there is one source of truth for both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.model import Status

# `_created` series double the output and say nothing an operator uses.
disable_created_metrics()


class _StatusCollector:
    """Gauges and counters derived from the status document of the current scrape."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        doc = self.doc
        carriers = doc.get("carriers", {})
        binds = GaugeMetricFamily("smsgw_binds_up", "SMPP binds up per carrier", labels=["carrier"])
        conf = GaugeMetricFamily("smsgw_binds_configured", "SMPP binds configured", labels=["carrier"])
        window = GaugeMetricFamily("smsgw_window_in_use", "Outstanding submit_sm", labels=["carrier"])
        rate = GaugeMetricFamily("smsgw_throttle_rate", "Current submit_sm/s allowed (0 = no cap)",
                                 labels=["carrier"])
        for name, c in carriers.items():
            binds.add_metric([name], c.get("binds_up", 0))
            conf.add_metric([name], c.get("binds_configured", 0))
            window.add_metric([name], c.get("window_in_use", 0))
            t = c.get("throttle") or {}
            rate.add_metric([name], float(t.get("current_rate", 0.0) or 0.0))
        depth = GaugeMetricFamily("smsgw_queue_depth", "Queued messages", labels=["priority"])
        for prio, n in doc.get("queue_depth", {}).items():
            depth.add_metric([prio], n)
        dispatch = doc.get("dispatch", {})
        resp = CounterMetricFamily("smsgw_submit_responses", "submit_sm responses by command_status",
                                   labels=["command_status"])
        for name, n in dispatch.get("responses_by_status", {}).items():
            resp.add_metric([name], n)
        counters = dispatch.get("counters", {})
        retries = CounterMetricFamily("smsgw_retries", "Parts retried after a transient error")
        retries.add_metric([], counters.get("retries", 0))
        receipts = CounterMetricFamily("smsgw_receipts", "Delivery receipts received")
        receipts.add_metric([], counters.get("receipts", 0))
        yield from (binds, conf, window, rate, depth, resp, retries, receipts)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter("smsgw_messages", "Messages by status reached",
                                ["status"], registry=self.registry)
        for s in Status:
            self.messages.labels(s.value)
        self._status = _StatusCollector()
        self.registry.register(self._status)  # type: ignore[arg-type]

    def on_status(self, status: Status | str) -> None:
        self.messages.labels(str(status)).inc()

    def render(self, doc: dict[str, Any]) -> bytes:
        self._status.doc = doc
        return generate_latest(self.registry)
