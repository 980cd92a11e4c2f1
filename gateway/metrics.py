"""Prometheus metrics (text format 0.0.4): counters kept here, gauges read from /status at scrape.

Counters that only grow (messages by status, final statuses by priority, latency histograms)
live in this module's registry and are fed by the daemon as things happen; everything that
describes the present (binds up, window in use, queue depth, throttle rate) is read from the
daemon's status document when /metrics is scraped, so there is one source of truth for both.

What the daemon calls (all cheap, from the event loop):

- `on_status(status)` for every event published: `smsgw_messages_total{status}` (every status,
  repeats of a known id's status included: it counts events).
- `on_final(status, priority)` once per message that reaches a final status (the dispatcher's
  finals, admission's rejections): `smsgw_messages_final_total{status, priority}`
  (`priority="unknown"` for a submission too broken to have one).
- `on_policy_rejection(reason)` / prefix trips are read from the status document
  (`admission.rejected_by_reason`, `admission.prefix_trips`):
  `smsgw_rejections_total{reason}`, `smsgw_otp_prefix_cap_trips_total{prefix}`.
- `observe_submitted(priority, seconds)`: accepted → submitted (every part accepted by a carrier);
  `smsgw_submit_latency_seconds{priority}`.
- `observe_delivered(priority, seconds)`: submitted → delivered (final receipt);
  `smsgw_delivery_latency_seconds{priority}`. OTP is its own `priority="otp"` series in both.

Read from the status document (see `Gateway.status_doc`): per carrier `smsgw_binds_up`,
`smsgw_binds_configured`, `smsgw_window_in_use`, `smsgw_window_size`, `smsgw_tps_configured`,
`smsgw_throttle_rate`, `smsgw_throttle_state{state}` (1 for the state in force),
`smsgw_submitted_parts_total`, `smsgw_lane_depth{priority}`; `smsgw_queue_depth{priority}`,
`smsgw_held{priority}`, `smsgw_parked`, `smsgw_ingress_received_total`, `smsgw_ingress_acked_total`,
`smsgw_ingress_lag`, `smsgw_events_pending`, `smsgw_uptime_seconds`,
`smsgw_submit_responses_total{command_status}`, `smsgw_retries_total`, `smsgw_receipts_total`,
`smsgw_receipts_by_state_total{state}` (the receipt's `stat`, e.g. DELIVRD, UNDELIV),
`smsgw_rejections_total{reason}` and `smsgw_otp_prefix_cap_trips_total{prefix}`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.model import FINAL_STATUSES, Priority, Status

# `_created` series double the output and say nothing an operator uses.
disable_created_metrics()

PRIORITY_LABELS = tuple(p.label for p in Priority)
THROTTLE_STATES = ("normal", "throttled", "paused")
# accepted → submitted: normally milliseconds; seconds when throttled or queued behind a burst.
SUBMIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                  300.0, 900.0, 3600.0)
# submitted → delivered: the handset and the carrier; seconds to hours.
DELIVERY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                    3600.0, 4 * 3600.0, 24 * 3600.0)


def _priority_label(priority: Priority | str | None) -> str:
    if priority is None:
        return "unknown"
    if isinstance(priority, Priority):
        return priority.label
    return str(priority)


def _num(value: Any) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


class _StatusCollector:
    """Gauges and counters derived from the status document of the current scrape."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        doc = self.doc
        carriers = doc.get("carriers", {}) or {}

        def per_carrier(name: str, doc_: str, counter: bool = False,
                        extra: tuple[str, ...] = ()) -> Any:
            kind = CounterMetricFamily if counter else GaugeMetricFamily
            return kind(name, doc_, labels=["carrier", *extra])

        binds = per_carrier("smsgw_binds_up", "SMPP binds up per carrier")
        conf = per_carrier("smsgw_binds_configured", "SMPP binds configured")
        window = per_carrier("smsgw_window_in_use", "Outstanding submit_sm over the carrier's binds")
        wsize = per_carrier("smsgw_window_size", "Window size over the carrier's binds")
        tps = per_carrier("smsgw_tps_configured", "Configured submit_sm/s (0 = no cap)")
        rate = per_carrier("smsgw_throttle_rate", "Current submit_sm/s allowed (0 = no cap)")
        state = per_carrier("smsgw_throttle_state", "1 for the carrier's throttle state in force",
                            extra=("state",))
        parts = per_carrier("smsgw_submitted_parts", "Parts accepted by the carrier",
                            counter=True)
        lanes = per_carrier("smsgw_lane_depth", "Messages waiting in the carrier's lane",
                            extra=("priority",))
        for name, c in carriers.items():
            c = c or {}
            binds.add_metric([name], _num(c.get("binds_up")))
            conf.add_metric([name], _num(c.get("binds_configured")))
            window.add_metric([name], _num(c.get("window_in_use")))
            wsize.add_metric([name], _num(c.get("window_size")))
            tps.add_metric([name], _num(c.get("tps_configured")))
            t = c.get("throttle") or {}
            rate.add_metric([name], _num(t.get("rate", t.get("current_rate"))))
            current = t.get("state")
            for s in THROTTLE_STATES:
                state.add_metric([name, s], 1.0 if current == s else 0.0)
            if c.get("submitted_parts") is not None:
                parts.add_metric([name], _num(c.get("submitted_parts")))
            for prio, n in (c.get("lanes") or {}).items():
                lanes.add_metric([name, prio], _num(n))
        yield from (binds, conf, window, wsize, tps, rate, state, parts, lanes)

        depth = GaugeMetricFamily("smsgw_queue_depth", "Queued messages", labels=["priority"])
        for prio, n in (doc.get("queue_depth") or {}).items():
            depth.add_metric([prio], _num(n))
        yield depth

        dispatch = doc.get("dispatch") or {}
        held = GaugeMetricFamily("smsgw_held", "Messages held by the dispatcher",
                                 labels=["priority"])
        for prio, n in (dispatch.get("held") or {}).items():
            held.add_metric([prio], _num(n))
        parked = GaugeMetricFamily("smsgw_parked", "Messages parked (no carrier of their route up)")
        parked.add_metric([], _num(dispatch.get("parked")))
        resp = CounterMetricFamily("smsgw_submit_responses", "submit_sm responses by command_status",
                                   labels=["command_status"])
        for name, n in (dispatch.get("responses_by_status") or {}).items():
            resp.add_metric([name], _num(n))
        counters = dispatch.get("counters") or {}
        retries = CounterMetricFamily("smsgw_retries", "Parts retried after a transient error")
        retries.add_metric([], _num(counters.get("retries")))
        receipts = CounterMetricFamily("smsgw_receipts", "Delivery receipts received")
        receipts.add_metric([], _num(counters.get("receipts")))
        yield from (held, parked, resp, retries, receipts)
        by_state = dispatch.get("receipts_by_state")
        if by_state is not None:
            rs = CounterMetricFamily("smsgw_receipts_by_state", "Delivery receipts by stat",
                                     labels=["state"])
            for s, n in by_state.items():
                rs.add_metric([s], _num(n))
            yield rs

        admission = doc.get("admission") or {}
        rejections = CounterMetricFamily("smsgw_rejections", "Submissions rejected, by reason",
                                         labels=["reason"])
        for reason, n in (admission.get("rejected_by_reason") or {}).items():
            rejections.add_metric([reason], _num(n))
        trips = CounterMetricFamily("smsgw_otp_prefix_cap_trips",
                                    "OTPs rejected by a prefix cap (SMS-pumping guard)",
                                    labels=["prefix"])
        for prefix, n in (admission.get("prefix_trips") or {}).items():
            trips.add_metric([prefix], _num(n))
        yield from (rejections, trips)

        ingress = doc.get("ingress") or {}
        received = CounterMetricFamily("smsgw_ingress_received", "Submissions received from MQTT")
        received.add_metric([], _num(ingress.get("received")))
        acked = CounterMetricFamily("smsgw_ingress_acked", "Submissions stored and acknowledged")
        acked.add_metric([], _num(ingress.get("acked")))
        lag = GaugeMetricFamily("smsgw_ingress_lag", "Submissions received, not yet stored")
        lag.add_metric([], _num(ingress.get("lag")))
        pending = GaugeMetricFamily("smsgw_events_pending", "Events not yet published")
        pending.add_metric([], _num(doc.get("events_pending")))
        uptime = GaugeMetricFamily("smsgw_uptime_seconds", "Seconds since the daemon started")
        uptime.add_metric([], _num(doc.get("uptime_s")))
        yield from (received, acked, lag, pending, uptime)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter("smsgw_messages", "Messages by status reached",
                                ["status"], registry=self.registry)
        self.final = Counter("smsgw_messages_final", "Messages by final status and priority",
                             ["status", "priority"], registry=self.registry)
        self.submit_latency = Histogram(
            "smsgw_submit_latency_seconds", "Accepted to submitted (every part accepted)",
            ["priority"], buckets=SUBMIT_BUCKETS, registry=self.registry)
        self.delivery_latency = Histogram(
            "smsgw_delivery_latency_seconds", "Submitted to delivered (final receipt)",
            ["priority"], buckets=DELIVERY_BUCKETS, registry=self.registry)
        for s in Status:
            self.messages.labels(s.value)
        for s in FINAL_STATUSES:
            for p in PRIORITY_LABELS:
                self.final.labels(s.value, p)
        for p in PRIORITY_LABELS:
            self.submit_latency.labels(p)
            self.delivery_latency.labels(p)
        self._status = _StatusCollector()
        self.registry.register(self._status)  # type: ignore[arg-type]
        # Children by label values: prometheus_client's labels() takes a lock and builds a key
        # on every call (~2-3 µs), and several are counted per message.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:  # noqa: ANN401
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def on_status(self, status: Status | str) -> None:
        """An event was published: count it."""
        self._child(self.messages, str(status)).inc()

    def on_final(self, status: Status | str, priority: Priority | str | None) -> None:
        """A message reached a final status (counted once per message)."""
        if str(status) in _FINAL:
            self._child(self.final, str(status), _priority_label(priority)).inc()

    def observe_submitted(self, priority: Priority | str | None, seconds: float) -> None:
        """accepted → submitted, in seconds (negative values, from a clock step, count as 0)."""
        self._child(self.submit_latency, _priority_label(priority)).observe(max(0.0, seconds))

    def observe_delivered(self, priority: Priority | str | None, seconds: float) -> None:
        """submitted → delivered, in seconds."""
        self._child(self.delivery_latency, _priority_label(priority)).observe(max(0.0, seconds))

    def render(self, doc: dict[str, Any]) -> bytes:
        self._status.doc = doc
        return generate_latest(self.registry)


_FINAL = frozenset(s.value for s in FINAL_STATUSES)
