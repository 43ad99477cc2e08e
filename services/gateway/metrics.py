"""The gateway's Prometheus metrics, in a registry of its own (no global state)."""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# The buckets' `le` labels, as prometheus_client's Histogram writes them ("1.0", "+Inf").
_BOUNDS = [repr(float(b)) for b in LATENCY_BUCKETS] + ["+Inf"]


class GatewayMetrics:
    """What `/metrics` on the gateway reports; the same error codes as the client sees.

    What is counted per chunk and per result (`chunks`, `audio_bytes`, `finals`,
    `partials`, `observe_latency`) is plain numbers the event loop adds to, read by a
    collector when `/metrics` is scraped (on the same loop): prometheus_client's Counter
    and Histogram take a lock per update, 1.7 µs a chunk together (bench/RESULTS.md,
    tenth round). Errors and the sessions gauge are the library's own.
    """

    def __init__(self, sessions: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("hark_sessions_open", "Client sessions open", registry=r)
        self.sessions.set_function(sessions)
        self.errors = Counter("hark_errors", "Errors sent to clients", ["code"], registry=r)
        self.created = time.time()
        self.chunks = 0  # audio chunks accepted (stored)
        self.audio_bytes = 0
        self.finals = 0  # results sent to clients, by kind
        self.partials = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last: over every bucket
        self.latency_sum = 0.0
        r.register(_Hot(self))

    def observe_latency(self, seconds: float) -> None:
        """A final's latency, from its chunk's arrival to its sending."""
        # A bucket counts what is at most its bound: the first bound not below `seconds`.
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def totals(self) -> dict[str, Any]:
        """The counters since start, as `/stats` shows them."""
        errors = {}
        for metric in self.errors.collect():
            for sample in metric.samples:
                if sample.name == "hark_errors_total":
                    errors[sample.labels["code"]] = int(sample.value)
        return {"chunks": self.chunks, "audio_bytes": self.audio_bytes,
                "results": {"final": self.finals, "partial": self.partials},
                "errors": errors}  # fmt: skip

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Hot(Collector):
    """The per-chunk counters and the latency histogram, as Prometheus metrics."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        yield CounterMetricFamily("hark_chunks", "Audio chunks accepted", value=m.chunks,
                                  created=m.created)  # fmt: skip
        yield CounterMetricFamily("hark_audio_bytes", "Audio bytes accepted",
                                  value=m.audio_bytes, created=m.created)  # fmt: skip
        results = CounterMetricFamily("hark_results", "Results sent to clients", labels=["kind"])
        results.add_metric(["final"], m.finals, created=m.created)
        results.add_metric(["partial"], m.partials, created=m.created)
        yield results
        cumulative = list(itertools.accumulate(m.latency_counts))
        latency = HistogramMetricFamily(
            "hark_result_latency_seconds",
            "From a chunk's arrival to the final that covers it, sent",
            labels=[],
        )  # fmt: skip
        latency.add_metric([], list(zip(_BOUNDS, cumulative, strict=True)), m.latency_sum)
        yield latency
