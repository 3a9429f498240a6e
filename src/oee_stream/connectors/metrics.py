"""Prometheus metrics of the connectors: a custom collector reading `ConnectorStats.as_dict()` at scrape time.

Nothing is updated on the hot path: the connectors keep their plain counters and a scrape turns them into
metric families, labelled with the connector id (and its kind). The service calls once, after building its
connectors:

    from oee_stream.connectors.metrics import register_connector_metrics
    register_connector_metrics(connectors)

Calling it again (a second service in the same process, tests) replaces the tracked connectors; the
collector itself is registered only once per registry.

Metrics (label `connector`, `kind`):
    oee_connector_samples_received_total     samples produced by the source
    oee_connector_samples_published_total    samples acknowledged by the broker (PUBACK)
    oee_connector_messages_published_total   bus messages acknowledged
    oee_connector_bad_samples_total          samples with quality bad
    oee_connector_source_errors_total        PLC-side read / subscription / connection errors
    oee_connector_publish_errors_total       broker errors and ack timeouts
    oee_connector_reconnects_total           reconnects to the PLC after a loss
    oee_connector_dropped_total              samples dropped because the buffer was full
    oee_connector_source_connected           1 while connected to the PLC / server
    oee_connector_broker_connected           1 while connected to the MQTT broker
    oee_connector_buffered_samples           samples waiting for the broker's acknowledgement
    oee_connector_last_sample_timestamp_seconds  wall-clock time of the last sample produced
    oee_connector_<extra>[_total]            connector-specific counters (OPC UA: subscriptions,
                                             monitored_items, bad_nodes, initial_restamped; Modbus: polls,
                                             exception_responses, timeouts)
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import REGISTRY, CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from oee_stream.connectors.publisher import ConnectorStats

PREFIX = "oee_connector_"

COUNTERS: dict[str, str] = {
    "samples_received": "Samples produced by the source (PLC side)",
    "samples_published": "Samples acknowledged by the broker (PUBACK)",
    "messages_published": "Bus messages acknowledged by the broker",
    "bad_samples": "Samples with quality bad (PLC unreachable, bad status, undecodable value)",
    "source_errors": "Read, subscription and connection errors on the PLC side",
    "publish_errors": "Broker errors and acknowledgement timeouts (the samples stay buffered)",
    "reconnects": "Successful reconnects to the PLC after a loss",
    "dropped": "Samples dropped because the buffer was full",
}
GAUGES: dict[str, tuple[str, str]] = {  # stats key → (metric name without prefix, help)
    "source_connected": ("source_connected", "1 while connected to the PLC / OPC UA server"),
    "broker_connected": ("broker_connected", "1 while connected to the MQTT broker"),
    "buffered": ("buffered_samples", "Samples waiting for the broker's acknowledgement (memory or disk spool)"),
    "last_sample_time": ("last_sample_timestamp_seconds", "Wall-clock time of the last sample produced"),
}
# connector-specific keys in `ConnectorStats.extra` that only ever grow; all other extras are gauges
EXTRA_COUNTERS: frozenset[str] = frozenset({"polls", "exception_responses", "timeouts", "initial_restamped"})
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")


class ConnectorCollector(Collector):
    """Reads the stats of the tracked connectors at every scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tracked: list[tuple[str, ConnectorStats]] = []  # (kind, stats)

    def track(self, connectors: Iterable[Any]) -> None:
        """Replace the tracked connectors (anything with `.stats: ConnectorStats`, optionally `.kind`)."""
        tracked = [(str(getattr(c, "kind", "") or ""), c.stats) for c in connectors]
        with self._lock:
            self._tracked = tracked

    def clear(self) -> None:
        with self._lock:
            self._tracked = []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            tracked = list(self._tracked)
        labels = ["connector", "kind"]
        counters = {k: CounterMetricFamily(PREFIX + k, h, labels=labels) for k, h in COUNTERS.items()}
        gauges = {k: GaugeMetricFamily(PREFIX + name, h, labels=labels) for k, (name, h) in GAUGES.items()}
        extras: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for kind, stats in tracked:
            d = stats.as_dict()
            lv = [str(d.get("connector", stats.connector)), kind]
            for key, value in d.items():
                if key == "connector" or value is None:
                    continue
                if key in counters:
                    counters[key].add_metric(lv, float(value))
                elif key in gauges:
                    gauges[key].add_metric(lv, float(value))
                elif isinstance(value, bool | int | float):
                    name = _NOT_NAME.sub("_", key)
                    fam: CounterMetricFamily | GaugeMetricFamily | None = extras.get(name)
                    if fam is None:
                        if key in EXTRA_COUNTERS:
                            fam = CounterMetricFamily(PREFIX + name, f"Connector-specific counter {key}",
                                                      labels=labels)
                        else:
                            fam = GaugeMetricFamily(PREFIX + name, f"Connector-specific value {key}", labels=labels)
                        extras[name] = fam
                    fam.add_metric(lv, float(value))
        yield from counters.values()
        yield from gauges.values()
        yield from extras.values()

    def describe(self) -> Iterator[Metric]:
        # No samples at registration time; the names are fixed except the extras (checked at scrape).
        return iter(())


_COLLECTORS: dict[int, ConnectorCollector] = {}
_REG_LOCK = threading.Lock()


def connector_collector(registry: CollectorRegistry = REGISTRY) -> ConnectorCollector:
    """The collector registered on `registry` (registered on first use)."""
    with _REG_LOCK:
        col = _COLLECTORS.get(id(registry))
        if col is None:
            col = ConnectorCollector()
            registry.register(col)
            _COLLECTORS[id(registry)] = col
        return col


def register_connector_metrics(connectors: Iterable[Any], registry: CollectorRegistry = REGISTRY) -> ConnectorCollector:
    """Expose these connectors' stats on `registry` (the process-wide one served at /metrics by default)."""
    col = connector_collector(registry)
    col.track(connectors)
    return col
